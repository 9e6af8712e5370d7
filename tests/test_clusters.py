"""Label-free conditioning (clusters.py, train --clusters K): k-means recovers clusters that are
there, is the same for the same seed, cluster draws follow the clusters' sizes and do not depend
on how many are drawn, and a model trained on clusters samples, guides, evaluates, exports and
resumes through the library and the real CLI with no labels anywhere."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mnist_diffusion as md
from mnist_diffusion.cli import main
from mnist_diffusion.clusters import draw_clusters, kmeans_labels, principal_components
from mnist_diffusion.config import ConfigError
from mnist_diffusion.data import Split

TINY = ["--base-dim", "8", "--channel-mults", "1,2", "--num-res-blocks", "1", "--timesteps", "20",
        "--batch-size", "8", "--sample-interval", "1000", "--save-interval", "1000",
        "--num-samples", "2", "--device", "cpu", "--precision", "fp32", "--no-progress"]


def blobs(sizes=(60, 40, 25), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Images around three far-apart patterns (a bar in a different place each), noise added:
    clusters any k-means must find."""
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for c, n in enumerate(sizes):
        base = np.zeros((28, 28))
        base[:, 8 * c + 2: 8 * c + 8] = 200
        images.append(np.clip(base + rng.normal(0, 20, (n, 28, 28)), 0, 255))
        truth += [c] * n
    order = rng.permutation(sum(sizes))
    return np.concatenate(images).astype(np.uint8)[order], np.asarray(truth)[order]


def test_kmeans_finds_separated_clusters_largest_first():
    images, truth = blobs()
    ids = kmeans_labels(images, 3, seed=0)
    # each true blob is one cluster, and cluster 0 is the largest (60), 2 the smallest (25)
    assert {(int(t), int(i)) for t, i in zip(truth, ids)} == {(0, 0), (1, 1), (2, 2)}
    assert np.bincount(ids).tolist() == [60, 40, 25]


def test_kmeans_is_the_same_for_the_same_seed(mnist):
    images = mnist["train"].images[:2000]
    a, b = kmeans_labels(images, 10, seed=3), kmeans_labels(images, 10, seed=3)
    assert a.dtype == np.int64 and np.array_equal(a, b)
    sizes = np.bincount(a, minlength=10)
    assert (np.diff(sizes) <= 0).all() and sizes.sum() == 2000
    # clusters of pixels carry the digit: far purer than chance (0.11 for ten balanced classes)
    purity = sum(np.bincount(mnist["train"].labels[:2000][a == j]).max() for j in range(10)) / 2000
    assert purity > 0.45


def test_principal_components_are_the_leading_eigenvectors():
    rng = np.random.default_rng(0)
    images = (rng.random((300, 28, 28)) * 255).astype(np.uint8)
    z = principal_components(images, dims=5)
    x = images.reshape(300, -1) / 255.0
    xc = x - x.mean(0)
    # the variances along the components are the covariance's top eigenvalues, in order
    top = np.linalg.eigvalsh(xc.T @ xc)[::-1][:5]
    np.testing.assert_allclose((z ** 2).sum(0), top, rtol=1e-8)
    np.testing.assert_allclose(z.T @ z, np.diag(top), atol=1e-6 * top[0])


def test_cluster_draws_follow_the_sizes_and_keep_image_i_fixed():
    sizes = [500, 300, 0, 200]
    draws = draw_clusters(sizes, 200_000, seed=1)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.0, 0.2], atol=0.005)  # ~5 standard errors
    assert np.array_equal(draw_clusters(sizes, 50, seed=1), draws[:50])
    assert not np.array_equal(draw_clusters(sizes, 50, seed=2), draws[:50])


@pytest.mark.parametrize("k, n", [(1, 10), (1001, 2000), (11, 10)])
def test_impossible_cluster_counts_are_errors(k, n):
    with pytest.raises(ValueError, match="clusters"):
        kmeans_labels(np.zeros((n, 28, 28), np.uint8), k)


