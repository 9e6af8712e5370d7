"""Training and evaluating on one's own images: --dataset folder:PATH / npz:PATH, the data's hash in
the run, train-evaluator and evaluate --evaluator, and every kind of bad data a clear message.

The folders are made here from a few MNIST images (or drawn), so the tests need nothing else."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_diffusion.cli import main
from mnist_diffusion.data import DataError, data_sha256, load_custom, load_training_data

TINY = ["--base-dim", "8", "--channel-mults", "1,2", "--num-res-blocks", "1", "--timesteps", "20",
        "--batch-size", "8", "--max-steps", "3", "--sample-interval", "1000", "--save-interval", "1000",
        "--num-samples", "2", "--device", "cpu", "--precision", "fp32", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def export_folder(images, labels, root: Path, classes=True) -> Path:
    """Images as numbered PNGs, in one folder per label: what a user's labelled set looks like."""
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / str(int(y)) if classes else root
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:05d}.png")
    return root


def test_a_folder_decodes_to_the_built_in_arrays(mnist, tmp_path):
    imgs, labels = mnist["train"].images[:40], mnist["train"].labels[:40]
    split = load_custom(f"folder:{export_folder(imgs, labels, tmp_path / 'set')}")
    assert np.array_equal(split.images, imgs) and np.array_equal(split.labels, labels)  # numbered names: same order
    assert split.classes == tuple(sorted({str(int(y)) for y in labels}))
    npz = tmp_path / "set.npz"
    np.savez(npz, images=imgs, labels=labels.astype(np.int64))
    assert data_sha256(load_custom(f"npz:{npz}")) == data_sha256(split)


def test_same_decoded_arrays_train_the_same_run(mnist, tmp_path, capsys):
    imgs, labels = mnist["train"].images[:64], mnist["train"].labels[:64]
    folder = export_folder(imgs, labels, tmp_path / "set")
    assert main(["train", "--dataset", f"folder:{folder}", "--conditional", "--output-dir", str(tmp_path / "a"),
                 *TINY]) == 0
    assert main(["train", "--dataset", "mnist", "--subset", "64", "--conditional", "--output-dir",
                 str(tmp_path / "b"), *TINY]) == 0
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    cfg = json.loads((tmp_path / "a/config.json").read_text())
    assert cfg["train"]["data_sha256"] == data_sha256(load_custom(f"folder:{folder}"))
    assert cfg["model"]["num_classes"] == len(set(labels.tolist())) and cfg["train"]["classes"]


