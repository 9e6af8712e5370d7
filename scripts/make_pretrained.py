"""Rebuild the models that ship with the package, from scratch, with this repo's own commands.

    PYTHONPATH=src python scripts/make_pretrained.py            # all of them (`make pretrained`)
    PYTHONPATH=src python scripts/make_pretrained.py mnist      # one
    PYTHONPATH=src python scripts/make_pretrained.py --rescore mnist   # new card numbers, same weights

For each model: `mnist-diffusion train` (the exact command is in the card; `--resume auto`, so a
stopped rebuild continues), `mnist-diffusion evaluate` on 10,000 images (its JSON goes into the
card), then `hub.export` at fp16 into src/mnist_diffusion/pretrained_models/NAME with a model card
(README.md) and samples.png. Training is deterministic on a given machine and torch build, so the
weights' SHA-256 matches the one pinned in pretrained.py there; elsewhere it differs, and the
script says so (--pin writes the new hash into pretrained.py).

--rescore leaves the weights alone: it evaluates the shipped fp16 weights with today's sampler
defaults (`mnist-diffusion evaluate --pretrained NAME`, 10,000 images, JSON kept in
RUNS/NAME/rescore.json) and rewrites the card's Evaluation section and samples.png from them, for
when the samplers improve after a model was built.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mnist_diffusion"]
N_EVAL = 10_000  # images behind every card's numbers
# name -> what it is, the train options, and the guidance its card is evaluated and drawn at
MODELS = {
    "mnist": {"description": "MNIST, class-conditional, the quick preset (what `make run` trains)",
              "train": ["--preset", "quick", "--dataset", "mnist"], "guidance": 0.5},
    "fashion_mnist": {"description": "Fashion-MNIST, class-conditional, the quick-unet preset",
                      "train": ["--preset", "quick-unet", "--dataset", "fashion_mnist"], "guidance": 1.0},
    # eps on flow matching's path and times, twice the quick-unet budget, guided by its own step-800
    # weights (guide.safetensors): docs/decisions/autoguidance.md
    "mnist-uncond": {"description": "MNIST, unconditional, autoguided by its own early weights (the quick-unet "
                                    "network on the flow path, twice its steps)",
                     "train": ["--preset", "quick-unet", "--unconditional", "--objective", "flow", "--prediction",
                               "eps", "--max-steps", "6400", "--dataset", "mnist"],
                     "guidance": 1.5, "autoguide": "step_0000800.pt"},
    "mnist-clusters": {"description": "MNIST, no labels used: the quick-unet preset conditioned on 50 k-means clusters "
                                      "of the images",
                       "train": ["--preset", "quick-unet", "--unconditional", "--clusters", "50", "--dataset", "mnist"],
                       "guidance": 1.0},
    # distilled students of the shipped models (distill.py): one network evaluation per image, the
    # teacher's guidance built in; scored at their own one-step draw
    "mnist-fast": {"description": "MNIST in one network evaluation: a student distilled from `mnist` (its guidance "
                                  "0.5 built in)",
                   "distill": ["--teacher", "mnist"], "guidance": None},
    "fashion_mnist-fast": {"description": "Fashion-MNIST in one network evaluation: a student distilled from "
                                          "`fashion_mnist` (its guidance 1 built in)",
                           "distill": ["--teacher", "fashion_mnist"], "guidance": None},
}
# how a card's images are drawn: DPM-Solver++ 20 steps for a model trained from data, the
# student's own one-step draw for a distilled one
SAMPLING = {"train": ["--sampler", "dpmpp", "--steps", "20"],
            "distill": ["--sampler", "ddim", "--spacing", "student", "--steps", "1"]}


def kind(spec: dict) -> str:
    return "distill" if "distill" in spec else "train"


def run(argv: list[str]) -> None:
    print("+ mnist-diffusion " + " ".join(argv), flush=True)
    subprocess.run(CLI + argv, check=True, cwd=ROOT)


def training_facts(run_dir: Path, batch_size: int) -> dict:
    """What the card says of the training, from the run's loss.csv: the median speed over its log
    windows (robust to a window slowed by other work on the machine), the time at that speed, and
    the wall-clock time the run recorded."""
    with open(run_dir / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rate = statistics.median(float(r["images_per_s"]) for r in rows)
    steps = int(rows[-1]["step"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"machine": f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, no GPU",
            "steps": f"{steps:,} of batch {batch_size}",
            "speed": f"{rate:.0f} images/s (median of {len(rows)} loss.csv windows)",
            "training time": f"{steps * batch_size / rate / 60:.1f} min at that speed "
                             f"({float(rows[-1]['elapsed_s']) / 60:.1f} min of wall clock recorded, previews "
                             "and checkpoints included)"}


def card_evaluation(spec: dict, *source: str, guide: Optional[Path] = None) -> list[str]:
    """The `evaluate` command behind a card's numbers: DPM-Solver++ 20 steps with the library's
    defaults at the card's guidance (a student: its one-step draw), N_EVAL images, sampling seed 0.
    `guide`: an autoguided model's guide checkpoint (a shipped folder holds its own)."""
    guided = [] if spec["guidance"] is None else ["--guidance", str(spec["guidance"])]
    guided += ["--autoguide", str(guide)] if guide is not None else []
    return ["evaluate", *source, *SAMPLING[kind(spec)], *guided, "--num-samples", str(N_EVAL), "--seed", "0"]


