"""The `Diffusion` pipeline: a denoiser you can load by name, ask for labels, sample, edit and invert.

    diff = Diffusion.load("mnist")                 # a shipped model, a model folder or a checkpoint
    images = diff.sample(16, label=7, seed=0)      # the sampling the model ships with (its card's)

`Denoiser` (denoiser.py) is the network with its schedule, conditioning and guided noise
prediction; this class adds what a user does with one: loading, label requests (labels.py),
sampling through one resolved plan (sampling.plan), inpainting and SDEdit, DDIM inversion and
interpolation. Sampling options not given come from the model's own `sampling` section.

Not here: the equations (schedule.py), the sampler loops (samplers.py), batching and resumable
image sets (sampling.py, partial.py), the training loop (training.py).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Optional

import numpy as np
import torch

from . import labels as label_rules
from .checkpoint import CheckpointError, load_model
from .config import RunConfig, SamplingConfig
from .data import to_model_range, to_uint8
from .denoiser import Denoiser
from .device import resolve_device
from .editing import check_mask
from .hub import export as export_folder
from .hub import load_folder, load_guide
from .labels import Label
from .models import build_model
from .pretrained import PRETRAINED, resolve
from .samplers import PerImageNoise, slerp
from .sampling import (
    SamplingPlan,
    decode,
    edit_batches,
    generate,
    inpaint_batches,
    invert,
    options_for,
    plan,
    sample_batches,
    section_of_report,
)


class Diffusion(Denoiser):
    """A denoiser with the pipeline on top: load, labels, sample, inpaint, edit, invert, interpolate.

    Every sampling method takes the options of config.SamplingConfig as keywords (sampler, steps,
    guidance, eta, and the research ones: spacing, clip, guidance_interval, first_order_switches,
    corrector) or as one `options` object; what is not given is the model's own (its config's
    `sampling` section: what its card recommends; DPM-Solver++ 20 steps for a checkpoint without one)."""

    # -----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def load(cls, source: str | os.PathLike, *, device="auto", precision: str = "auto",
             use_ema: bool = True) -> "Diffusion":
        """A shipped model by name ("mnist", "fashion_mnist", ...: pretrained.PRETRAINED), a model
        folder written by `export`, or a checkpoint written by `train` (its EMA weights unless
        use_ema=False)."""
        what = f"a shipped model's name ({', '.join(PRETRAINED)}), a model folder or a checkpoint file"
        if not isinstance(source, (str, os.PathLike)):  # pathlib's own TypeError would not name the argument
            raise TypeError(f"source must be {what}, got {source!r}")
        if not str(os.fspath(source)).strip():  # Path("") is the current folder: never what was meant
            raise ValueError(f"source is empty: give {what}")
        device = resolve_device(device) if isinstance(device, str) else device
        path, pinned = resolve(source)
        if path.is_dir():
            if not use_ema:  # the CLI and the library share this check: both names are given
                raise ValueError(f"{source}: a model folder holds one set of weights (use_ema=False, --no-ema, "
                                 "is for checkpoints)")
            model, cfg, info = load_folder(path, pinned and pinned["sha256"])
            diff = cls(model, cfg, device=device, precision=precision, source=str(source),
                       source_sha256=info["sha256"], step=info.get("step"), ema=info.get("ema"))
            if pinned is not None and "guide" in info and "guide_sha256" not in pinned:
                raise CheckpointError(f"{path}/config.json names a guide this shipped model does not have "
                                      "(edited or replaced)")
            weak = load_guide(path, cfg, info, pinned and pinned.get("guide_sha256"))
            if weak is None:
                return diff
            g = info["guide"]
            return diff.autoguided(Denoiser(weak, cfg, device=device, precision=precision,
                                            source=f"{source}/{g['weights']}", source_sha256=g["sha256"],
                                            step=g.get("step"), ema=g.get("ema")))
        model, cfg, ckpt = load_model(path, device=device, use_ema=use_ema)
        return cls(model, cfg, device=device, precision=precision, source=str(source),
                   source_sha256=ckpt["sha256"], step=int(ckpt["step"]), ema=use_ema and ckpt.get("ema") is not None)

    @classmethod
    def new(cls, config: RunConfig, *, device="cpu", precision: str = "auto", seed: int = 0) -> "Diffusion":
        """An untrained network of `config`, its weights drawn from `seed`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config.model, config.diffusion.timesteps)
        return cls(model, config, device=device, precision=precision)

    def export(self, output: str | os.PathLike, *, metrics: Optional[dict] = None, **kwargs):
        """hub.export: this model as a folder (model.safetensors, config.json, scheduler_config.json,
        a model card); `md.load(output)` reads it back. With `metrics` (an `evaluate --json` report
        of these weights), the folder's sampling section is the draw that report scored."""
        model = self
        if metrics and isinstance(metrics.get("sampler"), dict):
            model = self.with_sampling(section_of_report(self, metrics["sampler"]))
        return export_folder(model, output, metrics=metrics, **kwargs)

    def with_sampling(self, sampling: SamplingConfig) -> "Diffusion":
        """A copy (the same network) whose own sampling section is `sampling`."""
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, sampling=sampling).validate()
        return other

    def __repr__(self) -> str:
        m = self.config.model
        cond = (f"{m.num_classes} clusters" if self.clustered else f"{m.num_classes} classes") if m.num_classes \
            else "unconditional"
        return (f"Diffusion({m.name}, {cond}, predicts {m.prediction}, T={self.timesteps} "
                f"{self.config.diffusion.schedule}, {self.config.train.dataset}, on {self.device})")

    # -----------------------------------------------------------------------------------------
    # labels and the plan

    def labels(self, label: Label, num_images: int, seed: int = 0, *, names: str = "api") -> Optional[torch.Tensor]:
        """A label request -> one class per image, or None (labels.resolve: None, K, "all",
        "clusters" or one label per image), checked against the model's classes. `names`: how
        errors name the options, "api" (label=) or "cli" (--label)."""
        labels = label_rules.resolve(label, num_images, num_classes=self.num_classes,
                                     cluster_sizes=self.config.train.cluster_sizes, seed=seed, names=names)
        if labels is not None:
            self.check_labels(labels, num_images)
        return labels

    def check_labelled(self, labelled: bool, names: str = "api") -> None:
        """A distilled student of labelled images draws only the classes it is asked for, its
        teacher's guidance built in: asked for none, it is one error saying what it needs, before
        any other check (a hint about guidance would mislead: a student takes none)."""
        if not labelled and not self.capabilities.draws_unlabelled:
            label = ("--label K or --label all (one row per class)" if names == "cli" else
                     "label=K, one label per image, or label='all'")
            raise ValueError(f"a distilled student needs a label: {label}; it takes no guidance (its teacher's "
                             f"{self.config.distill.guidance:g} is built in)")

    def default_label(self, label: Label) -> Label:
        """What drawing "without a label" means: for a model trained on clusters, clusters drawn by
        their sizes (which guidance then sharpens); otherwise the unconditional path."""
        return "clusters" if label is None and self.clustered else label

    def plan(self, options: Optional[SamplingConfig] = None, *, labelled: bool = True, names: str = "api",
             task: str = "sample", strength: Optional[float] = None, **given) -> SamplingPlan:
        """The resolved plan of a `task` (sampling.plan: sample, edit at `strength`, inpaint, invert)
        with these options over the model's own; `names`: how errors name the options, "api"
        (guidance=) or "cli" (--guidance). Inpainting runs ddpm unless a sampler is given; inversion
        takes only the steps, spacing and clipping given."""
        if options is not None:
            given = {**options.to_dict(), **{k: v for k, v in given.items() if v is not None}}
        if task == "invert":
            chosen = SamplingConfig().override(**{k: given.get(k) for k in ("steps", "spacing", "clip")})
            return plan(self, chosen, task=task, names=names)
        if task == "inpaint" and given.get("sampler") is None:
            given["sampler"] = "ddpm"
        return plan(self, options_for(self, labelled=labelled, **given), task=task, strength=strength, names=names)

    # -----------------------------------------------------------------------------------------
    # sampling

    def sample(self, num_images: Optional[int] = None, *, label: Label = None, seed: int = 0, batch_size: int = 256,
               progress: bool = False, callback=None, options: Optional[SamplingConfig] = None,
               **sampling) -> np.ndarray:
        """Draw images: uint8 (N, 28, 28), 0 = background. Image i depends only on (seed, i), never on
        the batch size. `label`: see `labels` (default num_images: 64, or 10 per class with "all");
        a model trained on clusters draws its clusters by their sizes when no label is given.
        `sampling` / `options`: config.SamplingConfig's fields, over the model's own. `callback(start,
        i, t, x_t, x0)` sees every network evaluation (sampling.Trajectory records frames with it)."""
        num_images = label_rules.count_for(label, self.num_classes, _count(num_images, "num_images"))
        labels = self.labels(self.default_label(label), num_images, _seed(seed))
        self.check_labelled(labels is not None)
        drawn = self.plan(options, labelled=labels is not None, **sampling)
        return generate(self, num_images, drawn, labels=labels, seed=seed, batch_size=_count(batch_size, "batch_size"),
                        progress=progress, callback=callback)

    def sample_tensor(self, num_images: int, *, label: Label = None, seed: int = 0, batch_size: int = 256,
                      options: Optional[SamplingConfig] = None, **sampling) -> torch.Tensor:
        """As `sample`, but the float images in [-1, 1], (N, 1, 28, 28), before rounding to uint8."""
        labels = self.labels(self.default_label(label), _count(num_images, "num_images"), _seed(seed))
        self.check_labelled(labels is not None)
        drawn = self.plan(options, labelled=labels is not None, **sampling)
        parts = [x.float().cpu() for _, x in sample_batches(self, num_images, drawn, labels=labels, seed=seed,
                                                            batch_size=_count(batch_size, "batch_size"))]
        return torch.cat(parts)

    def inpaint(self, images, mask, *, label: Label = None, jump_length: int = 10, resample: int = 1, seed: int = 0,
                batch_size: int = 256, progress: bool = False, options: Optional[SamplingConfig] = None,
                **sampling) -> np.ndarray:
        """Fill in the unknown pixels of `images` (uint8 (N, 28, 28), or floats in [-1, 1]) where `mask`
        is 0 (1 = known; (28, 28) for all, or one per image): RePaint (Lugmayr et al. 2022), with
        its resampling when resample > 1 (each block of `jump_length` steps done `resample` times).
        RePaint needs a sampler that restarts at every step: ddpm unless ddim is asked for.
        Known pixels come back as they were (up to uint8 rounding); uint8 (N, 28, 28)."""
        known = self._as_model_range(images)
        m = torch.as_tensor(check_mask(mask, len(known)))[:, None]
        labels = self.labels(label, len(known), _seed(seed))
        jump_length, resample = _count(jump_length, "jump_length"), _count(resample, "resample")
        drawn = self.plan(options, labelled=labels is not None, task="inpaint", **sampling)
        return self._gather(inpaint_batches(self, known, m, drawn, jump_length=jump_length, resample=resample,
                                            labels=labels, seed=seed, batch_size=_count(batch_size, "batch_size"),
                                            progress=progress), len(known))

    def edit(self, images, strength: float, *, label: Label = None, seed: int = 0, batch_size: int = 256,
             progress: bool = False, options: Optional[SamplingConfig] = None, **sampling) -> np.ndarray:
        """SDEdit (Meng et al. 2022): noise `images` to `strength` in [0, 1] of the way and denoise,
        towards `label` with guidance (a digit or a rough sketch into a K). Strength 0 returns the
        input; strength 1 ignores it (the same images as `sample` with this seed). `steps` counts a
        full run's; an edit takes the `strength` share of them. uint8 (N, 28, 28)."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength!r}")
        x = self._as_model_range(images)
        labels = self.labels(label, len(x), _seed(seed))
        self.check_labelled(labels is not None)
        if strength == 0.0:  # the options are still checked
            self.check_labels(labels, len(x), self.plan(options, labelled=labels is not None, **sampling).guidance)
            return to_uint8(x)
        drawn = self.plan(options, labelled=labels is not None, task="edit", strength=strength, **sampling)
        return self._gather(edit_batches(self, x, drawn, labels=labels, seed=seed,
                                         batch_size=_count(batch_size, "batch_size"), progress=progress), len(x))

    @staticmethod
    def _as_model_range(images) -> torch.Tensor:
        """uint8 (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1]; float tensors in that range pass through."""
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
        out = np.empty((n, 28, 28), dtype=np.uint8)
        for start, x0 in batches:
            out[start:start + len(x0)] = to_uint8(x0)
        return out

    def invert(self, images: torch.Tensor, *, steps: Optional[int] = None, spacing: Optional[str] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic DDIM inversion: images in [-1, 1], (N, 1, 28, 28) -> the noise x_T that
        `decode` (DDIM, eta = 0, same steps) maps back to (approximately) the same images. Steps and
        grid: the plan's rule (sampling.INVERT_STEPS uniform steps) unless given."""
        return invert(self, images, self.plan(task="invert", steps=steps, spacing=spacing), labels)

    def decode(self, x_T: torch.Tensor, *, steps: Optional[int] = None, spacing: Optional[str] = None,
               clip: bool = True, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from given noise. Without clipping it is the exact inverse of
        `invert` up to discretisation error, but only for an exact eps: at t = T-1 the x0-prediction
        divides the network's error by sqrt(a_{T-1}) (~5e-5 for the cosine schedule), and a trained
        model's unclipped trajectory can diverge. Clipping (the default) keeps it on the data range;
        measured on a quick-preset MNIST model, the 50-step round trip error was 7/255 with clipping
        and 49/255 without."""
        return decode(self, x_T, self.plan(task="invert", steps=steps, spacing=spacing, clip=clip), labels)

    @torch.no_grad()
    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, frames: int, *, steps: Optional[int] = None,
                    spacing: Optional[str] = None, clip: bool = True) -> torch.Tensor:
        """Images along the great circle between two noises z0, z1 (each (1, 1, 28, 28)): slerp at
        `frames` evenly spaced fractions, then deterministic DDIM. Returns (frames, 1, 28, 28) in [-1, 1];
        frame 0 decodes z0 and the last frame z1."""
        if frames < 2:
            raise ValueError(f"interpolation needs at least 2 frames, got {frames}")
        alphas = torch.linspace(0, 1, frames, dtype=torch.float64).tolist()
        zs = torch.cat([slerp(z0, z1, a) for a in alphas])
        return self.decode(zs, steps=steps, spacing=spacing, clip=clip)

    @torch.no_grad()
    def interpolate_between(self, ends, frames: int, *, steps: Optional[int] = None, spacing: Optional[str] = None,
                            clip: bool = True) -> torch.Tensor:
        """`interpolate` between two seeds (the noise of image 0 of `sample(seed=A)` and of
        `sample(seed=B)`) or two real images (uint8 (2, 28, 28), inverted to noise with `invert`)."""
        if isinstance(ends, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in ends):
            z0, z1 = (self.noise(int(seed)) for seed in ends)
        else:
            z = self.invert(to_model_range(np.asarray(ends)).to(self.device), steps=steps, spacing=spacing)
            z0, z1 = z[:1], z[1:]
        return self.interpolate(z0, z1, frames, steps=steps, spacing=spacing, clip=clip)

    def noise(self, seed: int, num_images: int = 1, first_index: int = 0) -> torch.Tensor:
        """The x_T that `sample(seed=seed)` starts images first_index.. from, (N, 1, 28, 28)."""
        return PerImageNoise(seed, num_images, device=self.device, first_index=first_index).initial((1, 28, 28))


def load(source: str | os.PathLike, **kwargs) -> Diffusion:
    """`Diffusion.load`: a shipped model's name, a model folder, or a training checkpoint."""
    return Diffusion.load(source, **kwargs)


def _count(v, name: str) -> Optional[int]:
    """A positive integer argument (None passes), or a TypeError / ValueError naming it."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v}")
    return int(v)


def _seed(v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {v!r}")
    if v < 0:
        raise ValueError(f"seed must be a non-negative integer, got {v}")
    return int(v)
