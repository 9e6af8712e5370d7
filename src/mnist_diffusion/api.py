"""The library's front door: train a model, score images, read a dataset, each in one call.

`mnist_diffusion.train` and `mnist_diffusion.evaluate` are these functions; `load` and the
`Diffusion` object live in diffusion.py. Everything the command line does goes through the same
modules, so a Python user and the CLI get the same bytes from the same seed.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .config import RunConfig, preset, resolve
from .data import DataError, Split, load_training_data, prepare
from .diffusion import Diffusion
from .distill import distill as distill_loop
from .distill import distill_run
from .evaluation import evaluate_images
from .training import train as train_loop


def load_dataset(dataset: str = "mnist", split: str = "train", data_dir: Optional[str] = None) -> Split:
    """A verified split of a built-in dataset (data.prepare: cache, packaged copies, mirrors)."""
    splits = prepare(dataset, data_dir=data_dir, log=lambda _m: None)
    if split not in splits:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(splits)}")
    return splits[split]


def train(config: Union[RunConfig, str] = "quick", dataset: Union[str, Split, None] = None, *,
          output_dir: Optional[str | os.PathLike] = None, resume: Optional[str] = None, progress: bool = True,
          log: Callable[[str], None] = lambda _m: None, **train_options) -> Diffusion:
    """Train a model and return it (EMA weights) as a `Diffusion`.

    `config`: a RunConfig or a preset name. `dataset`: a built-in name, "folder:PATH" or
    "npz:PATH" (default: the config's), or a Split of uint8 (N, 28, 28) images and labels. `train_options` override the config's train
    section (e.g. max_steps=200, seed=1; clusters=50 conditions on k-means clusters instead of
    labels). With `output_dir` the run is written there as `train`
    writes it (checkpoints, previews, loss.csv) and can be resumed; without, nothing is written."""

    if not isinstance(config, (str, RunConfig)):
        raise TypeError(f"config must be a RunConfig or a preset name, got {type(config).__name__}")
    if dataset is not None and not isinstance(dataset, (str, Split)):
        raise TypeError(f"dataset must be a name (mnist, fashion_mnist, folder:PATH, npz:PATH) or a Split, "
                        f"got {type(dataset).__name__}")
    base = preset(config) if isinstance(config, str) else config
    values = {f"train.{k}": v for k, v in train_options.items()}
    if isinstance(dataset, str):
        values["train.dataset"] = dataset
    # the CLI's resolver: clusters=K makes the K clusters the model's classes, a config without a
    # sampling section gets the recommended one
    cfg = resolve(base, values)
    data = dataset if isinstance(dataset, Split) else load_training_data(cfg.train.dataset, log=log)
    result = train_loop(cfg, data, output_dir, resume=resume, progress=progress, log=log)
    return result.diffusion


def distill(teacher: Union[str, os.PathLike, None] = "mnist", *, output_dir: Optional[str | os.PathLike] = None,
            resume: Optional[str] = None, method: Optional[str] = None, guidance: Optional[float] = None,
            pairs: Optional[int] = None, teacher_steps: Optional[int] = None, progress: bool = True,
            log: Callable[[str], None] = lambda _m: None, device: str = "auto", **train_options) -> Diffusion:
    """Distil `teacher` (a shipped name, a model folder or a checkpoint) into a student that draws in
    one network evaluation (`sample(..., steps=2)`: two), with the teacher's guidance built in, and
    return it (EMA weights) as a `Diffusion`. `method` "pairs" (default) or "consistency";
    `train_options` override the recipe's training options (e.g. max_steps=200, seed=1). With
    `output_dir` the run is written as `mnist-diffusion distill` writes it and can be resumed."""
    if teacher is not None and not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(f"teacher must be a shipped model's name or a path, got {type(teacher).__name__}")
    changes = {"method": method, "guidance": guidance, "pairs": pairs, "teacher_steps": teacher_steps}
    t, cfg, run_dir, resume = distill_run(None if teacher is None else str(teacher), output_dir=output_dir,
                                          resume=resume, distill_changes=changes, train_changes=train_options,
                                          device=device, log=log)
    data = load_training_data(cfg.train.dataset, log=log)
    result = distill_loop(t, cfg, data, output_dir and run_dir, resume=resume, progress=progress, log=log)
    return result.diffusion


def evaluate(images: np.ndarray, dataset: str = "mnist", *, labels: Optional[Sequence[int]] = None, seed: int = 0,
             progress: bool = False) -> dict:
    """Score uint8 (N, 28, 28) images against `dataset`'s test split with the shipped evaluator: FID
    and its floor, precision/recall, recognizability, class balance, and with `labels` (the class
    each image was asked for) label accuracy. The same dict `evaluate --json` writes."""
    return evaluate_images(np.asarray(images), dataset, seed=seed, labels=labels, progress=progress)
