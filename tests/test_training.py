import csv

import numpy as np
import pytest
import torch

from mnist_diffusion import checkpoint as ckpt_io
from mnist_diffusion.data import Split
from mnist_diffusion.models import build_model
from mnist_diffusion.schedule import make_schedule
from mnist_diffusion.rundir import elapsed_seconds
from mnist_diffusion.training import (NonFiniteLoss, TrainingError, accumulate_gradients, draw_batch, ema_beta,
                                      ema_update, lr_at, planned_steps, train)
from conftest import finished, tiny_config


def _quiet(_):
    pass


def _split(mnist, n=256):
    return Split(mnist["train"].images[:n], mnist["train"].labels[:n])


def _synthetic(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))


def test_loss_goes_down_on_a_tiny_subset(tmp_path, mnist):
    cfg = tiny_config(max_steps=60, epochs=100, sample_interval=1000, save_interval=1000, log_interval=10)
    train(finished(cfg), _split(mnist), tmp_path, progress=False, log=_quiet)
    with open(tmp_path / "loss.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0]
    for name in ("config.json", "loss.csv", "loss.png", "checkpoints/last.pt", "samples/step_0000060.png"):
        assert (tmp_path / name).exists(), name


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = _synthetic()
    cfg = tiny_config(max_steps=12, epochs=100, save_interval=5, sample_interval=1000)
    train(finished(cfg), data, tmp_path / "full", progress=False, log=_quiet)

    class Crash(Exception):
        pass

    def crash_at_7(step, loss):
        if step == 7:
            raise Crash  # dies between checkpoints: steps 6-7 are lost and redone

    with pytest.raises(Crash):
        train(finished(cfg), data, tmp_path / "split", progress=False, log=_quiet, step_hook=crash_at_7)
    assert ckpt_io.load(tmp_path / "split/checkpoints/last.pt")["step"] == 5
    train(finished(cfg), data, tmp_path / "split", resume=str(tmp_path / "split/checkpoints/last.pt"), progress=False,
          log=_quiet)

    a = ckpt_io.load(tmp_path / "full/checkpoints/last.pt")
    b = ckpt_io.load(tmp_path / "split/checkpoints/last.pt")
    assert a["step"] == b["step"] == 12
    assert a["elapsed_s"] > 0 and b["elapsed_s"] > 0  # wall time so far, saved for the next resume
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    with open(tmp_path / "split/loss.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps))  # no duplicated rows after resuming
    elapsed = [float(r["elapsed_s"]) for r in rows]  # wall time carries over the resume
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


def test_elapsed_seconds_reads_the_column_or_estimates_old_rows():
    old = [{"step": "10", "images_per_s": "20.0"}, {"step": "30", "images_per_s": "40.0"}]
    assert elapsed_seconds(old, batch_size=8) == pytest.approx([4.0, 8.0])  # 80 imgs / 20 + 160 / 40
    mixed = old + [{"step": "40", "images_per_s": "10.0", "elapsed_s": "100.0"},
                   {"step": "50", "images_per_s": "80.0", "elapsed_s": ""}]
    assert elapsed_seconds(mixed, batch_size=8) == pytest.approx([4.0, 8.0, 100.0, 101.0])


def test_resume_refuses_a_different_model(tmp_path):
    data = _synthetic()
    cfg = tiny_config(max_steps=2, sample_interval=1000)
    train(finished(cfg), data, tmp_path, progress=False, log=_quiet)
    other = cfg.replace(model={"base_dim": 16})
    with pytest.raises(TrainingError, match="model.base_dim=8"):
        train(finished(other), data, tmp_path, resume=str(tmp_path / "checkpoints/last.pt"), progress=False, log=_quiet)


def test_new_run_refuses_to_overwrite(tmp_path):
    data = _synthetic()
    cfg = tiny_config(max_steps=1, sample_interval=1000)
    train(finished(cfg), data, tmp_path, progress=False, log=_quiet)
    before = (tmp_path / "checkpoints/last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(finished(cfg), data, tmp_path, progress=False, log=_quiet)
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == before


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    data = _synthetic()
    cfg = tiny_config(max_steps=6, epochs=100, save_interval=2, sample_interval=1000)
    import mnist_diffusion.training as tr
    real = tr.diffusion_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(tr, "diffusion_loss", flaky)
    with pytest.raises(NonFiniteLoss, match="step 4"):
        train(finished(cfg), data, tmp_path, progress=False, log=_quiet)
    assert ckpt_io.load(tmp_path / "checkpoints/last.pt")["step"] == 2

    calls["n"] = 0
    skip = cfg.replace(train={"nonfinite": "skip"})
    train(finished(skip), data, tmp_path / "skip", progress=False, log=_quiet)
    ck = ckpt_io.load(tmp_path / "skip/checkpoints/last.pt")
    assert ck["step"] == 6 and ck["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        train(finished(tiny_config(max_steps=1)), _synthetic(), f, progress=False, log=_quiet)


def test_train_takes_only_a_finished_config(tmp_path):
    from mnist_diffusion.config import ConfigError
    with pytest.raises(ConfigError, match="no sampling section: resolve it first") as e:
        train(tiny_config(max_steps=1), _synthetic(), tmp_path / "run", progress=False, log=_quiet)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_batch_larger_than_data(tmp_path):
    with pytest.raises(TrainingError, match="larger than"):
        train(finished(tiny_config(max_steps=1, batch_size=128)), _synthetic(64), tmp_path, progress=False, log=_quiet)


def test_lr_schedule_warmup_and_decay():
    cfg = tiny_config(warmup_steps=10, lr=1e-3)
    assert lr_at(cfg, 0, 100) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 100) == pytest.approx(1e-3)
    assert lr_at(cfg, 100, 100) == pytest.approx(1e-4)  # decays to 10%
    assert planned_steps(tiny_config(epochs=3, batch_size=16), 64) == 12


def test_lr_schedule_wsd_holds_then_cools_down_linearly_to_zero():
    # 10 warm-up steps, 90 after them, the last 20% (18 steps: 82..99) cooling down
    cfg = tiny_config(warmup_steps=10, lr=1e-3, lr_schedule="wsd", lr_cooldown=0.2)
    assert lr_at(cfg, 4, 100) == pytest.approx(5e-4)  # the warm-up is the cosine schedule's
    assert [lr_at(cfg, s, 100) for s in (10, 50, 82)] == [1e-3] * 3
    assert lr_at(cfg, 91, 100) == pytest.approx(1e-3 * 9 / 18)
    assert lr_at(cfg, 99, 100) == pytest.approx(1e-3 / 18)
    assert lr_at(cfg, 100, 100) == 0.0


def test_ema_update_is_a_convex_combination():
    cfg = tiny_config()
    a, b = build_model(cfg.model), build_model(cfg.model)
    for p in b.parameters():
        torch.nn.init.constant_(p, 1.0)
    for p in a.parameters():
        torch.nn.init.constant_(p, 0.0)
    ema_update(a, b, decay=0.9, step=10_000)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in a.parameters())


@pytest.mark.parametrize("gamma", [1.0, 2.0, 6.94])
def test_power_ema_is_its_closed_form_average(gamma):
    """EDM2's power-function EMA, beta_t = (1 - 1/t)^(g + 1): the product of the betas telescopes, so
    after t steps the EMA is sum_tau (tau^(g+1) - (tau-1)^(g+1)) w_tau / t^(g+1) of the weights
    w_1..w_t, whatever the first EMA held (beta_1 = 0 copies the weights)."""
    torch.manual_seed(0)
    ema, net = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    seen = []
    for step in range(40):
        for p in net.parameters():
            p.data.normal_()
        seen.append([p.detach().clone() for p in net.parameters()])
        ema_update(ema, net, decay=0.999, step=step, gamma=gamma)
    t = len(seen)
    w = torch.tensor([(k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / t ** (gamma + 1) for k in range(1, t + 1)],
                     dtype=torch.float64)
    assert float(w.sum()) == pytest.approx(1.0)
    for i, p in enumerate(ema.parameters()):
        want = sum(wk * s[i].double() for wk, s in zip(w, seen))
        assert torch.allclose(p.double(), want, atol=1e-5)
    # gamma = 0 keeps the classic warm-up: min(decay, (1 + step) / (10 + step))
    assert ema_beta(0.999, 0) == pytest.approx(0.1) and ema_beta(0.999, 20_000) == 0.999
    assert ema_beta(0.999, 0, 2.0) == 0.0 and ema_beta(0.999, 99, 2.0) == pytest.approx(0.99 ** 3)


def test_adam_beta2_reaches_the_optimiser_and_is_checked():
    from mnist_diffusion.config import ConfigError
    from mnist_diffusion.training import TrainState
    assert TrainState(tiny_config(), torch.device("cpu")).opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert TrainState(tiny_config(adam_beta2=0.99), torch.device("cpu")).opt.param_groups[0]["betas"] == (0.9, 0.99)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="adam_beta2"):
            tiny_config(adam_beta2=bad)


@pytest.mark.parametrize("conditional", [False, True])
def test_micro_batches_give_the_full_batch_gradient(conditional):
    cfg = tiny_config()
    if conditional:
        cfg = cfg.replace(model={"num_classes": 10})
    s = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(10, 1, 28, 28, generator=g) * 2 - 1
    noise = torch.randn(10, 1, 28, 28, generator=g)
    t = torch.randint(0, 50, (10,), generator=g)
    y = torch.randint(0, 11, (10,), generator=g) if conditional else None
    grads, losses = [], []
    for micro in (None, 3, 10, 64):  # 3 leaves a ragged last chunk of 1; >= the batch is one pass
        torch.manual_seed(1)
        model = build_model(cfg.model, 50)
        loss = accumulate_gradients(model, s, x0, t, noise, y, torch.device("cpu"), None, micro)
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for loss, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_training_with_micro_batches_follows_the_same_run(tmp_path):
    data = _synthetic()
    cfg = tiny_config(max_steps=6, epochs=100, sample_interval=1000, save_interval=1000)
    train(finished(cfg), data, tmp_path / "full", progress=False, log=_quiet)
    train(finished(cfg.replace(train={"micro_batch": 5})), data, tmp_path / "micro", progress=False, log=_quiet)
    a = ckpt_io.load(tmp_path / "full/checkpoints/last.pt")
    b = ckpt_io.load(tmp_path / "micro/checkpoints/last.pt")
    # same data, noise and updates; only the summation order differs. Adam's normalised step turns
    # a rounding-level change of a near-zero gradient into up to one lr-sized step, so weights are
    # compared to half a step (lr 2e-3) and the loss curve, which all weights shape, to 1e-4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-3)
    curves = []
    for run in ("full", "micro"):
        with open(tmp_path / run / "loss.csv") as f:
            curves.append([float(r["loss"]) for r in csv.DictReader(f)])
    assert len(curves[0]) == 3
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)


def test_min_snr_training_runs_and_records_gamma(tmp_path):
    cfg = tiny_config(max_steps=4, epochs=100, sample_interval=1000, save_interval=1000, min_snr_gamma=5.0)
    result = train(finished(cfg), _synthetic(), tmp_path, progress=False, log=_quiet)
    assert np.isfinite(result.final_loss)
    assert ckpt_io.load(tmp_path / "checkpoints/last.pt")["config"]["train"]["min_snr_gamma"] == 5.0


def test_draw_batch_timesteps_uniform_or_logit_normal():
    images, labels = torch.zeros(8, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    idx = torch.arange(8).repeat(64)

    def draw(seed, ln=None):
        return draw_batch(images, labels, idx, torch.Generator().manual_seed(seed), timesteps=1000,
                          cond_drop_prob=0.0, null_label=None, t_logit_normal=ln)

    # uniform is the plain randint draw (so runs from before the option reproduce byte for byte)
    assert torch.equal(draw(1).t, torch.randint(0, 1000, (512,), generator=torch.Generator().manual_seed(1)))
    ln = draw(1, (0.0, 1.0))
    assert torch.equal(ln.t, draw(1, (0.0, 1.0)).t) and torch.equal(ln.noise, draw(1, (0.0, 1.0)).noise)
    # logit-normal(0, 1) puts ~68% of t/T in [sigmoid(-1), sigmoid(1)] = [0.269, 0.731]; uniform ~46%
    share = ((ln.t >= 269) & (ln.t <= 731)).double().mean()
    assert 0.6 < float(share) < 0.76


def test_logit_normal_training_runs_and_records_it(tmp_path):
    cfg = tiny_config(max_steps=3, epochs=100, sample_interval=1000, save_interval=1000, t_sampling="logit-normal",
                      t_logit_mean=0.5)
    train(finished(cfg), _synthetic(), tmp_path, progress=False, log=_quiet)
    recorded = ckpt_io.load(tmp_path / "checkpoints/last.pt")["config"]["train"]
    assert (recorded["t_sampling"], recorded["t_logit_mean"], recorded["t_logit_std"]) == ("logit-normal", 0.5, 1.0)


def test_time_limit_stops_with_a_checkpoint_and_a_grid(tmp_path):
    cfg = tiny_config(max_steps=100_000, epochs=100_000, sample_interval=100_000, save_interval=100_000,
                      time_limit=0.002)  # 0.12 s
    result = train(finished(cfg), _synthetic(), tmp_path, progress=False, log=_quiet)
    assert 0 < result.step < 100_000
    assert ckpt_io.load(tmp_path / "checkpoints/last.pt")["step"] == result.step
    assert (tmp_path / "samples" / f"step_{result.step:07d}.png").exists()
