"""The `Diffusion` object: a trained network with everything that always travels with it.

A network alone cannot be sampled: it needs its schedule, what it predicts (eps or v), how many
classes it knows and which label means "none", and the device and precision it runs at. This
object holds them together and offers what every caller needs — the noise prediction with
guidance, the training loss, sampling with any sampler, inversion and interpolation — so no
caller rebuilds a schedule or passes a null label by hand.

    diff = Diffusion.load("runs/quick/checkpoints/last.pt")
    images = diff.sample(16, label=7, guidance=0.5, sampler="dpmpp", steps=20, seed=0)

Not here: the equations (schedule.py), the sampler loops (samplers.py), batching and resumable
image sets (sampling.py, partial.py), the training loop (training.py).
"""
from __future__ import annotations

import copy
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .config import RunConfig
from .device import autocast, resolve_device, resolve_precision
from .schedule import Schedule, diffusion_loss, eps_from_output, guidance_mix, guidance_weights, make_schedule

Label = Union[None, int, str, Sequence[int], torch.Tensor]


class Diffusion:
    """A noise-prediction network, its schedule and its conditioning, on one device.

    `model` maps (x_t, t[, y]) to the network's output (eps or v, as `config.model.prediction`
    says); y = `null_label` (or no y at all) is the unconditional prediction. `precision` is the
    autocast of sampling: "auto" (bf16 on CPU and CUDA), "fp32", "bf16" or "fp16"."""

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
        self.guide: Optional["Diffusion"] = None  # autoguidance's weaker model (autoguided)

    # -----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def load(cls, source: str | os.PathLike, *, device="auto", precision: str = "auto",
             use_ema: bool = True) -> "Diffusion":
        """A shipped model by name ("mnist", "fashion_mnist", ...: pretrained.PRETRAINED), a model
        folder written by `export`, or a checkpoint written by `train` (its EMA weights unless
        use_ema=False)."""
        from .checkpoint import load_model
        from .pretrained import resolve
        device = resolve_device(device) if isinstance(device, str) else device
        path, pinned = resolve(source)
        if path.is_dir():
            from .hub import load_folder
            if not use_ema:
                raise ValueError(f"{source}: a model folder holds one set of weights (--no-ema is for checkpoints)")
            model, cfg, info = load_folder(path, pinned)
            return cls(model, cfg, device=device, precision=precision, source=str(source),
                       source_sha256=info["sha256"], step=info.get("step"), ema=info.get("ema"))
        model, cfg, ckpt = load_model(path, device=device, use_ema=use_ema)
        return cls(model, cfg, device=device, precision=precision, source=str(source),
                   source_sha256=ckpt["sha256"], step=int(ckpt["step"]), ema=use_ema and ckpt.get("ema") is not None)

    @classmethod
    def new(cls, config: RunConfig, *, device="cpu", precision: str = "auto", seed: int = 0) -> "Diffusion":
        """An untrained network of `config`, its weights drawn from `seed`."""
        from .models import build_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config.model, config.diffusion.timesteps)
        return cls(model, config, device=device, precision=precision)

    def export(self, output: str | os.PathLike, **kwargs):
        """hub.export: this model as a folder (model.safetensors, config.json, scheduler_config.json,
        a model card); `md.load(output)` reads it back."""
        from .hub import export
        return export(self, output, **kwargs)

    def autoguided(self, weak: "Diffusion") -> "Diffusion":
        """This model guided by a weaker version of itself (autoguidance, Karras et al. 2024, "Guiding
        a diffusion model with a bad version of itself"): with guidance w, the samplers get
        eps_weak + (1 + w) (eps - eps_weak) (the form of schedule.guidance_mix), which pushes the
        images away from the weak model's errors. `weak` is, e.g., an early checkpoint of the same
        run; it needs the same schedule and the same classes. No labels are needed; with labels,
        both models get them. Returns a new Diffusion sharing the networks."""
        if not torch.equal(weak.schedule.betas, self.schedule.betas):
            raise ValueError("the guiding model has another noise schedule (timesteps or betas differ)")
        if weak.num_classes != self.num_classes:
            raise ValueError(f"the guiding model has {weak.num_classes or 'no'} classes, this one "
                             f"{self.num_classes or 'none'}: autoguidance needs the same conditioning")
        guided = copy_without_guide(self)
        guided.guide = Diffusion(weak.model, weak.config, device=self.device, precision=self.precision,
                                 source=weak.source, source_sha256=weak.source_sha256, step=weak.step, ema=weak.ema)
        return guided

    def fingerprint(self) -> str:
        """The SHA-256 of the loaded file, or of the weights themselves for a model held in memory
        (md.train, Diffusion.new): what keys a resumable image set to this very model (and its
        autoguidance model, if any)."""
        if self.guide is not None:
            import hashlib
            unguided = copy_without_guide(self)
            return hashlib.sha256(f"{unguided.fingerprint()}+{self.guide.fingerprint()}".encode()).hexdigest()
        if self.source_sha256:
            return self.source_sha256
        import hashlib
        h = hashlib.sha256()
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # -----------------------------------------------------------------------------------------
    # what travels with the network

    @property
    def prediction(self) -> str:
        return self.config.model.prediction

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.model.num_classes

    @property
    def clustered(self) -> bool:
        """Trained with --clusters K: its classes are k-means clusters of the images, not labels."""
        return bool(self.config.train.cluster_sizes)

    @property
    def null_label(self) -> Optional[int]:
        """The label that means "no label" (classifier-free guidance's null token), or None."""
        return self.config.model.num_classes

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    @property
    def dataset(self) -> str:
        return self.config.train.dataset

    def __repr__(self) -> str:
        m = self.config.model
        cond = (f"{m.num_classes} clusters" if self.clustered else f"{m.num_classes} classes") if m.num_classes \
            else "unconditional"
        return (f"Diffusion({m.name}, {cond}, predicts {m.prediction}, T={self.timesteps} "
                f"{self.config.diffusion.schedule}, {self.config.train.dataset}, on {self.device})")

    # -----------------------------------------------------------------------------------------
    # labels: the one place that decides what a label request means

    def labels(self, label: Label, num_images: int, seed: int = 0) -> Optional[torch.Tensor]:
        """A label request -> one class per image (or None for the unconditional model's path).

        None: no labels. An int K: every image a K. "all": the same number of each class in
        order (0, 0, ..., 1, 1, ...), num_images a multiple of the classes. "clusters" (models
        trained with --clusters): each image's cluster drawn by the clusters' sizes, image i's from
        (seed, i). A sequence or tensor: one label per image. Requests the model cannot honour are
        a one-line ValueError."""
        if label is None:
            return None
        if not self.num_classes:
            raise ValueError(f"label {label!r}: this is an unconditional model (train with --conditional "
                             "for class labels)")
        if isinstance(label, str) and label == "clusters":
            if not self.clustered:
                raise ValueError("label 'clusters' is for models trained with --clusters K; this one has class labels")
            from .clusters import draw_clusters
            return torch.from_numpy(draw_clusters(self.config.train.cluster_sizes, num_images, seed))
        if isinstance(label, str):
            if label != "all":
                raise ValueError(f"label must be a class number, 'all' or one label per image, got {label!r}")
            if num_images % self.num_classes:
                raise ValueError(f"label 'all' draws the same number of each of the {self.num_classes} classes: "
                                 f"{num_images} images is not a multiple of {self.num_classes}")
            labels = torch.arange(self.num_classes).repeat_interleave(num_images // self.num_classes)
        elif isinstance(label, (int, np.integer)):
            labels = torch.full((num_images,), int(label), dtype=torch.long)
        else:
            labels = torch.as_tensor(np.asarray(label)).long()
        self.check_labels(labels, num_images)
        return labels

    def default_label(self, label: Label) -> Label:
        """What drawing "without a label" means: for a model trained on clusters, clusters drawn by
        their sizes (which guidance then sharpens); otherwise the unconditional path."""
        return "clusters" if label is None and self.clustered else label

    def check_labels(self, labels: Optional[torch.Tensor], num_images: Optional[int] = None,
                     guidance: float = 0.0) -> None:
        """Reject label requests the model cannot honour (one-line ValueError)."""
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        if labels is None:
            if guidance != 0.0 and self.guide is None:
                raise ValueError("guidance needs labels (classifier-free guidance steers towards a class) or a "
                                 "weaker model to guide with (autoguidance)")
            return
        if self.null_label is None:
            raise ValueError("labels need a class-conditional model; this one was trained without --conditional")
        if labels.ndim != 1 or (num_images is not None and labels.shape[0] != num_images):
            raise ValueError(f"labels must be a 1-D tensor with one label per image, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.null_label):
            bad = int(labels.max()) if int(labels.max()) >= self.null_label else int(labels.min())
            raise ValueError(f"label {bad} is outside the model's classes 0..{self.null_label - 1}")

    # -----------------------------------------------------------------------------------------
    # the network as the samplers see it

    def eps_fn(self, labels: Optional[torch.Tensor] = None, guidance: float = 0.0,
               interval: Optional[tuple[float, float]] = None):
        """eps_fn(x_t, t) -> eps for the samplers, under the sampling precision's autocast. With
        labels and guidance w, classifier-free guidance mixes the conditional and unconditional
        outputs (schedule.guidance_mix; w = 0 is plain conditional sampling); labels=None is the
        unconditional path. A v-predicting network's output is turned into eps (eps_from_output).
        An autoguided model (autoguided) mixes its eps with its guide's instead, labels or not.
        `interval` (lo, hi): guide only where the noise level sigma_t is in [lo, hi]
        (schedule.guidance_weights); elsewhere one evaluation gives the unguided prediction."""
        if self.guide is not None and guidance:
            strong, weak = copy_without_guide(self).eps_fn(labels), self.guide.eps_fn(labels)
            schedule = self.schedule

            def autoguided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                w = _weight(schedule, x, t, guidance, interval)
                if w is None:
                    return strong(x, t)
                mixed = guidance_mix(strong(x, t), weak(x, t), w)
                if not bool(torch.isfinite(mixed).all()):
                    raise ValueError(f"guidance {guidance:g} made the prediction overflow (non-finite values); "
                                     "use a smaller guidance")
                return mixed
            return autoguided
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
                mixed = guidance_mix(cond, uncond, w)
                if not bool(torch.isfinite(mixed).all()):  # clipping x0 would hide it as black images
                    raise ValueError(f"guidance {guidance:g} made the model's prediction overflow (non-finite "
                                     "values); use a smaller guidance")
                return mixed

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return eps_from_output(schedule, prediction, x, t, raw(x, t))

        return eps_fn

    def loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, labels: Optional[torch.Tensor] = None,
             *, min_snr_gamma: Optional[float] = None, net=None) -> torch.Tensor:
        """The training loss of a batch (schedule.diffusion_loss) with this network's parameterisation;
        min_snr_gamma defaults to the run's. `net` is the module to call, e.g. its DDP wrapper."""
        gamma = self.config.train.min_snr_gamma if min_snr_gamma is None else min_snr_gamma
        return diffusion_loss(net or self.model, self.schedule, x0, t, noise, labels, gamma, self.prediction)

    # -----------------------------------------------------------------------------------------
    # sampling

    def sample(self, num_images: Optional[int] = None, *, label: Label = None, guidance: float = 0.0,
               guidance_interval: Optional[tuple[float, float]] = None, sampler: str = "ddpm",
               steps: Optional[int] = None, eta: Optional[float] = None, spacing: Optional[str] = None,
               clip: bool = True, first_order_switches: bool = True, corrector: Optional[int] = None, seed: int = 0,
               batch_size: int = 256, progress: bool = False, callback=None) -> np.ndarray:
        """Draw images: uint8 (N, 28, 28), 0 = background. Image i depends only on (seed, i), never on
        the batch size. `label`: see `labels` (default num_images: 64, or 10 per class with "all");
        `guidance` W needs labels. Samplers: "ddpm" (ancestral; fewer `steps` than T respaces it),
        "ddim" (eta = 0 deterministic) and "dpmpp" (DPM-Solver++(2M); eta None: 2, or 0.5 with guidance,
        SamplerOptions.eta_for; with guidance, dpmpp guides only at noise levels in
        `guidance_interval`, default 0.3-5, SamplerOptions.interval_for, with first-order steps where
        guidance switches unless `first_order_switches` is False, and UniPC's corrector, `corrector`
        None: 1 with guidance, else 0, SamplerOptions.corrector_for); each has a default step count
        and spacing (samplers.DEFAULT_STEPS / DEFAULT_SPACING). `callback(start, i, t, x_t, x0)` sees
        every network evaluation (sampling.Trajectory records frames with it)."""
        from .sampling import SamplerOptions, generate
        if num_images is None:  # one label per image given: that many; "all": 10 of each class; else 64
            if label is not None and not isinstance(label, (str, int, np.integer)):
                num_images = len(label)
            else:
                num_images = 10 * self.num_classes if label == "all" and self.num_classes else 64
        options = SamplerOptions(sampler=sampler, steps=steps, eta=eta, spacing=spacing, clip=clip, guidance=guidance,
                                 guidance_interval=guidance_interval, first_order_switches=first_order_switches,
                                 corrector=corrector)
        labels = self.labels(self.default_label(label), num_images, seed)
        return generate(self, num_images, options, labels=labels, seed=seed,
                        batch_size=batch_size, progress=progress, callback=callback)

    def sample_tensor(self, num_images: int, *, label: Label = None, seed: int = 0, batch_size: int = 256,
                      **options) -> torch.Tensor:
        """As `sample`, but the float images in [-1, 1], (N, 1, 28, 28), before rounding to uint8."""
        from .sampling import SamplerOptions, sample_batches
        opts = SamplerOptions(**options)
        labels = self.labels(self.default_label(label), num_images, seed)
        parts = [x.float().cpu() for _, x in sample_batches(self, num_images, opts, labels=labels, seed=seed,
                                                            batch_size=batch_size)]
        return torch.cat(parts)

    def inpaint(self, images, mask, *, label: Label = None, guidance: float = 0.0,
                guidance_interval: Optional[tuple[float, float]] = None, sampler: str = "ddpm",
                steps: Optional[int] = None, eta: Optional[float] = None, spacing: Optional[str] = None, clip: bool = True,
                first_order_switches: bool = True, corrector: Optional[int] = None, jump_length: int = 10,
                resample: int = 1, seed: int = 0,
                batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Fill in the unknown pixels of `images` (uint8 (N, 28, 28), or floats in [-1, 1]) where `mask`
        is 0 (1 = known; (28, 28) for all, or one per image): RePaint (Lugmayr et al. 2022), with
        its resampling when resample > 1 (each block of `jump_length` steps done `resample` times).
        Known pixels come back as they were (up to uint8 rounding); uint8 (N, 28, 28)."""
        from .editing import check_mask
        from .sampling import SamplerOptions, inpaint_batches
        known = self._as_model_range(images)
        m = torch.as_tensor(check_mask(mask, len(known)))[:, None]
        options = SamplerOptions(sampler=sampler, steps=steps, eta=eta, spacing=spacing, clip=clip, guidance=guidance,
                                 guidance_interval=guidance_interval, first_order_switches=first_order_switches,
                                 corrector=corrector)
        return self._gather(inpaint_batches(self, known, m, options, jump_length=jump_length, resample=resample,
                                            labels=self.labels(label, len(known)), seed=seed, batch_size=batch_size,
                                            progress=progress), len(known))

    def edit(self, images, strength: float, *, label: Label = None, guidance: float = 0.0,
             guidance_interval: Optional[tuple[float, float]] = None, sampler: str = "ddpm",
             steps: Optional[int] = None, eta: Optional[float] = None, spacing: Optional[str] = None, clip: bool = True,
             first_order_switches: bool = True, corrector: Optional[int] = None, seed: int = 0, batch_size: int = 256,
             progress: bool = False) -> np.ndarray:
        """SDEdit (Meng et al. 2022): noise `images` to `strength` in [0, 1] of the way and denoise,
        towards `label` with `guidance` (a digit or a rough sketch into a K). Strength 0 returns the
        input; strength 1 ignores it (the same images as `sample` with this seed). `steps` counts a
        full run's; an edit takes the `strength` share of them. uint8 (N, 28, 28)."""
        from .sampling import SamplerOptions, edit_batches
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        x = self._as_model_range(images)
        options = SamplerOptions(sampler=sampler, steps=steps, eta=eta, spacing=spacing, clip=clip, guidance=guidance,
                                 guidance_interval=guidance_interval, first_order_switches=first_order_switches,
                                 corrector=corrector)
        labels = self.labels(label, len(x))
        if strength == 0.0:
            self.check_labels(labels, len(x), guidance)
            from .data import to_uint8
            return to_uint8(x)
        return self._gather(edit_batches(self, x, strength, options, labels=labels, seed=seed, batch_size=batch_size,
                                         progress=progress), len(x))

    @staticmethod
    def _as_model_range(images) -> torch.Tensor:
        """uint8 (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1]; float tensors in that range pass through."""
        from .data import to_model_range
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images.reshape(-1, 1, 28, 28).float()
        else:
            a = np.asarray(images)
            if a.dtype != np.uint8 or a.shape[-2:] != (28, 28):
                raise ValueError(f"images must be uint8 (N, 28, 28) or floats in [-1, 1], got {a.dtype} {a.shape}")
            x = to_model_range(a.reshape(-1, 28, 28))
        if len(x) == 0:
            raise ValueError("no images given")
        return x

    @staticmethod
    def _gather(batches, n: int) -> np.ndarray:
        from .data import to_uint8
        out = np.empty((n, 28, 28), dtype=np.uint8)
        for start, x0 in batches:
            out[start:start + len(x0)] = to_uint8(x0)
        return out

    @torch.no_grad()
    def invert(self, images: torch.Tensor, *, steps: Optional[int] = 50, spacing: str = "uniform",
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic DDIM inversion: images in [-1, 1], (N, 1, 28, 28) -> the noise x_T that
        `decode` (DDIM, eta = 0, same steps) maps back to (approximately) the same images."""
        from .samplers import ddim_invert
        self.check_labels(labels)
        return ddim_invert(self.eps_fn(labels), self.schedule, images.to(self.device), steps=steps, spacing=spacing)

    @torch.no_grad()
    def decode(self, x_T: torch.Tensor, *, steps: Optional[int] = 50, spacing: str = "uniform", clip: bool = True,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from given noise. Without clipping it is the exact inverse of
        `invert` up to discretisation error, but only for an exact eps: at t = T-1 the x0-prediction
        divides the network's error by sqrt(a_{T-1}) (~5e-5 for the cosine schedule), and a trained
        model's unclipped trajectory can diverge. Clipping (the default) keeps it on the data range;
        measured on a quick-preset MNIST model, the 50-step round trip error was 7/255 with clipping
        and 49/255 without."""
        from .samplers import ddim
        self.check_labels(labels)
        return ddim(self.eps_fn(labels), self.schedule, x_T.to(self.device), steps=steps, eta=0.0, spacing=spacing,
                    clip=clip)

    @torch.no_grad()
    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, frames: int, *, steps: Optional[int] = 50,
                    spacing: str = "uniform", clip: bool = True) -> torch.Tensor:
        """Images along the great circle between two noises z0, z1 (each (1, 1, 28, 28)): slerp at
        `frames` evenly spaced fractions, then deterministic DDIM. Returns (frames, 1, 28, 28) in [-1, 1];
        frame 0 decodes z0 and the last frame z1."""
        from .samplers import slerp
        if frames < 2:
            raise ValueError(f"interpolation needs at least 2 frames, got {frames}")
        alphas = torch.linspace(0, 1, frames, dtype=torch.float64).tolist()
        zs = torch.cat([slerp(z0, z1, a) for a in alphas])
        return self.decode(zs, steps=steps, spacing=spacing, clip=clip)

    @torch.no_grad()
    def interpolate_between(self, ends, frames: int, *, steps: Optional[int] = 50, spacing: str = "uniform",
                            clip: bool = True) -> torch.Tensor:
        """`interpolate` between two seeds (the noise of image 0 of `sample(seed=A)` and of
        `sample(seed=B)`) or two real images (uint8 (2, 28, 28), inverted to noise with `invert`)."""
        from .data import to_model_range
        if isinstance(ends, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in ends):
            z0, z1 = (self.noise(int(seed)) for seed in ends)
        else:
            z = self.invert(to_model_range(np.asarray(ends)).to(self.device), steps=steps, spacing=spacing)
            z0, z1 = z[:1], z[1:]
        return self.interpolate(z0, z1, frames, steps=steps, spacing=spacing, clip=clip)

    def noise(self, seed: int, num_images: int = 1, first_index: int = 0) -> torch.Tensor:
        """The x_T that `sample(seed=seed)` starts images first_index.. from, (N, 1, 28, 28)."""
        from .samplers import PerImageNoise
        return PerImageNoise(seed, num_images, device=self.device, first_index=first_index).initial((1, 28, 28))


def load(source: str | os.PathLike, **kwargs) -> Diffusion:
    """`Diffusion.load`: a shipped model's name, a model folder, or a training checkpoint."""
    return Diffusion.load(source, **kwargs)


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


def copy_without_guide(diff: Diffusion) -> Diffusion:
    """A shallow copy (the same network) with no autoguidance model."""
    plain = copy.copy(diff)
    plain.guide = None
    return plain
