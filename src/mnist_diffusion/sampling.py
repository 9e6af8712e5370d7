"""Images from a denoiser, batch by batch: one resolved sampling plan, per-image seeds, progress, trajectories.

`plan` is where every sampling default is decided: the options a user gave (over the model's own,
config.SamplingConfig) resolve once, against the model, into a frozen `SamplingPlan` with concrete
timesteps, eta, guidance interval, switch steps and corrector. The batch loop, the trajectory
recorder, `evaluate`'s report, the model card, the training preview and the demo all read that plan.
`sample_batches` is the core: it yields each finished batch, every image drawn from its own
generator seeded with (seed, image index), so an image never depends on the batch size or on how
many images were asked for. `generate` gathers the batches into one uint8 array; partial.py keeps
them on disk as they come. `Trajectory` records x_t at chosen timesteps of a run.

Not here: the sampler loops (samplers.py), the network and its guidance (denoiser.py), loading and
label requests (diffusion.py, labels.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SamplingConfig
from .data import to_uint8
from .denoiser import Denoiser
from .samplers import (
    PerImageNoise,
    ddim,
    ddim_invert,
    guidance_switches,
    repaint,
    repaint_path,
    run_sampler,
    sdedit,
    sdedit_plan,
    timestep_sequence,
    visited_timesteps,
)
from .schedule import Schedule, noise_level

# Every sampling rule, here and nowhere else (samplers.py takes each setting explicitly).
# Network evaluations per sampler (None: every timestep; heun's are grid points, 2 steps - 1 evaluations)
STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 20, "euler": 20, "heun": 10}
# log-SNR grids for DPM-Solver++: the most accurate at 10-50 steps against a converged ODE solution
# with a trained MNIST model (docs/SAMPLERS.md); capped, because the plain one spends 8 of 20
# evaluations on pure noise, which cost FID on every shipped model (docs/decisions/capped-grid.md).
# DDIM keeps the usual uniform grid; Euler and Heun in flow time s take one uniform in s
SPACING = {"ddpm": "uniform", "ddim": "uniform", "dpmpp": "logsnr-capped", "euler": "flow", "heun": "flow"}
# DDIM inversion and decoding (invert, decode, interpolate): deterministic DDIM on 50 uniform steps
INVERT_STEPS = 50
# what a plan is for: a draw from noise, an SDEdit from given images at a strength, RePaint, or the
# deterministic DDIM pair inversion / decoding
TASKS = ("sample", "edit", "inpaint", "invert")

# dpmpp's default with classifier-free guidance: guide only at noise levels sigma_t in [0.3, 5]
# (Kynkaanniemi et al. 2024); on the shipped guided models it beats guiding at every step, at 20
# steps and at 100, with ~35% fewer network evaluations (docs/decisions/guidance-interval.md)
GUIDANCE_INTERVAL = (0.3, 5.0)
EVERYWHERE = (0.0, float("inf"))
# callback(batch_start, step_index, t, x_t, pred_x0): every network evaluation of a run
BatchCallback = Optional[Callable[[int, int, int, torch.Tensor, torch.Tensor], None]]
NAME_STYLES = ("api", "cli")


def option_name(option: str, names: str = "api") -> str:
    """How a message names an option to the one who gave it: the keyword of a Python call ("api":
    guidance=) or the command line's flag ("cli": --guidance). The checks are shared, the words not."""
    if names not in NAME_STYLES:
        raise ValueError(f"names must be one of {', '.join(NAME_STYLES)}, got {names!r}")
    return "--" + option.replace("_", "-") if names == "cli" else f"{option}="


