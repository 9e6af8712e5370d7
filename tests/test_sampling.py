"""Batches of images from a Diffusion: per-image seeds (batch independence), continuing a stopped
run, the trajectory recorder, and conditional training's label drops.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.sampling import Trajectory, generate, plan, sample_batches

from conftest import C, finished

pytestmark = pytest.mark.usefixtures("one_thread")


def P(diff, **options):
    """The plan `options` resolve to on `diff`."""
    return plan(diff, SamplingConfig(**options))


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 6), ("dpmpp", 6)])
def test_image_does_not_depend_on_batch_size(cond, sampler, steps):
    kw = dict(seed=3, sampler=sampler, steps=steps, eta=1.0, label=torch.tensor([0, 1, 2, 3, 4]), guidance=1.0)
    whole = cond.sample_tensor(5, batch_size=5, **kw)
    split = cond.sample_tensor(5, batch_size=2, **kw)
    # equal up to float32 rounding: convolution kernels differ in the last bits between batch
    # sizes, and the first x0-prediction multiplies that by 1/sqrt(alpha_bar_{T-1}) ~ 400 here
    assert torch.allclose(whole, split, atol=2e-4)


def test_sample_is_generate_and_same_seed_same_bytes(uncond):
    opts = P(uncond, sampler="dpmpp", steps=4)
    a = uncond.sample(8, sampler="dpmpp", steps=4, seed=5, batch_size=3)
    assert a.dtype.name == "uint8" and a.shape == (8, 28, 28)
    assert a.tobytes() == generate(uncond, 8, opts, seed=5, batch_size=3).tobytes()
    assert a.tobytes() != uncond.sample(8, sampler="dpmpp", steps=4, seed=6, batch_size=3).tobytes()


def test_batches_continue_from_finished_ones(uncond):
    opts = P(uncond, sampler="dpmpp", steps=4)
    full = [(s, x) for s, x in sample_batches(uncond, 8, opts, seed=5, batch_size=3)]
    assert [s for s, _ in full] == [0, 3, 6] and [len(x) for _, x in full] == [3, 3, 2]
    rest = list(sample_batches(uncond, 8, opts, seed=5, batch_size=3, first=6))
    assert [s for s, _ in rest] == [6] and torch.equal(rest[0][1], full[2][1])
    assert list(sample_batches(uncond, 8, opts, seed=5, batch_size=3, first=8)) == []  # nothing left
    with pytest.raises(ValueError, match="not whole batches of 3"):
        list(sample_batches(uncond, 8, opts, seed=5, batch_size=3, first=4))


def test_options_reject_an_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        SamplingConfig("rk4")


@pytest.mark.parametrize("sampler,steps,wanted,expect", [
    ("ddpm", None, [19, 10, 0], [19, 10, 0]),  # every timestep visited: exactly the ones asked for
    ("ddpm", 5, [19, 10, 0], None),  # respaced DDPM visits 5: the nearest of those (the old CLI lost them)
    ("ddim", 4, [19, 10, 0], None),
])
def test_trajectory_records_the_nearest_visited_steps(uncond, sampler, steps, wanted, expect):
    opts = P(uncond, sampler=sampler, steps=steps)
    visited = list(opts.timesteps)
    rec = Trajectory(visited, wanted, max_images=2)
    final = generate(uncond, 3, opts, seed=1, batch_size=2, callback=rec)
    frames = rec.frames()
    ts = [t for t, _ in frames]
    assert ts == sorted(set(ts), reverse=True) and all(t in visited for t in ts)
    assert ts == (expect or sorted({min(visited, key=lambda v: abs(v - w)) for w in wanted}, reverse=True))
    assert len(ts) == len(set(min(visited, key=lambda v: abs(v - w)) for w in wanted))
    assert all(images.shape == (2, 28, 28) and images.dtype == final.dtype for _, images in frames)
    if sampler != "ddpm":  # the final frame of a deterministic run: x_t at the last visited step, not x_0
        assert ts[-1] == visited[-1]


# ---------------------------------------------------------------------------------------------
# conditional training (train --conditional) feeds labels, dropped to the null label with p

@pytest.mark.parametrize("p", [0.0, 0.5])
def test_conditional_training_drops_labels_with_probability_p(tmp_path, monkeypatch, p):
    from mnist_diffusion import training
    from mnist_diffusion.checkpoint import load_model

    from conftest import synthetic_split, tiny_config

    split = synthetic_split(64)
    seen = []
    real_loss = training.diffusion_loss

    def spy(model, schedule, x0, t, noise, y=None, *rest):
        seen.append(y.clone())
        return real_loss(model, schedule, x0, t, noise, y, *rest)

    monkeypatch.setattr(training, "diffusion_loss", spy)
    cfg = tiny_config(max_steps=6, num_samples=2, cond_drop_prob=p).replace(model={"num_classes": C},
                                                                         diffusion={"timesteps": 10})
    result = training.train(finished(cfg), split, tmp_path, progress=False, log=lambda s: None)
    y = torch.cat(seen)  # 6 steps x 16 labels
    dropped = float((y == C).float().mean())
    assert y.min() >= 0 and y.max() <= C
    if p == 0.0:
        assert dropped == 0.0
    else:  # 96 Bernoulli(0.5) draws: 4 standard deviations is +-0.2
        assert abs(dropped - p) < 0.2
    model, saved, _ = load_model(result.checkpoint)
    assert saved.model.num_classes == C and model.label_emb is not None


def test_eta_above_one_is_for_dpmpp_only():
    """dpmpp's update keeps exact marginals for any eta >= 0 (test_samplers); DDIM's eq. 12 does not above 1."""
    assert SamplingConfig(sampler="dpmpp", eta=2.0).eta == 2.0
    for bad in [dict(sampler="ddim", eta=1.5), dict(sampler="dpmpp", eta=10.5), dict(sampler="dpmpp", eta=float("nan"))]:
        with pytest.raises(ValueError, match="eta"):
            SamplingConfig(**bad)


def test_guidance_interval_defaults_and_checks(cond):
    """dpmpp with classifier-free guidance guides at noise levels 0.3-5 unless told otherwise; other
    samplers and autoguidance guide at every step; 0,inf means every step; bad intervals are
    one-line errors."""
    from mnist_diffusion.sampling import GUIDANCE_INTERVAL
    assert GUIDANCE_INTERVAL == (0.3, 5.0)
    auto = cond.autoguided(cond)
    assert P(cond, sampler="dpmpp", guidance=0.5).guidance_interval == (0.3, 5.0)
    assert P(auto, sampler="dpmpp", guidance=0.5).guidance_interval is None
    assert P(cond, sampler="ddpm", guidance=0.5).guidance_interval is None
    assert P(cond, sampler="dpmpp").guidance_interval is None
    assert P(cond, sampler="ddim", guidance=1, guidance_interval=(1, 2)).guidance_interval == (1.0, 2.0)
    assert P(cond, sampler="dpmpp", guidance=1, guidance_interval=(0, float("inf"))).guidance_interval is None
    for bad in [(5, 0.3), (-1, 2), (1, 1), (float("nan"), 2), (1,)]:
        with pytest.raises(ValueError, match="guidance interval"):
            SamplingConfig(guidance_interval=bad)

    def draw(**kw):
        return cond.sample(3, label=4, guidance=1.0, sampler="dpmpp", steps=4, seed=2, **kw)
    everywhere = draw(guidance_interval=(0, float("inf")))
    assert (draw() == draw(guidance_interval=GUIDANCE_INTERVAL)).all()
    assert (everywhere == draw(guidance_interval=(0, 1e30))).all()
    assert not (draw() == everywhere).all()
    # second-order steps across the band's edges: other images; without a band there is nothing to switch
    assert not (draw(first_order_switches=False) == draw()).all()
    assert (draw(guidance_interval=(0, float("inf")), first_order_switches=False) == everywhere).all()
    # dpmpp's corrector, 1 by default with guidance: other images, the same network evaluations
    assert P(cond, sampler="dpmpp", guidance=0.5).corrector == 1
    assert P(auto, sampler="dpmpp", guidance=0.5).corrector == 0
    assert P(cond, sampler="dpmpp").corrector == 0 and P(cond, sampler="ddim").corrector == 0
    # (8 steps: a tiny model's x0 is saturated at high noise, and with fewer every other step is a switch)
    drawn = {k: [] for k in (None, 0, 1, 2)}
    images = {k: cond.sample(3, label=4, guidance=1.0, sampler="dpmpp", steps=8, seed=2, corrector=k,
                             callback=lambda *a, seen=seen: seen.append(a[2])) for k, seen in drawn.items()}
    assert (images[None] == images[1]).all()
    assert not (images[0] == images[1]).all() and not (images[2] == images[1]).all()
    assert drawn[0] == drawn[1] == drawn[2]  # the same network evaluations
    with pytest.raises(ValueError, match="dpmpp's"):
        cond.sample(3, label=4, sampler="ddim", corrector=1)
    for bad in (3, -1, 1.5):
        with pytest.raises(ValueError, match="corrector must be"):
            SamplingConfig(sampler="dpmpp", corrector=bad)


def test_dpmpp_default_eta_depends_on_guidance(uncond, cond):
    """eta None: dpmpp takes eta 2 without guidance, 0.5 with classifier-free guidance, 0 with
    autoguidance; ddim stays deterministic; an explicit eta always wins."""
    assert P(uncond, sampler="dpmpp").eta == 2.0 and P(cond, sampler="dpmpp").eta == 2.0  # labels or not
    assert P(cond, sampler="dpmpp", guidance=0.5).eta == 0.5
    assert P(cond.autoguided(cond), sampler="dpmpp", guidance=1.0).eta == 0.0
    assert P(cond.autoguided(cond), sampler="dpmpp").eta == 2.0  # W = 0: the model alone, drawn as one
    assert P(cond, sampler="ddim").eta == 0.0
    assert P(cond, sampler="dpmpp", eta=0.3).eta == 0.3

    def draw(diff, **kw):
        return diff.sample(3, sampler="dpmpp", steps=4, seed=2, **kw)
    assert (draw(uncond) == draw(uncond, eta=2.0, spacing="logsnr-capped")).all()
    assert not (draw(uncond) == draw(uncond, eta=0.0)).all()
    assert (draw(cond, label=3, guidance=1.0) == draw(cond, label=3, guidance=1.0, eta=0.5)).all()


def test_an_autoguided_model_keeps_its_guidance_without_labels(uncond):
    """Autoguidance needs no labels: an autoguided model's own weight applies to unlabelled draws
    (sample and inpaint), where another model's weight is left out; guidance=0 is the model alone."""
    from mnist_diffusion.config import SamplingConfig as S
    own = uncond.autoguided(uncond).with_sampling(S(sampler="dpmpp", steps=20, guidance=1.5))
    drawn = own.plan(labelled=False)
    assert (drawn.guidance, drawn.autoguided, drawn.eta) == (1.5, True, 0.0)
    assert own.plan(labelled=False, task="inpaint").autoguided
    alone = own.plan(labelled=False, guidance=0)
    assert (alone.guidance, alone.autoguided, alone.eta) == (0.0, False, 2.0)


