"""Time to quality: FID and recognizable against training seconds on this machine (issue 47, item 1).

Each (variant, seed) is `mnist-diffusion train --preset quick` plus the variant's options (the recipes
of experiments/recipe_search.py), saving a checkpoint at --points evenly spread steps (all of them
kept); every run is trained first, seed-major (base s0, thin s0, base s1, thin s1: slow and fast
stretches of a VM day are shared by the variants), one torch process at a time, and only then is each
run scored with `mnist-diffusion evaluate --run` (every checkpoint's EMA weights, the model's own draw:
DPM-Solver++ 20, W = 0.5 for the quick preset), so scoring never counts as training time.

    PYTHONPATH=src python experiments/time_curve.py --variants base,thin-attn-v-1850 --seeds 0,1 --points 8 \
        --num-samples 2000 --json docs/results/time-curve.json --figure docs/figures/time_curve.png

Training seconds are the run's own clock (`elapsed_s`: the train command's wall time, previews and
checkpoints included, resumes summed), read from each checkpoint (the number loss.csv logs; loss.csv
interpolated at the checkpoint's step for one that lacks it). A checkpoint's curve point is that
recipe's weights at that time: the learning rate is still on the schedule planned for the whole run
(warm-up, cosine decay to its last step), so an early point is not what a recipe planned to stop
there would reach. --budget-seconds stops every run after that much training (`--time-limit`; the
points stay spread over the planned steps, and the last checkpoint, wherever the budget stopped it,
is scored too). To see whether a recipe has converged, give it more steps (--steps, which replans
its schedule) and look for the point where the curve flattens.

Runs land in RUNS/VARIANT-sSEED (default runs/time-curve), its settings and training facts beside it
in RUNS/VARIANT-sSEED.train.json, its scores in RUNS/VARIANT-sSEED.eval-nN.json: a stopped curve
continues where it was (`--resume auto`), a finished run is not retrained and a scored one not
rescored; a run trained with other settings is refused (use another --runs). --dry-run prints the
commands; --preset tiny --steps 8 makes a curve in seconds (the test's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_search import VARIANTS as RECIPES, _cpu, recipe  # noqa: E402  (the recipes: one list, two experiments)

ROOT = Path(__file__).resolve().parents[1]
LOCK = ["flock", "/tmp/torch.lock"]  # one torch process at a time on the 2-core machine
VARIANTS = dict(RECIPES)


# a run's facts and scores lie beside it, not in it: train refuses a run folder holding files it did not write
def facts_file(run: Path) -> Path:
    return run.with_name(run.name + ".train.json")


def eval_report(run: Path, n: int) -> Path:
    return run.with_name(f"{run.name}.eval-n{n}.json")


def final_report(run: Path, n: int) -> Path:
    return run.with_name(f"{run.name}.final-n{n}.json")


def planned_steps(options: list[str], preset: str, steps: int | None) -> int:
    """The steps a variant plans: --steps, else its own --max-steps, else its preset's."""
    if steps:
        return steps
    for i in range(len(options) - 1, -1, -1):
        if options[i] == "--max-steps":
            return int(options[i + 1])
    from mnist_diffusion.config import PRESETS
    n = PRESETS[preset]["train"].get("max_steps")
    if not n:
        raise SystemExit(f"--preset {preset} plans by epochs: give --steps")
    return int(n)


def settings(args, name: str, seed: int) -> dict:
    options = recipe(name, args.preset)
    steps = planned_steps(options, args.preset, args.steps)
    return {"preset": args.preset, "dataset": args.dataset, "variant": name, "options": options,
            "seed": seed, "steps": steps, "save_interval": max(1, math.ceil(steps / args.points)),
            "budget_seconds": args.budget_seconds}


def _without(options: list[str], flags: tuple[str, ...]) -> list[str]:
    """The options less each of `flags` and its value (this script sets those)."""
    out, skip = [], False
    for o in options:
        if not skip and o in flags:
            skip = True
            continue
        if not skip:
            out.append(o)
        skip = False
    return out


