"""The command line, end to end, with tiny models: train -> sample on both datasets, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_diffusion.cli import main

TINY = ["--base-dim", "8", "--channel-mults", "1,2", "--num-res-blocks", "1", "--timesteps", "40",
        "--batch-size", "16", "--subset", "64", "--max-steps", "6", "--sample-interval", "3",
        "--save-interval", "3", "--num-samples", "4", "--device", "cpu", "--no-progress", "--precision", "fp32"]


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_train_then_sample(tmp_path, dataset, request):
    request.getfixturevalue("mnist" if dataset == "mnist" else "fashion")
    run = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--output-dir", str(run), *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["dataset"] == dataset and cfg["model"]["base_dim"] == 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt", "step_0000006.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]

    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    args = ["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--num-images", "5", "--seed", "3",
            "--output", str(out), "--npz", str(npz), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    imgs = np.load(npz)["images"]
    assert imgs.shape == (5, 28, 28) and imgs.dtype == np.uint8
    assert Image.open(out).size[0] > 28
    # same seed -> identical bytes, also with another batch size
    out2, npz2 = tmp_path / "grid2.png", tmp_path / "s2.npz"
    args2 = [a if a not in (str(out), str(npz)) else (str(out2) if a == str(out) else str(npz2)) for a in args]
    assert main(args2 + ["--batch-size", "2"]) == 0
    assert np.array_equal(np.load(npz2)["images"], imgs)
    assert main(args2) == 0
    assert out.read_bytes() == out2.read_bytes()


def test_resume_auto_continues_the_run(tmp_path, mnist):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY]) == 0
    more = [a if a != "6" else "9" for a in TINY]
    assert main(["train", "--output-dir", str(run), "--resume", "auto", *more]) == 0
    from mnist_diffusion.checkpoint import load
    assert load(run / "checkpoints/last.pt")["step"] == 9


def test_resume_rejects_a_changed_architecture(tmp_path, mnist, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY]) == 0
    before = (run / "checkpoints/last.pt").read_bytes()
    changed = [a if a != "8" else "16" for a in TINY]
    assert main(["train", "--output-dir", str(run), "--resume", "auto", *changed]) == 2
    assert "--base-dim 16 differs from the checkpoint's model.base_dim=8" in capsys.readouterr().err
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_show_intermediate(tmp_path, mnist):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY]) == 0
    inter = tmp_path / "inter"
    assert main(["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--num-images", "3", "--no-progress",
                 "--output", str(tmp_path / "g.png"), "--show-intermediate", str(inter), "--sampler", "ddpm",
                 "--intermediate-steps", "39,20,0"]) == 0
    assert sorted(p.name for p in inter.iterdir()) == ["step_0000.png", "step_0020.png", "step_0039.png", "strip.png"]
    w, h = Image.open(inter / "strip.png").size
    assert w > h  # 4 columns (three steps + final) x 3 rows


def test_min_snr_gamma_is_set_by_train_and_fixed_by_the_run(tmp_path, mnist, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--min-snr-gamma", "5", *TINY]) == 0
    from mnist_diffusion.checkpoint import load
    assert load(run / "checkpoints/last.pt")["config"]["train"]["min_snr_gamma"] == 5.0
    before = (run / "checkpoints/last.pt").read_bytes()
    capsys.readouterr()
    # the loss a run optimises cannot change halfway through it
    assert main(["train", "--output-dir", str(run), "--resume", "auto", "--min-snr-gamma", "0", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--min-snr-gamma 0.0 differs from the checkpoint's train.min_snr_gamma=5.0" in err
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_v_prediction_trains_samples_and_evaluates(tmp_path, mnist):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--prediction", "v", *TINY]) == 0
    from mnist_diffusion import load
    from mnist_diffusion.checkpoint import load as load_checkpoint
    assert load_checkpoint(run / "checkpoints/last.pt")["config"]["model"]["prediction"] == "v"
    assert load(run / "checkpoints/last.pt").prediction == "v"
    for sampler in ("ddpm", "dpmpp"):
        assert main(["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--sampler", sampler, "--steps", "4",
                     "--num-images", "4", "--output", str(tmp_path / f"{sampler}.png"), "--device", "cpu",
                     "--no-progress"]) == 0


def test_flow_objective_trains_and_every_sampler_draws_it(tmp_path, mnist, capsys):
    """--objective flow: the straight path, the velocity target and logit-normal times; drawn by
    Euler and Heun in path time and by the eps samplers through the change of variables."""
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--objective", "flow", "--conditional", *TINY]) == 0
    from mnist_diffusion import load
    from mnist_diffusion.checkpoint import load as load_checkpoint
    cfg = load_checkpoint(run / "checkpoints/last.pt")["config"]
    assert (cfg["model"]["prediction"], cfg["diffusion"]["schedule"], cfg["train"]["t_sampling"]) == \
        ("flow", "flow", "logit-normal")
    diff = load(run / "checkpoints/last.pt")
    euler = diff.sample(6, label=3, seed=1, sampler="euler", steps=6, spacing="uniform")
    assert np.array_equal(euler, diff.sample(6, label=3, seed=1, sampler="euler", steps=6, spacing="uniform"))
    ddim = diff.sample(6, label=3, seed=1, sampler="ddim", steps=6, eta=0.0)  # the same steps, other arithmetic
    assert np.abs(euler.astype(int) - ddim.astype(int)).max() <= 1
    for sampler in ("heun", "dpmpp", "ddpm"):
        assert main(["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--sampler", sampler, "--steps", "4",
                     "--label", "2", "--num-images", "4", "--output", str(tmp_path / f"{sampler}.png"),
                     "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--sampler", "heun", "--eta", "0.5",
                 "--output", str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "heun solves the flow ODE deterministically" in err and "Traceback" not in err
    # explicit options win over the objective's
    assert main(["train", "--objective", "flow", "--schedule", "cosine", "--dry-run",
                 "--output-dir", str(tmp_path / "r")]) == 0
    out = json.loads(capsys.readouterr().out.split("\nrun directory")[0])
    assert (out["model"]["prediction"], out["diffusion"]["schedule"]) == ("flow", "cosine")


def test_dry_run_prints_config(tmp_path, capsys):
    assert main(["train", "--preset", "quick", "--dry-run", "--output-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert '"name": "unet_attn"' in out and '"base_dim": 16' in out and not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, classes", [([], 10), (["--unconditional"], None), (["--conditional"], 10)])
def test_quick_preset_is_conditional_unless_asked_not_to_be(flag, classes, tmp_path, capsys):
    assert main(["train", "--preset", "quick", *flag, "--dry-run", "--output-dir", str(tmp_path / "r")]) == 0
    cfg = json.loads(capsys.readouterr().out.split("\nrun directory")[0])
    assert cfg["model"]["num_classes"] == classes
    assert cfg["train"]["cond_drop_prob"] == 0.2  # the preset's; unused without labels


def test_label_drop_probability_needs_labels(tmp_path, capsys):
    assert main(["train", "--preset", "quick", "--unconditional", "--cond-drop-prob", "0.2", "--dry-run",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "--cond-drop-prob is for class-conditional models" in capsys.readouterr().err


def test_unconditional_cannot_resume_a_conditional_run(tmp_path, mnist, capsys):
    run = tmp_path / "r"
    common = ["--max-steps", "1", "--subset", "32", "--batch-size", "16", "--base-dim", "8", "--num-res-blocks", "1",
              "--timesteps", "20", "--num-samples", "2", "--output-dir", str(run), "--no-progress"]
    assert main(["train", "--preset", "quick", *common]) == 0
    assert main(["train", "--resume", "auto", "--unconditional", *common]) == 2
    assert "--unconditional differs from the checkpoint" in capsys.readouterr().err


def test_resume_with_a_preset_rejects_a_run_of_another_network(tmp_path, mnist, capsys):
    # what `make run` meets in a runs/quick left by a version whose quick preset had no labels
    run = tmp_path / "r"
    common = ["--max-steps", "1", "--subset", "32", "--batch-size", "16", "--num-samples", "2",  # (a small preview)
              "--output-dir", str(run), "--no-progress"]
    assert main(["train", "--preset", "quick", "--unconditional", *common]) == 0
    before = (run / "checkpoints/last.pt").read_bytes()
    assert main(["train", "--preset", "quick", "--resume", "auto", *common]) == 2
    err = capsys.readouterr().err
    assert "is not a --preset quick run: model.num_classes=None (preset: 10)" in err and "Traceback" not in err
    assert (run / "checkpoints/last.pt").read_bytes() == before
    # the same run resumes when the options say what it is, or without --preset
    assert main(["train", "--preset", "quick", "--unconditional", "--resume", "auto", *common]) == 0
    assert main(["train", "--resume", "auto", *common]) == 0


@pytest.mark.parametrize("argv, words", [
    (["train", "--epochs", "0", "--dry-run"], "expected a positive integer"),
    (["train", "--batch-size", "-4", "--dry-run"], "expected a positive integer"),
    (["train", "--lr", "nan", "--dry-run"], "positive finite"),
    (["train", "--timesteps", "99999999999", "--dry-run"], "unreasonably large"),
    (["train", "--timesteps", "1", "--dry-run"], "diffusion.timesteps must be in"),
    (["train", "--min-snr-gamma", "-1", "--dry-run"], "expected a non-negative finite number"),
    (["train", "--model", "nope", "--max-steps", "1", "--subset", "64", "--batch-size", "16"], "unknown model"),
])
def test_bad_options_are_one_line_errors(argv, words, capsys, tmp_path):
    if "--dry-run" not in argv:
        argv = argv + ["--output-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) if "expected" in words or "large" in words or "finite" in words else _noop():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.system
def test_console_script_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "sample", "--checkpoint", str(bad),
                        "--output", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "bad.pt" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "--debug", "sample", "--checkpoint", str(bad),
                        "--output", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_output_dir_is_a_file(tmp_path, mnist, capsys):
    f = tmp_path / "f"
    f.write_text("keep me")
    assert main(["train", "--output-dir", str(f), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_a_fourth_resolution_level_trains_and_too_many_are_refused_up_front(tmp_path, mnist, capsys):
    # 28 -> 14 -> 7 -> 4: the U-Net's upsampling follows the skip it meets (it used to crash at 4 -> 8)
    run = tmp_path / "run"
    deep = [a if a != "1,2" else "1,2,2,2" for a in TINY]
    assert main(["train", "--output-dir", str(run), *deep]) == 0
    assert main(["sample", "--checkpoint", str(run / "checkpoints/last.pt"), "--num-images", "2", "--steps", "2",
                 "--sampler", "ddim", "--output", str(tmp_path / "s.png"), "--device", "cpu", "--no-progress"]) == 0
    # more levels than 28x28 can be halved into: a one-line error at --dry-run, before any work
    too_many = [a if a != "1,2" else "1,1,1,1,1,1" for a in TINY]
    capsys.readouterr()
    assert main(["train", "--output-dir", str(tmp_path / "r2"), "--dry-run", *too_many]) == 2
    err = capsys.readouterr().err
    assert "model.channel_mults has 6 levels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("argv", [[], ["train"], ["sample"], ["evaluate"], ["data"], ["models"], ["interpolate"],
                                  ["benchmark"], ["visualize"], ["visualize", "schedule"], ["visualize", "progress"]])
def test_every_help_prints(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0 and "usage: mnist-diffusion" in capsys.readouterr().out