# -- every caller runs the planner's plan for its task ---------------------------------------------------

def test_every_pipeline_draw_runs_the_plan_of_its_task(cond, uncond, executed_plans):
    """sample, sample_tensor, edit, inpaint, invert and decode each run exactly what
    sampling.plan(model, options, task) returns: none of them builds or adjusts a plan itself."""
    from mnist_diffusion.sampling import options_for
    images = cond.sample(2, label=[1, 2], steps=3, seed=4)
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 127.5 - 1
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[:, 14:] = 1
    expected = []

    def want(diff, task="sample", strength=None, labelled=True, **given):
        expected.append(plan(diff, options_for(diff, labelled=labelled, **given), task=task, strength=strength))
    executed_plans.clear()
    cond.sample(2, label=[1, 2], guidance=1.0, steps=5, seed=1)
    want(cond, guidance=1.0, steps=5)
    uncond.sample_tensor(2, sampler="ddim", steps=4)
    want(uncond, labelled=False, sampler="ddim", steps=4)
    cond.edit(images, 0.6, label=[3, 4], guidance=0.5, steps=6)
    want(cond, "edit", 0.6, guidance=0.5, steps=6)
    cond.edit(images, 0.5, label=[3, 4], sampler="ddpm")
    want(cond, "edit", 0.5, sampler="ddpm")
    cond.inpaint(images, mask, label=[5, 6], steps=4)
    want(cond, "inpaint", sampler="ddpm", steps=4)
    cond.inpaint(images, mask, label=[5, 6], sampler="ddim", eta=0.3, steps=4)
    want(cond, "inpaint", sampler="ddim", eta=0.3, steps=4)
    z = uncond.invert(x, steps=4)
    expected.append(plan(uncond, SamplingConfig(steps=4), task="invert"))
    uncond.decode(z, clip=False)
    expected.append(plan(uncond, SamplingConfig(clip=False), task="invert"))
    assert executed_plans == expected
    assert [p.task for p in expected] == ["sample"] * 2 + ["edit"] * 2 + ["inpaint"] * 2 + ["invert"] * 2
    assert [len(p.timesteps) for p in expected[2:4]] == [4, 10]  # 60% of 6 steps; half of T = 20


