"""A training run's directory and configuration: config.json, loss.csv, checkpoints/, samples/, its lock.

`run_config` turns a training request (preset, config file or checkpoint, options) into the config,
run directory and checkpoint to resume; `bind_data` records the training set's identity (and its
classes or clusters) in the config; `RunFiles` owns the directory while a run trains in it. The
loop itself is in training.py.

Not here: the optimisation (training.py), the checkpoint format (checkpoint.py).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .clusters import kmeans_labels
from .config import ConfigError, RunConfig, preset, resolve
from .data import Split, data_sha256
from .diffusion import Diffusion
from .images import save_grid
from .models import default_config
from .outputs import check_folder
from .sampling import generate

LOSS_FIELDS = ["step", "epoch", "loss", "lr", "images_per_s", "skipped", "elapsed_s"]
PREVIEW_SEED = 1234  # training previews use the same noise every time, so the grids show one set forming


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


class NonFiniteLoss(TrainingError):
    pass


def read_loss_rows(path: Path, upto_step: Optional[int] = None) -> list[dict]:
    """The logged rows of a run's loss.csv (up to `upto_step`), [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f)
                if r.get("step", "").isdigit() and (upto_step is None or int(r["step"]) <= upto_step)]


def elapsed_seconds(rows: list[dict], batch_size: int) -> list[float]:
    """Training wall time at each loss.csv row: the recorded `elapsed_s`, or for rows written
    before that column existed, an estimate from the images/s of each log interval (which leaves
    out preview and checkpoint time)."""
    out, prev_step, prev_s = [], 0, 0.0
    for r in rows:
        step = int(r["step"])
        if r.get("elapsed_s"):
            prev_s = float(r["elapsed_s"])
        else:
            ips = float(r.get("images_per_s") or 0)
            prev_s += (step - prev_step) * batch_size / ips if ips > 0 else 0.0
        prev_step = step
        out.append(prev_s)
    return out


def _write_loss_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOSS_FIELDS)
    w.writeheader()
    w.writerows(rows)
    ckpt_io.atomic_write_text(path, buf.getvalue())


def find_resume(resume: Optional[str], run_dir: Optional[Path], log: Callable[[str], None] = print) -> Optional[str]:
    """The checkpoint a --resume means: "auto" is the newest good one in run_dir (None, a new run,
    when there is none); a path stays itself."""
    if resume != "auto":
        return resume
    if run_dir is None:
        raise ConfigError("--resume auto needs --output-dir (the run to resume)")
    found = ckpt_io.find_latest(run_dir)
    if found is None:
        log(f"no checkpoint in {run_dir}: starting a new run")
    return str(found) if found else None


