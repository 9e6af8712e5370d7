"""Figures and animations (visualize.py, `visualize` and `sample --gif`): each writes a valid PNG
or GIF of the expected size / frame count, without a display."""
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from mnist_diffusion import visualize as viz
from mnist_diffusion.cli import main
from mnist_diffusion.images import label_frame, save_grid


def _digit():
    img = np.zeros((28, 28), dtype=np.uint8)
    img[6:22, 12:16] = 255  # a "1"
    return img


def _png(path, min_w=300, min_h=200):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h
        return im.size


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_figures_write_pngs(tmp_path):
    ts = (0, 100, 999)
    _png(viz.plot_schedule(_digit(), tmp_path / "schedule.png", timesteps=ts), 800, 500)
    w, h = _png(viz.plot_forward(np.stack([_digit()] * 2), tmp_path / "forward.png", row_labels=["1", "1"],
                                 timesteps=ts), 200, 150)
    w6, h6 = _png(viz.plot_forward(np.stack([_digit()] * 6), tmp_path / "forward6.png", timesteps=ts), 200, 150)
    assert h6 > h and abs(w6 - w) < 40  # rows = images, columns = timesteps
    _png(viz.plot_noisers(_digit(), tmp_path / "noisers.png", timesteps=(0, 50, 999), T=1000), 800, 300)
    _png(viz.plot_math(tmp_path / "math.png"), 800, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forward.png", "forward6.png", "math.png",
                                                         "noisers.png", "schedule.png"]  # no temp files left
    with pytest.raises(ValueError):
        viz.plot_forward(np.stack([_digit()]), tmp_path / "bad.png", timesteps=(0, 1000))


def test_gif_timesteps_favour_late_steps():
    visited = list(range(999, -1, -1))
    ts = viz.gif_timesteps(visited, 40)
    assert len(ts) == 40 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert sum(t < 250 for t in ts) > sum(t >= 750 for t in ts) * 2
    assert viz.gif_timesteps([9, 5, 0], 40) == [9, 5, 0]
    assert len(viz.gif_timesteps(list(range(49, -1, -1)), 45)) == 45


def test_label_frame_adds_a_caption_strip():
    out = label_frame(np.zeros((60, 80), dtype=np.uint8), "step 5", height=18)
    assert out.shape == (78, 80) and out.dtype == np.uint8
    assert out[:18].min() == 0 and (out[18:] == 0).all()  # text drawn in the strip, image untouched


def _fake_run(run, steps, size=4):
    rng = np.random.default_rng(0)
    for s in steps:
        save_grid(rng.integers(0, 256, (size, 28, 28), dtype=np.uint8), run / "samples" / f"step_{s:07d}.png")
    (run / "config.json").write_text(json.dumps({"train": {"batch_size": 100, "subset": 1000}}))


def test_progress_gif_frames_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    _fake_run(run, [30, 10, 20])
    assert main(["visualize", "progress", "--run", str(run)]) == 0
    with Image.open(run / "progress.gif") as im:
        assert im.n_frames == 3
        w, h = im.size
    with Image.open(run / "samples" / "step_0000010.png") as g:
        assert w == g.width and h > g.height  # the grid plus a label strip
    assert viz._run_epoch_length(run) == 10
    save_grid(np.zeros((9, 28, 28), dtype=np.uint8), run / "samples" / "step_0000040.png")
    assert main(["visualize", "progress", "--run", str(run)]) == 2
    assert "same size" in capsys.readouterr().err
    assert main(["visualize", "progress", "--run", str(tmp_path / "nope")]) == 2
    assert main(["visualize", "math", "--output", str(tmp_path / "math.jpg")]) == 2
    assert main(["visualize", "math", "--output", str(tmp_path / "m.png")]) == 0


