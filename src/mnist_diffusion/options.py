"""How the command line reads values: argparse types that reject nonsense with a message naming the
option, and options built from dataclass fields (config.option metadata: help, flag, kind of
number, choices), so the config and the sampler settings declare their flags in one place.

Not here: the commands (cli.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import DATASETS

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _number(parse, ok, describe: str, limit=None):
    """An argparse type: parse, then check; messages name what was expected and what came."""
    def check(text: str):
        try:
            v = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text!r}") from None
        if limit is not None and v > limit:
            raise argparse.ArgumentTypeError(f"{v} is unreasonably large")
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text}")
        return v
    check.__name__ = describe.split()[-1]  # argparse names the type in some messages
    return check


_INF = float("inf")
positive_int = _number(int, lambda v: v > 0, "a positive integer", limit=10**9)
nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer", limit=10**9)
positive_float = _number(float, lambda v: 0 < v < _INF, "a positive finite number")
nonneg_float = _number(float, lambda v: 0 <= v < _INF, "a non-negative finite number")
unit_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
MAX_IMAGES = 1_000_000  # images one command draws or scores: 784 MB as uint8


def count(limit: int, what: str = "a positive integer"):
    """A positive integer with an upper bound named in the message (--num-images 10000000000 is a
    one-line error, not a MemoryError after the sampling)."""
    return _number(int, lambda v: 0 < v <= limit, f"{what} (at most {limit:,})")


NUMBER_TYPES = {(int, "positive"): positive_int, (int, "nonneg"): nonneg_int, (float, "positive"): positive_float,
                (float, "nonneg"): nonneg_float, (float, "unit"): unit_float}


def int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return vals


def two_ints(text: str) -> tuple[int, int]:
    vals = int_list(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated integers A,B, got {text!r}")
    return vals[0], vals[1]


def label_arg(text: str):
    if text == "all":
        return "all"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number or 'all', got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a class number >= 0 or 'all', got {v}")
    return v


def add_fields(p: argparse.ArgumentParser, fields, prefix: str = "", keep_defaults: bool = False) -> None:
    """One option per (field, type) with config.option metadata. dest = prefix + name; the default
    is None (= not given) unless keep_defaults, then the field's own."""
    for f, hint in fields:
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw = dict(dest=prefix + f.name, help=meta["help"].replace("%", "%%"))  # argparse formats help with %
        if keep_defaults:
            kw["default"] = f.default
        if hint is bool:  # default-on switches: --no-clip, --no-lr-decay
            p.add_argument(flag, action="store_const", const=False, **kw)
        elif f.name == "nonfinite":
            p.add_argument(flag, action="store_const", const="skip", **kw)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, type=int_list, **kw)
        elif meta["choices"]:
            p.add_argument(flag, choices=meta["choices"], **kw)
        else:
            p.add_argument(flag, type=NUMBER_TYPES.get((hint, meta["kind"]), hint),
                           metavar="MIN" if f.name == "time_limit" else None, **kw)


def dataclass_fields(klass) -> list[tuple[dataclasses.Field, type]]:
    """(field, type without Optional) of a dataclass whose fields are config.option()s."""
    hints = typing.get_type_hints(klass)
    out = []
    for f in dataclasses.fields(klass):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Union:
            hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        out.append((f, hint))
    return out


def add_device(p: argparse.ArgumentParser, precision: str = "auto", help: str | None = None) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default=precision, help=help)


def add_dataset(p: argparse.ArgumentParser, data_dir: bool = True, **kw) -> None:
    p.add_argument("--dataset", choices=DATASETS, **({"default": "mnist"} | kw))
    if data_dir:
        p.add_argument("--data-dir", help="folder with the standard IDX files (tried first)")
