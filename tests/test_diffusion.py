"""The Diffusion object: classifier-free guidance, the label rules, v-prediction through eps,
inversion and interpolation, and the six-line API of the README.

The networks are tiny U-Nets with random (seeded) weights: these tests check the wiring and the
closed forms of guidance, not image quality, so no training is needed.
"""
from __future__ import annotations

import pytest
import torch

from mnist_diffusion.diffusion import Diffusion
from mnist_diffusion.samplers import PerImageNoise, ddim, ddim_invert, run_sampler, slerp
from mnist_diffusion.schedule import make_schedule

from conftest import C, random_unet, wrap

pytestmark = pytest.mark.usefixtures("one_thread")


def _xt(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 20, (n,), generator=g)


def test_guidance_closed_form(cond):
    """eps = eps(x, null) + (1 + w) (eps(x, y) - eps(x, null)): w = 0 is the conditional model."""
    x, t = _xt()
    y = torch.tensor([0, 3, 7, 9])
    c = cond.model(x, t, y)
    u = cond.model(x, t, torch.full_like(y, C))
    assert not torch.allclose(c, u)  # the label matters, so the checks below mean something
    assert torch.allclose(cond.eps_fn(y, 0.0)(x, t), c, atol=1e-6)
    for w in [0.5, 3.0]:
        assert torch.allclose(cond.eps_fn(y, w)(x, t), u + (1 + w) * (c - u), atol=1e-5)


def test_guidance_interval_guides_only_inside_it(cond):
    """Kynkaanniemi et al. 2024: inside [lo, hi] of the noise level sigma_t = sqrt((1 - a_t) / a_t)
    the guided eps, outside it the conditional one, image by image; outside, one evaluation."""
    x, _ = _xt()
    y = torch.tensor([0, 3, 7, 9])
    sigma = ((1 - cond.schedule.alpha_bar) / cond.schedule.alpha_bar).sqrt()
    lo, hi = float(sigma[5]), float(sigma[12])  # timesteps 5..12 inside (sigma grows with t)
    t = torch.tensor([2, 5, 12, 17])
    w = 2.0
    got = cond.eps_fn(y, w, (lo, hi))(x, t)
    plain, guided = cond.eps_fn(y, 0.0)(x, t), cond.eps_fn(y, w)(x, t)
    assert not torch.allclose(plain, guided, atol=1e-4)  # guidance matters, so the checks below mean something
    for i, inside in enumerate([False, True, True, False]):
        torch.testing.assert_close(got[i], (guided if inside else plain)[i], rtol=0, atol=1e-6)
    batches = []
    hook = cond.model.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    try:
        cond.eps_fn(y, w, (lo, hi))(x, torch.full((4,), 17))
        cond.eps_fn(y, w, (lo, hi))(x, torch.full((4,), 8))
    finally:
        hook.remove()
    assert batches == [4, 8]  # outside: the conditional batch only; inside: conditional and null together


def test_no_labels_is_the_unconditional_path(cond, uncond):
    x, t = _xt()
    assert cond.null_label == C and uncond.null_label is None
    assert torch.allclose(cond.eps_fn()(x, t), cond.model(x, t, torch.full((4,), C)))
    assert torch.allclose(uncond.eps_fn()(x, t), uncond.model(x, t))


def test_sample_w0_equals_conditional_and_none_equals_null(cond):
    """sample() end to end against the same sampler fed the network directly."""
    y = torch.tensor([1, 2, 3])

    def direct(labels):
        noise = PerImageNoise(5, 3)
        return run_sampler("ddim", lambda x, t: cond.model(x, t, labels), cond.schedule, noise.initial((1, 28, 28)),
                           noise, steps=5, spacing="uniform", eta=0.5, clip=True)

    kw = dict(seed=5, sampler="ddim", steps=5, eta=0.5)
    assert torch.allclose(cond.sample_tensor(3, label=y, guidance=0.0, **kw), direct(y), atol=1e-5)
    assert torch.allclose(cond.sample_tensor(3, **kw), direct(torch.full((3,), C)), atol=1e-5)
    assert not torch.allclose(cond.sample_tensor(3, label=y, guidance=2.0, **kw), direct(y), atol=1e-3)


