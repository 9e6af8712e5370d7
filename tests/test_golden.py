"""The CLI's outputs are pinned: the images `sample --npz` draws and the `evaluate --json` report of a
fixed tiny checkpoint are compared with files recorded before the library refactor (issue 16).

A refactor must not change a single byte of what a seed gives. The fixture (tests/golden/) was made
by tests/golden/make_golden.py with the code as it stood before; the images are compared as uint8
arrays (so new keys in the npz, such as the labels, do not break the pin), the report key by key.
One recorded value was changed by hand since: `evaluator_sha256`, when the evaluator's weights moved
from torch.save to safetensors (the same tensors, so every number stayed as it was).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402  (the same commands that made the fixture)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as make_golden.py ran: the thread count can change float sums
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", list(make_golden.SAMPLE_RUNS))
def test_sample_npz_bytes_are_unchanged(name, tmp_path, capsys):
    assert main(make_golden.sample_args(name, GOLDEN / "tiny_cond.pt", tmp_path)) == 0
    with np.load(tmp_path / f"{name}.npz") as new, np.load(GOLDEN / f"{name}.npz") as old:
        assert new["images"].dtype == old["images"].dtype == np.uint8
        assert new["images"].tobytes() == old["images"].tobytes()


def test_evaluate_json_is_unchanged(mnist, tmp_path, capsys):
    assert main(make_golden.evaluate_args(GOLDEN / "tiny_cond.pt", tmp_path)) == 0
    new = make_golden.comparable(json.loads((tmp_path / "evaluate.json").read_text()))
    old = json.loads((GOLDEN / "evaluate.json").read_text())
    assert json.loads(json.dumps(new, sort_keys=True)) == old