@dataclass(frozen=True)
class SamplingPlan:
    """How a draw runs, every value concrete: what `plan` resolved from the options and the model.
    `timesteps` are those the network is evaluated at, noisiest first; `guidance_interval` None
    with guidance means every step; `switches` are dpmpp's first-order steps where guidance turns
    on or off."""
    sampler: str
    steps: int
    spacing: str
    timesteps: tuple[int, ...]
    eta: float
    clip: bool
    guidance: float
    guidance_interval: Optional[tuple[float, float]]
    first_order_switches: bool
    switches: tuple[int, ...]
    corrector: int
    guided_timesteps: tuple[int, ...] = ()  # where guidance mixes two evaluations
    autoguided: bool = False
    task: str = "sample"
    start: Optional[int] = None  # an edit's t0: the timestep its noised images start from

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (two where classifier-free guidance mixes, one elsewhere)."""
        if not self.guidance:
            return len(self.timesteps)
        return len(self.timesteps) + len(self.guided_timesteps)

    def report(self) -> dict:
        """The plan as `evaluate --json` records it (and the model card reads it)."""
        out = {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "spacing": self.spacing,
               "clip": self.clip, "guidance": self.guidance}
        if self.guidance:
            out["guidance_interval"] = list(self.guidance_interval) if self.guidance_interval else None
            if self.guidance_interval and self.sampler == "dpmpp":
                out["first_order_switches"] = self.first_order_switches
        if self.sampler == "dpmpp":
            out["corrector"] = self.corrector
        return out

    def describe(self) -> str:
        """One line: 'dpmpp, 20 steps on the logsnr-capped grid, eta 0.5, guidance 0.5 at noise levels
        0.3-5, linear corrector'."""
        step_word = "step" if self.steps == 1 else "steps"
        parts = [f"{self.sampler}, {self.steps} {step_word} on the {self.spacing} grid"]
        if self.sampler == "heun":
            parts[0] += f" ({len(self.timesteps)} evaluations)"
        if self.sampler in ("ddim", "dpmpp"):
            parts.append(f"eta {self.eta:g}")
        if self.guidance:
            where = (f" at noise levels {self.guidance_interval[0]:g}-{self.guidance_interval[1]:g}"
                     if self.guidance_interval else "")
            parts.append(f"{'autoguidance' if self.autoguided else 'guidance'} {self.guidance:g}{where}")
        if self.corrector:
            parts.append(("linear", "quadratic")[self.corrector - 1] + " corrector")
        return ", ".join(parts)


def options_for(denoiser: Denoiser, *, labelled: bool, **given) -> SamplingConfig:
    """The options of one draw: the model's own (its config's sampling section) with the `given`
    ones (None = not given) put over them. The model's guidance weight is for draws with labels (or
    clusters), or for any draw of an autoguided model; an unlabelled draw of another model leaves it
    out rather than failing."""
    options = denoiser.config.sampling.override(**given)
    if given.get("guidance") is None and options.guidance and not labelled and denoiser.guide is None:
        options = dataclasses.replace(options, guidance=0.0)
    return options


