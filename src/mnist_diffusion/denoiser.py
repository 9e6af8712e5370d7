"""The denoiser: a network with what always travels with it, and one job, the guided noise prediction.

A network alone cannot be sampled: it needs its schedule, what it predicts (eps or v), how many
classes it knows and which label means "none", and the device and autocast it runs at. `Denoiser`
holds them and gives the samplers `eps_fn(x_t, t) -> eps`, with classifier-free guidance or
autoguidance mixed in, and training its loss.

Not here: loading files, label requests, sampling, editing, inversion (diffusion.py builds those on
top of this); the equations themselves (schedule.py).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .config import CLASS_NAMES, RunConfig
from .device import autocast, resolve_device, resolve_precision
from .schedule import Schedule, diffusion_loss, eps_from_output, guidance_mix, guidance_weights, make_schedule


@dataclass(frozen=True)
class Capabilities:
    """What a model can be asked for, decided once from its config (`capabilities`): the pipeline's
    checks, the CLI, the demo and the static page's plan.json all read this one value."""
    class_names: tuple[str, ...] = ()  # what each label means, in label order; () for a model without labels
    clustered: bool = False  # its classes are k-means clusters, drawn by their sizes when no class is asked
    distilled: bool = False  # a student: one or a few evaluations, its teacher's guidance built in
    built_in_guidance: float = 0.0  # a student's: its teacher's W
    teacher: str = ""  # a student's teacher, as it was named

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def guidable(self) -> bool:
        """Takes classifier-free guidance of its own (a student's is built in)."""
        return self.labelled and not self.distilled

    @property
    def draws_unlabelled(self) -> bool:
        """Draws with no class asked: not a student of labelled images (it draws what it is asked for)."""
        return not (self.distilled and self.labelled)

    @property
    def inpaints(self) -> bool:
        """RePaint resamples at every one of many steps: not a student's one or two."""
        return not self.distilled

    def as_dict(self) -> dict:
        return {**asdict(self), "class_names": list(self.class_names), "labelled": self.labelled,
                "guidable": self.guidable, "draws_unlabelled": self.draws_unlabelled, "inpaints": self.inpaints}


def capabilities(config: RunConfig) -> Capabilities:
    """A config's Capabilities. Class names: a clustered model's "cluster i", one's own labelled
    data's (train.classes), the dataset's (CLASS_NAMES), else the labels' numbers."""
    k, train, distill = config.model.num_classes, config.train, config.distill
    if not k:
        names: tuple[str, ...] = ()
    elif train.cluster_sizes:
        names = tuple(f"cluster {i}" for i in range(k))
    elif len(train.classes) == k:
        names = tuple(train.classes)
    elif len(CLASS_NAMES.get(train.dataset, ())) == k:
        names = tuple(CLASS_NAMES[train.dataset])
    else:
        names = tuple(str(i) for i in range(k))
    return Capabilities(class_names=names, clustered=bool(k and train.cluster_sizes), distilled=distill.distilled,
                        built_in_guidance=float(distill.guidance) if distill.distilled else 0.0,
                        teacher=distill.teacher)


