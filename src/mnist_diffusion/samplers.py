"""Reverse-process samplers as plain functions over a noise-predicting callable.

Every sampler takes `eps_fn(x_t, t) -> eps` (t a (B,) long tensor), a `Schedule`, the starting
noise x_T and, for stochastic steps, a `noise_fn(like) -> tensor` that draws fresh N(0, I) noise.
Randomness therefore never comes from global state; `PerImageNoise` gives each image its own seeded
generator so an image does not depend on the batch it was drawn in (as in NVlabs/edm).

Not here: networks, guidance and checkpoint loading (sampling.py wires those to these functions).
"""
from __future__ import annotations

import math
from typing import Callable, Collection, Optional, Sequence, Union

import torch

from .config import SAMPLERS, SPACINGS
from .schedule import (Schedule, extract, flow_time, noise_level, predict_eps_from_x0, predict_x0_from_eps,
                       q_posterior)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]
# callback(step_index, t, x_t, pred_x0) is called once per network evaluation
Callback = Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]]

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


# "logsnr-capped" starts its log-SNR grid at this noise level sigma/alpha (after one evaluation at
# T-1): the cosine schedule's clipped last beta puts t = 999..992 at sigma/alpha 20,291..92, pure
# noise, where a plain log-SNR grid spends 8 of 20 evaluations (docs/decisions/capped-grid.md)
LOGSNR_CAP = 20.0
# a distilled student's second evaluation (spacing "student"): the noise level its first image is
# re-noised to, and the lowest of a longer grid (docs/decisions/distillation.md)
STUDENT_SIGMA = 1.0
STUDENT_SIGMA_LOW = 0.1


def timestep_sequence(schedule: Union[Schedule, int], steps: Optional[int], spacing: str = "uniform", *,
                      include_zero: bool = True) -> list[int]:
    """Strictly decreasing timesteps starting at T-1, exactly min(steps, T) of them (all T when None).

    `include_zero=True` (DDIM) places the last one at t = 0; `include_zero=False` (DPM-Solver++)
    lays out steps+1 points and drops t = 0, so every evaluation is followed by a real solver step
    and the final jump to the clean image starts from a moderately noisy point. Spacing is
    "uniform" in t, "quadratic" (denser near t = 0, Song et al. 2021), "logsnr" (uniform in
    lambda = log(alpha/sigma), Lu et al. 2022; needs a Schedule), "logsnr-capped" (T-1, then the
    rest uniform in lambda from sigma/alpha = LOGSNR_CAP down; needs a Schedule) or "flow" (uniform
    in the straight path's time s_t, schedule.flow_time; uniform in t on the flow schedule)."""
    T = schedule.timesteps if isinstance(schedule, Schedule) else int(schedule)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps is None or steps >= T:
        return list(range(T - 1, -1, -1))
    if spacing == "student":
        return student_timesteps(schedule, steps or 1)
    n = steps if include_zero else steps + 1
    if n == 1:
        return [T - 1]
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    if spacing == "uniform":
        pos = u * (T - 1)
    elif spacing == "quadratic":
        pos = u ** 2 * (T - 1)
    elif spacing == "flow":
        if not isinstance(schedule, Schedule):
            raise ValueError("flow spacing needs the schedule, not just T")
        st = flow_time(schedule, torch.arange(T))  # increasing in t
        target = st[0] + u * (st[-1] - st[0])
        idx = torch.searchsorted(st, target).clamp(1, T - 1)
        lo, hi = st[idx - 1], st[idx]
        pos = (idx - 1) + (target - lo) / (hi - lo)
    else:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"{spacing} spacing needs the schedule, not just T")
        lam = 0.5 * torch.log(schedule.alpha_bar / (1 - schedule.alpha_bar))  # decreasing in t
        top = -math.log(LOGSNR_CAP)
        if spacing == "logsnr" or top <= float(lam[-1]):  # (a schedule that never gets that noisy: plain)
            target = lam[0] + u * (lam[-1] - lam[0])
        else:  # n-1 points from t = 0 to the cap, then T-1
            target = torch.cat([lam[0] + torch.linspace(0, 1, n - 1, dtype=torch.float64) * (top - lam[0]),
                                lam[-1:].to(torch.float64)])
        # invert the monotone lambda(t) by linear interpolation between integer timesteps
        idx = torch.searchsorted(-lam, -target).clamp(1, T - 1)
        lo, hi = lam[idx - 1], lam[idx]
        pos = (idx - 1) + (lo - target) / (lo - hi)
    q = [int(round(v)) for v in pos.clamp(0, T - 1).tolist()]
    # rounding can merge neighbours (quadratic near 0): push them apart so exactly n remain
    q[0] = 0
    for i in range(1, n):
        q[i] = max(q[i], q[i - 1] + 1)
    q[-1] = T - 1
    for i in range(n - 2, -1, -1):
        q[i] = min(q[i], q[i + 1] - 1)
    if not include_zero:
        q = q[1:]
    return q[::-1]