def plan(denoiser: Denoiser, options: SamplingConfig = SamplingConfig(), *, task: str = "sample",
         strength: Optional[float] = None, names: str = "api") -> SamplingPlan:
    """Resolve `options` against the model for `task` (TASKS) into every concrete setting of the
    draw. The rules, each measured on the shipped models (docs/RESULTS.md; docs/decisions/):
    - steps and grid: the given ones, else STEPS and SPACING for the sampler;
    - eta: the one given, else for dpmpp 2 without guidance, 0.5 with classifier-free guidance, 0
      with autoguidance (measured only so); 0 for ddim; ddpm is ancestral;
    - guidance interval: the one given (0,inf = every step), else 0.3-5 for dpmpp with
      classifier-free guidance, every step otherwise;
    - corrector: the one given, else 1 for dpmpp with classifier-free guidance, 0 otherwise;
    - edit (SDEdit at `strength`): a full draw's plan cut at t0 = samplers.sdedit_start(strength),
      with the strength's share of its steps;
    - inpaint (RePaint): ddpm (ancestral) or ddim (eta as given, else 0) on a uniform grid of every
      timestep unless fewer steps are given; unguided unless asked;
    - invert (DDIM inversion and decoding): ddim, eta 0, INVERT_STEPS uniform steps unless given, unguided.
    `names`: how errors name the options (option_name: "api" keywords, "cli" flags)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if (strength is None) != (task != "edit"):
        raise ValueError("an edit's plan needs its strength, and only an edit's")
    if options.steps is not None and options.steps > denoiser.schedule.timesteps:
        raise ValueError(f"steps {options.steps}: the model has only T = {denoiser.schedule.timesteps} timesteps")
    if task == "inpaint":
        return _inpaint_plan(denoiser, options)
    if task == "invert":
        return _invert_plan(denoiser, options)
    full = _sample_plan(denoiser, options, names)
    return _cut(full, denoiser.schedule, strength) if task == "edit" else full


def _guided(schedule: Schedule, timesteps: tuple[int, ...], guidance: float,
            interval: Optional[tuple[float, float]]) -> tuple[int, ...]:
    """The timesteps where guidance mixes two evaluations."""
    if not guidance:
        return ()
    if interval is None:
        return timesteps
    sigma = noise_level(schedule, torch.as_tensor(timesteps)).tolist()
    return tuple(t for t, s in zip(timesteps, sigma) if interval[0] <= s <= interval[1])


def _switches(sampler: str, schedule: Schedule, timesteps: tuple[int, ...], interval, first_order: bool):
    """dpmpp's first-order steps: where its guidance interval switches on or off."""
    if sampler != "dpmpp" or not interval or not first_order:
        return ()
    return tuple(sorted(guidance_switches(schedule, list(timesteps), interval), reverse=True))


def _sample_plan(denoiser: Denoiser, options: SamplingConfig, names: str) -> SamplingPlan:
    sampler, guidance = options.sampler, float(options.guidance)
    schedule, autoguided = denoiser.schedule, denoiser.guide is not None and bool(guidance)  # W = 0: the model alone
    if denoiser.capabilities.distilled and guidance:
        raise ValueError(f"this distilled student has its teacher's guidance {denoiser.capabilities.built_in_guidance:g} "
                         f"built in; it takes no further guidance (leave {option_name('guidance', names)} out)")
    cfg_guided = bool(guidance) and not autoguided and sampler == "dpmpp"
    spacing = options.spacing or SPACING[sampler]
    steps = options.steps or STEPS[sampler] or schedule.timesteps
    timesteps = tuple(visited_timesteps(sampler, schedule, steps, spacing))
    if options.eta is not None:
        eta = float(options.eta)
    else:
        eta = 0.0 if sampler != "dpmpp" or autoguided else 0.5 if guidance else 2.0
    gi = options.guidance_interval
    if gi is None:
        gi = GUIDANCE_INTERVAL if cfg_guided else EVERYWHERE
    gi = (float(gi[0]), float(gi[1]))
    interval = None if gi == EVERYWHERE or not guidance else gi
    corrector = options.corrector if options.corrector is not None else 1 if cfg_guided else 0
    grid = min(steps, schedule.timesteps) if sampler == "heun" else len(timesteps)  # heun: grid points
    return SamplingPlan(sampler=sampler, steps=steps if sampler == "ddpm" else grid, spacing=spacing,
                        timesteps=timesteps, eta=eta, clip=options.clip, guidance=guidance, guidance_interval=interval,
                        first_order_switches=options.first_order_switches,
                        switches=_switches(sampler, schedule, timesteps, interval, options.first_order_switches),
                        corrector=int(corrector), guided_timesteps=_guided(schedule, timesteps, guidance, interval),
                        autoguided=autoguided)


def _cut(full: SamplingPlan, schedule: Schedule, strength: float) -> SamplingPlan:
    """An SDEdit's plan: `full` (a draw from noise) cut at t0, with the strength's share of its steps."""
    t0, sub, n = sdedit_plan(schedule, strength, full.steps)
    timesteps = tuple(visited_timesteps(full.sampler, sub, n, full.spacing))
    return dataclasses.replace(
        full, task="edit", start=t0, steps=n, timesteps=timesteps,
        switches=_switches(full.sampler, sub, timesteps, full.guidance_interval, full.first_order_switches),
        guided_timesteps=_guided(sub, timesteps, full.guidance, full.guidance_interval))


