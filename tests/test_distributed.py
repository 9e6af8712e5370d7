"""Two CPU processes under torchrun (gloo): same weights on both ranks, run directory written once,
and the same global batch gives the same training as one process."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_diffusion import checkpoint as ckpt_io

from conftest import TRAIN_ARGS

pytestmark = pytest.mark.system  # other processes

ROOT = Path(__file__).resolve().parents[1]


def _train_args(run, env, steps="6"):
    args = list(TRAIN_ARGS)
    args[args.index("--max-steps") + 1] = steps
    args[args.index("--save-interval") + 1] = "3"
    return ["train", "--output-dir", str(run), "--data-dir", str(env["idx"]), *args]


def test_two_gloo_processes_match_one(env, tmp_path):
    e = dict(env["env"], OMP_NUM_THREADS="1")
    ddp = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", "-m", "mnist_diffusion", *_train_args(ddp, env)],
                       env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 processes; weights identical on every rank: yes" in r.stdout
    assert r.stdout.count("done:") == 1  # only rank 0 reports
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt", "step_0000006.pt"]
    rows = (ddp / "loss.csv").read_text().strip().splitlines()
    assert [int(x.split(",")[0]) for x in rows[1:]] == [1, 2, 3, 4, 5, 6]  # written once, not per rank

    single = tmp_path / "single"
    r1 = subprocess.run([sys.executable, "-m", "mnist_diffusion", *_train_args(single, env)], env=e,
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    a, b = ckpt_io.load(ddp / "checkpoints/last.pt"), ckpt_io.load(single / "checkpoints/last.pt")
    for k in a["model"]:  # same data, noise and global batch: equal up to the order of float sums
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4, rtol=1e-3), k
    loss_ddp = [float(x.split(",")[2]) for x in rows[1:]]
    loss_one = [float(x.split(",")[2]) for x in (single / "loss.csv").read_text().strip().splitlines()[1:]]
    assert all(abs(p - q) < 1e-3 * max(1.0, abs(q)) for p, q in zip(loss_ddp, loss_one))
