"""Reverse-process samplers as plain functions over a noise-predicting callable.

Every sampler takes `eps_fn(x_t, t) -> eps` (t a (B,) long tensor), a `Schedule`, the starting
noise x_T and, for stochastic steps, a `noise_fn(like) -> tensor` that draws fresh N(0, I) noise.
Randomness therefore never comes from global state; `PerImageNoise` gives each image its own seeded
generator so an image does not depend on the batch it was drawn in (as in NVlabs/edm).

Not here: networks, guidance and checkpoint loading (sampling.py wires those to these functions).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .schedule import Schedule, extract, predict_eps_from_x0, predict_x0_from_eps, q_posterior

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]
# callback(step_index, t, x_t, pred_x0) is called once per network evaluation
Callback = Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]]

SAMPLERS = ("ddpm", "ddim", "dpmpp")
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 20}  # None = every timestep


class PerImageNoise:
    """N(0, I) noise with one generator per image, seeded from (seed, image index)."""

    def __init__(self, seed: int, num_images: int, device="cpu", first_index: int = 0):
        self.device = torch.device(device)
        self.generators = []
        for i in range(first_index, first_index + num_images):
            g = torch.Generator(device="cpu")
            g.manual_seed((int(seed) * 1_000_003 + i) % (2**63 - 1))
            self.generators.append(g)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        # drawn on the CPU so the same seed gives the same images on every device
        shape = like.shape[1:]
        out = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators])
        return out.to(device=like.device, dtype=like.dtype)

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        return self(torch.empty((len(self.generators), *shape), device=self.device))


def timestep_sequence(num_timesteps: int, steps: Optional[int], spacing: str = "uniform") -> list[int]:
    """Decreasing timesteps, first T-1 and last 0, with `steps` entries (all T when None)."""
    T = num_timesteps
    if steps is None or steps >= T:
        return list(range(T - 1, -1, -1))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [T - 1]
    u = torch.linspace(0, 1, steps, dtype=torch.float64)
    if spacing == "uniform":
        ts = u * (T - 1)
    elif spacing == "quadratic":  # denser near t = 0, where detail forms (Song et al. 2021)
        ts = u ** 2 * (T - 1)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose uniform or quadratic")
    seq = sorted({int(round(v)) for v in ts.tolist()}, reverse=True)
    return seq


def _t(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _pred_x0(eps_fn: EpsFn, schedule: Schedule, x: torch.Tensor, t: int, clip: bool):
    tt = _t(x, t)
    eps = eps_fn(x, tt).to(x.dtype)
    x0 = predict_x0_from_eps(schedule, x, tt, eps)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = predict_eps_from_x0(schedule, x, tt, x0)
    return x0, eps


@torch.no_grad()
def ddpm(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: NoiseFn, *, clip: bool = True,
         variance: str = "posterior", callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), written through the predicted x_0 so it
    can be clipped to [-1, 1]: x_{t-1} = mu~_t(x_0, x_t) + sigma_t z, z = 0 at the last step.
    `variance` = "posterior" (sigma^2 = beta~_t) or "beta" (sigma^2 = beta_t); eq. 11 is the
    unclipped case of the same update."""
    if variance not in ("posterior", "beta"):
        raise ValueError("variance must be 'posterior' or 'beta'")
    x = x_T
    for i, t in enumerate(range(schedule.timesteps - 1, -1, -1)):
        x0, _ = _pred_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        tt = _t(x, t)
        mean, post_var = q_posterior(schedule, x0, x, tt)
        if t == 0:
            x = mean
            break
        var = post_var if variance == "posterior" else extract(schedule.betas, tt, x)
        x = mean + var.sqrt() * noise_fn(x)
    return x


def _alpha_bar(schedule: Schedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


@torch.no_grad()
def ddim(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: Optional[NoiseFn] = None, *,
         steps: Optional[int] = 50, eta: float = 0.0, spacing: str = "uniform", clip: bool = True,
         callback: Callback = None) -> torch.Tensor:
    """Song et al. (2021), eq. 12: x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_s)/(1 - a_t)) sqrt(1 - a_t/a_s). eta = 0 is deterministic; the last
    step goes to a_s = 1 (the clean image)."""
    if eta > 0 and noise_fn is None:
        raise ValueError("ddim with eta > 0 needs a noise_fn")
    seq = timestep_sequence(schedule.timesteps, steps, spacing)
    x = x_T
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else -1
        x0, eps = _pred_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        a_t, a_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
        sigma = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise_fn(x)
    return x


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, schedule: Schedule, x0: torch.Tensor, *, steps: Optional[int] = 50,
                spacing: str = "uniform") -> torch.Tensor:
    """Deterministic DDIM run forwards (eta = 0): image -> the x_T that ddim() maps back to it."""
    seq = list(reversed(timestep_sequence(schedule.timesteps, steps, spacing)))  # 0 ... T-1
    x = x0
    prev = -1
    for t in seq:
        # eps is estimated at the current (less noisy) point, the usual first-order inversion
        a_prev, a_t = _alpha_bar(schedule, prev), _alpha_bar(schedule, t)
        t_eval = max(prev, 0)
        eps = eps_fn(x, _t(x, t_eval)).to(x.dtype)
        x0_hat = (x - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
        x = a_t ** 0.5 * x0_hat + (1 - a_t) ** 0.5 * eps
        prev = t
    return x


@torch.no_grad()
def dpmpp(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: Optional[NoiseFn] = None, *,
          steps: Optional[int] = 20, spacing: str = "uniform", clip: bool = True,
          callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022b), Algorithm 2, on the discrete schedule.
    With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t), h = lambda_s - lambda_t:
      x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D,
      D = x0_t (first step) or (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h.
    The last step lands on the clean image with first order (the "lower order final" rule)."""
    seq = timestep_sequence(schedule.timesteps, steps, spacing)
    x = x_T
    x0_prev, h_prev = None, None
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else -1
        x0, _ = _pred_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        if s < 0:
            x = x0
            break
        a_t, a_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
        alpha_s, sigma_t, sigma_s = a_s ** 0.5, (1 - a_t) ** 0.5, (1 - a_s) ** 0.5
        lam_t = 0.5 * torch.log(torch.tensor(a_t / (1 - a_t), dtype=torch.float64)).item()
        lam_s = 0.5 * torch.log(torch.tensor(a_s / (1 - a_s), dtype=torch.float64)).item()
        h = lam_s - lam_t
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma_s / sigma_t) * x - alpha_s * torch.expm1(torch.tensor(-h, dtype=torch.float64)).item() * d
        x0_prev, h_prev = x0, h
    return x


def run_sampler(name: str, eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: NoiseFn, *,
                steps: Optional[int] = None, eta: float = 0.0, spacing: str = "uniform", clip: bool = True,
                callback: Callback = None) -> torch.Tensor:
    """Dispatch by name with each sampler's default step count."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if name == "ddpm":
        if steps not in (None, schedule.timesteps):
            # DDPM with fewer steps is DDIM with eta = 1 on the respaced sequence
            return ddim(eps_fn, schedule, x_T, noise_fn, steps=steps, eta=1.0, spacing=spacing, clip=clip,
                        callback=callback)
        return ddpm(eps_fn, schedule, x_T, noise_fn, clip=clip, callback=callback)
    steps = DEFAULT_STEPS[name] if steps is None else steps
    if name == "ddim":
        return ddim(eps_fn, schedule, x_T, noise_fn, steps=steps, eta=eta, spacing=spacing, clip=clip,
                    callback=callback)
    return dpmpp(eps_fn, schedule, x_T, noise_fn, steps=steps, spacing=spacing, clip=clip, callback=callback)
