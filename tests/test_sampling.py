"""Model -> images: classifier-free guidance, label checks, batch independence, inversion, interpolation.

The networks are tiny U-Nets with random (seeded) weights: these tests check the wiring and the
closed forms of guidance, not image quality, so no training is needed.
"""
from __future__ import annotations

import pytest
import torch

from mnist_diffusion.config import ModelConfig
from mnist_diffusion.models import build_model
from mnist_diffusion.samplers import PerImageNoise, ddim, ddim_invert, run_sampler, slerp
from mnist_diffusion.sampling import decode, eps_function, generate, interpolate, invert
from mnist_diffusion.schedule import make_schedule

C = 10


def random_unet(num_classes=C, seed=0):
    model = build_model(ModelConfig(base_dim=8, channel_mults=(1, 2), num_res_blocks=1, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised layers (block outputs, conv_out) get small random weights
        for p in model.parameters():  # so that eps depends on (x, t, y)
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: with 2 threads on a busy shared CPU, thread hand-offs cost more than the
    convolutions (measured: 2 s vs 10 ms per forward under load), so these tests use one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cond_model():
    return random_unet()


@pytest.fixture(scope="module")
def uncond_model():
    return random_unet(num_classes=None, seed=1)


@pytest.fixture(scope="module")
def sched():
    return make_schedule("cosine", 20)


def _xt(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 20, (n,), generator=g)


def test_guidance_closed_form(cond_model):
    """eps = eps(x, null) + (1 + w) (eps(x, y) - eps(x, null)): w = 0 is the conditional model."""
    x, t = _xt()
    y = torch.tensor([0, 3, 7, 9])
    cond = cond_model(x, t, y)
    uncond = cond_model(x, t, torch.full_like(y, C))
    assert not torch.allclose(cond, uncond)  # the label matters, so the checks below mean something
    assert torch.allclose(eps_function(cond_model, y, 0.0, null_label=C)(x, t), cond, atol=1e-6)
    for w in [0.5, 3.0]:
        guided = eps_function(cond_model, y, w, null_label=C)(x, t)
        assert torch.allclose(guided, uncond + (1 + w) * (cond - uncond), atol=1e-5)


def test_no_labels_is_the_unconditional_path(cond_model, uncond_model):
    x, t = _xt()
    null = torch.full((4,), C)
    assert torch.allclose(eps_function(cond_model)(x, t), cond_model(x, t, null))
    assert torch.allclose(eps_function(uncond_model)(x, t), uncond_model(x, t))


def test_generate_w0_equals_conditional_and_none_equals_null(cond_model, sched):
    """generate() end to end against the same sampler fed the model directly."""
    y = torch.tensor([1, 2, 3])

    def direct(labels):
        noise = PerImageNoise(5, 3)
        return run_sampler("ddim", lambda x, t: cond_model(x, t, labels), sched, noise.initial((1, 28, 28)), noise,
                           steps=5, eta=0.5)

    kw = dict(seed=5, sampler="ddim", steps=5, eta=0.5, progress=False, return_tensor=True, null_label=C)
    assert torch.allclose(generate(cond_model, sched, 3, labels=y, guidance=0.0, **kw), direct(y), atol=1e-5)
    assert torch.allclose(generate(cond_model, sched, 3, labels=None, **kw), direct(torch.full((3,), C)), atol=1e-5)
    guided = generate(cond_model, sched, 3, labels=y, guidance=2.0, **kw)
    assert not torch.allclose(guided, direct(y), atol=1e-3)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 6), ("dpmpp", 6)])
def test_image_does_not_depend_on_batch_size(cond_model, sched, sampler, steps):
    kw = dict(seed=3, sampler=sampler, steps=steps, eta=1.0, labels=torch.tensor([0, 1, 2, 3, 4]), guidance=1.0,
              null_label=C, progress=False, return_tensor=True)
    whole = generate(cond_model, sched, 5, batch_size=5, **kw)
    split = generate(cond_model, sched, 5, batch_size=2, **kw)
    # equal up to float32 rounding: convolution kernels differ in the last bits between batch
    # sizes, and the first x0-prediction multiplies that by 1/sqrt(alpha_bar_{T-1}) ~ 400 here
    assert torch.allclose(whole, split, atol=2e-4)


