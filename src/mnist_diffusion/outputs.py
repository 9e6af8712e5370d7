"""Where a command writes: every output path is checked before any work starts, so a mistake costs
a one-line error, not an hour of sampling followed by a lost file.

The rules (docs/RELIABILITY.md maps each to its test):
- the extension decides the format (a .jpg name never gets PNG bytes): .png, .gif, .npz, .json;
- an output never replaces an input of the same command, nor another output of it;
- an existing file is replaced only by the same kind of artifact: a PNG by a PNG, an npz of
  images by an npz, a JSON report by a JSON report; never a checkpoint, a run's config.json or
  anything else whose bytes say it is something other than its name;
- the path is not a directory and its parent is not a file.

Not here: the writing itself (atomic.py: temp file, fsync, rename).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .config import ConfigError

CUSTOM_EVALUATOR_FORMAT = "mnist-diffusion-custom-evaluator/1"  # evaluator.CUSTOM_FORMAT (no torch here)

KINDS = {".png": "a PNG image", ".gif": "a GIF animation", ".npz": "an npz of images", ".json": "a JSON report",
         ".safetensors": "a safetensors file"}
_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".gif": b"GIF8"}


def check_output(path: str | os.PathLike, option: str = "--output", suffix: Optional[str] = None) -> Path:
    """One output path: not a directory, its parent not a file, with `suffix` the extension that
    decides the format, and an existing file only if it holds that kind of artifact."""
    check_outputs([(option, path, suffix)])
    return Path(path)


def check_outputs(outputs: Sequence[tuple[str, Optional[str | os.PathLike], Optional[str]]],
                  inputs: Iterable[Optional[str | os.PathLike]] = ()) -> None:
    """Every (option, path or None, suffix or None) a command will write, against each other and
    against the files it reads (`inputs`). Raises ConfigError naming the option and the file."""
    seen: list[tuple[str, Path]] = []
    ins = [Path(p) for p in inputs if p]
    for option, path, suffix in outputs:
        if not path:
            continue
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{option} {p} is a directory")
        _check_folder(option, p)
        if suffix and p.suffix.lower() != suffix:
            raise ConfigError(f"{option} {p}: expected a {suffix} file ({KINDS.get(suffix, suffix)}); the "
                              "extension decides the format")
        for src in ins:
            if _same(p, src):
                raise ConfigError(f"{option} {p} is also an input of this command; it would be overwritten")
        for other_option, other in seen:
            if _same(p, other):
                raise ConfigError(f"{option} and {other_option} are the same file, {p}; give each its own")
        seen.append((option, p))
        if p.exists():
            _check_replaceable(option, p, suffix or p.suffix.lower())


def check_output_dir(path: str | os.PathLike, option: str, inputs: Iterable[Optional[str | os.PathLike]] = (),
                     outputs: Iterable[Optional[str | os.PathLike]] = ()) -> Path:
    """A folder a command writes files into: not an existing file, not an input, and not holding
    the command's other outputs (its files would replace them)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file, not a directory")
    _check_folder(option, p / "x")
    for src in (Path(s) for s in inputs if s):
        if _same(p, src):
            raise ConfigError(f"{option} {p} is also an input of this command")
    for out in (Path(o) for o in outputs if o):
        if out.resolve().parent == p.resolve():
            raise ConfigError(f"{option} {p} would hold {out.name}, another output of this command; "
                              "give each its own place")
    return p


def _check_folder(option: str, p: Path) -> None:
    """The folder `p` goes into: its nearest existing ancestor is a writable directory (so a
    missing folder can be made), checked before any work."""
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {p}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {p}: cannot write into {ancestor}")


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also through links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_replaceable(option: str, p: Path, suffix: str) -> None:
    """An existing file at an output path must already be the kind of artifact that will replace it."""
    if not p.is_file():
        raise ConfigError(f"{option} {p} exists and is not a regular file")
    what = KINDS.get(suffix)
    if what is None:
        raise ConfigError(f"{option} {p} exists; refusing to replace a file of unknown kind")
    try:
        with open(p, "rb") as f:
            head = f.read(16)
        ok = _looks_like(p, suffix, head)
    except OSError as e:
        raise ConfigError(f"{option} {p}: cannot read the existing file ({e.strerror})") from None
    if not ok:
        raise ConfigError(f"{option} {p} exists and is not {what} (a checkpoint, a run's config or another "
                          "file); refusing to replace it")


def _looks_like(p: Path, suffix: str, head: bytes) -> bool:
    if suffix in _MAGIC:
        return head.startswith(_MAGIC[suffix])
    if suffix == ".safetensors":  # only an evaluator of one's own data (train-evaluator) is ours to replace
        return _safetensors_format(p) == CUSTOM_EVALUATOR_FORMAT
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(p) as z:  # numpy's npz: every member an .npy; a torch checkpoint is a zip too
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
        return bool(names) and all(n.endswith(".npy") for n in names)
    if suffix == ".json":
        if os.path.getsize(p) > 256 << 20:
            return False
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        # the reports our commands write; a run's config, a model folder's config, checksums.json or
        # anyone else's JSON are not
        return isinstance(obj, dict) and ({"fid", "n"} <= set(obj) or {"run", "checkpoints"} <= set(obj)
                                          or str(obj.get("format", "")).startswith("mnist-diffusion-benchmark/"))
    return False


def _safetensors_format(p: Path) -> Optional[str]:
    """The `format` of a safetensors file's metadata (8-byte header length, then a JSON header)."""
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 << 20:
                return None
            header = json.loads(f.read(n))
        fmt = header.get("__metadata__", {}).get("format")
        if isinstance(fmt, str) and fmt.startswith("{"):  # train-evaluator's: the facts as JSON, format inside
            fmt = json.loads(fmt).get("format")
        return fmt
    except (OSError, ValueError, AttributeError):
        return None