def _inpaint_plan(denoiser: Denoiser, options: SamplingConfig) -> SamplingPlan:
    if not denoiser.capabilities.inpaints:
        raise ValueError(f"inpainting resamples the hidden part at every one of many steps (RePaint); a distilled "
                         f"student takes one or two: inpaint with its teacher ({denoiser.capabilities.teacher})")
    if options.sampler not in ("ddpm", "ddim"):
        raise ValueError("inpainting runs the ddpm or ddim sampler (a multistep solver cannot restart at every "
                         "step as RePaint needs)")
    spacing = options.spacing or "uniform"
    seq = tuple(timestep_sequence(denoiser.schedule, options.steps, spacing))
    guidance = float(options.guidance)
    return SamplingPlan(sampler=options.sampler, steps=len(seq), spacing=spacing, timesteps=seq,
                        eta=1.0 if options.sampler == "ddpm" else float(options.eta or 0.0), clip=options.clip,
                        guidance=guidance, guidance_interval=None, first_order_switches=options.first_order_switches,
                        switches=(), corrector=0, guided_timesteps=seq if guidance else (),
                        autoguided=denoiser.guide is not None and bool(guidance), task="inpaint")


def _invert_plan(denoiser: Denoiser, options: SamplingConfig) -> SamplingPlan:
    spacing = options.spacing or SPACING["ddim"]
    seq = tuple(timestep_sequence(denoiser.schedule, options.steps or INVERT_STEPS, spacing))
    return SamplingPlan(sampler="ddim", steps=len(seq), spacing=spacing, timesteps=seq, eta=0.0, clip=options.clip,
                        guidance=0.0, guidance_interval=None, first_order_switches=True, switches=(), corrector=0,
                        task="invert")


def run_plan(plan: SamplingPlan, eps_fn, schedule: Schedule, x_T: torch.Tensor, noise_fn, *,
             callback=None) -> torch.Tensor:
    """x_0 from x_T by a draw's plan (task "sample"), every setting the plan's."""
    if plan.task != "sample":
        raise ValueError(f"run_plan runs a draw from noise, not a {plan.task} plan")
    return run_sampler(plan.sampler, eps_fn, schedule, x_T, noise_fn, steps=plan.steps, eta=plan.eta,
                       spacing=plan.spacing, clip=plan.clip, first_order_at=frozenset(plan.switches),
                       corrector=plan.corrector, callback=callback)


