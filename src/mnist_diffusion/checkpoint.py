"""Checkpoints: atomic writes, safe loads, and rebuilding a model from what was saved.

A checkpoint is a plain dict of tensors, numbers, strings and lists, written with torch.save to a
temporary file in the same directory and renamed into place, so a crash or a full disk never
leaves a half-written `last.pt`. It is read with `torch.load(weights_only=True)`, which refuses
any pickle that would import or call code.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Optional

import torch

from .atomic import atomic_write, atomic_write_text  # noqa: F401  (atomic_write_text: used via this module)
from .config import ConfigError, RunConfig
from .models import build_model

FORMAT = "mnist-diffusion/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, hostile, or does not fit the requested model."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through atomic_write: the old file survives any failure."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def training_state(cfg: RunConfig, step: int, epoch: int, model: torch.nn.Module, ema: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, skipped: int = 0, elapsed_s: float = 0.0,
                   run_id: Optional[str] = None) -> dict:
    """The dict a training checkpoint holds (the only place it is built): weights, EMA weights,
    AdamW's state, the config, the counters and the id of the run, all plain tensors, numbers and
    strings."""
    return {"format": FORMAT, "config": cfg.to_dict(), "step": step, "epoch": epoch,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "skipped": skipped, "torch": str(torch.__version__), "elapsed_s": elapsed_s, "run_id": run_id}


def read_regular(path: str | os.PathLike, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of a regular file: a FIFO, a device or a socket would block the read forever (or
    never end), so anything else is a ValueError naming the file, checked on the opened file itself
    (no race with a swap after the check). `max_bytes`: larger files are refused unread."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, unread
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file can be")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and sanity-check a checkpoint; every failure is a one-line CheckpointError. The file is
    read once; the returned dict's "sha256" is the hash of exactly the bytes that were loaded (it is
    not stored in the file), so a key made from it cannot describe another version of the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        data = read_regular(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "Unpickler error" in ln]
        first = lines[0] if lines else "unsupported content"
        raise CheckpointError(f"{path}: refused to load (not a plain-weights checkpoint: {first[:200]})") from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        # (EOFError, BadZipFile, RuntimeError, IndexError on a bare STOP opcode, ...): all mean corrupt
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnist-diffusion checkpoint (missing format tag {FORMAT!r})")
    for key in ("config", "model", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    ckpt["sha256"] = hashlib.sha256(data).hexdigest()
    return ckpt


def config_of(ckpt: dict, path: str = "checkpoint") -> RunConfig:
    try:
        return RunConfig.from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def load_model(path: str | os.PathLike, device="cpu", use_ema: bool = True):
    """Rebuild the network from a checkpoint: returns (model in eval mode, RunConfig, ckpt dict)."""

    ckpt = load(path)
    cfg = config_of(ckpt, str(path))
    model = build_model(cfg.model, cfg.diffusion.timesteps)
    weights = ckpt.get("ema") if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    load_state(model, weights, str(path))
    return model.to(device).eval(), cfg, ckpt


def load_state(model: torch.nn.Module, state: dict, origin: str) -> None:
    """load_state_dict with a message that says which tensor does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{origin}: weights do not fit this model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); was it trained with another --model?")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{origin}: tensor {k} has shape {tuple(state[k].shape)}, model expects "
                                  f"{tuple(v.shape)}; was it trained with another --base-dim?")
    model.load_state_dict(state)


def find_latest(run_dir: str | os.PathLike) -> Optional[Path]:
    """The newest checkpoint in run_dir/checkpoints that loads cleanly (for --resume auto).

    Training rewrites last.pt at every save, so it is the newest whenever it loads; only when it is
    missing or damaged are the periodic step_*.pt files tried, newest first, stopping at the first
    good one (rather than reading every checkpoint of a long run)."""
    ck_dir = Path(run_dir) / "checkpoints"
    if not ck_dir.is_dir():
        return None

    def step_of(p: Path) -> int:
        digits = p.stem.removeprefix("step_")
        return int(digits) if digits.isdigit() else -1

    periodic = sorted(ck_dir.glob("step_*.pt"), key=step_of, reverse=True)
    for p in [ck_dir / "last.pt", *periodic]:
        if not p.is_file():
            continue
        try:
            load(p)
        except CheckpointError:
            continue
        return p
    return None
