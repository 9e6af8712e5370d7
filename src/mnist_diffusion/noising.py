"""The simple noising rules people meet before DDPM, next to the one DDPM uses.

Each rule is a pure function over tensors; noise is passed in (one-shot rules) or drawn from an
explicit torch.Generator (iterated rules), never from global state. The figure
`mnist-diffusion visualize noisers` draws them side by side, and tests/test_noising.py checks
each against its closed form. Timesteps are 0-based like schedule.py: x_t is the image after the
steps 0..t have been applied (t + 1 steps).

  rule          update                                          x_t given x_0
  fixed_mix     x = a x_0 + b eps (one shot, any a, b)          mean a x_0, std b (a^2 + b^2 != 1
                                                                in general: not variance-preserving)
  fixed_beta    x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) eps_t  alpha_bar_t = (1 - beta)^(t + 1)
  stepwise      the same step with beta_t from a schedule       alpha_bar_t = prod_{s<=t} (1 - beta_s)
                (Ho et al. 2020, eq. 2, iterated)
  closed_form   x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps   (eq. 4; = schedule.q_sample)

stepwise and closed_form are the same distribution q(x_t | x_0); DDPM defines the process by
the first and trains with the second, because it reaches any t in one draw.

Not here: drawing these (visualize.py) and the reverse process (samplers.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .schedule import Schedule, make_schedule, q_sample, q_step

RULES = ("fixed_mix", "fixed_beta", "stepwise", "closed_form")


def fixed_mix(x0: torch.Tensor, noise: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """x = a x_0 + b eps. With a = 1 - s, b = s (a straight blend) the total variance dips
    below 1 midway, so mid-blend images look washed out; with a = sqrt(alpha_bar_t),
    b = sqrt(1 - alpha_bar_t) it is exactly the closed-form DDPM jump."""
    return a * x0 + b * noise


def constant_schedule(beta: float, timesteps: int) -> Schedule:
    """A schedule with the same beta at every step (alpha_bar_t = (1 - beta)^(t + 1))."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    return Schedule.from_betas(torch.full((timesteps,), float(beta), dtype=torch.float64))


def iterate_forward(schedule: Schedule, x0: torch.Tensor, record: Sequence[int],
                    generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Apply q(x_t | x_{t-1}) (schedule.q_step, eq. 2) for t = 0, 1, ..., max(record), drawing
    fresh N(0, I) noise from `generator` at every step; return {t: x_t} for each t in `record`."""
    wanted = sorted(set(int(t) for t in record))
    if not wanted:
        return {}
    if wanted[0] < 0 or wanted[-1] >= schedule.timesteps:
        raise ValueError(f"timesteps must be in [0, {schedule.timesteps - 1}], got {wanted}")
    out: dict[int, torch.Tensor] = {}
    x = x0
    batch = x0.shape[0]
    for t in range(wanted[-1] + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = q_step(schedule, x, torch.full((batch,), t, dtype=torch.long, device=x.device), eps)
        if t in wanted:
            out[t] = x
    return out


def fixed_beta(x0: torch.Tensor, beta: float, record: Sequence[int], generator: torch.Generator,
               timesteps: int = 1000) -> dict[int, torch.Tensor]:
    """The same small beta applied again and again: x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) eps_t."""
    return iterate_forward(constant_schedule(beta, timesteps), x0, record, generator)


def stepwise(schedule: Schedule, x0: torch.Tensor, record: Sequence[int],
             generator: torch.Generator) -> dict[int, torch.Tensor]:
    """The DDPM forward process as defined: one q(x_t | x_{t-1}) step at a time with beta_t."""
    return iterate_forward(schedule, x0, record, generator)


def closed_form(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The jump straight to x_t: exactly schedule.q_sample (eq. 4)."""
    return q_sample(schedule, x0, t, noise)


def signal_and_noise(rule: str, timesteps: Sequence[int], *, T: int = 1000, beta: float = 0.02,
                     schedule: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """(signal coefficient, noise std) of x_t = c x_0 + s eps for each t under a rule, as the
    figure uses them (fixed_mix takes a = 1 - t/(T-1), b = t/(T-1))."""
    t = torch.as_tensor(list(timesteps), dtype=torch.long)
    if rule == "fixed_mix":
        s = t.double() / (T - 1)
        return 1 - s, s
    if rule == "fixed_beta":
        sched = constant_schedule(beta, T)
    elif rule in ("stepwise", "closed_form"):
        sched = make_schedule(schedule, T)
    else:
        raise ValueError(f"unknown noising rule {rule!r}; choose from {', '.join(RULES)}")
    return sched.sqrt_alpha_bar[t], sched.sqrt_one_minus_alpha_bar[t]


def noise_all(x0: torch.Tensor, timesteps: Sequence[int], generator: torch.Generator, *, T: int = 1000,
              beta: float = 0.02, schedule: str = "linear") -> dict[str, torch.Tensor]:
    """Every rule applied to the same images x0 (B, 1, H, W) at the given timesteps.
    Returns {rule: (len(timesteps), B, 1, H, W)}. One generator feeds all rules in a fixed order,
    so a seed fixes the whole figure."""
    ts = [int(t) for t in timesteps]
    if any(t < 0 or t >= T for t in ts):
        raise ValueError(f"timesteps must be in [0, {T - 1}], got {ts}")
    sched = make_schedule(schedule, T)
    out: dict[str, torch.Tensor] = {}
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    a, b = signal_and_noise("fixed_mix", ts, T=T)
    out["fixed_mix"] = torch.stack([fixed_mix(x0, eps, float(ai), float(bi)) for ai, bi in zip(a, b)])
    fb = fixed_beta(x0, beta, ts, generator, timesteps=T)
    out["fixed_beta"] = torch.stack([fb[t] for t in ts])
    sw = stepwise(sched, x0, ts, generator)
    out["stepwise"] = torch.stack([sw[t] for t in ts])
    out["closed_form"] = torch.stack([
        closed_form(sched, x0, torch.full((x0.shape[0],), t, dtype=torch.long), eps) for t in ts])
    return out
