"""Where a student's second evaluation should sit: its two-step draw with the first image re-noised
to each noise level sigma (samplers.STUDENT_SIGMA, the "student" grid's middle point).

    PYTHONPATH=src python experiments/student_grid.py runs/pretrained/mnist-fast/checkpoints/last.pt \
        --sigmas 0.3,0.5,1,2,4 --n 2000

One row per sigma: FID (shipped evaluator), recognizable, label accuracy; balanced labels, seed 0.
The one-step draw is the first row for reference. docs/decisions/distillation.md reads it.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a student: checkpoint, model folder or shipped name")
    p.add_argument("--sigmas", default="0.3,0.5,1,2,4")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    import mnist_diffusion as md
    from mnist_diffusion import samplers

    diff = md.load(args.source)
    labels = np.arange(args.n) % diff.num_classes
    rows = []
    for sigma in [None, *[float(s) for s in args.sigmas.split(",")]]:
        steps = 1 if sigma is None else 2
        if sigma is not None:
            samplers.STUDENT_SIGMA = sigma
        images = diff.sample(args.n, label=labels, seed=0, steps=steps)
        r = md.evaluate(images, dataset=diff.dataset, labels=labels.tolist())
        t = samplers.student_timesteps(diff.schedule, steps)
        row = {"steps": steps, "sigma": sigma, "timesteps": t, "fid": r["fid"], "fid_floor": r["fid_floor"],
               "recognizable": r["recognizable"], "label_accuracy": r.get("label_accuracy")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| steps | sigma of the middle point | timesteps | FID | recognizable | label accuracy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['sigma'] if r['sigma'] is not None else '-'} | {r['timesteps']} | {r['fid']:.3f} | "
              f"{r['recognizable']:.3f} | {r['label_accuracy']:.3f} |")
    if args.json:
        from mnist_diffusion.atomic import atomic_write_json
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
