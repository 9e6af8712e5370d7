"""partial.py: the resumable store behind `sample --npz` / `evaluate --npz`."""
from __future__ import annotations

import numpy as np

from mnist_diffusion.partial import PartialImages


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_round_trip_and_removal(tmp_path):
    p = PartialImages(tmp_path / "out.npz", {"seed": 0, "steps": 20})
    assert p.load() is None
    imgs = _images(8)
    p.save(imgs)
    assert p.path.parent == tmp_path and p.path.name.startswith(".out.npz.partial-")
    np.testing.assert_array_equal(p.load(), imgs)
    p.remove()
    assert not p.path.exists() and p.load() is None
    p.remove()  # removing twice is fine


def test_another_request_never_reads_it(tmp_path):
    a = PartialImages(tmp_path / "out.npz", {"seed": 0, "steps": 20})
    b = PartialImages(tmp_path / "out.npz", {"seed": 1, "steps": 20})
    a.save(_images(4))
    assert b.path != a.path and b.load() is None
    # same key order-independently: the request is a set of settings, not a sequence
    assert PartialImages(tmp_path / "out.npz", {"steps": 20, "seed": 0}).path == a.path


def test_damaged_or_foreign_files_are_ignored(tmp_path):
    p = PartialImages(tmp_path / "out.npz", {"seed": 0})
    p.path.write_bytes(b"not an npz")
    assert p.load() is None
    # a file at the right name holding another request's images (a hash collision) is not used
    np.savez(p.path, images=_images(4), request=np.array('{"seed": 1}'))
    assert p.load() is None
    np.savez(p.path, images=np.zeros((4, 28, 27), np.uint8), request=np.array(p.request))
    assert p.load() is None
