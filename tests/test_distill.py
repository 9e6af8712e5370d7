"""distill.py: students against the closed-form noise -> data map of Gaussian data, the teacher pairs,
and a distillation through the real CLI (resume bit-exact, one-line errors)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.config import DistillConfig, RunConfig
from mnist_diffusion.data import Split
from mnist_diffusion.diffusion import Diffusion
from mnist_diffusion.distill import (STUDENT_SAMPLING, consistency_objective, draw_times, pairs_key, pairs_objective,
                                     student_config, teacher_pairs)
from mnist_diffusion.samplers import ddim, student_timesteps
from mnist_diffusion.schedule import make_schedule
from mnist_diffusion.training import train

from conftest import finished

GOLDEN_CKPT = Path(__file__).resolve().parent / "golden" / "tiny_cond.pt"  # another tiny model
T = 1000
STEPS = 300  # the students' training steps on the toy
MU, S = 0.2, 0.15  # the toy data: x0 ~ N(MU, S^2 I), every pixel alike (a convolution can learn the map)


def toy_mu() -> torch.Tensor:
    return torch.full((1, 1, 28, 28), MU)


class GaussianEps(torch.nn.Module):
    """The exact eps of Gaussian data: E[eps | x_t] = sqrt(1 - a)(x_t - sqrt(a) mu) / (a S^2 + 1 - a)."""

    def __init__(self, mu: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("alpha_bar", alpha_bar.float())

    def forward(self, x, t, y=None):
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * S ** 2 + 1 - a)


def exact_map(z: torch.Tensor, mu: torch.Tensor, a_T: float) -> torch.Tensor:
    """The probability-flow ODE's map from x_T to x_0 for Gaussian data: it keeps each pixel's
    standardised value, x_0 = mu + S (x_T - sqrt(a_T) mu) / sqrt(a_T S^2 + 1 - a_T)."""
    return mu + S * (z - a_T ** 0.5 * mu) / (a_T * S ** 2 + 1 - a_T) ** 0.5


def toy_config(**train) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"name": "simple", "base_dim": 16, "num_res_blocks": 1},
        "diffusion": {"timesteps": T, "schedule": "cosine"},
        "train": {"epochs": 10**6, "batch_size": 32, "lr": 2e-3, "warmup_steps": 0, "num_samples": 4,
                  "log_interval": 50, "precision": "fp32", "device": "cpu", "sample_interval": 0,
                  "save_interval": 0, **train}})


@pytest.fixture(scope="module")
def toy():
    cfg = toy_config()
    schedule = make_schedule("cosine", T)
    mu = toy_mu()
    teacher = Diffusion(GaussianEps(mu, schedule.alpha_bar), cfg, device="cpu", precision="fp32", source="toy")
    d = DistillConfig(teacher="toy", guidance=0.0, pairs=600, teacher_steps=20)
    return teacher, d, mu, float(schedule.alpha_bar[-1])


def test_teacher_pairs_solve_the_ode_to_the_closed_form_map(toy):
    teacher, d, mu, a_T = toy
    pairs = teacher_pairs(teacher, d, 0, None, progress=False, log=lambda _m: None)
    assert pairs["images"].shape == (600, 1, 28, 28) and pairs["noise"].dtype == torch.float16
    assert "labels" not in pairs  # an unlabelled teacher
    want = exact_map(pairs["noise"].float(), mu, a_T).clamp(-1, 1)
    err = (pairs["images"].float() - want).abs()
    # DPM-Solver++ 20 steps, fp16 storage
    assert float(err.pow(2).mean().sqrt()) < 0.02 * S and float(err.max()) < 0.02, (err.pow(2).mean().sqrt(), err.max())
    # a pair depends on its index and the seed only: the first 100 alone are the same
    first = teacher_pairs(teacher, DistillConfig(teacher="toy", guidance=0.0, pairs=100, teacher_steps=20), 0, None,
                          progress=False, log=lambda _m: None)
    assert torch.equal(first["noise"], pairs["noise"][:100])


def _one_step(diff: Diffusion, z: torch.Tensor, steps: int = 1) -> torch.Tensor:
    return ddim(diff.eps_fn(), diff.schedule, z, steps=steps, spacing="student", clip=False)


class ExactStudent(torch.nn.Module):
    """The v of the exact ODE map at every t: x0 = MU + S (x_t - sqrt(a) MU) / sqrt(a S^2 + 1 - a),
    v = (sqrt(a) x_t - x0) / sqrt(1 - a); `shrink` < 1 is a student that is wrong by that factor at
    the noisier half of the timesteps (and so inconsistent where the halves meet)."""

    def __init__(self, alpha_bar: torch.Tensor, shrink: float = 1.0):
        super().__init__()
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.shrink = shrink

    def forward(self, x, t, y=None):
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        k = torch.where(t >= T // 2, self.shrink, 1.0).view(-1, 1, 1, 1)
        x0 = MU + k * S * (x - a.sqrt() * MU) / (a * S ** 2 + 1 - a).sqrt()
        return (a.sqrt() * x - x0) / (1 - a).sqrt()


def test_consistency_loss_vanishes_for_the_exact_map(toy):
    """Consistency distillation's fixed point is the ODE's map: the exact student's loss (left: one
    teacher DDIM step's error) is a small fraction of that of a student off by 20% at high noise."""
    teacher, d, mu, _ = toy
    cfg = toy_config().replace(model={"prediction": "v"}).replace(
        distill={**d.__dict__, "method": "consistency", "teacher_steps": 40})
    g = torch.Generator().manual_seed(3)
    x0 = (mu + S * torch.randn((256, 1, 28, 28), generator=g)).clamp(-1, 1)
    images = ((x0[:, 0] + 1) * 127.5).round().to(torch.uint8)
    objective = consistency_objective(teacher, cfg, images, torch.zeros(256, dtype=torch.long))
    batch = objective.draw(torch.arange(256), torch.Generator().manual_seed(4), slice(None))
    assert bool((batch.t == T - 1).float().mean() > 0.3)  # the one-step input gets its top share
    ab = teacher.schedule.alpha_bar
    with torch.no_grad():
        exact = float(objective.loss_fn(ExactStudent(ab), batch.x0, batch.t, batch.noise, None))
        wrong = float(objective.loss_fn(ExactStudent(ab, 0.8), batch.x0, batch.t, batch.noise, None))
    assert exact < 0.05 * wrong, (exact, wrong)