def test_visualize_commands_with_data(tmp_path, mnist):
    for args in (["schedule", "--timesteps", "0,500,999"], ["forward", "--num-images", "2", "--timesteps", "0,999"],
                 ["noisers", "--timesteps", "0,10,999"]):
        out = tmp_path / f"{args[0]}.png"
        assert main(["visualize", *args, "--output", str(out)]) == 0
        _png(out, 200, 150)
    assert main(["visualize", "noisers", "--index", "60000", "--output", str(tmp_path / "x.png")]) == 2


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny network saved as a checkpoint (T = 20): enough to run the samplers."""
    from conftest import tiny_config
    from mnist_diffusion import checkpoint as ckpt_io
    from mnist_diffusion.models import build_model

    cfg = tiny_config().replace(diffusion={"timesteps": 20})
    path = tmp_path_factory.mktemp("run") / "tiny.pt"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "config": cfg.to_dict(), "step": 0,
                         "model": build_model(cfg.model).state_dict()}, path)
    return path




@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler, extra, frames", [("ddim", ["--steps", "8"], 5), ("ddpm", [], 12)])
def test_sample_gif(tmp_path, tiny_checkpoint, sampler, extra, frames):
    gif = tmp_path / "rev.gif"
    rc = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", sampler, *extra, "--num-images", "4",
               "--device", "cpu", "--precision", "fp32", "--no-progress", "--output", str(tmp_path / "s.png"), "--gif", str(gif),
               "--gif-frames", str(frames)])
    assert rc == 0
    with Image.open(gif) as im:
        assert im.n_frames == frames
        assert im.size == (124, 142)  # 2x2 grid of 28 px + 2 px padding, doubled, + an 18 px label
        im.seek(frames - 1)
        last = np.asarray(im.convert("L"))[18:]
    with Image.open(tmp_path / "s.png") as s:  # the final frame is the sample grid itself
        assert np.array_equal(last, np.asarray(s.convert("L")))
    bad = ["sample", "--checkpoint", str(tiny_checkpoint), "--num-images", "1", "--output", str(tmp_path / "b.png")]
    assert main([*bad, "--gif", str(tmp_path / "b.gif"), "--gif-frames", "2"]) == 2
    assert main([*bad, "--gif", str(tmp_path / "b.png")]) == 2


def test_loss_plot_and_centred_smoothing(tmp_path):
    v = np.exp(np.linspace(0, -3, 50))
    assert np.allclose(viz.smooth_centred(v, 7), v)  # a geometric mean does not bend an exponential
    assert viz.smooth_centred(v, 7)[0] == v[0] and viz.smooth_centred(v, 7)[-1] == pytest.approx(v[-1])
    for n in (0, 5, 400):
        csv_path = tmp_path / f"loss{n}.csv"
        lines = ["step,epoch,loss,lr,images_per_s,skipped"]
        lines += [f"{10 * (i + 1)},{(i + 1) / 10:.3f},{0.05 + 1 / (i + 2):.6f},1e-3,100,0" for i in range(n)]
        csv_path.write_text("\n".join(lines) + "\n")
        _png(viz.plot_loss(csv_path, tmp_path / f"loss{n}.png"), 400, 250)
    assert main(["visualize", "loss", "--run", str(tmp_path), "--output", str(tmp_path / "l.png")]) == 2  # no loss.csv
    (tmp_path / "loss.csv").write_text((tmp_path / "loss400.csv").read_text())
    assert main(["visualize", "loss", "--run", str(tmp_path)]) == 0
    _png(tmp_path / "loss.png", 400, 250)


def test_minutes_axis_map_is_linear_past_the_ends_and_invertible():
    from mnist_diffusion.visualize import _interp_linear
    steps, minutes = np.array([400.0, 800.0, 1600.0]), np.array([1.0, 2.0, 4.5])
    v = np.array([0.0, 400.0, 600.0, 1600.0, 2000.0])
    m = _interp_linear(v, steps, minutes)
    assert np.allclose(m, [0.0, 1.0, 1.5, 4.5, 5.75])  # slopes 1/400 before, 2.5/800 after
    assert np.allclose(_interp_linear(m, minutes, steps), v)