def test_the_tools_draws_run_the_plan_of_their_task(cond, executed_plans, tmp_path):
    """The figure, the demo and the training preview ask the planner too."""
    from mnist_diffusion.demo.checks import Request
    from mnist_diffusion.demo.draws import generate_frames
    from mnist_diffusion.sampling import options_for
    from mnist_diffusion.visualize import plot_denoising
    executed_plans.clear()
    plot_denoising(cond, tmp_path / "d.png", label=3, guidance=1.0, num_images=2, steps=4)
    assert executed_plans == [plan(cond, options_for(cond, labelled=True, sampler="ddim", steps=4, guidance=1.0))]
    executed_plans.clear()
    list(generate_frames(cond, Request(label="one of each", guidance=0.5, sampler="dpmpp", steps=5, seed=2,
                                       num_images=10)))
    assert executed_plans == [plan(cond, options_for(cond, labelled=True, sampler="dpmpp", steps=5, guidance=0.5))]


def test_the_training_preview_runs_the_models_own_plan(executed_plans, tmp_path):
    from conftest import synthetic_split, tiny_config
    from mnist_diffusion.diffusion import Diffusion
    from mnist_diffusion.sampling import options_for
    from mnist_diffusion.training import train
    cfg = tiny_config(max_steps=1, num_samples=2).replace(diffusion={"timesteps": 20})
    result = train(finished(cfg), synthetic_split(16), tmp_path / "run", progress=False, log=lambda s: None)
    diff = Diffusion.load(result.checkpoint, device="cpu", precision="fp32")
    labelled = diff.num_classes is not None
    assert executed_plans and all(p == plan(diff, options_for(diff, labelled=labelled, clip=cfg.train.clip))
                                  for p in executed_plans)