def test_distilled_one_step_map_approaches_the_exact_map(toy):
    method = "pairs"
    teacher, d, mu, a_T = toy
    cfg = toy_config(max_steps=STEPS, lr=3e-3).replace(model={"prediction": "v"})
    cfg = cfg.replace(distill={**d.__dict__, "method": method, "teacher_steps": 20 if method == "pairs" else 12})
    data = Split(np.zeros((600, 28, 28), np.uint8), None)  # (the pairs are the data)
    pairs = teacher_pairs(teacher, cfg.distill, 0, None, progress=False, log=lambda _m: None)
    objective = lambda c, images, labels: pairs_objective(pairs, c, images.device)  # noqa: E731
    result = train(finished(cfg), data, None, progress=False, log=lambda _m: None, objective=objective)
    z = torch.randn((64, 1, 28, 28), generator=torch.Generator().manual_seed(99))
    want = exact_map(z, mu, a_T)
    got = _one_step(result.diffusion, z)
    rmse = float((got - want).pow(2).mean().sqrt())
    # predicting the mean alone is off by S; the student follows each noise to its own image
    assert rmse < 0.35 * S, rmse
    two = float((_one_step(result.diffusion, z, 2) - want).pow(2).mean().sqrt())
    assert two < 0.6 * S, two  # its two-step draw follows the noise too (the middle timestep sees fewer steps)


def test_draw_times_mix_the_top_timestep_and_uniform_ones():
    g = torch.Generator().manual_seed(0)
    t = draw_times(4000, 1000, 0.5, g, "cpu")
    top = (t == 999).float().mean().item()
    assert 0.47 < top < 0.53
    assert int(t.min()) == 0 and float(t[t != 999].float().mean()) == pytest.approx(499.5, abs=15)


