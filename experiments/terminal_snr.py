"""What zero terminal SNR (Lin et al. 2024) would change on a model's schedule, and what the
sampler's first evaluation at t = T-1 gives today (docs/decisions/terminal-snr.md).

    PYTHONPATH=src python experiments/terminal_snr.py --model mnist --num-images 200

1. The rescale sqrt(a)' = (sqrt(a) - sqrt(a_T-1)) * sqrt(a_0) / (sqrt(a_0) - sqrt(a_T-1)): the largest
   relative change of sigma_t = sqrt((1 - a_t) / a_t) over the timesteps with sigma_t <= --cap.
2. The clipped x0 estimate at T-1 from pure noise, class-conditional (labels i mod 10): the share
   of its pixels that clipping touched, and its mean squared distance to its class's mean training
   image, beside that of real training digits (the first 20,000) to theirs.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import mnist_diffusion as md
from mnist_diffusion.checkpoint import CheckpointError
from mnist_diffusion.samplers import predict_x0


def rescaled_sigma_change(schedule, cap: float) -> float:
    """Largest |sigma' / sigma - 1| over timesteps with sigma <= cap under the zero-terminal-SNR rescale."""
    r = schedule.alpha_bar.double().sqrt()
    r_new = (r - r[-1]) * r[0] / (r[0] - r[-1])
    sigma = ((1 - r ** 2) / r ** 2).sqrt()
    sigma_new = ((1 - r_new ** 2) / r_new ** 2).sqrt()
    keep = sigma <= cap
    return float(((sigma_new[keep] - sigma[keep]) / sigma[keep]).abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", help="a shipped model name or a checkpoint (class-conditional)")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--cap", type=float, default=20.0, help="the grid's top noise level below T-1")
    a = p.parse_args(argv)
    if a.num_images < 1 or not a.cap > 0:
        p.error("--num-images must be >= 1 and --cap > 0")
    try:
        diff = md.load(a.model, device="cpu")
    except (ValueError, OSError, CheckpointError) as e:
        p.error(str(e))
    if not diff.num_classes or diff.clustered:
        p.error(f"{a.model} is not a class-conditional model (the class means need labels)")
    sched, T = diff.schedule, diff.schedule.timesteps
    print(f"sqrt(alpha_bar) at T-1: {float(sched.alpha_bar[-1].sqrt()):.3g}; zero-terminal-SNR rescale moves "
          f"sigma by at most {100 * rescaled_sigma_change(sched, a.cap):.3f}% where sigma <= {a.cap:g}")
    split = md.load_dataset(diff.dataset, "train")
    imgs = torch.as_tensor(np.asarray(split.images[:20000]), dtype=torch.float32)[:, None] / 127.5 - 1
    labs = torch.as_tensor(np.asarray(split.labels[:20000])).long()
    means = torch.stack([imgs[labs == c].mean(0) for c in range(diff.num_classes)])
    labels = torch.arange(a.num_images) % diff.num_classes
    x = torch.randn(a.num_images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clipped, _ = predict_x0(diff.eps_fn(labels, 0.0), sched, x, T - 1, True)
        raw, _ = predict_x0(diff.eps_fn(labels, 0.0), sched, x, T - 1, False)
    print(f"x0 estimate at t = {T - 1}: {float((raw.abs() > 1).float().mean()):.3f} of pixels clipped; mean squared "
          f"distance to the class mean {float(((clipped - means[labels]) ** 2).mean()):.3f} "
          f"(real digits: {float(((imgs - means[labs]) ** 2).mean()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
