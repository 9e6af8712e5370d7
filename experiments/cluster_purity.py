"""How much of the digit do `train --clusters K`'s clusters carry? For each K: the k-means of
clusters.py on the training images (as training runs it: same seed, same features), its time, the
cluster sizes and the purity against the labels the clustering never saw (the share of images whose
cluster's most common label is their own; 0.11 would be chance for ten balanced classes).

    PYTHONPATH=src python experiments/cluster_purity.py --dataset mnist --clusters 10,20,50 \
        --json docs/results/label-free/cluster-purity-mnist.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from mnist_diffusion.atomic import atomic_write_json
from mnist_diffusion.clusters import kmeans_labels
from mnist_diffusion.data import prepare


def purity(ids: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(np.bincount(labels[ids == j]).max() for j in np.unique(ids)) / len(ids))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--clusters", default="10,20,50", help="cluster counts, comma-separated")
    ap.add_argument("--seed", type=int, default=0, help="the training seed (train --seed)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.clusters.split(",")]
    except ValueError:
        raise SystemExit(f"cluster_purity.py: --clusters must be integers, got {args.clusters!r}")
    train = prepare(args.dataset, log=lambda _m: None)["train"]
    rows = []
    for k in ks:
        t0 = time.perf_counter()
        try:
            ids = kmeans_labels(train.images, k, args.seed)
        except ValueError as e:
            raise SystemExit(f"cluster_purity.py: {e}")
        seconds = time.perf_counter() - t0
        sizes = np.bincount(ids, minlength=k)
        rows.append({"clusters": k, "purity": purity(ids, train.labels.astype(np.int64)), "seconds": seconds,
                     "largest": int(sizes.max()), "smallest": int(sizes.min())})
        r = rows[-1]
        print(f"K = {k}: purity {r['purity']:.3f}, sizes {r['smallest']}..{r['largest']}, {seconds:.1f} s", flush=True)
    if args.json:
        atomic_write_json(args.json, {"dataset": args.dataset, "seed": args.seed, "images": len(train.images),
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
