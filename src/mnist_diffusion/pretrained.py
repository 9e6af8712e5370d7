"""The models that ship with the package: trained by this repo's own commands
(scripts/make_pretrained.py, `make pretrained`), stored as model folders (hub.py) in
`pretrained_models/<name>/`, each pinned here by the SHA-256 of its weights.

`md.load("mnist")` and `--pretrained mnist` read them with no training. A name here always means
the shipped model; a local folder of the same name is read as `./mnist`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DIR = Path(__file__).resolve().parent / "pretrained_models"

# name -> the SHA-256 of model.safetensors (and of guide.safetensors for an autoguided model) and what
# the model is (each folder's README.md says more)
PRETRAINED: dict[str, dict[str, str]] = {
    "mnist": {"sha256": "aff2b16383155f40b3a078bbb6820abeb6b674c587fdbd96e1979a346615206b",
               "description": "MNIST, class-conditional, the quick preset (what `make run` trains)"},
    "fashion_mnist": {"sha256": "440274ce2ef955f0b3fb743eccfe6921f740251339669ea2dd5194a5cafcaa7e",
                       "description": "Fashion-MNIST, class-conditional, the quick-unet preset"},
    "mnist-uncond": {"sha256": "0b0a337440083217323630b7b8653f81ab40fc15eded5e2d572c740b6e119b1f",
                      "guide_sha256": "be5d86eeb116ec4718594449672c05f7c03011118329ea52825ff314bcb7a497",
                      "description": "MNIST, unconditional, autoguided by its own early weights (the quick-unet network on the flow path, twice its steps)"},
    "mnist-clusters": {"sha256": "021bf081765a96da79b5df3bc868e8b89ff22799b0cb0164e1516f8cdd4541b6",
                        "description": "MNIST, no labels used: the quick-unet preset conditioned on 50 k-means clusters of the images"},
    "mnist-fast": {"sha256": "509ffc48f350ecf98ba115392fe11010183bb6e5cc65bdc0e71abfc4666048e1",
                    "description": "MNIST in one network evaluation: a student distilled from `mnist` (its guidance 0.5 built in)"},
    "fashion_mnist-fast": {"sha256": "961ff1dd7f254eed28e7bf5a9bf240370b77aa63abc736d0f9da559e9141cfc5",
                            "description": "Fashion-MNIST in one network evaluation: a student distilled from `fashion_mnist` (its guidance 1 built in)"},
}


def resolve(source: str | os.PathLike) -> tuple[Path, Optional[dict[str, str]]]:
    """(the path to load, the pins when `source` names a shipped model: "sha256" of its weights and,
    for an autoguided one, "guide_sha256" of its guide's)."""
    name = str(source)
    if name in PRETRAINED:
        return DIR / name, PRETRAINED[name]
    return Path(source), None


def available() -> dict[str, str]:
    """Shipped model names with a line on each."""
    return {name: entry["description"] for name, entry in PRETRAINED.items()}
