"""Figures and animations that explain the process: loss curves, schedules, forward diffusion,
noising rules, the DDPM equations, reverse-process and training-progress GIFs.

The only module that imports matplotlib, with the Agg backend so figures build without a display
(inside a Jupyter kernel the notebook's own backend is left alone); GIF frames are drawn with Pillow (images.py), never with matplotlib. Each function
takes arrays and returns the path it wrote (atomically); loading data and checkpoints is the
CLI's job. docs/VISUALIZE.md shows every figure with the command that made it.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Optional

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend: its own plots must still show
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import noising
from .atomic import atomic_write_bytes  # noqa: E402
from .config import CLASS_NAMES  # noqa: E402
from .data import SIZES, to_model_range
from .images import grid, label_frame, save_gif, save_grid, save_png
from .sampling import generate, gif_timesteps  # noqa: E402
from .schedule import make_schedule, q_sample


def _save_fig(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def smooth_centred(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of log(values) (a geometric mean over `window` points; near the
    ends the window shrinks symmetrically, so the first and last points are kept). Unlike an EMA
    it does not lag, so on a falling curve it stays on the data."""
    v = np.log(np.maximum(np.asarray(values, dtype=np.float64), 1e-12))
    n = len(v)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(n)
    h = np.minimum(np.minimum(i, n - 1 - i), max(0, int(window) // 2))
    return np.exp((c[i + h + 1] - c[i - h]) / (2 * h + 1))


def plot_loss(loss_csv: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Training loss (raw and smoothed) against step, log scale, with epochs on the top axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    with open(loss_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if rows:
        steps = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        window = 2 * (len(loss) // 80) + 1  # about 2.5% of the run, odd
        if window >= 3:
            ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="loss (mean per log interval)")
            ax.plot(steps, smooth_centred(loss, window), color="tab:blue", lw=2,
                    label=f"smoothed (centred, {window} points)")
        else:
            ax.plot(steps, loss, color="tab:blue", lw=2, marker="o", ms=3, label="loss (mean per log interval)")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=8)
        ax.legend(loc="upper right")
        try:  # epochs on the top axis, from the csv's own step/epoch ratio
            spe = steps[-1] / float(rows[-1]["epoch"])
            if np.isfinite(spe) and spe > 0:
                top = ax.secondary_xaxis("top", functions=(lambda s_: s_ / spe, lambda e: e * spe))
                top.set_xlabel("epoch")
        except (KeyError, ValueError, ZeroDivisionError):
            pass
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("noise-prediction MSE (log scale)")
    ax.set_title("Training loss", pad=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save_fig(fig, output)


# ---------------------------------------------------------------------------------------------
# Shared look: one colour per schedule and per noising rule, used by every figure.

SCHEDULE_COLORS = {"linear": "tab:blue", "cosine": "tab:orange"}
RULE_COLORS = {"fixed_mix": "tab:red", "fixed_beta": "tab:purple", "stepwise": "tab:blue",
               "closed_form": "tab:green"}
DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)


def _tile(cells: np.ndarray, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """(rows, cols, H, W) float images in [-1, 1] -> one array with `pad` pixels between cells
    (white by default, so black backgrounds stay separate)."""
    rows, cols, h, w = cells.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = cells[r, c]
    return out


def _image_table(ax, cells: np.ndarray, col_labels, row_labels, pad: int = 2) -> None:
    """Show (rows, cols, 28, 28) images in [-1, 1] (clipped for display) as one labelled table."""
    rows, cols, h, w = cells.shape
    ax.imshow(_tile(np.clip(cells, -1, 1), pad), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([c * (w + pad) + w / 2 - 0.5 for c in range(cols)], list(col_labels))
    ax.set_yticks([r * (h + pad) + h / 2 - 0.5 for r in range(rows)], list(row_labels))
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)


def _check_timesteps(timesteps, T: int) -> list[int]:
    ts = [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < T]
    if not ts or bad:
        raise ValueError(f"timesteps must be in [0, {T - 1}], got {bad or 'none'}")
    return ts


# ---------------------------------------------------------------------------------------------
# Schedules

def plot_schedule(image_u8: np.ndarray, output, *, timesteps=DEFAULT_TIMESTEPS, T: int = 1000,
                  seed: int = 0) -> Path:
    """(a) beta_t, (b) sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), (c) SNR(t), for the cosine
    and linear schedules; (d) one real image diffused under both with the same noise."""
    import torch


    ts = _check_timesteps(timesteps, T)
    scheds = {name: make_schedule(name, T) for name in ("linear", "cosine")}
    t_axis = np.arange(T)
    fig = plt.figure(figsize=(14, 8.2))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.9], hspace=0.38, wspace=0.28)
    ax_b, ax_c, ax_s = (fig.add_subplot(gs[0, i]) for i in range(3))
    for name, s in scheds.items():
        col = SCHEDULE_COLORS[name]
        ax_b.plot(t_axis, s.betas.numpy(), color=col, lw=2, label=name)
        ax_c.plot(t_axis, s.sqrt_alpha_bar.numpy(), color=col, lw=2)
        ax_c.plot(t_axis, s.sqrt_one_minus_alpha_bar.numpy(), color=col, lw=2, ls="--")
        ax_s.plot(t_axis, s.snr.numpy(), color=col, lw=2, label=name)
    ax_b.set_yscale("log")
    ax_b.set_title(r"(a) noise added per step, $\beta_t$")
    ax_b.set_ylabel(r"$\beta_t$ (log scale)")
    ax_c.set_title(r"(b) what is left of $x_0$ and of the noise")
    ax_c.set_ylabel("coefficient in $x_t$")
    ax_c.set_ylim(-0.02, 1.32)
    ax_c.set_yticks(np.linspace(0, 1, 6))
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=SCHEDULE_COLORS["linear"], lw=2, label="linear"),
               Line2D([], [], color="0.2", lw=2, label=r"signal $\sqrt{\bar\alpha_t}$"),
               Line2D([], [], color=SCHEDULE_COLORS["cosine"], lw=2, label="cosine"),
               Line2D([], [], color="0.2", lw=2, ls="--", label=r"noise $\sqrt{1-\bar\alpha_t}$")]
    ax_s.set_yscale("log")
    ax_s.axhline(1.0, color="0.4", lw=1, ls=":")
    ax_s.text(T * 0.97, 2.0, "SNR = 1", color="0.3", fontsize=9, ha="right", va="bottom")
    ax_s.set_title(r"(c) signal-to-noise ratio $\bar\alpha_t / (1-\bar\alpha_t)$")
    ax_s.set_ylabel("SNR (log scale)")
    for ax in (ax_b, ax_c, ax_s):
        ax.set_xlabel("timestep t")
        ax.set_xlim(0, T - 1)
        ax.grid(True, which="major", alpha=0.3)
    ax_b.legend(loc="lower right")
    ax_c.legend(handles=handles, loc="upper center", ncol=2, fontsize=8.5)
    ax_s.legend(loc="upper right")

    x0 = to_model_range(np.asarray(image_u8, dtype=np.uint8).reshape(1, 28, 28)).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cells = []
    for name in ("cosine", "linear"):
        row = [q_sample(scheds[name], x0, torch.tensor([t]), eps)[0, 0].numpy() for t in ts]
        cells.append(row)
    ax_d = fig.add_subplot(gs[1, :])
    _image_table(ax_d, np.array(cells), [f"t = {t}" for t in ts], ["cosine", "linear"])
    for lbl, name in zip(ax_d.get_yticklabels(), ("cosine", "linear")):
        lbl.set_color(SCHEDULE_COLORS[name])
        lbl.set_fontweight("bold")
    ax_d.set_title(r"(d) one digit under both schedules, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,"
                   r"\epsilon$ (same $\epsilon$ everywhere; pixels clipped to [-1, 1] for display)")
    fig.suptitle(f"Noise schedules, T = {T}: linear (Ho et al. 2020) vs cosine (Nichol & Dhariwal 2021)",
                 fontsize=14, fontweight="bold")
    return _save_fig(fig, output)


