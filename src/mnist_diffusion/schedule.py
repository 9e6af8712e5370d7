"""The mathematics of DDPM in one place: the forward process, its closed forms, the three ways a
network can parameterise the reverse process, the training loss and classifier-free guidance.

Every array is float64 (products over 1000 steps lose precision in float32) and is cast to the
sample's dtype only when gathered for a batch. Nothing here owns a network: a function that
needs one takes any callable `net(x_t, t[, y])`. Names follow Ho et al. (2020).

Equation -> function (Ho et al. 2020 unless another paper is named):
  eq. 2    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)            q_step
  eq. 4    q(x_t | x_0): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, a_t = prod(1 - beta)
                                                                             q_sample, Schedule.alpha_bar
  eq. 4 solved for x_0 or eps                                                 predict_x0_from_eps,
                                                                             predict_eps_from_x0
  eqs. 6-7 q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                        q_posterior
  eq. 14   L_simple = || eps - eps_theta(x_t, t) ||^2                         diffusion_loss
  SNR_t = a_t / (1 - a_t)                                                     Schedule.snr
  Nichol & Dhariwal 2021, eq. 17: the cosine schedule                         cosine_betas
  Salimans & Ho 2022: v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, and back to eps  v_target, eps_from_v,
                                                                             eps_from_output
  Lipman et al. 2023, Liu et al. 2023: the straight path z_s = (1 - s) x_0 + s eps flow_betas, flow_time,
      and its velocity u = dz/ds = eps - x_0 (flow matching), and back to eps flow_target, eps_from_flow
  Hang et al. 2023: Min-SNR-gamma weights min(SNR_t, gamma) / SNR_t           min_snr_weight
  Esser et al. 2024, eq. 19: logit-normal density of t/T, logit(t/T) ~ N(m, s)  logit_normal_timesteps,
                                                                             logit_normal_cdf
  Ho & Salimans 2022: eps~ = eps(x, null) + (1 + w) (eps(x, y) - eps(x, null))   guidance_mix
  Kynkaanniemi et al. 2024: guide only where sigma_t = sqrt((1 - a_t) / a_t)   noise_level,
      (EDM's noise level) is inside an interval [lo, hi]                     guidance_weights
The reverse-process update rules (Algorithm 2, DDIM eq. 12, DPM-Solver++) sit beside their loops
in samplers.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas linear in t. The endpoints are given for T = 1000 and rescaled
    for other T so that the total amount of noise (and alpha_bar_T) stays comparable."""
    scale = 1000.0 / timesteps
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),
    betas clipped at `max_beta` to avoid the singularity at t = T."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def flow_betas(timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The straight path of flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023),
    z_s = (1 - s) x_0 + s eps, at s = (t + 1) / T: as a variance-preserving process x_t = z_s / r_s,
    r_s = sqrt((1 - s)^2 + s^2), so alpha_bar = (1 - s)^2 / r_s^2 (x_t is z_s at unit scale; the
    network sees x_t, flow_time maps back). The last beta is clipped like the cosine schedule's
    (s = 1 would be alpha_bar = 0)."""
    s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "flow": flow_betas}


@dataclass(frozen=True)
class Schedule:
    """Precomputed forward-process coefficients, indexed by t in [0, T)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sqrt_recip_alpha_bar: torch.Tensor
    sqrt_recipm1_alpha_bar: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x_0 in mu~_t (eq. 7)
    posterior_mean_coef2: torch.Tensor  # multiplies x_t in mu~_t (eq. 7)
    snr: torch.Tensor  # alpha_bar / (1 - alpha_bar)

    @property
    def timesteps(self) -> int:
        return int(self.betas.shape[0])

    def prefix(self, n: int) -> "Schedule":
        """The process cut at its first n timesteps: every coefficient at t < n is unchanged (alpha_bar
        is a cumulative product), so a sampler run on it starts at t = n - 1 (SDEdit)."""
        if not 1 <= n <= self.timesteps:
            raise ValueError(f"a prefix needs 1..{self.timesteps} timesteps, got {n}")
        return self if n == self.timesteps else Schedule.from_betas(self.betas[:n])

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "Schedule":
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # eq. 7: beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        return cls(
            betas=betas,
            alphas=alphas,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            sqrt_alpha_bar=alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar=(1.0 - alpha_bar).sqrt(),
            sqrt_recip_alpha_bar=(1.0 / alpha_bar).sqrt(),
            sqrt_recipm1_alpha_bar=(1.0 / alpha_bar - 1.0).sqrt(),
            posterior_variance=posterior_variance,
            posterior_mean_coef1=betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
            posterior_mean_coef2=(1.0 - alpha_bar_prev) * alphas.sqrt() / (1.0 - alpha_bar),
            snr=alpha_bar / (1.0 - alpha_bar),
        )


