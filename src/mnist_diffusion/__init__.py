"""mnist-diffusion: denoising diffusion probabilistic models (Ho et al. 2020) on 28x28 images.

    import mnist_diffusion as md
    diff = md.train(md.preset("quick"), dataset="mnist")            # a Diffusion, trained in memory
    imgs = diff.sample(16, label=7, seed=0)    # uint8 (16, 28, 28), the model's own sampling (DPM-Solver++ 20)
    diff = md.load("runs/quick/checkpoints/last.pt")                 # the same object from a checkpoint
    report = md.evaluate(imgs, dataset="mnist")                      # the dict `evaluate --json` writes

The names below are the public API; they import torch only when first used, so `import
mnist_diffusion` (and the command line's --help) stays fast. docs/ARCHITECTURE.md maps the modules.
"""
from __future__ import annotations

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Diffusion": "diffusion", "load": "diffusion",
    "train": "api", "evaluate": "api", "distill": "api",
    "RunConfig": "config", "ModelConfig": "config", "DiffusionConfig": "config", "TrainConfig": "config",
    "preset": "config", "ConfigError": "config", "CheckpointError": "checkpoint",
    "SamplingConfig": "config", "SamplingPlan": "sampling", "plan": "sampling", "Trajectory": "sampling",
    "load_dataset": "api",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mnist_diffusion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
