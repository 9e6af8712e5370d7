"""Are two training runs the same run? Compares two checkpoints tensor by tensor (weights, EMA
weights, optimiser state) and their configs, and says what differs.

    PYTHONPATH=src python scripts/compare_checkpoints.py runs/a/checkpoints/last.pt runs/b/checkpoints/last.pt \
        --json docs/results/same-run.json

Used for docs/RESULTS.md ("Reproducibility checks"): Fashion-MNIST read from 60,000 PNGs trains the
same weights, bit for bit, as the built-in set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mnist_diffusion.atomic import atomic_write_json
from mnist_diffusion.checkpoint import CheckpointError, load

DATA_KEYS = ("dataset", "data_sha256", "classes")  # what may differ between the two runs' data sources


def _rest(ck: dict) -> dict:
    return {k: v for k, v in ck["config"]["train"].items() if k not in DATA_KEYS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.json and Path(args.json).is_dir():
        p.error(f"--json {args.json} is a folder; give a file name")
    try:
        a, b = load(args.a), load(args.b)
    except CheckpointError as e:
        raise SystemExit(f"compare_checkpoints.py: {e}") from None
    if set(a["model"]) != set(b["model"]) or set(a["ema"]) != set(b["ema"]):
        raise SystemExit(f"{args.a} and {args.b} hold different networks (other tensor names)")
    report = {"a": args.a, "b": args.b, "step": [a["step"], b["step"]],
              "data_sha256": [a["config"]["train"].get("data_sha256"), b["config"]["train"].get("data_sha256")],
              "datasets": [a["config"]["train"]["dataset"], b["config"]["train"]["dataset"]]}
    for part in ("model", "ema"):
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        report[f"{part}_tensors"] = len(a[part])
        report[f"{part}_differing"] = differ
    cfg_a, cfg_b = _rest(a), _rest(b)
    report["other_config_differences"] = sorted(k for k in cfg_a if cfg_a[k] != cfg_b.get(k))
    report["same_weights"] = not report["model_differing"] and not report["ema_differing"]
    print(f"{args.a} vs {args.b}: steps {report['step']}, data SHA-256 "
          f"{'equal' if report['data_sha256'][0] == report['data_sha256'][1] else 'different'}, "
          f"weights {'identical' if report['same_weights'] else 'DIFFERENT'} "
          f"({report['model_tensors']} + {report['ema_tensors']} tensors)")
    if args.json:
        atomic_write_json(args.json, report)
    return 0 if report["same_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())
