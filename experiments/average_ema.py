"""A longer EMA after training: a checkpoint whose EMA weights are the mean of the EMA weights a
run saved at several steps (a crude post-hoc EMA, after Karras et al. 2024, EDM2 sec. 3, which
fits a chosen EMA profile from stored snapshots; here the plain mean of a few of them).

    PYTHONPATH=src python experiments/average_ema.py runs/i20/quick-uni-s1 2800,3200 --output /tmp/ema2.pt
    mnist-diffusion evaluate --checkpoint /tmp/ema2.pt ...

The run's warm-up EMA, decay (1 + t) / (10 + t), is a power-function EMA with gamma ~8 (EDM2's
sigma_rel ~0.09): its average reaches back ~11% of the run. Averaging the snapshots of the last
S save intervals reaches further back. Everything but the EMA weights comes from the run's
last.pt (so resuming from the output continues the run, not the average); the step is last.pt's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mnist_diffusion.checkpoint import CheckpointError, atomic_save, load


def average(run: Path, steps: list[int]) -> dict:
    """last.pt of `run` with its "ema" replaced by the mean of the EMA weights at `steps`."""
    base = load(run / "checkpoints" / "last.pt")
    snaps = [load(run / "checkpoints" / f"step_{s:07d}.pt") for s in steps]
    for s, ck in zip(steps, snaps):  # one run = one run id (rundir.RunFiles), as resume checks
        if ck.get("run_id") != base.get("run_id") or ck["config"]["model"] != base["config"]["model"] \
                or set(ck["ema"]) != set(base["ema"]):
            raise CheckpointError(f"step_{s:07d}.pt is not from the same run as last.pt")
    ema = {}
    for k, v in base["ema"].items():
        if v.is_floating_point():
            ema[k] = (sum(ck["ema"][k].double() for ck in snaps) / len(snaps)).to(v.dtype)
        else:  # integer buffers (none in the shipped networks) are taken from last.pt
            ema[k] = v
    out = {k: v for k, v in base.items() if k != "sha256"}  # load() adds the file's hash; not a field
    out["ema"] = ema
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory with checkpoints/last.pt and step_*.pt")
    p.add_argument("steps", help="comma-separated steps whose EMA weights to average, e.g. 2800,3200")
    p.add_argument("--output", required=True, help="the checkpoint to write")
    args = p.parse_args(argv)
    try:
        steps = sorted({int(s) for s in args.steps.split(",")})
    except ValueError:
        p.error(f"steps must be comma-separated integers, got {args.steps!r}")
    if not steps or min(steps) <= 0:
        p.error("steps must be positive")
    out = Path(args.output)
    # inside the run's checkpoints/ it could replace a snapshot being averaged or be taken by --resume auto
    if out.resolve().parent == (Path(args.run) / "checkpoints").resolve() or out.is_dir():
        p.error(f"--output {out} is in the run's checkpoints folder or is a folder; give a file elsewhere")
    try:
        atomic_save(average(Path(args.run), steps), out)
    except CheckpointError as e:
        print(f"average_ema.py: {e}", file=sys.stderr)
        return 1
    print(f"{out}: EMA weights averaged over steps {','.join(map(str, steps))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
