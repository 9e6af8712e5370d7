"""Write a built-in split as a folder of PNGs, one folder per class, numbered names: the layout
`--dataset folder:PATH` reads, and a check that it reads it back to the same arrays.

    PYTHONPATH=src python scripts/export_png.py --dataset fashion_mnist --split train --output data/fashion-png

Folders are named `<label>_<class name>` so they sort in label order; files are numbered by their
index in the split, so reading them by name gives the split's own order. Prints the SHA-256 of the
decoded arrays before and after (data.data_sha256): equal, so training on the folder is the same
run as training on the built-in set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from mnist_diffusion.config import CLASS_NAMES
from mnist_diffusion.data import data_sha256, load_custom, prepare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(CLASS_NAMES), default="fashion_mnist")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        raise SystemExit(f"{args.output} is not empty")
    split = prepare(args.dataset)[args.split]
    names = CLASS_NAMES[args.dataset]
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        folder = args.output / f"{int(label)}_{names[int(label)].replace('/', '-').replace(' ', '_')}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    back = load_custom(f"folder:{args.output}")
    before, after = data_sha256(split), data_sha256(back)
    print(f"{len(split.images)} images in {len(names)} folders under {args.output}")
    print(f"data SHA-256: built-in {before}, folder {after}: {'the same' if before == after else 'DIFFERENT'}")
    return 0 if before == after else 1


if __name__ == "__main__":
    sys.exit(main())