def sample_batches(denoiser: Denoiser, num_images: int, plan: SamplingPlan, *,
                   labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, first: int = 0,
                   progress: bool = False, callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, x_0) for images start.. of a run, a batch at a time, x_0 in [-1, 1] with shape
    (n, 1, 28, 28). `first` skips the images a stopped run already has (a whole number of batches)."""
    def draw(eps_fn, noise, start, n, step_done):
        return run_plan(plan, eps_fn, denoiser.schedule, noise.initial((1, 28, 28)), noise, callback=step_done)
    yield from run_batches(denoiser, num_images, plan, draw, len(plan.timesteps), labels=labels, seed=seed,
                        batch_size=batch_size, first=first, progress=progress, callback=callback)


def inpaint_batches(denoiser: Denoiser, known: torch.Tensor, mask: torch.Tensor, plan: SamplingPlan, *,
                    jump_length: int = 10, resample: int = 1, labels: Optional[torch.Tensor] = None, seed: int = 0,
                    batch_size: int = 256, progress: bool = False,
                    callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """samplers.repaint over `known` images ((N, 1, 28, 28) in [-1, 1]) and their masks (1 = keep),
    in batches with per-image seeds, by an inpaint plan (plan(..., task="inpaint"))."""
    if plan.task != "inpaint":
        raise ValueError(f"inpainting runs an inpaint plan, not a {plan.task} plan")
    path = repaint_path(list(plan.timesteps), jump_length, resample)
    evals = sum(s < t for t, s in zip(path[:-1], path[1:]))

    def draw(eps_fn, noise, start, n, step_done):
        k, m = known[start:start + n].to(denoiser.device), mask[start:start + n].to(denoiser.device)
        return repaint(eps_fn, denoiser.schedule, noise.initial((1, 28, 28)), noise, k, m, steps=plan.steps,
                       spacing=plan.spacing, eta=plan.eta, jump_length=jump_length, resample=resample,
                       clip=plan.clip, callback=step_done)
    yield from run_batches(denoiser, len(known), plan, draw, evals, labels=labels, seed=seed, batch_size=batch_size,
                        progress=progress, callback=callback, desc="inpainting")


def edit_batches(denoiser: Denoiser, images: torch.Tensor, plan: SamplingPlan, *,
                 labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, progress: bool = False,
                 callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """samplers.sdedit over `images` ((N, 1, 28, 28) in [-1, 1]) by an edit plan (plan(..., task="edit",
    strength=s)), in batches with per-image seeds: image i's noise is the x_T that `sample(seed)`
    starts image i from."""
    if plan.task != "edit":
        raise ValueError(f"an edit runs an edit plan, not a {plan.task} plan")

    def draw(eps_fn, noise, start, n, step_done):
        return sdedit(plan.sampler, eps_fn, denoiser.schedule, images[start:start + n].to(denoiser.device),
                      noise.initial((1, 28, 28)), noise, plan.start, steps=plan.steps, eta=plan.eta,
                      spacing=plan.spacing, clip=plan.clip, first_order_at=frozenset(plan.switches),
                      corrector=plan.corrector, callback=step_done)
    yield from run_batches(denoiser, len(images), plan, draw, len(plan.timesteps), labels=labels, seed=seed,
                        batch_size=batch_size, progress=progress, callback=callback, desc="editing")


def _invert_eps(denoiser: Denoiser, plan: SamplingPlan, labels: Optional[torch.Tensor], what: str):
    """The unguided eps_fn that inversion and decoding run, after checking they were given an invert plan."""
    if plan.task != "invert":
        raise ValueError(f"{what} runs an invert plan, not a {plan.task} plan")
    denoiser.check_labels(labels)
    return denoiser.eps_fn(labels)


@torch.no_grad()
def invert(denoiser: Denoiser, images: torch.Tensor, plan: SamplingPlan,
           labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deterministic DDIM inversion by an invert plan: images in [-1, 1] -> x_T."""
    return ddim_invert(_invert_eps(denoiser, plan, labels, "inversion"), denoiser.schedule, images.to(denoiser.device),
                       steps=plan.steps, spacing=plan.spacing)


