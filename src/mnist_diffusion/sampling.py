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

from .data import to_uint8
from .samplers import SAMPLERS, PerImageNoise, run_sampler, visited_timesteps

if TYPE_CHECKING:
    from .diffusion import Diffusion

# callback(batch_start, step_index, t, x_t, pred_x0): every network evaluation of a run
BatchCallback = Optional[Callable[[int, int, int, torch.Tensor, torch.Tensor], None]]


@dataclass(frozen=True)
class SamplerOptions:
    """How to draw, apart from the model, the labels and the seed. steps/spacing None: the sampler's
    default (samplers.DEFAULT_STEPS / DEFAULT_SPACING); eta is used by ddim and dpmpp."""
    sampler: str = "ddpm"
    steps: Optional[int] = None
    eta: float = 0.0
    spacing: Optional[str] = None
    clip: bool = True
    guidance: float = 0.0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")

    def visited(self, schedule) -> list[int]:
        """The timesteps at which the network is evaluated, in order."""
        return visited_timesteps(self.sampler, schedule, self.steps, self.spacing)

    def as_dict(self) -> dict:
        return asdict(self)


def sample_batches(diff: "Diffusion", num_images: int, options: SamplerOptions = SamplerOptions(), *,
                   labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256, first: int = 0,
                   progress: bool = False, callback: BatchCallback = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, x_0) for images start.. of a run, a batch at a time, x_0 in [-1, 1] with shape
    (n, 1, 28, 28). `first` skips the images a stopped run already has (a whole number of batches)."""
    diff.check_labels(labels, num_images, options.guidance)
    if first and (first > num_images or first % batch_size and first != num_images):
        raise ValueError(f"cannot continue from {first} images: not whole batches of {batch_size} out of {num_images}")
    n_evals = len(options.visited(diff.schedule))
    n_batches = (num_images + batch_size - 1) // batch_size
    bar = tqdm(total=n_evals * n_batches, initial=n_evals * (first // batch_size), desc=f"sampling ({options.sampler})",
               unit="step", disable=not progress, leave=False)
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
                x0 = run_sampler(options.sampler, diff.eps_fn(y, options.guidance), diff.schedule,
                                 noise.initial((1, 28, 28)), noise, steps=options.steps, eta=options.eta,
                                 spacing=options.spacing, clip=options.clip, callback=step_done)
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
