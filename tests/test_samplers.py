"""Samplers against closed forms: a true-noise oracle, and a Gaussian toy whose exact eps is known.

Gaussian toy: data x0 ~ N(mu, s^2) per coordinate. Then x_t = sqrt(ab) x0 + sqrt(1-ab) eps has
  E[eps | x_t] = sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab),
the exact minimiser of the training loss, so a sampler fed this eps must produce N(mu, s^2) in the
limit of many steps. Because that eps is affine in x_t, every sampler here is an affine map of
(x_T, z_1, ..., z_K) (z_k the fresh noise of stochastic step k), and the mean and variance of its
output can be computed exactly instead of estimated from samples: see `exact_moments`.
"""
from __future__ import annotations

import math

import pytest
import torch

from mnist_diffusion.samplers import (LOGSNR_CAP, SPACINGS, PerImageNoise, corrector_weights, ddim, ddim_invert, ddpm,
                                      dpmpp, flow_euler, flow_heun, guidance_switches, repaint, run_sampler, sdedit,
                                      sdedit_plan, slerp, timestep_sequence, visited_timesteps)
from mnist_diffusion.schedule import Schedule, flow_time, guidance_weights, make_schedule, noise_level, q_sample

MU, SD = 0.5, 0.3


def gaussian_eps(schedule, mu=MU, sd=SD):
    ab = schedule.alpha_bar

    def eps_fn(x, t):
        a = ab[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sd ** 2 + 1 - a)
    return eps_fn


def exact_moments(run, schedule, max_noise_calls=0, mu=MU, sd=SD):
    """Mean and std of run(x_T, noise_fn) when x_T follows the true marginal q(x_{T-1}) and the
    noise is N(0, 1). The output is y = A x_T + b + sum_k c_k z_k, elementwise; one run on a
    vector of coordinates reads off all coefficients: coordinate 0 has x_T = 0 and z = 0 (gives b),
    coordinate 1 has x_T = 1 (A + b), coordinate 2 + k has z_k = 1 at noise call k only (b + c_k)."""
    x_T = torch.zeros(1, 2 + max_noise_calls, dtype=torch.float64)
    x_T[0, 1] = 1.0
    calls = [0]

    def noise_fn(like):
        z = torch.zeros_like(like)
        z[0, 2 + calls[0]] = 1.0
        calls[0] += 1
        return z

    y = run(x_T, noise_fn)[0]
    b, A, c = y[0], y[1] - y[0], y[2:2 + calls[0]] - y[0]
    aT = schedule.alpha_bar[-1]
    mean_T, var_T = aT.sqrt() * mu, aT * sd ** 2 + 1 - aT
    return float(A * mean_T + b), float((A * A * var_T + (c * c).sum()).sqrt())


# ---------------------------------------------------------------------------------------------
# timestep grids

# (the "student" grid is a distilled student's one or few steps: tests/test_distill.py)
@pytest.mark.parametrize("spacing", [s for s in SPACINGS if s != "student"])
@pytest.mark.parametrize("include_zero", [True, False])
def test_timestep_sequence_gives_exactly_the_requested_steps(spacing, include_zero):
    s = make_schedule("cosine", 1000)
    for n in [1, 2, 5, 10, 20, 50, 100, 999]:
        seq = timestep_sequence(s, n, spacing, include_zero=include_zero)
        assert len(seq) == n and seq[0] == 999
        assert all(a > b for a, b in zip(seq, seq[1:]))
        assert seq[-1] >= 0 and (n == 1 or (seq[-1] == 0) == include_zero)
    assert timestep_sequence(s, None, spacing) == list(range(999, -1, -1))
    assert timestep_sequence(s, 5000, spacing, include_zero=include_zero) == list(range(999, -1, -1))


def test_timestep_sequence_rejects_nonsense():
    with pytest.raises(ValueError, match="spacing"):
        timestep_sequence(100, 10, "cubic")
    with pytest.raises(ValueError, match="steps"):
        timestep_sequence(100, 0)
    with pytest.raises(ValueError, match="schedule"):
        timestep_sequence(100, 10, "logsnr")