def test_resuming_on_other_data_is_refused(mnist, tmp_path, capsys):
    folder = export_folder(mnist["train"].images[:32], mnist["train"].labels[:32], tmp_path / "set")
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{folder}", "--output-dir", str(run), *TINY]) == 0
    before = (run / "checkpoints/last.pt").read_bytes()
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(folder / "3" / "99999.png")  # the set changed
    more = [a if a != "3" else "6" for a in TINY]
    assert main(["train", "--dataset", f"folder:{folder}", "--output-dir", str(run), "--resume", "auto", *more]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the training data (SHA-256" in err and "differs from the checkpoint's train.data_sha256" in err
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_any_size_and_mode_is_converted_and_said(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(d / "a.png")
    Image.new("L", (28, 28), 7).save(d / "b.png")
    Image.new("RGBA", (30, 30)).save(d / "c.jpg".replace(".jpg", ".png"))
    lines = []
    split = load_custom(f"folder:{d}", log=lines.append)
    assert split.images.shape == (3, 28, 28) and split.labels is None and split.classes == ()
    assert any("converted 2 of 3 images to 28x28 grayscale" in line for line in lines)
    assert any("unlabelled" in line for line in lines)


def test_unreadable_files_are_skipped_with_a_count(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    Image.new("L", (28, 28), 7).save(d / "good.png")
    (d / "bad.png").write_bytes(b"not an image")
    lines = []
    assert load_custom(f"folder:{d}", log=lines.append).images.shape == (1, 28, 28)
    assert any("skipped 1 unreadable file(s), e.g." in line and "bad.png" in line for line in lines)
    (d / "good.png").unlink()
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        load_custom(f"folder:{d}")


@pytest.mark.parametrize("make, words", [
    (lambda d: d.mkdir(), "no image files"),
    (lambda d: None, "does not exist"),
    (lambda d: (d.mkdir(), (d / "a").mkdir(), Image.new("L", (28, 28)).save(d / "a" / "1.png"),
                Image.new("L", (28, 28)).save(d / "2.png")), "some images sit in class folders"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, words, capsys):
    d = tmp_path / "set"
    make(d)
    assert main(["train", "--dataset", f"folder:{d}", "--output-dir", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_labels_a_conditional_model_needs(tmp_path, capsys):
    one = tmp_path / "one"
    for i in range(8):
        (one / "cats").mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), i).save(one / "cats" / f"{i}.png")
    assert main(["train", "--dataset", f"folder:{one}", "--conditional", "--output-dir", str(tmp_path / "r"),
                 *TINY]) == 2
    assert "has a single class (cats)" in capsys.readouterr().err
    flat = tmp_path / "flat.npz"
    np.savez(flat, images=np.zeros((8, 28, 28), np.uint8))
    assert main(["train", "--dataset", f"npz:{flat}", "--conditional", "--output-dir", str(tmp_path / "r2"),
                 *TINY]) == 2
    assert "needs labelled data" in capsys.readouterr().err
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, images=np.zeros((1, 28, 28), np.uint8))
    assert main(["train", "--dataset", f"npz:{tiny}", "--output-dir", str(tmp_path / "r3"), *TINY]) == 2
    assert "--batch-size 8 is larger than the 1 training images" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 28, 28), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        load_training_data(f"npz:{bad}")


def test_train_evaluator_and_evaluate_with_it(mnist, tmp_path, capsys):
    imgs, labels = mnist["train"].images[:300], mnist["train"].labels[:300]
    folder = export_folder(imgs, labels, tmp_path / "set")
    ev = tmp_path / "ev.safetensors"
    assert main(["train-evaluator", "--dataset", f"folder:{folder}", "--output", str(ev), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "on 30 images (10 classes, trained on 270)" in out
    # it may replace the evaluator it wrote itself (and nothing else of that suffix)
    assert main(["train-evaluator", "--dataset", f"folder:{folder}", "--output", str(ev), "--epochs", "1"]) == 0
    capsys.readouterr()
    samples = tmp_path / "s.npz"
    np.savez(samples, images=mnist["test"].images[:40], labels=mnist["test"].labels[:40].astype(np.int64))
    report = tmp_path / "r.json"
    assert main(["evaluate", "--samples", str(samples), "--dataset", f"folder:{folder}", "--evaluator", str(ev),
                 "--json", str(report), "--no-progress"]) == 0
    r = json.loads(report.read_text())
    assert r["dataset"] == f"folder:{folder}" and r["n"] == 40 and "fid_floor" in r and "label_accuracy" in r
    from mnist_diffusion.evaluator import file_sha256
    assert r["evaluator_sha256"] == file_sha256(ev)
    # without an evaluator: which numbers are missing, and how to get them
    assert main(["evaluate", "--samples", str(samples), "--dataset", f"folder:{folder}"]) == 2
    err = capsys.readouterr().err
    assert "no evaluator for folder:" in err and "train-evaluator" in err and "--inception" in err
    # an evaluator of other data is refused
    other = export_folder(imgs[:100], labels[:100], tmp_path / "other")
    assert main(["evaluate", "--samples", str(samples), "--dataset", f"folder:{other}", "--evaluator", str(ev)]) == 2
    assert "was trained on other data" in capsys.readouterr().err


def test_an_unlabelled_set_cannot_train_an_evaluator(tmp_path, capsys):
    flat = tmp_path / "flat.npz"
    np.savez(flat, images=np.zeros((20, 28, 28), np.uint8))
    assert main(["train-evaluator", "--dataset", f"npz:{flat}", "--output", str(tmp_path / "e.safetensors")]) == 2
    assert "has no labels" in capsys.readouterr().err