def train_command(s: dict, run: Path, budget_left: float | None) -> list[str]:
    own = _without(s["options"], ("--max-steps", "--save-interval", "--keep-checkpoints", "--time-limit"))
    cmd = ["train", "--preset", s["preset"], "--dataset", s["dataset"], "--seed", str(s["seed"]), *own,
           "--max-steps", str(s["steps"]), "--save-interval", str(s["save_interval"]), "--keep-checkpoints", "0"]
    if budget_left is not None:
        cmd += ["--time-limit", f"{budget_left / 60:.6g}"]
    return cmd + ["--output-dir", str(run), "--resume", "auto", "--no-progress"]


def eval_command(run: Path, n: int) -> list[str]:
    return ["evaluate", "--run", str(run), "--num-samples", str(n), "--seed", "0",
            "--json", str(eval_report(run, n)), "--no-progress"]


def final_command(run: Path, n: int) -> list[str]:
    return ["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--num-samples", str(n), "--seed", "0",
            "--json", str(final_report(run, n)), "--no-progress"]


def _cli(args, cmd: list[str]) -> list[str]:
    return [*([] if args.no_lock else LOCK), sys.executable, "-m", "mnist_diffusion", *cmd]


def _run(args, cmd: list[str], what: str) -> subprocess.CompletedProcess:
    print("+ mnist-diffusion", " ".join(cmd), flush=True)
    out = subprocess.run(_cli(args, cmd), cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{what} failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return out


def _elapsed(path: Path) -> float | None:
    from mnist_diffusion import checkpoint as ckpt_io
    value = ckpt_io.load(path).get("elapsed_s")
    return None if value is None else float(value)


def _step_file(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}.pt"


def train(args, name: str, seed: int) -> dict:
    """Train one (variant, seed) unless it is done; returns its facts (RUN.train.json)."""
    from mnist_diffusion import checkpoint as ckpt_io
    from mnist_diffusion.atomic import atomic_write_json

    run, s = args.runs / f"{name}-s{seed}", settings(args, name, seed)
    facts_path = facts_file(run)
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
    if facts is not None and facts["settings"] != s:
        raise SystemExit(f"{run} was trained with other settings ({facts['settings']}, not {s}): "
                         "give another --runs or delete it")
    if facts is not None and facts.get("done"):
        return facts
    if facts is None and (run / "checkpoints").is_dir():
        raise SystemExit(f"{run} holds a run this script did not start: give another --runs or delete it")
    last = run / "checkpoints" / "last.pt"
    spent = (_elapsed(last) or 0.0) if last.exists() else 0.0
    left = None if args.budget_seconds is None else args.budget_seconds - spent
    run.parent.mkdir(parents=True, exist_ok=True)
    facts = {"variant": name, "seed": seed, "settings": s, "done": False,
             "command": "mnist-diffusion " + " ".join(train_command(s, run, args.budget_seconds)[:-5])}
    atomic_write_json(facts_path, facts)  # the settings first: a stopped run resumes with these only
    if left is None or left > 0:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        out = _run(args, train_command(s, run, left), f"{name} seed {seed}: train")
        facts.update(wall_seconds=round(time.perf_counter() - t0, 1), load_before=load,
                     done_line=next((ln for ln in out.stdout.splitlines() if ln.startswith("done:")), None))
    # the last checkpoint is a curve point wherever it stopped (a budget, a plan not divisible by the points)
    ck = ckpt_io.load(last)
    if not _step_file(run, int(ck["step"])).exists():
        tmp = run / "checkpoints" / f".last-copy-{os.getpid()}.tmp"
        shutil.copyfile(last, tmp)
        os.replace(tmp, _step_file(run, int(ck["step"])))
    facts.update(done=True, steps=int(ck["step"]), train_seconds=round(float(ck.get("elapsed_s", 0.0)), 3),
                 median_images_per_s=_median_speed(run))
    atomic_write_json(facts_path, facts)
    return facts


def _median_speed(run: Path) -> float | None:
    from mnist_diffusion.rundir import read_loss_rows
    speeds = [float(r["images_per_s"]) for r in read_loss_rows(run / "loss.csv") if r.get("images_per_s")]
    return round(float(np.median(speeds)), 1) if speeds else None


def evaluate(args, run: Path) -> list[dict]:
    """Score every checkpoint of a run (once), and put each at its training seconds."""
    from mnist_diffusion.rundir import elapsed_seconds, read_loss_rows

    report = eval_report(run, args.num_samples)
    steps = sorted(int(p.stem.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*.pt"))
    if not report.exists() or sorted(r["step"] for r in json.loads(report.read_text())["checkpoints"]) != steps:
        _run(args, eval_command(run, args.num_samples), f"{run.name}: evaluate")
    scored = sorted(json.loads(report.read_text())["checkpoints"], key=lambda r: r["step"])
    logged = read_loss_rows(run / "loss.csv")
    xs = [0] + [int(r["step"]) for r in logged]
    ys = [0.0] + elapsed_seconds(logged, json.loads((run / "config.json").read_text())["train"]["batch_size"])
    rows = []
    for r in scored:
        seconds = _elapsed(_step_file(run, r["step"]))
        if seconds is None:  # a checkpoint older than elapsed_s: loss.csv at its step
            seconds = float(np.interp(r["step"], xs, ys))
        rows.append({"step": r["step"], "train_seconds": round(seconds, 3), "fid": r["fid"],
                     "recognizable": r["recognizable"], "label_accuracy": r.get("label_accuracy"),
                     "fid_floor": r["fid_floor"], "n": r["n"]})
    return rows


def score_final(args, run: Path) -> dict:
    """The last checkpoint's EMA weights scored with --final-num-samples images (once)."""
    report = final_report(run, args.final_num_samples)
    if not report.exists():
        _run(args, final_command(run, args.final_num_samples), f"{run.name}: evaluate the last checkpoint")
    r = json.loads(report.read_text())
    return {k: r.get(k) for k in ("fid", "fid_floor", "recognizable", "label_accuracy", "n")}


def final_summary(runs: list[dict], variants: list[str]) -> dict:
    """Per variant: the seeds' mean and spread of the last checkpoint's scores, and its training time
    as a ratio of the first variant's, seed by seed (the runs alternate, so each pair shares a stretch
    of the machine's day)."""
    first = {r["seed"]: r["train_seconds"] for r in runs if r["variant"] == variants[0]}
    out = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v and r.get("final")]
        if not mine:
            continue
        entry = {"seeds": [r["seed"] for r in mine]}
        for key in ("fid", "recognizable", "label_accuracy"):
            vals = [r["final"][key] for r in mine if r["final"].get(key) is not None]
            if vals:
                entry[key] = {"mean": round(float(np.mean(vals)), 6), "min": min(vals), "max": max(vals)}
        ratios = [r["train_seconds"] / first[r["seed"]] for r in mine if first.get(r["seed"])]
        if ratios:
            entry["time_ratio"] = {"mean": round(float(np.mean(ratios)), 4), "min": round(min(ratios), 4),
                                   "max": round(max(ratios), 4)}
        out[v] = entry
    return out


def mean_rows(runs: list[dict]) -> list[dict]:
    """The seeds' mean at each step every seed has (the same steps: one variant, one save interval)."""
    common = set.intersection(*({r["step"] for r in run["rows"]} for run in runs))
    out = []
    for step in sorted(common):
        at = [next(r for r in run["rows"] if r["step"] == step) for run in runs]
        row = {"step": step, "seeds": len(at)}
        for key in ("train_seconds", "fid", "recognizable", "label_accuracy", "fid_floor"):
            vals = [r[key] for r in at if r.get(key) is not None]
            row[key] = round(float(np.mean(vals)), 6) if len(vals) == len(at) else None
        out.append(row)
    return out


def plot(result: dict, path: Path) -> Path:
    """Two panels, FID (log) and recognizable against training seconds: a colour per variant, a thin
    line per seed, the seeds' mean bold."""
    import matplotlib
    matplotlib.use("Agg")
    import io
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from mnist_diffusion.atomic import atomic_write_bytes

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers, handles = "os^vD<>p", []
    for i, (name, mean) in enumerate(result["mean"].items()):
        c = colours[i % len(colours)]
        runs = [r for r in result["runs"] if r["variant"] == name]
        for j, run in enumerate(runs):
            xs = [r["train_seconds"] for r in run["rows"]]
            for ax, key in ((a1, "fid"), (a2, "recognizable")):
                ax.plot(xs, [r[key] for r in run["rows"]], "-", marker=markers[j % len(markers)], ms=3.5, lw=0.9,
                        color=c, alpha=0.45)
        xs = [r["train_seconds"] for r in mean]
        for ax, key in ((a1, "fid"), (a2, "recognizable")):
            ax.plot(xs, [r[key] for r in mean], "o-", lw=2.6, ms=5, color=c)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        handles.append(Line2D([], [], color=c, lw=2.6, marker="o",
                              label=f"{name}: mean of seed{'s' if len(runs) > 1 else ''} {seeds}"))
    handles.append(Line2D([], [], color="grey", lw=0.9, alpha=0.6, marker="o", ms=3.5, label="one seed"))
    floors = [r["fid_floor"] for run in result["runs"] for r in run["rows"]]
    if floors:
        a1.axhline(float(np.mean(floors)), ls="--", color="grey", lw=1)
        handles.append(Line2D([], [], ls="--", color="grey", lw=1, label="FID floor: real training images"))
    n = result["settings"]["num_samples"]
    a1.set_yscale("log")
    a1.set_ylabel("FID vs test split (evaluator features)")
    a1.set_title(f"Sample quality, n = {n:,} per point")
    a2.set_ylabel("recognizable (top class p >= 0.9)")
    a2.set_title("Recognizability")
    for ax in (a1, a2):
        ax.set_xlabel("training seconds (wall clock, scoring excluded)")
        ax.grid(True, which="both", alpha=0.3)
    a1.legend(handles=handles, fontsize=8)
    m = result["machine"]
    fig.suptitle(f"Time to quality: {m['cpu']}, {m['threads']} threads, torch {m['torch']}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="base,thin-attn-v-1850", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--points", type=int, default=8, help="checkpoints to score per run, evenly spread over its "
                   "planned steps (a save interval of ceil(steps / points); the last step is always one)")
    p.add_argument("--budget-seconds", type=float, help="stop each run after this much training (--time-limit)")
    p.add_argument("--steps", type=int, help="plan every variant for this many steps instead of its own")
    p.add_argument("--preset", default="quick", help="the preset the variants' options apply to (tiny: tests)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--num-samples", type=int, default=2000, help="images per scored checkpoint")
    p.add_argument("--final-num-samples", type=int, help="also score each run's last checkpoint with this many "
                   "images (10000: the issue's targets), with the seeds' mean and each variant's time as a ratio "
                   "of the first variant's")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "time-curve")
    p.add_argument("--json", type=Path, help="default: RUNS/time-curve.json")
    p.add_argument("--figure", type=Path, help="PNG; default: RUNS/time-curve.png")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-lock", action="store_true", help="run the commands without flock /tmp/torch.lock "
                   "(when this process holds it already)")
    args = p.parse_args(argv)
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}")
    if args.points < 1 or (args.steps is not None and args.steps < 1) or args.num_samples < 1 or \
            (args.final_num_samples is not None and args.final_num_samples < 1):
        p.error("--points, --steps, --num-samples and --final-num-samples must be positive")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        p.error("--budget-seconds must be positive")
    args.runs = args.runs.resolve()
    pairs = [(v, s) for s in seeds for v in variants]  # seed-major: the variants share the machine's day
    if args.dry_run:
        for v, s in pairs:
            print("mnist-diffusion", " ".join(train_command(settings(args, v, s), args.runs / f"{v}-s{s}",
                                                            args.budget_seconds)))
        for v, s in pairs:
            print("mnist-diffusion", " ".join(eval_command(args.runs / f"{v}-s{s}", args.num_samples)))
            if args.final_num_samples:
                print("mnist-diffusion", " ".join(final_command(args.runs / f"{v}-s{s}", args.final_num_samples)))
        return 0

    facts = {(v, s): train(args, v, s) for v, s in pairs}  # every run trained before anything is scored
    runs = []
    for v, s in pairs:
        f = facts[(v, s)]
        runs.append({"variant": v, "seed": s, "run": str(args.runs / f"{v}-s{s}"), "command": f["command"],
                     "steps": f["steps"], "train_seconds": f["train_seconds"],
                     "median_images_per_s": f.get("median_images_per_s"), "load_before": f.get("load_before"),
                     "rows": evaluate(args, args.runs / f"{v}-s{s}")})
    if args.final_num_samples:
        for run in runs:
            run["final"] = score_final(args, Path(run["run"]))
    import torch
    result = {
        "what": "FID and recognizable of each checkpoint's EMA weights against its training seconds (issue 47)",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "settings": {"preset": args.preset, "dataset": args.dataset, "points": args.points, "steps": args.steps,
                     "budget_seconds": args.budget_seconds, "num_samples": args.num_samples, "seeds": seeds,
                     "evaluate": "mnist-diffusion evaluate --run RUN --seed 0 (the model's own draw)"},
        "variants": {v: recipe(v, args.preset) for v in variants},
        "runs": runs,
        "mean": {v: mean_rows([r for r in runs if r["variant"] == v]) for v in variants},
    }
    if args.final_num_samples:
        result["settings"]["final_num_samples"] = args.final_num_samples
        result["final"] = final_summary(runs, variants)
    js = args.json or args.runs / "time-curve.json"
    from mnist_diffusion.atomic import atomic_write_json
    atomic_write_json(js, result)
    fig = plot(result, args.figure or args.runs / "time-curve.png")
    print(f"\nwrote {js} and {fig}\n")
    print("| variant | seed | step | training s | FID | recognizable | label accuracy |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for r in run["rows"]:
            print(f"| {run['variant']} | {run['seed']} | {r['step']} | {r['train_seconds']:.0f} | {r['fid']:.3f} | "
                  f"{r['recognizable']:.3f} | {r['label_accuracy'] or 0:.3f} |")
    for v, rows in result["mean"].items():
        for r in rows:
            print(f"| {v} | mean of {r['seeds']} | {r['step']} | {r['train_seconds']:.0f} | {r['fid']:.3f} | "
                  f"{r['recognizable']:.3f} | {r['label_accuracy'] or 0:.3f} |")
    if args.final_num_samples:
        print(f"\nthe last checkpoints at n = {args.final_num_samples:,} (seeds' mean [min, max]; time as a ratio of "
              f"{variants[0]}'s)\n| variant | seeds | time ratio | FID | recognizable | label accuracy |\n"
              "|---|---|---:|---:|---:|---:|")
        for v, e in result["final"].items():
            cell = {k: f"{e[k]['mean']:.3f} [{e[k]['min']:.3f}, {e[k]['max']:.3f}]" if k in e else "-"
                    for k in ("time_ratio", "fid", "recognizable", "label_accuracy")}
            print(f"| {v} | {', '.join(map(str, e['seeds']))} | {cell['time_ratio']} | {cell['fid']} | "
                  f"{cell['recognizable']} | {cell['label_accuracy']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