def test_logsnr_spacing_is_uniform_in_lambda():
    s = make_schedule("linear", 1000)
    lam = 0.5 * torch.log(s.alpha_bar / (1 - s.alpha_bar))
    seq = timestep_sequence(s, 11, "logsnr")
    gaps = (lam[seq[1:]] - lam[seq[:-1]])
    spread = (lam[0] - lam[-1]) / 10
    assert torch.allclose(gaps, spread.expand_as(gaps), rtol=0.1)


@pytest.mark.parametrize("include_zero", [True, False])
def test_capped_logsnr_spacing_skips_the_pure_noise_end(include_zero):
    """logsnr-capped: one evaluation at T-1, then a grid uniform in lambda that starts at
    sigma/alpha = LOGSNR_CAP, where plain logsnr spends 8 of 20 evaluations at sigma/alpha > 50."""
    s = make_schedule("cosine", 1000)
    lam = 0.5 * torch.log(s.alpha_bar / (1 - s.alpha_bar))
    plain = timestep_sequence(s, 20, "logsnr", include_zero=False)
    assert sum(float(lam[t]) < -math.log(50) for t in plain) == 8
    seq = timestep_sequence(s, 20, "logsnr-capped", include_zero=include_zero)
    assert seq[0] == 999 and sum(float(lam[t]) < -math.log(50) for t in seq) == 1
    # the second point is the timestep whose noise level is nearest the cap
    assert abs(float(lam[seq[1]]) + math.log(LOGSNR_CAP)) < float(lam[seq[1] - 1] - lam[seq[1] + 1])
    # then uniform in lambda (up to rounding to integer t, which matters only near t = 0)
    rest = [t for t in seq[1:] if t >= 10]
    gaps = lam[rest[1:]] - lam[rest[:-1]]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=0.1)
    # a schedule whose noisiest level is below the cap degenerates to the plain log-SNR grid
    mild = Schedule.from_betas(torch.full((50,), 0.05, dtype=torch.float64))  # sigma/alpha at T-1: 3.5
    assert timestep_sequence(mild, 5, "logsnr-capped") == timestep_sequence(mild, 5, "logsnr")


# ---------------------------------------------------------------------------------------------
# DDIM with the true noise