def build(name: str, runs: Path, out_root: Path) -> str:
    import mnist_diffusion as md
    from mnist_diffusion.hub import card_samples
    from mnist_diffusion.sampling import section_of_report

    spec = MODELS[name]
    run_dir = runs / name
    if run_dir.resolve().is_relative_to(ROOT):
        run_dir = run_dir.resolve().relative_to(ROOT)  # the commands run in ROOT; the card shows this path
    train_cmd = [kind(spec), *spec[kind(spec)], "--output-dir", str(run_dir), "--resume", "auto", "--no-progress"]
    run(train_cmd)
    ck = ROOT / run_dir / "checkpoints" / "last.pt"
    guide = run_dir / "checkpoints" / spec["autoguide"] if "autoguide" in spec else None
    report = ROOT / run_dir / "evaluate.json"
    if not report.exists():
        run([*card_evaluation(spec, "--checkpoint", str(ck), guide=guide), "--json", str(report), "--no-progress"])
    metrics = json.loads(report.read_text())
    # the folder's sampling section is the draw its card was scored with (hub/diffusion export)
    diff = md.load(ck, device="cpu")
    if guide is not None:  # exported as guide.safetensors beside the weights
        diff = diff.autoguided(md.load(ROOT / guide, device="cpu"))
    diff = diff.with_sampling(section_of_report(diff, metrics["sampler"]))
    samples = card_samples(diff)
    command = "mnist-diffusion " + " ".join(a for a in train_cmd if a not in ("--resume", "auto", "--no-progress"))
    out = diff.export(out_root / name, dtype="fp16", metrics=metrics, command=command, samples=samples, allow_shipped=True,
                      training=training_facts(ROOT / run_dir, diff.config.train.batch_size))
    info = json.loads((out / "config.json").read_text())["export"]
    return {"sha256": info["sha256"], **({"guide_sha256": info["guide"]["sha256"]} if "guide" in info else {})}