@torch.no_grad()
def decode(denoiser: Denoiser, x_T: torch.Tensor, plan: SamplingPlan,
           labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from given noise by an invert plan: inversion's inverse."""
    return ddim(_invert_eps(denoiser, plan, labels, "decoding"), denoiser.schedule, x_T.to(denoiser.device),
                steps=plan.steps, eta=0.0, spacing=plan.spacing, clip=plan.clip)


def run_batches(denoiser: Denoiser, num_images, plan: SamplingPlan, draw, evals_per_batch, *, labels, seed, batch_size,
             first=0, progress=False, callback=None, desc=None) -> Iterator[tuple[int, torch.Tensor]]:
    """The loop every image-producing run shares: per-image noise, the batch's labels and guided
    eps_fn, a progress bar over network evaluations, and a check that nothing overflowed.
    draw(eps_fn, noise, start, n, step_done) -> x_0 of images start..start+n."""
    denoiser.check_labels(labels, num_images, plan.guidance)
    if first and (first > num_images or first % batch_size and first != num_images):
        raise ValueError(f"cannot continue from {first} images: not whole batches of {batch_size} out of {num_images}")
    n_batches = (num_images + batch_size - 1) // batch_size
    bar = tqdm(total=evals_per_batch * n_batches, initial=evals_per_batch * (first // batch_size),
               desc=desc or f"sampling ({plan.sampler})", unit="step", disable=not progress, leave=False)
    try:
        for start in range(first, num_images, batch_size):
            n = min(batch_size, num_images - start)
            noise = PerImageNoise(seed, n, device=denoiser.device, first_index=start)
            y = labels[start:start + n] if labels is not None else None

            def step_done(i, t, x, x0, _start=start):
                bar.update(1)
                if callback is not None:
                    callback(_start, i, t, x, x0)

            with torch.no_grad():
                x0 = draw(denoiser.eps_fn(y, plan.guidance, plan.guidance_interval), noise, start, n, step_done)
            if not bool(torch.isfinite(x0).all()):
                raise ValueError(f"sampling produced non-finite values (images {start}..{start + n - 1})"
                                 + (f"; with guidance {plan.guidance:g} the model's predictions overflowed"
                                    if plan.guidance else ": the model's predictions are not finite"))
            yield start, x0
    finally:
        bar.close()


def generate(denoiser: Denoiser, num_images: int, plan: SamplingPlan, *, labels: Optional[torch.Tensor] = None,
             seed: int = 0, batch_size: int = 256, progress: bool = False,
             callback: BatchCallback = None) -> np.ndarray:
    """All `num_images` images as uint8 (N, 28, 28), 0 = background."""
    images = np.empty((num_images, 28, 28), dtype=np.uint8)
    for start, x0 in sample_batches(denoiser, num_images, plan, labels=labels, seed=seed, batch_size=batch_size,
                                    progress=progress, callback=callback):
        images[start:start + len(x0)] = to_uint8(x0)
    return images


def gif_timesteps(visited: list[int], num_frames: int) -> list[int]:
    """Pick up to `num_frames` of the visited timesteps (in visiting order, T-1 ... 0), spaced
    quadratically in t so the late, low-noise steps where detail forms get most of the frames."""
    if num_frames < 2:
        raise ValueError(f"a GIF needs at least 2 frames, got {num_frames}")
    visited = sorted(set(int(t) for t in visited), reverse=True)
    if len(visited) <= num_frames:
        return visited
    top = visited[0]
    picked = {min(visited, key=lambda v: abs(v - top * u * u)) for u in np.linspace(1.0, 0.0, num_frames)}
    # quadratic targets collide near t = 0; fill up with the lowest unpicked steps
    for v in sorted(visited):
        if len(picked) >= num_frames:
            break
        picked.add(v)
    return sorted(picked, reverse=True)


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
        low-noise steps get most (gif_timesteps). None when nothing is to be recorded."""
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


def section_of_report(denoiser: Denoiser, report: dict) -> SamplingConfig:
    """The `sampling` section that makes `plan` draw as an `evaluate --json` report's draw did:
    its sampler, steps and guidance, plus each other setting the report records where it is not
    what the rules would choose anyway (so a later --guidance 0 still gets the unguided rules)."""
    if not isinstance(report, dict) or not isinstance(report.get("sampler"), str):
        raise ValueError("the report names no sampler (not an `evaluate --json` report of a drawn set)")
    guidance = report.get("guidance") or 0.0
    base = SamplingConfig(sampler=report["sampler"], steps=report.get("steps"), guidance=guidance)
    ruled = plan(denoiser, base).report()
    extra = {}
    for key in ("eta", "spacing", "clip", "guidance_interval", "first_order_switches", "corrector"):
        if key in report and report[key] != ruled.get(key):
            value = report[key]
            if key == "guidance_interval":  # None in a report: guided at every step
                value = tuple(value) if value is not None else EVERYWHERE
            extra[key] = value
    return base.override(**extra) if extra else base
