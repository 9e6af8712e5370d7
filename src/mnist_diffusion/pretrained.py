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

# name -> the SHA-256 of model.safetensors and what the model is (each folder's README.md says more)
PRETRAINED: dict[str, dict[str, str]] = {
    "mnist": {"sha256": "6323e2977b83014f7147831776d936b5b67218985d9f9130f612692ed3f9ec8f",
               "description": "MNIST, class-conditional, the quick preset (what `make run` trains)"},
    "fashion_mnist": {"sha256": "b9842c19718486b8678e4e5a618d2e2d4a3f5b3e75eba8c9a42d9ee69dcf8355",
                       "description": "Fashion-MNIST, class-conditional, the quick preset"},
}


def resolve(source: str | os.PathLike) -> tuple[Path, Optional[str]]:
    """(the path to load, the pinned SHA-256 when `source` names a shipped model)."""
    name = str(source)
    if name in PRETRAINED:
        return DIR / name, PRETRAINED[name]["sha256"]
    return Path(source), None


def available() -> dict[str, str]:
    """Shipped model names with a line on each."""
    return {name: entry["description"] for name, entry in PRETRAINED.items()}
