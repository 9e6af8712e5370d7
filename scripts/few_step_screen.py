"""Screen few-step sampler variants on one model: FID of each variant at a fixed number of network
evaluations, every variant from the same per-image seeds, in one process.

    PYTHONPATH=src python scripts/few_step_screen.py --model mnist-uncond --num-images 1000 \
        --variants "sde:grid=logsnr:eta=1,sde:grid=cap20:eta=2,ddpm:ddpm=100" --json out.json

A variant is KIND:key=value:...; KIND sde/ode (DPM-Solver++(2M) with eta per step), restart
(ilo, ihi, sub, k: Xu et al. 2023 restarts between two grid points) or ddpm (ddpm=STEPS, the
library's respaced ancestral sampler); grid = logsnr | uniform | quadratic | capS (T-1, then
uniform in log-SNR from sigma = S down), n = evaluations (default 20), eta (default 1).

A prototype bench for issue 20 (few-step samplers within 15% of many-step ones): variants are
defined in VARIANTS below as (grid, eta per step, restarts). Winners move into samplers.py.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

import mnist_diffusion as md
from mnist_diffusion.data import to_uint8
from mnist_diffusion.evaluation import balanced_labels, evaluate_images
from mnist_diffusion.samplers import PerImageNoise, _alpha_bar, _lambda, _pred_x0, timestep_sequence


def dpmpp_path(eps_fn, schedule, x, noise_fn, seq, etas, clip=True, restarts=()):
    """SDE/ODE DPM-Solver++(2M) over `seq` (evaluation timesteps, the last one jumps to x0), eta per
    step; restarts: (i_lo, i_hi, k) = after reaching seq[i_lo], renoise to seq[i_hi] (forward process)
    and solve back to seq[i_lo] again, k times (Xu et al. 2023)."""
    def solve(x, ts, etas_here, final):
        x0_prev = h_prev = None
        for i, t in enumerate(ts):
            x0, _ = _pred_x0(eps_fn, schedule, x, t, clip)
            if i + 1 == len(ts):
                if final:
                    return x0, None
                break
            s = ts[i + 1]
            a_t, a_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
            h = _lambda(schedule, s) - _lambda(schedule, t)
            d = x0 if x0_prev is None else (1 + 1 / (2 * h_prev / h)) * x0 - (1 / (2 * h_prev / h)) * x0_prev
            eta = etas_here[i]
            x = ((1 - a_s) / (1 - a_t)) ** 0.5 * math.exp(-eta * h) * x - a_s ** 0.5 * math.expm1(-(1 + eta) * h) * d
            if eta > 0:
                x = x + (1 - a_s) ** 0.5 * math.sqrt(-math.expm1(-2 * eta * h)) * noise_fn(x)
            x0_prev, h_prev = x0, h
        return None, x

    if not restarts:
        out, _ = solve(x, seq, etas, True)
        return out
    (i_lo, i_hi, k, sub) = restarts
    # main pass to seq[i_lo] (not evaluated there), restarts, then on to the end
    _, x = solve(x, seq[: i_lo + 1], etas, False)
    t_lo, t_hi = seq[i_lo], seq[i_hi]
    sub_seq = sub
    for _ in range(k):
        a_lo, a_hi = _alpha_bar(schedule, t_lo), _alpha_bar(schedule, t_hi)
        x = (a_hi / a_lo) ** 0.5 * x + (1 - a_hi / a_lo) ** 0.5 * noise_fn(x)
        _, x = solve(x, sub_seq, [0.0] * len(sub_seq), False)
    out, _ = solve(x, seq[i_lo:], etas[i_lo:], True)
    return out


def grid(schedule, n, kind):
    if kind in ("uniform", "quadratic", "logsnr"):
        return timestep_sequence(schedule, n, kind, include_zero=False)
    if kind.startswith("edm"):  # EDM rho grid in sigma = sqrt((1-a)/a), over the schedule's range
        rho = float(kind[3:] or 7)
        a = schedule.alpha_bar
        sig = ((1 - a) / a).sqrt()
        smax, smin = float(sig[-1]), float(sig[0])
        u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        s = (smax ** (1 / rho) + u * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        pos = torch.searchsorted(sig, s).clamp(0, len(sig) - 1)
        q = sorted(set(int(p) for p in pos.tolist()), reverse=True)
        q = [t for t in q if t > 0]
        return q[:n]
    if kind.startswith("cap"):  # T-1, then n-1 points uniform in lambda from sigma = cap down to t = 0 (dropped)
        cap = float(kind[3:])
        a = schedule.alpha_bar
        lam = 0.5 * torch.log(a / (1 - a))
        lam_hi = -math.log(cap)
        u = torch.linspace(0, 1, n, dtype=torch.float64)
        target = lam_hi + u * (float(lam[0]) - lam_hi)
        q = [int(torch.argmin((lam - v).abs())) for v in target.tolist()]
        q = sorted(set(q), reverse=True)
        q = [t for t in q if t > 0]
        return [schedule.timesteps - 1] + q[: n - 1]
    raise ValueError(kind)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--variants", required=True)
    p.add_argument("--json")
    p.add_argument("--batch-size", type=int, default=250)
    a = p.parse_args(argv)
    diff = md.load(a.model)
    sch = diff.schedule
    n = a.num_images
    labels = None
    if diff.clustered:
        labels = diff.labels("clusters", n, 0)
    elif diff.num_classes:
        labels = torch.as_tensor(balanced_labels(n, diff.num_classes))
    results = json.load(open(a.json)) if a.json and __import__("os").path.exists(a.json) else {}
    for name in a.variants.split(","):
        spec = dict(kv.split("=") for kv in name.split(":")[1:])
        kind = name.split(":")[0]
        steps = int(spec.get("n", 20))
        eta = float(spec.get("eta", 1.0))
        g = spec.get("grid", "logsnr")
        seq = grid(sch, steps, g)
        lo, hi = float(spec.get("wlo", -1)), float(spec.get("whi", 1e9))  # eta window in sigma
        etas = []
        for t in seq:
            aa = float(sch.alpha_bar[t])
            sg = math.sqrt((1 - aa) / aa)
            etas.append(eta if lo <= sg <= hi else 0.0)
        restarts = ()
        nfe = len(seq)
        if kind == "restart":
            k, i_lo, i_hi, nsub = int(spec.get("k", 1)), int(spec["ilo"]), int(spec["ihi"]), int(spec.get("sub", 3))
            # sub-grid between seq[i_hi] and seq[i_lo] uniform in lambda, nsub evaluations
            lam = lambda t: _lambda(sch, t)
            lh, ll = lam(seq[i_hi]), lam(seq[i_lo])
            sub = []
            for j in range(nsub + 1):
                target = lh + (ll - lh) * j / nsub
                sub.append(min(range(sch.timesteps), key=lambda t: abs(lam(t) - target)))
            restarts = (i_lo, i_hi, k, sub)
            nfe = len(seq) + k * nsub
        ddpm_steps = int(spec["ddpm"]) if kind == "ddpm" else None
        if ddpm_steps:
            nfe = ddpm_steps
        t0 = time.time()
        imgs = np.empty((n, 28, 28), np.uint8)
        for start in range(0, n, a.batch_size):
            m = min(a.batch_size, n - start)
            noise = PerImageNoise(0, m, first_index=start)
            y = labels[start:start + m] if labels is not None else None
            eps_fn = diff.eps_fn(y, a.guidance)
            with torch.no_grad():
                if ddpm_steps:
                    from mnist_diffusion.samplers import run_sampler
                    x0 = run_sampler("ddpm", eps_fn, sch, noise.initial((1, 28, 28)), noise, steps=ddpm_steps)
                else:
                    x0 = dpmpp_path(eps_fn, sch, noise.initial((1, 28, 28)), noise, seq, etas, restarts=restarts)
            imgs[start:start + m] = to_uint8(x0)
        dt = time.time() - t0
        r = evaluate_images(imgs, diff.dataset, labels=None if diff.clustered else (None if labels is None else labels.numpy()))
        row = {"fid": r["fid"], "floor": r["fid_floor"], "precision": r["precision"], "recall": r["recall"],
               "recognizable": r["recognizable"], "nfe": nfe, "seq": seq, "s": dt}
        results[name] = row
        print(f"{name:60s} nfe {nfe:3d} FID {r['fid']:.3f} P {r['precision']:.3f} R {r['recall']:.3f} "
              f"rec {r['recognizable']:.3f}  {dt:.0f}s", flush=True)
        if a.json:
            json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
