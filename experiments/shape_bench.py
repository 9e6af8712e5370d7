"""Training throughput of network shapes and step variants, interleaved in one process (issue 47,
levers b and e): images/s, counted FLOPs per image and the share of this machine's matmul peak.

    PYTHONPATH=src python experiments/shape_bench.py --variants unet,p2-64,p2-48,p2-64-11,fused \
        --json docs/results/shape-bench-amd.json

Every variant is `benchmark.TrainStep` (the step `train` takes: bf16 autocast where native, forward,
backward, gradient clipping, AdamW, EMA) at the quick preset's batch of 64, its network changed by
the variant's model options (the same `--model/--base-dim/--channel-mults/--num-res-blocks` that
`train` takes) or its optimiser made fused. Timed windows alternate between the variants
(benchmark.interleaved_windows), so a slow stretch of the VM hits them alike; the median window
is reported; a compiled variant's warm-up (where it compiles, once per run) is timed and reported
beside it. The matmul peak is timed in the same run. Speed only: what each shape learns per
update is measured by experiments/recipe_search.py (the same variant names).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from mnist_diffusion import benchmark as bm
from mnist_diffusion.atomic import atomic_write_text
from mnist_diffusion.config import preset
from mnist_diffusion.device import resolve_precision
from mnist_diffusion.models import count_parameters
from mnist_diffusion.training import draw_batch

# name: ModelConfig fields over the quick-unet preset's (the quick preset before issue 47, so that a
# name keeps its meaning), and the step's options (fused AdamW, torch.compile)
VARIANTS = {
    "unet": {},                                                               # the former quick network
    "fused": {"fused": True},                                                 # the same, AdamW(fused=True)
    "compile": {"compile": True},                                             # the same, torch.compile'd network
    "p2-64": {"model": {"name": "unet_p2", "base_dim": 64, "channel_mults": (1, 2)}},
    "p2-48": {"model": {"name": "unet_p2", "base_dim": 48, "channel_mults": (1, 2)}},
    "p2-64-11": {"model": {"name": "unet_p2", "base_dim": 64, "channel_mults": (1, 1)}},
    "p2-48-122": {"model": {"name": "unet_p2", "base_dim": 48, "channel_mults": (1, 2, 2)}},
    "unet-attn": {"model": {"name": "unet_attn"}},
    "unet-16-144": {"model": {"base_dim": 16, "channel_mults": (1, 4, 4)}},    # a thin 28x28 level
    "attn-16-144": {"model": {"name": "unet_attn", "base_dim": 16, "channel_mults": (1, 4, 4)}},  # + attention: quick
    # the quick network with one block per level on the way up (not two), and one GroupNorm per block (not two)
    "attn-16-144-dec1": {"model": {"name": "unet_attn", "base_dim": 16, "channel_mults": (1, 4, 4), "decoder_blocks": 1}},
    "attn-16-144-gn1": {"model": {"name": "unet_attn", "base_dim": 16, "channel_mults": (1, 4, 4), "block_norms": 1}},
}


def step_for(name: str, batch: int, device: torch.device, amp) -> bm.TrainStep:
    v = VARIANTS[name]
    cfg = preset("quick-unet")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **v.get("model", {}))).validate()
    step = bm.TrainStep(cfg, device, batch, amp, compile=v.get("compile", False))
    if v.get("fused"):
        step.state.opt = torch.optim.AdamW(step.state.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, fused=True)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="unet,p2-64,p2-48,p2-64-11", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--windows", type=int, default=7)
    p.add_argument("--window-seconds", type=float, default=4.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="short warm-up, windows and peak: a smoke test (the test's)")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    device = torch.device("cpu")
    amp = resolve_precision("auto", device)  # what `train` uses here: bf16 where native
    settings = (bm.Settings.quick() if args.quick else
                bm.Settings(windows=args.windows, window_seconds=args.window_seconds, warmup_steps=8))
    steps = {n: step_for(n, args.batch_size, device, amp) for n in names}
    # compiled variants compile in their warm-up, which is timed (warmup_seconds): a run pays it once
    warmup = {n: settings.warmup_steps + settings.compile_warmup for n in names if VARIANTS[n].get("compile")}
    first = steps[names[0]]

    def draw() -> None:  # the data path alone: index gather of uint8 images, to [-1, 1], noise, timesteps, labels
        idx = torch.randint(0, bm.TRAIN_IMAGES, (args.batch_size,), device=device, generator=first.gen)
        draw_batch(first.images, first.labels, idx, first.gen, timesteps=first.schedule.timesteps,
                      cond_drop_prob=first.cfg.train.cond_drop_prob, null_label=first.cfg.model.num_classes)
    timing = bm.interleaved_windows({**steps, "batch draw": draw}, device, settings, warmup)
    data = bm._rate(timing["batch draw"], args.batch_size)
    flops = {}  # counted after the timing, on the eager network (a compiled one compiles in its timed warm-up)
    for n, s in steps.items():
        s.net = s.model
        flops[n] = bm.training_flops(s)["flops_per_image"]
    peak = bm.matmul_peak(device, amp, settings)
    prec = "bf16" if amp == torch.bfloat16 else "fp32"
    rows = []
    for n in names:
        r = {"variant": n, **VARIANTS[n],
             "parameters": count_parameters(steps[n].state.model), "gflop_per_image": flops[n] / 1e9,
             **bm._rate(timing[n], args.batch_size)}
        if "images_per_s" in r:
            r.update(bm.utilisation({**r, "flops_per_image": flops[n]}, peak, prec))
        rows.append(r)
    base = rows[0].get("images_per_s")
    print(f"{bm._cpu_model()}, {torch.get_num_threads()} threads, {prec}; peak bf16 {peak['bf16_tflops']:.2f} "
          f"fp32 {peak['fp32_tflops']:.2f} TFLOP/s")
    print(f"{'variant':11s} {'params':>10s} {'GFLOP/img':>9s} {'img/s':>7s} {'vs first':>8s} {'TFLOP/s':>7s} {'peak':>6s} "
          f"{'warm-up s':>9s}")
    for r in rows:
        if "failed" in r:
            print(f"{r['variant']:11s} failed: {r['failed']}")
            continue
        print(f"{r['variant']:11s} {r['parameters']:>10,} {r['gflop_per_image']:>9.3f} {r['images_per_s']:>7.1f} "
              f"{r['images_per_s'] / base:>8.2f} {r['achieved_tflops']:>7.3f} {r.get('share_of_peak', 0):>6.1%} "
              f"{r['warmup_seconds']:>9.1f}")
    share = data["step_ms"] / rows[0]["step_ms"] if "step_ms" in rows[0] else float("nan")
    print(f"the batch draw alone (the data path): {data['step_ms']:.2f} ms, {share:.1%} of a {names[0]} step")
    if args.json:
        out = {"batch_draw": {**data, "share_of_first_step": share},"machine": bm.machine_info(device), "precision": prec, "batch_size": args.batch_size,
               "peak": peak, "rows": rows, "command": "PYTHONPATH=src python experiments/shape_bench.py "
               + " ".join(argv if argv is not None else sys.argv[1:])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
