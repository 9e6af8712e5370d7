"""How the shipped evaluator scores inputs that are not digits (garments): blank, uniform noise,
smooth blobs and shuffled patches (evaluator.outliers, from a seed the gate was not trained on),
against real test images and a shipped model's samples. Per kind: the share the classifier alone
calls confident (top-1 probability >= 0.9), the share the gate takes for real images, and the share
`evaluate` calls recognizable (both).

    PYTHONPATH=src python experiments/evaluator_ood.py --dataset mnist --model mnist --n 1000 \
        --json docs/results/evaluator-ood-mnist.json
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_json
from mnist_diffusion.evaluation import builtin_reference, gate_passes
from mnist_diffusion.evaluator import embed, outliers
from mnist_diffusion.metrics import RECOGNIZABLE_THRESHOLD

SEED = 123  # the gate was trained on outliers from seed 1 (scripts/train_evaluator.py --gate)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--model", help="a shipped model or checkpoint whose samples (its own sampling) to score too")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    ref = builtin_reference(args.dataset)
    sets = {"real test images": ref.test[:args.n], **outliers(ref.test, args.n, seed=SEED)}
    if args.model:
        diff = md.load(args.model, device="cpu")
        labels = np.arange(args.n) % diff.num_classes if diff.num_classes and not diff.clustered else None
        sets["model samples"] = diff.sample(args.n, label=labels, seed=0)
    rows = {}
    for name, images in sets.items():
        _, probs = embed(ref.net, images)
        confident = probs.max(axis=1) >= RECOGNIZABLE_THRESHOLD
        real = gate_passes(ref, images)
        rows[name] = {"n": len(images), "confident": float(confident.mean()), "gate": float(real.mean()),
                      "recognizable": float((confident & real).mean())}
        print(f"{name:<18} confident {rows[name]['confident']:.3f}   gate passes {rows[name]['gate']:.3f}   "
              f"recognizable {rows[name]['recognizable']:.3f}")
    if args.json:
        atomic_write_json(args.json, {"dataset": args.dataset, "model": args.model, "n": args.n, "seed": SEED,
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
