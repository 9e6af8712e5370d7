"""Pure sample-quality statistics over features and class probabilities: no model, no data, no files.

- `frechet_distance`: FID's statistic (Heusel et al. 2017) in float64, with the symmetric form
  tr sqrt(S1 C2 S1), S1 = C1^(1/2), so every square root is of a symmetric PSD matrix (eigh).
- `precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019), k-NN balls.
- `class_stats`: recognizability (confident predictions) and class balance (normalised entropy).

evaluation.py feeds them the evaluator's features of generated and real images; inception.py the
Inception network's.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

K_NEIGHBOURS = 3
RECOGNIZABLE_THRESHOLD = 0.9
GATE_LEVEL = 0.5  # the gate's probability of a real image above which an image counts as one (evaluator.py)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition.
    Round-off can leave tiny negative eigenvalues; they are set to zero (a PSD matrix has none)."""
    a = np.asarray(a, dtype=np.float64)
    a = (a + a.T) / 2  # symmetrise away round-off so eigh sees the matrix we mean
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2)).

    C1 C2 is not symmetric, but it is similar to S1 C2 S1 (S1 = C1^(1/2)), which is symmetric PSD
    and has the same eigenvalues, so tr((C1 C2)^(1/2)) = tr((S1 C2 S1)^(1/2)) needs only eigh: no
    complex parts to discard, unlike scipy.linalg.sqrtm on the product."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s1 = sqrtm_psd(cov1)
    tr_covmean = np.trace(sqrtm_psd(s1 @ cov2 @ s1))
    d = mu1 - mu2
    # the exact value is >= 0; clamp the round-off of two nearly equal sets
    return max(0.0, float(d @ d + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024):
    """Yield (start, distances of a[start:start+chunk] to all of b), float64."""
    for s in range(0, a.shape[0], chunk):
        yield s, torch.cdist(a[s:s + chunk], b)


def knn_radii(features: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """Distance from each point to its k-th nearest other point (the radius of its k-NN ball)."""
    f = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if f.shape[0] <= k:
        raise ValueError(f"need more than k={k} images for k-NN radii, got {f.shape[0]}")
    out = torch.empty(f.shape[0], dtype=torch.float64)
    for s, d in _pairwise(f, f):
        # the k+1 smallest include the point itself at distance 0
        out[s:s + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.numpy()


def coverage_share(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of `points` inside at least one ball (centre, radius): the manifold estimate of
    the set of centres."""
    p = torch.as_tensor(np.asarray(points, dtype=np.float64))
    c = torch.as_tensor(np.asarray(centres, dtype=np.float64))
    r = torch.as_tensor(np.asarray(radii, dtype=np.float64))
    inside = 0
    for _, d in _pairwise(p, c):
        inside += int((d <= r[None, :]).any(dim=1).sum())
    return inside / p.shape[0]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NEIGHBOURS,
                     real_radii: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Precision: share of generated points inside the real manifold (k-NN balls around real
    points). Recall: share of real points inside the generated manifold."""
    if real_radii is None:
        real_radii = knn_radii(real, k)
    precision = coverage_share(fake, real, real_radii)
    recall = coverage_share(real, fake, knn_radii(fake, k))
    return precision, recall


def class_stats(probs: np.ndarray, threshold: float = RECOGNIZABLE_THRESHOLD,
                inside: Optional[np.ndarray] = None) -> dict:
    """recognizable: share with top probability >= threshold (and, given `inside`, taken for a real
    image by the evaluator's gate); class_histogram: counts of the top class; class_entropy:
    entropy of that histogram / log(classes), 1.0 = perfectly balanced."""
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    hist = np.bincount(probs.argmax(axis=1), minlength=c)
    p = hist / max(n, 1)
    nz = p[p > 0]
    confident = probs.max(axis=1) >= threshold
    if inside is not None:
        confident = confident & np.asarray(inside, dtype=bool)
    return {
        "recognizable": float(confident.mean()) if n else 0.0,
        "class_histogram": [int(v) for v in hist],
        "class_entropy": max(0.0, float(-(nz * np.log(nz)).sum() / math.log(c))),  # never -0.0
    }


def _agreement(labels, probs: np.ndarray) -> float:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {probs.shape[0]} images")
    return float((probs.argmax(axis=1) == labels).mean())
