"""The models that ship with the package: they load with no training, match their pinned SHA-256,
and draw recognizable digits (garments) of the requested class, checked with the shipped evaluator."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import mnist_diffusion as md
from mnist_diffusion.cli import main
from mnist_diffusion.evaluation import evaluate_images
from mnist_diffusion.evaluator import file_sha256
from mnist_diffusion.pretrained import DIR, PRETRAINED

pytestmark = pytest.mark.skipif(not PRETRAINED, reason="no shipped models yet")


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_shipped_files_match_their_pinned_hashes(name):
    assert file_sha256(DIR / name / "model.safetensors") == PRETRAINED[name]["sha256"]
    diff = md.load(name, device="cpu")
    assert diff.source_sha256 == PRETRAINED[name]["sha256"] and diff.ema
    if "guide_sha256" in PRETRAINED[name]:  # an autoguided model: its guide is pinned as its weights are
        assert file_sha256(DIR / name / "guide.safetensors") == PRETRAINED[name]["guide_sha256"]
        assert diff.guide is not None and diff.guide.source_sha256 == PRETRAINED[name]["guide_sha256"]
    else:
        assert diff.guide is None and not (DIR / name / "guide.safetensors").exists()
    assert (DIR / name / "README.md").read_text().startswith("---\nlicense: mit")


@pytest.mark.parametrize("name", [n for n in PRETRAINED if n not in ("mnist-uncond", "mnist-clusters")])
def test_conditional_models_draw_recognizable_requested_classes(name, mnist, fashion):
    diff = md.load(name, device="cpu")
    # a student draws its own one step, its teacher's guidance built in
    how = {} if diff.distilled else {"guidance": 1.0, "sampler": "dpmpp", "steps": 20}
    # 5 of each class: a teacher draws 50 (20 guided steps each); a student's one step is cheap and
    # keeps its draw, every other of 10 per class (fashion_mnist-fast scores 0.76 there, 0.70 on the first 50)
    imgs = diff.sample(50, label="all", seed=0, **how) if how else diff.sample(label="all", seed=0)[::2]
    labels = np.repeat(np.arange(10), 5)
    r = evaluate_images(imgs, diff.dataset, labels=labels, reference=False)
    assert r["label_accuracy"] >= 0.85 and r["recognizable"] >= 0.7, r


def test_the_unconditional_model_draws_varied_recognizable_digits(mnist):
    if "mnist-uncond" not in PRETRAINED:
        pytest.skip("not shipped")
    diff = md.load("mnist-uncond", device="cpu")
    assert diff.guide is not None and diff.config.sampling.guidance > 0  # autoguided by its own early weights
    imgs = diff.sample(40, seed=0)  # its card's own draw: dpmpp, 20 steps, guided by guide.safetensors
    r = evaluate_images(imgs, "mnist", reference=False)
    assert r["recognizable"] >= 0.75 and len({int(c) for c, n in enumerate(r["class_histogram"]) if n}) >= 8, r


def test_the_label_free_model_draws_recognizable_digits_of_every_kind(mnist):
    """mnist-clusters never saw a label: its guidance steers towards k-means clusters of the images."""
    if "mnist-clusters" not in PRETRAINED:
        pytest.skip("not shipped")
    diff = md.load("mnist-clusters", device="cpu")
    assert diff.clustered and diff.num_classes == 50
    imgs = diff.sample(50, guidance=1.0, sampler="dpmpp", steps=20, seed=0)
    r = evaluate_images(imgs, "mnist", reference=False)
    assert r["recognizable"] >= 0.8 and sum(1 for n in r["class_histogram"] if n) == 10, r


def test_sample_with_pretrained_from_the_command_line(tmp_path, capsys):
    name = next(iter(PRETRAINED))
    assert main(["sample", "--pretrained", name, "--num-images", "4", "--sampler", "dpmpp", "--steps", "10",
                 "--output", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 28, 28)


def test_a_modified_shipped_file_is_refused(tmp_path, monkeypatch):
    import mnist_diffusion.pretrained as pretrained
    from mnist_diffusion.checkpoint import CheckpointError
    name = next(iter(PRETRAINED))
    copy = tmp_path / name
    shutil.copytree(DIR / name, copy)
    # the weights and the hash in config.json changed together: only the pinned hash can tell
    import json
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(copy / "model.safetensors"))
    k = next(iter(tensors))
    tensors[k] = tensors[k] + 1
    save_file(tensors, str(copy / "model.safetensors"))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["export"]["sha256"] = file_sha256(copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(pretrained, "DIR", tmp_path)
    with pytest.raises(CheckpointError, match="pinned for this shipped model"):
        md.load(name, device="cpu")


@pytest.mark.parametrize("name", [n for n in PRETRAINED if not n.endswith("-fast")])
def test_the_cards_training_command_makes_the_shipped_config(name, tmp_path, capsys):
    """A card's `train` command, run today, sets up exactly the network, schedule and recipe of the
    weights beside it (a preset that changed under a shipped model would fail here)."""
    import json
    card = (DIR / name / "README.md").read_text()
    command = next(ln for ln in card.splitlines() if ln.startswith("mnist-diffusion train "))
    argv = command.split()[1:]
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "run")
    assert main([*argv, "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out.split("run directory:")[0])
    from mnist_diffusion.config import RunConfig
    saved = json.loads((DIR / name / "config.json").read_text())  # options added since read at their defaults
    shipped = json.loads(RunConfig.from_dict({k: saved[k] for k in ("model", "diffusion", "train")}).to_json())
    data_bound = {"data_sha256", "classes", "cluster_sizes"}  # what training reads from the data
    assert planned["model"] == shipped["model"] and planned["diffusion"] == shipped["diffusion"]
    assert {k: v for k, v in planned["train"].items() if k not in data_bound} == \
        {k: v for k, v in shipped["train"].items() if k not in data_bound}


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_each_shipped_model_samples_as_its_card_was_scored(name):
    """The folder's sampling section resolves to the draw its card's Evaluation section describes."""
    from mnist_diffusion.hub import draw_description
    diff = md.load(name, device="cpu")
    labelled = bool(diff.num_classes)
    drawn = diff.plan(labelled=labelled)
    card = (DIR / name / "README.md").read_text()
    guide = {"autoguide": diff.guide.source, "autoguide_step": diff.guide.step} if diff.guide is not None else {}
    report = {**drawn.report(), "guidance": drawn.guidance if labelled or guide else None, **guide}
    assert f"images ({draw_description(report, diff.clustered)}) against" in card
    if diff.distilled:  # a student's own one-step draw
        assert (drawn.sampler, drawn.steps, drawn.spacing) == ("ddim", 1, "student")
    else:
        assert drawn.sampler == "dpmpp" and drawn.steps == 20


def test_sample_with_no_sampler_flags_draws_what_the_card_recommends(tmp_path, capsys):
    """`sample --pretrained mnist --label 3` is the card's DPM-Solver++ 20 steps at W = 0.5."""
    common = ["--pretrained", "mnist", "--label", "3", "--num-images", "3", "--no-progress", "--device", "cpu"]
    assert main(["sample", *common, "--output", str(tmp_path / "a.png"), "--npz", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", *common, "--sampler", "dpmpp", "--steps", "20", "--guidance", "0.5",
                 "--output", str(tmp_path / "b.png"), "--npz", str(tmp_path / "b.npz")]) == 0
    assert main(["sample", *common, "--guidance", "0", "--output", str(tmp_path / "c.png"),
                 "--npz", str(tmp_path / "c.npz")]) == 0
    a, b, c = (np.load(tmp_path / f"{k}.npz")["images"] for k in "abc")
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert "dpmpp, 20 steps on the logsnr-capped grid, eta 0.5, guidance 0.5" in capsys.readouterr().err
