"""The CLI's outputs are pinned: the images `sample --npz` draws and the `evaluate --json` report of a
fixed tiny checkpoint are compared with files recorded before the library refactor (issue 16).

A refactor must not change what a seed gives. The fixture (tests/golden/) was made
by tests/golden/make_golden.py with the code as it stood before; the images are compared as uint8
arrays (so new keys in the npz, such as the labels, do not break the pin), the report key by key.
One recorded value was changed by hand since: `evaluator_sha256`, when the evaluator's weights moved
from torch.save to safetensors (the same tensors, so every number stayed as it was); and when the
evaluator got its gate (issue 36: "real image or not", so that noise is not called recognizable),
`recognizable` went from 1.0 to 0.0 (the 30-step model's 40 images are noise, FID 1438) and
`gate_sha256` was added; every other number stayed as it was.

The files were recorded on an AMD EPYC machine. CPU kernels differ in the last bits of a float
from one instruction set to another (AVX2, AVX-512, AMX: the same fp32 convolution sums in another
order), so against the recorded files the comparison has stated tolerances: floats to a relative
1e-5, uint8 images with nearly every pixel equal and none off by more than a few levels (a last-bit
difference can move a pixel across a rounding boundary, and a stochastic sampler can carry it a
little further). Byte-exact determinism is checked where it holds: the same command twice on this
machine gives the same bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_diffusion.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402  (the same commands that made the fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


# against files made on another machine (see the module docstring)
REL_TOL = 1e-5
MAX_LEVELS_OFF = 4  # of 255
MIN_EQUAL_PIXELS = 0.99


def assert_images_close(new: np.ndarray, old: np.ndarray) -> None:
    assert new.dtype == old.dtype == np.uint8 and new.shape == old.shape
    diff = np.abs(new.astype(int) - old.astype(int))
    assert (diff == 0).mean() >= MIN_EQUAL_PIXELS, f"only {(diff == 0).mean():.4f} of the pixels are equal"
    assert diff.max() <= MAX_LEVELS_OFF, f"a pixel is off by {diff.max()} levels"


def assert_report_close(new, old, key: str = "report") -> None:
    """Equal structure, strings, ints and bools; floats to REL_TOL."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), f"{key}: keys {sorted(new)} != {sorted(old)}"
        for k in old:
            assert_report_close(new[k], old[k], f"{key}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), key
        for i, (a, b) in enumerate(zip(new, old)):
            assert_report_close(a, b, f"{key}[{i}]")
    elif isinstance(old, float) and not isinstance(old, bool):
        assert isinstance(new, (int, float)) and new == pytest.approx(old, rel=REL_TOL, abs=1e-12), \
            f"{key}: {new!r} != {old!r}"
    else:
        assert new == old and type(new) is type(old), f"{key}: {new!r} != {old!r}"


@pytest.mark.parametrize("name", list(make_golden.SAMPLE_RUNS))
def test_sample_npz_is_unchanged(name, tmp_path, capsys):
    assert main(make_golden.sample_args(name, GOLDEN / "tiny_cond.pt", tmp_path)) == 0
    with np.load(tmp_path / f"{name}.npz") as new, np.load(GOLDEN / f"{name}.npz") as old:
        assert_images_close(new["images"], old["images"])


@pytest.mark.parametrize("name", ["ddpm-respaced", "guided"])
def test_sample_npz_bytes_repeat_on_this_machine(name, tmp_path, capsys):
    """Same machine, same seed, twice: identical bytes (the stochastic and the guided path)."""
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        assert main(make_golden.sample_args(name, GOLDEN / "tiny_cond.pt", tmp_path / run)) == 0
    with np.load(tmp_path / "a" / f"{name}.npz") as a, np.load(tmp_path / "b" / f"{name}.npz") as b:
        assert a["images"].tobytes() == b["images"].tobytes()


def test_evaluate_json_is_unchanged(mnist, tmp_path, capsys):
    assert main(make_golden.evaluate_args(GOLDEN / "tiny_cond.pt", tmp_path)) == 0
    new = make_golden.comparable(json.loads((tmp_path / "evaluate.json").read_text()))
    old = json.loads((GOLDEN / "evaluate.json").read_text())
    assert_report_close(json.loads(json.dumps(new, sort_keys=True)), old)


def test_the_tolerances_catch_a_real_change():
    """The tolerant comparisons still fail on a changed image or number."""
    old = np.zeros((4, 28, 28), np.uint8)
    changed = old.copy()
    changed[0, 0, 0] = 9
    with pytest.raises(AssertionError):
        assert_images_close(changed, old)
    with pytest.raises(AssertionError):
        assert_images_close(old + 1, old)
    assert_report_close({"fid": 1.0 + 1e-7, "n": 3}, {"fid": 1.0, "n": 3})
    with pytest.raises(AssertionError):
        assert_report_close({"fid": 1.0001, "n": 3}, {"fid": 1.0, "n": 3})
    with pytest.raises(AssertionError):
        assert_report_close({"fid": 1.0, "n": 4}, {"fid": 1.0, "n": 3})
