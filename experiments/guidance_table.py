"""Classifier-free guidance trade-off: label accuracy and FID against the guidance weight W.

    PYTHONPATH=src python experiments/guidance_table.py --checkpoint runs/cond/checkpoints/last.pt \
        --unconditional runs/quick/checkpoints/last.pt --weights 0,1,2,4 --num-images 2000 \
        --output docs/results/guidance-mnist.md --json docs/results/guidance-mnist.json

For each W the conditional model draws --num-images images with balanced requested labels (image i
asks for class i mod 10), the same sampler and seeds for every W, and the shipped evaluator scores
them: `label_accuracy` is the share it classifies as the requested label. With --unconditional, an
unconditional model is scored the same way (same n, sampler, seed) as the FID to beat: the target
is guided accuracy >= 97% on MNIST (85% on Fashion-MNIST) at an FID no worse than it.
W = 0 is the plain conditional model; eps = eps_uncond + (1 + W) (eps_cond - eps_uncond).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time


import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_text
from mnist_diffusion.evaluation import balanced_labels, evaluate_images

ACCURACY_TARGET = {"mnist": 0.97, "fashion_mnist": 0.85}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a class-conditional checkpoint (train --conditional)")
    p.add_argument("--unconditional", help="an unconditional checkpoint to compare FID with")
    p.add_argument("--weights", default="0,1,2,4", help="comma-separated guidance weights W")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--sampler", default="dpmpp", choices=["ddpm", "ddim", "dpmpp"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--output", help="write the markdown table here")
    p.add_argument("--json", help="write all numbers here")
    return p.parse_args(argv)


def _score(diff, args, labels=None, guidance=0.0) -> dict:
    t0 = time.perf_counter()
    imgs = diff.sample(args.num_images, label=labels, guidance=guidance, sampler=args.sampler, steps=args.steps,
                       seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    r = evaluate_images(imgs, diff.dataset, seed=args.seed, labels=labels, reference=False)
    out = {k: r[k] for k in ("fid", "precision", "recall", "recognizable", "class_entropy")}
    if labels is not None:
        out["label_accuracy"] = r["label_accuracy"]
    out["sample_seconds"] = seconds
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    diff = md.load(args.checkpoint, device=args.device, precision=args.precision)
    if not diff.num_classes:
        raise SystemExit(f"{args.checkpoint} is not class-conditional (train it with --conditional)")
    dataset = diff.dataset
    weights = [float(w) for w in args.weights.split(",") if w]
    labels = balanced_labels(args.num_images, diff.num_classes)
    rows = []
    for w in weights:
        row = {"guidance": w, **_score(diff, args, labels, w)}
        rows.append(row)
        print(f"W={w:g}: label accuracy {row['label_accuracy']:.4f}, FID {row['fid']:.3f}, "
              f"recognizable {row['recognizable']:.3f}", file=sys.stderr, flush=True)
    base = None
    if args.unconditional:
        udiff = md.load(args.unconditional, device=args.device, precision=args.precision)
        if udiff.num_classes or udiff.dataset != dataset:
            raise SystemExit(f"--unconditional {args.unconditional} must be an unconditional {dataset} model")
        base = {"checkpoint": args.unconditional, "step": udiff.step, **_score(udiff, args)}
        print(f"unconditional: FID {base['fid']:.3f}, recognizable {base['recognizable']:.3f}", file=sys.stderr)

    target = ACCURACY_TARGET[dataset]
    lines = [f"`{args.checkpoint}` ({dataset}, step {diff.step}), {args.sampler} {args.steps} steps, "
             f"{args.num_images} images per row (balanced labels), seed {args.seed}, {diff.device}"
             + (f" ({str(diff.amp).split('.')[-1]} autocast)" if diff.amp else "") + f", {platform.processor() or platform.machine()}.",
             "", "| W | label accuracy | FID | precision | recall | recognizable | s to sample |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['guidance']:g} | {r['label_accuracy']:.4f} | {r['fid']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['recognizable']:.3f} | {r['sample_seconds']:.0f} |")
    if base:
        lines.append(f"| unconditional | - | {base['fid']:.3f} | {base['precision']:.3f} | {base['recall']:.3f} | "
                     f"{base['recognizable']:.3f} | {base['sample_seconds']:.0f} |")
    met = [r["guidance"] for r in rows if r["label_accuracy"] >= target and (base is None or r["fid"] <= base["fid"])]
    lines += ["", f"Target: label accuracy >= {target:.0%}" + (" at an FID no worse than the unconditional model's"
                                                                 if base else "")
              + f": {'met at W = ' + ', '.join(f'{w:g}' for w in met) if met else 'not met'}."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        atomic_write_text(args.output, table)
    if args.json:
        atomic_write_text(args.json, json.dumps({"checkpoint": args.checkpoint, "dataset": dataset,
                                                 "num_images": args.num_images, "sampler": args.sampler,
                                                 "steps": args.steps, "seed": args.seed, "rows": rows,
                                                 "unconditional": base, "target": target, "met_at": met},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
