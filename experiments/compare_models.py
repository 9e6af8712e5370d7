"""Train every registered model for the same wall-clock budget and score it: docs/MODELS.md's table.

    PYTHONPATH=src python experiments/compare_models.py --dataset mnist --minutes 3 \
        --output docs/models_mnist.md --json docs/models_mnist.json

For each model (at its canonical size, see `mnist-diffusion models`): train with the quick preset's
optimisation settings for --minutes of wall time (`train --time-limit`), measure its training
images/s from loss.csv, draw --num-images images with DPM-Solver++ (20 steps, EMA weights) and score
them with the shipped evaluator. Every run directory is kept under --runs so any number can be
re-checked with `mnist-diffusion evaluate`.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_text
from mnist_diffusion.config import preset, resolve
from mnist_diffusion.data import prepare
from mnist_diffusion.evaluation import evaluate_images
from mnist_diffusion.models import available, count_parameters, default_config
from mnist_diffusion.training import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--models", default=",".join(available()))
    p.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget per model")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--runs", default="runs/compare")
    p.add_argument("--output")
    p.add_argument("--json")
    args = p.parse_args(argv)

    base = preset("quick-unet")  # the recipe the recorded tables used (the quick preset before issue 47)
    data = prepare(args.dataset)["train"]
    rows = []
    for name in args.models.split(","):
        cfg = base.replace(model={k: v for k, v in default_config(name).__dict__.items()},
                           train={"dataset": args.dataset, "time_limit": args.minutes, "max_steps": 100_000,
                                  "sample_interval": 100_000, "save_interval": 100_000})
        run = Path(args.runs) / f"{args.dataset}-{name}"
        t0 = time.time()
        result = train(resolve(cfg, {}), data, run, resume=str(run / "checkpoints/last.pt") if (run / "checkpoints/last.pt").exists()
                       else None, progress=False, log=print)
        with open(run / "loss.csv") as f:
            speeds = [float(r["images_per_s"]) for r in csv.DictReader(f)]
        speeds = sorted(speeds[1:-1] or speeds)  # drop the warm-up window and the final (sampling) one
        diff = md.load(result.checkpoint, device="cpu")
        g0 = time.time()
        imgs = diff.sample(args.num_images, seed=0, sampler="dpmpp", steps=20)
        gen_s = time.time() - g0
        scores = evaluate_images(imgs, args.dataset, seed=0)
        rows.append({
            "model": name, "params": count_parameters(diff.model), "steps": result.step,
            "train_images_per_s": speeds[len(speeds) // 2], "train_minutes": (time.time() - t0) / 60,
            "fid": scores["fid"], "fid_floor": scores["fid_floor"], "recognizable": scores["recognizable"],
            "precision": scores["precision"], "recall": scores["recall"], "class_entropy": scores["class_entropy"],
            "sample_s_per_64": gen_s / args.num_images * 64,
        })
        print(rows[-1], flush=True)

    lines = [f"Dataset {args.dataset}; {args.minutes:g} min of training each (bf16 autocast, quick-preset optimiser: "
             f"batch 64, lr 1.5e-3); {args.num_images} images with DPM-Solver++ 20 steps; machine: "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.", "",
             "| model | params | steps done | train img/s | FID (floor) | recognizable | precision | recall | balance |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['params']:,} | {r['steps']} | {r['train_images_per_s']:.0f} | "
                     f"{r['fid']:.2f} ({r['fid_floor']:.2f}) | {r['recognizable']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['class_entropy']:.3f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        atomic_write_text(args.output, table)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
