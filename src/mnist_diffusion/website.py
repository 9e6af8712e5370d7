"""A static web page that draws digits in the visitor's browser: the model as ONNX on onnxruntime-web.

    SITE/index.html, app.js, sampler.js    the page and its sampler, which runs in a Web Worker
    SITE/worker.js                         (worker.js: the page never freezes, a draw can be cancelled)
    SITE/model/model.onnx, plan.json       the network and its sampling plan (portable.py)
    SITE/ort/                              onnxruntime-web's WebAssembly build, copied from the npm
                                           package at ORT_WEB_VERSION (web/package.json pins it)
    SITE/site.json                         what was built from what, and the sizes

Every path is relative and nothing is fetched from another host when the page runs: any static
host serves it, or `python -m http.server -d SITE` (browsers do not run ES modules from file://).
The site is built in a sibling folder and swapped in, so a failed build leaves the old one; a
rebuild keeps the files it did not write (a CNAME, an about.html): site.json lists those it did.

Not here: the ONNX export and its check (portable.py), the page's sampler (webpage/sampler.js).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .atomic import atomic_write_json
from .config import ConfigError
from .outputs import SITE_MARKER as MARKER
from .outputs import check_folder
from .portable import export_onnx

ORT_WEB_VERSION = "1.31.1"
# the runtime's files the page loads: the WebAssembly-only ES module and its SIMD build
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE = Path(__file__).resolve().parent / "webpage"
PAGE_FILES = ("index.html", "app.js", "sampler.js", "worker.js")
REPO_RUNTIME = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web"


def find_runtime(runtime: Optional[str | os.PathLike] = None) -> Path:
    """onnxruntime-web's package folder: `runtime`, else ./web/node_modules/onnxruntime-web, else the
    one beside this source tree (`make site` installs it there with npm)."""
    candidates = [Path(runtime)] if runtime else [Path("web/node_modules/onnxruntime-web"), REPO_RUNTIME]
    for folder in candidates:
        if (folder / "package.json").is_file():
            break
    else:
        if (REPO_RUNTIME.parents[1] / "package.json").is_file():  # a checkout: web/package.json pins it
            how = "run `npm ci --prefix web` (or `make site`)"
        else:  # an installed package has no web/ folder: say what to install, where and how to pass it
            how = (f"install it with `npm install onnxruntime-web@{ORT_WEB_VERSION}` in a folder of your choice")
        raise ConfigError(f"onnxruntime-web {ORT_WEB_VERSION} (the page's runtime) not found at {candidates[0]}: "
                          f"{how}, then pass --runtime FOLDER/node_modules/onnxruntime-web")
    try:
        version = json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}/package.json: not readable ({e})") from None
    if version != ORT_WEB_VERSION:
        raise ConfigError(f"{folder} holds onnxruntime-web {version}; the page is built and tested with "
                          f"{ORT_WEB_VERSION} (npm ci --prefix web)")
    missing = [f for f in RUNTIME_FILES if not (folder / "dist" / f).is_file()]
    if missing:
        raise ConfigError(f"{folder}/dist lacks {', '.join(missing)}: not a complete onnxruntime-web package")
    return folder


def build_site(diff, output: str | os.PathLike, *, runtime: Optional[str | os.PathLike] = None,
               source: Optional[str] = None) -> dict:
    """Write the static site for `diff` (a Diffusion) into the folder `output`. Returns site.json."""
    out = check_folder(output, "site")  # a symlink is followed: the site goes where it points
    ort = find_runtime(runtime)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.site-", dir=out.parent))
    os.chmod(stage, 0o755)
    try:
        report = export_onnx(diff, stage / "model", source=source)
        for name in PAGE_FILES:
            shutil.copyfile(PAGE / name, stage / name)
        (stage / "ort").mkdir()
        for name in RUNTIME_FILES:
            shutil.copyfile(ort / "dist" / name, stage / "ort" / name)
        shutil.copyfile(ort / "LICENSE", stage / "ort" / "LICENSE") if (ort / "LICENSE").is_file() else None
        sizes = {"model_bytes": sum(p.stat().st_size for p in (stage / "model").iterdir()),
                 "runtime_bytes": sum(p.stat().st_size for p in (stage / "ort").iterdir()),
                 "page_bytes": sum((stage / n).stat().st_size for n in PAGE_FILES)}
        info = {"model": source, "onnxruntime_web": ORT_WEB_VERSION, **sizes,
                "onnx": {k: report[k] for k in ("sha256", "opset", "max_abs_difference", "tolerance")},
                "files": sorted([*_files_under(stage), MARKER])}  # what a rebuild may replace
        atomic_write_json(stage / MARKER, info)
        kept = _keep_foreign(out, stage)
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return {**info, "kept": kept}


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _keep_foreign(out: Path, stage: Path) -> list[str]:
    """Put into `stage` every file of the old site at `out` that no build wrote (a CNAME, an
    about.html), as hard links (copies where links cannot be made), so the swap keeps them; the
    files a build wrote are the old site.json's list (a site from before the list: the page's
    files, model/ and ort/). Returns the kept paths."""
    if not (out / MARKER).is_file():
        return []
    try:
        ours = set(json.loads((out / MARKER).read_text(encoding="utf-8")).get("files") or ())
    except (OSError, ValueError, AttributeError):
        ours = set()
    if not ours:
        ours = {*PAGE_FILES, MARKER} | {str(p.relative_to(out)) for d in ("model", "ort") for p in (out / d).rglob("*")}
    kept = []
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_dir() and not path.is_symlink() or rel in ours or (stage / rel).exists():
            continue
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), target)
        else:
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        kept.append(rel)
    return kept


def _swap_in(stage: Path, out: Path) -> None:
    """Put the finished site where `out` is: a rename when new, else the old one moved aside first."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
