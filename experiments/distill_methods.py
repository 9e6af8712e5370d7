"""Which distillation objective reaches the best one- and two-step images in the same wall-clock budget.

    PYTHONPATH=src python experiments/distill_methods.py --teacher mnist --minutes 12 --seeds 0 \
        --runs runs/distill-methods --n 2000

For each seed and method, `mnist-diffusion distill` into RUNS/METHOD-sSEED with the same budget of
wall-clock minutes: "pairs" spends part of it drawing its teacher pairs (--pairs, timed) and trains
for the rest (--time-limit); "consistency" trains for all of it. Then `evaluate` at 1 and 2 steps
(--n images, seed 0) and one table row per run. The decision behind the shipped recipe:
docs/decisions/distillation.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "mnist_diffusion"]


def run(argv: list[str]) -> None:
    print("+ mnist-diffusion " + " ".join(map(str, argv)), flush=True)
    subprocess.run(CLI + [str(a) for a in argv], check=True)


def pairs_seconds(run_dir: Path) -> float:
    """How long the run's teacher pairs took to draw (its pairs/ files' modification times)."""
    times = sorted(p.stat().st_mtime for p in (run_dir / "pairs").glob("*.safetensors"))
    return times[-1] - times[0] if len(times) > 1 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="mnist")
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget per run")
    p.add_argument("--pairs", type=int, default=8000, help="teacher pairs the pairs method draws inside its budget")
    p.add_argument("--methods", default="pairs,consistency")
    p.add_argument("--seeds", default="0")
    p.add_argument("--n", type=int, default=2000, help="images per evaluation")
    p.add_argument("--runs", type=Path, default=Path("runs/distill-methods"))
    args = p.parse_args(argv)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            out = args.runs / f"{method}-s{seed}"
            extra = ["--pairs", args.pairs] if method == "pairs" else []
            t0 = time.time()
            limit = args.minutes
            if method == "pairs" and not (out / "checkpoints" / "last.pt").exists():
                # draw the pairs first (a zero-step run), then train for what is left of the budget
                run(["distill", "--teacher", args.teacher, "--method", method, *extra, "--seed", seed,
                     "--max-steps", 1, "--output-dir", out, "--no-progress", "--sample-interval", 0])
                limit = max(0.5, args.minutes - (time.time() - t0) / 60)
                run(["distill", "--resume", "auto", "--output-dir", out, "--max-steps", 10**6, "--time-limit", limit,
                     "--no-progress"])
            elif not (out / "checkpoints" / "last.pt").exists():
                run(["distill", "--teacher", args.teacher, "--method", method, "--seed", seed, "--max-steps", 10**6,
                     "--time-limit", limit, "--output-dir", out, "--no-progress", "--sample-interval", 0])
            row = {"method": method, "seed": seed, "minutes": args.minutes,
                   "pairs_s": round(pairs_seconds(out), 1) if method == "pairs" else 0.0}
            for steps in (1, 2):
                report = out / f"evaluate-{steps}.json"
                if not report.exists():
                    run(["evaluate", "--checkpoint", out / "checkpoints" / "last.pt", "--steps", steps,
                         "--num-samples", args.n, "--seed", 0, "--json", report, "--no-progress"])
                m = json.loads(report.read_text())
                row[f"fid_{steps}"] = m["fid"]
                row[f"recognizable_{steps}"] = m.get("recognizable")
                row[f"accuracy_{steps}"] = m.get("label_accuracy")
            row["steps"] = _last_step(out)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| method | seed | budget (min) | pairs drawn in (s) | steps | FID 1 | recog. 1 | acc. 1 | FID 2 | recog. 2 | acc. 2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seed']} | {r['minutes']:g} | {r['pairs_s']:.0f} | {r['steps']} | "
              + " | ".join(_fmt(r.get(f"{k}_{s}")) for s in (1, 2) for k in ("fid", "recognizable", "accuracy")) + " |")
    return 0


def _last_step(run_dir: Path) -> int:
    import csv
    with open(run_dir / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["step"]) if rows else 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