def test_a_model_trained_on_clusters_needs_no_labels(tiny):
    images, _ = blobs((24, 24, 16))
    cfg = tiny(max_steps=2, seed=0).replace(model={"num_classes": 3}, train={"clusters": 3})
    diff = md.train(cfg, Split(images, None), progress=False)  # an unlabelled set
    assert diff.clustered and diff.num_classes == 3 and "3 clusters" in repr(diff)
    assert list(diff.config.train.cluster_sizes) == [24, 24, 16]
    # no label asked: clusters drawn by their sizes, and guidance works on them
    a = diff.sample(6, guidance=0.5, sampler="ddim", steps=3, seed=4)
    b = diff.sample(6, guidance=0.5, sampler="ddim", steps=3, seed=4)
    assert a.shape == (6, 28, 28) and np.array_equal(a, b)
    drawn = diff.labels("clusters", 6, seed=4)
    assert torch.equal(drawn, torch.from_numpy(draw_clusters([24, 24, 16], 6, seed=4)))
    # which is exactly sampling with those clusters asked for
    assert np.array_equal(a, diff.sample(6, label=drawn, guidance=0.5, sampler="ddim", steps=3, seed=4))
    with pytest.raises(ValueError, match="trained with --clusters"):
        md.Diffusion.new(tiny().replace(model={"num_classes": 10})).labels("clusters", 2)


def test_clusters_option_sets_the_classes_and_refuses_conditional():
    from mnist_diffusion.config import preset, resolve
    cfg = resolve(preset("quick"), {"train.clusters": 50})
    assert cfg.model.num_classes == 50 and cfg.train.clusters == 50
    assert resolve(preset("default"), {"train.clusters": 20}, conditional=False).model.num_classes == 20
    with pytest.raises(ConfigError, match="--conditional"):
        resolve(preset("default"), {"train.clusters": 20}, conditional=True)
    with pytest.raises(ConfigError, match="needs model.num_classes"):
        preset("quick").replace(train={"clusters": 20})


def test_clusters_through_the_cli(mnist, tmp_path, capsys):
    """train --clusters on MNIST's images (their labels unused), resume, sample with guidance and no
    --label, evaluate (no label accuracy: nothing was asked for), export and load the folder."""
    run = tmp_path / "run"
    base = ["train", "--unconditional", "--clusters", "4", "--subset", "256", "--output-dir", str(run), *TINY]
    assert main(base + ["--max-steps", "2"]) == 0
    said = capsys.readouterr()
    assert "clustering 256 images into 4 clusters" in said.out + said.err
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_classes"] == 4 and sum(saved["train"]["cluster_sizes"]) == 256
    assert main(base + ["--max-steps", "3", "--resume", "auto"]) == 0  # the same clusters found again
    ckpt = str(run / "checkpoints" / "last.pt")
    grid = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", ckpt, "--guidance", "0.5", "--sampler", "ddim", "--steps", "3",
                 "--num-images", "4", "--output", str(grid), "--no-progress"]) == 0
    assert grid.exists()
    out = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", ckpt, "--guidance", "0.5", "--sampler", "ddim", "--steps", "2",
                 "--num-samples", "20", "--noise-mse-images", "8", "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert "label_accuracy" not in report and report["sampler"]["labels"] == "clusters drawn by their sizes"
    assert report["sampler"]["guidance"] == 0.5
    folder = tmp_path / "folder"
    assert main(["export", "--checkpoint", ckpt, "--output", str(folder)]) == 0
    loaded = md.load(folder)
    assert loaded.clustered and loaded.config.train.cluster_sizes == tuple(saved["train"]["cluster_sizes"])
    capsys.readouterr()
    assert main(["train", "--conditional", "--clusters", "4", "--output-dir", str(tmp_path / "x"), *TINY]) == 2
    assert "leave out --conditional" in capsys.readouterr().err
    assert main(["train", "--clusters", "1", "--output-dir", str(tmp_path / "y"), *TINY]) == 2
    assert "clusters" in capsys.readouterr().err


def test_the_demo_offers_drawn_clusters(tiny):
    from mnist_diffusion.demo import DRAWN, Request, check, class_names
    cfg = tiny().replace(model={"num_classes": 3}, train={"clusters": 3, "cluster_sizes": [5, 3, 2]})
    diff = md.Diffusion.new(cfg)
    assert class_names(diff) == ["cluster 0", "cluster 1", "cluster 2"]
    for label in (DRAWN, "none"):  # its unlabelled draw is its clusters
        labels, n = check(Request(label, 0.5, "ddim", 3, 7, 4), diff)
        assert n == 4 and np.array_equal(labels, draw_clusters([5, 3, 2], 4, seed=7))
    labels, _ = check(Request("cluster 2", 0.5, "ddim", 3, 7, 2), diff)
    assert labels.tolist() == [2, 2]
