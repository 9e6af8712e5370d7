"""The wheel: `python -m build` packs the evaluator and the shipped models, and the installed package
draws from a shipped model outside the checkout (a fresh venv; torch and the other dependencies
come from this environment's site-packages, so the test needs no network)."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mnist_diffusion.pretrained import PRETRAINED

pytestmark = pytest.mark.system  # other processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (path,) = out.glob("mnist_diffusion-*.whl")
    return path


def test_the_wheel_carries_the_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for dataset in ("mnist", "fashion_mnist"):
        assert f"mnist_diffusion/weights/evaluator_{dataset}.safetensors" in names
    assert "mnist_diffusion/weights/checksums.json" in names
    for name in PRETRAINED:
        for f in ("model.safetensors", "config.json", "scheduler_config.json", "README.md"):
            assert f"mnist_diffusion/pretrained_models/{name}/{f}" in names


@pytest.mark.skipif(not PRETRAINED, reason="no shipped models yet")
def test_installed_wheel_samples_a_shipped_model_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the dependencies (torch, numpy, ...) from this environment, without its editable mnist_diffusion
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = subprocess.run([str(py), "-c", "import mnist_diffusion, os; print(mnist_diffusion.__file__)"], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stdout + where.stderr
    name = next(iter(PRETRAINED))
    r = subprocess.run([str(venv / "bin" / "mnist-diffusion"), "sample", "--pretrained", name, "--num-images", "4",
                        "--sampler", "dpmpp", "--steps", "10", "--output", "four.png", "--no-progress"], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (cwd / "four.png").read_bytes().startswith(b"\x89PNG")