@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps,spacing", [(1, "uniform"), (7, "uniform"), (50, "quadratic"), (None, "uniform")])
def test_ddim_with_true_noise_recovers_x0(name, steps, spacing):
    """eps_fn = the noise actually added keeps every DDIM iterate on q_sample(x0, t, noise)."""
    s = make_schedule(name, 200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_T = q_sample(s, x0, torch.full((3,), s.timesteps - 1), noise)
    out = ddim(lambda x, t: noise, s, x_T, steps=steps, eta=0.0, spacing=spacing, clip=False)
    assert torch.allclose(out, x0, atol=1e-9, rtol=0)


def test_ddim_rejects_eta_without_noise():
    with pytest.raises(ValueError, match="noise_fn"):
        ddim(lambda x, t: x, make_schedule("cosine", 10), torch.zeros(1, 1), None, steps=5, spacing="uniform", eta=0.5)


def test_ddim_and_repaint_refuse_eta_above_one():
    """DDIM's eq. 12 needs sigma^2 <= 1 - a_s, which eta > 1 breaks (only dpmpp takes eta > 1)."""
    s = make_schedule("cosine", 10)
    noise = lambda like: torch.zeros_like(like)  # noqa: E731
    with pytest.raises(ValueError, match=r"eta in \[0, 1\]"):
        ddim(lambda x, t: x, s, torch.zeros(1, 1), noise, steps=5, spacing="uniform", eta=1.5)
    with pytest.raises(ValueError, match=r"eta in \[0, 1\]"):
        repaint(lambda x, t: x, s, torch.zeros(1, 1), noise, torch.zeros(1, 1), torch.ones(1, 1), steps=None,
                spacing="uniform", eta=2.0)


# ---------------------------------------------------------------------------------------------
# DDPM and DDIM(eta = 1)

@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta1_all_steps_is_ddpm_pathwise(clip):
    """sigma_t(eta=1)^2 = (1-a_{t-1})/(1-a_t) beta_t = beta~_t and sqrt(a_{t-1}) x0 + sqrt(1-a_{t-1}-sigma^2) eps
    = mu~_t(x0, x_t): the two updates are the same function, so equal noise gives equal samples."""
    s = make_schedule("cosine", 100)
    x_T = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps_fn = gaussian_eps(s)

    def noise():
        g = torch.Generator().manual_seed(2)
        return lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype)

    a = ddpm(eps_fn, s, x_T, noise(), clip=clip)
    b = ddim(eps_fn, s, x_T, noise(), spacing="uniform", steps=None, eta=1.0, clip=clip)
    assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddpm_oracle_samples_the_data_distribution(name):
    """With the exact eps, ancestral sampling's only error is the Gaussian reverse kernel with
    variance beta~_t (exact only as steps shrink): it vanishes as T grows."""
    errors = []
    for T in [50, 200, 1000]:
        s = make_schedule(name, T)
        mean, std = exact_moments(lambda x, n: ddpm(gaussian_eps(s), s, x, n, clip=False), s, T)
        assert mean == pytest.approx(MU, abs=1e-9)
        errors.append(abs(std - SD) / SD)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.015
    s = make_schedule(name, 1000)
    mean, std = exact_moments(lambda x, n: ddim(gaussian_eps(s), s, x, n, steps=None, spacing="uniform", eta=1.0,
                                                    clip=False), s, 1000)
    assert abs(std - SD) / SD == pytest.approx(errors[2], abs=1e-9)  # DDIM eta=1: the same marginal
    _, std_beta = exact_moments(lambda x, n: ddpm(gaussian_eps(s), s, x, n, clip=False, variance="beta"), s, 1000)
    assert abs(std_beta - SD) / SD < 0.015  # the upper-bound variance beta_t also works at T = 1000


def test_ddpm_oracle_monte_carlo():
    """The same claim from real random draws (standard errors: mean s/sqrt(N) = 0.004, std 0.003)."""
    s = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(5000, 1, generator=g, dtype=torch.float64)
    out = ddpm(gaussian_eps(s), s, x_T, lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype),
               clip=False)
    _, exact_std = exact_moments(lambda x, n: ddpm(gaussian_eps(s), s, x, n, clip=False), s, 100)
    assert float(out.mean()) == pytest.approx(MU, abs=0.015)
    assert float(out.std()) == pytest.approx(exact_std, abs=0.012)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++(2M) and DDIM(eta = 0) converge on the Gaussian toy

@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("sd", [0.1, 0.3, 0.6])
def test_dpmpp_converges_with_steps(name, sd):
    s = make_schedule(name, 1000)
    errs = {}
    for steps in [5, 10, 20, 50, 100, 1000]:
        for sampler in (dpmpp, ddim):
            mean, std = exact_moments(lambda x, n: sampler(gaussian_eps(s, sd=sd), s, x, n, steps=steps,
                                                           spacing="uniform", clip=False), s, 0, sd=sd)
            assert mean == pytest.approx(MU, abs=1e-9)
            errs[sampler.__name__, steps] = abs(std - sd) / sd
    dp = [errs["dpmpp", n] for n in [5, 10, 20, 50, 100, 1000]]
    assert all(b < a or b < 1e-3 for a, b in zip(dp, dp[1:])), dp  # error shrinks with steps
    assert dp[-1] < 5e-3
    # second order beats first order once the grid resolves the data scale (from 20 steps for
    # sd >= 0.3; sd = 0.1 on the linear schedule needs ~100), and by a wide margin at 1000
    for n in ([20, 50, 100] if sd >= 0.3 else [100]):
        assert errs["dpmpp", n] < errs["ddim", n]
    assert errs["dpmpp", 1000] < errs["ddim", 1000] / 4
    # the default grid for dpmpp, uniform in log-SNR, is accurate to 1% by 50 steps
    _, std = exact_moments(lambda x, n: dpmpp(gaussian_eps(s, sd=sd), s, x, n, steps=50, spacing="logsnr", clip=False),
                              s, 0, sd=sd)
    assert abs(std - sd) / sd < 0.01


