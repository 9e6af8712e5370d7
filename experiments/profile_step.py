"""Where a training step's time goes, fp32 against bf16 autocast: torch.profiler over real steps.

    PYTHONPATH=src python experiments/profile_step.py --preset quick --batch-size 64 --steps 20 \
        --output docs/results/profile-quick-b64.md --json docs/results/profile-quick-b64.json

Both variants are `benchmark.TrainStep` (the step `train` takes: autocast forward, backward,
gradient clipping, AdamW, EMA) from the same initial weights. Each gets --warmup untimed steps,
then --steps profiled ones; the table lists, per operator, the self CPU time per step in each
variant and their ratio, sorted by fp32 time, so it shows which operators bf16 speeds up and
which it leaves as they are (or slows, e.g. the casts autocast inserts). `--compare precision` in
`mnist-diffusion benchmark` is the throughput number; this script explains it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_diffusion.benchmark import TrainStep
from mnist_diffusion.checkpoint import atomic_write_text
from mnist_diffusion.config import preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--base-dim", type=int, help="another width of the preset's network")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="profiled steps per variant")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--top", type=int, default=25, help="operators to list")
    p.add_argument("--output", help="write the markdown table here")
    p.add_argument("--json", help="write every operator's numbers here")
    return p.parse_args(argv)


def profile_variant(step: TrainStep, warmup: int, steps: int) -> tuple[dict[str, float], dict[str, float], float]:
    """(self CPU ms per step for each operator, calls per step for each, wall ms per step) over
    `steps` profiled steps."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) * 1000 / steps
    per_op: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        per_op[e.key] += e.self_cpu_time_total / 1000 / steps  # microseconds in total -> ms per step
        calls[e.key] += e.count / steps
    return dict(per_op), dict(calls), wall


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    if args.base_dim:
        cfg = cfg.replace(model={"base_dim": args.base_dim})
    device = torch.device("cpu")
    results = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        step = TrainStep(cfg, device, args.batch_size, amp)
        ops, calls, wall = profile_variant(step, args.warmup, args.steps)
        results[name] = {"ops_ms_per_step": ops, "calls_per_step": calls, "wall_ms_per_step": wall}
        print(f"{name}: {wall:.1f} ms per step (profiled)", file=sys.stderr, flush=True)
    fp32, bf16 = results["fp32"]["ops_ms_per_step"], results["bf16"]["ops_ms_per_step"]
    names = sorted(set(fp32) | set(bf16), key=lambda k: -max(fp32.get(k, 0.0), bf16.get(k, 0.0)))
    w32, w16 = results["fp32"]["wall_ms_per_step"], results["bf16"]["wall_ms_per_step"]
    lines = [f"preset {args.preset}, batch {args.batch_size}, {args.steps} profiled steps after {args.warmup} "
             f"warm-up, torch {torch.__version__}, {torch.get_num_threads()} threads",
             "", f"wall time per step (under the profiler): fp32 {w32:.1f} ms, bf16 {w16:.1f} ms, "
             f"ratio {w32 / w16:.2f}x", "",
             "| operator | fp32 ms/step | bf16 ms/step | fp32/bf16 | share of bf16 step |",
             "|---|---:|---:|---:|---:|"]
    total32, total16 = sum(fp32.values()), sum(bf16.values())
    for k in names[: args.top]:
        a, b = fp32.get(k, 0.0), bf16.get(k, 0.0)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"| `{k}` | {a:.1f} | {b:.1f} | {ratio} | {b / total16:.1%} |")
    rest32 = sum(fp32.get(k, 0.0) for k in names[args.top:])
    rest16 = sum(bf16.get(k, 0.0) for k in names[args.top:])
    lines.append(f"| (the other {max(0, len(names) - args.top)} operators) | {rest32:.1f} | {rest16:.1f} | - | "
                 f"{rest16 / total16:.1%} |")
    lines.append(f"| **self CPU time, all operators** | {total32:.1f} | {total16:.1f} | {total32 / total16:.2f}x | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        atomic_write_text(args.output, table)
    if args.json:
        atomic_write_text(args.json, json.dumps({"preset": args.preset, "batch_size": args.batch_size,
                                                 "steps": args.steps, "warmup": args.warmup,
                                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                                 **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
