"""Where a command writes: every output path is checked before any work starts, so a mistake costs
a one-line error, not an hour of sampling followed by a failed write.

Not here: the writing itself (atomic.py: temp file, fsync, rename).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .config import ConfigError


def check_output(path: str | os.PathLike, option: str = "--output", suffix: Optional[str] = None) -> Path:
    """A path a command will write: not a directory, its parent not a file, and with `suffix` the
    extension that decides the format (a .jpg name never gets PNG bytes)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a directory")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"{option} {p}: {p.parent} is a file, not a directory")
    if suffix and p.suffix.lower() != suffix:
        raise ConfigError(f"{option} {p}: expected a {suffix} file")
    return p