def test_dpmpp_first_step_is_ddim():
    """With one step both samplers return the x0-prediction at t = T-1."""
    s = make_schedule("cosine", 100)
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    e = gaussian_eps(s)
    assert torch.allclose(dpmpp(e, s, x_T, steps=1, spacing="logsnr", clip=False),
                          ddim(e, s, x_T, steps=1, spacing="uniform", clip=False))


def test_dpmpp_first_order_everywhere_is_ddim_on_its_grid():
    """first_order_at every visited timestep turns DPM-Solver++(2M) into its first-order form, which
    is DDIM's update x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps_hat (Song et al. 2021, eq. 12, eta = 0)
    on the same grid, ending at the last x0-prediction; without it the second-order steps differ."""
    s = make_schedule("cosine", 1000)
    seq = timestep_sequence(s, 8, "logsnr-capped", include_zero=False)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e = gaussian_eps(s)
    x = x_T
    for i, t in enumerate(seq):
        a_t = s.alpha_bar[t].double()
        eps = e(x, torch.full((3,), t))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if i + 1 < len(seq):
            a_s = s.alpha_bar[seq[i + 1]].double()
            x = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    first = dpmpp(e, s, x_T, steps=8, spacing="logsnr-capped", clip=False, first_order_at=set(seq))
    assert torch.allclose(first, x0, atol=1e-10)
    second = dpmpp(e, s, x_T, steps=8, spacing="logsnr-capped", clip=False)
    assert not torch.allclose(second, x0, atol=1e-4)
    # one named step changes the result; naming the first step changes nothing (it is first order anyway)
    assert not torch.allclose(dpmpp(e, s, x_T, steps=8, spacing="logsnr-capped", clip=False,
                                    first_order_at={seq[3]}), second, atol=1e-6)
    assert torch.equal(dpmpp(e, s, x_T, steps=8, spacing="logsnr-capped", clip=False, first_order_at={seq[0]}),
                       second)


def test_guidance_switches_are_where_the_noise_level_crosses_the_interval():
    """The visited timesteps whose noise level is inside [lo, hi] while the previous one's was not,
    or the other way round: entering and leaving the band; none without an interval."""
    s = make_schedule("cosine", 1000)
    seq = timestep_sequence(s, 20, "logsnr-capped", include_zero=False)
    sigma = [float(noise_level(s, torch.tensor(t))) for t in seq]
    enter = next(i for i, v in enumerate(sigma) if v <= 5)
    leave = next(i for i, v in enumerate(sigma) if v < 0.3)
    assert guidance_switches(s, seq, (0.3, 5.0)) == {seq[enter], seq[leave]}
    # the same steps eps_fn guides (schedule.guidance_weights), ends included: an interval whose ends are
    # the noise levels of two visited steps guides both, so it switches on at the first, off after the second
    guided = (guidance_weights(s, torch.tensor(seq), 1.0, (sigma[9], sigma[5])) > 0).tolist()
    assert guided == [5 <= i <= 9 for i in range(len(seq))]
    assert guidance_switches(s, seq, (sigma[9], sigma[5])) == {seq[5], seq[10]}
    assert guidance_switches(s, seq, None) == frozenset() == guidance_switches(s, [], (0.3, 5.0))
    assert guidance_switches(s, seq, (0.0, float("inf"))) == frozenset()


