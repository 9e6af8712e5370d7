"""Figures: loss curves (and, as the project grows, schedule and process figures).

The only module that imports matplotlib, always with the Agg backend so figures build without a
display.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save_fig(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average, bias-corrected so the first points are not pulled to zero."""
    out, acc = np.empty_like(values, dtype=np.float64), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def plot_loss(loss_csv: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Training loss (raw and smoothed) against step, log scale."""
    with open(loss_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="loss (per log interval)")
        ax.plot(steps, smooth(loss), color="tab:blue", lw=2, label="smoothed (EMA 0.9)")
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_title("Training loss")
    ax.grid(True, which="both", alpha=0.3)
    return _save_fig(fig, output)


def plot_eval_metrics(rows: list[dict], output: str | os.PathLike) -> Path:
    """FID (with its floor) and noise-prediction MSE against training step, one panel each;
    `rows` are `evaluate --run` results with keys step, fid, fid_floor and noise_mse.overall."""
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    a1.plot(steps, [r["fid"] for r in rows], "o-", color="tab:red", label="FID (evaluator features)")
    a1.plot(steps, [r["fid_floor"] for r in rows], "--", color="grey", label="floor: real training images")
    a1.set_yscale("log")
    a1.set_ylabel("FID vs test split")
    a1.set_title(f"Sample quality (n = {rows[0]['n'] if rows else 0} per checkpoint)")
    a2.plot(steps, [r["noise_mse"]["overall"] for r in rows], "o-", color="tab:blue", label="all t")
    if rows:
        for b, band in enumerate(rows[0]["noise_mse"]["bands"]):
            a2.plot(steps, [r["noise_mse"]["bands"][b]["mse"] for r in rows], lw=1, alpha=0.7,
                    label=f"t in [{band['t_min']}, {band['t_max']}]")
    a2.set_yscale("log")
    a2.set_ylabel("noise-prediction MSE (test split)")
    a2.set_title("Denoising error")
    for ax in (a1, a2):
        ax.set_xlabel("training step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save_fig(fig, output)
