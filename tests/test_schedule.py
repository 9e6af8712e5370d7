import math

import pytest
import torch

from mnist_diffusion.schedule import (Schedule, cosine_betas, diffusion_loss, eps_from_flow, eps_from_output,
                                      flow_target, flow_time, guidance_mix, guidance_weights, linear_betas,
                                      logit_normal_cdf, logit_normal_timesteps, make_schedule, min_snr_weight,
                                      noise_level, predict_eps_from_x0, predict_x0_from_eps, q_posterior, q_sample,
                                      q_step, v_target)


@pytest.mark.parametrize("name", ["linear", "cosine", "flow"])
@pytest.mark.parametrize("T", [10, 300, 1000])
def test_alpha_bar_is_cumulative_product(name, T):
    s = make_schedule(name, T)
    assert s.betas.dtype == torch.float64 and s.timesteps == T
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0), rtol=0, atol=1e-15)
    assert torch.allclose(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    assert s.alpha_bar_prev[0] == 1.0
    assert bool((s.betas > 0).all() and (s.betas < 1).all())
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())  # noise only grows
    assert s.alpha_bar[-1] < 0.01  # x_T is (almost) pure noise


def test_linear_endpoints_for_T_1000():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    sched = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 10, 500, 900]:  # alpha_bar_t here is alpha_bar(t+1) of the paper (t is 0-based)
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine_betas(T).max().item() <= 0.999


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of two Gaussians in x_{t-1}."""
    s = make_schedule("linear", 100)
    x0 = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    xt = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    for t in [1, 10, 50, 99]:
        tt = torch.full((5,), t)
        a, b, ab_prev = s.alphas[t], s.betas[t], s.alpha_bar_prev[t]
        # likelihood in x_{t-1}: N(x_t; sqrt(a) x_{t-1}, b) -> precision a/b, mean x_t/sqrt(a)
        prec = a / b + 1 / (1 - ab_prev)
        mean = (a.sqrt() / b * xt + ab_prev.sqrt() / (1 - ab_prev) * x0) / prec
        m, v = q_posterior(s, x0, xt, tt)
        assert torch.allclose(m, mean, atol=1e-12)
        assert torch.allclose(v, (1 / prec).expand_as(v), atol=1e-15)
        assert s.posterior_variance[t] == pytest.approx(b * (1 - ab_prev) / (1 - s.alpha_bar[t]))


def test_snr_and_log_variance():
    s = make_schedule("cosine", 200)
    assert torch.allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    assert s.posterior_variance[0] == 0


def test_q_sample_closed_form_and_inverse():
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(8, 1, 28, 28, generator=g)
    t = torch.tensor([0, 1, 5, 100, 400, 700, 998, 999])
    xt = q_sample(s, x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        expect = s.alpha_bar[ti].sqrt() * x0[i] + (1 - s.alpha_bar[ti]).sqrt() * eps[i]
        assert torch.allclose(xt[i], expect.float(), atol=1e-6)
    # inversion in float64 (near t = T the float32 round trip amplifies rounding by 1/sqrt(alpha_bar))
    x0d, epsd = x0.double(), eps.double()
    xtd = q_sample(s, x0d, t, epsd)
    assert torch.allclose(predict_x0_from_eps(s, xtd, t, epsd), x0d, atol=1e-9)
    assert torch.allclose(predict_eps_from_x0(s, xtd, t, x0d), epsd, atol=1e-9)


def test_q_sample_moments():
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g))
    assert xt.mean().item() == pytest.approx(0.7 * s.sqrt_alpha_bar[300].item(), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - s.alpha_bar[300].item(), abs=0.02)


def test_iterated_forward_steps_match_closed_form_in_distribution():
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(2)
    x = torch.full((20000, 1), 0.5)
    for t in range(60):
        x = q_step(s, x, torch.full((20000,), t), torch.randn(x.shape, generator=g))
    assert x.mean().item() == pytest.approx(0.5 * s.sqrt_alpha_bar[59].item(), abs=0.02)
    assert x.var().item() == pytest.approx(1 - s.alpha_bar[59].item(), abs=0.02)


def test_bad_betas_rejected():
    with pytest.raises(ValueError):
        Schedule.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError):
        make_schedule("sigmoid", 10)


def test_v_target_and_eps_from_v_invert_each_other():
    from mnist_diffusion.schedule import eps_from_v, v_target
    s = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 300, 700, 998, 999])
    xt = q_sample(s, x0, t, eps)
    v = v_target(s, x0, t, eps)
    assert torch.allclose(eps_from_v(s, xt, t, v), eps, atol=1e-9)
    a = s.alpha_bar[t].view(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-12)
    # x0 = sqrt(a) x_t - sqrt(1 - a) v: no division, so even at t = T - 1 a float32 v gives x0 to 1e-6
    x0_from_v = a.sqrt() * xt - (1 - a).sqrt() * v.float().double()
    assert torch.allclose(x0_from_v, x0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the training loss and guidance, beside the process they are defined on

def test_loss_is_zero_for_an_oracle():
    s = make_schedule("cosine", 50)
    x0 = torch.randn(4, 1, 28, 28)
    noise = torch.randn(4, 1, 28, 28)
    t = torch.tensor([0, 10, 20, 49])
    assert diffusion_loss(lambda x, tt: noise, s, x0, t, noise).item() == 0.0


def test_min_snr_weight_is_the_closed_form():
    s = make_schedule("cosine", 1000)
    t = torch.arange(1000)
    w = min_snr_weight(s, t, 5.0).double()
    snr = s.alpha_bar / (1 - s.alpha_bar)
    torch.testing.assert_close(w, torch.where(snr > 5, 5 / snr, torch.ones_like(snr)), rtol=1e-6, atol=0)
    # noisy steps keep weight 1, the nearly clean ones are scaled down, monotonically in t
    assert w[-1] == 1 and w[0] < 1e-3 and bool((w[1:] >= w[:-1]).all())
    crossing = int((snr > 5).sum())  # SNR_t = 5 at alpha_bar = 5/6
    assert s.alpha_bar[crossing - 1] > 5 / 6 >= s.alpha_bar[crossing]


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.8, 0.6), (-1.5, 2.0)])
def test_logit_normal_timesteps_follow_the_closed_form_cdf(mean, std):
    T, n = 1000, 100_000
    t = logit_normal_timesteps(T, n, mean, std, torch.Generator().manual_seed(3))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= T - 1
    k = torch.arange(T)
    empirical = torch.bincount(t, minlength=T).cumsum(0).double() / n
    # Kolmogorov-Smirnov: sup |F_n - F| > 0.0065 has probability < 2 exp(-2 n 0.0065^2) = 4e-4 (DKW)
    assert float((empirical - logit_normal_cdf(k, T, mean, std)).abs().max()) < 0.0065
    # the median timestep is where logit(t/T) = mean
    assert abs(float(t.double().median()) / T - 1 / (1 + math.exp(-mean))) < 0.01
    assert float(logit_normal_cdf(torch.tensor([T - 1]), T, mean, std)) == 1.0


def test_logit_normal_timesteps_are_reproducible_from_the_generator():
    a = logit_normal_timesteps(50, 64, 0.0, 1.0, torch.Generator().manual_seed(7))
    b = logit_normal_timesteps(50, 64, 0.0, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, logit_normal_timesteps(50, 64, 0.0, 1.0,
                                                                        torch.Generator().manual_seed(8)))


def test_v_prediction_loss_is_zero_for_a_v_oracle_and_min_snr_matches_in_x0():
    s = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(5, 1, 28, 28, generator=g) * 2 - 1
    noise = torch.randn(5, 1, 28, 28, generator=g)
    t = torch.tensor([0, 5, 20, 35, 49])
    v = v_target(s, x0, t, noise)
    assert diffusion_loss(lambda x, tt: v, s, x0, t, noise, prediction="v").item() == 0.0
    assert diffusion_loss(lambda x, tt: noise, s, x0, t, noise, prediction="v").item() > 0
    # Min-SNR makes both parameterisations the same min(SNR, gamma)-weighted x0 error: an x0 error d
    # is an eps error d sqrt(SNR) and a v error d sqrt(SNR + 1)
    snr = s.snr[t]
    w_eps, w_v = min_snr_weight(s, t, 5.0, "eps").double(), min_snr_weight(s, t, 5.0, "v").double()
    torch.testing.assert_close(w_eps * snr, w_v * (snr + 1), rtol=1e-6, atol=0)


def test_min_snr_loss_weights_each_image():
    s = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 28, 28, generator=g)
    t = torch.tensor([0, 3, 10, 25, 40, 49])
    off = torch.randn(6, 1, 28, 28, generator=g)

    def model(x, tt):  # a wrong prediction with a known error per image
        return noise + off

    per_image = off.pow(2).flatten(1).mean(1)
    gamma = 2.0
    snr = (s.alpha_bar / (1 - s.alpha_bar))[t]
    expected = (torch.minimum(snr, torch.tensor(gamma, dtype=snr.dtype)) / snr).float() * per_image
    torch.testing.assert_close(diffusion_loss(model, s, x0, t, noise, min_snr_gamma=gamma), expected.mean())
    # gamma at or above every SNR is L_simple; gamma = 0 switches the weighting off
    big = float(snr.max()) * 2
    torch.testing.assert_close(diffusion_loss(model, s, x0, t, noise, min_snr_gamma=big), per_image.mean())
    torch.testing.assert_close(diffusion_loss(model, s, x0, t, noise, min_snr_gamma=0.0),
                               diffusion_loss(model, s, x0, t, noise))


def test_guidance_mix_is_the_closed_form():
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 4.0])
    assert torch.equal(guidance_mix(c, u, 0.0), c)  # w = 0: the conditional prediction
    assert torch.allclose(guidance_mix(c, u, 2.0), u + 3.0 * (c - u))
    assert torch.equal(guidance_mix(c, c, 7.0), c)  # no difference to amplify


def test_eps_from_output_for_each_parameterisation():
    s = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1, torch.randn(3, 1, 28, 28, generator=g)
    t = torch.tensor([0, 20, 49])
    x_t = q_sample(s, x0, t, eps)
    assert torch.equal(eps_from_output(s, "eps", x_t, t, eps), eps)
    torch.testing.assert_close(eps_from_output(s, "v", x_t, t, v_target(s, x0, t, eps)), eps, rtol=1e-4, atol=1e-4)


def test_noise_level_and_the_guidance_interval():
    """sigma_t = sqrt((1 - a_t) / a_t): x_t / sqrt(a_t) = x_0 + sigma_t eps; the guidance interval
    gives w inside [lo, hi] of it (ends included) and 0 outside; None guides everywhere."""
    s = make_schedule("cosine", 100)
    t = torch.arange(100)
    sigma = noise_level(s, t)
    a = s.alpha_bar
    torch.testing.assert_close(sigma ** 2 * a, 1 - a)  # the definition, squared
    assert bool((sigma[1:] > sigma[:-1]).all())  # more noise with t
    lo, hi = float(sigma[20]), float(sigma[60])
    w = guidance_weights(s, t, 0.5, (lo, hi))
    assert w.dtype == torch.float32 and w.shape == (100,)
    assert (w[20:61] == 0.5).all() and (w[:20] == 0).all() and (w[61:] == 0).all()
    assert (guidance_weights(s, t, 0.5) == 0.5).all()


# ---------------------------------------------------------------------------------------------
# flow matching: the straight path z_s = (1 - s) x_0 + s eps and its velocity u = eps - x_0

@pytest.mark.parametrize("T", [50, 1000])
def test_flow_schedule_is_the_straight_path_at_unit_scale(T):
    s = make_schedule("flow", T)
    st = (torch.arange(T, dtype=torch.float64) + 1) / T
    want = (1 - st) ** 2 / ((1 - st) ** 2 + st ** 2)
    assert torch.allclose(s.alpha_bar[:-1], want[:-1], rtol=1e-12, atol=0)  # the last beta is clipped (s = 1)
    assert 0 < s.alpha_bar[-1] < 1e-6
    # the path's time of each x_t, read back from the schedule: s = (t + 1) / T
    t = torch.arange(T - 1)
    assert torch.allclose(flow_time(s, t), st[:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["cosine", "linear", "flow"])
def test_eps_from_flow_inverts_the_velocity_on_any_schedule(name):
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=g)
    x_t = q_sample(s, x0, t, eps)
    u = flow_target(x0, eps)
    assert torch.equal(u, eps - x0)
    assert torch.allclose(eps_from_flow(s, x_t, t, u), eps, atol=1e-9)
    assert torch.allclose(eps_from_output(s, "flow", x_t, t, u), eps, atol=1e-9)
    # x_t is the path's point z_s at scale a + b: z_s = (1 - s) x_0 + s eps
    a, b = s.sqrt_alpha_bar[t].view(-1, 1, 1, 1), s.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    st = flow_time(s, t).view(-1, 1, 1, 1)
    assert torch.allclose(x_t / (a + b), (1 - st) * x0 + st * eps, atol=1e-12)


def _gaussian_posterior(s, t, x_t, mu, sd):
    """E[x_0 | x_t], E[eps | x_t] and Var(eps - x_0 | x_t) for x_0 ~ N(mu, sd^2) (closed form)."""
    a, b = float(s.sqrt_alpha_bar[t]), float(s.sqrt_one_minus_alpha_bar[t])
    var = a * a * sd * sd + b * b
    e_x0 = mu + a * sd * sd * (x_t - a * mu) / var
    e_eps = b * (x_t - a * mu) / var
    return e_x0, e_eps, sd * sd * (a + b) ** 2 / var


@pytest.mark.parametrize("t", [50, 500, 950])
def test_flow_loss_on_the_gaussian_toy_is_minimised_by_the_posterior_velocity(t):
    """The flow-matching loss's minimiser is E[eps - x_0 | x_t]; its eps (eps_from_flow) is the exact
    posterior eps, and the loss there is Var(eps - x_0 | x_t), all in closed form."""
    mu, sd, n = 0.5, 0.3, 200_000
    s = make_schedule("flow", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = mu + sd * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    tt = torch.full((n,), t)

    def posterior_velocity(x, tb):
        e_x0, e_eps, _ = _gaussian_posterior(s, t, x, mu, sd)
        return e_eps - e_x0

    x_t = q_sample(s, x0, tt, noise)
    e_x0, e_eps, var_u = _gaussian_posterior(s, t, x_t, mu, sd)
    assert torch.allclose(eps_from_flow(s, x_t, tt, posterior_velocity(x_t, tt)), e_eps, atol=1e-12)
    loss = float(diffusion_loss(posterior_velocity, s, x0, tt, noise, prediction="flow"))
    assert loss == pytest.approx(var_u, rel=0.02)
    worse = float(diffusion_loss(lambda x, tb: posterior_velocity(x, tb) + 0.05, s, x0, tt, noise, prediction="flow"))
    assert worse == pytest.approx(var_u + 0.05 ** 2, rel=0.02)


def test_min_snr_weight_for_flow_is_the_same_x0_weighting():
    """min(SNR, gamma) ||x_0 error||^2 whatever the network predicts: an error e in u is an error
    s_t e in x_0 (x_0 = x_t / (a + b) - s_t u)."""
    s = make_schedule("flow", 1000)
    t = torch.tensor([10, 300, 700, 990])
    st = flow_time(s, t)
    w = min_snr_weight(s, t, 5.0, "flow").double()
    assert torch.allclose(w, s.snr[t].clamp(max=5.0) * st ** 2, rtol=1e-6)