def test_run_sampler_and_sdedit_hand_dpmpp_its_first_order_steps():
    """run_sampler (and sdedit through it) hands dpmpp the plan's first-order steps (where a guidance
    interval switches, guidance_switches); the other samplers take none."""
    s = make_schedule("cosine", 1000)
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    e, band = gaussian_eps(s), (0.3, 5.0)
    seq = timestep_sequence(s, 20, "logsnr-capped", include_zero=False)
    switches = guidance_switches(s, seq, band)
    assert switches
    kw = dict(steps=20, spacing="logsnr-capped", eta=0.0, clip=True)
    banded = run_sampler("dpmpp", e, s, x_T, None, first_order_at=switches, **kw)
    assert torch.equal(banded, dpmpp(e, s, x_T, first_order_at=switches, **kw))
    assert not torch.equal(banded, run_sampler("dpmpp", e, s, x_T, None, **kw))
    with pytest.raises(ValueError, match="dpmpp's"):
        run_sampler("ddim", e, s, x_T, None, steps=10, spacing="uniform", eta=0.0, clip=True, corrector=1)
    # sdedit passes them on: the same edit without the first-order steps differs
    images = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    t0, sub, n = sdedit_plan(s, 0.9, 20)
    cut = timestep_sequence(sub, n, "logsnr-capped", include_zero=False)
    kw = dict(steps=n, spacing="logsnr-capped", eta=0.0, clip=True)
    edited = sdedit("dpmpp", e, s, images, x_T, None, t0, first_order_at=guidance_switches(sub, cut, band), **kw)
    assert not torch.equal(edited, sdedit("dpmpp", e, s, images, x_T, None, t0, **kw))


# ---------------------------------------------------------------------------------------------
# inversion