class Denoiser:
    """A noise-prediction network, its schedule and its conditioning, on one device.

    `model` maps (x_t, t[, y]) to the network's output (eps or v, as `config.model.prediction`
    says); y = `null_label` (or no y at all) is the unconditional prediction. `precision` is the
    autocast of sampling: "auto" (bf16 where the device computes it natively), "fp32", "bf16" or
    "fp16". `guide`, when set (autoguided), is the weaker model guidance pushes away from."""

    def __init__(self, model: torch.nn.Module, config: RunConfig, *, device="cpu", precision: str = "auto",
                 source: Optional[str] = None, source_sha256: Optional[str] = None, step: Optional[int] = None,
                 ema: Optional[bool] = None):
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.schedule: Schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.precision = precision
        self.amp = resolve_precision(precision, self.device)
        self.source = source  # the file it was loaded from, if any
        self.source_sha256 = source_sha256  # the SHA-256 of the bytes that were loaded
        self.step = step  # training steps behind the weights, when known
        self.ema = ema  # True: the EMA weights of a checkpoint; False: its raw weights; None: not from one
        self.guide: Optional[Denoiser] = None  # autoguidance's weaker model (autoguided)

    # -----------------------------------------------------------------------------------------
    # what travels with the network

    @property
    def prediction(self) -> str:
        return self.config.model.prediction

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.model.num_classes

    @property
    def capabilities(self) -> Capabilities:
        """What it can be asked for (labels and their names, guidance, unlabelled draws, inpainting)."""
        return capabilities(self.config)

    @property
    def clustered(self) -> bool:
        """Trained with --clusters K: its classes are k-means clusters of the images, not labels."""
        return self.capabilities.clustered

    @property
    def null_label(self) -> Optional[int]:
        """The label that means "no label" (classifier-free guidance's null token), or None."""
        return self.config.model.num_classes

    @property
    def distilled(self) -> bool:
        """A distilled student (distill.py): one or a few evaluations, its teacher's guidance built in."""
        return self.capabilities.distilled

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    @property
    def dataset(self) -> str:
        return self.config.train.dataset

    def check_labels(self, labels: Optional[torch.Tensor], num_images: Optional[int] = None,
                     guidance: float = 0.0) -> None:
        """Reject label requests the network cannot honour (one-line ValueError)."""
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        if labels is None:
            if not self.capabilities.draws_unlabelled:
                raise ValueError("a distilled student needs a label: one per image, or 'all' for one row per class; "
                                 "it draws no unlabelled images")
            if guidance != 0.0 and self.guide is None:
                raise ValueError("guidance needs labels (classifier-free guidance steers towards a class) or a "
                                 "weaker model to guide with (autoguidance)")
            return
        if self.null_label is None:
            raise ValueError("labels need a class-conditional model; this one was trained without labels")
        if labels.ndim != 1 or (num_images is not None and labels.shape[0] != num_images):
            raise ValueError(f"labels must be a 1-D tensor with one label per image, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.null_label):
            bad = int(labels.max()) if int(labels.max()) >= self.null_label else int(labels.min())
            raise ValueError(f"label {bad} is outside the model's classes 0..{self.null_label - 1}")

    # -----------------------------------------------------------------------------------------
    # autoguidance and identity

    def autoguided(self, weak: "Denoiser"):
        """This model guided by a weaker version of itself (autoguidance, Karras et al. 2024, "Guiding
        a diffusion model with a bad version of itself"): with guidance w, the samplers get
        eps_weak + (1 + w) (eps - eps_weak) (the form of schedule.guidance_mix), which pushes the
        images away from the weak model's errors. `weak` is, e.g., an early checkpoint of the same
        run; it needs the same schedule and the same classes. Returns a copy sharing the networks."""
        if not torch.equal(weak.schedule.betas, self.schedule.betas):
            raise ValueError("the guiding model has another noise schedule (timesteps or betas differ)")
        if weak.num_classes != self.num_classes:
            raise ValueError(f"the guiding model has {weak.num_classes or 'no'} classes, this one "
                             f"{self.num_classes or 'none'}: autoguidance needs the same conditioning")
        guided = self.without_guide()
        guided.guide = Denoiser(weak.model, weak.config, device=self.device, precision=self.precision,
                                source=weak.source, source_sha256=weak.source_sha256, step=weak.step, ema=weak.ema)
        return guided

    def without_guide(self):
        """A shallow copy (the same network) with no autoguidance model."""
        plain = copy.copy(self)
        plain.guide = None
        return plain

    def fingerprint(self) -> str:
        """The SHA-256 of the loaded file, or of the weights themselves for a model held in memory
        (md.train, Diffusion.new): what keys a resumable image set to this very model (and its
        autoguidance model, if any)."""
        if self.guide is not None:
            unguided = self.without_guide().fingerprint()
            return hashlib.sha256(f"{unguided}+{self.guide.fingerprint()}".encode()).hexdigest()
        if self.source_sha256:
            return self.source_sha256
        h = hashlib.sha256()
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # -----------------------------------------------------------------------------------------
    # the network as the samplers and the training loop see it

    def eps_fn(self, labels: Optional[torch.Tensor] = None, guidance: float = 0.0,
               interval: Optional[tuple[float, float]] = None):
        """eps_fn(x_t, t) -> eps for the samplers, under the sampling precision's autocast. With
        labels and guidance w, classifier-free guidance mixes the conditional and unconditional
        outputs (schedule.guidance_mix; w = 0 is plain conditional sampling); labels=None is the
        unconditional path. A v-predicting network's output is turned into eps (eps_from_output).
        An autoguided model mixes its eps with its guide's instead, labels or not. `interval`
        (lo, hi): guide only where the noise level sigma_t is in [lo, hi] (schedule.guidance_weights);
        elsewhere one evaluation gives the unguided prediction."""
        if self.guide is not None and guidance:
            return self._autoguided_eps(labels, guidance, interval)
        model, amp, schedule, prediction, null = self.model, self.amp, self.schedule, self.prediction, self.null_label

        def raw(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(x.device, amp):
                if labels is None:
                    return model(x, t).float()
                y = labels.to(x.device)
                w = _weight(schedule, x, t, guidance, interval)
                if w is None:
                    return model(x, t, y).float()
                both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)])).float()
                cond, uncond = both.chunk(2)
                return _finite(guidance_mix(cond, uncond, w), guidance)  # clipping x0 would hide it as black

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return eps_from_output(schedule, prediction, x, t, raw(x, t))

        return eps_fn

    def _autoguided_eps(self, labels, guidance: float, interval):
        strong, weak = self.without_guide().eps_fn(labels), self.guide.eps_fn(labels)
        schedule = self.schedule

        def autoguided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            w = _weight(schedule, x, t, guidance, interval)
            if w is None:
                return strong(x, t)
            return _finite(guidance_mix(strong(x, t), weak(x, t), w), guidance)
        return autoguided

    def loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, labels: Optional[torch.Tensor] = None,
             *, min_snr_gamma: Optional[float] = None, net=None) -> torch.Tensor:
        """The training loss of a batch (schedule.diffusion_loss) with this network's parameterisation;
        min_snr_gamma defaults to the run's. `net` is the module to call, e.g. its DDP wrapper."""
        gamma = self.config.train.min_snr_gamma if min_snr_gamma is None else min_snr_gamma
        return diffusion_loss(net or self.model, self.schedule, x0, t, noise, labels, gamma, self.prediction)


def _weight(schedule: Schedule, x: torch.Tensor, t: torch.Tensor, guidance: float,
            interval: Optional[tuple[float, float]]):
    """The guidance weight eps_fn mixes with: the float w when every step is guided, a per-image
    tensor inside an interval, None when no image of the batch is guided (w = 0 or outside it)."""
    if not guidance:
        return None
    if interval is None:
        return guidance
    w = guidance_weights(schedule, t, guidance, interval)
    return w.to(x.device).view(-1, *[1] * (x.ndim - 1)) if bool(w.any()) else None


def _finite(mixed: torch.Tensor, guidance: float) -> torch.Tensor:
    if not bool(torch.isfinite(mixed).all()):
        raise ValueError(f"guidance {guidance:g} made the model's prediction overflow (non-finite values); "
                         "use a smaller guidance")
    return mixed