def test_label_requests(cond, uncond):
    assert cond.labels(None, 4) is None
    assert cond.labels(7, 3).tolist() == [7, 7, 7]
    assert cond.labels("all", 20).tolist() == [c for c in range(10) for _ in range(2)]
    assert cond.labels([1, 2], 2).tolist() == [1, 2]
    for label, n, words in [(10, 2, "outside the model's classes 0..9"), ([-1, 0], 2, "outside"),
                            ([1, 2], 3, "one label per image"), ("all", 15, "not a multiple of 10"),
                            ("seven", 2, "a class number, 'all'")]:
        with pytest.raises(ValueError, match=words):
            cond.labels(label, n)
    with pytest.raises(ValueError, match="unconditional model"):
        uncond.labels(1, 2)
    with pytest.raises(ValueError, match="guidance needs labels"):
        cond.sample(2, guidance=1.0, sampler="ddim", steps=2)
    with pytest.raises(ValueError, match=r"guidance -1.0 is outside \[0, 100\]"):
        cond.sample(2, label=1, guidance=-1.0, sampler="ddim", steps=2)
    assert cond.sample(label="all", sampler="ddim", steps=1).shape == (100, 28, 28)  # 10 of each class


class _VOracle(torch.nn.Module):
    """Outputs the true v for a known x0: v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)."""

    def __init__(self, schedule, x0):
        super().__init__()
        self.s, self.x0 = schedule, x0

    def forward(self, x, t):
        a = self.s.alpha_bar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (a.sqrt() * x - self.x0) / (1 - a).sqrt()


def test_a_v_model_samples_through_eps_and_recovers_x0():
    from mnist_diffusion.schedule import q_sample
    s = make_schedule("cosine", 200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x_T = q_sample(s, x0, torch.full((3,), 199), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    diff = wrap(_VOracle(s, x0), num_classes=None, T=200, prediction="v")
    assert diff.prediction == "v" and not hasattr(diff.model, "prediction")  # held by the object, not patched on
    for steps in (1, 7, 50):
        out = ddim(diff.eps_fn(), s, x_T, spacing="uniform", steps=steps, clip=False)
        assert torch.allclose(out, x0, atol=1e-5, rtol=0)


class GaussianDenoiser(torch.nn.Module):
    """A 'network' with the exact eps of data ~ N(0.5, 0.3^2) per pixel (see test_samplers.py)."""

    def __init__(self, schedule, mu=0.5, sd=0.3):
        super().__init__()
        self.ab, self.mu, self.sd = schedule.alpha_bar, mu, sd

    def forward(self, x, t, y=None):
        a = self.ab[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.sd ** 2 + 1 - a)


def test_invert_and_decode_are_ddim_run_both_ways(uncond):
    x0 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    eps_fn, sched = uncond.eps_fn(), uncond.schedule
    z = uncond.invert(x0, steps=4)
    assert torch.allclose(z, ddim_invert(eps_fn, sched, x0, steps=4, spacing="uniform"), atol=1e-6)
    assert torch.allclose(uncond.decode(z, steps=4), ddim(eps_fn, sched, z, steps=4, spacing="uniform", clip=True),
                          atol=1e-6)
    assert torch.allclose(uncond.decode(z, steps=4, clip=False),
                          ddim(eps_fn, sched, z, steps=4, spacing="uniform", clip=False), rtol=1e-4, atol=1e-4)


def test_invert_decode_round_trip_with_an_exact_denoiser():
    diff = wrap(GaussianDenoiser(make_schedule("linear", 200)), num_classes=None, T=200, schedule="linear")
    x0 = (0.5 + 0.3 * torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))).double()
    errs = []
    for steps in [10, 100]:
        z = diff.invert(x0, steps=steps)
        errs.append(float((diff.decode(z, steps=steps, clip=False) - x0).abs().max()))
    assert errs[1] < errs[0] / 4 and errs[1] < 0.1, errs  # first order: error ~ 1/steps


