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

from .atomic import atomic_write_bytes, atomic_write_text, read_regular
from .data import data_sha256, load_training_data, to_model_range
from .outputs import CUSTOM_EVALUATOR_FORMAT as CUSTOM_FORMAT

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

    def __init__(self, width: int = 32, dropout: float = 0.3, num_classes: int = NUM_CLASSES):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(1, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate layer: (B, 1, 28, 28) in [-1, 1] -> (B, 128)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def weights_path(dataset: str, weights_dir: Optional[Path] = None, kind: str = "evaluator") -> Path:
    """The shipped weights of `kind` "evaluator" (the classifier) or "gate" (real image or not)."""
    return Path(weights_dir or WEIGHTS_DIR) / f"{kind}_{dataset}.safetensors"


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


def load_evaluator(dataset: str, device="cpu", weights_dir: Optional[Path] = None, kind: str = "evaluator") -> EvalNet:
    """The shipped evaluator (or, kind="gate", its gate) for `dataset`, in eval mode, after checking
    its SHA-256."""
    path = weights_path(dataset, weights_dir, kind)
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
    net = EvalNet(num_classes=2 if kind == "gate" else NUM_CLASSES)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise EvaluatorError(f"{path}: weights do not fit the evaluator network ({str(e).splitlines()[0]})") from None
    return net.to(device).eval()


@lru_cache(maxsize=4)
def shipped_gate(dataset: str, device: str = "cpu") -> EvalNet:
    """The shipped gate for `dataset`, loaded (and hashed) once per process: a 2-class EvalNet whose
    class 1 is "a real image of this dataset" and class 0 "not one" (OUTLIERS, made by `outliers`)."""
    return load_evaluator(dataset, device=device, kind="gate")


@torch.no_grad()
def real_probability(gate: EvalNet, images_u8: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The gate's probability that each uint8 (N, 28, 28) image is a real image of its dataset."""
    images_u8 = np.asarray(images_u8)
    device = next(gate.parameters()).device
    out = [torch.softmax(gate(to_model_range(images_u8[s:s + batch_size]).to(device)).double(), dim=1)[:, 1].cpu()
           for s in range(0, len(images_u8), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


# What the gate learns to refuse (outlier exposure, Hendrycks et al. 2019): pictures a classifier's
# softmax can call confidently although they are no digit (garment) at all
OUTLIERS = ("blank", "uniform noise", "smooth blobs", "shuffled patches")


def outliers(real: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 (n, 28, 28) images of each kind in OUTLIERS, from one seeded generator: blank (a flat
    level 0-40), uniform noise, smooth blobs (bicubic-upsampled 4x4 or 7x7 noise), and real images
    cut into 7x7 or 4x4 tiles put back in a random order."""
    g = np.random.default_rng(seed)
    blank = np.broadcast_to(g.integers(0, 41, (n, 1, 1)), (n, 28, 28)).astype(np.uint8)
    noise = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    blobs = np.empty((n, 28, 28), np.uint8)
    for k, side in enumerate((4, 7)):
        part = slice(k, n, 2)
        coarse = torch.as_tensor(g.random((len(range(n)[part]), 1, side, side)), dtype=torch.float32)
        up = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False)
        blobs[part] = (up.clamp(0, 1)[:, 0].numpy() * 255).astype(np.uint8)
    shuffled = np.empty((n, 28, 28), np.uint8)
    picks = real[g.integers(0, len(real), n)]
    for k, tile in enumerate((7, 4)):
        part = picks[k::2]
        m, q = len(part), 28 // tile
        tiles = part.reshape(m, q, tile, q, tile).transpose(0, 1, 3, 2, 4).reshape(m, q * q, tile, tile)
        order = np.argsort(g.random((m, q * q)), axis=1)
        tiles = np.take_along_axis(tiles, order[:, :, None, None], axis=1)
        shuffled[k::2] = tiles.reshape(m, q, q, tile, tile).transpose(0, 1, 3, 2, 4).reshape(m, 28, 28)
    return dict(zip(OUTLIERS, (blank, noise, blobs, shuffled)))


def fit_gate(images: np.ndarray, *, n: int = 20_000, epochs: int = 3, seed: int = 0, log=lambda _m: None) -> EvalNet:
    """The gate's recipe: `n` real images (a seeded subset of `images`) against n outliers (a
    quarter of each kind, from the same seed), trained as `fit` trains the evaluator."""
    g = np.random.default_rng(seed)
    real = np.asarray(images)[g.permutation(len(images))[:n]]
    fake = np.concatenate(list(outliers(np.asarray(images), (n + 3) // 4, seed=seed + 1).values()))[:n]
    x = np.concatenate([real, fake])
    y = np.concatenate([np.ones(len(real), np.int64), np.zeros(len(fake), np.int64)])
    return fit(x, y, num_classes=2, epochs=epochs, max_shift=1, seed=seed, log=log)


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


def write_weights(net: EvalNet, dataset: str, weights_dir: Optional[Path] = None, kind: str = "evaluator") -> str:
    """Save the weights atomically as safetensors and record their SHA-256 in checksums.json;
    returns the hash."""
    from safetensors.torch import save

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    path = weights_path(dataset, weights_dir, kind)
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                                  metadata={"format": "mnist-diffusion-evaluator/1"}))  # one key: same bytes every time
    sums_path = weights_dir / CHECKSUM_FILE
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    sums[path.name] = file_sha256(path)
    atomic_write_text(sums_path, json.dumps(dict(sorted(sums.items())), indent=2) + "\n")
    return sums[path.name]



# ---------------------------------------------------------------------------------------------
# training one: the shipped evaluators' recipe, and evaluators for one's own labelled images

def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` px in x and y (background-filled): the only
    augmentation, because digits and garments are centred but not exactly."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, value=-1.0)  # -1 = background in model range
    oy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(net: EvalNet, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    net.eval()
    correct = 0
    for s in range(0, len(images), batch_size):
        x = to_model_range(images[s:s + batch_size])
        correct += int((net(x).argmax(1) == torch.as_tensor(np.asarray(labels[s:s + batch_size])).long()).sum())
    return correct / len(images)


def fit(images: np.ndarray, labels: np.ndarray, *, num_classes: int = NUM_CLASSES, epochs: int = 5,
        batch_size: int = 128, lr: float = 3e-3, max_shift: int = 2, seed: int = 0,
        log=lambda _m: None) -> EvalNet:
    """Train an EvalNet: AdamW (weight decay 5e-4) with a one-cycle learning rate, random shifts of
    up to `max_shift` px. Weights and dropout draw from `seed`, batches and shifts from `seed + 1`,
    in a forked global generator (the caller's is left as it was); deterministic kernels, so a
    given machine rebuilds the same weights."""
    import time

    import torch.nn.functional as F

    x_all, y_all = to_model_range(images), torch.as_tensor(np.asarray(labels)).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            g = torch.Generator().manual_seed(seed + 1)
            net = EvalNet(num_classes=num_classes)
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
            steps_per_epoch = (len(x_all) + batch_size - 1) // batch_size
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                        pct_start=0.2)
            t0 = time.time()
            for epoch in range(epochs):
                net.train()
                perm = torch.randperm(len(x_all), generator=g)
                total, n = 0.0, 0
                for s in range(0, len(perm), batch_size):
                    idx = perm[s:s + batch_size]
                    loss = F.cross_entropy(net(random_shift(x_all[idx], max_shift, g)), y_all[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    n += len(idx)
                log(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f} ({time.time() - t0:.0f} s)")
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
    return net.eval()


def holdout_mask(n: int) -> np.ndarray:
    """Which of n images an evaluator of one's own set holds out: every tenth (index 9, 19, ...), at
    least one; the comparison set of `evaluate` for that data."""
    mask = np.arange(n) % 10 == 9
    if not mask.any():
        mask[-1] = True
    return mask


def write_custom_evaluator(net: EvalNet, path: str | Path, meta: dict) -> str:
    """An evaluator of one's own data, as safetensors with its facts in the metadata (classes,
    data SHA-256, held-out accuracy); returns the file's SHA-256."""
    from safetensors.torch import save

    # one metadata key (safetensors writes several in a random order): the same net gives the same bytes
    payload = save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                   metadata={"format": json.dumps({"format": CUSTOM_FORMAT, **meta}, sort_keys=True)})
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


MAX_CUSTOM_BYTES = 64 << 20  # an EvalNet is about 1 MB; anything far larger is not one, and is not read


def load_custom_evaluator(path: str | Path) -> tuple[EvalNet, dict]:
    """(network, facts) of a file written by `train-evaluator`; facts include its SHA-256."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    try:  # a FIFO would block the read forever; a file far larger than an EvalNet is not one
        data = read_regular(p, MAX_CUSTOM_BYTES)
    except OSError as e:
        raise EvaluatorError(f"--evaluator {p}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # read_regular's message starts with the file
        raise EvaluatorError(f"--evaluator {e}") from None
    try:
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")
        raw = (json.loads(data[8:8 + n]).get("__metadata__") or {}).get("format", "")  # these very bytes' metadata
        meta = json.loads(raw) if raw.startswith("{") else {"format": raw}
        if meta.pop("format", None) != CUSTOM_FORMAT:
            raise EvaluatorError(f"--evaluator {p}: not written by `mnist-diffusion train-evaluator`")
        net = EvalNet(num_classes=int(meta["num_classes"]))
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EvaluatorError(f"--evaluator {p}: not a readable evaluator file ({e})") from None
    try:
        net.load_state_dict(tensors)
    except (RuntimeError, KeyError) as e:
        raise EvaluatorError(f"--evaluator {p}: weights do not fit the evaluator network ({str(e).splitlines()[0]})") \
            from None
    return net.eval(), {**meta, "sha256": hashlib.sha256(data).hexdigest()}


def train_for_dataset(dataset: str, output: str | Path, *, epochs: int = 5, batch_size: int = 128, lr: float = 3e-3,
                      max_shift: int = 2, seed: int = 0, log=lambda _m: None) -> dict:
    """An evaluator for a labelled set (one's own, `folder:`/`npz:`, or a built-in one's train split):
    the shipped evaluators' recipe (`fit`) on all but every tenth image, its accuracy on those it
    held out, written to `output`. Returns what it wrote into the file's metadata."""
    data = load_training_data(dataset, log=log)
    if data.labels is None:
        raise EvaluatorError(f"{dataset} has no labels: an evaluator learns to tell its classes apart (put the images "
                             "in one folder per class, or give `labels` in the npz); without labels, `evaluate "
                             "--inception` gives an FID")
    classes = data.classes or tuple(str(c) for c in range(int(np.max(data.labels)) + 1))
    if len(classes) < 2:
        raise EvaluatorError(f"{dataset} has a single class: an evaluator needs at least two")
    held = holdout_mask(len(data.images))
    if (~held).sum() < 2:
        raise EvaluatorError(f"{dataset} has {len(data.images)} images: too few to train an evaluator")
    net = fit(data.images[~held], data.labels[~held], num_classes=len(classes), epochs=epochs, batch_size=batch_size,
              lr=lr, max_shift=max_shift, seed=seed, log=log)
    meta = {"dataset": dataset, "data_sha256": data_sha256(data), "classes": list(classes),
            "num_classes": len(classes), "trained_on": int((~held).sum()), "held_out": int(held.sum()),
            "held_out_accuracy": accuracy(net, data.images[held], data.labels[held]),
            "held_out_rule": "every tenth image (index 9, 19, ...)", "epochs": epochs, "seed": seed,
            "max_shift": max_shift}
    return {**meta, "sha256": write_custom_evaluator(net, output, meta)}
