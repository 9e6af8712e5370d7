"""Image editing: RePaint inpainting and SDEdit over any model (samplers.repaint / sdedit,
Diffusion.inpaint / edit, editing.py, the inpaint and edit commands).

The closed-form checks: known pixels come back exactly, strength 0 is the input, strength 1 is
sampling from scratch with the same seed, the RePaint path has the shape of the paper's schedule,
the schedule prefix leaves every coefficient as it was. Tiny random networks; no training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_diffusion.cli import main
from mnist_diffusion.editing import check_mask, load_picture, mask_preset
from mnist_diffusion.samplers import repaint_path, timestep_sequence
from mnist_diffusion.schedule import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
GOLDEN = str(HERE / "golden" / "tiny_cond.pt")  # a fixed tiny conditional checkpoint


def _digits(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("sampler, steps, resample", [("ddpm", None, 1), ("ddpm", 6, 3), ("ddim", 5, 2)])
def test_known_pixels_come_back_exactly(uncond, sampler, steps, resample):  # noqa: F811
    images = _digits()
    mask = mask_preset("bottom", 3)
    out = uncond.inpaint(images, mask, sampler=sampler, steps=steps, resample=resample, jump_length=2, seed=4)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    assert np.array_equal(out[mask > 0], images[mask > 0])
    assert not np.array_equal(out[mask == 0], images[mask == 0])  # the hidden half was drawn, not copied


def test_inpainting_is_seeded_per_image(cond):  # noqa: F811
    images, mask = _digits(4), mask_preset("random", 4, seed=1)
    a = cond.inpaint(images, mask, label=[1, 2, 3, 4], guidance=1.0, sampler="ddim", steps=4, eta=1.0, seed=2,
                     batch_size=4)
    b = cond.inpaint(images, mask, label=[1, 2, 3, 4], guidance=1.0, sampler="ddim", steps=4, eta=1.0, seed=2,
                     batch_size=3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batch size changes only float rounding
    c = cond.inpaint(images, mask, label=[1, 2, 3, 4], guidance=1.0, sampler="ddim", steps=4, eta=1.0, seed=3)
    assert not np.array_equal(a, c)


def test_sdedit_strength_zero_is_the_input_and_one_is_sampling(cond):  # noqa: F811
    images = _digits(5)
    assert cond.edit(images, 0.0).tobytes() == images.tobytes()
    for sampler, steps in (("ddpm", None), ("ddim", 6), ("dpmpp", 5)):
        kw = dict(sampler=sampler, steps=steps, seed=7, label=[0, 1, 2, 3, 4], guidance=0.5)
        assert cond.edit(images, 1.0, **kw).tobytes() == cond.sample(5, **kw).tobytes()
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        cond.edit(images, 1.5)


def test_sdedit_starts_at_the_share_of_the_process_and_steps():
    from mnist_diffusion.samplers import sdedit_plan
    s = make_schedule("cosine", 1000)
    t0, sub, n = sdedit_plan(s, 0.3, 50)
    assert (t0, sub.timesteps, n) == (299, 300, 15)
    assert sdedit_plan(s, 0.5, None)[2] is None  # every timestep of the prefix
    assert sdedit_plan(s, 1.0, 20)[0] == 999


def test_schedule_prefix_keeps_every_coefficient():
    s = make_schedule("cosine", 100)
    p = s.prefix(40)
    assert p.timesteps == 40 and s.prefix(100) is s
    for name in ("betas", "alpha_bar", "posterior_variance", "posterior_mean_coef1", "snr"):
        assert torch.equal(getattr(p, name), getattr(s, name)[:40]), name
    with pytest.raises(ValueError):
        s.prefix(0)


def test_repaint_path_has_the_papers_shape():
    seq = timestep_sequence(make_schedule("linear", 20), None)  # 19 ... 0
    assert repaint_path(seq, 5, 1) == seq + [-1]
    path = repaint_path(seq, 5, 3)
    assert path[0] == 19 and path[-1] == -1
    downs = [(a, b) for a, b in zip(path, path[1:]) if b < a]
    ups = [(a, b) for a, b in zip(path, path[1:]) if b > a]
    assert all(b == a + 5 for a, b in ups)  # each jump goes back one block
    assert len(ups) == 2 * 3 and len(downs) == 20 + 5 * len(ups)  # blocks at 5, 10, 15 redone twice each
    with pytest.raises(ValueError):
        repaint_path(seq, 0, 1)


def test_masks_and_their_errors():
    for name in ("left", "right", "top", "bottom", "center"):
        m = mask_preset(name, 2)
        assert m.shape == (2, 28, 28) and set(np.unique(m)) == {0.0, 1.0}
    assert mask_preset("left")[0, :, :14].sum() == 0 and mask_preset("center")[0, 7:21, 7:21].sum() == 0
    r = mask_preset("random", 2, seed=0)
    assert 0.4 < r.mean() < 0.6 and not np.array_equal(r[0], r[1])
    with pytest.raises(ValueError, match="expected \\(28, 28\\) or \\(3, 28, 28\\)"):
        check_mask(np.ones((27, 28)), 3)
    with pytest.raises(ValueError, match="keeps no pixel"):
        check_mask(np.zeros((28, 28)), 2)
    with pytest.raises(ValueError, match="nothing to inpaint"):
        check_mask(np.ones((28, 28)), 2)


def test_a_picture_is_made_28x28_light_on_dark(tmp_path):
    img = Image.new("RGB", (100, 80), "white")
    img.paste((0, 0, 0), (40, 10, 60, 70))  # a dark stroke on paper
    img.save(tmp_path / "sketch.png")
    a, notes = load_picture(tmp_path / "sketch.png")
    assert a.shape == (1, 28, 28) and a.dtype == np.uint8
    assert any("converted to 28x28" in n for n in notes) and any("inverted" in n for n in notes)
    assert a[0, 14, 14] > 200 and a[0, 1, 1] < 30  # the stroke is light now, the ground dark


def test_inpaint_and_edit_commands(tmp_path, mnist, capsys, executed_plans):
    from mnist_diffusion.diffusion import Diffusion
    from mnist_diffusion.sampling import options_for, plan
    model = Diffusion.load(GOLDEN, device="cpu")
    out = tmp_path / "in.png"
    assert main(["inpaint", "--checkpoint", GOLDEN, "--from-test", "3", "--mask-preset", "bottom", "--sampler", "ddpm",
                 "--steps", "5", "--output", str(out), "--npz", str(tmp_path / "in.npz"), "--no-progress"]) == 0
    with Image.open(out) as im:
        assert im.size == (2 * (3 * 30 + 2), 2 * (3 * 30 + 2))  # 3 rows: original | masked | result
    test = mnist["test"].images[:3]
    res = np.load(tmp_path / "in.npz")["images"]
    assert np.array_equal(res[:, :14], test[:, :14])
    Image.new("L", (64, 64), 255).save(tmp_path / "paper.png")
    Image.fromarray(np.pad(np.full((20, 8), 0, np.uint8), 22, constant_values=255)).save(tmp_path / "one.png")
    assert main(["edit", "--checkpoint", GOLDEN, "--image", str(tmp_path / "one.png"), "--strength", "0.6",
                 "--label", "7", "--guidance", "1", "--sampler", "ddim", "--steps", "10", "--output",
                 str(tmp_path / "e.png"), "--no-progress"]) == 0
    assert "inverted" in capsys.readouterr().err
    # each ran the planner's plan for its task, the model's own options under the flags
    assert executed_plans == [
        plan(model, options_for(model, labelled=False, sampler="ddpm", steps=5), task="inpaint"),
        plan(model, options_for(model, labelled=True, guidance=1.0, sampler="ddim", steps=10), task="edit",
             strength=0.6)]


@pytest.mark.parametrize("argv, words", [
    (["edit", "--from-test", "2", "--strength", "0"], "give a value in (0, 1]"),
    (["edit", "--from-test", "2", "--strength", "1.5"], "give a value in (0, 1]"),
    (["edit", "--image", "missing.png", "--strength", "0.5"], "missing.png: not a regular file"),
    (["inpaint", "--from-test", "2", "--mask", str(HERE / "golden" / "evaluate.json")],
     "evaluate.json: not a readable image"),
    (["inpaint", "--from-test", "2", "--mask-preset", "left", "--sampler", "dpmpp"], "ddpm or ddim"),
])
def test_bad_edit_inputs_are_one_line_errors(argv, words, tmp_path, mnist, capsys):
    assert main([*argv, "--checkpoint", GOLDEN, "--output", str(tmp_path / "x.png"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_a_wrong_size_mask_file_is_refused(tmp_path, mnist, capsys):
    np.savez(tmp_path / "m.npz", mask=np.ones((3, 27, 28)))
    assert main(["inpaint", "--checkpoint", GOLDEN, "--from-test", "2", "--mask", str(tmp_path / "m.npz"),
                 "--output", str(tmp_path / "x.png")]) == 2
    assert "the mask has shape (3, 27, 28)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# pictures and masks from files: memory bounded by the output, one geometry, every mode

_MEASURE = r"""
import json, resource, sys, tracemalloc
from mnist_diffusion.editing import load_picture
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # a runaway fails fast
out = {}
for path in sys.argv[1:]:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        a, _ = load_picture(path)
        r = {"shape": list(a.shape), "max": int(a.max())}
    except ValueError as e:
        r = {"error": str(e)}
    except MemoryError:
        r = {"error": "MemoryError"}
    r["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    r["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    out[path] = r
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory through /proc (Linux)")
@pytest.mark.system
def test_a_thin_picture_costs_no_memory(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import mnist_diffusion
    thin = tmp_path / "thin.png"  # 102 bytes; padded to a square before reducing it was 400 M pixels, 3.75 GB
    Image.new("L", (20000, 1), 255).save(thin)
    wide = tmp_path / "wide.png"  # 40:1, kept: 8000x8000 when padded first
    a = np.zeros((200, 8000), np.uint8)
    a[20:180, 3700:4300] = 255
    Image.fromarray(a).save(wide)
    src = str(Path(mnist_diffusion.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(thin), str(wide)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    t, w = res[str(thin)], res[str(wide)]
    assert t.get("error", "").startswith(f"{thin}: 20000x1 pixels is thinner than 50:1"), t
    assert w.get("shape") == [1, 28, 28] and w["max"] > 200, w  # the bar, 2 pixels wide, 1 tall, survives
    for r in (t, w):
        assert r["peak_mb"] < 200 and r["rss_growth_mb"] < 200, res


def test_a_mask_goes_through_the_pictures_geometry(tmp_path):
    from mnist_diffusion.editing import load_mask
    a = np.zeros((30, 60), np.uint8)  # 60 wide, 30 tall: letterboxed to 28x14
    a[5:25, 35:55] = 255
    Image.fromarray(a).save(tmp_path / "pic.png")
    Image.fromarray(a).save(tmp_path / "mask.png")  # white: fill in exactly the picture's bright block
    digit, _ = load_picture(tmp_path / "pic.png")
    mask = load_mask(tmp_path / "mask.png", 1)
    assert digit.max() > 200 and (mask == 0).sum() > 20
    assert np.array_equal(digit[0] > 127, mask[0] == 0)  # the same pixels
    assert mask[0, :7].all() and mask[0, 21:].all()  # the letterbox margins are known ground


def _stroke():
    """A digit-like picture: an antialiased bar, light on dark, 8-bit, not square."""
    yy, xx = np.mgrid[:48, :40]
    a = 255 * np.clip(4 - np.abs(xx - 19.5 - (yy - 24) * 0.3), 0, 1) * ((yy > 6) & (yy < 42))
    return np.round(a).astype(np.uint8)


@pytest.mark.parametrize("light", [True, False])
def test_float_and_16_bit_pictures_are_scaled_by_their_range(tmp_path, light):
    ref = _stroke() if light else 255 - _stroke()
    Image.fromarray(ref).save(tmp_path / "ref.png")
    want, _ = load_picture(tmp_path / "ref.png")
    assert want.max() > 200
    Image.fromarray((ref / 255).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    Image.fromarray(ref.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    for name in ("f.tif", "deep.png"):
        got, notes = load_picture(tmp_path / name)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
        assert any("scaled to [0, 255]" in n for n in notes), notes
    Image.fromarray(ref.astype(np.float32), mode="F").save(tmp_path / "f255.tif")  # [0, 255] floats: as they are
    assert np.abs(load_picture(tmp_path / "f255.tif")[0].astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("values, words", [((-1.0, 3.0), "F pixel values from -1 to 3; expected 0 to 1 or 0 to 255"),
                                           ((0.0, np.nan), "NaN or infinite")])
def test_a_float_picture_without_a_range_is_refused(tmp_path, values, words):
    a = np.full((28, 28), values[0], np.float32)
    a[10:18, 10:18] = values[1]
    Image.fromarray(a, mode="F").save(tmp_path / "odd.tif")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'odd.tif'}: ") as e:
        load_picture(tmp_path / "odd.tif")
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("stroke", [255, 0])
def test_a_palette_png_with_a_transparent_background(tmp_path, stroke):
    ref = _stroke() > 127
    p = Image.fromarray(ref.astype(np.uint8), mode="P")  # index 0 the background, 1 the strokes
    p.putpalette([stroke] * 3 * 2)  # the transparent entry has the strokes' colour (only alpha tells them apart)
    p.save(tmp_path / "p.png", transparency=0)
    Image.fromarray(np.where(ref, stroke, 255 - stroke).astype(np.uint8)).save(tmp_path / "ref.png")
    got, notes = load_picture(tmp_path / "p.png")
    want, _ = load_picture(tmp_path / "ref.png")
    assert got.max() > 200 and np.array_equal(got, want), notes
    rgba = Image.new("RGBA", (40, 48), (stroke, stroke, stroke, 0))  # the same with an alpha channel
    rgba.putalpha(Image.fromarray(_stroke()))
    rgba.save(tmp_path / "rgba.png")
    got, _ = load_picture(tmp_path / "rgba.png")
    assert np.abs(got.astype(int) - load_picture(tmp_path / "ref.png")[0].astype(int)).mean() < 8


def test_a_mask_painted_on_a_transparent_layer(tmp_path):
    from mnist_diffusion.editing import load_mask
    a = np.zeros((30, 60), np.uint8)
    a[5:25, 35:55] = 255
    layer = Image.new("RGBA", (60, 30), (255, 255, 255, 0))  # white paint, unpainted pixels transparent white
    layer.putalpha(Image.fromarray(a))
    layer.save(tmp_path / "layer.png")
    Image.fromarray(a).save(tmp_path / "mask.png")
    assert np.array_equal(load_mask(tmp_path / "layer.png", 1), load_mask(tmp_path / "mask.png", 1))


def test_bad_pictures_and_masks_are_one_line_errors_and_touch_nothing(tmp_path, capsys):
    Image.new("L", (20000, 1), 255).save(tmp_path / "thin.png")
    Image.new("L", (1, 3000), 0).save(tmp_path / "tall.png")
    Image.fromarray(np.full((28, 28), 300.0, np.float32), mode="F").save(tmp_path / "hot.tif")
    np.savez(tmp_path / "two.npz", images=_digits(2))
    out = tmp_path / "x.png"
    Image.new("L", (8, 8), 3).save(out)  # a result of an earlier run
    before = out.read_bytes()
    for argv, words in [(["edit", "--image", str(tmp_path / "thin.png"), "--strength", "0.5"],
                         "thin.png: 20000x1 pixels is thinner than 50:1"),
                        (["edit", "--image", str(tmp_path / "hot.tif"), "--strength", "0.5"],
                         "hot.tif: F pixel values from 300 to 300"),
                        (["inpaint", "--image", str(tmp_path / "two.npz"), "--mask", str(tmp_path / "tall.png")],
                         "tall.png: 1x3000 pixels is thinner than 50:1")]:
        code = main([*argv, "--checkpoint", GOLDEN, "--output", str(out), "--steps", "2", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
        assert err.startswith(f"mnist-diffusion {argv[0]}: error:"), err
        assert out.read_bytes() == before
