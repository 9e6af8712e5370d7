"""FID-vs-steps table for every sampler on one checkpoint, with wall time per 64 images.

    PYTHONPATH=src python experiments/sampler_table.py --checkpoint runs/default-mnist/checkpoints/last.pt \
        --num-images 10000 --output docs/sampler_table.md --json docs/sampler_table.json

For each (sampler, steps) it times the generation of 64 images (one batch, after a warm-up), then
draws --num-images images with per-image seeds and scores them with
`mnist_diffusion.evaluation.evaluate_images` (with --no-fid, the table holds wall times only).
It ends with the few-step targets: DDIM@50 and DPM-Solver++@20 within 15% of DDPM@1000's FID,
DPM-Solver++@10 within 50%.
"DDPM" at fewer steps than T is DDIM with eta = 1 on the respaced grid (see docs/SAMPLERS.md).
Steps larger than the model's T are skipped. Output files are written atomically; the JSON after
every row, so with --resume a stopped run keeps its finished rows and computes only the rest.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import mnist_diffusion as md
from mnist_diffusion.atomic import atomic_write_text
from mnist_diffusion.evaluation import evaluate_images
from mnist_diffusion.samplers import SAMPLERS, SPACINGS

TARGETS = [("ddim", 50, 0.15), ("dpmpp", 20, 0.15), ("dpmpp", 10, 0.50)]  # (sampler, steps, max FID excess)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated subset of " + ",".join(SAMPLERS))
    p.add_argument("--steps", default="5,10,20,50,100,1000", help="comma-separated step counts")
    p.add_argument("--num-images", type=int, default=10000, help="images per FID (default 10k, the size of the test split)")
    p.add_argument("--timing-images", type=int, default=64)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="default: logsnr for dpmpp, uniform otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--no-fid", action="store_true", help="wall times only")
    p.add_argument("--output", help="write the markdown table here (default: print only)")
    p.add_argument("--json", help="write all numbers here as JSON (after every row)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --json (same checkpoint and settings) and compute the rest")
    return p.parse_args(argv)


def fid_function(dataset: str, disabled: bool):
    if disabled:
        return None
    # with the floor: n real training images scored the same way (computed once per n, then cached)
    return lambda imgs: evaluate_images(imgs, dataset, reference=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    diff = md.load(args.checkpoint, device=args.device, precision=args.precision, use_ema=not args.no_ema)
    device, amp, T = diff.device, diff.amp, diff.timesteps
    samplers = [s for s in args.samplers.split(",") if s]
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad:
        raise SystemExit(f"unknown sampler(s) {bad}; choose from {SAMPLERS}")
    steps_list = sorted({int(v) for v in args.steps.split(",") if v})
    fid_of = fid_function(diff.dataset, args.no_fid)
    labels = None
    if diff.num_classes:  # balanced requests, as the evaluator's label accuracy expects
        labels = torch.arange(args.num_images) % diff.num_classes

    def draw(n, sampler, steps, batch_size):
        return diff.sample(n, label=None if labels is None else labels[:n], seed=args.seed, sampler=sampler,
                           steps=steps, eta=args.eta, spacing=args.spacing, batch_size=batch_size)

    settings = {"checkpoint": args.checkpoint, "num_images": args.num_images, "seed": args.seed,
                "spacing": args.spacing, "eta": args.eta, "device": str(device), "ema": not args.no_ema,
                "precision": str(amp).split(".")[-1] if amp else "fp32"}
    done = _finished_rows(args, settings, with_fid=fid_of is not None)

    def merged(rows):
        # this invocation's rows, plus those of earlier ones that it did not ask for
        asked = {(r["sampler"], r["steps"]) for r in rows}
        out = rows + [r for key, r in done.items() if key not in asked]
        return sorted(out, key=lambda r: (SAMPLERS.index(r["sampler"]), r["steps"]))

    def dump(rows, verdicts=()):
        if args.json:
            atomic_write_text(args.json, json.dumps({**settings, "rows": merged(rows), "targets": list(verdicts)},
                                                    indent=2) + "\n")

    draw(min(8, args.timing_images), "ddim", 2, args.timing_images)  # warm-up: kernels, allocator
    rows = []
    for sampler in samplers:
        for steps in steps_list:
            if steps > T:
                print(f"skip {sampler}@{steps}: the model has T = {T}", file=sys.stderr)
                continue
            if (sampler, steps) in done:
                rows.append(done[sampler, steps])
                continue
            t0 = time.perf_counter()
            draw(args.timing_images, sampler, steps, args.timing_images)
            seconds = (time.perf_counter() - t0) * 64 / args.timing_images
            row = {"sampler": sampler, "steps": steps, "seconds_per_64": seconds, "fid": None}
            if fid_of is not None:
                scores = fid_of(draw(args.num_images, sampler, steps, args.batch_size))
                row.update(fid=float(scores["fid"]), fid_floor=float(scores["fid_floor"]),
                           recognizable=float(scores["recognizable"]))
            rows.append(row)
            dump(rows)
            print(f"{sampler:>6} {steps:>5} steps: {seconds:8.2f} s / 64 images"
                  + (f", FID {row['fid']:.3f}" if row["fid"] is not None else ""), file=sys.stderr, flush=True)

    rows = merged(rows)  # e.g. after `--samplers ddpm --steps 1000 --resume`, the whole table
    floor = next((r["fid_floor"] for r in rows if r.get("fid_floor") is not None), None)
    base = next((r["fid"] for r in rows if r["sampler"] == "ddpm" and r["steps"] == min(T, 1000)), None)
    per_fid = f"{args.num_images} images per FID" if fid_of is not None else "timing only (no FID)"
    lines = [f"Checkpoint `{args.checkpoint}` ({diff.dataset}, T = {T}), {per_fid}, "
             f"seed {args.seed}, spacing {args.spacing or 'per-sampler default'}, eta {args.eta}, device {device}"
             + (f" ({str(amp).split('.')[-1]} autocast)" if amp else "") + "."
             + (f" FID floor (real training images, same n): {floor:.3f}." if floor is not None else ""), "",
             "| sampler | steps | FID | FID / FID(DDPM@1000) | recognizable | s per 64 images |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fid = f"{r['fid']:.3f}" if r["fid"] is not None else "-"
        rel = f"{r['fid'] / base:.3f}" if r["fid"] is not None and base else "-"
        rec = f"{r['recognizable']:.3f}" if r.get("recognizable") is not None else "-"
        lines.append(f"| {r['sampler']} | {r['steps']} | {fid} | {rel} | {rec} | {r['seconds_per_64']:.2f} |")
    verdicts = []
    if base:
        lines += ["", "| target | FID | limit | met |", "|---|---:|---:|---|"]
        for sampler, steps, excess in TARGETS:
            r = next((r for r in rows if r["sampler"] == sampler and r["steps"] == steps), None)
            if r is None or r["fid"] is None:
                continue
            ok = r["fid"] <= base * (1 + excess)
            verdicts.append({"sampler": sampler, "steps": steps, "fid": r["fid"], "limit": base * (1 + excess),
                             "met": ok})
            lines.append(f"| {sampler}@{steps} within {excess:.0%} of DDPM@1000 | {r['fid']:.3f} | "
                         f"{base * (1 + excess):.3f} | {'yes' if ok else 'NO'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        atomic_write_text(args.output, table)
    dump(rows, verdicts)
    return 0


def _finished_rows(args, settings: dict, with_fid: bool) -> dict:
    """Rows of an earlier run of the same table (--resume), keyed by (sampler, steps)."""
    if not args.resume:
        return {}
    if not args.json:
        raise SystemExit("--resume needs --json: the file that holds the finished rows")
    try:
        with open(args.json) as f:
            old = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise SystemExit(f"--resume: cannot read {args.json} ({e})")
    differ = [k for k, v in settings.items() if old.get(k) != v]
    if differ:
        raise SystemExit(f"--resume: {args.json} was made with other settings ({', '.join(differ)})")
    rows = old.get("rows", [])
    if any((r.get("fid") is not None) != with_fid for r in rows):
        raise SystemExit(f"--resume: {args.json} was made with{'out' if with_fid else ''} FIDs")
    return {(r["sampler"], r["steps"]): r for r in rows}

if __name__ == "__main__":
    sys.exit(main())
