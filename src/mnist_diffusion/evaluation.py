"""Sample quality of a model or of any set of 28x28 images, in the fixed evaluator's feature space.

- `noise_mse`: a model's epsilon-prediction error on real images, overall and per timestep band.
- `evaluate_images`: FID, precision/recall, recognizability and balance (metrics.py) for one set of
  images, plus the same numbers for real training images of the same count (`real_reference`),
  which is what a perfect generator scores.
- `evaluate_model`: draw from a model and score the images; `evaluate_run`: every periodic
  checkpoint of a training run against its step and training minutes.

Not here: the statistics themselves (metrics.py), the classifier (evaluator.py), generation
(sampling.py), Inception (inception.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_json
from .checkpoint import config_of
from .checkpoint import load as load_checkpoint
from .data import data_sha256, is_custom, load_custom, prepare, to_model_range
from .diffusion import Diffusion
from .evaluator import (EvalNet, embed, file_sha256, holdout_mask, load_custom_evaluator, real_probability, shipped_evaluator,
                        shipped_gate, weights_path)
from .metrics import (
    GATE_LEVEL,
    K_NEIGHBOURS,
    RECOGNIZABLE_THRESHOLD,
    _agreement,
    class_stats,
    feature_stats,
    frechet_distance,
    precision_recall,
)
from .partial import generate_resumable
from .rundir import elapsed_seconds, read_loss_rows
from .sampling import generate
from .schedule import q_sample

# ---------------------------------------------------------------------------------------------
# Fréchet distance


# ---------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al. 2019)


# ---------------------------------------------------------------------------------------------
# Classifier-based statistics


def label_accuracy(requested_labels, images_u8: np.ndarray, dataset: str,
                   net: Optional[EvalNet] = None) -> float:
    """Share of images the evaluator classifies as the label they were requested with (the
    hook for class-conditional sampling: any sampler that records its labels can be scored)."""
    if len(requested_labels) != len(images_u8):
        raise ValueError(f"{len(requested_labels)} labels for {len(images_u8)} images")
    _, probs = embed(net or shipped_evaluator(dataset), images_u8)
    return _agreement(requested_labels, probs)


# ---------------------------------------------------------------------------------------------
# Noise-prediction error of a diffusion model

@torch.no_grad()
def noise_mse(diff: "Diffusion", images_u8: np.ndarray, generator: torch.Generator, *,
              labels: Optional[np.ndarray] = None, bands: int = 4, batch_size: int = 256,
              progress: bool = False) -> dict:
    """E ||eps - eps_theta(x_t, t)||^2 per pixel, with x_t = q_sample(x_0, t, eps), on real images.

    t and eps are drawn up front from `generator` (t stratified: image i gets a t from band
    i mod `bands`), so the number does not depend on batch size or device. Returns the overall MSE
    (the training loss under uniform t) and one entry per equal-width band of timesteps. A
    v-predicting network is scored on the eps it implies (Diffusion.eps_fn)."""

    x0_all = to_model_range(images_u8)
    n, T = x0_all.shape[0], diff.timesteps
    bands = max(1, min(bands, T))
    edges = [round(b * T / bands) for b in range(bands + 1)]
    band_of = torch.arange(n) % bands
    lo, hi = torch.tensor(edges[:-1])[band_of], torch.tensor(edges[1:])[band_of]
    t_all = lo + (torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo)).long().clamp(max=T - 1)
    eps_all = torch.randn(x0_all.shape, generator=generator)
    y_all = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    per_image = torch.empty(n, dtype=torch.float64)
    for s in tqdm(range(0, n, batch_size), desc="noise MSE", unit="batch", disable=not progress, leave=False):
        x0, t, eps = (v[s:s + batch_size].to(diff.device) for v in (x0_all, t_all, eps_all))
        x_t = q_sample(diff.schedule, x0, t, eps)
        y = None if y_all is None else y_all[s:s + batch_size]
        pred = diff.eps_fn(y)(x_t, t)
        per_image[s:s + len(t)] = ((pred - eps) ** 2).mean(dim=(1, 2, 3)).double().cpu()
    out = {"overall": float(per_image.mean()), "bands": []}
    for b in range(bands):
        m = band_of == b
        if m.any():
            out["bands"].append({"t_min": edges[b], "t_max": edges[b + 1] - 1, "count": int(m.sum()),
                                 "mse": float(per_image[m].mean())})
    return out


# ---------------------------------------------------------------------------------------------
# Reference sets (test split for comparison, training split for the floor), cached per process

@dataclass(frozen=True, eq=False)
class Reference:
    """What images are scored against: the evaluator network, the real images they are compared
    with (a test split, or the held-out part of one's own set) and the real images whose score is
    the floor (the training part). `name` is the dataset; `sha256` the evaluator file's."""
    name: str
    net: EvalNet
    test: np.ndarray
    train: np.ndarray
    sha256: str
    test_labels: Optional[np.ndarray] = None
    gate: Optional[EvalNet] = None  # real image or not (evaluator.shipped_gate); None for one's own data

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.sha256


@lru_cache(maxsize=2)
def dataset_splits(dataset: str):
    """prepare(dataset), once per process: verifying 70k images' checksums costs about a second."""
    return prepare(dataset, download=False)


@lru_cache(maxsize=2)
def builtin_reference(dataset: str) -> Reference:
    splits = dataset_splits(dataset)
    return Reference(dataset, shipped_evaluator(dataset), splits["test"].images, splits["train"].images,
                     file_sha256(weights_path(dataset)), splits["test"].labels, shipped_gate(dataset))


def reference_for(dataset: str, evaluator: Optional[str] = None) -> Reference:
    """The Reference of a built-in dataset (its test split, the shipped evaluator), or of one's own
    (`folder:`/`npz:`) with an evaluator trained on it by `train-evaluator`: the images that
    evaluator held out are the comparison set, the rest give the floor."""
    if evaluator is None:
        if is_custom(dataset):
            raise ValueError(f"no evaluator for {dataset}: FID in evaluator features, precision/recall, "
                             "recognizability, class balance and label accuracy need one; train it with "
                             f"`mnist-diffusion train-evaluator --dataset {dataset}` (it needs class labels) and "
                             "pass --evaluator FILE, or score an unlabelled set with --inception alone")
        return builtin_reference(dataset)
    net, meta = load_custom_evaluator(evaluator)
    data = load_custom(dataset) if is_custom(dataset) else dataset_splits(dataset)["train"]
    if meta.get("data_sha256") != data_sha256(data):
        raise ValueError(f"--evaluator {evaluator} was trained on other data than {dataset} "
                         f"(its data SHA-256 is {str(meta.get('data_sha256'))[:12]}...)")
    held = holdout_mask(len(data.images))
    return Reference(dataset, net, data.images[held], data.images[~held], meta["sha256"],
                     None if data.labels is None else data.labels[held])


def _ref(dataset) -> Reference:
    return dataset if isinstance(dataset, Reference) else builtin_reference(dataset)


_TEST_REFERENCE: dict[tuple, tuple] = {}


def _test_reference(ref: Reference, progress: bool = False):
    """Features and (mean, cov) of the whole comparison set: 10k images through a small CNN, seconds."""
    if ref.key not in _TEST_REFERENCE:
        feats, _ = embed(ref.net, ref.test, progress=progress, desc=f"features ({ref.name} test)")
        _TEST_REFERENCE[ref.key] = (feats, feature_stats(feats))
    return _TEST_REFERENCE[ref.key]


def gate_passes(ref: Reference, images_u8: np.ndarray) -> Optional[np.ndarray]:
    """Which images the shipped gate takes for real ones of the dataset (probability >= GATE_LEVEL),
    None for one's own data (no gate: recognizability is the classifier's confidence alone)."""
    if ref.gate is None:
        return None
    return real_probability(ref.gate, images_u8) >= GATE_LEVEL


def _subset(n_total: int, n: int, seed: int, salt: int) -> np.ndarray:
    g = torch.Generator().manual_seed(int(seed) * 7919 + salt)
    return torch.randperm(n_total, generator=g)[:n].sort().values.numpy()


_REFERENCE_SCORES: dict[tuple, dict] = {}


def _reference_scores(ref: Reference, n: int, seed: int, k: int, progress: bool = False) -> dict:
    """The metrics of n random training images (a perfect generator), once per (n, seed, k): an
    `evaluate --run` sweep scores every checkpoint at the same n."""
    key = (*ref.key, n, seed, k)
    if key not in _REFERENCE_SCORES:
        real = ref.train[_subset(len(ref.train), min(n, len(ref.train)), seed, salt=1)]
        rf, rp = embed(ref.net, real, progress=progress, desc="features (real train)")
        _REFERENCE_SCORES[key] = {"n": int(len(real)),
                                  **score_features(rf, rp, ref, seed, k, passes=gate_passes(ref, real))}
    return _REFERENCE_SCORES[key]


def score_features(feats: np.ndarray, probs: np.ndarray, dataset, seed: int = 0,
                   k: int = K_NEIGHBOURS, progress: bool = False, passes: Optional[np.ndarray] = None) -> dict:
    """The metrics of one set given its evaluator outputs (the test split is the reference).
    `passes`: whether the gate takes each image for a real one (recognizable needs it too)."""
    test_feats, (mu_r, cov_r) = _test_reference(_ref(dataset), progress)
    n = len(feats)
    if n <= k:
        raise ValueError(f"need more than k={k} images to score, got {n}")
    mu, cov = feature_stats(feats)
    # precision/recall compare sets of equal size (their values depend on it): n test images
    real = test_feats[_subset(len(test_feats), min(n, len(test_feats)), seed, salt=2)]
    precision, recall = precision_recall(real, feats, k)
    return {"fid": frechet_distance(mu, cov, mu_r, cov_r), "precision": precision, "recall": recall,
            **class_stats(probs, inside=passes)}


def evaluate_images(images_u8: np.ndarray, dataset, *, seed: int = 0, k: int = K_NEIGHBOURS,
                    labels: Optional[Sequence[int]] = None, reference: bool = True,
                    progress: bool = False) -> dict:
    """Score uint8 (N, 28, 28) images against `dataset`'s test split (a built-in name, or a
    Reference from reference_for). With `reference`, also score N random training images the same
    way (`real_reference`; its fid is `fid_floor`)."""
    images_u8 = np.asarray(images_u8)
    if images_u8.ndim != 3 or images_u8.shape[1:] != (28, 28) or images_u8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, 28, 28), got {images_u8.dtype} {images_u8.shape}")
    ref = _ref(dataset)
    feats, probs = embed(ref.net, images_u8, progress=progress, desc="features (samples)")
    real = gate_passes(ref, images_u8)
    result = {"dataset": ref.name, "n": int(len(images_u8)),
              **score_features(feats, probs, ref, seed, k, progress, passes=real)}
    if reference:
        floor = _reference_scores(ref, len(images_u8), seed, k, progress)
        result["fid_floor"] = floor["fid"]
        result["real_reference"] = {**floor, "class_histogram": list(floor["class_histogram"])}
    if labels is not None:
        result["label_accuracy"] = _agreement(labels, probs)  # label_accuracy without a second pass
    result["k"] = k
    result["recognizable_threshold"] = RECOGNIZABLE_THRESHOLD
    result["evaluator_sha256"] = ref.sha256
    if ref.gate is not None:
        result["gate_sha256"] = file_sha256(weights_path(ref.name, kind="gate"))
    return result


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """Labels to request from a class-conditional model: image i gets class i mod num_classes,
    so every class is asked for equally often and the result does not depend on a generator."""
    return np.arange(n, dtype=np.int64) % num_classes


