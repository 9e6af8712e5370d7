"""Images from a `Diffusion`, batch by batch: sampler options, per-image seeds, progress, trajectories.

`sample_batches` is the core: it yields each finished batch, every image drawn from its own
generator seeded with (seed, image index), so an image never depends on the batch size or on how
many images were asked for. `generate` gathers the batches into one uint8 array; partial.py keeps
them on disk as they come, for runs that must survive a stop. `Trajectory` records x_t at chosen
timesteps of a run, for `sample --show-intermediate` and `--gif`.

Not here: the sampler loops (samplers.py), the network and its guidance (diffusion.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import option
from .data import to_uint8
from .samplers import (SAMPLERS, SPACINGS, PerImageNoise, repaint, repaint_path, run_sampler, sdedit, sdedit_plan,
                       timestep_sequence, visited_timesteps)

if TYPE_CHECKING:
    from .diffusion import Diffusion

MAX_GUIDANCE = 100.0
MAX_ETA = 10.0  # dpmpp's eta > 1 keeps exact marginals; beyond ~5 each step is nearly a fresh draw
# dpmpp's default with classifier-free guidance: guide only at noise levels sigma_t in [0.3, 5]
# (Kynkaanniemi et al. 2024); on the shipped guided models it beats guiding at every step, at 20
# steps and at 100, with ~35% fewer network evaluations (docs/BENCHMARKS.md, "Guidance interval")
GUIDANCE_INTERVAL = (0.3, 5.0)
EVERYWHERE = (0.0, float("inf"))
# callback(batch_start, step_index, t, x_t, pred_x0): every network evaluation of a run
BatchCallback = Optional[Callable[[int, int, int, torch.Tensor, torch.Tensor], None]]


@dataclass(frozen=True)
class SamplerOptions:
    """How to draw, apart from the model, the labels and the seed. steps/spacing None: the sampler's
    default (samplers.DEFAULT_STEPS / DEFAULT_SPACING); eta is used by ddim and dpmpp. The field
    metadata is what the command line shows (config.option)."""
    sampler: str = option("ddpm", "ddpm (ancestral), ddim or dpmpp (DPM-Solver++(2M))", choices=SAMPLERS)
    steps: Optional[int] = option(None, "network evaluations (default: ddpm all T, ddim 50, dpmpp 20)",
                                  kind="positive")
    # None: decided per draw by eta_for (it depends on the sampler and on guidance)
    eta: Optional[float] = option(None, "stochasticity of ddim and dpmpp: 0 = deterministic; 1 = DDPM-like for "
                                        "ddim, SDE-DPM-Solver++(2M) for dpmpp; dpmpp also takes up to 10 (more "
                                        "fresh noise per step, same marginals); default for dpmpp 2, or 0.5 with "
                                        "--guidance, 0 with --autoguide; ddim 0", kind="nonneg")
    spacing: Optional[str] = option(None, "timestep grid for respaced samplers: uniform in t, quadratic (denser "
                                          "near t=0), logsnr (uniform in log-SNR), or logsnr-capped (T-1, then "
                                          "uniform in log-SNR from noise level 20 down); default logsnr-capped "
                                          "for dpmpp, uniform otherwise", choices=SPACINGS)
    clip: bool = option(True, "do not clip predicted x0 to [-1, 1]", flag="--no-clip")
    guidance: float = option(0.0, "classifier-free guidance weight w (needs labels; 0 = plain conditional)",
                             kind="nonneg")
    # None: decided per draw by interval_for
    guidance_interval: Optional[tuple[float, float]] = option(
        None, "guide only at noise levels sigma_t = sqrt((1-a_t)/a_t) in LO,HI (Kynkaanniemi et al. 2024), "
              "unguided elsewhere (one network evaluation instead of two); default for dpmpp with --guidance "
              "0.3,5, otherwise every step (0,inf)")
    first_order_switches: bool = option(
        True, "dpmpp with a guidance interval: extrapolate (second order) across the steps where guidance "
              "switches on or off, instead of the default first-order steps there (measured at n = 10,000: "
              "first order is 10% better on the MNIST cards, 8% worse on fashion_mnist's)",
        flag="--no-first-order-switches")
    # None: decided per draw by corrector_for
    corrector: Optional[int] = option(
        None, "dpmpp only: after each network evaluation, redo the step that led there with the new x0 as well "
              "(UniPC's corrector; 1 linear, 2 quadratic in log-SNR; no extra evaluations; 0 = none); default 1 "
              "with --guidance, else 0", choices=(0, 1, 2))

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.corrector not in (None, 0, 1, 2):
            raise ValueError(f"corrector must be 0 (none), 1 (linear) or 2 (quadratic), got {self.corrector!r}")
        if self.corrector and self.sampler != "dpmpp":
            raise ValueError(f"the corrector is dpmpp's; {self.sampler} has none (use --sampler dpmpp)")
        top = MAX_ETA if self.sampler == "dpmpp" else 1.0
        if self.eta is not None and not 0.0 <= self.eta <= top:  # also NaN
            raise ValueError(f"eta {self.eta} is outside [0, {top:g}] for {self.sampler} "
                             f"(0: deterministic, 1: as stochastic as DDPM; above 1 only dpmpp)")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance {self.guidance} is outside [0, {MAX_GUIDANCE:g}] (useful values are below 10)")
        if self.guidance_interval is not None:
            gi = tuple(self.guidance_interval)
            if len(gi) != 2 or not all(isinstance(v, (int, float)) for v in gi) or not 0.0 <= gi[0] < gi[1]:
                raise ValueError(f"guidance interval {self.guidance_interval!r}: need two noise levels LO,HI with "
                                 "0 <= LO < HI (HI may be inf), e.g. 0.3,5")

    def check(self, schedule) -> None:
        """What only the model's schedule can tell: no more steps than it has timesteps."""
        if self.steps is not None and self.steps > schedule.timesteps:
            raise ValueError(f"steps {self.steps}: the model has only T = {schedule.timesteps} timesteps")

    def visited(self, schedule) -> list[int]:
        """The timesteps at which the network is evaluated, in order."""
        return visited_timesteps(self.sampler, schedule, self.steps, self.spacing)

    def as_dict(self) -> dict:
        return asdict(self)

    def interval_for(self, autoguided: bool = False) -> Optional[tuple[float, float]]:
        """The noise levels a draw guides at, None for all of them: the interval given (0,inf = all),
        else GUIDANCE_INTERVAL for dpmpp with classifier-free guidance, all for the other samplers
        and for autoguidance (measured only so)."""
        gi = self.guidance_interval
        if gi is None:
            gi = GUIDANCE_INTERVAL if self.sampler == "dpmpp" and self.guidance and not autoguided else EVERYWHERE
        gi = (float(gi[0]), float(gi[1]))
        return None if gi == EVERYWHERE else gi

    def corrector_for(self, autoguided: bool = False) -> int:
        """dpmpp's corrector order for a draw: the one given, else 1 with classifier-free guidance and
        0 otherwise (also for autoguidance, not measured with it). With guidance it lowered FID at
        20 steps on `mnist` (both training seeds) and `fashion_mnist` and left `mnist-clusters` as it
        was; without guidance (eta 2) it changed nothing measurable (n = 2,000, docs/BENCHMARKS.md
        "A corrector for the multistep solver")."""
        if self.corrector is not None:
            return self.corrector
        return 1 if self.sampler == "dpmpp" and self.guidance and not autoguided else 0

    def eta_for(self, autoguided: bool = False) -> float:
        """The eta a draw uses: the one given, else for dpmpp 2 without guidance, 0.5 with classifier-
        free guidance and 0 with autoguidance; 0 for ddim (labels do not change it). On the shipped
        models at 20 steps these beat the ODE solver and eta 1 on two training seeds: noise refreshes what the network
        got wrong, while with guidance more noise acts as extra guidance and costs recall (n = 2,000,
        docs/BENCHMARKS.md "Few steps as good as many"). Autoguidance was measured only with eta 0."""
        if self.eta is not None:
            return self.eta
        if self.sampler != "dpmpp" or autoguided:
            return 0.0
        return 0.5 if self.guidance else 2.0


