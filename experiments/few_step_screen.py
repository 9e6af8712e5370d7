"""Screen few-step sampler variants on one model: FID of each variant at a fixed number of network
evaluations, every variant from the same per-image seeds, in one process.

    PYTHONPATH=src python experiments/few_step_screen.py --model mnist-uncond --num-images 1000 \
        --variants "sde:grid=logsnr:eta=1,sde:grid=cap20:eta=2,ddpm:ddpm=100" --json out.json

A variant is KIND:key=value:...; KIND sde/ode (DPM-Solver++(2M) with eta per step), sde3/ode3 (its
third-order multistep form, 3M), heun (Heun's 2nd-order method, 2 evaluations per step, eta allowed), restart (ilo, ihi, sub, k: Xu et al. 2023 restarts between two grid
points) or ddpm (ddpm=STEPS, the library's respaced ancestral sampler); grid = logsnr | uniform |
quadratic | capS (T-1, then uniform in log-SNR from sigma = S down) | karrasRHO (T-1, then EDM's
sigma^(1/rho) grid from 20 down), n = grid points (default 20), eta (default 1 for sde, else 0);
emin/emax/eta0: eta only at noise levels sigma/alpha in [emin, emax], eta0 elsewhere; glo/ghi:
with --guidance, guide only at noise levels in [glo, ghi] (Kynkaanniemi et al. 2024), else conditional;
dense=D: a capS grid D times as dense (in lambda) inside [dlo, dhi] (default [glo, ghi]) as outside it;
seg=A/B/C: a capS grid with the band's edges [glo, ghi] as grid points and densities A above the band,
B inside, C below it; reset=1: a first-order step (no multistep history) wherever guidance switches
on or off, since the denoiser jumps there; skip=1: no evaluation at T-1 (where alpha_bar = 2.4e-9 and
the clipped x0 estimate is noise): the draw starts from x_T ~ N(0, I) as if it were x at the grid's
top noise level (EDM's sigma_max start), and the n points all lie on the grid below it; corr=1 / 2:
sde/ode with the library's corrector (samplers.dpmpp(corrector=)), no extra evaluations.

A prototype bench for issue 20 (few-step samplers within 15% of many-step ones): variants are
defined in VARIANTS below as (grid, eta per step, restarts). Winners move into samplers.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_json
from mnist_diffusion.checkpoint import CheckpointError
from mnist_diffusion.data import DataError, to_uint8
from mnist_diffusion.evaluation import balanced_labels, evaluate_images
from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.research import dpmpp_path
from mnist_diffusion.samplers import SPACINGS, half_log_snr, guidance_switches, timestep_sequence
from mnist_diffusion.sampling import generate, run_batches
from mnist_diffusion.sampling import plan as resolve_plan
from mnist_diffusion.schedule import noise_level as schedule_noise_level


def noise_level(schedule, t):
    """sigma_t at one timestep, as a float (schedule.noise_level)."""
    return float(schedule_noise_level(schedule, torch.tensor(t)))


def grid(schedule, n, kind, dense=None):
    """Evaluation timesteps for a variant: the library's spacings, or capS (T-1, then n-1 points
    uniform in lambda from sigma = S down to t = 0, which is dropped); dense = (lo, hi, D): a capS
    grid D times as dense in lambda where sigma is in [lo, hi] (the guidance band) as elsewhere."""
    if dense is not None and not kind.startswith("cap"):
        raise ValueError("dense needs a capS grid")
    if kind in SPACINGS:
        return timestep_sequence(schedule, n, kind, include_zero=False)
    if kind.startswith("karras"):  # EDM's grid: sigma^(1/rho) uniform from 20 down, rho from the name
        rho = float(kind[6:] or 7)
        sig = torch.tensor([noise_level(schedule, t) for t in range(schedule.timesteps)], dtype=torch.float64)
        smax, smin = 20.0, float(sig[0])
        r = torch.linspace(0, 1, n, dtype=torch.float64)
        target = (smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        q = sorted({int(torch.argmin((sig.log() - v.log()).abs())) for v in target} - {0}, reverse=True)
        return [schedule.timesteps - 1] + q[: n - 1]
    if not kind.startswith("cap"):
        raise ValueError(f"unknown grid {kind!r}: {', '.join(SPACINGS)}, capS (S a noise level, e.g. cap20) "
                         "or karrasRHO")
    cap = float(kind[3:])
    if not cap > 0:
        raise ValueError(f"grid {kind!r}: the cap must be a noise level > 0")
    a = schedule.alpha_bar
    lam = 0.5 * torch.log(a / (1 - a))
    lo_lam, hi_lam = -math.log(cap), float(lam[0])
    if dense is not None and len(dense) == 5:  # seg: the band's edges are grid points, a density per piece
        blo, bhi, *dens = dense
        edges = [lo_lam, -math.log(bhi), -math.log(blo), hi_lam]
        share = [(b - a) * d for a, b, d in zip(edges, edges[1:], dens)]
        m = [max(1, round((n - 1) * w / sum(share))) for w in share]
        m[2] += (n - 1) - sum(m)  # the low-noise piece takes the rounding
        target = torch.cat([torch.linspace(a, b, k + 1, dtype=torch.float64)[:-1]
                            for a, b, k in zip(edges, edges[1:], m)] + [torch.tensor([hi_lam], dtype=torch.float64)])
    elif dense is None:
        target = lo_lam + torch.linspace(0, 1, n, dtype=torch.float64) * (hi_lam - lo_lam)
    else:  # uniform in u, du/dlambda = D inside the band, 1 outside; inverted on a fine lambda grid
        blo, bhi, d = dense
        fine = torch.linspace(lo_lam, hi_lam, 20001, dtype=torch.float64)
        inside = (fine >= -math.log(bhi)) & (fine <= -math.log(blo)) if blo > 0 else fine >= -math.log(bhi)
        u = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.cumsum(torch.where(inside, d, 1.0)[1:] * fine.diff(), 0)])
        want = torch.linspace(0, 1, n, dtype=torch.float64) * u[-1]
        target = fine[torch.searchsorted(u, want).clamp(max=len(fine) - 1)]
    q = sorted({int(torch.argmin((lam - v).abs())) for v in target.tolist()} - {0}, reverse=True)
    return [schedule.timesteps - 1] + q[: n - 1]


def plan(schedule, name):
    """One variant KIND:key=value:... -> (kind, evaluation grid, eta per step, restarts, network
    evaluations, guidance band, reset, corrector order)."""
    kind, *pairs = name.split(":")
    if kind not in ("sde", "ode", "sde3", "ode3", "heun", "restart", "ddpm") or any(p.count("=") != 1 for p in pairs):
        raise ValueError(f"variant {name!r}: expected KIND:key=value:... with KIND sde, ode, sde3, ode3, heun, "
                         "restart or ddpm")
    spec = dict(p.split("=") for p in pairs)
    if kind == "ddpm":
        return kind, None, None, (), int(spec.get("ddpm", 100)), (0, math.inf), False
    band = (float(spec.get("glo", 0)), float(spec.get("ghi", math.inf)))
    region = (float(spec.get("dlo", band[0])), float(spec.get("dhi", band[1])))
    dense = (*region, float(spec["dense"])) if "dense" in spec else None
    if "seg" in spec:  # seg=dHI/dBAND/dLO: band edges on the grid, densities above / inside / below it
        dense = (*band, *(float(v) for v in spec["seg"].split("/")))
        if len(dense) != 5 or not 0 < band[0] < band[1] < math.inf:
            raise ValueError(f"variant {name!r}: seg needs three densities and a band 0 < glo < ghi < inf")
    if dense is not None and not all(0 < v < math.inf for v in dense[2:]):
        raise ValueError(f"variant {name!r}: grid densities must be finite numbers > 0")
    if spec.get("skip", "0") not in ("0", "1"):
        raise ValueError(f"variant {name!r}: skip must be 0 or 1")
    skip = int(spec.get("skip", 0))  # 1: no evaluation at T-1, x_T ~ N(0, I) stands for x at the grid's top
    seq = grid(schedule, int(spec.get("n", 20)) + skip, spec.get("grid", "logsnr"), dense)[skip:]
    eta = float(spec.get("eta", 0.0 if not kind.startswith("sde") else 1.0))
    if not 0 <= eta <= 100:
        raise ValueError(f"variant {name!r}: eta must be in [0, 100]")
    # eta only at steps whose noise level is in [emin, emax] (EDM's churn window), eta0 elsewhere
    emin, emax, eta0 = float(spec.get("emin", 0)), float(spec.get("emax", math.inf)), float(spec.get("eta0", 0))
    etas = [eta if emin <= noise_level(schedule, t) <= emax else eta0 for t in seq]
    # guidance only at noise levels in [glo, ghi] (Kynkaanniemi et al. 2024), plain conditional elsewhere
    restarts = ()
    if kind == "restart":  # sub-grid between seq[ihi] and seq[ilo], nsub evaluations uniform in lambda
        k, i_lo, i_hi, nsub = int(spec.get("k", 1)), int(spec["ilo"]), int(spec["ihi"]), int(spec.get("sub", 3))
        if not (0 <= i_hi < i_lo < len(seq) and k >= 1 and nsub >= 1):
            raise ValueError(f"variant {name!r}: need 0 <= ihi < ilo < n, k >= 1, sub >= 1")
        lam = [half_log_snr(schedule, t) for t in range(schedule.timesteps)]
        lh, ll = lam[seq[i_hi]], lam[seq[i_lo]]
        sub = [min(range(schedule.timesteps), key=lambda t: abs(lam[t] - (lh + (ll - lh) * j / nsub)))
               for j in range(nsub + 1)]
        restarts = (i_lo, i_hi, k, sub)
    nfe = len(seq) + (restarts[2] * (len(restarts[3]) - 1) if restarts else 0) + (len(seq) - 1) * (kind == "heun")
    if spec.get("reset", "0") not in ("0", "1"):
        raise ValueError(f"variant {name!r}: reset must be 0 or 1")
    corrector = int(spec.get("corr", 0))
    if spec.get("corr", "0") not in ("0", "1", "2") or (corrector and kind not in ("sde", "ode")):
        raise ValueError(f"variant {name!r}: corr must be 0, 1 or 2, and only with sde or ode")
    return kind, seq, etas, restarts, nfe, band, spec.get("reset") == "1", corrector


def draw(diff, kind, seq, etas, restarts, nfe, n, guidance, labels, batch_size, band=(0, math.inf),
         reset_at_edges=False, corrector=0):
    """uint8 images of one variant, through the library's batch loop (per-image seeds, guidance)."""
    if kind == "ddpm":
        return generate(diff, n, resolve_plan(diff, SamplingConfig(sampler="ddpm", steps=nfe, guidance=guidance)), labels=labels,
                        batch_size=batch_size)
    imgs = np.empty((n, 28, 28), np.uint8)
    banded = guidance and band != (0, math.inf)
    # reset: first-order steps where guidance switches on or off (the multistep history spans a jump)
    reset = guidance_switches(diff.schedule, seq, band) if banded and reset_at_edges else frozenset()
    sched = diff.schedule

    def run(eps_fn, noise, start, m, step_done):
        if banded:  # guided inside the band, plain conditional outside
            plain = diff.eps_fn(labels[start:start + m], 0.0)
            guided = eps_fn

            def eps_fn(x, t):
                return guided(x, t) if band[0] <= noise_level(sched, int(t[0])) <= band[1] else plain(x, t)
        return dpmpp_path(eps_fn, sched, noise.initial((1, 28, 28)), noise, seq, etas, restarts=restarts,
                          order=3 if kind.endswith("3") else 2, reset=reset, corrector=corrector, pece=kind == "heun")
    for start, x0 in run_batches(diff, n, resolve_plan(diff, SamplingConfig(guidance=guidance, guidance_interval=(0, math.inf))),
                                 run, nfe, labels=labels, seed=0,
                              batch_size=batch_size):
        imgs[start:start + len(x0)] = to_uint8(x0)
    return imgs


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--variants", required=True)
    p.add_argument("--json", help="results, one entry per variant, written after each; rows already there are kept")
    p.add_argument("--batch-size", type=int, default=250)
    a = p.parse_args(argv)
    if a.num_images < 2 or a.batch_size < 1:
        sys.exit("error: --num-images must be >= 2 (FID needs a covariance) and --batch-size >= 1")
    try:
        diff = md.load(a.model)
        results = {}
        if a.json and os.path.exists(a.json):
            try:
                results = json.loads(Path(a.json).read_text())
                assert isinstance(results, dict)
            except (ValueError, AssertionError):
                raise ValueError(f"{a.json} is not a results file of this script (not a JSON object); "
                                 "choose another --json") from None
        plans = {name: plan(diff.schedule, name) for name in a.variants.split(",")}  # all checked before work
    except (ValueError, KeyError, OSError, CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    n = a.num_images
    labels = None
    if diff.clustered:
        labels = diff.labels("clusters", n, 0)
    elif diff.num_classes:
        labels = torch.as_tensor(balanced_labels(n, diff.num_classes))
    try:
        for name, (kind, seq, etas, restarts, nfe, band, reset, corrector) in plans.items():
            t0 = time.time()
            imgs = draw(diff, kind, seq, etas, restarts, nfe, n, a.guidance, labels, a.batch_size, band, reset,
                        corrector)
            if a.guidance and kind != "ddpm":  # evaluations per image: two where guided
                nfe += sum(band[0] <= noise_level(diff.schedule, t) <= band[1]
                           for t in seq + (seq[1:] if kind == "heun" else []))
            dt = time.time() - t0
            r = evaluate_images(imgs, diff.dataset,
                                labels=None if diff.clustered or labels is None else labels.numpy())
            results[name] = {"fid": r["fid"], "floor": r["fid_floor"], "precision": r["precision"],
                             "recall": r["recall"], "recognizable": r["recognizable"], "nfe": nfe, "seq": seq,
                             "s": dt}
            print(f"{name:60s} nfe {nfe:3d} FID {r['fid']:.3f} P {r['precision']:.3f} R {r['recall']:.3f} "
                  f"rec {r['recognizable']:.3f}  {dt:.0f}s", flush=True)
            if a.json:
                atomic_write_json(a.json, results)
    except KeyboardInterrupt:
        sys.exit("stopped" + (f"; the finished variants are in {a.json}" if a.json else ""))
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