# ---------------------------------------------------------------------------------------------
# A model, and a whole training run

def evaluate_samples(images_u8: np.ndarray, dataset: str, *, labels: Optional[Sequence[int]] = None, seed: int = 0,
                     evaluator: Optional[str] = None, inception: bool = False, progress: bool = False) -> dict:
    """`evaluate_images` for a set of images from anywhere (with the labels they were drawn for, if
    known), and the Inception FID on request. One's own unlabelled set has no evaluator: with
    `inception` alone it gets the Inception FID against its images, and is told what it lacks."""
    if is_custom(dataset) and evaluator is None and inception:
        from .inception import inception_fid
        real = load_custom(dataset).images
        return {"dataset": dataset, "n": int(len(images_u8)),
                "inception_fid": inception_fid(images_u8, reference_u8=real, progress=progress),
                "not_available": "FID in evaluator features, precision/recall, recognizability, class balance and "
                                 "label accuracy need an evaluator (mnist-diffusion train-evaluator; labels needed)"}
    result = evaluate_images(images_u8, reference_for(dataset, evaluator), labels=labels, seed=seed, progress=progress)
    if inception:
        result["inception_fid"] = _inception(images_u8, dataset, progress)
    return result


def _inception(images_u8: np.ndarray, dataset: str, progress: bool) -> float:
    """Inception FID against a built-in test split, or against all of one's own images."""
    from .inception import inception_fid
    if is_custom(dataset):
        return inception_fid(images_u8, reference_u8=load_custom(dataset).images, progress=progress)
    return inception_fid(images_u8, dataset, progress=progress)


