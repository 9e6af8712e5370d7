"""Model folders (hub.py, `mnist-diffusion export`): the round trip, what is refused, the model card,
diffusers reading the scheduler config; and other tools' sample files scored with their labels."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_diffusion as md
from mnist_diffusion.checkpoint import CheckpointError
from mnist_diffusion.cli import main
from mnist_diffusion.images import save_npz, save_png

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_cond.pt"  # a fixed tiny conditional checkpoint
DRAW = dict(label="all", guidance=0.5, sampler="dpmpp", steps=8, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _export(tmp_path, *extra, name="model"):
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(GOLDEN), "--output", str(out), "--device", "cpu", *extra]) == 0
    return out


def test_export_then_load_draws_the_same_images(tmp_path, capsys):
    out = _export(tmp_path, "--dtype", "fp32", "--no-samples")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                    "scheduler_config.json"]
    ck, folder = md.load(GOLDEN, device="cpu", precision="fp32"), md.load(out, device="cpu", precision="fp32")
    assert folder.step == ck.step and folder.ema and folder.num_classes == 10
    assert folder.sample(**DRAW).tobytes() == ck.sample(**DRAW).tobytes()
    # the same through the command line: --checkpoint takes the folder
    for source, npz in ((GOLDEN, "a.npz"), (out, "b.npz")):
        assert main(["sample", "--checkpoint", str(source), "--sampler", "ddim", "--steps", "4", "--num-images", "3",
                     "--output", str(tmp_path / "s.png"), "--npz", str(tmp_path / npz), "--device", "cpu",
                     "--precision", "fp32", "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


def test_fp16_export_is_near_identical_and_small(tmp_path, capsys):
    out = _export(tmp_path, "--dtype", "fp16", "--no-samples")
    ck, half = md.load(GOLDEN, device="cpu", precision="fp32"), md.load(out, device="cpu", precision="fp32")
    a, b = ck.sample(**DRAW).astype(int), half.sample(**DRAW).astype(int)
    assert np.abs(a - b).mean() < 2.0  # of 255: rounding of the weights, not another model
    # the golden file holds two fp32 sets (weights and EMA; a training checkpoint also has Adam's two)
    assert (out / "model.safetensors").stat().st_size < 0.3 * GOLDEN.stat().st_size


def test_the_same_model_exports_to_the_same_bytes(tmp_path, capsys):
    """What pretrained.py pins: the weights file must not depend on the order safetensors happens to
    write its metadata in (several keys come out in a random order, even within one process)."""
    digests = {hashlib.sha256((_export(tmp_path, "--no-samples", name=f"m{i}") / "model.safetensors").read_bytes())
               .hexdigest() for i in range(6)}
    assert len(digests) == 1


def test_tampered_weights_or_a_config_that_does_not_fit_are_one_line_errors(tmp_path, capsys):
    out = _export(tmp_path, "--no-samples")
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    args = ["sample", "--sampler", "ddim", "--steps", "2", "--num-images", "2", "--output",
            str(tmp_path / "x.png"), "--device", "cpu"]
    assert main([*args[:1], "--checkpoint", str(bad), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the SHA-256 recorded in config.json" in err
    # a config edited after export is caught by the fingerprint export recorded beside the weights'
    # SHA-256, whatever the edit: one that changes the network's shape, or one that would only draw noise
    for i, edit in enumerate([("model", "base_dim", 16), ("model", "prediction", "v"),
                              ("diffusion", "timesteps", 100), ("diffusion", "schedule", "linear")]):
        wrong = tmp_path / f"wrong{i}"
        shutil.copytree(out, wrong)
        cfg = json.loads((wrong / "config.json").read_text())
        cfg[edit[0]][edit[1]] = edit[2]
        (wrong / "config.json").write_text(json.dumps(cfg))
        assert main([*args[:1], "--checkpoint", str(wrong), *args[1:]]) == 2, edit
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was edited after export" in err, err
        with pytest.raises(md.CheckpointError, match="edited after export"):
            md.load(wrong)
    # the sampling section is the user's to tune: an edit there loads
    tuned = tmp_path / "tuned"
    shutil.copytree(out, tuned)
    cfg = json.loads((tuned / "config.json").read_text())
    cfg["sampling"]["steps"] = 7
    (tuned / "config.json").write_text(json.dumps(cfg))
    assert md.load(tuned).config.sampling.steps == 7
    # a folder exported before the fingerprint: the tensors must still fit the config's network
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    del cfg["export"]["config_sha256"]
    cfg["model"]["base_dim"] = 16
    (legacy / "config.json").write_text(json.dumps(cfg))
    assert main([*args[:1], "--checkpoint", str(legacy), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has shape" in err and "another base width" in err
    assert not (tmp_path / "x.png").exists()


def test_export_refuses_a_folder_of_other_files_and_no_ema_folders(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(GOLDEN), "--output", str(tmp_path / "busy"), "--no-samples"]) == 2
    assert "holds files not written by export (notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    out = _export(tmp_path, "--no-samples")
    with pytest.raises(ValueError, match="one set of weights"):
        md.load(out, use_ema=False)


def test_the_model_card_and_its_front_matter(tmp_path, capsys, mnist):
    report = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(GOLDEN), "--num-samples", "20", "--noise-mse-images", "20",
                 "--sampler", "ddim", "--steps", "3", "--device", "cpu", "--no-progress", "--json", str(report)]) == 0
    out = _export(tmp_path, "--metrics", str(report))
    # the folder samples as its card was scored: the report's draw is its sampling section
    saved = json.loads((out / "config.json").read_text())["sampling"]
    assert (saved["sampler"], saved["steps"], saved["guidance"], saved["eta"]) == ("ddim", 3, 0.0, None)
    assert md.load(out, device="cpu").plan().report() == {k: v for k, v in json.loads(report.read_text())[
        "sampler"].items() if k not in ("ema", "precision", "labels")}
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("license: mit", "library_name: mnist-diffusion", "- ylecun/mnist", "- class-conditional"):
        assert line in front
    r = json.loads(report.read_text())
    assert f"| {r['fid']:.3f} |" in card and "label accuracy" in card and "![samples](samples.png)" in card
    assert "images (ddim, 3 steps, uniform grid, eta 0, " in card  # how they were drawn, grid and eta included
    assert re.search(r"SHA-256 `[0-9a-f]{64}`", card)
    assert (out / "samples.png").read_bytes().startswith(b"\x89PNG")
    # a guided dpmpp report: the card names the band, and the corrector when there was one
    from mnist_diffusion.hub import model_card
    diff = md.load(out, device="cpu")
    info = json.loads((out / "config.json").read_text())["export"]
    sampler = {**r["sampler"], "sampler": "dpmpp", "steps": 20, "eta": 0.5, "guidance": 0.5,
               "guidance_interval": [0.3, 5.0], "first_order_switches": True}
    for k, words in [(1, ", eta 0.5, linear corrector, guidance W = 0.5 at noise levels 0.3-5, balanced"),
                     (2, ", eta 0.5, quadratic corrector, guidance W = 0.5 at noise levels 0.3-5, balanced"),
                     (0, ", eta 0.5, guidance W = 0.5 at noise levels 0.3-5, balanced")]:
        text = model_card(diff.config, info, metrics={**r, "sampler": {**sampler, "corrector": k}})
        assert words in text and ("corrector" in text) == (k > 0)
    # rescoring: new numbers and use line, the rest of the card and the weights untouched
    from mnist_diffusion.hub import rescore_card
    weights = (out / "model.safetensors").read_bytes()
    new = {**r, "fid": 0.1234, "sampler": {**sampler, "guidance": 0.75, "corrector": 1}}
    grid = np.full((28, 56), 200, np.uint8)
    from mnist_diffusion.config import SamplingConfig
    rescore_card(out, new, note="Scored again.", samples=grid,
                 sampling=SamplingConfig(sampler="dpmpp", steps=20, guidance=0.75))
    after = (out / "README.md").read_text()
    assert after.split("## Use")[0] == card.split("## Use")[0]  # front matter, description, samples
    assert after.count("## Evaluation") == 1 and "| 0.123 |" in after and f"| {r['fid']:.3f} |" not in after
    assert "linear corrector, guidance W = 0.75" in after and after.rstrip().endswith("Scored again.")
    assert 'diff.sample(10, label="all", seed=0)' in after and "dpmpp, 20 steps, guidance 0.75" in after
    assert json.loads((out / "config.json").read_text())["sampling"]["guidance"] == 0.75  # the folder samples so
    assert (out / "model.safetensors").read_bytes() == weights
    assert np.array_equal(np.asarray(Image.open(out / "samples.png"))[::2, ::2], grid)  # saved at scale 2
    bare = _export(tmp_path, "--no-samples", name="bare")  # a card without a picture gets one with its samples
    rescore_card(bare, new, samples=grid)
    text = (bare / "README.md").read_text()
    assert text.index("![samples](samples.png)") < text.index("## Use") and (bare / "samples.png").is_file()
    # a folder whose weights changed is refused, and its card left as it was
    (out / "model.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="modified or damaged"):
        rescore_card(out, r)
    assert (out / "README.md").read_text() == after


def test_diffusers_reads_the_scheduler_config(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    out = _export(tmp_path, "--no-samples")
    sched = diffusers.DDPMScheduler.from_config(json.loads((out / "scheduler_config.json").read_text()))
    ours = md.load(out, device="cpu").schedule
    assert sched.config.num_train_timesteps == ours.timesteps and sched.config.prediction_type == "epsilon"
    # diffusers keeps the betas in float32; ours are float64
    torch.testing.assert_close(sched.alphas_cumprod.double(), ours.alpha_bar, rtol=2e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# other tools' sample files

def test_sample_npz_keeps_the_labels(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(GOLDEN), "--label", "all", "--nrow", "1", "--sampler", "ddim",
                 "--steps", "2", "--output", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz"),
                 "--no-progress", "--device", "cpu"]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["labels"].tolist() == list(range(10)) and z["images"].shape == (10, 28, 28)


def test_other_layouts_score_the_same_and_labels_give_label_accuracy(tmp_path, capsys, mnist):
    imgs = mnist["test"].images[:40]
    labels = mnist["test"].labels[:40].astype(np.int64)
    save_npz(imgs, tmp_path / "ours.npz", labels=labels)
    np.savez(tmp_path / "openai.npz", arr_0=imgs[..., None], arr_1=labels)  # (N, H, W, C) uint8
    np.savez(tmp_path / "float.npz", images=imgs.astype(np.float32) / 255)
    nested = tmp_path / "png" / "b"
    nested.mkdir(parents=True)
    for i, im in enumerate(imgs):
        save_png(im, (nested if i % 2 else tmp_path / "png") / f"{i:03d}.png")
    reports = {}
    for name, path, extra in [("ours", "ours.npz", []), ("openai", "openai.npz", []),
                              ("float", "float.npz", ["--value-range", "unit"]), ("png", "png", [])]:
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--samples", str(tmp_path / path), "--dataset", "mnist", "--json", str(out),
                     "--no-progress", *extra]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["ours"]["label_accuracy"] == reports["openai"]["label_accuracy"] > 0.9
    assert "label_accuracy" not in reports["float"]
    assert reports["ours"]["fid"] == reports["openai"]["fid"] == reports["float"]["fid"]
    assert reports["png"]["n"] == 40  # every PNG below the folder, nested ones too


@pytest.mark.parametrize("array, extra, words", [
    (np.zeros((4, 28, 28), np.float32), [], "say its range with --value-range"),
    (np.full((4, 28, 28), 2.0, np.float32), ["--value-range", "signed"], "outside --value-range signed"),
    (np.zeros((4, 32, 32), np.uint8), [], "expected (N, 28, 28)"),
    (np.zeros((4, 28, 28), np.int32), [], "has dtype int32"),
])
def test_bad_sample_files_are_one_line_errors(tmp_path, capsys, array, extra, words):
    np.savez(tmp_path / "x.npz", images=array)
    assert main(["evaluate", "--samples", str(tmp_path / "x.npz"), "--dataset", "mnist", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "x.npz" in err


def test_export_never_writes_into_the_shipped_models(tmp_path, capsys):
    """An editable install's pretrained_models/ is the checkout: export may not replace a shipped model."""
    from mnist_diffusion.pretrained import DIR
    before = {f: f.read_bytes() for f in (DIR / "mnist").iterdir()}
    for target in (DIR / "mnist", DIR / "mine"):
        assert main(["export", "--checkpoint", str(GOLDEN), "--output", str(target), "--no-samples"]) == 2
        assert "writes the shipped models" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in (DIR / "mnist").iterdir()} == before and not (DIR / "mine").exists()
    assert md.load("mnist", device="cpu").source_sha256 == md.load(DIR / "mnist", device="cpu").source_sha256


