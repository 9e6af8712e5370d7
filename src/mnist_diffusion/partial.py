"""Resumable image sets: a long `sample --npz` or `evaluate --npz` keeps the images drawn so far in
a hidden file beside its output, so a crash, a full disk or Ctrl-C costs at most one batch.

The file is named by a hash of everything that decides the images (checkpoint bytes, sampler
settings, seed, labels, guidance, precision, device, batch size): image i depends only on
(seed, i) (samplers.PerImageNoise), and a resumed run starts on a batch boundary, so it writes the
same bytes as an uninterrupted one. A different request never reads another's file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .images import save_npz


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

    def complete(self, images: np.ndarray) -> None:
        save_npz(images, self.output)
        self.remove()

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