def test_interpolate_endpoints_and_determinism(uncond):
    g = torch.Generator().manual_seed(6)
    z0, z1 = torch.randn(2, 1, 1, 28, 28, generator=g)
    frames = uncond.interpolate(z0, z1, 5, steps=4)
    assert frames.shape == (5, 1, 28, 28)
    ends = uncond.decode(torch.cat([z0, z1]), steps=4)
    assert torch.allclose(frames[[0, -1]], ends, rtol=1e-4, atol=1e-4)  # batch of 5 vs 2: float rounding
    mid = uncond.decode(slerp(z0, z1, 0.5), steps=4)
    assert torch.allclose(frames[2:3], mid, rtol=1e-4, atol=1e-4)
    assert torch.equal(frames, uncond.interpolate(z0, z1, 5, steps=4))
    with pytest.raises(ValueError, match="2 frames"):
        uncond.interpolate(z0, z1, 1)
    # between seeds: the noises sample() starts image 0 of each seed from
    assert torch.equal(uncond.interpolate_between([3, 4], 2, steps=4),
                       uncond.interpolate(uncond.noise(3), uncond.noise(4), 2, steps=4))


def test_loss_is_the_schedules_loss_with_the_networks_parameterisation(cond):
    from mnist_diffusion.schedule import diffusion_loss
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1, torch.randn(3, 1, 28, 28, generator=g)
    t, y = torch.tensor([0, 5, 19]), torch.tensor([1, 2, C])
    assert torch.equal(cond.loss(x0, t, noise, y), diffusion_loss(cond.model, cond.schedule, x0, t, noise, y))
    assert torch.equal(cond.loss(x0, t, noise, y, min_snr_gamma=5.0),
                       diffusion_loss(cond.model, cond.schedule, x0, t, noise, y, 5.0))


def test_autoguidance_mixes_the_two_models_eps():
    """Autoguidance: eps_weak + (1 + w) (eps - eps_weak), no labels needed; a model guided by
    itself samples exactly as unguided; mismatched guides are one-line errors."""
    strong, weak = wrap(random_unet(None, seed=1), None), wrap(random_unet(None, seed=2), None)
    guided = strong.autoguided(weak)
    assert strong.guide is None and guided.guide is not None  # the original is untouched
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 28, 28, generator=g), torch.tensor([2, 9, 17])
    want = weak.eps_fn()(x, t) + 3.0 * (strong.eps_fn()(x, t) - weak.eps_fn()(x, t))
    torch.testing.assert_close(guided.eps_fn(None, 2.0)(x, t), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided.eps_fn(None, 0.0)(x, t), strong.eps_fn()(x, t), rtol=0, atol=0)
    sigma = ((1 - strong.schedule.alpha_bar) / strong.schedule.alpha_bar).sqrt()
    banded = guided.eps_fn(None, 2.0, (float(sigma[8]), float(sigma[12])))(x, t)  # only t = 9 is inside
    torch.testing.assert_close(banded[1], want[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(banded[[0, 2]], strong.eps_fn()(x, t)[[0, 2]], rtol=0, atol=1e-6)
    same = strong.autoguided(strong)
    assert (same.sample(4, guidance=2.0, sampler="ddim", steps=5, seed=3)
            == strong.sample(4, sampler="ddim", steps=5, seed=3)).all()
    assert guided.fingerprint() not in (strong.fingerprint(), weak.fingerprint())
    with pytest.raises(ValueError, match="guidance needs labels"):
        strong.sample(2, guidance=1.0)
    with pytest.raises(ValueError, match="schedule"):
        strong.autoguided(wrap(random_unet(None), None, T=30))
    with pytest.raises(ValueError, match="same conditioning"):
        strong.autoguided(wrap(random_unet(), C))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(num_images=-1), ValueError, "num_images must be a positive integer"),
    (dict(num_images=2.5), TypeError, "num_images must be a positive integer"),
    (dict(num_images=2, steps=2.5), ValueError, "steps must be a positive integer"),
    (dict(num_images=2, guidance="0.5", label=1), ValueError, "guidance must be a number"),
    (dict(num_images=2, batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(num_images=2, label=3.7), TypeError, "label must be a class number"),
    (dict(num_images=2, label=True), TypeError, "label must be a class number"),
    (dict(num_images=2, label=[0.5, 1.5]), TypeError, "labels must be class numbers"),
    (dict(num_images=2, seed=1.5), TypeError, "seed must be a non-negative integer"),
    (dict(num_images=2, stepz=3), TypeError, "unknown sampling option"),
])
def test_sample_checks_its_arguments(cond, kwargs, error, words):
    """The Python API: wrong types and values are one clear error naming the argument."""
    n = kwargs.pop("num_images")
    with pytest.raises(error, match=words):
        cond.sample(n, **kwargs)