def test_a_bad_metrics_report_leaves_the_folder_as_it_was(tmp_path, capsys):
    """export --metrics with a wrong-typed value: refused before any write (the old card, weights and
    config stay together), and no half-written sibling folder is left behind."""
    out = _export(tmp_path, "--no-samples")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    good = {"dataset": "mnist", "n": 20, "fid": 1.0, "precision": 0.5, "recall": 0.5, "recognizable": 0.9,
            "class_entropy": 0.9}
    for bad, words in (({"fid": "x"}, "fid must be a number"), ({"n": None}, "n must be a number"),
                       ({"sampler": 3}, "sampler must be an object"), ({"fid": None, "n": 1}, "fid must be")):
        (tmp_path / "m.json").write_text(json.dumps({**good, **bad}))
        assert main(["export", "--checkpoint", str(GOLDEN), "--output", str(out), "--dtype", "fp32",
                     "--metrics", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
        assert words in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "model"]


def test_an_autoguided_folder_ships_its_guide(tmp_path, capsys, mnist, monkeypatch):
    """export --autoguide: the guide's weights travel as guide.safetensors, checked like the model's,
    and the folder draws exactly what the model guided by them draws in memory."""
    raw = _export(tmp_path, "--no-ema", "--dtype", "fp32", "--no-samples", name="raw")  # a weaker set, same network
    report = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(GOLDEN), "--autoguide", str(raw), "--guidance", "1.5",
                 "--num-samples", "20", "--noise-mse-images", "20", "--sampler", "dpmpp", "--steps", "4",
                 "--device", "cpu", "--no-progress", "--json", str(report)]) == 0
    assert main(["export", "--checkpoint", str(GOLDEN), "--autoguide", str(raw), "--output", str(tmp_path / "no"),
                 "--device", "cpu"]) == 2
    assert "--autoguide needs --metrics" in capsys.readouterr().err and not (tmp_path / "no").exists()
    out = _export(tmp_path, "--autoguide", str(raw), "--metrics", str(report), "--dtype", "fp32", "--no-samples")
    assert (out / "guide.safetensors").is_file()
    info = json.loads((out / "config.json").read_text())
    assert info["sampling"]["guidance"] == 1.5 and info["export"]["guide"]["sha256"] == hashlib.sha256(
        (out / "guide.safetensors").read_bytes()).hexdigest()
    card = (out / "README.md").read_text()
    assert "Autoguided (Karras et al. 2024" in card and "guidance W = 1.5, autoguided by the step-" in card
    folder = md.load(out, device="cpu", precision="fp32")
    mem = md.load(GOLDEN, device="cpu", precision="fp32").autoguided(md.load(raw, device="cpu", precision="fp32"))
    draw = dict(label="all", sampler="dpmpp", steps=4, seed=3)
    assert folder.guide is not None and folder.sample(**draw).tobytes() == mem.sample(guidance=1.5, **draw).tobytes()
    assert folder.sample(**draw).tobytes() != folder.sample(**draw, guidance=0).tobytes()  # the guide is used
    # a guide of another network cannot be stored as weights of this one
    import dataclasses
    other_cfg = dataclasses.replace(mem.config, model=dataclasses.replace(mem.config.model, base_dim=16))
    other = md.Diffusion.new(other_cfg, device="cpu")
    with pytest.raises(md.ConfigError, match="same network"):
        mem.without_guide().autoguided(other).with_sampling(folder.config.sampling).export(tmp_path / "x")
    # a changed or missing guide is a one-line error, like changed weights
    args = ["sample", "--sampler", "ddim", "--steps", "2", "--num-images", "2", "--output", str(tmp_path / "x.png"),
            "--device", "cpu"]
    for name, damage, words in (("tampered", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0"),
                                 "guide.safetensors does not match the SHA-256 recorded"),
                                ("missing", lambda p: p.unlink(), "autoguided but guide.safetensors is missing")):
        bad = tmp_path / name
        shutil.copytree(out, bad)
        damage(bad / "guide.safetensors")
        assert main([args[0], "--checkpoint", str(bad), *args[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    # a shipped model's guide is pinned as its weights are
    import mnist_diffusion.diffusion as pipeline
    sha = info["export"]["sha256"]
    for pins, words in (({"sha256": sha, "guide_sha256": "0" * 64}, "pinned for this shipped model"),
                        ({"sha256": sha}, "names a guide this shipped model does not have")):
        monkeypatch.setattr(pipeline, "resolve", lambda source, pins=pins: (out, pins))
        with pytest.raises(CheckpointError, match=words):
            md.load("shipped")
    assert not (tmp_path / "x.png").exists()
