"""How well editing works: completion of masked test digits, and class-to-class translation.

    PYTHONPATH=src python experiments/editing_benchmark.py completion --model mnist-uncond --num-images 1000 \
        --json docs/results/editing-completion.json --output docs/results/editing-completion.md
    PYTHONPATH=src python experiments/editing_benchmark.py translation --model mnist --num-images 1000 \
        --json docs/results/editing-translation.json --output docs/results/editing-translation.md

completion: the first N MNIST test digits, each of the six mask presets, filled in by plain
replacement (RePaint's resample = 1) and by RePaint's resampling; per row, how often the shipped
evaluator gives the completion the class it gives the original, the FID of the completions (the
evaluator's features, against the test split, with the floor at this n), and the mean squared
error on the hidden pixels (in [0, 1]); the JSON also keeps each row's wall seconds (only
comparable when nothing else ran on the machine). translation: the first N test digits edited with SDEdit
towards class (y + 1) mod 10 at each strength, with guidance; the share the evaluator reads as the
target, and how much of the original stays (mean |edit - original| / 255). The JSON is rewritten
after every row, and rows already in it (same settings) are kept, so a stopped run continues.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_json, atomic_write_text
from mnist_diffusion.editing import MASK_PRESETS, mask_preset
from mnist_diffusion.evaluation import evaluate_images
from mnist_diffusion.evaluator import embed, shipped_evaluator
from mnist_diffusion.options import count, nonneg_float, nonneg_int, positive_int


def classes(images: np.ndarray) -> np.ndarray:
    return embed(shipped_evaluator("mnist"), images)[1].argmax(1)


def completion(args, diff, test) -> list[dict]:
    images = test.images[: args.num_images]
    original = classes(images)
    rows = []
    for preset in args.presets.split(","):
        mask = mask_preset(preset, len(images), seed=args.seed)
        for name, resample in (("replacement", 1), ("repaint", args.resample)):
            key = f"{preset}/{name}"
            if key in args.done:
                rows.append(args.done[key])
                continue
            t0 = time.time()
            out = diff.inpaint(images, mask, sampler="ddpm", steps=args.steps, jump_length=args.jump_length,
                               resample=resample, seed=args.seed, batch_size=args.batch_size, progress=True)
            seconds = time.time() - t0
            r = evaluate_images(out, "mnist", seed=args.seed)
            hidden = mask == 0
            err = ((out.astype(np.float64) - images) / 255) ** 2
            rows.append({"key": key, "preset": preset, "method": name, "resample": resample,
                         "class_agreement": float((classes(out) == original).mean()), "fid": r["fid"],
                         "fid_floor": r["fid_floor"], "masked_mse": float(err[hidden].mean()),
                         "recognizable": r["recognizable"], "seconds": seconds})
            args.save(rows)
            print(f"{key}: agreement {rows[-1]['class_agreement']:.3f}, FID {r['fid']:.3f}, "
                  f"masked MSE {rows[-1]['masked_mse']:.4f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return rows


def translation(args, diff, test) -> list[dict]:
    images, labels = test.images[: args.num_images], test.labels[: args.num_images].astype(np.int64)
    target = (labels + 1) % 10
    rows = []
    for strength in (float(s) for s in args.strengths.split(",")):
        key = f"{strength:g}"
        if key in args.done:
            rows.append(args.done[key])
            continue
        t0 = time.time()
        out = diff.edit(images, strength, label=target, guidance=args.guidance, sampler="ddim", steps=args.steps,
                        seed=args.seed, batch_size=args.batch_size, progress=True)
        rows.append({"key": key, "strength": strength, "label_accuracy": float((classes(out) == target).mean()),
                     "pixel_distance": float(np.abs(out.astype(np.float64) - images).mean() / 255),
                     "seconds": time.time() - t0})
        args.save(rows)
        print(f"strength {strength:g}: target reached {rows[-1]['label_accuracy']:.3f}, pixel distance "
              f"{rows[-1]['pixel_distance']:.3f}", file=sys.stderr, flush=True)
    return rows


def reference_distance(test, n: int) -> float:
    """Mean |a - b| / 255 between each of the first n test digits and a real test digit of class
    (y + 1) mod 10 taken from beyond the first n while 1,000 remain (the k-th such digit for the k-th request): how far
    a translation would be if it kept nothing of the original."""
    labels = test.labels.astype(np.int64)
    rest = labels[n:] if n < len(labels) - 1000 else labels  # near the whole split: any digit of the class
    pool = {c: np.flatnonzero(rest == c) + (len(labels) - len(rest)) for c in range(10)}
    used = dict.fromkeys(range(10), 0)
    total = 0.0
    for i in range(n):
        c = int(labels[i] + 1) % 10
        j = pool[c][used[c] % len(pool[c])]
        used[c] += 1
        total += np.abs(test.images[i].astype(np.float64) - test.images[j]).mean() / 255
    return total / n


def presets(text: str) -> str:
    bad = [x for x in text.split(",") if x not in MASK_PRESETS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown mask preset(s) {', '.join(bad)}; choose from {', '.join(MASK_PRESETS)}")
    return text


def strengths(text: str) -> str:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"every strength must be in (0, 1], got {text}")
    return text


def table(args, rows) -> str:
    head = (f"`{args.model}`, the first {args.num_images} MNIST test digits, seed {args.seed}, "
            + (f"ancestral DDPM on {args.steps} steps; RePaint: jump length {args.jump_length}, resample "
               f"{args.resample}" if args.task == "completion" else
               f"SDEdit with DDIM ({args.steps} steps for a full run), guidance W = {args.guidance:g}, target class "
               "(y + 1) mod 10") + ".")
    if args.task == "completion":
        lines = [head, "", "| hidden | method | class agreement | FID (floor) | masked MSE | recognizable |",
                 "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['preset']} | {r['method']} | {r['class_agreement']:.3f} | {r['fid']:.3f} ({r['fid_floor']:.3f}) | "
                  f"{r['masked_mse']:.4f} | {r['recognizable']:.3f} |" for r in rows]
    else:
        lines = [head, "", "| strength | target class reached | pixel distance to the original |",
                 "|---:|---:|---:|"]
        lines += [f"| {r['strength']:g} | {r['label_accuracy']:.3f} | {r['pixel_distance']:.3f} |" for r in rows]
        lines += ["", f"For scale: a real test digit of the target class is {args.reference:.3f} from the original "
                      "(the same measure, against a different test digit of class (y + 1) mod 10 for each)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["completion", "translation"])
    p.add_argument("--model", default=None, help="a shipped model, a folder or a checkpoint (default: mnist-uncond "
                                                 "for completion, mnist for translation)")
    p.add_argument("--num-images", type=count(10_000, "a number of test digits"), default=1000)
    p.add_argument("--steps", type=count(1000, "a number of steps"), default=50)
    p.add_argument("--presets", type=presets, default=",".join(MASK_PRESETS))
    p.add_argument("--jump-length", type=positive_int, default=5)
    p.add_argument("--resample", type=count(100, "a number of repeats"), default=3)
    p.add_argument("--strengths", type=strengths, default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--guidance", type=nonneg_float, default=2.0)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--batch-size", type=count(4096, "a batch size"), default=250)
    p.add_argument("--json")
    p.add_argument("--output")
    args = p.parse_args(argv)
    for option, path in (("--json", args.json), ("--output", args.output)):
        if path and Path(path).is_dir():
            p.error(f"{option} {path} is a folder; give a file name")
    args.model = args.model or ("mnist-uncond" if args.task == "completion" else "mnist")
    settings = {k: getattr(args, k) for k in ("task", "model", "num_images", "steps", "jump_length", "resample",
                                              "guidance", "seed")}
    args.done = {}
    if args.json and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        if old.get("settings") == settings:
            args.done = {r["key"]: r for r in old["rows"]}

    def save(rows):
        if args.json:
            extra = {"reference_pixel_distance": args.reference} if args.task == "translation" else {}
            atomic_write_json(args.json, {"settings": settings, "rows": rows, **extra})
    args.save = save
    diff = md.load(args.model, device="cpu")
    test = md.load_dataset("mnist", "test")
    args.reference = reference_distance(test, args.num_images) if args.task == "translation" else None
    rows = (completion if args.task == "completion" else translation)(args, diff, test)
    save(rows)
    text = table(args, rows)
    print(text)
    if args.output:
        atomic_write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