def test_inversion_is_planned_with_its_own_rule(uncond):
    """invert / decode / interpolate: INVERT_STEPS uniform DDIM steps unless given, every timestep
    of a model with fewer (T = 20 here), eta 0, unguided; the interpolate command leaves them to it."""
    from mnist_diffusion.cli import build_parser
    from mnist_diffusion.sampling import INVERT_STEPS
    drawn = plan(uncond, SamplingConfig(), task="invert")
    assert INVERT_STEPS > uncond.timesteps and drawn.timesteps == tuple(range(uncond.timesteps - 1, -1, -1))
    assert (drawn.sampler, drawn.eta, drawn.guidance, drawn.spacing) == ("ddim", 0.0, 0.0, "uniform")
    assert len(plan(uncond, SamplingConfig(steps=4), task="invert").timesteps) == 4
    args = build_parser().parse_args(["interpolate", "--pretrained", "mnist"])
    assert args.steps is None and args.spacing is None


def test_the_option_help_states_the_planners_rules():
    """The --steps and --spacing help name the planner's defaults (sampling.STEPS, SPACING): prose
    that restates a rule is checked against it."""
    import dataclasses
    from mnist_diffusion.sampling import SPACING, STEPS
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(SamplingConfig)}
    for sampler, n in STEPS.items():
        assert (f"{sampler} {n}" if n else f"{sampler} all T") in helps["steps"], sampler
    for sampler, spacing in SPACING.items():
        said = helps["spacing"].split("default ", 1)[1]
        assert spacing in said and (sampler in said or spacing == "uniform"), sampler
