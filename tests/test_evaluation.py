"""Metrics: closed forms of the Fréchet distance and k-NN precision/recall, invariants of the
class statistics and noise MSE, and the ordering real < noised < noise/blank on real MNIST."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnist_diffusion.data import to_model_range, to_uint8
from mnist_diffusion.evaluation import balanced_labels, evaluate_images, noise_mse
from mnist_diffusion.metrics import (class_stats, fid_from_features, frechet_distance, knn_radii, precision_recall,
                                     sqrtm_psd)
from mnist_diffusion.schedule import extract, make_schedule


def _random_psd(d, seed, rank=None):
    g = np.random.default_rng(seed)
    a = g.standard_normal((d, rank or d))
    return a @ a.T / d


def test_sqrtm_psd_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    for seed, rank in [(0, None), (1, 5)]:  # full rank and singular
        c = _random_psd(16, seed, rank)
        s = sqrtm_psd(c)
        np.testing.assert_allclose(s @ s, c, atol=1e-10)
        np.testing.assert_allclose(s, s.T, atol=1e-12)
        if rank is None:
            np.testing.assert_allclose(s, scipy_linalg.sqrtm(c).real, atol=1e-8)


def test_frechet_distance_matches_scipy_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = _random_psd(12, 2), _random_psd(12, 3)
    mu1, mu2 = np.arange(12.0) / 10, np.ones(12)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy_linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # commuting (diagonal) covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, 0.0])
    want = 9 + 4 + (1 + 1 + 0)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).standard_normal((500, 32))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(f, f + 1.0) == pytest.approx(32.0, rel=1e-9)  # a pure shift: |mu|^2


def test_precision_recall_limits():
    g = np.random.default_rng(1)
    real = g.standard_normal((300, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)  # every point lies in its own ball
    far = real + 1000.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # mode dropping: real data has two far-apart modes, the generator reproduces one of them
    two_modes = np.concatenate([real[:150], real[150:] + 1000.0])
    assert precision_recall(two_modes, real[:150]) == (1.0, 0.5)


def test_knn_radii_on_a_line():
    pts = np.arange(10, dtype=np.float64)[:, None]  # neighbours at distance 1, 1, 2, 2, ...
    r = knn_radii(pts, k=3)
    assert r[0] == 3 and r[5] == 2  # an end point's 3rd neighbour is 3 away; an inner one's 2


def test_class_stats_extremes():
    uniform = np.eye(10)[np.arange(100) % 10]
    s = class_stats(uniform)
    assert s["class_entropy"] == pytest.approx(1.0)
    assert s["recognizable"] == 1.0 and s["class_histogram"] == [10] * 10
    unsure = np.full((50, 10), 0.05)
    unsure[:, 3] = 0.55  # always class 3, never confidently
    s = class_stats(unsure)
    assert s["recognizable"] == 0.0 and s["class_entropy"] == 0.0 and s["class_histogram"][3] == 50
    assert list(balanced_labels(12, 10)) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


class _Oracle(torch.nn.Module):
    """Predicts the true noise by inverting q_sample with the x0 it is shown in order."""

    def __init__(self, schedule, x0):
        super().__init__()
        self.schedule, self.x0, self.pos = schedule, x0, 0

    def forward(self, x_t, t):
        x0 = self.x0[self.pos:self.pos + len(t)]
        self.pos += len(t)
        s = self.schedule
        return (x_t - extract(s.sqrt_alpha_bar, t, x_t) * x0) / extract(s.sqrt_one_minus_alpha_bar, t, x_t)


class _VOracle(_Oracle):
    def forward(self, x_t, t):
        x0 = self.x0[self.pos:self.pos + len(t)]
        self.pos += len(t)
        s = self.schedule
        return (extract(s.sqrt_alpha_bar, t, x_t) * x_t - x0) / extract(s.sqrt_one_minus_alpha_bar, t, x_t)


class _Zero(torch.nn.Module):
    def forward(self, x_t, t):
        return torch.zeros_like(x_t)


def _diffusion(model, prediction="eps", T=100):
    from mnist_diffusion.config import RunConfig
    from mnist_diffusion.diffusion import Diffusion
    cfg = RunConfig.from_dict({"model": {"prediction": prediction}, "diffusion": {"timesteps": T}})
    return Diffusion(model, cfg, precision="fp32")


def test_noise_mse_limits_and_batch_independence():
    schedule = make_schedule("cosine", 100)
    imgs = (np.random.default_rng(0).random((64, 28, 28)) * 255).astype(np.uint8)
    zero = noise_mse(_diffusion(_Zero()), imgs, torch.Generator().manual_seed(0), bands=4, batch_size=16)
    # predicting 0 costs E[eps^2] = 1 per pixel, in every band
    assert zero["overall"] == pytest.approx(1.0, abs=0.02)
    assert [b["count"] for b in zero["bands"]] == [16] * 4
    assert zero["bands"][0]["t_min"] == 0 and zero["bands"][-1]["t_max"] == 99
    oracle = noise_mse(_diffusion(_Oracle(schedule, to_model_range(imgs))), imgs, torch.Generator().manual_seed(0))
    assert oracle["overall"] < 1e-6
    # a v-predicting network is scored on the eps its v implies: the v-oracle's is exact too
    v_oracle = _diffusion(_VOracle(schedule, to_model_range(imgs)), prediction="v")
    assert noise_mse(v_oracle, imgs, torch.Generator().manual_seed(0))["overall"] < 1e-6
    again = noise_mse(_diffusion(_Zero()), imgs, torch.Generator().manual_seed(0), bands=4, batch_size=7)
    assert again == zero


# ---------------------------------------------------------------------------------------------
# on real MNIST (subsets, to keep the suite fast)

N = 1000


def _noised(images, sigma, seed=0):
    x = to_model_range(images)
    return to_uint8(x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))


def _random_test_images(mnist, n=N, seed=0):
    # a random subset: the test split's two halves come from different writers
    idx = torch.randperm(len(mnist["test"].images), generator=torch.Generator().manual_seed(seed))[:n]
    return mnist["test"].images[idx.sort().values.numpy()]


@pytest.fixture(scope="module")
def scored(mnist):
    test = _random_test_images(mnist)
    blank = np.zeros_like(test)
    noise = (torch.rand((N, 28, 28), generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    return {name: evaluate_images(x, "mnist", reference=(name == "real")) for name, x in
            [("real", test), ("blank", blank), ("noise", noise)]}


def test_real_images_score_near_the_floor(scored):
    real = scored["real"]
    assert real["recognizable"] >= 0.97
    assert real["class_entropy"] > 0.99
    # held-out real images are as good as a perfect generator: within sampling noise of the floor
    assert real["fid"] <= 2 * real["fid_floor"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert real["real_reference"]["recognizable"] >= 0.97


def test_noise_and_blank_score_far_worse(scored):
    floor = scored["real"]["fid_floor"]
    for name in ("blank", "noise"):
        r = scored[name]
        assert r["fid"] > 50 * floor, name
        assert r["precision"] < 0.1, name
        assert r["class_entropy"] < 0.5, name  # everything lands in one or two classes


def test_fid_rises_monotonically_with_noise(mnist):
    test = _random_test_images(mnist, 500)
    fids = [evaluate_images(_noised(test, s), "mnist", reference=False)["fid"] for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_results_are_deterministic(mnist):
    x = mnist["test"].images[:200]
    assert evaluate_images(x, "mnist", seed=3) == evaluate_images(x, "mnist", seed=3)


def test_label_accuracy_hook(mnist):
    from mnist_diffusion.evaluation import label_accuracy
    x, y = mnist["test"].images[:300], mnist["test"].labels[:300]
    assert label_accuracy(y, x, "mnist") >= 0.97
    assert label_accuracy((y.astype(int) + 1) % 10, x, "mnist") < 0.05  # every label wrong by one
    with pytest.raises(ValueError, match="labels for"):
        label_accuracy(y[:10], x, "mnist")