class _VOracle(torch.nn.Module):
    """Outputs the true v for a known x0: v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)."""
    prediction = "v"

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
    model = _VOracle(s, x0)
    for steps in (1, 7, 50):
        out = ddim(eps_function(model, schedule=s), s, x_T, steps=steps, clip=False)
        assert torch.allclose(out, x0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the schedule"):
        eps_function(model)


def test_generate_continues_from_finished_batches(uncond_model, sched):
    kw = dict(sampler="dpmpp", steps=4, batch_size=3, seed=5)
    full = generate(uncond_model, sched, 8, progress=False, **kw)
    seen = []
    part = generate(uncond_model, sched, 8, progress=False, on_batch=lambda imgs: seen.append(len(imgs)), **kw)
    assert seen == [3, 6, 8] and (part == full).all()
    rest = generate(uncond_model, sched, 8, progress=False, done=full[:6], **kw)
    assert rest.dtype == full.dtype and (rest == full).all()
    assert (generate(uncond_model, sched, 8, progress=False, done=full, **kw) == full).all()  # nothing left
    with pytest.raises(ValueError, match="not whole batches of 3"):
        generate(uncond_model, sched, 8, progress=False, done=full[:4], **kw)
    with pytest.raises(ValueError, match="return_tensor"):
        generate(uncond_model, sched, 8, progress=False, done=full[:3], return_tensor=True, **kw)


def test_generate_rejects_labels_the_model_cannot_honour(cond_model, uncond_model, sched):
    kw = dict(steps=2, sampler="ddim", progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        generate(uncond_model, sched, 2, labels=torch.tensor([1, 2]), null_label=None, **kw)
    with pytest.raises(ValueError, match="outside the model's classes 0..9"):
        generate(cond_model, sched, 2, labels=torch.tensor([1, 10]), null_label=C, **kw)
    with pytest.raises(ValueError, match="outside"):
        generate(cond_model, sched, 2, labels=torch.tensor([-1, 0]), null_label=C, **kw)
    with pytest.raises(ValueError, match="one label per image"):
        generate(cond_model, sched, 3, labels=torch.tensor([1, 2]), null_label=C, **kw)
    with pytest.raises(ValueError, match="guidance needs labels"):
        generate(cond_model, sched, 2, guidance=1.0, null_label=C, **kw)


class GaussianDenoiser(torch.nn.Module):
    """A 'network' with the exact eps of data ~ N(0.5, 0.3^2) per pixel (see test_samplers.py)."""

    def __init__(self, schedule, mu=0.5, sd=0.3):
        super().__init__()
        self.ab, self.mu, self.sd = schedule.alpha_bar, mu, sd

    def forward(self, x, t, y=None):
        a = self.ab[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.sd ** 2 + 1 - a)


def test_invert_and_decode_are_ddim_run_both_ways(uncond_model, sched):
    x0 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    eps_fn = eps_function(uncond_model)
    z = invert(uncond_model, sched, x0, steps=4)
    assert torch.allclose(z, ddim_invert(eps_fn, sched, x0, steps=4), atol=1e-6)
    assert torch.allclose(decode(uncond_model, sched, z, steps=4), ddim(eps_fn, sched, z, steps=4, clip=True),
                          atol=1e-6)
    assert torch.allclose(decode(uncond_model, sched, z, steps=4, clip=False),
                          ddim(eps_fn, sched, z, steps=4, clip=False), rtol=1e-4, atol=1e-4)


def test_invert_decode_round_trip_with_an_exact_denoiser():
    sched = make_schedule("linear", 200)
    model = GaussianDenoiser(sched)
    x0 = (0.5 + 0.3 * torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))).double()
    errs = []
    for steps in [10, 100]:
        z = invert(model, sched, x0, steps=steps)
        errs.append(float((decode(model, sched, z, steps=steps, clip=False) - x0).abs().max()))
    assert errs[1] < errs[0] / 4 and errs[1] < 0.1, errs  # first order: error ~ 1/steps


def test_interpolate_endpoints_and_determinism(uncond_model, sched):
    g = torch.Generator().manual_seed(6)
    z0, z1 = torch.randn(2, 1, 1, 28, 28, generator=g)
    frames = interpolate(uncond_model, sched, z0, z1, 5, steps=4)
    assert frames.shape == (5, 1, 28, 28)
    ends = decode(uncond_model, sched, torch.cat([z0, z1]), steps=4)
    assert torch.allclose(frames[[0, -1]], ends, rtol=1e-4, atol=1e-4)  # batch of 5 vs 2: float rounding
    mid = decode(uncond_model, sched, slerp(z0, z1, 0.5), steps=4)
    assert torch.allclose(frames[2:3], mid, rtol=1e-4, atol=1e-4)
    assert torch.equal(frames, interpolate(uncond_model, sched, z0, z1, 5, steps=4))
    with pytest.raises(ValueError, match="2 frames"):
        interpolate(uncond_model, sched, z0, z1, 1)


# ---------------------------------------------------------------------------------------------
# conditional training (train --conditional) feeds labels, dropped to the null label with p

@pytest.mark.parametrize("p", [0.0, 0.5])
def test_conditional_training_drops_labels_with_probability_p(tmp_path, monkeypatch, p):
    import numpy as np

    from mnist_diffusion import training
    from mnist_diffusion.checkpoint import load_model
    from mnist_diffusion.data import Split

    from conftest import tiny_config

    rng = np.random.default_rng(0)
    split = Split(images=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                  labels=rng.integers(0, 10, 64, dtype=np.uint8))
    seen = []
    real_loss = training.diffusion_loss

    def spy(model, schedule, x0, t, noise, y=None, *rest):
        seen.append(y.clone())
        return real_loss(model, schedule, x0, t, noise, y, *rest)

    monkeypatch.setattr(training, "diffusion_loss", spy)
    cfg = tiny_config(max_steps=6, num_samples=2, cond_drop_prob=p).replace(model={"num_classes": C},
                                                                         diffusion={"timesteps": 10})
    result = training.train(cfg, split, tmp_path, progress=False, log=lambda s: None)
    y = torch.cat(seen)  # 6 steps x 16 labels
    dropped = float((y == C).float().mean())
    assert y.min() >= 0 and y.max() <= C
    if p == 0.0:
        assert dropped == 0.0
    else:  # 96 Bernoulli(0.5) draws: 4 standard deviations is +-0.2
        assert abs(dropped - p) < 0.2
    model, saved, _ = load_model(result.checkpoint)
    assert saved.model.num_classes == C and model.label_emb is not None
