"""No command destroys a user's file, hangs, or quietly does the wrong thing (docs/RELIABILITY.md).

Each test here is a careless user's mistake that lost data, hung or passed silently before the
guards existed: outputs onto inputs, two trainings in one directory, runs mixed, NaN weights saved,
FIFOs and lying files, unbounded counts, absurd guidance. Tiny models and synthetic data only.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion import checkpoint as ckpt_io
from mnist_diffusion.cli import main
from mnist_diffusion.images import save_png

from conftest import finished, logged_steps, synthetic_split, tiny_config, train_cmd


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1] if err else ""


def _sample(checkpoint, *extra):
    return main(["sample", "--checkpoint", checkpoint, "--sampler", "ddim", "--steps", "2", "--num-images", "2",
                 "--device", "cpu", "--precision", "fp32", "--no-progress", *extra])


# ---------------------------------------------------------------------------------------------
# outputs never replace inputs, checkpoints, configs or each other

def test_sample_output_onto_the_checkpoint_is_refused(checkpoints, capsys):
    ck = Path(checkpoints["uncond"])
    before = ck.read_bytes()
    assert _sample(str(ck), "--output", str(ck)) == 2
    assert ".png file" in _err(capsys)
    png_named = ck.with_name("model.png")  # a checkpoint under a PNG's name is no PNG either
    png_named.write_bytes(before)
    assert _sample(str(ck), "--output", str(png_named)) == 2
    assert "is not a PNG image" in _err(capsys)
    assert ck.read_bytes() == before == png_named.read_bytes()


def test_npz_onto_a_config_or_a_checkpoint_is_refused(checkpoints, tmp_path, capsys):
    run = Path(checkpoints["uncond"]).parent.parent
    config = (run / "config.json").read_bytes()
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.png"), "--npz", str(run / "config.json")) == 2
    assert "expected a .npz file" in _err(capsys)
    fake = tmp_path / "weights.npz"  # a torch checkpoint is a zip file as well
    fake.write_bytes(Path(checkpoints["uncond"]).read_bytes())
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.png"), "--npz", str(fake)) == 2
    assert "is not an npz of images" in _err(capsys)
    assert (run / "config.json").read_bytes() == config and fake.read_bytes() == Path(checkpoints["uncond"]).read_bytes()
    assert not (tmp_path / "s.png").exists()  # nothing was drawn: the paths were checked first


def test_evaluate_json_onto_a_checkpoint_or_a_run_config_is_refused(checkpoints, tmp_path, capsys):
    ck = Path(checkpoints["uncond"])
    config = ck.parent.parent / "config.json"
    copy = tmp_path / "report.json"
    copy.write_bytes(config.read_bytes())  # a run's config under a report's name
    for target, words in [(ck, "expected a .json file"), (config, "is not a JSON report"),
                          (copy, "is not a JSON report")]:
        before = target.read_bytes()
        assert main(["evaluate", "--checkpoint", str(ck), "--num-samples", "4", "--json", str(target)]) == 2
        assert words in _err(capsys)
        assert target.read_bytes() == before


def test_the_extension_decides_the_format_and_outputs_differ(checkpoints, tmp_path, capsys):
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.jpg")) == 2
    assert "expected a .png file" in _err(capsys)
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.npz"), "--npz", str(tmp_path / "s.npz")) == 2
    assert "expected a .png file" in _err(capsys)
    from mnist_diffusion.config import ConfigError
    from mnist_diffusion.outputs import check_outputs
    with pytest.raises(ConfigError, match="--a and --b are the same file"):
        check_outputs([("--b", tmp_path / "x.png", ".png"), ("--a", tmp_path / "x.png", ".png")])
    with pytest.raises(ConfigError, match="is also an input"):
        check_outputs([("--output", tmp_path / "in.png", ".png")], inputs=[tmp_path / "in.png"])
    assert not list(tmp_path.iterdir())
    # replacing the same kind of artifact is what a rerun does
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz")) == 0
    assert _sample(checkpoints["uncond"], "--output", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz")) == 0


# ---------------------------------------------------------------------------------------------
# a run directory belongs to one run, and to one process at a time

@pytest.mark.system
def test_a_second_train_in_a_running_directory_is_refused_and_touches_nothing(env, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    # saving every step: the first run's temporary checkpoint exists most of the time (a refused second
    # train used to delete it as a crash's leftover, and the first run then died on its rename)
    first = subprocess.Popen(train_cmd(run, env, "--max-steps", "100000", "--save-interval", "1"), env=env["env"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _second_is_refused(first, run, env)
    finally:
        if first.poll() is None:  # never leave a training process behind, whatever failed
            first.kill()
            first.wait()


def _second_is_refused(first, run, env):  # noqa: F811
    deadline = time.time() + 120
    while len(logged_steps(run)) < 3 and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    for extra in (["--resume", "auto"], []):  # resuming it, or starting afresh there
        second = subprocess.run(train_cmd(run, env, *extra), env=env["env"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another training process (pid" in second.stderr
        assert second.stderr.count("error") == 1 and "Traceback" not in second.stderr
    time.sleep(1.0)
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err  # stopped by us, not crashed
    step = ckpt_io.load(run / "checkpoints/last.pt")["step"]
    # the lock goes with the process: the run resumes afterwards
    again = subprocess.run(train_cmd(run, env, "--resume", "auto", "--max-steps", str(step + 1)), env=env["env"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_resume_into_a_directory_of_another_run_is_refused(tmp_path, capsys):
    from mnist_diffusion.training import TrainingError, train
    cfg = tiny_config(max_steps=2, sample_interval=1000)
    a, b = tmp_path / "a", tmp_path / "b"
    train(finished(cfg), synthetic_split(), a, progress=False, log=lambda _m: None)
    train(finished(cfg.replace(train={"seed": 1})), synthetic_split(), b, progress=False, log=lambda _m: None)
    before = {p.name: p.read_bytes() for p in [*(b / "checkpoints").iterdir(), b / "config.json", b / "loss.csv"]}
    with pytest.raises(TrainingError, match="holds another run"):
        train(finished(cfg.replace(train={"max_steps": 4})), synthetic_split(), b,
              resume=str(a / "checkpoints/last.pt"), progress=False, log=lambda _m: None)
    after = {p.name: p.read_bytes() for p in [*(b / "checkpoints").iterdir(), b / "config.json", b / "loss.csv"]}
    assert after == before
    # each run directory records its run, and a config file naming one is still a valid config
    ids = {json.loads((d / "config.json").read_text())["run_id"] for d in (a, b)}
    assert len(ids) == 2 and ckpt_io.load(a / "checkpoints/last.pt")["run_id"] in ids
    from mnist_diffusion.config import RunConfig
    saved = RunConfig.from_json((a / "config.json").read_text())
    # the finished config it was given, + the data's identity
    assert saved.train.data_sha256 and saved.replace(train={"data_sha256": None}) == finished(cfg)


def test_a_run_without_last_pt_is_not_treated_as_empty(tmp_path):
    from mnist_diffusion.training import TrainingError, train
    cfg = tiny_config(max_steps=2, save_interval=1, sample_interval=1000)
    train(finished(cfg), synthetic_split(), tmp_path, progress=False, log=lambda _m: None)
    (tmp_path / "checkpoints/last.pt").unlink()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(TrainingError, match="already holds a run"):
        train(finished(cfg), synthetic_split(), tmp_path, progress=False, log=lambda _m: None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before == ["step_0000001.pt",
                                                                                     "step_0000002.pt"]


# ---------------------------------------------------------------------------------------------
# non-finite values never reach a checkpoint, and the messages say what exists

def test_non_finite_config_values_are_refused(tmp_path, capsys):
    from mnist_diffusion.config import ConfigError, RunConfig
    for bad in ("NaN", "Infinity"):
        with pytest.raises(ConfigError, match="train.grad_clip must be a finite number"):
            RunConfig.from_json('{"train": {"grad_clip": %s}}' % bad)
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"grad_clip": NaN}}')
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 2
    assert "grad_clip must be a finite number" in _err(capsys)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\x89\xff\x00binary")
    assert main(["train", "--config", str(binary), "--dry-run"]) == 2
    assert f"--config {binary}: not a text file" in _err(capsys)


def test_weights_that_become_non_finite_are_never_saved(tmp_path, monkeypatch):
    import mnist_diffusion.training as tr
    real = tr.apply_update

    def poison(state):  # the update of step 4 leaves a NaN in the weights (a finite loss, an inf gradient)
        real(state)
        if state.step == 3:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(tr, "apply_update", poison)
    cfg = tiny_config(max_steps=6, save_interval=2, sample_interval=1000)
    with pytest.raises(tr.NonFiniteLoss, match="non-finite at step 4.*last good checkpoint"):
        tr.train(finished(cfg), synthetic_split(), tmp_path, progress=False, log=lambda _m: None)
    ck = ckpt_io.load(tmp_path / "checkpoints/last.pt")
    assert ck["step"] == 2 and all(bool(torch.isfinite(v).all()) for v in ck["model"].values())


def test_the_nan_message_says_when_no_checkpoint_exists(tmp_path, monkeypatch):
    import mnist_diffusion.training as tr
    real = tr.diffusion_loss
    monkeypatch.setattr(tr, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(tr.NonFiniteLoss, match="step 1; no checkpoint had been written yet"):
        tr.train(finished(tiny_config(max_steps=3)), synthetic_split(), tmp_path, progress=False, log=lambda _m: None)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


# ---------------------------------------------------------------------------------------------
# nothing hangs, and untrusted files are refused before they are decoded

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
@pytest.mark.system
def test_a_fifo_among_the_samples_is_refused_not_read(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_png(np.zeros((28, 28), np.uint8), folder / "a.png")
    os.mkfifo(folder / "b.png")
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "evaluate", "--samples", str(folder), "--dataset",
                        "mnist"], capture_output=True, text=True, timeout=60)  # it used to block on the read
    assert r.returncode == 2 and "b.png: not a regular file" in r.stderr


@pytest.mark.system
def test_sigterm_during_a_long_preview_stops_within_seconds(env, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    p = subprocess.Popen(train_cmd(run, env, "--max-steps", "50", "--save-interval", "1", "--sample-interval", "1",
                              "--num-samples", "10000"), env=env["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # the first preview alone takes minutes
    try:
        _stops_within_seconds(p, run)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _stops_within_seconds(p, run):
    deadline = time.time() + 120
    while not (run / "checkpoints/last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the preview
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.time() - t0 < 15 and p.returncode == 143, err
    assert "resume with" in err.strip().splitlines()[-1]
    assert ckpt_io.load(run / "checkpoints/last.pt")["step"] == 1


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_lying_or_huge_images_are_refused_by_name(tmp_path):
    from mnist_diffusion.images import load_images, npz_array, open_image
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(100_000, 100_000, zlib.compress(b"\x00" * 100)))
    with pytest.raises(ValueError, match="bomb.png: the image claims"):
        open_image(bomb)
    short = tmp_path / "short" / "a.png"  # a real 28x28 PNG, cut short
    short.parent.mkdir()
    full = _png(28, 28, zlib.compress(bytes(range(256)) * 4))
    short.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="a.png: not a readable image"):
        load_images(short.parent)
    claims = tmp_path / "claims.npz"  # a header announcing 10^10 images over a few bytes
    _lying_npz(claims, (10**10, 28, 28))
    with pytest.raises(ValueError, match=r"claims.npz: 'images' claims uint8 \(10000000000, 28, 28\)"):
        npz_array(claims, "images")
    # a header that claims fewer (or other) elements than the data holds: still the file's name
    small = tmp_path / "small.npz"
    _lying_npz(small, (5, 28, 28))
    with pytest.raises(ValueError, match=r"small.npz: not a readable npz"):
        npz_array(small, "images")


def _lying_npz(path, shape) -> None:
    """An npz whose images.npy header claims `shape` (uint8) over 100 zero bytes."""
    import io
    import zipfile
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 28, 28), np.uint8))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue() + b"\x00" * 100)


def test_counts_are_bounded_before_any_work(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _sample(checkpoints["uncond"], "--num-images", "10000000000")
    assert "at most 1,000,000" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", checkpoints["uncond"], "--num-images", "1000000", "--nrow", "1",
                 "--output", str(tmp_path / "g.png"), "--no-progress"]) == 2
    assert "choose another --nrow, or write the images with --npz" in _err(capsys)
    assert main(["train", "--base-dim", "40000", "--dry-run"]) == 2
    assert "model.base_dim 40000 is too large" in _err(capsys)
    assert main(["train", "--num-samples", "200000", "--dry-run"]) == 2
    assert "train.num_samples 200000 is too large" in _err(capsys)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# absurd requests are refused, surprising ones are said

@pytest.mark.parametrize("extra, words", [
    (["--label", "3", "--guidance", "1e300"], "guidance 1e+300 is outside [0, 100]"),
    (["--eta", "1e30"], "eta 1e+30 is outside [0, 1]"),
    (["--eta", "2"], "eta 2.0 is outside [0, 1] for ddim (0: deterministic, 1: as stochastic as DDPM; above 1 only dpmpp)"),
    (["--steps", "5000"], "steps 5000: the model has only T = 20 timesteps"),
])
def test_absurd_sampler_settings_are_refused(checkpoints, tmp_path, capsys, extra, words):
    argv = ["sample", "--checkpoint", checkpoints["cond"], "--sampler", "ddim", "--num-images", "2",
            "--output", str(tmp_path / "s.png"), "--no-progress", *extra]
    assert main(argv) == 2
    assert words in _err(capsys) and not (tmp_path / "s.png").exists()


def test_guidance_that_overflows_is_an_error_not_black_images(checkpoints, tmp_path, capsys, monkeypatch):
    from mnist_diffusion import schedule
    monkeypatch.setattr(schedule, "guidance_mix", lambda c, u, w: u + 1e39 * (c - u))  # what W = 1e39 did
    import mnist_diffusion.denoiser as d
    monkeypatch.setattr(d, "guidance_mix", schedule.guidance_mix)
    assert _sample(checkpoints["cond"], "--label", "3", "--guidance", "1", "--output", str(tmp_path / "s.png")) == 2
    assert "non-finite values" in _err(capsys) and not (tmp_path / "s.png").exists()


def test_a_model_scored_against_another_dataset_says_so(checkpoints, tmp_path, capsys, mnist, fashion):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", checkpoints["uncond"], "--dataset", "fashion_mnist", "--num-samples",
                 "8", "--noise-mse-images", "8", "--sampler", "ddim", "--steps", "2", "--no-progress",
                 "--json", str(out)]) == 0
    assert "was trained on mnist; its images are scored against the fashion_mnist" in capsys.readouterr().err
    assert json.loads(out.read_text())["warning"] == "the model was trained on mnist, scored against fashion_mnist"


def test_the_resume_key_hashes_the_bytes_that_were_loaded(checkpoints, tmp_path):
    import hashlib
    import shutil

    from mnist_diffusion import load
    from mnist_diffusion.partial import request
    from mnist_diffusion.sampling import plan
    ck = tmp_path / "model.pt"
    shutil.copyfile(checkpoints["uncond"], ck)
    original = hashlib.sha256(ck.read_bytes()).hexdigest()
    diff = load(ck, device="cpu")
    shutil.copyfile(checkpoints["cond"], ck)  # replaced after loading: the key must not change with it
    key = request(diff, 4, plan(diff), None, 0, 4)["checkpoint_sha256"]
    assert key == original != hashlib.sha256(ck.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# inputs that would hang or explode (issue 36)

def _within(seconds, fn, *args):
    """fn(*args) in a thread: its result, or a failure if it is still blocked after `seconds`."""
    import threading
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("rc", fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    return box["rc"]


def test_a_fifo_as_checkpoint_autoguide_or_folder_weights_is_refused_not_read(checkpoints, tmp_path, capsys):
    import os
    import shutil
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    assert _within(30, _sample, str(fifo), "--output", str(tmp_path / "a.png")) == 2
    assert "not a regular file" in _err(capsys)
    assert _within(30, _sample, checkpoints["cond"], "--label", "1", "--guidance", "1", "--autoguide", str(fifo),
                   "--output", str(tmp_path / "b.png")) == 2
    assert "not a regular file" in _err(capsys)
    folder = tmp_path / "folder"
    assert main(["export", "--checkpoint", checkpoints["cond"], "--output", str(folder), "--no-samples"]) == 0
    capsys.readouterr()
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    assert _within(30, _sample, str(folder), "--output", str(tmp_path / "c.png")) == 2
    assert "not a regular file" in _err(capsys)
    shutil.rmtree(folder)
    assert not any((tmp_path / n).exists() for n in ("a.png", "b.png", "c.png"))


def test_a_deeply_nested_config_is_one_line(checkpoints, tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "c.json").write_text(deep)
    assert main(["train", "--config", str(tmp_path / "c.json"), "--output-dir", str(tmp_path / "run")]) == 2
    assert "nested too deeply" in _err(capsys)
    folder = tmp_path / "folder"
    assert main(["export", "--checkpoint", checkpoints["cond"], "--output", str(folder), "--no-samples"]) == 0
    capsys.readouterr()
    (folder / "config.json").write_text('{"model": ' + deep + "}")
    assert _sample(str(folder), "--output", str(tmp_path / "s.png")) == 2
    err = _err(capsys)
    assert "nested too deeply" in err and "please report" not in err


def test_a_model_folder_without_its_export_entry_is_refused(checkpoints, tmp_path, capsys):
    """The export entry carries the weights' SHA-256: without it the weights would load unchecked."""
    import json
    folder = tmp_path / "folder"
    assert main(["export", "--checkpoint", checkpoints["cond"], "--output", str(folder), "--no-samples"]) == 0
    capsys.readouterr()
    raw = json.loads((folder / "config.json").read_text())
    for bad in ({k: v for k, v in raw.items() if k != "export"}, {**raw, "export": {**raw["export"], "sha256": "x"}}):
        (folder / "config.json").write_text(json.dumps(bad))
        assert _sample(str(folder), "--output", str(tmp_path / "s.png")) == 2
        assert "export" in _err(capsys)