def evaluate_model(diff: "Diffusion", options: Optional[dict] = None, num_samples: int = 10000, *,
                   dataset: Optional[str] = None, noise_images: int = 10000, seed: int = 0, batch_size: int = 256,
                   npz: Optional[str] = None, evaluator: Optional[str] = None, inception: bool = False,
                   progress: bool = False, log: Callable[[str], None] = lambda _m: None,
                   names: str = "api") -> tuple[dict, np.ndarray]:
    """Draw `num_samples` images (a conditional model's with balanced labels: image i asks for class
    i mod C) and score them; add the model's noise MSE on `noise_images` test images. `options`:
    the sampling options given ({name: value}, None = the model's own); the report records the
    plan they resolved to. With `npz`, the images are kept as they come and saved there
    (partial.generate_resumable); `names`: how errors name the options, "api" (guidance=) or "cli"
    (--guidance). Returns (the report `evaluate --json` writes, the images)."""

    options = dict(options or {})
    dataset = dataset or diff.dataset
    if dataset != diff.dataset:
        log(f"note: {diff.source or 'this model'} was trained on {diff.dataset}; its images are scored against "
            f"the {dataset} test split and evaluator")
    if options.get("guidance") and not diff.num_classes and diff.guide is None:
        raise ValueError(f"guidance {options['guidance']}: {diff.source or 'this model'} is an unconditional model "
                         "(guidance needs one trained with --conditional)")
    ref = reference_for(dataset, evaluator)  # before drawing: a missing evaluator is an error now, not later
    if diff.clustered:  # clusters drawn by their sizes: no class was asked for, so no label accuracy
        requested, labels = diff.labels("clusters", num_samples, seed), None
    else:
        labels = balanced_labels(num_samples, diff.num_classes) if diff.num_classes else None
        requested = None if labels is None else torch.as_tensor(labels)
    drawn = diff.plan(labelled=requested is not None, names=names, **options)
    draw = dict(labels=requested, seed=seed, batch_size=batch_size, progress=progress)
    log(f"drawing {num_samples:,} images: {drawn.describe()}")
    if npz:
        imgs = generate_resumable(diff, num_samples, drawn, npz, log=log, **draw)
        log(f"wrote {npz}")
    else:
        imgs = generate(diff, num_samples, drawn, **draw)
    result = evaluate_images(imgs, ref, seed=seed, labels=labels, progress=progress)
    m = min(noise_images, len(ref.test))
    test_labels = ref.test_labels[:m] if diff.num_classes and not diff.clustered and ref.test_labels is not None \
        else None
    if test_labels is not None and len(test_labels) and int(np.max(test_labels)) >= diff.num_classes:
        test_labels = None  # another dataset's classes: the model's unlabelled prediction is scored
    result["noise_mse"] = noise_mse(diff, ref.test[:m], torch.Generator().manual_seed(seed), labels=test_labels,
                                    batch_size=batch_size, progress=progress)
    result["noise_mse"]["n"] = m
    result.update(checkpoint=diff.source, step=diff.step, seed=seed, sampler={
        **drawn.report(), "ema": diff.ema, "precision": diff.precision,
        "labels": "clusters drawn by their sizes" if diff.clustered else
                  "balanced (image i gets class i mod num_classes)" if labels is not None else None,
        **({"autoguide": diff.guide.source, "autoguide_step": diff.guide.step} if diff.guide is not None else {})})
    if requested is None and diff.guide is None:
        result["sampler"]["guidance"] = None  # unlabelled and unguided: no guidance weight applies
    if dataset != diff.dataset:
        result["warning"] = f"the model was trained on {diff.dataset}, scored against {dataset}"
    if inception:
        result["inception_fid"] = _inception(imgs, dataset, progress)
    return result, imgs