def sample_batches(diff: "Diffusion", num_images: int, options: SamplerOptions = SamplerOptions(), *,
                   labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, first: int = 0,
                   progress: bool = False, callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, x_0) for images start.. of a run, a batch at a time, x_0 in [-1, 1] with shape
    (n, 1, 28, 28). `first` skips the images a stopped run already has (a whole number of batches)."""
    options.check(diff.schedule)
    eta = options.eta_for(diff.guide is not None)

    interval = _guided_interval(diff, options)

    def draw(eps_fn, noise, start, n, step_done):
        return run_sampler(options.sampler, eps_fn, diff.schedule, noise.initial((1, 28, 28)), noise,
                           steps=options.steps, eta=eta, spacing=options.spacing, clip=options.clip,
                           guidance_interval=interval, first_order_switches=options.first_order_switches,
                           corrector=options.corrector_for(diff.guide is not None), callback=step_done)
    yield from _batches(diff, num_images, options, draw, len(options.visited(diff.schedule)), labels=labels, seed=seed,
                        batch_size=batch_size, first=first, progress=progress, callback=callback)


def inpaint_batches(diff: "Diffusion", known: torch.Tensor, mask: torch.Tensor, options: SamplerOptions, *,
                    jump_length: int = 10, resample: int = 1, labels: Optional[torch.Tensor] = None, seed: int = 0,
                    batch_size: int = 256, progress: bool = False,
                    callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """samplers.repaint over `known` images ((N, 1, 28, 28) in [-1, 1]) and their masks (1 = keep),
    in batches with per-image seeds. ddpm is ancestral (eta = 1), ddim takes options.eta."""
    if options.sampler == "dpmpp":
        raise ValueError("inpainting runs the ddpm or ddim sampler (a multistep solver cannot restart at every "
                         "step as RePaint needs)")
    options.check(diff.schedule)
    eta = 1.0 if options.sampler == "ddpm" else options.eta or 0.0
    spacing = options.spacing or "uniform"
    path = repaint_path(timestep_sequence(diff.schedule, options.steps, spacing), jump_length, resample)
    evals = sum(s < t for t, s in zip(path[:-1], path[1:]))

    def draw(eps_fn, noise, start, n, step_done):
        k, m = known[start:start + n].to(diff.device), mask[start:start + n].to(diff.device)
        return repaint(eps_fn, diff.schedule, noise.initial((1, 28, 28)), noise, k, m, steps=options.steps,
                       spacing=spacing, eta=eta, jump_length=jump_length, resample=resample, clip=options.clip,
                       callback=step_done)
    yield from _batches(diff, len(known), options, draw, evals, labels=labels, seed=seed, batch_size=batch_size,
                        progress=progress, callback=callback, desc="inpainting")


def edit_batches(diff: "Diffusion", images: torch.Tensor, strength: float, options: SamplerOptions, *,
                 labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, progress: bool = False,
                 callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """samplers.sdedit over `images` ((N, 1, 28, 28) in [-1, 1]) at `strength`, in batches with
    per-image seeds: image i's noise is the x_T that `sample(seed)` starts image i from."""
    options.check(diff.schedule)
    _, sub, n = sdedit_plan(options.sampler, diff.schedule, strength, options.steps)
    evals = len(visited_timesteps(options.sampler, sub, n, options.spacing))

    def draw(eps_fn, noise, start, n, step_done):
        return sdedit(options.sampler, eps_fn, diff.schedule, images[start:start + n].to(diff.device),
                      noise.initial((1, 28, 28)), noise, strength, steps=options.steps,
                      eta=options.eta_for(diff.guide is not None), spacing=options.spacing, clip=options.clip,
                      guidance_interval=_guided_interval(diff, options),
                      first_order_switches=options.first_order_switches,
                      corrector=options.corrector_for(diff.guide is not None),
                      callback=step_done)
    yield from _batches(diff, len(images), options, draw, evals, labels=labels, seed=seed, batch_size=batch_size,
                        progress=progress, callback=callback, desc="editing")


