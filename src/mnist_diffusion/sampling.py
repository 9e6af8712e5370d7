"""Generate images from a trained network: wires a model, labels and guidance to samplers.py.

`eps_function` turns a network into the eps_fn(x_t, t) the samplers take (with autocast and
classifier-free guidance); `generate` draws N images in batches with per-image seeds, so the
result depends only on (seed, image index), never on the batch size.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .data import to_uint8
from .device import autocast
from .samplers import DEFAULT_STEPS, PerImageNoise, run_sampler, timestep_sequence
from .schedule import Schedule


def eps_function(model: torch.nn.Module, labels: Optional[torch.Tensor] = None, guidance: float = 0.0,
                 amp_dtype: Optional[torch.dtype] = None, null_label: Optional[int] = None):
    """eps_fn for the samplers. With labels and guidance w, classifier-free guidance
    (Ho & Salimans 2022): eps = eps(x, null) + (1 + w) (eps(x, y) - eps(x, null)); w = 0 is plain
    conditional sampling, and labels=None is the unconditional model."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, amp_dtype):
            if labels is None:
                return model(x, t).float()
            y = labels.to(x.device)
            if guidance == 0.0:
                return model(x, t, y).float()
            null = torch.full_like(y, null_label)
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).float()
            cond, uncond = both.chunk(2)
            return uncond + (1.0 + guidance) * (cond - uncond)

    return eps_fn


@torch.no_grad()
def generate(model: torch.nn.Module, schedule: Schedule, num_images: int, seed: int = 0, *,
             sampler: str = "ddpm", steps: Optional[int] = None, eta: float = 0.0, spacing: str = "uniform",
             clip: bool = True, batch_size: int = 256, device="cpu", labels: Optional[torch.Tensor] = None,
             guidance: float = 0.0, null_label: Optional[int] = None, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = True, callback: Optional[Callable] = None, return_tensor: bool = False):
    """Draw `num_images` samples; returns uint8 (N, 28, 28) (or the float tensor in [-1, 1]).
    `callback(batch_start, step_index, t, x_t, pred_x0)` sees every network evaluation."""
    device = torch.device(device)
    model.eval()
    out = []
    eff_steps = DEFAULT_STEPS[sampler] if steps is None else steps
    n_evals = len(timestep_sequence(schedule.timesteps, eff_steps, spacing))
    bar = tqdm(total=n_evals * ((num_images + batch_size - 1) // batch_size), desc=f"sampling ({sampler})",
               unit="step", disable=not progress, leave=False)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        noise = PerImageNoise(seed, n, device=device, first_index=start)
        x_T = noise.initial((1, 28, 28))
        y = labels[start:start + n] if labels is not None else None
        eps_fn = eps_function(model, y, guidance, amp_dtype, null_label)

        def cb(i, t, x, x0, _start=start):
            bar.update(1)
            if callback is not None:
                callback(_start, i, t, x, x0)

        x0 = run_sampler(sampler, eps_fn, schedule, x_T, noise, steps=steps, eta=eta, spacing=spacing,
                         clip=clip, callback=cb)
        out.append(x0.float().cpu())
    bar.close()
    x = torch.cat(out)
    return x if return_tensor else to_uint8(x)