def test_inversion_round_trip_exact_for_an_x0_oracle():
    """An eps_fn that is consistent with one fixed x0 makes every x0-estimate exact both ways."""
    s = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1

    def eps_fn(x, t):
        a = s.alpha_bar[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    for steps in [3, 20, None]:
        z = ddim_invert(eps_fn, s, x0, steps=steps, spacing="uniform")
        assert torch.allclose(ddim(eps_fn, s, z, spacing="uniform", steps=steps, clip=False), x0, atol=1e-9)


def test_inversion_round_trip_gaussian_toy_improves_with_steps():
    """For Gaussian data the probability-flow ODE keeps each point's standard score, so the exact
    inversion is z = m_T + sd_T (x0 - mu) / s; DDIM inversion approaches it, and the round trip
    approaches the identity, as steps grow."""
    s = make_schedule("cosine", 1000)
    e = gaussian_eps(s)
    g = torch.Generator().manual_seed(6)
    x0 = MU + SD * torch.randn(64, 1, generator=g, dtype=torch.float64)
    aT = s.alpha_bar[-1]
    z_exact = aT.sqrt() * MU + (aT * SD ** 2 + 1 - aT).sqrt() * (x0 - MU) / SD
    z_errs, errs = [], []
    for steps in [10, 50, 250]:
        z = ddim_invert(e, s, x0, steps=steps, spacing="uniform")
        z_errs.append(float((z - z_exact).abs().max()))
        errs.append(float((ddim(e, s, z, spacing="uniform", steps=steps, clip=False) - x0).abs().max()))
    assert z_errs[0] > z_errs[1] > z_errs[2] and z_errs[2] < 0.05, z_errs
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02, errs  # first order: ~1/steps


# ---------------------------------------------------------------------------------------------
# noise and dispatch

def test_per_image_noise_does_not_depend_on_the_batch():
    big = PerImageNoise(seed=7, num_images=5)
    parts = [PerImageNoise(seed=7, num_images=2, first_index=0), PerImageNoise(seed=7, num_images=3, first_index=2)]
    like = torch.empty(5, 1, 4, 4)
    for _ in range(3):  # successive draws, as in a sampling loop
        a = big(like)
        b = torch.cat([parts[0](like[:2]), parts[1](like[2:])])
        assert torch.equal(a, b)
    assert not torch.equal(PerImageNoise(8, 1).initial((1, 4, 4)), PerImageNoise(7, 1).initial((1, 4, 4)))


@pytest.mark.parametrize("name,kw", [("ddpm", {}), ("ddpm", {"steps": 10}), ("ddim", {"eta": 0.5, "steps": 10}),
                                     ("dpmpp", {"steps": 10})])
def test_sampled_image_is_independent_of_its_batch(name, kw):
    s = make_schedule("cosine", 40)
    e = gaussian_eps(s)

    def draw(first, n):
        noise = PerImageNoise(11, n, first_index=first)
        return run_sampler(name, e, s, noise.initial((1, 4, 4)), noise, **{"steps": None, "spacing": "uniform",
                                                                         "eta": 0.0, "clip": True, **kw})

    whole = draw(0, 4)
    assert torch.allclose(whole, torch.cat([draw(0, 1), draw(1, 3)]), atol=1e-6)


def test_run_sampler_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown sampler"):
        run_sampler("rk4", lambda x, t: x, make_schedule("cosine", 10), torch.zeros(1, 1), None, steps=5,
                    spacing="uniform", eta=0.0, clip=True)


# ---------------------------------------------------------------------------------------------
# slerp

def test_slerp_endpoints_norm_and_angle():
    g = torch.Generator().manual_seed(9)
    z0, z1 = torch.randn(2, 1, 28, 28, generator=g).chunk(2)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms: slerp stays on their sphere
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
    theta = torch.arccos((z0 * z1).sum() / (z0.norm() * z1.norm()))
    for a in [0.25, 0.5, 0.8]:
        z = slerp(z0, z1, a)
        assert float(z.norm()) == pytest.approx(float(z0.norm()), rel=1e-5)
        angle = torch.arccos((z0 * z).sum() / (z0.norm() * z.norm()))
        assert float(angle) == pytest.approx(a * float(theta), rel=1e-4)
    assert torch.allclose(slerp(z0, 2 * z0, 0.5), 1.5 * z0)  # parallel inputs: linear interpolation
    with pytest.raises(ValueError):
        slerp(z0, z0[..., :5], 0.5)


@pytest.mark.parametrize("eta,spacing", [(0.5, "logsnr"), (1.0, "logsnr"), (2.0, "logsnr"), (2.0, "logsnr-capped"),
                                         (5.0, "logsnr-capped")])
def test_stochastic_dpmpp_samples_the_data_distribution(eta, spacing):
    """SDE-DPM-Solver++(2M) (eta = 1), its interpolation with the ODE solver (eta < 1) and the
    extra-churn form (eta > 1): fed the exact eps of the Gaussian toy, the mean is exact at any step
    count and the std error shrinks with steps."""
    s = make_schedule("cosine", 1000)
    errors = []
    for steps in [10, 20, 50, 200]:
        mean, std = exact_moments(lambda x, n: dpmpp(gaussian_eps(s), s, x, n, steps=steps, eta=eta, spacing=spacing,
                                                     clip=False), s, steps)
        assert mean == pytest.approx(MU, abs=1e-9)
        errors.append(abs(std - SD) / SD)
    if spacing == "logsnr":
        assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # (the capped grid's big first step makes its few-step error not monotone: 0.2% at 10, 3.6% at 20)
    assert errors[-1] == min(errors) and errors[-1] < 0.01, errors


def test_stochastic_dpmpp_needs_noise_and_eta0_is_the_ode_solver():
    s = make_schedule("cosine", 100)
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e = gaussian_eps(s)
    with pytest.raises(ValueError, match="noise_fn"):
        dpmpp(e, s, x_T, spacing="logsnr", steps=5, eta=1.0)
    ode = dpmpp(e, s, x_T, spacing="logsnr", steps=7, clip=False)
    ones = lambda like: torch.ones_like(like)  # noqa: E731
    assert torch.equal(dpmpp(e, s, x_T, ones, steps=7, spacing="logsnr", eta=0.0, clip=False), ode)
    assert not torch.allclose(dpmpp(e, s, x_T, ones, steps=7, spacing="logsnr", eta=1.0, clip=False), ode)


# ---------------------------------------------------------------------------------------------
# dpmpp's corrector (UniPC / SA-Solver style): exact weights, more accurate on the toy, no jumps

@pytest.mark.parametrize("h,h_before,eta", [(0.3, 0.2, 0.0), (0.05, 0.07, 0.5), (1.2, 0.4, 2.0)])
def test_corrector_weights_integrate_polynomials_exactly(h, h_before, eta):
    """The weights reproduce the integral of 1, u and u^2 (the quadratic rule; 1 and u for the linear
    one) against the step's kernel (1 + eta) e^{-(1 + eta)(h - u)} on [0, h], by fine quadrature."""
    u = torch.linspace(0, h, 400001, dtype=torch.float64)
    kernel = (1 + eta) * torch.exp(-(1 + eta) * (h - u))
    points = torch.tensor([h, 0.0, -h_before], dtype=torch.float64)  # new, start, before
    for order, degrees in [(2, (0, 1, 2)), (1, (0, 1))]:
        w = torch.tensor(corrector_weights(h, h_before if order == 2 else None, eta, order), dtype=torch.float64)
        for j in degrees:
            exact = float(torch.trapezoid(kernel * u ** j, u))
            assert float((w * points ** j).sum()) == pytest.approx(exact, rel=1e-8, abs=1e-12)
    # the weights sum to the predictor's weight on D
    assert sum(corrector_weights(h, h_before, eta, 2)) == pytest.approx(-math.expm1(-(1 + eta) * h))


@pytest.mark.parametrize("sd", [0.3, 0.6])
def test_corrector_makes_the_ode_solver_more_accurate(sd):
    """Gaussian toy, eta = 0: against the exact ODE solution carried to the grid's last timestep and
    denoised there (what the solver returns), both correctors beat the plain 2M solver at 40 and 80
    steps on the log-SNR grid, by 2x or more; the mean stays exact."""
    s = make_schedule("cosine", 1000)
    for steps in (40, 80):
        t_min = timestep_sequence(s, steps, "logsnr", include_zero=False)[-1]
        a = float(s.alpha_bar[t_min])
        exact = sd * sd * a ** 0.5 / math.sqrt(a * sd * sd + 1 - a)  # std of E[x0 | x_t_min] on the exact path
        err = {}
        for c in (0, 1, 2):
            mean, std = exact_moments(lambda x, n: dpmpp(gaussian_eps(s, sd=sd), s, x, n, steps=steps,
                                                         spacing="logsnr", clip=False, corrector=c), s, 0, sd=sd)
            assert mean == pytest.approx(MU, abs=1e-9)
            err[c] = abs(std - exact) / sd
        assert err[1] < err[0] / 2 and err[2] < err[0] / 2, (steps, err)


@pytest.mark.parametrize("eta", [0.5, 2.0])
def test_corrected_stochastic_dpmpp_samples_the_data_distribution(eta):
    """With fresh noise the corrector redoes each step with the same noise: the mean stays exact and
    the std converges to the data's."""
    s = make_schedule("cosine", 1000)
    for c in (1, 2):
        mean, std = exact_moments(lambda x, n: dpmpp(gaussian_eps(s), s, x, n, steps=200, spacing="logsnr", eta=eta,
                                                     clip=False, corrector=c), s, 200)
        assert mean == pytest.approx(MU, abs=1e-9)
        assert abs(std - SD) / SD < 0.01


def test_corrector_does_not_reach_across_a_jump():
    """No correction into a timestep named in first_order_at: naming every timestep leaves the
    first-order solver (DDIM on the grid) exactly as it was; a corrector changes a normal run; and
    only dpmpp has one."""
    s = make_schedule("cosine", 1000)
    seq = timestep_sequence(s, 8, "logsnr-capped", include_zero=False)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e = gaussian_eps(s)
    kw = dict(steps=8, spacing="logsnr-capped", clip=False)
    first = dpmpp(e, s, x_T, first_order_at=set(seq), **kw)
    for c in (1, 2):
        assert torch.equal(dpmpp(e, s, x_T, first_order_at=set(seq), corrector=c, **kw), first)
        assert not torch.allclose(dpmpp(e, s, x_T, corrector=c, **kw), dpmpp(e, s, x_T, **kw), atol=1e-6)
    with pytest.raises(ValueError, match="corrector must be"):
        dpmpp(e, s, x_T, corrector=3, **kw)
    with pytest.raises(ValueError, match="dpmpp's"):
        run_sampler("ddim", e, s, x_T, None, steps=8, spacing="uniform", eta=0.0, clip=False, corrector=1)


# ---------------------------------------------------------------------------------------------
# Euler and Heun on the flow ODE dz/ds = eps - x_0

@pytest.mark.parametrize("name", ["cosine", "flow"])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_flow_euler_is_ddim_at_eta_zero(name, steps):
    """Euler in the straight path's coordinates with the model's (x_0, eps) lands on
    (1 - s') x_0 + s' eps: the DDIM step (eq. 12, eta 0), to float64 rounding."""
    s = make_schedule(name, 1000)
    x_T = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for spacing in ("uniform", "flow"):
        a = flow_euler(gaussian_eps(s), s, x_T, steps=steps, spacing=spacing, clip=False)
        b = ddim(gaussian_eps(s), s, x_T, steps=steps, eta=0.0, spacing=spacing, clip=False)
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_flow_spacing_is_uniform_in_path_time():
    flow, cos = make_schedule("flow", 1000), make_schedule("cosine", 1000)
    # on the flow schedule s = (t + 1) / T: uniform in s is uniform in t, up to rounding
    assert max(abs(a - b) for a, b in zip(timestep_sequence(flow, 20, "flow"), timestep_sequence(flow, 20, "uniform"))) <= 1
    seq = timestep_sequence(cos, 11, "flow")
    st = flow_time(cos, torch.tensor(seq))
    gaps = st[:-1] - st[1:]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=0.05)