def run_config(preset_name: Optional[str] = None, *, config: Optional[str] = None, resume: Optional[str] = None,
               output_dir: Optional[str] = None, values: Optional[dict] = None, conditional: Optional[bool] = None,
               log: Callable[[str], None] = print) -> tuple[RunConfig, Path, Optional[str]]:
    """The config, run directory and checkpoint of a training request, as `train` takes them: the
    base is the checkpoint's config when resuming (`resume="auto"`: the newest good one in
    output_dir, or a new run when there is none), else the config file's, else the preset's; then
    config.resolve applies `values` ({"train.lr": 1e-3, ...}) under the resume rule."""

    run_dir = Path(output_dir) if output_dir else None
    resume = find_resume(resume, run_dir, log)
    if resume:
        ckpt = ckpt_io.load(resume)
        ckpt_io.check_made_by(ckpt, "train", resume)
        base = ckpt_io.config_of(ckpt, resume)
        run_dir = run_dir or Path(resume).resolve().parent.parent
    elif config:
        try:  # a FIFO or a device would block the read forever: a regular file only, and a small one
            base = RunConfig.from_json(ckpt_io.read_regular(config, 1 << 20).decode("utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read --config {config}: {e.strerror}") from None
        except (UnicodeDecodeError, ConfigError, ValueError, RecursionError) as e:
            raise ConfigError(f"--config {config}: "
                              f"{'not a text file' if isinstance(e, UnicodeDecodeError) else e}") from None
        if base.distill.distilled:
            raise ConfigError(f"--config {config} is a distilled student's config; `train` trains from data: "
                              "make students with `mnist-diffusion distill`")
    else:
        base = preset(preset_name or "default")
    cfg = resolve(base, values or {}, conditional=conditional, resuming=resume, preset_name=preset_name,
                  model_defaults=default_config)
    return cfg, run_dir or Path("runs") / f"{preset_name or 'default'}-{cfg.train.dataset}", resume


def bind_data(cfg: RunConfig, data: Split, log: Callable[[str], None] = lambda _m: None) -> tuple[RunConfig, Split]:
    """The config with the identity of its training set (data.data_sha256, so a resume on other data
    is refused) and, for one's own labelled set, its class names; a class-conditional model gets
    one class per class folder (or npz label). With train.clusters K the data's labels (if any) are
    replaced by k-means cluster ids of its images (clusters.py) and the clusters' sizes recorded."""
    train, model = {"data_sha256": data_sha256(data)}, {}
    if cfg.train.clusters:
        images = data.images[:cfg.train.subset] if cfg.train.subset else data.images
        log(f"clustering {len(images):,} images into {cfg.train.clusters} clusters (k-means on 32 principal "
            "components; no labels used)")
        try:
            ids = kmeans_labels(images, cfg.train.clusters, cfg.train.seed)
        except ValueError as e:
            raise TrainingError(f"--clusters {cfg.train.clusters}: {e}") from None
        data = Split(images, ids)
        train["cluster_sizes"] = np.bincount(ids, minlength=cfg.train.clusters).tolist()
    elif cfg.model.num_classes is not None:
        if data.labels is None:
            raise TrainingError(f"a class-conditional model needs labelled data, and {cfg.train.dataset} has no "
                                "labels (put the images in one folder per class, give `labels` in the npz, or "
                                "train with --clusters K, which needs none)")
        if data.classes:
            if len(data.classes) < 2:
                raise TrainingError(f"{cfg.train.dataset} has a single class ({data.classes[0]}): a class-"
                                    "conditional model needs at least two (train it --unconditional)")
            train["classes"], model["num_classes"] = list(data.classes), len(data.classes)
    try:
        return cfg.replace(train=train, **({"model": model} if model else {})), data
    except ConfigError as e:
        raise TrainingError(str(e)) from None


class RunFiles:
    """A run directory: config.json, loss.csv (+ loss.png), checkpoints/ and samples/. With path None
    nothing is written: an in-memory run, or a DDP rank other than 0.

    A directory belongs to one run: its id is in config.json and in every checkpoint, and while a
    process trains in it, it holds an OS lock on DIR/.lock (released when the process ends, however
    it ends), so a second process is refused before it touches anything."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.rows: list[dict] = []
        self.last: Optional[Path] = None  # the newest checkpoint written
        self.saved_step: Optional[int] = None  # its step
        self._lock = None

    def prepare(self, state, checkpoint_bytes: int, resume: Optional[str]) -> None:
        """Fail before training, not after an hour: the directory must be free (no other process in
        it), writable, have room for two checkpoints (the temp file of an atomic save sits beside
        the old one), and hold no other run than the one resumed."""
        if self.path is None:
            state.run_id = state.run_id or uuid.uuid4().hex
            return
        if self.path.exists() and not self.path.is_dir():
            raise TrainingError(f"--output-dir {self.path} exists and is a file, not a directory")
        try:  # a run writes only into a new or empty folder or a run's (never a model folder, a site, ...)
            check_folder(self.path, "run", "--output-dir")
        except ConfigError as e:
            raise TrainingError(str(e)) from None
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            self._lock = _lock_run_dir(self.path)
            probe = self.path / ".write-test"
            probe.write_bytes(b"x" * 4096)
            probe.unlink()
        except OSError as e:
            raise TrainingError(f"cannot write to --output-dir {self.path}: {e.strerror or e}") from None
        free = shutil.disk_usage(self.path).free
        need = 2 * checkpoint_bytes + (16 << 20)
        if free < need:
            raise TrainingError(f"only {free / 1e6:.0f} MB free under {self.path}; a checkpoint needs about "
                                f"{checkpoint_bytes / 1e6:.0f} MB and a save needs room for two")
        state.run_id = self._check_owner(state.run_id, resume)
        for stale in (self.path / "checkpoints").glob(".*.tmp"):  # temp files of a save a crash interrupted
            stale.unlink()

    def _check_owner(self, run_id: Optional[str], resume: Optional[str]) -> str:
        """The run id the directory's run goes on with. A new run may not start where checkpoints
        are (a run stopped before its first checkpoint left nothing to resume: it is started over);
        a resumed one must be the run whose id config.json records. A checkpoint from before run
        ids takes the id of the directory it lives in."""
        checkpoints = sorted(p.name for p in (self.path / "checkpoints").glob("*.pt"))
        if not resume:
            if checkpoints:
                raise TrainingError(f"{self.path} already holds a run ({', '.join(checkpoints[:3])}); resume it "
                                    "with --resume auto or choose another --output-dir")
            return run_id or uuid.uuid4().hex
        owner = _run_id_of(self.path / "config.json")
        inside = Path(resume).resolve().parent.parent == self.path.resolve()
        if run_id is None and inside:
            return owner or uuid.uuid4().hex
        others = checkpoints or [n for n in ("config.json", "loss.csv") if (self.path / n).exists()]
        if owner is not None and owner != run_id or owner is None and others and not inside:
            raise TrainingError(f"{self.path} holds another run than {resume}"
                                + (f" (run {owner[:8]}, the checkpoint's is {str(run_id)[:8]})" if owner else "")
                                + "; resume into the checkpoint's own run directory or a new --output-dir")
        return run_id or uuid.uuid4().hex

    def begin(self, cfg: RunConfig, step: int, run_id: str) -> float:
        """Write config.json (with the run's id) and the loss rows up to `step`; returns the training
        seconds they record."""
        if self.path is None:
            return 0.0
        self.rows = read_loss_rows(self.path / "loss.csv", step) if step else []
        ckpt_io.atomic_write_text(self.path / "config.json",
                                  json.dumps({**cfg.to_dict(), "run_id": run_id}, indent=2, sort_keys=True) + "\n")
        _write_loss_csv(self.path / "loss.csv", self.rows)
        return elapsed_seconds(self.rows, cfg.train.batch_size)[-1] if self.rows else 0.0

    def log(self, row: dict) -> None:
        if self.path is not None:
            self.rows.append(row)
            _write_loss_csv(self.path / "loss.csv", self.rows)

    def save(self, state: dict, periodic: bool, keep: int) -> Optional[Path]:
        """Write last.pt (and step_N.pt when periodic); never weights that are not finite."""
        if self.path is None:
            return None
        bad = [k for part in ("model", "ema") for k, v in state[part].items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLoss(f"the weights became non-finite at step {state['step']} ({bad[0]}); not saved: "
                                f"{_what_is_kept(self.path)}. Lower --lr")
        ck_dir = self.path / "checkpoints"
        self.last, self.saved_step = ckpt_io.atomic_save(state, ck_dir / "last.pt"), state["step"]
        if periodic:
            ckpt_io.atomic_save(state, ck_dir / f"step_{state['step']:07d}.pt")
            if keep:
                for old in sorted(ck_dir.glob("step_*.pt"))[:-keep]:
                    old.unlink()
        return self.last

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def preview(self, state, step: int, device: torch.device) -> None:
        """A grid from the EMA weights, the same noise every time, so the grids show one set forming."""
        if self.path is None:
            return
        cfg = state.cfg
        diff = Diffusion(state.ema, cfg, device=device, precision=cfg.train.precision)
        labels = torch.arange(cfg.train.num_samples) % diff.num_classes if diff.num_classes else None
        drawn = diff.plan(labelled=labels is not None, clip=cfg.train.clip)  # the model's own sampling
        images = generate(diff, cfg.train.num_samples, drawn, labels=labels, seed=PREVIEW_SEED)
        save_grid(images, self.path / "samples" / f"step_{step:07d}.png")

    def finish(self, log: Callable[[str], None]) -> None:
        if self.path is None:
            return
        try:
            from .visualize import plot_loss
            plot_loss(self.path / "loss.csv", self.path / "loss.png")
        except Exception as e:  # noqa: BLE001  (a plotting failure must not lose a finished run)
            log(f"warning: could not draw loss.png ({e})")


def _lock_run_dir(path: Path):
    """An exclusive, non-blocking OS lock on path/.lock (flock: released when the process dies, so a
    crash leaves no stale lock). Refuses with the holder's pid when another process has it."""
    f = open(path / ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the directory is not locked there
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise TrainingError(f"{path} is in use by another training process"
                            + (f" (pid {holder})" if holder else "") + "; wait for it to finish, or train into "
                            "another --output-dir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _run_id_of(config_json: Path) -> Optional[str]:
    try:
        value = json.loads(config_json.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _what_is_kept(run_dir: Optional[Path]) -> str:
    if run_dir is None:
        return "nothing was saved (an in-memory run)"
    last = run_dir / "checkpoints" / "last.pt"
    return f"the last good checkpoint, {last}, is kept" if last.exists() else "no checkpoint had been written yet"
