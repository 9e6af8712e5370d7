"""The one fixture layer: tiny models and runs built one way, the real datasets when prepared, one
torch thread for tiny networks, the synthetic MNIST that child processes read, and the evaluator's
test-split features computed once per run (not once per pytest-xdist worker).

Fixtures here need no import; helpers (`tiny_config`, `finished`, `random_unet`, `wrap`, `synthetic_split`,
`train_cmd`, `logged_steps`) are imported with `from conftest import ...`. Tests that start another
process, a browser or a kernel carry the `system` marker: `make test-fast` runs the rest.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.config import ModelConfig, RunConfig, resolve

ROOT = Path(__file__).resolve().parents[1]
C = 10  # classes of the tiny labelled models

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers (pytest -n 2): one core each
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the commands the tests start
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- tiny models --------------------------------------------------------------------------------------

def tiny_config(**train) -> RunConfig:
    """A run that trains in seconds: an 8-channel two-level U-Net, T = 50, fp32 on the CPU."""
    base = {
        "model": {"name": "unet", "base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        "diffusion": {"timesteps": 50, "schedule": "cosine"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "warmup_steps": 0, "num_samples": 4,
                  "log_interval": 2, "precision": "fp32", "device": "cpu"},
    }
    base["train"].update(train)
    return RunConfig.from_dict(base)


def finished(cfg: RunConfig) -> RunConfig:
    """`cfg` as the resolver finishes a run's config (config.resolve with no options: a config without
    a sampling section gets the recommended one), the only kind training.train takes."""
    return resolve(cfg, {})


@pytest.fixture
def tiny():
    return tiny_config


def random_unet(num_classes=C, seed=0):
    """tiny_config's network with random (seeded) weights: for wiring and closed forms, not quality."""
    from mnist_diffusion.models import build_model
    model = build_model(ModelConfig(base_dim=8, channel_mults=(1, 2), num_res_blocks=1, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised layers (block outputs, conv_out) get small random weights
        for p in model.parameters():  # so that eps depends on (x, t, y)
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def wrap(model, num_classes=C, T=20, schedule="cosine", prediction="eps"):
    """Any network as a Diffusion: what travels with it is set in the config, nowhere else."""
    from mnist_diffusion.diffusion import Diffusion
    cfg = RunConfig.from_dict({"model": {"base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                                         "num_classes": num_classes, "prediction": prediction},
                               "diffusion": {"timesteps": T, "schedule": schedule}})
    return Diffusion(model, cfg, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: with 2 threads on a busy shared CPU, thread hand-offs cost more than the
    convolutions (measured: 2 s vs 10 ms per forward under load), and the golden files were made on
    one (the thread count can change float sums). The process-wide count is given back after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cond(one_thread):
    """A labelled tiny random U-Net as a Diffusion (T = 20)."""
    return wrap(random_unet())


@pytest.fixture(scope="module")
def uncond(one_thread):
    """An unlabelled one."""
    return wrap(random_unet(num_classes=None, seed=1), num_classes=None)


@pytest.fixture
def executed_plans(monkeypatch):
    """Every plan a draw runs, in order: the batch loop of sample, edit and inpaint
    (sampling.run_batches), and inversion / decoding as the pipeline calls them."""
    import mnist_diffusion.diffusion as pipeline
    import mnist_diffusion.sampling as sampling
    seen = []

    def spy(real):
        def run(denoiser, what, plan, *args, **kwargs):
            seen.append(plan)
            return real(denoiser, what, plan, *args, **kwargs)
        return run
    monkeypatch.setattr(sampling, "run_batches", spy(sampling.run_batches))
    monkeypatch.setattr(pipeline, "invert", spy(sampling.invert))
    monkeypatch.setattr(pipeline, "decode", spy(sampling.decode))
    return seen


# -- tiny trained runs ----------------------------------------------------------------------------------

def synthetic_split(n=64, seed=0):
    """Random uint8 images with random labels: a dataset that needs no download."""
    from mnist_diffusion.data import Split
    rng = np.random.default_rng(seed)
    return Split(images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 labels=rng.integers(0, 10, n, dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, one_thread):
    """Two checkpoints of two training steps on synthetic images: "cond" (10 classes) and "uncond"."""
    from mnist_diffusion.training import train
    out = {}
    for name, classes in [("cond", 10), ("uncond", None)]:
        cfg = tiny_config(max_steps=2, num_samples=2).replace(model={"num_classes": classes},
                                                              diffusion={"timesteps": 20})
        run = tmp_path_factory.mktemp(name)
        out[name] = str(train(finished(cfg), synthetic_split(), run, progress=False, log=lambda s: None).checkpoint)
    return out


# -- child processes on a synthetic MNIST --------------------------------------------------------------

TRAIN_ARGS = ["--base-dim", "8", "--channel-mults", "1,2", "--num-res-blocks", "1", "--timesteps", "40",
              "--batch-size", "8", "--epochs", "1000", "--max-steps", "200", "--save-interval", "5",
              "--sample-interval", "1000", "--log-interval", "1", "--num-samples", "2", "--device", "cpu",
              "--precision", "fp32", "--no-progress", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A synthetic 'mnist' as IDX files, its checksums announced to child processes via a shim:
    {"env": the environment for subprocess, "idx": the IDX folder, "root": the scratch folder}."""
    from mnist_diffusion import data
    root = tmp_path_factory.mktemp("rel")
    rng = np.random.default_rng(0)
    splits = {"train": data.Split(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                                  rng.integers(0, 10, 64).astype(np.uint8)),
              "test": data.Split(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
                                 rng.integers(0, 10, 16).astype(np.uint8))}
    idx = root / "idx"
    idx.mkdir()
    for split, s in splits.items():
        for stem, arr in zip(data.FILES[split], (s.images, s.labels)):
            (idx / (stem + ".gz")).write_bytes(gzip.compress(data.encode_idx(arr)))
    sums = {k: (data.sha256(s.images), data.sha256(s.labels)) for k, s in splits.items()}
    shim = root / "shim"
    shim.mkdir()
    # sitecustomize runs at interpreter start-up in the child: it swaps in the synthetic checksums
    (shim / "sitecustomize.py").write_text(
        "import mnist_diffusion.data as d\n"
        f"d.CHECKSUMS['mnist'] = {sums!r}\n"
        "d.SIZES = {'train': 64, 'test': 16}\n")
    e = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{ROOT / 'src'}", OMP_NUM_THREADS="1",
             MNIST_DIFFUSION_CACHE=str(root / "cache"))
    return {"env": e, "idx": idx, "root": root}


def train_cmd(run: Path, env, *extra):
    """`python -m mnist_diffusion train` of the tiny model on env's synthetic MNIST."""
    return [sys.executable, "-m", "mnist_diffusion", "train", "--output-dir", str(run), "--data-dir",
            str(env["idx"]), *TRAIN_ARGS, *extra]


def logged_steps(run: Path) -> list[int]:
    """The steps a run's loss.csv holds ([] before it exists)."""
    try:
        with open(run / "loss.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f)]
    except (FileNotFoundError, ValueError, KeyError):
        return []


# -- the real datasets -----------------------------------------------------------------------------------

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


# -- the evaluator's test-split features, once per run -----------------------------------------------

CHUNK = 1000  # evaluator.embed's batch: a chunk's features are the bytes the whole embedding gives it


@pytest.fixture(scope="session", autouse=True)
def shared_test_features(tmp_path_factory):
    """evaluation._test_reference embeds a dataset's 10,000 test images (about 9 s on one thread)
    once per process, so each pytest-xdist worker would pay for it again. The workers of one run
    share that work instead: each embeds the 1,000-image chunks no worker has claimed yet, writes
    them to the run's shared temp folder, and reads the others' chunks from there. Nothing outlives
    the run; a single process (no xdist) keeps the library's own cache."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    from mnist_diffusion import evaluation
    real, root = evaluation._test_reference, tmp_path_factory.getbasetemp().parent

    def shared(ref, progress=False):
        if ref.key not in evaluation._TEST_REFERENCE and len(ref.test) > CHUNK:
            feats = _shared_features(root, ref)
            evaluation._TEST_REFERENCE[ref.key] = (feats, evaluation.feature_stats(feats))
        return real(ref, progress)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation, "_test_reference", shared)
        yield


def _shared_features(root: Path, ref) -> np.ndarray:
    from mnist_diffusion import evaluation
    key = hashlib.sha256(f"{ref.name}\0{ref.sha256}\0".encode() + np.ascontiguousarray(ref.test).tobytes())
    folder = root / f"test-features-{key.hexdigest()[:16]}"
    folder.mkdir(exist_ok=True)
    starts = range(0, len(ref.test), CHUNK)

    def compute(s):
        tmp = folder / f"{s:06d}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, evaluation.embed(ref.net, ref.test[s:s + CHUNK])[0])
        os.replace(tmp, folder / f"{s:06d}.npy")

    for s in starts:  # claim and embed what no worker has claimed
        try:
            os.close(os.open(folder / f"{s:06d}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        compute(s)
    deadline = time.monotonic() + 120
    while missing := [s for s in starts if not (folder / f"{s:06d}.npy").exists()]:  # another worker's
        if time.monotonic() > deadline:  # that worker died or hangs: embed them here
            for s in missing:
                compute(s)
            break
        time.sleep(0.02)
    return np.concatenate([np.load(folder / f"{s:06d}.npy") for s in starts])
