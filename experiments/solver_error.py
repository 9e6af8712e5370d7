"""How far each deterministic sampler lands from the converged ODE solution, per step count.

    PYTHONPATH=src python experiments/solver_error.py --checkpoint runs/quick/checkpoints/last.pt

DDIM (eta = 0) and DPM-Solver++ solve the same probability-flow ODE from the same x_T, so as
steps grow they converge to one image per noise. The reference is DPM-Solver++ with
--reference-steps; its distance to DDIM with 500 steps is printed as the reference's own error.
The table gives the RMS pixel distance (images in [-1, 1]) to the reference for each
(sampler, spacing) at each step count: a cheap, FID-free check of solver accuracy on a real model.
"""
from __future__ import annotations

import argparse
import sys

import torch

import mnist_diffusion as md
from mnist_diffusion.samplers import PerImageNoise, ddim, dpmpp

VARIANTS = [("ddim", "uniform"), ("dpmpp", "uniform"), ("dpmpp", "quadratic"), ("dpmpp", "logsnr")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--reference-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-clip", action="store_true", help="do not clip x0 (diverges for weak models)")
    args = p.parse_args(argv)

    diff = md.load(args.checkpoint, device="cpu", precision="fp32")
    schedule, eps_fn = diff.schedule, diff.eps_fn()
    x_T = PerImageNoise(args.seed, args.num_images).initial((1, 28, 28))
    clip = not args.no_clip
    fns = {"ddim": ddim, "dpmpp": dpmpp}
    ref = dpmpp(eps_fn, schedule, x_T, steps=args.reference_steps, spacing="uniform", clip=clip)
    check = ddim(eps_fn, schedule, x_T, spacing="uniform", steps=500, clip=clip)
    rms = lambda a: float((a - ref).pow(2).mean().sqrt())  # noqa: E731
    print(f"reference: dpmpp {args.reference_steps} steps; its RMS distance to ddim 500 steps: {rms(check):.4f}")
    print(f"{args.num_images} images, seed {args.seed}, clip {clip}, checkpoint {args.checkpoint}\n")
    print("| steps | " + " | ".join(f"{s} {sp}" for s, sp in VARIANTS) + " |")
    print("|---:|" + "---:|" * len(VARIANTS))
    for steps in [int(v) for v in args.steps.split(",") if v]:
        errs = [rms(fns[s](eps_fn, schedule, x_T, steps=steps, spacing=sp, clip=clip)) for s, sp in VARIANTS]
        print(f"| {steps} | " + " | ".join(f"{e:.4f}" for e in errs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny batches: threads cost more than they give on a shared CPU
    sys.exit(main())
