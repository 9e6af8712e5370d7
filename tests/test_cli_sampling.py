"""CLI smoke tests for sampling: each sampler, --label/--guidance, their one-line errors, interpolate.

Checkpoints come from a few training steps of a tiny model on synthetic images, so these tests
need no dataset; they check that the commands run and write what they say, not image quality.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mnist_diffusion.cli import main
from mnist_diffusion.images import save_npz

from conftest import synthetic_split

CELL = 28 + 2  # grid cell: image plus padding


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*argv):
    return main([*argv, "--device", "cpu", "--precision", "fp32", "--no-progress"]
                if argv[0] == "sample" else [*argv, "--device", "cpu"])


def png_size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_sample_each_sampler(checkpoints, tmp_path, sampler, capsys):
    out = tmp_path / "s.png"
    assert run_cli("sample", "--checkpoint", checkpoints["uncond"], "--sampler", sampler, "--steps", "3",
                   "--eta", "0.5", "--num-images", "3", "--nrow", "3", "--output", str(out),
                   "--npz", str(tmp_path / "s.npz")) == 0
    assert png_size(out) == (2 * (3 * CELL + 2), 2 * (CELL + 2))
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (3, 28, 28) and z["images"].dtype == np.uint8


def test_interrupted_npz_run_continues_to_the_same_bytes(checkpoints, tmp_path, monkeypatch, capsys):
    from mnist_diffusion import partial
    base = ["sample", "--checkpoint", checkpoints["cond"], "--label", "all", "--nrow", "3", "--guidance", "1",
            "--sampler", "ddim", "--steps", "3", "--batch-size", "4"]
    assert run_cli(*base, "--output", str(tmp_path / "full.png"), "--npz", str(tmp_path / "full.npz")) == 0

    real_save, calls = partial.PartialImages.save, []

    def save_then_stop(self, images):  # Ctrl-C after the second of eight batches
        real_save(self, images)
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(partial.PartialImages, "save", save_then_stop)
    out = tmp_path / "part.npz"
    assert run_cli(*base, "--output", str(tmp_path / "part.png"), "--npz", str(out)) == 130
    assert calls == [4, 8] and not out.exists()
    left = list(tmp_path.glob(".part.npz.partial-*.npz"))
    assert len(left) == 1
    monkeypatch.setattr(partial.PartialImages, "save", real_save)
    capsys.readouterr()
    assert run_cli(*base, "--output", str(tmp_path / "part.png"), "--npz", str(out)) == 0
    assert "8 of 30 images already drawn" in capsys.readouterr().err
    assert out.read_bytes() == (tmp_path / "full.npz").read_bytes()
    assert (tmp_path / "part.png").read_bytes() == (tmp_path / "full.png").read_bytes()
    assert not left[0].exists()  # removed once the npz is written
    # another seed does not pick up this request's batches
    capsys.readouterr()
    assert run_cli(*base, "--seed", "1", "--output", str(tmp_path / "s1.png"), "--npz", str(tmp_path / "s1.npz")) == 0
    assert "already drawn" not in capsys.readouterr().err


@pytest.mark.parametrize("which, hint", [("cond", True), ("uncond", False)])
def test_unlabelled_sampling_of_a_conditional_model_hints_at_labels(checkpoints, tmp_path, capsys, which, hint):
    assert run_cli("sample", "--checkpoint", checkpoints[which], "--sampler", "ddim", "--steps", "2",
                   "--num-images", "2", "--output", str(tmp_path / "s.png")) == 0
    assert ("--label all" in capsys.readouterr().err) == hint


def test_sample_label_all_is_one_row_per_class(checkpoints, tmp_path):
    out = tmp_path / "all.png"
    assert run_cli("sample", "--checkpoint", checkpoints["cond"], "--sampler", "ddim", "--steps", "2",
                   "--label", "all", "--nrow", "2", "--guidance", "1.5", "--output", str(out)) == 0
    assert png_size(out) == (2 * (2 * CELL + 2), 2 * (10 * CELL + 2))


def test_sample_label_all_with_intermediate_steps_and_spacing(checkpoints, tmp_path):
    out, inter = tmp_path / "a.png", tmp_path / "steps"
    assert run_cli("sample", "--checkpoint", checkpoints["cond"], "--sampler", "ddim", "--steps", "4",
                   "--spacing", "quadratic", "--label", "all", "--nrow", "1", "--output", str(out),
                   "--show-intermediate", str(inter), "--intermediate-steps", "19,0") == 0
    assert png_size(inter / "step_0019.png") == png_size(out) == (2 * (CELL + 2), 2 * (10 * CELL + 2))


def test_sample_one_label_with_guidance(checkpoints, tmp_path, executed_plans):
    from mnist_diffusion.diffusion import Diffusion
    from mnist_diffusion.sampling import options_for, plan
    model = Diffusion.load(checkpoints["cond"], device="cpu")
    outs = []
    for w in ["0", "3"]:
        out = tmp_path / f"g{w}.npz"
        assert run_cli("sample", "--checkpoint", checkpoints["cond"], "--sampler", "dpmpp", "--steps", "3",
                       "--label", "7", "--guidance", w, "--num-images", "2", "--output",
                       str(tmp_path / "g.png"), "--npz", str(out)) == 0
        outs.append(np.load(out)["images"])
    assert outs[0].shape == (2, 28, 28)
    # the command ran the planner's plan: the model's own options under its flags
    assert executed_plans == [plan(model, options_for(model, labelled=True, sampler="dpmpp", steps=3, guidance=w))
                              for w in (0.0, 3.0)]


@pytest.mark.parametrize("which,args,message", [
    ("cond", ["--label", "10"], "classes 0..9"),
    ("uncond", ["--label", "1"], "unconditional"),
    ("cond", ["--guidance", "2"], "--guidance needs --label"),
    ("cond", ["--label", "all", "--num-images", "5"], "--nrow"),
    ("uncond", ["--autoguide", "CKPT_cond", "--guidance", "1"], "same conditioning"),
    ("uncond", ["--autoguide", "CKPT_uncond"], "--autoguide needs --guidance"),
    ("uncond", ["--autoguide", "missing.pt", "--guidance", "1"], "missing.pt"),
    ("cond", ["--label", "7", "--guidance", "1", "--guidance-interval", "5,0.3"], "guidance interval"),
])
def test_sample_label_errors_are_one_line(checkpoints, tmp_path, capsys, which, args, message):
    out = tmp_path / "x.png"
    args = [checkpoints[a[5:]] if a.startswith("CKPT_") else a for a in args]
    assert run_cli("sample", "--checkpoint", checkpoints[which], "--steps", "2", "--sampler", "ddim",
                   "--output", str(out), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_autoguided_sampling_through_the_cli(checkpoints, tmp_path):
    """--autoguide: an unconditional model guided by another (here: itself, which must change
    nothing, and the conditional checkpoint's run is not needed), no --label."""
    base = ["sample", "--checkpoint", checkpoints["uncond"], "--sampler", "ddim", "--steps", "3",
            "--num-images", "3", "--output", str(tmp_path / "a.png")]
    assert run_cli(*base, "--npz", str(tmp_path / "plain.npz")) == 0
    assert run_cli(*base, "--autoguide", checkpoints["uncond"], "--guidance", "2",
                   "--npz", str(tmp_path / "self.npz")) == 0
    assert np.array_equal(np.load(tmp_path / "plain.npz")["images"], np.load(tmp_path / "self.npz")["images"])


def test_sample_label_must_be_a_class_or_all(checkpoints):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--checkpoint", checkpoints["cond"], "--label", "seven"])
    assert e.value.code == 2


@pytest.mark.parametrize("value", ["0.3", "a,b", "1,2,3", "nan,1"])
def test_guidance_interval_must_be_two_numbers(checkpoints, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--checkpoint", checkpoints["cond"], "--guidance-interval", value])
    assert e.value.code == 2 and "LO,HI" in capsys.readouterr().err


def test_interpolate_between_seeds(checkpoints, tmp_path, capsys):
    out, gif = tmp_path / "i.png", tmp_path / "i.gif"
    assert run_cli("interpolate", "--checkpoint", checkpoints["uncond"], "--seeds", "3,4", "--frames", "4",
                   "--steps", "3", "--output", str(out), "--gif", str(gif)) == 0
    assert png_size(out) == (2 * (4 * CELL + 2), 2 * (CELL + 2))
    with Image.open(gif) as im:
        assert im.n_frames == 4 + 2  # there and back: 0 1 2 3 2 1


def test_interpolate_between_inverted_real_images(checkpoints, tmp_path, capsys):
    src = tmp_path / "real.npz"
    save_npz(synthetic_split(3, seed=1).images, src)
    out = tmp_path / "r.png"
    assert run_cli("interpolate", "--checkpoint", checkpoints["cond"], "--real", "0,2", "--images", str(src),
                   "--frames", "3", "--steps", "3", "--output", str(out)) == 0
    assert "round trip" in capsys.readouterr().out
    assert png_size(out) == (2 * (3 * CELL + 2), 2 * (CELL + 2))
    assert run_cli("interpolate", "--checkpoint", checkpoints["cond"], "--real", "0,3", "--images", str(src),
                   "--output", str(out)) == 2
    assert "out of range" in capsys.readouterr().err


def test_show_intermediate_with_respaced_ddpm_writes_every_requested_step(checkpoints, tmp_path, capsys):
    # DDPM with fewer --steps than T is respaced: it visits 5 of the 20 timesteps, and the grids are
    # those nearest to the ones asked for (the CLI used to keep only exact matches: here just t = 19)
    inter = tmp_path / "steps"
    assert run_cli("sample", "--checkpoint", checkpoints["uncond"], "--sampler", "ddpm", "--steps", "5",
                   "--num-images", "2", "--output", str(tmp_path / "s.png"), "--show-intermediate", str(inter),
                   "--intermediate-steps", "19,10,3") == 0
    from mnist_diffusion.samplers import visited_timesteps
    from mnist_diffusion.schedule import make_schedule
    visited = visited_timesteps("ddpm", make_schedule("cosine", 20), 5, "uniform")
    nearest = sorted({min(visited, key=lambda v: abs(v - w)) for w in (19, 10, 3)}, reverse=True)
    assert len(nearest) == 3
    assert sorted(p.name for p in inter.glob("step_*.png")) == sorted(f"step_{t:04d}.png" for t in nearest)
    assert f"columns: t = {', '.join(map(str, nearest))}, final" in capsys.readouterr().out


def test_a_checkpoint_without_a_sampling_section_draws_dpmpp_20(tmp_path, capsys):
    """The golden checkpoint predates the sampling section: it gets the library's default."""
    from pathlib import Path
    ck = str(Path(__file__).parent / "golden" / "tiny_cond.pt")
    for name, extra in (("a", []), ("b", ["--sampler", "dpmpp", "--steps", "20"])):
        assert run_cli("sample", "--checkpoint", ck, "--label", "2", "--num-images", "2", *extra,
                       "--output", str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz")) == 0
    a, b = (np.load(tmp_path / f"{k}.npz")["images"] for k in "ab")
    assert a.tobytes() == b.tobytes()


def test_sample_help_shows_the_everyday_options_and_help_all_the_research_ones(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    short = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", "--help-all"])
    full = capsys.readouterr().out
    flags = [ln.split()[0] for ln in short.split("options:")[1].splitlines() if ln.startswith("  -")]
    assert len(flags) <= 20, flags
    for research in ("--corrector", "--spacing", "--guidance-interval", "--no-first-order-switches", "--eta"):
        assert research not in short and research in full
    for everyday in ("--pretrained", "--label", "--guidance", "--sampler", "--steps", "--output"):
        assert everyday in short


def test_a_student_without_a_label_is_one_line_naming_the_flags(tmp_path, capsys):
    """A distilled student (the shipped mnist-fast: no training here) sampled without --label: the one
    line says what it needs, with no hint about labels and guidance printed first; with --guidance
    the message names the flag, as the Python API names its keyword."""
    out = tmp_path / "x.png"
    for extra in ([], ["--guidance", "1"]):
        assert run_cli("sample", "--pretrained", "mnist-fast", "--output", str(out), *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs a label" in err and "--label" in err, err
        assert "no guidance" in err and "label=" not in err, err
    assert run_cli("sample", "--pretrained", "mnist-fast", "--label", "3", "--guidance", "1", "--output",
                   str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leave --guidance out" in err, err
    assert not out.exists()