def one_of_each_class(labels: np.ndarray, n: int) -> list[int]:
    """Indices of the first image of class 0, 1, 2, ... in turn, then the second of each, and so on."""
    order = np.argsort(labels, kind="stable")
    per_class = [order[labels[order] == c] for c in range(int(labels.max()) + 1)]
    return [int(per_class[i % len(per_class)][i // len(per_class)]) for i in range(n)]


def plot_forward(images_u8: np.ndarray, output, *, row_labels=None, timesteps=DEFAULT_TIMESTEPS,
                 schedule: str = "cosine", T: int = 1000, seed: int = 0, title: str | None = None) -> Path:
    """A table of forward-diffused images: rows = images, columns = timesteps. Each image keeps
    one noise draw eps across its row (its own generator, seeded from (seed, row))."""
    import torch


    images_u8 = np.asarray(images_u8, dtype=np.uint8).reshape(-1, 28, 28)
    ts = _check_timesteps(timesteps, T)
    s = make_schedule(schedule, T)
    x0 = to_model_range(images_u8).double()
    eps = torch.stack([torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(seed * 1_000_003 + i),
                                   dtype=torch.float64) for i in range(len(x0))])
    cells = np.stack([q_sample(s, x0, torch.full((len(x0),), t), eps)[:, 0].numpy() for t in ts], axis=1)
    n, c = cells.shape[:2]
    fig, ax = plt.subplots(figsize=(1.0 * c + 1.6, 1.0 * n + 1.5))
    col_labels = [f"t = {t}\n" + r"$\sqrt{\bar\alpha_t}$" + f" = {s.sqrt_alpha_bar[t].item():.2f}" for t in ts]
    _image_table(ax, cells, col_labels, row_labels if row_labels is not None else [f"#{i}" for i in range(n)])
    ax.xaxis.tick_top()
    ax.set_title(title or f"Forward diffusion $q(x_t\\,|\\,x_0)$, {schedule} schedule, T = {T}",
                 fontsize=12, fontweight="bold", pad=12)
    ax.set_xlabel("timestep t  (noise grows to the right; pixels clipped to [-1, 1] for display)")
    return _save_fig(fig, output)


# ---------------------------------------------------------------------------------------------
# The reverse process of a trained model

def plot_denoising(diff, output, *, label=None, guidance: float = 0.0, num_images: int = 4, sampler: str = "ddim",
                   steps: Optional[int] = None, columns: int = 8, seed: int = 0) -> Path:
    """What the model sees and says while it denoises: for each image, x_t (top row) and its
    prediction of the clean image x0-hat (bottom row) at `columns` of the visited timesteps, then
    the sample. Early on x0-hat is a blurry average digit; it sharpens as t falls. `steps`: the
    sampler's rule (sampling.plan) unless given."""
    labels = diff.labels(diff.default_label(label), num_images, seed)
    drawn = diff.plan(labelled=labels is not None, sampler=sampler, steps=steps, guidance=guidance)
    visited = drawn.timesteps
    ts = set(gif_timesteps(list(visited), columns))
    seen: dict[int, tuple] = {}

    def record(start, i, t, x, x0):
        if t in ts:
            seen[t] = (x.float().cpu().numpy()[:, 0], x0.float().cpu().numpy()[:, 0])
    final = generate(diff, num_images, drawn, labels=labels, seed=seed, batch_size=num_images, callback=record)
    order = sorted(seen, reverse=True)
    final_f = final.astype(np.float64) / 127.5 - 1
    rows, row_labels = [], []
    for k in range(num_images):
        rows.append([seen[t][0][k] for t in order] + [final_f[k]])
        rows.append([seen[t][1][k] for t in order] + [final_f[k]])
        row_labels += [f"#{k}: $x_t$", r"$\hat x_0$"]
    cells = np.array(rows)
    fig, ax = plt.subplots(figsize=(1.0 * cells.shape[1] + 1.6, 1.0 * cells.shape[0] + 1.4))
    _image_table(ax, cells, [f"t = {t}" for t in order] + ["sample"], row_labels)
    ax.xaxis.tick_top()
    what = f"label {label}" + (f", guidance {guidance:g}" if guidance else "") if label is not None else "no label"
    ax.set_title(f"Denoising with {diff.source or 'the model'} ({sampler}, {len(visited)} steps, {what})",
                 fontsize=11, fontweight="bold", pad=12)
    return _save_fig(fig, output)


# ---------------------------------------------------------------------------------------------
# Noising rules

RULE_LABELS = {
    "fixed_mix": "fixed mix\n" + r"$x = (1-s)\,x_0 + s\,\epsilon$",
    "fixed_beta": "one fixed $\\beta$, repeated\n" + r"$x_t = \sqrt{1-\beta}\,x_{t-1} + \sqrt{\beta}\,\epsilon_t$",
    "stepwise": "stepwise $\\beta_t$ (DDPM def.)\n" + r"$x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$",
    "closed_form": "closed-form jump (DDPM training)\n"
                   + r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$",
}


def plot_noisers(image_u8: np.ndarray, output, *, timesteps=(0, 25, 50, 100, 200, 400, 700, 999),
                 T: int = 1000, beta: float = 0.02, schedule: str = "linear", seed: int = 0) -> Path:
    """One image noised by each rule in noising.py (rows) at the same timesteps (columns), with
    each rule's signal coefficient and noise std against t beside it."""
    import torch


    ts = _check_timesteps(timesteps, T)
    x0 = to_model_range(np.asarray(image_u8, dtype=np.uint8).reshape(1, 28, 28)).double()
    rows = noising.noise_all(x0, ts, torch.Generator().manual_seed(seed), T=T, beta=beta, schedule=schedule)
    cells = np.stack([rows[r][:, 0, 0].numpy() for r in noising.RULES])
    fig = plt.figure(figsize=(15, 6.4))
    gs = fig.add_gridspec(1, 2, width_ratios=[2.25, 1.0], wspace=0.12)
    ax = fig.add_subplot(gs[0, 0])
    labels = [RULE_LABELS[r] for r in noising.RULES]
    labels[1] = labels[1].replace(r"\beta$,", fr"\beta = {beta:g}$,")
    labels[2] = labels[2].replace("stepwise", f"stepwise {schedule}")
    _image_table(ax, cells, [f"t = {t}" for t in ts], labels)
    for lbl, r in zip(ax.get_yticklabels(), noising.RULES):
        lbl.set_color(RULE_COLORS[r])
        lbl.set_fontsize(10)
    ax.xaxis.tick_top()
    ax.set_xlabel("fixed mix: s = t / (T-1).  Same $x_0$; pixels clipped to [-1, 1] for display.\n"
                  "The last two rows are the same distribution: DDPM defines the process step by step "
                  "and trains with the one-jump closed form.", fontsize=9.5)

    ax2 = fig.add_subplot(gs[0, 1])
    t_axis = np.arange(T)
    for r in noising.RULES:
        c, sd = noising.signal_and_noise(r, t_axis, T=T, beta=beta, schedule=schedule)
        # stepwise and closed_form coincide; draw the closed form thinner on top so both show
        lw, dash = (3.5, (0, (6, 3))) if r == "stepwise" else (1.6, (0, (2, 2)))
        kw = dict(color=RULE_COLORS[r], lw=lw if r in ("stepwise", "closed_form") else 2)
        ax2.plot(t_axis, c.numpy(), **kw, label=r.replace("_", " "))
        ax2.plot(t_axis, sd.numpy(), **kw, ls=dash if r in ("stepwise", "closed_form") else "--")
    ax2.set_xlim(0, T - 1)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("timestep t")
    ax2.set_ylabel("coefficient")
    ax2.set_title("$x_t = c\\,x_0 + \\sigma\\,\\epsilon$: signal c (solid), noise $\\sigma$ (dashed)", fontsize=11)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="center right", fontsize=9)
    fig.suptitle("Four ways to add noise to a digit, and the one DDPM uses", fontsize=14, fontweight="bold")
    return _save_fig(fig, output)


# ---------------------------------------------------------------------------------------------
# The equations

MATH_SECTIONS = [
    ("Forward process: a fixed chain that adds a little Gaussian noise at each step", [
        r"$q(x_t\,|\,x_{t-1}) = \mathcal{N}\left(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t\,\mathbf{I}\right),"
        r"\qquad t = 1,\ \ldots,\ T$",
        r"$\alpha_t = 1 - \beta_t, \qquad \bar\alpha_t = \prod_{s=1}^{t}\,\alpha_s$",
    ]),
    ("Closed form: jump from $x_0$ to any $x_t$ in one draw", [
        r"$q(x_t\,|\,x_0) = \mathcal{N}\left(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t)\,\mathbf{I}\right)"
        r"\quad\Longleftrightarrow\quad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,"
        r"\quad \epsilon \sim \mathcal{N}(0, \mathbf{I})$",
    ]),
    ("Training loss: predict the noise that was added", [
        r"$L_{\mathrm{simple}} = \mathbb{E}_{t,\,x_0,\,\epsilon}\left[\ \Vert\,\epsilon - "
        r"\epsilon_\theta\left(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\right)\Vert^2\ \right],"
        r"\qquad t \sim \mathrm{Uniform}\{1, \ldots, T\}$",
    ]),
    ("Reverse process: a learned chain that removes the noise, from $x_T \\sim \\mathcal{N}(0, \\mathbf{I})$ "
     "to $x_0$", [
        r"$p_\theta(x_{t-1}\,|\,x_t) = \mathcal{N}\left(x_{t-1};\ \mu_\theta(x_t, t),\ \sigma_t^2\,\mathbf{I}\right)$",
        r"$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,"
        r"\epsilon_\theta(x_t, t)\right), \qquad \sigma_t^2 = \tilde\beta_t = "
        r"\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t \quad (\mathrm{or}\ \sigma_t^2 = \beta_t)$",
    ]),
    ("What the symbols mean", [
        r"$\beta_t$: variance of the fresh noise added at step t (small: $10^{-4}$ to 0.02 in the linear schedule)",
        r"$\alpha_t = 1-\beta_t$: share of the signal's variance one step keeps ($\sqrt{\alpha_t}$ shrinks the "
        r"image so the total variance stays 1)",
        r"$\bar\alpha_t$: share of the original image's variance left after t steps; "
        r"$\sqrt{\bar\alpha_t}$ scales $x_0$, $\sqrt{1-\bar\alpha_t}$ scales the noise",
        r"$\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$: falls from $\infty$ (clean) to $\approx 0$ "
        r"(pure noise) as t goes from 0 to T",
    ]),
]


def plot_math(output) -> Path:
    """The DDPM equations (Ho et al. 2020) as a figure, in matplotlib mathtext (no LaTeX needed)."""
    heading_h, eq_h, gap = 0.42, 0.62, 0.34  # inches
    n_eq = sum(len(lines) for _, lines in MATH_SECTIONS)
    height = 0.9 + len(MATH_SECTIONS) * (heading_h + gap) + n_eq * eq_h
    fig = plt.figure(figsize=(12.5, height))
    y = height - 0.35
    fig.text(0.5, y / height, "DDPM at a glance (Ho et al. 2020)", ha="center", va="top",
             fontsize=16, fontweight="bold")
    y -= 0.6
    for i, (heading, lines) in enumerate(MATH_SECTIONS):
        fig.text(0.03, y / height, f"{i + 1}. {heading}", ha="left", va="top", fontsize=12.5,
                 fontweight="bold", color="tab:blue")
        y -= heading_h
        for line in lines:
            small = i == len(MATH_SECTIONS) - 1
            fig.text(0.06, (y - 0.08) / height, line, ha="left", va="top", fontsize=12 if small else 15)
            y -= eq_h * (0.75 if small else 1.0)
        y -= gap
    return _save_fig(fig, output)


# ---------------------------------------------------------------------------------------------
# Animations (Pillow only: no matplotlib per frame)

def reverse_gif(trajectory, final: np.ndarray, output, *, nrow=None, caption: str = "samples") -> Path:
    """The reverse process as a GIF: one grid per recorded x_t (a sampling.Trajectory), noisiest
    first, then the final samples, held."""

    final = final[:64]
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(final)))))

    def frame(u8, text):
        g = grid(u8, nrow=nrow).repeat(2, axis=0).repeat(2, axis=1)
        return label_frame(g, text, height=max(18, g.shape[1] // 18))
    seq = [frame(images, f"x_t at t = {t}") for t, images in trajectory.frames()]
    seq.append(frame(final, f"t = 0: {caption}"))
    save_gif(seq, output, duration_ms=90, final_hold_ms=2500, scale=1)
    return Path(output)


def trajectory_grids(trajectory, final: np.ndarray, out_dir, *, nrow=None) -> list[int]:
    """One grid per recorded x_t (out_dir/step_TTTT.png), and out_dir/strip.png: a row per image
    (the first 8), noise on the left, the final sample on the right. Returns the timesteps."""

    out_dir = Path(out_dir)
    columns, ts = [], []
    for t, images in trajectory.frames():
        save_grid(images, out_dir / f"step_{t:04d}.png", nrow=nrow)
        columns.append(images[: min(8, len(images))])
        ts.append(t)
    columns.append(final[: min(8, len(final))])
    strip = np.stack(columns, axis=1).reshape(-1, 28, 28)
    save_png(grid(strip, nrow=len(columns)), out_dir / "strip.png", scale=2)
    return ts


def _run_epoch_length(run_dir: Path):
    """Steps per epoch of a training run, from its config.json (None when it cannot be read)."""
    import json

    try:
        train = json.loads((run_dir / "config.json").read_text())["train"]
        n = int(train.get("subset") or SIZES["train"])
        return max(1, min(n, SIZES["train"]) // int(train["batch_size"]))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def progress_gif(run_dir, output, *, duration_ms: int = 400, final_hold_ms: int = 2000,
                 max_frames: int = 200) -> Path:
    """The training run's preview grids (run_dir/samples/step_XXXXXXX.png, all drawn from the
    same noise seed) as one GIF, each frame labelled with its step and epoch."""
    import re

    from PIL import Image


    run_dir = Path(run_dir)
    sample_dir = run_dir / "samples"
    if not sample_dir.is_dir():
        raise ValueError(f"{run_dir} has no samples/ folder (is it a training run directory?)")
    found = sorted((int(m.group(1)), p) for p in sample_dir.iterdir()
                   if (m := re.fullmatch(r"step_(\d+)\.png", p.name)))
    if not found:
        raise ValueError(f"{sample_dir} holds no step_XXXXXXX.png sample grids yet")
    if len(found) > max_frames:  # keep the first and last, thin the middle evenly
        keep = np.unique(np.linspace(0, len(found) - 1, max_frames).round().astype(int))
        found = [found[i] for i in keep]
    spe = _run_epoch_length(run_dir)
    frames, size = [], None
    for step, path in found:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"))
        if size is None:
            size = a.shape
        elif a.shape != size:
            raise ValueError(f"{path.name} is {a.shape[1]}x{a.shape[0]}, but earlier grids are "
                             f"{size[1]}x{size[0]}; the run's sample grids must all have the same size")
        text = f"step {step:,}" + (f"   epoch {step / spe:.2f}" if spe else "")
        frames.append(label_frame(a, text, height=max(18, a.shape[1] // 16)))
    return save_gif(frames, output, duration_ms=duration_ms, final_hold_ms=final_hold_ms, scale=1)


def plot_eval_metrics(rows: list[dict], output: str | os.PathLike) -> Path:
    """FID (with its floor), recognizability and noise-prediction MSE against training step, one
    panel each; `rows` are `evaluate --run` results with keys step, fid, fid_floor, recognizable
    and noise_mse.overall. Rows with `train_minutes` also get a wall-clock axis on top."""
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    a1.plot(steps, [r["fid"] for r in rows], "o-", color="tab:red", label="FID (evaluator features)")
    a1.plot(steps, [r["fid_floor"] for r in rows], "--", color="grey", label="floor: real training images")
    a1.set_yscale("log")
    a1.set_ylabel("FID vs test split")
    a1.set_title(f"Sample quality (n = {rows[0]['n'] if rows else 0} per checkpoint)")
    a2.plot(steps, [r["recognizable"] for r in rows], "o-", color="tab:green", label="samples")
    real = [r["real_reference"]["recognizable"] for r in rows if "real_reference" in r]
    if real:
        a2.axhline(float(np.mean(real)), ls="--", color="grey", label="real training images")
    a2.set_ylim(0, 1.02)
    a2.set_ylabel(f"recognizable (top class p >= {rows[0].get('recognizable_threshold', 0.9) if rows else 0.9})")
    a2.set_title("Recognizability")
    a3.plot(steps, [r["noise_mse"]["overall"] for r in rows], "o-", color="tab:blue", label="all t")
    if rows:
        for b, band in enumerate(rows[0]["noise_mse"]["bands"]):
            a3.plot(steps, [r["noise_mse"]["bands"][b]["mse"] for r in rows], lw=1, alpha=0.7,
                    label=f"t in [{band['t_min']}, {band['t_max']}]")
    a3.set_yscale("log")
    a3.set_ylabel("noise-prediction MSE (test split)")
    a3.set_title("Denoising error")
    timed = [r for r in rows if r.get("train_minutes") is not None]
    xs = np.array([r["step"] for r in timed], dtype=float)
    ms = np.array([r["train_minutes"] for r in timed], dtype=float)
    minutes_axis = len(timed) >= 2 and np.all(np.diff(xs) > 0) and np.all(np.diff(ms) > 0)
    for ax in (a1, a2, a3):
        ax.set_xlabel("training step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if minutes_axis:
            top = ax.secondary_xaxis("top", functions=(lambda v: _interp_linear(v, xs, ms),
                                                       lambda m: _interp_linear(m, ms, xs)))
            top.set_xlabel("training minutes (wall clock)")
    return _save_fig(fig, output)


def _interp_linear(v, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through (xs, ys), continued past both ends with the end segments'
    slopes: a secondary axis needs a strictly monotone map on the whole view, margins included,
    and np.interp alone would clamp there."""
    v = np.asarray(v, dtype=float)
    out = np.interp(v, xs, ys)
    lo, hi = v < xs[0], v > xs[-1]
    out = np.where(lo, ys[0] + (v - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0]), out)
    return np.where(hi, ys[-1] + (v - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), out)


# ---------------------------------------------------------------------------------------------
# By name: the `visualize` command's FIGURE

def figure(name: str, output, *, run=None, split=None, dataset: str = "mnist", index: int = 0, num_images: int = 6,
           schedule: str = "cosine", beta: float = 0.02, timesteps=DEFAULT_TIMESTEPS, T: int = 1000, seed: int = 0,
           frame_ms: int = 400, diffusion=None, label=None, guidance: float = 0.0) -> Path:
    """Draw the figure called `name`: progress and loss from a training `run` directory; math from
    nothing; denoising from a model (`diffusion`); schedule, noisers (training image `index`) and
    forward (`num_images` rows, one of each class in turn) from a data `split` of `dataset`."""
    if name == "denoising":
        return plot_denoising(diffusion, output, label=label, guidance=guidance, num_images=min(num_images, 8),
                              seed=seed)
    if name == "progress":
        return progress_gif(run, output, duration_ms=frame_ms)
    if name == "loss":
        if not (Path(run) / "loss.csv").is_file():
            raise ValueError(f"{run} has no loss.csv (is it a training run directory?)")
        return plot_loss(Path(run) / "loss.csv", output)
    if name == "math":
        return plot_math(output)
    process = dict(timesteps=timesteps, T=T, seed=seed)
    if name == "forward":
        if num_images > 64:
            raise ValueError(f"--num-images {num_images}: at most 64 rows fit in one figure")
        idx = one_of_each_class(split.labels, num_images)
        names = CLASS_NAMES[dataset]
        return plot_forward(split.images[idx], output, row_labels=[names[split.labels[i]] for i in idx],
                            schedule=schedule, **process,
                            title=f"Forward diffusion $q(x_t\\,|\\,x_0)$ on {dataset.replace('_', '-')}"
                                  f", {schedule} schedule, T = {T}")
    if index >= len(split.images):
        raise ValueError(f"--index {index} is out of range (the {dataset} training set has {len(split.images)} images)")
    if name == "schedule":
        return plot_schedule(split.images[index], output, **process)
    if name == "noisers":
        return plot_noisers(split.images[index], output, beta=beta, schedule=schedule, **process)
    raise ValueError(f"unknown figure {name!r}")


def write_trajectory(recording, images: np.ndarray, *, gif=None, steps_dir=None, nrow=None,
                     caption: str = "samples") -> list[str]:
    """`sample --gif` and `--show-intermediate`: the reverse-process GIF and the per-step grids plus
    strip of a sampling.Recording; returns what was written, a line each."""
    lines = []
    if gif:
        reverse_gif(recording.gif, images, gif, nrow=nrow, caption=caption)
        lines.append(f"wrote {gif} ({len(recording.gif.frames()) + 1} frames)")
    if steps_dir:
        ts = trajectory_grids(recording.steps, images, steps_dir, nrow=nrow)
        lines.append(f"wrote {len(ts)} intermediate grids and {Path(steps_dir) / 'strip.png'} "
                     f"(columns: t = {', '.join(map(str, ts))}, final)")
    return lines