def test_student_grid():
    s = make_schedule("cosine", 1000)
    assert student_timesteps(s, 1) == [999]
    two = student_timesteps(s, 2)
    assert two[0] == 999 and float(((1 - s.alpha_bar[two[1]]) / s.alpha_bar[two[1]]).sqrt()) == pytest.approx(1.0,
                                                                                                                 abs=0.01)
    four = student_timesteps(s, 4)
    assert four == sorted(four, reverse=True) and len(set(four)) == 4


def test_student_config_predicts_v_and_samples_by_its_grid(toy):
    teacher, d, _, _ = toy
    cfg = student_config(teacher, d, {"max_steps": 7})
    assert cfg.model.prediction == "v" and cfg.sampling == STUDENT_SAMPLING and cfg.train.max_steps == 7
    assert RunConfig.from_json(cfg.to_json()) == cfg  # the distill section survives config.json
    assert "distill" not in teacher.config.to_dict()  # a model trained from data has none


# ---------------------------------------------------------------------------------------------
# the command line

def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("teacher")
    _cli("train", "--preset", "tiny", "--output-dir", out, "--max-steps", 4, "--sample-interval", 0,
         "--precision", "fp32", "--no-progress")
    return out / "checkpoints" / "last.pt"


@pytest.mark.system
def test_distill_cli_end_to_end_and_resume_is_bit_exact(tiny_teacher, tmp_path):
    common = ["--teacher", tiny_teacher, "--pairs", 40, "--teacher-steps", 4, "--batch-size", 8, "--save-interval", 3,
              "--sample-interval", 0, "--precision", "fp32", "--no-progress"]
    r = _cli("distill", *common, "--max-steps", 6, "--output-dir", tmp_path / "whole")
    assert "done: 6 steps" in r.stdout
    assert len(list((tmp_path / "whole" / "pairs").glob("*.safetensors"))) == 1
    _cli("distill", *common, "--max-steps", 3, "--output-dir", tmp_path / "split")
    r = _cli("distill", "--resume", "auto", "--max-steps", 6, "--output-dir", tmp_path / "split", "--no-progress")
    assert "resumed from" in r.stderr and "teacher pairs: drew" not in r.stderr  # the pairs were kept
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    ck = tmp_path / "whole" / "checkpoints" / "last.pt"
    for steps in (1, 2):
        _cli("sample", "--checkpoint", ck, "--label", "all", "--steps", steps, "--output", tmp_path / f"g{steps}.png",
             "--no-progress")
        assert (tmp_path / f"g{steps}.png").stat().st_size > 0
    # a student takes no further guidance, and draws labelled images only: one line each
    for extra, words in ((["--label", "all", "--guidance", 1], "built in"), ([], "distilled student")):
        r = _cli("sample", "--checkpoint", ck, "--output", tmp_path / "x.png", *extra, check=False)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2


@pytest.mark.system
def test_distill_cli_errors_are_one_line(tiny_teacher, tmp_path):
    cases = [(["--teacher", tmp_path / "nope.pt"], "does not exist"),
             ([], "--teacher is required"),
             (["--teacher", tiny_teacher, "--method", "magic"], "invalid choice")]
    for args, words in cases:
        r = _cli("distill", *args, "--output-dir", tmp_path / "run", "--dry-run", check=False)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli("distill", "--teacher", tiny_teacher, "--output-dir", tmp_path / "run", "--dry-run")
    assert '"distill"' in r.stdout and '"prediction": "v"' in r.stdout


