"""Research samplers: DPM-Solver++ with every lever the few-step screens tried, kept out of the core.

samplers.dpmpp is the solver the library runs (2M, eta, first-order switch steps, the corrector).
`dpmpp_path` here is its ablation form (as EDM keeps `ablation_sampler` beside `edm_sampler`): any
grid of evaluation timesteps, eta per step, the third-order multistep form (3M), Heun's method in
exponential-integrator form, and restarts (Xu et al. 2023). experiments/few_step_screen.py drives
it; tests/test_research.py checks that at the library's settings it draws what samplers.dpmpp draws.

Not here: anything the library's defaults use (samplers.py).
"""
from __future__ import annotations

import math

from .samplers import alpha_bar_at, half_log_snr, predict_x0, corrector_weights


def dpmpp_path(eps_fn, schedule, x, noise_fn, seq, etas, clip=True, restarts=(), order=2, reset=frozenset(),
               corrector=0, pece=False):
    """SDE/ODE DPM-Solver++(2M) (order 3: the 3M multistep form, as k-diffusion's
    sample_dpmpp_3m_sde, in VP coordinates) over `seq` (evaluation timesteps, the last one jumps to
    x0), eta per step; restarts: (i_lo, i_hi, k) = after reaching seq[i_lo], renoise to seq[i_hi]
    (forward process) and solve back to seq[i_lo] again, k times (Xu et al. 2023); corrector (order 2
    only): the library's UniPC-style corrector (samplers.dpmpp, corrector_weights), 1 linear, 2 quadratic;
    pece: Heun's method in this exponential-integrator form (EDM's 2nd-order sampler): a first-order
    step, a second evaluation at its end, the step redone with both x0 (the linear corrector), and
    the next step's evaluation at the corrected point: 2 evaluations per step, none after the last."""
    def solve(x, ts, etas_here, final):
        x0_1 = x0_2 = h_1 = h_2 = None
        last = None
        for i, t in enumerate(ts):
            x0, _ = predict_x0(eps_fn, schedule, x, t, clip)
            if t in reset:  # the denoiser jumped here (guidance switched): no extrapolation across it
                x0_1 = x0_2 = h_1 = h_2 = None
            elif last is not None and i + 1 < len(ts):  # redo the step into x with this x0 as well
                base, a_now, h_l, x0_a, x0_b, h_b, eta_l = last
                w = corrector_weights(h_l, h_b if x0_b is not None else None, eta_l, corrector)
                x = base + a_now ** 0.5 * (w[0] * x0 + w[1] * x0_a + (w[2] * x0_b if x0_b is not None else 0.0))
            if i + 1 == len(ts):
                if final:
                    return x0, None
                break
            s = ts[i + 1]
            a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, s)
            h = half_log_snr(schedule, s) - half_log_snr(schedule, t)
            eta = etas_here[i]
            he = (1 + eta) * h
            if order == 2:
                d = x0 if x0_1 is None or pece else (1 + 1 / (2 * h_1 / h)) * x0 - (1 / (2 * h_1 / h)) * x0_1
                base = ((1 - a_s) / (1 - a_t)) ** 0.5 * math.exp(-eta * h) * x
                x = base - a_s ** 0.5 * math.expm1(-he) * d
                if eta > 0:
                    z = (1 - a_s) ** 0.5 * math.sqrt(-math.expm1(-2 * eta * h)) * noise_fn(x)
                    x, base = x + z, base + z
                if corrector:
                    last = (base, a_s, h, x0, x0_1 if corrector == 2 else None, h_1, eta)
                if pece:  # Heun: evaluate at the end of the first-order step, redo it with both
                    x0s, _ = predict_x0(eps_fn, schedule, x, s, clip)
                    w = corrector_weights(h, None, eta, 1)
                    x = base + a_s ** 0.5 * (w[0] * x0s + w[1] * x0)
                x0_1, x0_2, h_1, h_2 = x0, x0_1, h, h_1
                continue
            else:
                x = ((1 - a_s) / (1 - a_t)) ** 0.5 * math.exp(-eta * h) * x - a_s ** 0.5 * math.expm1(-he) * x0
                phi2 = math.expm1(-he) / he + 1
                if h_2 is not None:
                    r0, r1 = h_1 / h, h_2 / h
                    d10, d11 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
                    d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
                    d2 = (d10 - d11) / (r0 + r1)
                    x = x + a_s ** 0.5 * (phi2 * d1 - (phi2 / he - 0.5) * d2)
                elif h_1 is not None:
                    x = x + a_s ** 0.5 * phi2 * (x0 - x0_1) / (h_1 / h)
            if eta > 0:
                x = x + (1 - a_s) ** 0.5 * math.sqrt(-math.expm1(-2 * eta * h)) * noise_fn(x)
            x0_1, x0_2, h_1, h_2 = x0, x0_1, h, h_1
        return None, x

    if not restarts:
        out, _ = solve(x, seq, etas, True)
        return out
    (i_lo, i_hi, k, sub) = restarts
    # main pass to seq[i_lo] (not evaluated there), restarts, then on to the end
    _, x = solve(x, seq[: i_lo + 1], etas, False)
    t_lo, t_hi = seq[i_lo], seq[i_hi]
    sub_seq = sub
    for _ in range(k):
        a_lo, a_hi = alpha_bar_at(schedule, t_lo), alpha_bar_at(schedule, t_hi)
        x = (a_hi / a_lo) ** 0.5 * x + (1 - a_hi / a_lo) ** 0.5 * noise_fn(x)
        _, x = solve(x, sub_seq, [0.0] * len(sub_seq), False)
    out, _ = solve(x, seq[i_lo:], etas[i_lo:], True)
    return out