def evaluate_run(run_dir: str | Path, options: Optional[dict] = None, num_samples: int = 1000, *,
                 noise_images: int = 2000, load: Callable[[Path], "Diffusion"],
                 log: Callable[[str], None] = lambda _m: None, **kwargs) -> list[dict]:
    """`evaluate_model` for every RUN/checkpoints/step_*.pt, in step order, each row with the minutes
    of training behind it; writes RUN/metrics.json and RUN/metrics.png (FID and noise MSE against
    training step). `load(path)` gives the Diffusion of a checkpoint."""
    from .visualize import plot_eval_metrics

    run = Path(run_dir)
    paths = sorted((run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").is_dir() else []
    if not paths:
        raise ValueError(f"--run {run}: no checkpoints/step_*.pt to score")
    steps = []
    for p in paths:  # every checkpoint is read once up front, so a damaged one stops the sweep early
        ck = load_checkpoint(p)
        steps.append((int(ck["step"]), p))
    steps.sort()
    minutes = training_minutes(run, config_of(ck, str(p)).train.batch_size)
    rows = []
    for i, (step, p) in enumerate(steps):
        log(f"[{i + 1}/{len(steps)}] step {step}: {p.name}")
        row, _ = evaluate_model(load(p), options, num_samples, noise_images=noise_images, **kwargs)
        if minutes:
            row["train_minutes"] = round(float(np.interp(step, *minutes)), 4)
        log(f"step {step}: {summary(row)}")
        rows.append(row)
    atomic_write_json(run / "metrics.json", {"run": str(run), "checkpoints": rows})
    plot_eval_metrics(rows, run / "metrics.png")
    return rows


def training_minutes(run: Path, batch_size: int):
    """(steps, minutes) from the run's loss.csv, to put FID against wall-clock training time;
    None when the run has no usable loss.csv."""
    try:
        rows = read_loss_rows(run / "loss.csv")
        seconds = elapsed_seconds(rows, batch_size)
    except (OSError, ValueError, KeyError):
        return None
    if not rows:
        return None
    return [0] + [int(r["step"]) for r in rows], [0.0] + [s / 60 for s in seconds]


def summary(r: dict) -> str:
    """One line of a report: n, FID (floor), precision, recall, recognizable, balance, and the rest."""
    parts = [f"n={r['n']}"]
    if "fid" in r:
        parts.append(f"fid {r['fid']:.3f}" + (f" (floor {r['fid_floor']:.3f})" if "fid_floor" in r else ""))
        parts += [f"precision {r['precision']:.3f}", f"recall {r['recall']:.3f}",
                  f"recognizable {r['recognizable']:.3f}", f"class_entropy {r['class_entropy']:.3f}"]
    if "label_accuracy" in r:
        parts.append(f"label_accuracy {r['label_accuracy']:.3f}")
    if "noise_mse" in r:
        parts.append(f"noise_mse {r['noise_mse']['overall']:.4f}")
    if "inception_fid" in r:
        parts.append(f"inception_fid {r['inception_fid']:.2f}")
    return "  ".join(parts)
