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
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from .atomic import atomic_write, atomic_write_text, read_regular  # noqa: F401  (re-exported for callers)
from .config import ConfigError, RunConfig
from .models import build_model

FORMAT = "mnist-diffusion/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, hostile, or does not fit the requested model."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through atomic_write: the old file survives any failure."""
    return atomic_write(path, lambda f: torch.save(obj, f))


MADE_BY = ("train", "distill")  # the commands that write checkpoints; each resumes only its own


def training_state(cfg: RunConfig, step: int, epoch: int, model: torch.nn.Module, ema: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, skipped: int = 0, elapsed_s: float = 0.0,
                   run_id: Optional[str] = None, made_by: str = "train") -> dict:
    """The dict a training checkpoint holds (the only place it is built): weights, EMA weights,
    AdamW's state, the config, the counters, the id of the run and the command that made it
    (`made_by`: train or distill), all plain tensors, numbers and strings."""
    if made_by not in MADE_BY:
        raise ValueError(f"made_by must be one of {', '.join(MADE_BY)}, got {made_by!r}")
    return {"format": FORMAT, "made_by": made_by, "config": cfg.to_dict(), "step": step, "epoch": epoch,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "skipped": skipped, "torch": str(torch.__version__), "elapsed_s": elapsed_s, "run_id": run_id}


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
        with warnings.catch_warnings():  # torch's notes on odd pickles ("please file an issue") are about
            warnings.simplefilter("ignore")  # torch, not this file: what is wrong with it is said below
            ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text is addressed to torch users ("Please file an issue", "re-run with weights_only=False",
        # which would run the file's code): keep only its line that says what the file holds
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")]
        first = lines[0] if lines else "content a weights-only load does not accept"
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
    if "made_by" not in ckpt:  # a checkpoint from before the entry: a student's config names its teacher
        distill = ckpt["config"].get("distill") if isinstance(ckpt["config"], dict) else None
        ckpt["made_by"] = "distill" if isinstance(distill, dict) and distill.get("teacher") else "train"
    if ckpt["made_by"] not in MADE_BY:
        raise CheckpointError(f"{path}: made by {ckpt['made_by']!r}, not by {' or '.join(MADE_BY)}")
    ckpt["sha256"] = hashlib.sha256(data).hexdigest()
    return ckpt


def check_made_by(ckpt: dict, command: str, path: str | os.PathLike) -> None:
    """A checkpoint is resumed by the command that made it: `train` refuses a distilled student's
    (its loss is the teacher's pairs, not the data) and `distill` a trained model's."""
    if ckpt.get("made_by", "train") != command:
        made = ckpt.get("made_by", "train")
        raise CheckpointError(f"{path} is a checkpoint of `{made}`" + (" (a distilled student)" if made == "distill" else "")
                              + f", not of `{command}`: resume it with `mnist-diffusion {made} --resume {path}`"
                              + (f", or distil a new student from it with `distill --teacher {path}`"
                                 if made == "train" else ""))


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
            if k.startswith("label_emb.") and state[k].shape[1:] == v.shape[1:]:  # one row per class + "none"
                why = (f"the weights are for {state[k].shape[0] - 1} classes, the config says {v.shape[0] - 1}; "
                       "was it trained on another number of classes?")
            elif k.startswith("t_embed.") or k.startswith("time_emb."):  # one row per timestep
                why = f"the weights are for T = {state[k].shape[0]}, the config says {v.shape[0]}"
            else:
                why = "was it trained with another base width (--base-dim) or levels (--channel-mults)?"
            raise CheckpointError(f"{origin}: tensor {k} has shape {tuple(state[k].shape)}, model expects "
                                  f"{tuple(v.shape)}; {why}")
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
