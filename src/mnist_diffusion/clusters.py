"""Label-free conditioning: k-means clusters of the training images stand in for class labels.

A class-conditional model with guidance draws far better images than an unconditional one of the
same size and training (docs/decisions/label-free-clusters.md), but it needs labels.
`train --clusters K` gets most of that gain without any: the images are grouped into K clusters
(k-means on the leading principal components of their pixels, never in the evaluator's features,
which would leak the metric), the model is trained conditioned on the cluster ids with label drop,
and sampling draws each image's cluster from the clusters' sizes before guiding towards it.

Everything here is numpy in float64 and seeded, so the same images and seed give the same
clusters; cluster 0 is the largest.
"""
from __future__ import annotations

import numpy as np

from .config import MAX_CLUSTERS


def principal_components(images_u8: np.ndarray, dims: int = 32, chunk: int = 10_000) -> np.ndarray:
    """(N, dims) coordinates of the images on their `dims` leading principal components (pixels
    in [0, 1]; each component's sign fixed so its largest loading is positive)."""
    x = images_u8.reshape(len(images_u8), -1)
    mean = x.mean(axis=0, dtype=np.float64) / 255.0
    cov = np.zeros((x.shape[1], x.shape[1]))
    for i in range(0, len(x), chunk):
        c = x[i:i + chunk] / 255.0 - mean
        cov += c.T @ c
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    v = vecs[:, ::-1][:, :min(dims, x.shape[1])]
    v *= np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    return np.concatenate([(x[i:i + chunk] / 255.0 - mean) @ v for i in range(0, len(x), chunk)])


def _sq_dist(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ centres.T + (centres * centres).sum(1)[None, :], 0.0)


def _kmeans_once(z: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> tuple[np.ndarray, float]:
    # k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    # proportional to its squared distance from the nearest centre so far
    centres = [z[rng.integers(len(z))]]
    d2 = _sq_dist(z, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(len(z), p=d2 / total)) if total > 0 else int(rng.integers(len(z)))
        centres.append(z[i])
        d2 = np.minimum(d2, _sq_dist(z, z[i][None])[:, 0])
    c = np.stack(centres)
    assign = None
    for _ in range(iters):  # Lloyd's iterations until no image changes cluster
        d = _sq_dist(z, c)
        new = d.argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = z[assign == j]
            if len(members):
                c[j] = members.mean(axis=0)
            else:  # an empty cluster restarts at the image farthest from its centre
                far = int(d[np.arange(len(z)), assign].argmax())
                c[j], assign[far] = z[far], j
    d = _sq_dist(z, c)
    assign = d.argmin(axis=1)
    return assign, float(d[np.arange(len(z)), assign].sum())


def kmeans_labels(images_u8: np.ndarray, k: int, seed: int = 0, *, dims: int = 32, restarts: int = 3,
                  iters: int = 100) -> np.ndarray:
    """Cluster ids (int64, 0..k-1, 0 the largest cluster) of uint8 images (N, H, W): k-means on
    their `dims` leading principal components, the best of `restarts` seeded runs (lowest sum of
    squared distances)."""
    images_u8 = np.asarray(images_u8)
    if not 2 <= k <= MAX_CLUSTERS:
        raise ValueError(f"clusters must be in [2, {MAX_CLUSTERS}], got {k}")
    if len(images_u8) < k:
        raise ValueError(f"{k} clusters need at least {k} images, got {len(images_u8)}")
    z = principal_components(images_u8, dims)
    rng = np.random.default_rng([seed, 0x6B6D])
    best, best_cost = None, np.inf
    for _ in range(restarts):
        assign, cost = _kmeans_once(z, k, rng, iters)
        if cost < best_cost:
            best, best_cost = assign, cost
    sizes = np.bincount(best, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))  # largest first, ties by the first-found id
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    return relabel[best]


def draw_clusters(sizes, num_images: int, seed: int = 0) -> np.ndarray:
    """One cluster id per image, drawn with probability proportional to the clusters' `sizes`.
    Image i's draw depends only on (seed, i), not on how many images are drawn."""
    cdf = np.cumsum(np.asarray(sizes, dtype=np.float64))
    u = np.random.default_rng([seed, 0x636C]).random(num_images) * cdf[-1]
    return np.searchsorted(cdf, u, side="right").astype(np.int64)