def _guided_interval(diff: "Diffusion", options: SamplerOptions) -> Optional[tuple[float, float]]:
    """The noise levels a draw of `diff` guides at (SamplerOptions.interval_for); None when it guides at
    every step or not at all. The guided eps_fn and the sampler's first-order steps both follow it."""
    return options.interval_for(diff.guide is not None) if options.guidance else None


def _batches(diff, num_images, options, draw, evals_per_batch, *, labels, seed, batch_size, first=0, progress=False,
             callback=None, desc=None) -> Iterator[tuple[int, torch.Tensor]]:
    """The loop every image-producing run shares: per-image noise, the batch's labels and guided
    eps_fn, a progress bar over network evaluations, and a check that nothing overflowed.
    draw(eps_fn, noise, start, n, step_done) -> x_0 of images start..start+n."""
    diff.check_labels(labels, num_images, options.guidance)
    if first and (first > num_images or first % batch_size and first != num_images):
        raise ValueError(f"cannot continue from {first} images: not whole batches of {batch_size} out of {num_images}")
    n_batches = (num_images + batch_size - 1) // batch_size
    bar = tqdm(total=evals_per_batch * n_batches, initial=evals_per_batch * (first // batch_size),
               desc=desc or f"sampling ({options.sampler})", unit="step", disable=not progress, leave=False)
    try:
        for start in range(first, num_images, batch_size):
            n = min(batch_size, num_images - start)
            noise = PerImageNoise(seed, n, device=diff.device, first_index=start)
            y = labels[start:start + n] if labels is not None else None

            def step_done(i, t, x, x0, _start=start):
                bar.update(1)
                if callback is not None:
                    callback(_start, i, t, x, x0)

            with torch.no_grad():
                x0 = draw(diff.eps_fn(y, options.guidance, _guided_interval(diff, options)), noise, start, n, step_done)
            if not bool(torch.isfinite(x0).all()):
                raise ValueError(f"sampling produced non-finite values (images {start}..{start + n - 1})"
                                 + (f"; with guidance {options.guidance:g} the model's predictions overflowed"
                                    if options.guidance else ": the model's predictions are not finite"))
            yield start, x0
    finally:
        bar.close()


def generate(diff: "Diffusion", num_images: int, options: SamplerOptions = SamplerOptions(), *,
             labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, progress: bool = False,
             callback: BatchCallback = None) -> np.ndarray:
    """All `num_images` images as uint8 (N, 28, 28), 0 = background."""
    images = np.empty((num_images, 28, 28), dtype=np.uint8)
    for start, x0 in sample_batches(diff, num_images, options, labels=labels, seed=seed, batch_size=batch_size,
                                    progress=progress, callback=callback):
        images[start:start + len(x0)] = to_uint8(x0)
    return images


class Trajectory:
    """x_t as uint8 at chosen timesteps of a sampling run, for its first `max_images` images.

    Pass it as the run's callback. A requested timestep snaps to the nearest one the sampler
    visits (a respaced sampler, DDPM with fewer steps than T included, skips most of them)."""

    def __init__(self, visited: list[int], wanted: Iterable[int], max_images: Optional[int] = None):
        # visited runs from noise to data: on a tie, the noisier step (seen first) wins
        self.timesteps = sorted({min(visited, key=lambda v: abs(v - w)) for w in wanted}, reverse=True)
        self.max_images = max_images
        self._frames: dict[int, list[np.ndarray]] = {t: [] for t in self.timesteps}

    def __call__(self, start: int, i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if t in self._frames and (self.max_images is None or start < self.max_images):
            keep = x if self.max_images is None else x[: self.max_images - start]
            self._frames[t].append(to_uint8(keep))

    def frames(self) -> list[tuple[int, np.ndarray]]:
        """(t, uint8 images) for each recorded timestep, noisiest first."""
        return [(t, np.concatenate(self._frames[t])) for t in self.timesteps if self._frames[t]]


class Recording:
    """What `sample --gif` and `--show-intermediate` record, as one callback: the GIF's frames for
    the first 64 images (GIF_IMAGES), and every image at the steps asked for."""
    GIF_IMAGES = 64

    def __init__(self, gif: Optional[Trajectory] = None, steps: Optional[Trajectory] = None):
        self.gif, self.steps = gif, steps

    def __call__(self, start: int, i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        for rec in (self.gif, self.steps):
            if rec is not None:
                rec(start, i, t, x, x0)

    @classmethod
    def plan(cls, visited: list[int], timesteps: int, *, steps: Optional[list[int]] = None, intermediate: bool = False,
             gif_frames: Optional[int] = None) -> Optional["Recording"]:
        """With `intermediate`, every image at the requested `steps` (default: 10 spread over the
        run); with `gif_frames`, that many frames of the first 64 images, spaced so the late
        low-noise steps get most (visualize.gif_timesteps). None when nothing is to be recorded."""
        from .visualize import gif_timesteps
        at_steps = gif = None
        if intermediate:
            steps = steps or [int(round(v)) for v in np.linspace(timesteps - 1, 0, 10)]
            if any(t >= timesteps or t < 0 for t in steps):
                raise ValueError(f"intermediate steps {[t for t in steps if not 0 <= t < timesteps]} outside "
                                 f"[0, {timesteps - 1}]")
            at_steps = Trajectory(visited, steps)
        if gif_frames is not None:
            if gif_frames < 3:
                raise ValueError(f"--gif-frames {gif_frames}: need at least 3 (noise, one step, the samples)")
            # the last frame is the final sample
            gif = Trajectory(visited, gif_timesteps(visited, max(2, gif_frames - 1)), max_images=cls.GIF_IMAGES)
        return cls(gif, at_steps) if gif or at_steps else None
