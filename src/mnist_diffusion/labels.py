"""Label requests: the one place that decides what "label 7", "all", "clusters" or none means.

A request becomes one class per image (a long tensor) or None (the unconditional path), for a model
with `num_classes` classes, optionally trained on k-means clusters (`cluster_sizes`). The command
line's --label / --num-images / --nrow go through `request` as well, so the library and the CLI
agree on every rule.

Not here: whether the network can honour the labels (Denoiser.check_labels), sampling.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .clusters import draw_clusters

Label = Union[None, int, str, Sequence[int], torch.Tensor]
MAX_IMAGES = 1_000_000  # images one request may draw: 784 MB as uint8
DEFAULT_IMAGES = 64


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def resolve(label: Label, num_images: int, *, num_classes: Optional[int], cluster_sizes: Sequence[int] = (),
            seed: int = 0, names: str = "api") -> Optional[torch.Tensor]:
    """A label request -> one class per image (or None for the unconditional path).

    None: no labels. An int K: every image a K. "all": the same number of each class in order
    (0, 0, ..., 1, 1, ...), num_images a multiple of the classes. "clusters" (models trained with
    --clusters): each image's cluster drawn by the clusters' sizes, image i's from (seed, i). A
    sequence or tensor of ints: one label per image. Requests the model cannot honour are a
    one-line ValueError (TypeError for a label that is no class number at all); `names` "cli"
    words them for the command line (its flags), "api" for a Python call."""
    if label is None:
        return None
    if not num_classes:
        raise ValueError(f"label {label!r}: this is an unconditional model "
                         + ("(train with --conditional for class labels)" if names == "cli" else
                            "(it was trained without class labels)"))
    if isinstance(label, str):
        if label == "clusters":
            if not cluster_sizes:
                # how the model was trained, not this call's argument: both ways of training are named
                raise ValueError("label 'clusters' is for models trained with --clusters K (md.train(..., "
                                 "clusters=K) in Python); this one has class labels")
            return torch.from_numpy(draw_clusters(tuple(cluster_sizes), num_images, seed))
        if label != "all":
            raise ValueError(f"label must be a class number, 'all' or one label per image, got {label!r}")
        if num_images % num_classes:
            raise ValueError(f"label 'all' draws the same number of each of the {num_classes} classes: "
                             f"{num_images} images is not a multiple of {num_classes}")
        return torch.arange(num_classes).repeat_interleave(num_images // num_classes)
    if _is_int(label):
        return torch.full((num_images,), int(label), dtype=torch.long)
    if isinstance(label, (bool, float, np.floating, np.bool_)):
        raise TypeError(f"label must be a class number (an int), 'all' or one label per image, got {label!r}")
    labels = torch.as_tensor(np.asarray(label))
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be class numbers (integers), got {labels.dtype}")
    return labels.long()


def count_for(label: Label, num_classes: Optional[int], num_images: Optional[int] = None) -> int:
    """How many images a request draws when `num_images` is not given: one per given label, 10 of
    each class for "all", else DEFAULT_IMAGES."""
    if num_images is not None:
        return num_images
    if label is not None and not isinstance(label, str) and not _is_int(label) \
            and not isinstance(label, (bool, float)):
        return len(label)
    return 10 * num_classes if label == "all" and num_classes else DEFAULT_IMAGES


class Request(NamedTuple):
    labels: Optional[torch.Tensor]
    num_images: int
    nrow: Optional[int]


def request(label: Label, num_images: Optional[int], nrow: Optional[int], *, num_classes: Optional[int],
            cluster_sizes: Sequence[int] = (), seed: int = 0) -> Request:
    """The command line's --label / --num-images / --nrow -> (labels or None, images, images per
    grid row). No label on a model trained on clusters: its clusters drawn by their sizes. "all":
    one row per class, --nrow of each (default 10)."""
    if label is None and cluster_sizes:
        n = num_images or DEFAULT_IMAGES
        return Request(resolve("clusters", n, num_classes=num_classes, cluster_sizes=cluster_sizes, seed=seed,
                               names="cli"), n, nrow)
    if label == "all":
        if num_images is not None:
            raise ValueError("--label all draws one row per class; set the row length with --nrow, not --num-images")
        per_class = nrow or 10
        n = (num_classes or 1) * per_class
        if n > MAX_IMAGES:
            raise ValueError(f"--label all --nrow {per_class}: {n:,} images, more than {MAX_IMAGES:,}")
        return Request(resolve("all", n, num_classes=num_classes, names="cli"), n, per_class)
    n = num_images or DEFAULT_IMAGES
    return Request(resolve(label, n, num_classes=num_classes, cluster_sizes=cluster_sizes, seed=seed, names="cli"),
                   n, nrow)
