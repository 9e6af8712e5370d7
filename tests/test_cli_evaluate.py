"""`mnist-diffusion evaluate` end to end: --samples (npz and PNG folder), --checkpoint and --run
with a tiny model, and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_diffusion.cli import main
from mnist_diffusion.data import Split
from mnist_diffusion.images import save_npz, save_png

KEYS = {"n", "fid", "fid_floor", "recognizable", "class_histogram", "class_entropy", "precision", "recall"}


def _run_json(argv, path):
    assert main(argv + ["--json", str(path), "--no-progress"]) == 0
    return json.loads(path.read_text())


def test_samples_npz_and_png_folder_agree(mnist, tmp_path):
    imgs = mnist["test"].images[:40]
    save_npz(imgs, tmp_path / "s.npz")
    for i, im in enumerate(imgs):
        save_png(im, tmp_path / "png" / f"{i:03d}.png")
    a = _run_json(["evaluate", "--samples", str(tmp_path / "s.npz"), "--dataset", "mnist"], tmp_path / "a.json")
    b = _run_json(["evaluate", "--samples", str(tmp_path / "png"), "--dataset", "mnist"], tmp_path / "b.json")
    assert KEYS <= set(a)
    assert a["n"] == 40 and sum(a["class_histogram"]) == 40
    a.pop("samples"), b.pop("samples")
    assert a == b


def test_samples_with_a_channel_axis(mnist, tmp_path):
    save_npz(mnist["test"].images[:20, None], tmp_path / "s.npz")
    assert _run_json(["evaluate", "--samples", str(tmp_path / "s.npz"), "--dataset", "mnist"],
                     tmp_path / "r.json")["n"] == 20


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--dataset", "mnist"], "exactly one of"),
    (["evaluate", "--samples", "x.npz"], "--dataset"),
    (["evaluate", "--samples", "missing.npz", "--dataset", "mnist"], "does not exist"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_wrong_image_size_is_one_line(tmp_path, capsys):
    save_npz(np.zeros((5, 32, 32), np.uint8), tmp_path / "big.npz")
    assert main(["evaluate", "--samples", str(tmp_path / "big.npz"), "--dataset", "mnist"]) == 2
    assert "expected (N, 28, 28)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist):
    from conftest import finished, tiny_config
    from mnist_diffusion.training import train
    run = tmp_path_factory.mktemp("run")
    cfg = tiny_config(max_steps=2, save_interval=1, sample_interval=100)
    train(finished(cfg), Split(mnist["train"].images[:64], mnist["train"].labels[:64]), run, progress=False,
          log=lambda s: None)
    return run


def test_evaluate_checkpoint(tiny_run, tmp_path):
    argv = ["evaluate", "--checkpoint", str(tiny_run / "checkpoints" / "last.pt"), "--num-samples", "12",
            "--sampler", "ddim", "--steps", "5", "--noise-mse-images", "40", "--seed", "3"]
    r = _run_json(argv, tmp_path / "r.json")
    assert KEYS <= set(r) and r["n"] == 12 and r["dataset"] == "mnist"
    assert r["seed"] == 3 and r["sampler"]["sampler"] == "ddim" and r["sampler"]["steps"] == 5
    assert r["noise_mse"]["n"] == 40 and len(r["noise_mse"]["bands"]) == 4
    assert sum(b["count"] for b in r["noise_mse"]["bands"]) == 40


def test_evaluate_saves_its_images_and_continues_a_stopped_run(tiny_run, tmp_path, monkeypatch):
    from mnist_diffusion import partial
    ck = str(tiny_run / "checkpoints" / "last.pt")
    argv = ["evaluate", "--checkpoint", ck, "--num-samples", "12", "--batch-size", "4", "--sampler", "ddim",
            "--steps", "3", "--noise-mse-images", "8", "--device", "cpu", "--npz", str(tmp_path / "e.npz")]
    full = _run_json(argv, tmp_path / "full.json")
    # the saved images are exactly the scored ones: scoring them again gives the same FID
    again = _run_json(["evaluate", "--samples", str(tmp_path / "e.npz"), "--dataset", "mnist"], tmp_path / "a.json")
    assert again["fid"] == full["fid"] and again["n"] == 12

    real_save = partial.PartialImages.save

    def stop(self, images):
        real_save(self, images)
        raise KeyboardInterrupt

    monkeypatch.setattr(partial.PartialImages, "save", stop)
    argv[-1] = str(tmp_path / "f.npz")
    assert main(argv + ["--no-progress"]) == 130
    monkeypatch.setattr(partial.PartialImages, "save", real_save)
    resumed = _run_json(argv, tmp_path / "resumed.json")
    assert (tmp_path / "f.npz").read_bytes() == (tmp_path / "e.npz").read_bytes()
    assert resumed["fid"] == full["fid"] and not list(tmp_path.glob(".f.npz.partial-*"))


def test_evaluate_npz_needs_a_checkpoint(tiny_run, capsys):
    assert main(["evaluate", "--run", str(tiny_run), "--npz", "x.npz"]) == 2
    assert "--npz saves the images generated from --checkpoint" in capsys.readouterr().err


def test_evaluate_run(tiny_run):
    assert main(["evaluate", "--run", str(tiny_run), "--num-samples", "8", "--sampler", "ddim", "--steps", "3",
                 "--noise-mse-images", "16", "--no-progress"]) == 0
    rows = json.loads((tiny_run / "metrics.json").read_text())["checkpoints"]
    assert [r["step"] for r in rows] == [1, 2]
    minutes = [r["train_minutes"] for r in rows]  # from loss.csv, for FID against wall-clock time
    assert 0 <= minutes[0] <= minutes[1]
    assert (tiny_run / "metrics.png").stat().st_size > 0


def test_evaluate_conditional_checkpoint_reports_label_accuracy(mnist, tmp_path, monkeypatch):
    from conftest import finished, tiny_config
    from mnist_diffusion.training import train
    cfg = tiny_config(max_steps=1, sample_interval=100).replace(model={"num_classes": 10})
    train(finished(cfg), Split(mnist["train"].images[:32], mnist["train"].labels[:32]), tmp_path / "run",
          progress=False, log=lambda s: None)
    argv = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"),
            "--num-samples", "10", "--sampler", "ddim", "--steps", "2", "--noise-mse-images", "10"]
    r = _run_json(argv, tmp_path / "r.json")
    assert 0.0 <= r["label_accuracy"] <= 1.0
    # the model trained here records the recommended guidance (0.5 on labels): evaluate draws with it
    assert r["sampler"]["labels"].startswith("balanced") and r["sampler"]["guidance"] == 0.5
    import mnist_diffusion.evaluation as evaluation
    seen, real = [], evaluation.generate

    def spy(diff, n, options, **kw):  # a 1-step model's images saturate either way: check what reaches the sampler
        seen.append((options.guidance, kw["labels"].tolist()))
        return real(diff, n, options, **kw)
    monkeypatch.setattr(evaluation, "generate", spy)
    guided = _run_json(argv + ["--guidance", "1.5"], tmp_path / "g.json")
    assert guided["sampler"]["guidance"] == 1.5
    assert seen == [(1.5, [i % 10 for i in range(10)])]
    assert "first_order_switches" not in guided["sampler"]  # ddim: no such steps, nothing recorded
    # dpmpp with its default guidance interval records whether it stepped first order at the switches
    dpmpp = argv[:5] + ["--sampler", "dpmpp", "--steps", "4", "--noise-mse-images", "10", "--guidance", "1.5"]
    assert _run_json(dpmpp, tmp_path / "d.json")["sampler"]["first_order_switches"] is True
    plain = _run_json(dpmpp + ["--no-first-order-switches"], tmp_path / "p.json")
    assert plain["sampler"]["first_order_switches"] is False and plain["sampler"]["guidance_interval"] == [0.3, 5.0]
    assert plain["sampler"]["corrector"] == 1 and "corrector" not in guided["sampler"]  # dpmpp's default with guidance
    assert _run_json(dpmpp + ["--corrector", "0"], tmp_path / "c.json")["sampler"]["corrector"] == 0


def test_guidance_errors_are_one_line(tiny_run, tmp_path, capsys):
    uncond = str(tiny_run / "checkpoints" / "last.pt")
    assert main(["evaluate", "--checkpoint", uncond, "--guidance", "1", "--num-samples", "4"]) == 2
    assert "unconditional model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["evaluate", "--samples", str(tmp_path / "x.npz"), "--dataset", "mnist", "--guidance", "1"]) == 2
    assert "--samples scores given images" in capsys.readouterr().err.strip().splitlines()[-1]


def _exit_code_within(seconds, argv, fifo):
    """main(argv) in a thread: its exit code, or a failure if it still blocks after `seconds` (then
    the FIFO gets a writer that closes at once, so the blocked read ends and the thread with it)."""
    import os
    import threading
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("rc", main(argv)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # blocked in open(), not read(): nothing to release
        raise AssertionError(f"{' '.join(argv[:3])}: still blocked after {seconds} s")
    return box["rc"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_as_samples_or_evaluator_is_refused_not_read(tmp_path, capsys):
    """A FIFO would block the read forever: --samples and --evaluator refuse it (any non-regular
    file) in one line naming the option and the file, before anything is loaded."""
    import os
    fifo = tmp_path / "s.npz"
    os.mkfifo(fifo)
    save_npz(np.zeros((4, 28, 28), np.uint8), tmp_path / "ok.npz")
    for argv, option in [(["--samples", str(fifo)], "--samples"),
                         (["--samples", str(tmp_path / "ok.npz"), "--evaluator", str(fifo)], "--evaluator")]:
        assert _exit_code_within(20, ["evaluate", *argv, "--dataset", "mnist", "--no-progress"], fifo) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{option} {fifo}: not a regular file" in err, err
    # the library refuses it too, whoever calls it
    from mnist_diffusion.evaluator import load_custom_evaluator
    from mnist_diffusion.images import load_sample_set
    with pytest.raises(ValueError, match="not a regular file"):
        load_sample_set(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_custom_evaluator(fifo)


def test_evaluate_names_the_flag_where_the_api_names_its_keyword(mnist, capsys):
    """The shared sampling check words its error for the caller: --guidance here, guidance= from Python."""
    assert main(["evaluate", "--pretrained", "mnist-fast", "--guidance", "1", "--num-samples", "4",
                 "--noise-mse-images", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "leave --guidance out" in err and "Traceback" not in err, err