@pytest.fixture(scope="module")
def tiny_student(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    _cli("distill", "--teacher", tiny_teacher, "--pairs", 16, "--teacher-steps", 2, "--batch-size", 8, "--max-steps", 2,
         "--sample-interval", 0, "--precision", "fp32", "--no-progress", "--output-dir", out)
    return out


@pytest.mark.system
def test_each_command_resumes_only_its_own_checkpoints(tiny_teacher, tiny_student):
    """A checkpoint says what made it: `train --resume` on a student trained it with the plain loss
    on real images and replaced its last.pt; distill refused the reverse."""
    last = tiny_student / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert torch.load(last, weights_only=True)["made_by"] == "distill"
    assert torch.load(tiny_teacher, weights_only=True)["made_by"] == "train"
    for args in (["--resume", last], ["--resume", "auto", "--output-dir", tiny_student],
                 ["--config", tiny_student / "config.json", "--output-dir", tiny_student.parent / "other"]):
        r = _cli("train", *args, "--max-steps", 4, "--no-progress", check=False)
        assert r.returncode == 2 and "distill" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _cli("distill", "--resume", tiny_teacher, "--max-steps", 8, "--no-progress", check=False)
    assert r.returncode == 2 and "checkpoint of `train`" in r.stderr, r.stderr
    assert last.read_bytes() == before


def test_pair_files_are_named_by_what_made_them(checkpoints, tmp_path):
    """After a stop during pair drawing, a rerun with another --guidance or --teacher-steps reused
    the old pair files (named by seed, offset and size only) and recorded the new settings."""
    teacher = Diffusion.load(checkpoints["cond"], device="cpu", precision="fp32")  # trained in this process
    folder = tmp_path / "pairs"

    def draw(**changes):
        logs = []
        pairs = teacher_pairs(teacher, DistillConfig(**{"teacher": "t", "pairs": 12, "teacher_steps": 2,
                                                         "guidance": 0.5, **changes}), 0, folder, progress=False,
                              log=logs.append)
        return pairs, " ".join(logs)

    a, said = draw()
    assert "drew 12" in said and "other settings" not in said
    again, said = draw()
    assert "drew" not in said and torch.equal(again["images"], a["images"])  # the same settings: read back
    for changes in ({"guidance": 2.0}, {"teacher_steps": 3}):
        other, said = draw(**changes)
        assert "drew 12" in said and "other settings" in said, said
        assert torch.equal(other["noise"], a["noise"])  # the same noises, drawn again by the other teacher draw
    assert len(list(folder.glob("pairs-*.safetensors"))) == 3
    assert len({pairs_key(teacher, DistillConfig(teacher="t", guidance=w), s) for w in (0.5, 2.0) for s in (0, 1)}) == 4


@pytest.mark.system
def test_resume_messages_and_a_moved_teacher(tiny_teacher, tiny_student, tmp_path):
    """An unchanged flag given again on resume is not a change; the teacher is recorded by its
    absolute path, so a resume from another folder finds it; a moved teacher is passed with
    --teacher and checked by its weights' SHA-256."""
    cfg = json.loads((tiny_student / "config.json").read_text())
    assert Path(cfg["distill"]["teacher"]).is_absolute()
    run = tmp_path / "run"
    shutil.copytree(tiny_student, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "distill", "--resume", "auto", "--output-dir", str(run),
                        "--pairs", "16", "--max-steps", "3", "--no-progress"], capture_output=True, text=True,
                       cwd=elsewhere)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr
    r = _cli("distill", "--resume", "auto", "--output-dir", run, "--pairs", 17, "--max-steps", 4, check=False)
    assert r.returncode == 2 and "--pairs 17 differs from the run's 16" in r.stderr, r.stderr
    # the teacher moved: its recorded path is gone
    moved = tmp_path / "moved.pt"
    shutil.copy(tiny_teacher, moved)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ck["config"]["distill"]["teacher"] = str(tmp_path / "gone.pt")
    torch.save(ck, run / "checkpoints" / "last.pt")
    r = _cli("distill", "--resume", "auto", "--output-dir", run, "--max-steps", 4, "--no-progress", check=False)
    assert r.returncode == 2 and "not found from here" in r.stderr and "--teacher" in r.stderr, r.stderr
    r = _cli("distill", "--resume", "auto", "--output-dir", run, "--teacher", moved, "--max-steps", 4, "--no-progress")
    assert "the same weights" in r.stderr and "done: 4 steps" in r.stdout, r.stderr
    r = _cli("distill", "--resume", "auto", "--output-dir", run, "--teacher", GOLDEN_CKPT, "--max-steps", 5,
             check=False)
    assert r.returncode == 2 and "is not the run's teacher" in r.stderr, r.stderr


@pytest.mark.system
def test_ctrl_c_during_pair_drawing_says_how_to_continue(tiny_teacher, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mnist_diffusion", "distill", "--teacher", str(tiny_teacher), "--pairs", "20000",
            "--teacher-steps", "4", "--max-steps", "1", "--no-progress", "--output-dir", str(run)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run / "pairs").glob("pairs-*.safetensors")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "teacher pairs drawn so far are kept" in err and "run the same command again" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
