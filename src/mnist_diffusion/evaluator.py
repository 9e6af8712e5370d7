"""The fixed evaluator: a small CNN classifier per dataset whose penultimate layer is the feature
space for FID / precision / recall and whose softmax scores recognizability and class balance.

The weights ship in `weights/evaluator_<dataset>.safetensors` (tensors only: nothing in the file
can run code) and their SHA-256 in `weights/checksums.json`; a file whose hash differs is
refused, so every number computed with it is comparable across machines and releases.
`scripts/train_evaluator.py` rebuilds them (same seed, same accuracy; not necessarily the same
bytes); `--convert OLD.pt` rewrote the earlier torch.save files as they were, tensor for tensor.

Not here: the metrics themselves (evaluation.py) and the Inception network (inception.py).
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import to_model_range

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CHECKSUM_FILE = "checksums.json"
FEATURE_DIM = 128
NUM_CLASSES = 10


class EvaluatorError(ValueError):
    """The evaluator's weights are missing, tampered with, or do not fit the network."""


def _block(cin: int, cout: int) -> nn.Sequential:
    # bias-free conv: BatchNorm's shift makes a conv bias redundant
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EvalNet(nn.Module):
    """28x28 -> 3 conv blocks (28, 14, 7 px) -> global average pool (the 128-d features) -> 10 logits.

    Kept small (~0.1 M parameters, ~0.4 MB) so it trains in minutes on a CPU and embeds 10k images
    in seconds; global pooling makes the features a summary of the whole image rather than of
    pixel positions."""

    def __init__(self, width: int = 32, dropout: float = 0.3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(1, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate layer: (B, 1, 28, 28) in [-1, 1] -> (B, 128)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def weights_path(dataset: str, weights_dir: Optional[Path] = None) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"evaluator_{dataset}.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_checksums(weights_dir: Optional[Path] = None) -> dict[str, str]:
    path = Path(weights_dir or WEIGHTS_DIR) / CHECKSUM_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluatorError(f"{path}: cannot read the evaluator checksums ({e})") from None


def load_evaluator(dataset: str, device="cpu", weights_dir: Optional[Path] = None) -> EvalNet:
    """The shipped evaluator for `dataset`, in eval mode, after checking its SHA-256."""
    path = weights_path(dataset, weights_dir)
    if not path.is_file():
        raise EvaluatorError(f"no evaluator weights for {dataset!r} at {path}; "
                             "run scripts/train_evaluator.py or reinstall the package")
    want = expected_checksums(weights_dir).get(path.name)
    if want is None:
        raise EvaluatorError(f"{path.name} has no entry in {CHECKSUM_FILE}; refusing unverified weights")
    got = file_sha256(path)
    if got != want:
        raise EvaluatorError(f"{path}: SHA-256 {got[:16]}... does not match the recorded {want[:16]}...; "
                             "the evaluator weights were modified, so its numbers would not be comparable")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise EvaluatorError(f"{path}: not a readable safetensors file ({e})") from None
    net = EvalNet()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise EvaluatorError(f"{path}: weights do not fit the evaluator network ({str(e).splitlines()[0]})") from None
    return net.to(device).eval()


@lru_cache(maxsize=4)
def shipped_evaluator(dataset: str, device: str = "cpu") -> EvalNet:
    """load_evaluator for the packaged weights, loaded (and hashed) once per process."""
    return load_evaluator(dataset, device=device)


@torch.no_grad()
def embed(net: EvalNet, images_u8: np.ndarray, batch_size: int = 1000, progress: bool = False,
          desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) -> (features float64 (N, 128), class probabilities float64 (N, 10)).

    Computed in float32 batches on the evaluator's device; BatchNorm is in eval mode, so a
    batch's result does not depend on which other images share it."""
    images_u8 = np.asarray(images_u8)
    device = next(net.parameters()).device
    feats, probs = [], []
    for start in tqdm(range(0, len(images_u8), batch_size), desc=desc, unit="batch",
                      disable=not progress, leave=False):
        x = to_model_range(images_u8[start:start + batch_size]).to(device)
        f = net.features(x)
        feats.append(f.double().cpu())
        probs.append(torch.softmax(net.head(f).double(), dim=1).cpu())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def write_weights(net: EvalNet, dataset: str, weights_dir: Optional[Path] = None) -> str:
    """Save the weights atomically as safetensors and record their SHA-256 in checksums.json;
    returns the hash."""
    from safetensors.torch import save

    from .atomic import atomic_write_bytes, atomic_write_text

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    path = weights_path(dataset, weights_dir)
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                                  metadata={"format": "mnist-diffusion-evaluator/1", "dataset": dataset}))
    sums_path = weights_dir / CHECKSUM_FILE
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    sums[path.name] = file_sha256(path)
    atomic_write_text(sums_path, json.dumps(dict(sorted(sums.items())), indent=2) + "\n")
    return sums[path.name]