def rescore(name: str, runs: Path, out_root: Path) -> str:
    import mnist_diffusion as md
    from mnist_diffusion.config import ConfigError
    from mnist_diffusion.hub import card_samples, check_report, rescore_card
    from mnist_diffusion.pretrained import PRETRAINED
    from mnist_diffusion.sampling import section_of_report

    spec, folder = MODELS[name], out_root / name
    report = runs / name / "rescore.json"
    evaluate = card_evaluation(spec, "--pretrained", name)
    diff = md.load(folder, device="cpu")  # first: checks the weights against config.json's SHA-256
    guide = diff.guide.source_sha256 if diff.guide is not None else None
    if diff.source_sha256 != PRETRAINED[name]["sha256"] or guide != PRETRAINED[name].get("guide_sha256"):
        raise SystemExit(f"{folder} does not hold the shipped {name} (its weights' SHA-256 is not the pinned one)")
    if not report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        run([*evaluate, "--json", str(report), "--no-progress"])
    try:
        metrics = json.loads(report.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SystemExit(f"{report}: not a readable report ({e}); delete it to rescore") from None
    s = metrics.get("sampler") if isinstance(metrics, dict) else None
    want = ("ddim", 1, 0.0) if kind(spec) == "distill" else ("dpmpp", 20, spec["guidance"])
    if not isinstance(s, dict) or (metrics.get("checkpoint"), metrics.get("n"), s.get("sampler"), s.get("steps"),
                                   s.get("guidance")) != (name, N_EVAL, *want):
        raise SystemExit(f"{report} is not a {N_EVAL:,}-image report of the shipped {name} drawn by "
                         f"`{' '.join(evaluate)}`; delete it to rescore")
    try:  # every number the card shows, checked before anything in the folder is touched
        check_report(metrics, str(report))
    except ConfigError as e:
        raise SystemExit(f"{e}; delete it to rescore") from None
    dtype = json.loads((folder / "config.json").read_text())["export"]["dtype"]
    note = (f"Scored on the {dtype} weights in this folder with the sampler defaults of "
            f"mnist-diffusion {md.__version__}: `mnist-diffusion {' '.join(evaluate)}`.")
    diff = diff.with_sampling(section_of_report(diff, s))
    rescore_card(folder, metrics, note=note, samples=card_samples(diff), sampling=diff.config.sampling)
    return diff.source_sha256


def pin(hashes: dict[str, dict[str, str]]) -> None:
    """Write the new hashes (name -> {"sha256", and "guide_sha256" for an autoguided model}) into
    pretrained.py's PRETRAINED literal."""
    path = ROOT / "src" / "mnist_diffusion" / "pretrained.py"
    from mnist_diffusion.pretrained import PRETRAINED
    entries = {**PRETRAINED, **{n: {**h, "description": MODELS[n]["description"]} for n, h in hashes.items()}}

    def entry(n: str, e: dict) -> str:
        pad = " " * (len(n) + 10)
        guide = f'\n{pad}"guide_sha256": "{e["guide_sha256"]}",' if "guide_sha256" in e else ""
        return f'    "{n}": {{"sha256": "{e["sha256"]}",{guide}\n{pad}"description": "{e["description"]}"}},\n'
    body = "".join(entry(n, e) for n, e in entries.items())
    text = re.sub(r"PRETRAINED: dict\[str, dict\[str, str\]\] = \{(?:\}|.*?\n\})\n",
                  "PRETRAINED: dict[str, dict[str, str]] = {\n" + body + "}\n", path.read_text(), flags=re.S)
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"models to build (default: all of {', '.join(MODELS)})")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "pretrained")
    p.add_argument("--output", type=Path, default=ROOT / "src" / "mnist_diffusion" / "pretrained_models")
    p.add_argument("--pin", action="store_true", help="write the weights' hashes into pretrained.py")
    p.add_argument("--rescore", action="store_true",
                   help="keep the shipped weights; evaluate them with today's sampler defaults and rewrite "
                        "their cards' numbers and samples")
    args = p.parse_args(argv)
    from mnist_diffusion.pretrained import PRETRAINED

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.rescore:
        if args.pin:
            p.error("--rescore keeps the weights; there is nothing to --pin")
        for name in args.names or list(MODELS):
            print(f"{name}: card rescored, weights unchanged (sha256 {rescore(name, args.runs, args.output)})",
                  flush=True)
        return 0
    hashes, differ = {}, []
    for name in args.names or list(MODELS):
        hashes[name] = build(name, args.runs, args.output)
        pinned = {k: v for k, v in PRETRAINED.get(name, {}).items() if k.endswith("sha256")}
        said = ", ".join(f"{k} {v}" for k, v in hashes[name].items())
        print(f"{name}: {said}" + ("" if pinned == hashes[name] else
                                   f" (pinned: {', '.join(pinned.values()) or 'none'})"), flush=True)
        if pinned != hashes[name]:
            differ.append(name)
    if args.pin:
        pin(hashes)
        print("pinned in src/mnist_diffusion/pretrained.py")
    elif differ:
        print(f"the weights of {', '.join(differ)} differ from the pinned ones (another machine or torch build?); "
              "rerun with --pin to ship these", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from mnist_diffusion.checkpoint import CheckpointError
    from mnist_diffusion.config import ConfigError
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        sys.exit(f"make_pretrained.py: `mnist-diffusion {' '.join(map(str, e.cmd[len(CLI):]))}` failed "
                 f"(exit {e.returncode}); run again to continue")
    except (CheckpointError, ConfigError, OSError) as e:
        sys.exit(f"make_pretrained.py: {e}")
    except KeyboardInterrupt:
        print("make_pretrained.py: interrupted; run again to continue", file=sys.stderr)
        sys.exit(130)
