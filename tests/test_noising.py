"""The noising rules against their closed forms (noising.py)."""
import pytest
import torch
from scipy import stats

from mnist_diffusion import noising
from mnist_diffusion.schedule import make_schedule, q_sample


def _x0(n):
    # three pixel values (background, mid-grey, ink), each repeated over n independent draws
    return torch.tensor([-1.0, 0.2, 1.0], dtype=torch.float64).view(1, 3).expand(n, 3).clone()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_stepwise_matches_closed_form_in_distribution(name):
    """Iterating q(x_t|x_{t-1}) t+1 times gives the law of the one-jump q(x_t|x_0)."""
    T, n, t = 100, 8000, 60
    s = make_schedule(name, T)
    x0 = _x0(n)
    it = noising.stepwise(s, x0, [t], torch.Generator().manual_seed(0))[t]
    g = torch.Generator().manual_seed(1)
    jump = noising.closed_form(s, x0, torch.full((n,), t), torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    for j, v in enumerate([-1.0, 0.2, 1.0]):
        a = it[:, j].numpy()
        assert a.mean() == pytest.approx(v * s.sqrt_alpha_bar[t].item(), abs=0.04)
        assert a.std() == pytest.approx(s.sqrt_one_minus_alpha_bar[t].item(), rel=0.04)
        # two-sample Kolmogorov-Smirnov: the iterated and the closed-form samples share one law
        assert stats.ks_2samp(a, jump[:, j].numpy()).pvalue > 1e-3


def test_fixed_beta_closed_form_is_a_power():
    beta, T = 0.02, 300
    s = noising.constant_schedule(beta, T)
    t = torch.arange(T, dtype=torch.float64)
    assert torch.allclose(s.alpha_bar, (1 - beta) ** (t + 1), rtol=1e-12)
    n, k = 8000, 30
    x = noising.fixed_beta(_x0(n), beta, [k], torch.Generator().manual_seed(3), timesteps=T)[k]
    ab = (1 - beta) ** (k + 1)
    assert x[:, 2].mean().item() == pytest.approx(ab ** 0.5, abs=0.03)
    assert x[:, 2].std().item() == pytest.approx((1 - ab) ** 0.5, rel=0.04)
    assert stats.kstest(((x[:, 2] - ab ** 0.5) / (1 - ab) ** 0.5).numpy(), "norm").pvalue > 1e-3


def test_closed_form_is_q_sample_and_fixed_mix_with_its_coefficients():
    s = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand((5, 1, 28, 28), generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 50, 90, 99])
    cf = noising.closed_form(s, x0, t, eps)
    assert torch.equal(cf, q_sample(s, x0, t, eps))
    for i, ti in enumerate(t.tolist()):
        mix = noising.fixed_mix(x0[i], eps[i], s.sqrt_alpha_bar[ti].item(), s.sqrt_one_minus_alpha_bar[ti].item())
        assert torch.allclose(mix, cf[i], atol=1e-6)


def test_straight_blend_is_not_variance_preserving():
    c, sd = noising.signal_and_noise("fixed_mix", [0, 500, 999])
    total = c ** 2 + sd ** 2  # variance of x_t for a unit-variance x_0
    assert total[0] == 1 and total[2] == 1 and total[1] < 0.6
    for rule in ("fixed_beta", "stepwise", "closed_form"):
        c, sd = noising.signal_and_noise(rule, range(0, 1000, 37))
        assert torch.allclose(c ** 2 + sd ** 2, torch.ones_like(c), atol=1e-12)


def test_noise_all_is_seeded_and_shaped():
    x0 = torch.zeros((2, 1, 28, 28))
    ts = [0, 100, 999]
    a = noising.noise_all(x0, ts, torch.Generator().manual_seed(5))
    b = noising.noise_all(x0, ts, torch.Generator().manual_seed(5))
    assert set(a) == set(noising.RULES)
    for k in a:
        assert a[k].shape == (3, 2, 1, 28, 28)
        assert torch.equal(a[k], b[k])
    with pytest.raises(ValueError):
        noising.noise_all(x0, [1000], torch.Generator().manual_seed(5))
    with pytest.raises(ValueError):
        noising.constant_schedule(1.5, 10)