def test_sample_options_default_to_the_models_own_section(cond):
    """Options not given come from config.sampling; an explicit `options` object works the same."""
    from mnist_diffusion.config import SamplingConfig
    own = cond.with_sampling(SamplingConfig(sampler="ddim", steps=3, guidance=1.5))
    assert own.plan().report() == cond.plan(sampler="ddim", steps=3, guidance=1.5).report()
    a = own.sample(2, label=4, seed=1)
    assert a.tobytes() == cond.sample(2, label=4, seed=1, sampler="ddim", steps=3, guidance=1.5).tobytes()
    assert a.tobytes() == cond.sample(2, label=4, seed=1, options=SamplingConfig("ddim", steps=3, guidance=1.5)).tobytes()
    # the model's guidance is for labelled draws: without a label it is left out, not an error
    assert own.plan(labelled=False).guidance == 0.0
    assert own.sample(2, seed=1).shape == (2, 28, 28)


@pytest.fixture(scope="module")
def student(cond):
    """A distilled student's config on a random network: what sampling checks read, no training."""
    from mnist_diffusion.config import DistillConfig
    from mnist_diffusion.distill import student_config
    cfg = student_config(cond, DistillConfig(teacher="teacher.pt", guidance=0.5, pairs=8, teacher_steps=2))
    return Diffusion.new(cfg, device="cpu", precision="fp32")


def test_a_student_without_a_label_is_told_what_it_needs(student):
    """One error, naming the API's own argument: a student needs a label and takes no guidance."""
    for kwargs in ({}, {"guidance": 1.0}):
        for call in (lambda: student.sample(2, **kwargs), lambda: student.sample_tensor(2, **kwargs),
                     lambda: student.edit(torch.zeros(2, 1, 28, 28), 0.5, **kwargs)):
            with pytest.raises(ValueError) as e:
                call()
            msg = str(e.value)
            assert "needs a label" in msg and "label=" in msg and "no guidance" in msg, msg
            assert "--" not in msg and "\n" not in msg, msg
    assert student.sample(2, label=3).shape == (2, 28, 28)


def test_api_errors_name_the_apis_arguments_not_cli_flags(student, cond, uncond):
    """A Python call is told the keyword it passed (guidance=), the command line its flag (--guidance):
    the shared checks take the caller's name style."""
    with pytest.raises(ValueError, match=r"leave guidance= out") as e:
        student.sample(2, label=3, guidance=1.0)
    assert "--guidance" not in str(e.value)
    with pytest.raises(ValueError, match=r"leave --guidance out"):
        student.plan(guidance=1.0, names="cli")
    with pytest.raises(ValueError, match="unconditional model") as e:
        uncond.sample(2, label=1)
    assert "--conditional" not in str(e.value)
    from mnist_diffusion.labels import request
    with pytest.raises(ValueError, match=r"--conditional"):  # the command line's request keeps its flags
        request(1, 2, None, num_classes=None)
