"""A static web page that draws digits in the visitor's browser: the model as ONNX on onnxruntime-web.

    SITE/index.html, app.js, sampler.js    the page and its sampler (webpage/ in this package)
    SITE/model/model.onnx, plan.json       the network and its sampling plan (portable.py)
    SITE/ort/                              onnxruntime-web's WebAssembly build, copied from the npm
                                           package at ORT_WEB_VERSION (web/package.json pins it)
    SITE/site.json                         what was built from what, and the sizes

Every path is relative and nothing is fetched from another host when the page runs: any static
host serves it, or `python -m http.server -d SITE` (browsers do not run ES modules from file://).
The site is built in a sibling folder and swapped in, so a failed build leaves the old one.

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
from .portable import export_onnx

ORT_WEB_VERSION = "1.31.1"
# the runtime's files the page loads: the WebAssembly-only ES module and its SIMD build
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE = Path(__file__).resolve().parent / "webpage"
PAGE_FILES = ("index.html", "app.js", "sampler.js")
REPO_RUNTIME = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web"
MARKER = "site.json"


def find_runtime(runtime: Optional[str | os.PathLike] = None) -> Path:
    """onnxruntime-web's package folder: `runtime`, else ./web/node_modules/onnxruntime-web, else the
    one beside this source tree (`make site` installs it there with npm)."""
    candidates = [Path(runtime)] if runtime else [Path("web/node_modules/onnxruntime-web"), REPO_RUNTIME]
    for folder in candidates:
        if (folder / "package.json").is_file():
            break
    else:
        where = candidates[0]
        raise ConfigError(f"onnxruntime-web not found at {where}: run `npm ci --prefix web` (or `make site`), "
                          "or pass --runtime node_modules/onnxruntime-web")
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


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"--output {out} holds other files; build the site into an empty folder or one "
                          "written by `mnist-diffusion web`")


def build_site(diff, output: str | os.PathLike, *, runtime: Optional[str | os.PathLike] = None,
               source: Optional[str] = None) -> dict:
    """Write the static site for `diff` (a Diffusion) into the folder `output`. Returns site.json."""
    out = Path(output)
    _check_output(out)
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
                "onnx": {k: report[k] for k in ("sha256", "opset", "max_abs_difference", "tolerance")}}
        atomic_write_json(stage / MARKER, info)
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return info


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
