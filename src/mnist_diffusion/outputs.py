"""Where a command writes: every output path is checked before any work starts, so a mistake costs
a one-line error, not an hour of sampling followed by a lost file.

The rules (docs/RELIABILITY.md maps each to its test):
- the extension decides the format (a .jpg name never gets PNG bytes): .png, .gif, .npz, .json;
- an output never replaces an input of the same command, nor another output of it;
- an existing file is replaced only by the same kind of artifact: a PNG by a PNG, an npz of
  images by an npz, a JSON report by a JSON report; never a checkpoint, a run's config.json or
  anything else whose bytes say it is something other than its name;
- the path is not a directory and its parent is not a file.

Folders are guarded the same way (`check_folder`): every command that writes a folder names the
kind it writes (a training run, a model folder, an ONNX export, a static site, a folder of
grids), and may write only into a new or empty folder or a folder of that same kind that holds
nothing it did not write itself; never into the package (the shipped models and weights: only
scripts/make_pretrained.py, with `allow_shipped`), and a folder that is replaced as a whole never
holds the current directory. `folder_kind` is how a folder's kind is told from its files.

Not here: the writing itself (atomic.py: temp file, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .atomic import read_regular
from .config import ConfigError

CUSTOM_EVALUATOR_FORMAT = "mnist-diffusion-custom-evaluator/1"  # evaluator.CUSTOM_FORMAT (no torch here)

PACKAGE = Path(__file__).resolve().parent  # the installed package: its code, shipped models and weights
SHIPPED = PACKAGE / "pretrained_models"  # pretrained.DIR

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
        _check_not_in_package(option, p)
        owner = folder_kind(p.parent) if p.parent.is_dir() else None
        if owner in ("model", "onnx"):  # a file there would change what its writer checks and pins
            raise ConfigError(f"{option} {p} is inside {FOLDER_KINDS[owner]} ({p.parent}); its files are "
                              "export's: write somewhere else")
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


# ---------------------------------------------------------------------------------------------
# folders

# what each kind of folder holds when our commands wrote it (top-level names; a run may also hold
# figures and reports written into it by `visualize` and `evaluate --run`)
RUN_NAMES = frozenset({"config.json", "loss.csv", "loss.png", "checkpoints", "samples", "pairs", ".lock",
                       ".write-test", "metrics.json", "metrics.png"})
MODEL_NAMES = ("model.safetensors", "guide.safetensors", "config.json", "scheduler_config.json", "README.md",
               "samples.png")  # hub.FILES
ONNX_NAMES = ("model.onnx", "plan.json")  # portable.FILES
ONNX_FORMAT = "mnist-diffusion-onnx/1"  # portable.FORMAT
SITE_MARKER = "site.json"  # website.MARKER
FOLDER_KINDS = {"run": "a training run", "model": "a model folder", "onnx": "an ONNX export",
                "site": "a static site", "grids": "a folder of grids"}
# the kinds whose writer replaces the folder as a whole (built beside it, then swapped in)
SWAPPED = ("model", "site")
_MAX_MARKER_BYTES = 1 << 20


def folder_kind(path: str | os.PathLike) -> Optional[str]:
    """Which of our writers made the folder `path`, told from its marker file: "site" (site.json),
    "model" (config.json with an `export` entry), "onnx" (plan.json of ours), "run" (config.json
    with a run id, a checkpoint, or only a run's own names), "grids" (only PNG files); "empty" for
    an empty or missing folder; None for anything else (someone's own files)."""
    p = Path(path)
    if not p.is_dir():
        return "empty" if not p.exists() else None
    names = {e.name for e in p.iterdir()}
    if not names:
        return "empty"
    if _marker(p / SITE_MARKER).get("onnxruntime_web"):
        return "site"
    config = _marker(p / "config.json")
    if isinstance(config.get("export"), dict):
        return "model"
    if _marker(p / "plan.json").get("format") == ONNX_FORMAT:
        return "onnx"
    if isinstance(config.get("run_id"), str) or names <= RUN_NAMES \
            or (p / "checkpoints").is_dir() and any((p / "checkpoints").glob("*.pt")):
        return "run"
    if all(n.lower().endswith(".png") and (p / n).is_file() for n in names):
        return "grids"
    return None


def _marker(path: Path) -> dict:
    """A marker file's JSON object, {} when it is missing, not regular (never read: a FIFO would
    block), too big or not a JSON object."""
    try:
        obj = json.loads(read_regular(path, _MAX_MARKER_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def foreign_files(path: Path, kind: str) -> list[str]:
    """The names in `path` (a folder of `kind`) that its writer did not write."""
    names = sorted(e.name for e in path.iterdir()) if path.is_dir() else []
    if kind == "model":
        own = [n for n in names if n in MODEL_NAMES]
        card = path / "README.md"
        if card.is_file() and "library_name: mnist-diffusion" not in card.read_text(encoding="utf-8", errors="replace"):
            own.remove("README.md")  # someone's own README, not a card of ours
        return [n for n in names if n not in own]
    if kind == "onnx":
        extra = [n for n in names if n not in ONNX_NAMES]
        if "model.onnx" in names and not extra:  # ours only if it is the network plan.json records
            recorded = _marker(path / "plan.json").get("export", {}).get("sha256")
            try:
                ours = recorded == hashlib.sha256(read_regular(path / "model.onnx")).hexdigest()
            except (OSError, ValueError):
                ours = False
            extra += [] if ours else ["model.onnx (not the network plan.json records)"]
        return extra
    if kind == "grids":
        return [n for n in names if not (n.lower().endswith(".png") and (path / n).is_file())]
    return []  # a run keeps whatever else is in it; a site rebuild keeps what it did not write


def check_folder(path: str | os.PathLike, kind: str, option: str = "--output", *,
                 inputs: Iterable[Optional[str | os.PathLike]] = (), outputs: Iterable[Optional[str | os.PathLike]] = (),
                 allow_shipped: bool = False) -> Path:
    """The one check before a command writes the folder `path` as `kind` (a FOLDER_KINDS key).
    Returns the folder to write, symlinks resolved (a link to a folder is written through, never
    replaced by a folder). Refuses, naming `option`: a file; a folder inside the package (unless
    `allow_shipped` and inside the shipped models' folder: make_pretrained); the current directory
    or one holding it, for a folder that is replaced as a whole; a folder of another kind or of
    someone else's files; a folder of this kind holding files its writer did not write (a site
    keeps those instead); an input of the command; a folder that would hold another output."""
    p = Path(path)
    if str(path).strip() == "":
        raise ConfigError(f"{option} is empty: name a folder")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file, not a folder")
    real = p.resolve()
    _check_folder(option, real / "x")
    shipped = _within(real, SHIPPED)
    if not (allow_shipped and shipped and kind == "model"):
        _check_not_in_package(option, p, "only scripts/make_pretrained.py writes the shipped models: " if shipped else "")
    if kind in SWAPPED and _within(Path.cwd().resolve(), real):
        raise ConfigError(f"{option} {p} is the current folder (or holds it), and {FOLDER_KINDS[kind]} is "
                          "replaced as a whole: name a folder below it, e.g. " + ("site" if kind == "site" else "model"))
    for src in (Path(s) for s in inputs if s):
        if _same(real, src) or src.exists() and real in src.resolve().parents and kind in SWAPPED:
            raise ConfigError(f"{option} {p} is (or holds) an input of this command")
    for out in (Path(o) for o in outputs if o):
        if out.resolve().parent == real:
            raise ConfigError(f"{option} {p} would hold {out.name}, another output of this command; "
                              "give each its own place")
    found = folder_kind(real)
    if found != "empty" and found != kind:
        what = FOLDER_KINDS.get(found) if found else None
        sample = ", ".join(sorted(e.name for e in real.iterdir())[:3])
        raise ConfigError(f"{option} {p} holds " + (what if what else f"files not written by {kind_writer(kind)} "
                                                    f"({sample})")
                          + f"; write {FOLDER_KINDS[kind]} into a new or empty folder"
                          + (" or one it wrote before" if kind != "run" else " (or resume the run in it)"))
    if found == kind:
        extra = foreign_files(real, kind)
        if extra:
            raise ConfigError(f"{option} {p} holds files {kind_writer(kind)} did not write ({', '.join(extra[:3])}); "
                              f"write into a new or empty folder or one written by {kind_writer(kind)} alone")
    return real


def kind_writer(kind: str) -> str:
    return {"run": "train or distill", "model": "export", "onnx": "export --format onnx", "site": "web",
            "grids": "sample --show-intermediate"}.get(kind, kind)


def _within(path: Path, folder: Path) -> bool:
    """Is the resolved `path` the folder or inside it?"""
    return path == folder or folder in path.parents


def _check_not_in_package(option: str, p: Path, why: str = "") -> None:
    if _within(p.resolve(), PACKAGE):
        raise ConfigError(f"{option} {p} is inside the installed package ({PACKAGE}); {why}write somewhere else")


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
