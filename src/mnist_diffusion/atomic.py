"""Atomic file writes (a temp file in the target's directory, fsync, rename into place) and the one
safe read of a file someone else named (a regular file only: a FIFO would block forever).

A crash, a full disk or Ctrl-C during a write leaves the previous file intact and no partial one;
the temp file is removed on any failure. Every file the project writes goes through here.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(f) on a temp file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    import json
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


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
