"""Noise-prediction networks and a registry by name.

Every model maps (x_t: (B,1,28,28), t: (B,) long[, y: (B,) long]) -> (B,1,28,28): the predicted
eps, or v for a run trained with `model.prediction = "v"` (the network does not know which; the
`Diffusion` that holds it does). Models know nothing of betas or samplers. `y` is a class label, or `num_classes` for "no label"
(the null token used by classifier-free guidance); y=None means "no label" for every image.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..config import ModelConfig

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_NEEDS_T: set[str] = set()
_DEFAULTS: dict[str, dict] = {}


def register(name: str, description: str, needs_timesteps: bool = False, defaults: dict | None = None):
    """Register a builder; builders of models with a learned per-timestep table also take T.
    `defaults` are the ModelConfig fields of the model's canonical size (used by --model NAME)."""
    def deco(builder):
        _REGISTRY[name] = builder
        _DESCRIPTIONS[name] = description
        _DEFAULTS[name] = dict(defaults or {})
        if needs_timesteps:
            _NEEDS_T.add(name)
        return builder
    return deco


def default_config(name: str, **overrides) -> ModelConfig:
    """The canonical ModelConfig of a registered model."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    fields = {**_DEFAULTS[name], **overrides}
    if "channel_mults" in fields:
        fields["channel_mults"] = tuple(fields["channel_mults"])
    cfg = ModelConfig(name=name, **fields)
    cfg.validate()  # the same limits as a config file's (a base width of 100000 is refused, not allocated)
    return cfg


def available() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    return dict(_DESCRIPTIONS)


def build_model(cfg: ModelConfig, timesteps: int = 1000) -> nn.Module:
    """The network named by cfg.name; `timesteps` (T) sizes learned timestep tables."""
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.name](cfg, timesteps) if cfg.name in _NEEDS_T else _REGISTRY[cfg.name](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(base_dim: int | None = None) -> list[dict]:
    """Every registered network at its canonical size (or another base width): parameters and the
    size of its saved weights (a training checkpoint, with the EMA copy and Adam's moments, is ~4x)."""
    import io

    import torch

    rows = []
    for name, desc in available().items():
        cfg = default_config(name, **({"base_dim": base_dim} if base_dim else {}))
        model = build_model(cfg)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        rows.append({"name": name, "description": desc, "parameters": count_parameters(model),
                     "weights_mb": buf.tell() / 1e6,
                     "size": f"base {cfg.base_dim}, mults {','.join(map(str, cfg.channel_mults))}, x{cfg.num_res_blocks}"})
    return rows


from . import simple, tiny, unet, unet_basic  # noqa: E402,F401  (each registers its models)
