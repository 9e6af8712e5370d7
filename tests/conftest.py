"""Shared fixtures: tiny configs that train in seconds, and the real datasets when prepared."""
from __future__ import annotations

import os

import pytest
import torch

from mnist_diffusion.config import RunConfig

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers (pytest -n 2): one core each
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the commands the tests start
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_config(**train) -> RunConfig:
    base = {
        "model": {"name": "unet", "base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        "diffusion": {"timesteps": 50, "schedule": "cosine"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "warmup_steps": 0, "num_samples": 4,
                  "log_interval": 2, "precision": "fp32", "device": "cpu"},
    }
    base["train"].update(train)
    return RunConfig.from_dict(base)


@pytest.fixture
def tiny():
    return tiny_config


def _real(dataset):
    from mnist_diffusion.data import DataError, prepare
    try:
        return prepare(dataset, download=False)
    except DataError as e:
        if os.environ.get("CI"):
            raise  # CI prepares both datasets first (make test); missing data there is a failure
        pytest.skip(f"{dataset} not prepared here ({e}); run `make data-all`")


@pytest.fixture(scope="session")
def mnist():
    return _real("mnist")


@pytest.fixture(scope="session")
def fashion():
    return _real("fashion_mnist")
