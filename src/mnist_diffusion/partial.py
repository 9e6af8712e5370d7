"""Resumable image sets: a long `sample --npz` or `evaluate --npz` keeps the images drawn so far in
a hidden file beside its output, so a crash, a full disk or Ctrl-C costs at most one batch.

The file is named by a hash of everything that decides the images (the loaded checkpoint's
bytes, sampler settings, seed, labels, guidance, precision, device, batch size): image i depends
only on (seed, i) (samplers.PerImageNoise), and a resumed run starts on a batch boundary, so it
writes the same bytes as an uninterrupted one. A different request never reads another's file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .data import to_uint8
from .denoiser import Denoiser
from .images import save_npz
from .sampling import SamplingPlan, sample_batches


class PartialImages:
    """The images of one request drawn so far, at `.<output name>.partial-<key>.npz`; `complete`
    writes the finished set to the output and drops the partial file."""

    def __init__(self, output: str | os.PathLike, request: dict):
        self.output = Path(output)
        self.request = json.dumps(request, sort_keys=True, default=str)
        key = hashlib.sha256(self.request.encode()).hexdigest()[:16]
        self.path = self.output.with_name(f".{self.output.name}.partial-{key}.npz")

    def load(self) -> Optional[np.ndarray]:
        """The saved images, or None when there are none (or the file is unreadable or stale)."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["request"]) != self.request:
                    return None
                images = z["images"]
        except (OSError, EOFError, KeyError, ValueError):
            return None  # a damaged cache only costs the work it held
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            return None
        return images

    def save(self, images: np.ndarray) -> None:
        save_npz(images, self.path, request=np.array(self.request))

    def complete(self, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
        save_npz(images, self.output, **({} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}))
        self.remove()

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(diff: Denoiser, num_images: int, options: SamplingPlan, labels: Optional[torch.Tensor],
            seed: int, batch_size: int) -> dict:
    """Everything that decides a run's images, as the partial file's key."""
    label_hash = None
    if labels is not None:
        label_hash = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()
    return {"checkpoint_sha256": diff.fingerprint(), "ema": diff.ema, "num_images": num_images, "seed": seed, **options.report(),
            "timesteps": list(options.timesteps),
            "precision": str(diff.amp), "device": str(diff.device), "batch_size": batch_size, "labels": label_hash}


def generate_resumable(diff: Denoiser, num_images: int, options: SamplingPlan, output: str | os.PathLike, *,
                       labels: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256,
                       progress: bool = False, callback=None, log: Callable[[str], None] = lambda _m: None) -> np.ndarray:
    """sampling.generate, keeping each finished batch in the partial file of `output` and continuing
    from it when the same request was stopped before; writes `output` (uint8 `images`, and the
    `labels` they were drawn for) at the end. With a `callback` (a Trajectory, say) the run starts
    from the first image and keeps no partial file: the callback must see every batch."""
    store = None if callback is not None else PartialImages(output, request(diff, num_images, options, labels, seed,
                                                                            batch_size))
    images = np.empty((num_images, 28, 28), dtype=np.uint8)
    done = store.load() if store is not None else None
    first = 0 if done is None else len(done)
    if first:
        log(f"continuing an interrupted run: {first} of {num_images} images already drawn ({store.path.name})")
        images[:first] = done
    for start, x0 in sample_batches(diff, num_images, options, labels=labels, seed=seed, batch_size=batch_size,
                                    first=first, progress=progress, callback=callback):
        images[start:start + len(x0)] = to_uint8(x0)
        if store is not None:
            store.save(images[:start + len(x0)])
    if store is not None:
        store.complete(images, labels)
    else:
        save_npz(images, output, **({} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}))
    return images