def make_schedule(name: str = "cosine", timesteps: int = 1000) -> Schedule:
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(BETA_SCHEDULES)}")
    return Schedule.from_betas(BETA_SCHEDULES[name](timesteps))


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather arr[t] for a batch of timesteps and shape it to broadcast against `like`."""
    out = arr.to(t.device)[t].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, in one jump."""
    return extract(schedule.sqrt_alpha_bar, t, x0) * x0 + extract(schedule.sqrt_one_minus_alpha_bar, t, x0) * noise


def predict_x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 4 solved for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return extract(schedule.sqrt_recip_alpha_bar, t, x_t) * x_t - extract(schedule.sqrt_recipm1_alpha_bar, t, x_t) * eps


def predict_eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (extract(schedule.sqrt_recip_alpha_bar, t, x_t) * x_t - x0) / extract(schedule.sqrt_recipm1_alpha_bar, t, x_t)


def v_target(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The velocity of Salimans & Ho (2022, sec. 4): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return extract(schedule.sqrt_alpha_bar, t, x0) * eps - extract(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0


def eps_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t (eq. 4 and the definition of v). Unlike
    x_0 from eps, x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v stays well conditioned at
    alpha_bar_t -> 0, which is why a v-predicting network's x_0 estimate is usable at t = T - 1."""
    return extract(schedule.sqrt_alpha_bar, t, x_t) * v + extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * x_t


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Eqs. 6-7: mean and variance of q(x_{t-1} | x_t, x_0)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t)
    return mean, var


def q_step(schedule: Schedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 2, one forward step: x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    return extract(schedule.alphas, t, x_prev).sqrt() * x_prev + extract(schedule.betas, t, x_prev).sqrt() * noise


def flow_time(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """s_t, the time of the straight path z_s = (1 - s) x_0 + s eps that x_t lies on (any schedule):
    with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t), x_t = a x_0 + b eps = (a + b) z_s for
    s = b / (a + b). float64, shape of t; s = (t + 1) / T on the "flow" schedule (bar its clipped end)."""
    a = schedule.sqrt_alpha_bar.to(t.device)[t]
    b = schedule.sqrt_one_minus_alpha_bar.to(t.device)[t]
    return b / (a + b)


def flow_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity u = dz_s/ds = eps - x_0 of the straight path (Lipman et al. 2023,
    eq. 23 with sigma_min = 0; Liu et al. 2023, eq. 1)."""
    return eps - x0


def eps_from_flow(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """eps from a velocity u = eps - x_0 at x_t = a x_0 + b eps: x_t + a u = (a + b) eps, so
    eps = (x_t + a u) / (a + b); and x_0 = eps - u. Both stay well conditioned at a -> 0."""
    a = extract(schedule.sqrt_alpha_bar, t, x_t)
    b = extract(schedule.sqrt_one_minus_alpha_bar, t, x_t)
    return (x_t + a * u) / (a + b)


def eps_from_output(schedule: Schedule, prediction: str, x_t: torch.Tensor, t: torch.Tensor,
                    out: torch.Tensor) -> torch.Tensor:
    """The eps a network's output stands for: the output itself for "eps", eps_from_v for "v",
    eps_from_flow for "flow"."""
    if prediction == "v":
        return eps_from_v(schedule, x_t, t, out.to(x_t.dtype))
    if prediction == "flow":
        return eps_from_flow(schedule, x_t, t, out.to(x_t.dtype))
    return out


def guidance_mix(cond: torch.Tensor, uncond: torch.Tensor, w) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): uncond + (1 + w) (cond - uncond); w = 0 is
    the conditional prediction; w a float, or a tensor that broadcasts (one weight per image). It may
    mix v or flow outputs as well as eps ones: eps is affine in either with coefficients that do not
    depend on the label, so mixing commutes with eps_from_v and eps_from_flow."""
    return uncond + (1.0 + w) * (cond - uncond)


def noise_level(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - a_t) / a_t), the noise level of x_t / sqrt(a_t) (EDM's sigma), float64 per t."""
    a = schedule.alpha_bar.to(t.device)[t]
    return ((1 - a) / a).sqrt()


def guidance_weights(schedule: Schedule, t: torch.Tensor, w: float,
                     interval: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """The guidance weight of each image at timesteps t: w where noise_level(t) is in
    [lo, hi] (Kynkaanniemi et al. 2024, "guidance interval"), 0 (the plain conditional
    prediction) elsewhere; interval None guides at every noise level. Shape (B,), float32."""
    if interval is None:
        return torch.full(t.shape, float(w), device=t.device)
    sigma = noise_level(schedule, t)
    inside = (sigma >= interval[0]) & (sigma <= interval[1])
    return torch.where(inside, float(w), 0.0).float()


def training_target(schedule: Schedule, prediction: str, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """What the network learns to output: the noise (eps), the velocity v or the flow velocity u."""
    if prediction == "flow":
        return flow_target(x0, noise)
    return noise if prediction == "eps" else v_target(schedule, x0, t, noise)


def min_snr_weight(schedule: Schedule, t: torch.Tensor, gamma: float, prediction: str = "eps") -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t per timestep for eps-prediction (1 where SNR_t <= gamma, the noisy
    steps; gamma / SNR_t below), min(SNR_t, gamma) / (SNR_t + 1) for v-prediction, or
    min(SNR_t, gamma) s_t^2 for flow (x_0 = eps - u and eps from eps_from_flow: an error e in u is
    s_t e in x_0): all turn the loss into the same min(SNR_t, gamma)-weighted error in x_0."""
    snr = schedule.snr[t.cpu()]  # float64 on the CPU (MPS has no float64)
    if prediction == "flow":
        return (snr.clamp(max=gamma) * flow_time(schedule, t.cpu()) ** 2).float().to(t.device)
    return (snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)).float().to(t.device)


def logit_normal_timesteps(timesteps: int, n: int, mean: float, std: float, generator: torch.Generator,
                           device=None) -> torch.Tensor:
    """n training timesteps t = floor(u T) with logit(u) ~ N(mean, std^2) (Esser et al. 2024,
    eq. 19: the logit-normal density of the noise level, here of t/T; with mean 0 it draws the
    middle of the schedule more often than both ends, mean > 0 the noisier half), so
    P(t <= k) = logit_normal_cdf(k, ...)."""
    dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64  # MPS has no float64
    u = torch.sigmoid(mean + std * torch.randn(n, device=device, generator=generator, dtype=dtype))
    return (u * timesteps).long().clamp_(0, timesteps - 1)


def logit_normal_cdf(k: torch.Tensor, timesteps: int, mean: float, std: float) -> torch.Tensor:
    """P(t <= k) under logit_normal_timesteps: Phi((logit((k + 1)/T) - mean) / std), 1 at k = T - 1."""
    u = ((k.double() + 1) / timesteps).clamp(max=1.0)
    z = (torch.logit(u) - mean) / std  # +inf at k = T - 1
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def diffusion_loss(net, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   y: Optional[torch.Tensor] = None, min_snr_gamma: float = 0.0,
                   prediction: str = "eps") -> torch.Tensor:
    """L_simple (eq. 14): || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2, or for
    prediction "v" the same with the target v (Salimans & Ho 2022), for "flow" with the target
    u = eps - x_0 (flow matching; the network sees x_t, the path's point at unit scale). With min_snr_gamma > 0 each
    image's term is weighted by min_snr_weight (Hang et al. 2023). `net(x_t, t[, y])` is any
    network; y=None calls it without labels."""
    x_t = q_sample(schedule, x0, t, noise)
    pred = net(x_t, t, y) if y is not None else net(x_t, t)
    target = training_target(schedule, prediction, x0, t, noise)
    if min_snr_gamma <= 0:
        return F.mse_loss(pred.float(), target)
    weight = min_snr_weight(schedule, t, min_snr_gamma, prediction)
    return (weight * (pred.float() - target).pow(2).flatten(1).mean(1)).mean()