@pytest.mark.parametrize("name", ["cosine", "flow"])
def test_flow_heun_reaches_the_gaussian_toy_and_beats_euler(name):
    """With the exact eps of x_0 ~ N(mu, s^2), the ODE maps the noise onto N(mu, s^2); Heun's
    second-order steps get there with far less error than Euler's at the same grid."""
    s = make_schedule(name, 1000)
    errors = {}
    for sampler, steps in [("euler", 10), ("heun", 10), ("heun", 40)]:
        fn = flow_euler if sampler == "euler" else flow_heun
        mean, std = exact_moments(lambda x, n: fn(gaussian_eps(s), s, x, steps=steps, spacing="flow", clip=False), s)
        errors[sampler, steps] = abs(mean - MU) + abs(std - SD)
    assert errors["heun", 10] < errors["euler", 10] / 3
    assert errors["heun", 40] < 2e-3


def test_heun_visits_each_grid_point_after_the_first_twice():
    s = make_schedule("flow", 100)
    seq = timestep_sequence(s, 5, "flow")
    visited = visited_timesteps("heun", s, 5, "flow")
    assert len(visited) == 2 * 5 - 1 and visited[0] == seq[0] and visited[1::2] == seq[1:] == visited[2::2]
    seen = []
    run_sampler("heun", gaussian_eps(s), s, torch.zeros(1, 2, dtype=torch.float64), None, steps=5, spacing="flow",
                eta=0.0, clip=False,
                callback=lambda i, t, x, x0: seen.append(t))
    assert seen == visited
    with pytest.raises(ValueError, match="deterministic"):
        run_sampler("euler", gaussian_eps(s), s, torch.zeros(1, 2), None, steps=5, spacing="flow", eta=0.5, clip=True)