def student_timesteps(schedule: Schedule, steps: int) -> list[int]:
    """A distilled student's grid (spacing "student"): T-1 (pure noise), then steps-1 timesteps at
    noise levels sigma_t = sqrt((1-a_t)/a_t) falling geometrically from STUDENT_SIGMA to
    STUDENT_SIGMA_LOW; DDIM (eta 0) jumps between them with the student's x0 and the final step
    lands on the clean image. One step is the one-step map itself."""
    if not isinstance(schedule, Schedule):
        raise ValueError("student spacing needs the schedule, not just T")
    T = schedule.timesteps
    steps = min(steps, T)
    if steps == 1:
        return [T - 1]
    sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()  # increasing in t
    want = torch.logspace(math.log10(STUDENT_SIGMA), math.log10(STUDENT_SIGMA_LOW), steps - 1, dtype=torch.float64)
    if steps == 2:
        want = want[:1]
    seq = [T - 1]
    for s in want.tolist():
        t = int(torch.searchsorted(sigma.to(torch.float64), torch.tensor([s], dtype=torch.float64)).clamp(0, T - 1))
        seq.append(min(t, seq[-1] - 1))
    return [t for t in seq if t >= 0]


def _t(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def predict_x0(eps_fn: EpsFn, schedule: Schedule, x: torch.Tensor, t: int, clip: bool):
    """(x0, eps) of the network at timestep t (eq. 4 solved for x0), x0 clipped to [-1, 1] when `clip`."""
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
        x0, _ = predict_x0(eps_fn, schedule, x, t, clip)
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


def alpha_bar_at(schedule: Schedule, t: int) -> float:
    """a_t as a float; 1 for t < 0 (the clean image)."""
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


@torch.no_grad()
def ddim(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: Optional[NoiseFn] = None, *,
         steps: Optional[int], spacing: str, eta: float = 0.0, clip: bool = True,
         callback: Callback = None) -> torch.Tensor:
    """Song et al. (2021), eq. 12: x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_s)/(1 - a_t)) sqrt(1 - a_t/a_s). eta = 0 is deterministic; the last
    step goes to a_s = 1 (the clean image). eta is in [0, 1]: above 1, sigma^2 > 1 - a_s."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim needs eta in [0, 1], got {eta}")
    if eta > 0 and noise_fn is None:
        raise ValueError("ddim with eta > 0 needs a noise_fn")
    seq = timestep_sequence(schedule, steps, spacing)
    x = x_T
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else -1
        x0, eps = predict_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, s)
        sigma = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise_fn(x)
    return x


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, schedule: Schedule, x0: torch.Tensor, *, steps: Optional[int],
                spacing: str) -> torch.Tensor:
    """Deterministic DDIM run forwards (eta = 0): image -> the x_T that ddim() maps back to it."""
    seq = list(reversed(timestep_sequence(schedule, steps, spacing)))  # 0 ... T-1
    x = x0
    prev = -1
    for t in seq:
        # eps is estimated at the current (less noisy) point, the usual first-order inversion
        a_prev, a_t = alpha_bar_at(schedule, prev), alpha_bar_at(schedule, t)
        t_eval = max(prev, 0)
        eps = eps_fn(x, _t(x, t_eval)).to(x.dtype)
        x0_hat = (x - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
        x = a_t ** 0.5 * x0_hat + (1 - a_t) ** 0.5 * eps
        prev = t
    return x


def _flow_step(schedule: Schedule, x: torch.Tensor, t: int, s: int, u: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE dz/ds = u from timestep t to s (s < 0: the clean image) in the
    straight path's coordinates z = x_t / (a_t + b_t), a = sqrt(a_t), b = sqrt(1 - a_t)
    (schedule.flow_time), and back to x_s = (a_s + b_s) z."""
    def coords(k: int) -> tuple[float, float]:  # (a + b, path time s)
        a = alpha_bar_at(schedule, k) ** 0.5
        b = (1 - alpha_bar_at(schedule, k)) ** 0.5
        return a + b, b / (a + b)
    (r_t, s_t), (r_s, s_s) = coords(t), coords(s)
    return (x / r_t + (s_s - s_t) * u) * r_s


@torch.no_grad()
def flow_euler(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, *, steps: Optional[int], spacing: str,
               clip: bool = True, callback: Callback = None) -> torch.Tensor:
    """Euler's method on the flow-matching ODE dz/ds = u(z, s), u = eps - x_0 (Liu et al. 2023), on
    a grid uniform in the path's time s (spacing "flow"), the last step to s = 0. With u from the
    model's (x_0, eps) the step lands on (1 - s') x_0 + s' eps: it is DDIM at eta = 0 written in flow
    coordinates, whatever the model predicts (eps, v or flow are all turned into eps first)."""
    seq = timestep_sequence(schedule, steps, spacing)
    x = x_T
    for i, t in enumerate(seq):
        x0, eps = predict_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        x = _flow_step(schedule, x, t, seq[i + 1] if i + 1 < len(seq) else -1, eps - x0)
    return x


@torch.no_grad()
def flow_heun(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, *, steps: Optional[int], spacing: str,
              clip: bool = True, callback: Callback = None) -> torch.Tensor:
    """Heun's method (the explicit trapezoidal rule, as in EDM's Algorithm 1) on the same ODE:
    an Euler step to the next grid point, a second evaluation there, the step redone with the
    mean of both velocities; the last step (to the clean image) stays Euler. `steps` grid points
    cost 2 steps - 1 network evaluations."""
    seq = timestep_sequence(schedule, steps, spacing)
    x, k = x_T, 0
    for i, t in enumerate(seq):
        x0, eps = predict_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(k, t, x, x0)
        k += 1
        u, nxt = eps - x0, seq[i + 1] if i + 1 < len(seq) else -1
        guess = _flow_step(schedule, x, t, nxt, u)
        if nxt < 0:
            return guess
        x0n, epsn = predict_x0(eps_fn, schedule, guess, nxt, clip)
        if callback:
            callback(k, nxt, guess, x0n)
        k += 1
        x = _flow_step(schedule, x, t, nxt, 0.5 * (u + epsn - x0n))
    return x


def half_log_snr(schedule: Schedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(a_t / (1 - a_t)), the half log-SNR."""
    a = float(schedule.alpha_bar[t])
    return 0.5 * (math.log(a) - math.log1p(-a))


@torch.no_grad()
def dpmpp(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: Optional[NoiseFn] = None, *,
          steps: Optional[int], spacing: str, eta: float = 0.0, clip: bool = True,
          first_order_at: Collection[int] = (), corrector: int = 0, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022b), Algorithm 2, on the discrete schedule; with eta > 0
    its stochastic form (eta = 1: SDE-DPM-Solver++(2M), same paper, Appendix; eta in (0, 1)
    interpolates as in k-diffusion's sample_dpmpp_2m_sde; eta > 1 refreshes more of x with noise
    each step, like EDM's churn). `noise_fn` is needed only for eta > 0.
    With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t) and
    h_i = lambda_{t_i} - lambda_{t_{i-1}}:
      x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-eta h_i} x_{t_{i-1}} + alpha_{t_i} (1 - e^{-(1 + eta) h_i}) D_i
                + sigma_{t_i} sqrt(1 - e^{-2 eta h_i}) z,
      D_1 = x0_{t_0};  D_i = (1 + 1/(2 r_i)) x0_{t_{i-1}} - 1/(2 r_i) x0_{t_{i-2}},  r_i = h_{i-1} / h_i.
    For every eta >= 0 a predictor that returns the true x0 keeps the marginals exact: if x_{t_{i-1}} =
    alpha x0 + sigma eps, the update gives mean alpha_{t_i} x0 and variance sigma_{t_i}^2
    (e^{-2 eta h} sigma_{t_i}^2 from the carried noise, (1 - e^{-2 eta h}) sigma_{t_i}^2 fresh).
    eta = 0 is the deterministic ODE solver. The time grid omits t = 0 (see timestep_sequence):
    each of the `steps` evaluations is followed by a step, and the last one jumps to the clean
    image (lambda = inf) at first order, x = x0, since the second-order weights degenerate there
    (r -> 0). The noise injected by eta > 0 corrects part of the network's error along the way,
    as ancestral DDPM does: with trained MNIST models it gives a lower FID at the same steps
    (docs/decisions/sde-eta.md).
    `first_order_at`: timesteps where eps_fn jumps (guidance switching on or off, see
    guidance_switches); the step from there is first order, D_i = x0_{t_{i-1}}, because the
    multistep estimate would extrapolate the jump as if it were the trend of a smooth x0.
    `corrector` (0, 1 or 2): after each evaluation, redo the step that led there with the new x0 as
    well (UniPC's corrector, Zhao et al. 2023; with eta > 0 and the same fresh noise, the stochastic
    Adams-Moulton step of SA-Solver, Xue et al. 2023): x0 is interpolated in lambda through x0_{t_i}
    and x0_{t_{i-1}} (1: linear) or also x0_{t_{i-2}} (2: quadratic) and integrated exactly against
    the step's weight (corrector_weights). The corrected x carries on; the evaluation at the
    uncorrected point is reused, so the number of evaluations does not change. No correction across
    a first_order_at jump, and none after the last evaluation (nothing would use it)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if corrector not in (0, 1, 2):
        raise ValueError(f"corrector must be 0, 1 or 2, got {corrector}")
    if eta > 0 and noise_fn is None:
        raise ValueError("dpmpp with eta > 0 needs a noise_fn")
    seq = timestep_sequence(schedule, steps, spacing, include_zero=False)
    x = x_T
    x0_prev, h_prev = None, None
    last = None  # the step into x: (its linear part plus noise, a_s, h, x0 it started from, the one before, h before)
    for i, t in enumerate(seq):
        x0, _ = predict_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        if i + 1 == len(seq):  # final step to lambda = inf
            return x0
        if last is not None and t not in first_order_at:  # 0. corrector: redo the step into x with x0 too
            base, a_t_, h_, x0_a, x0_b, h_b = last
            w_new, w_a, w_b = corrector_weights(h_, h_b if x0_b is not None else None, eta, corrector)
            x = base + a_t_ ** 0.5 * (w_new * x0 + w_a * x0_a + (w_b * x0_b if w_b else 0.0))
        s = seq[i + 1]
        a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, s)
        h = half_log_snr(schedule, s) - half_log_snr(schedule, t)
        # 1. first step and after a jump: first order (DPM-Solver++ 1 = DDIM); else multistep 2nd order
        if x0_prev is None or t in first_order_at:
            d = x0
            x0_prev = None
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # 2. exact integration of the linear part, exponential-integrator weight on D
        base = ((1 - a_s) / (1 - a_t)) ** 0.5 * math.exp(-eta * h) * x
        x = base - a_s ** 0.5 * math.expm1(-(1 + eta) * h) * d
        if eta > 0:  # 3. fresh noise, the variance the linear part's decay left to fill
            z = (1 - a_s) ** 0.5 * math.sqrt(-math.expm1(-2 * eta * h)) * noise_fn(x)
            x = x + z
            base = base + z if corrector else None
        if corrector:  # what the corrector redoes this step with: all but the weight on D
            last = (base, a_s, h, x0, x0_prev if corrector == 2 else None, h_prev)
        x0_prev, h_prev = x0, h
    return x


def corrector_weights(h: float, h_before: Optional[float], eta: float, order: int) -> tuple[float, float, float]:
    """Weights (new, start, before) with which dpmpp's corrector combines x0 at the step's end
    (lambda + h), its start (lambda) and, for order 2 with h_before given, the point before
    (lambda - h_before): the integral over the step of the polynomial through those points against
    the kernel (1 + eta) e^{-(1 + eta)(h - u)}, u in [0, h], whose total, 1 - e^{-(1 + eta) h}, is
    the weight of D in the predictor. With H = (1 + eta) h the kernel's moments are
    M_j = m_j / (1 + eta)^j, m_0 = 1 - e^{-H}, m_1 = H - m_0, m_2 = H^2 - 2 m_1."""
    k = 1 + eta
    big = k * h
    m0 = -math.expm1(-big)
    m1 = (big - m0) / k
    m2 = (big * big - 2 * (big - m0)) / (k * k)
    if order == 1 or h_before is None:  # linear through (0, x0_start), (h, x0_new)
        return m1 / h, m0 - m1 / h, 0.0
    hb = h_before  # quadratic through (-hb, before), (0, start), (h, new): Lagrange basis integrated
    w_new = (m2 + hb * m1) / (h * (h + hb))
    w_before = (m2 - h * m1) / (hb * (hb + h))
    w_start = -(m2 + (hb - h) * m1 - hb * h * m0) / (hb * h)
    return w_new, w_start, w_before


# ---------------------------------------------------------------------------------------------
# samplers that condition on an image: inpainting (RePaint) and SDEdit

def repaint_path(seq: Sequence[int], jump_length: int = 10, resample: int = 1) -> list[int]:
    """RePaint's time path (Lugmayr et al. 2022, Algorithm 1 and sec. 4.2) over the visited steps
    `seq` (decreasing, as timestep_sequence gives them), ending at -1 (the clean image): down one
    step at a time; after each block of `jump_length` steps, back up `jump_length` (one forward
    jump, q(x_s | x_t)) and down again, so each block is denoised `resample` times in all."""
    if jump_length < 1 or resample < 1:
        raise ValueError(f"jump_length and resample must be >= 1, got {jump_length} and {resample}")
    full = list(seq) + [-1]
    path, i, redone = [full[0]], 0, {}
    while i < len(full) - 1:
        i += 1
        path.append(full[i])
        if resample > 1 and i % jump_length == 0 and i < len(full) - 1 and redone.get(i, 0) < resample - 1:
            redone[i] = redone.get(i, 0) + 1
            i -= jump_length
            path.append(full[i])
    return path


@torch.no_grad()
def repaint(eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: NoiseFn, known: torch.Tensor,
            mask: torch.Tensor, *, steps: Optional[int], spacing: str, eta: float = 1.0,
            jump_length: int = 10, resample: int = 1, clip: bool = True, callback: Callback = None) -> torch.Tensor:
    """Inpainting (RePaint, Lugmayr et al. 2022): `known` images in [-1, 1] and a `mask` (1 = known
    pixel), the same shape. Each reverse step (DDIM eq. 12 with `eta`; eta = 1 on every timestep is
    ancestral DDPM) is followed by putting back the known region, forward-noised to the new level:
      x_s = m * (sqrt(a_s) known + sqrt(1 - a_s) z) + (1 - m) * x_s;
    at the end (a_s = 1) the known pixels are the original ones exactly. With resample > 1, blocks
    of `jump_length` steps are undone by a forward jump x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) z
    and denoised again, which lets the generated region agree with the known one."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"inpainting needs eta in [0, 1] (its steps are DDIM's), got {eta}")
    path = repaint_path(timestep_sequence(schedule, steps, spacing), jump_length, resample)
    x = x_T
    for i, (t, s) in enumerate(zip(path[:-1], path[1:])):
        a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, s)
        if s > t:  # back up: the forward process from t to s in one jump
            x = (a_s / a_t) ** 0.5 * x + (1 - a_s / a_t) ** 0.5 * noise_fn(x)
            continue
        x0, eps = predict_x0(eps_fn, schedule, x, t, clip)
        if callback:
            callback(i, t, x, x0)
        sigma = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise_fn(x)
        known_s = known if s < 0 else a_s ** 0.5 * known + (1 - a_s) ** 0.5 * noise_fn(x)
        x = mask * known_s + (1 - mask) * x
    return x


def sdedit_start(schedule: Schedule, strength: float) -> int:
    """The timestep SDEdit (Meng et al. 2022) starts from: strength s in (0, 1] maps to
    t0 = round(s T) - 1 (at least 0), so s = 1 starts from pure noise at T - 1."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(0, min(schedule.timesteps - 1, round(strength * schedule.timesteps) - 1))


def sdedit_plan(schedule: Schedule, strength: float, steps: Optional[int]):
    """(t0, the schedule cut at t0, the steps to run on it): the share `strength` of a full run's
    `steps` (None, every timestep, stays every timestep of the cut schedule)."""
    t0 = sdedit_start(schedule, strength)
    n = steps
    if strength < 1.0 and n is not None:
        n = max(1, round(n * (t0 + 1) / schedule.timesteps))
    return t0, schedule.prefix(t0 + 1), n


@torch.no_grad()
def sdedit(name: str, eps_fn: EpsFn, schedule: Schedule, images: torch.Tensor, noise: torch.Tensor, noise_fn: NoiseFn,
           start: int, *, steps: Optional[int], spacing: str, eta: float, clip: bool,
           first_order_at: Collection[int] = (), corrector: int = 0, callback: Callback = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise `images` (in [-1, 1]) to timestep `start` = t0 with `noise`,
    x_t0 = sqrt(a_t0) x + sqrt(1 - a_t0) noise, and run sampler `name` from there on the schedule cut
    at t0 (Schedule.prefix) for `steps` (sdedit_plan: the strength's share of a full run's). From
    t0 = T - 1, x_t0 is the noise itself: the same run as sampling from scratch with that noise."""
    sub = schedule.prefix(start + 1)
    if start == schedule.timesteps - 1:
        x = noise
    else:
        # the coefficients as Python floats: the images stay in their dtype and device (MPS has no float64)
        x = float(sub.sqrt_alpha_bar[start]) * images.to(noise.dtype) + \
            float(sub.sqrt_one_minus_alpha_bar[start]) * noise
    return run_sampler(name, eps_fn, sub, x, noise_fn, steps=steps, eta=eta, spacing=spacing, clip=clip,
                       first_order_at=first_order_at, corrector=corrector, callback=callback)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation per image (Shoemake 1985): for angle theta between z0 and z1,
    z = sin((1 - alpha) theta)/sin(theta) z0 + sin(alpha theta)/sin(theta) z1. Gaussian noise
    lives near a sphere of radius sqrt(D); a straight line between two noises passes inside it
    (too little noise, blurry images), an arc stays on it. Falls back to lerp for parallel inputs."""
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a = z0.reshape(z0.shape[0], -1).double() if z0.ndim > 1 else z0.reshape(1, -1).double()
    b = z1.reshape(a.shape).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    sin = torch.sin(theta)
    near = sin.abs() < eps
    w0 = torch.where(near, torch.full_like(theta, 1 - alpha), torch.sin((1 - alpha) * theta) / sin.where(~near, 1.0))
    w1 = torch.where(near, torch.full_like(theta, alpha), torch.sin(alpha * theta) / sin.where(~near, 1.0))
    return (w0 * a + w1 * b).reshape(z0.shape).to(z0.dtype)


def guidance_switches(schedule: Schedule, seq: Sequence[int],
                      interval: Optional[tuple[float, float]]) -> frozenset[int]:
    """The timesteps of `seq` (as visited) where a guidance interval (schedule.guidance_weights)
    switches guidance on or off, i.e. where the guided eps_fn jumps; none for interval None."""
    if interval is None or not seq:
        return frozenset()
    sigma = noise_level(schedule, torch.as_tensor(list(seq)))
    inside = ((sigma >= interval[0]) & (sigma <= interval[1])).tolist()
    return frozenset(t for t, now, before in zip(seq[1:], inside[1:], inside) if now != before)


def visited_timesteps(name: str, schedule: Schedule, steps: Optional[int], spacing: str) -> list[int]:
    """The timesteps at which `run_sampler(name, ...)` evaluates the network, in order."""
    seq = timestep_sequence(schedule, steps, spacing, include_zero=name != "dpmpp")
    if name == "heun":  # each grid point after the first twice: the corrector's evaluation, then the next step's
        return seq[:1] + [t for t in seq[1:] for _ in range(2)]
    return seq


def run_sampler(name: str, eps_fn: EpsFn, schedule: Schedule, x_T: torch.Tensor, noise_fn: NoiseFn, *,
                steps: Optional[int], spacing: str, eta: float, clip: bool, first_order_at: Collection[int] = (),
                corrector: int = 0, variance: str = "posterior", callback: Callback = None) -> torch.Tensor:
    """Dispatch by name, every setting given (sampling.plan decides them). `steps` None or T: every
    timestep. `first_order_at`: dpmpp's first-order steps (where a guidance interval switches, see
    guidance_switches); `corrector`: dpmpp's (0 = none). DDPM with fewer steps than T is DDIM with
    eta = 1 on the respaced grid."""
    if corrector and name != "dpmpp":
        raise ValueError(f"the corrector is dpmpp's; {name} has none")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if name == "ddpm":
        if steps not in (None, schedule.timesteps):
            return ddim(eps_fn, schedule, x_T, noise_fn, steps=steps, eta=1.0, spacing=spacing, clip=clip,
                        callback=callback)
        return ddpm(eps_fn, schedule, x_T, noise_fn, clip=clip, variance=variance, callback=callback)
    if name == "ddim":
        return ddim(eps_fn, schedule, x_T, noise_fn, steps=steps, eta=eta, spacing=spacing, clip=clip,
                    callback=callback)
    if name in ("euler", "heun"):
        if eta:
            raise ValueError(f"{name} solves the flow ODE: it is deterministic (eta 0), got eta {eta:g}")
        return (flow_euler if name == "euler" else flow_heun)(eps_fn, schedule, x_T, steps=steps, spacing=spacing,
                                                              clip=clip, callback=callback)
    return dpmpp(eps_fn, schedule, x_T, noise_fn, steps=steps, spacing=spacing, eta=eta, clip=clip,
                 first_order_at=first_order_at, corrector=corrector, callback=callback)
