"""Crash safety: SIGKILL at random moments, Ctrl-C / SIGTERM, failing saves, unwritable places.

Training runs here are real `python -m mnist_diffusion train` processes on a tiny model and a
synthetic dataset given as IDX files (so they need no downloads and take a second or two).
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion import checkpoint as ckpt_io
from mnist_diffusion import data

from conftest import finished, logged_steps, train_cmd

ROOT = Path(__file__).resolve().parents[1]

def _weights(path: Path):
    ck = ckpt_io.load(path)
    return ck["step"], ck["model"], ck["ema"]


@pytest.mark.system
def test_sigkill_ten_times_then_finish_equals_uninterrupted(env, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(ref, env), env=env["env"], check=True, capture_output=True, timeout=300)

    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(40):
        p = subprocess.Popen(train_cmd(run, env, "--resume", "auto"), env=env["env"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        # wait for training to really start, then kill at a random moment a little later
        start_steps = len(logged_steps(run))
        deadline = time.time() + 60
        while p.poll() is None and len(logged_steps(run)) <= start_steps and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.25))
        if p.poll() is not None:
            assert p.returncode == 0, p.stderr.read().decode()
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        # every crash leaves a loadable checkpoint at most one save interval behind the last logged step
        last = run / "checkpoints" / "last.pt"
        if last.exists():
            step = ckpt_io.load(last)["step"]
            logged = logged_steps(run)
            assert not logged or step >= logged[-1] - 5
        for ck in (run / "checkpoints").glob("*.pt"):
            ckpt_io.load(ck)  # never half-written
        if kills >= 10:
            r = subprocess.run(train_cmd(run, env, "--resume", "auto"), env=env["env"], capture_output=True,
                               timeout=300)
            assert r.returncode == 0, r.stderr.decode()
            break
    assert kills >= 10
    s_ref, m_ref, e_ref = _weights(ref / "checkpoints/last.pt")
    s_run, m_run, e_run = _weights(run / "checkpoints/last.pt")
    assert s_ref == s_run == 200
    for k in m_ref:
        assert torch.equal(m_ref[k], m_run[k]), k
        if k in e_ref:
            assert torch.equal(e_ref[k], e_run[k]), k


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.system
def test_interrupt_saves_and_says_how_to_resume(env, tmp_path, sig, code):
    run = tmp_path / "run"
    p = subprocess.Popen(train_cmd(run, env, "--max-steps", "100000", "--save-interval", "100000"),
                         env=env["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(logged_steps(run)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    last_line = err.strip().splitlines()[-1]
    assert "resume with: mnist-diffusion train --resume" in last_line
    step = ckpt_io.load(run / "checkpoints/last.pt")["step"]
    assert step >= 3 and step == logged_steps(run)[-1]


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from mnist_diffusion.training import train
    from conftest import tiny_config

    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), np.zeros(32, np.uint8))
    cfg = tiny_config(max_steps=10, epochs=100, save_interval=2, sample_interval=1000)
    real = ckpt_io.atomic_save
    calls = {"n": 0}

    def disk_full_on_third_save(obj, path):
        calls["n"] += 1
        if calls["n"] >= 5:  # saves 1-2 are step 2 (last + periodic), 3-4 step 4, then the disk fills
            def boom(o, f):
                f.write(b"partial")
                raise OSError(28, "No space left on device")
            monkeypatch.setattr(torch, "save", boom)
        return real(obj, path)

    monkeypatch.setattr(ckpt_io, "atomic_save", disk_full_on_third_save)
    with pytest.raises(OSError, match="No space left"):
        train(finished(cfg), split, tmp_path, progress=False, log=lambda s: None)
    monkeypatch.undo()
    assert ckpt_io.load(tmp_path / "checkpoints/last.pt")["step"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


@pytest.mark.system
def test_unwritable_output_dir_fails_before_training(env, tmp_path):
    r = subprocess.run(train_cmd(Path("/proc/mnist-diffusion-test-run"), env), env=env["env"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "cannot write to --output-dir" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.system
def test_config_file_with_unknown_or_mistyped_keys(env, tmp_path):
    bad = tmp_path / "config.json"
    for text, words in [('{"train": {"lerning_rate": 1}}', "unknown key(s) in train: lerning_rate"),
                        ('{"train": {"epochs": "ten"}}', "train.epochs must be an integer"),
                        ("{oops", "not valid JSON")]:
        bad.write_text(text)
        r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "train", "--config", str(bad), "--dry-run"],
                           env=env["env"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.system
def test_resume_with_another_dataset_names_the_setting(env, tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_cmd(run, env, "--max-steps", "2"), env=env["env"], check=True, capture_output=True, timeout=300)
    before = (run / "checkpoints/last.pt").read_bytes()
    r = subprocess.run(train_cmd(run, env, "--resume", "auto", "--dataset", "fashion_mnist"), env=env["env"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "train.dataset='mnist'" in r.stderr
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_too_little_disk_space_fails_before_training(tmp_path, monkeypatch):
    import collections
    import shutil

    from mnist_diffusion.training import TrainingError, train
    from conftest import tiny_config

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), np.zeros(32, np.uint8))
    with pytest.raises(TrainingError, match="MB free"):
        train(finished(tiny_config(max_steps=2)), split, tmp_path, progress=False, log=lambda s: None)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
