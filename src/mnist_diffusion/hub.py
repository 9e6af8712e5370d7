"""Model folders in the ecosystem's layout (the Hugging Face Hub's): share a model, not a checkpoint.

    DIR/model.safetensors       the weights (EMA by default), fp32, fp16 or bf16; tensors only
    DIR/guide.safetensors       an autoguided model's guide: a weaker set of weights of the same
                                network (Denoiser.autoguided), which its sampling section's guidance weighs
    DIR/config.json             the run config, plus "export": the weights' SHA-256, dtype, step
    DIR/scheduler_config.json   the betas, readable by diffusers' DDPMScheduler.from_config
    DIR/README.md               a model card: YAML front matter, samples, the command, the metrics
    DIR/samples.png             what the model draws (the card shows it)

`export` writes such a folder from a training checkpoint; `load_folder` reads one back, after
checking the weights against the recorded SHA-256 and the tensors against the config. A folder is
about a quarter of a training checkpoint at fp32 (no EMA/raw pair, no optimiser state) and an
eighth at fp16.

Not here: the shipped models (pretrained.py), training checkpoints (checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .checkpoint import CheckpointError, load_state, read_regular
from .config import ConfigError, RunConfig
from .images import grid, save_png
from .models import build_model
from .outputs import MODEL_NAMES as FILES
from .outputs import check_folder

MAX_CONFIG_BYTES = 1 << 20  # a model folder's config.json is ~2 KB
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FORMAT = "mnist-diffusion-model/1"
HF_DATASETS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}


def is_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def scheduler_config(cfg: RunConfig, betas: torch.Tensor) -> dict:
    """diffusers' DDPMScheduler config with this model's exact betas (`trained_betas`), its
    parameterisation and our sampling defaults (x0 clipped to [-1, 1], posterior variance)."""
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": cfg.diffusion.timesteps,
            "trained_betas": [float(b) for b in betas], "beta_schedule": "linear",
            # diffusers' DDPMScheduler has no flow velocity: a flow model's config says so, and
            # its card's sampler (or ours) draws it
            "prediction_type": {"eps": "epsilon", "v": "v_prediction"}.get(cfg.model.prediction, "flow_prediction"),
            "variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 1.0,
            "timestep_spacing": "leading", "steps_offset": 0,
            "_mnist_diffusion_schedule": cfg.diffusion.schedule}


def check_report(metrics: dict, what: str = "--metrics") -> dict:
    """An `evaluate --json` report fit for a card: the keys the card shows, each a number where a
    number belongs. A bad one is a one-line ConfigError before anything is written."""
    need = ("dataset", "n", "fid", "precision", "recall", "recognizable", "class_entropy")
    if not isinstance(metrics, dict) or not set(need) <= set(metrics):
        raise ConfigError(f"{what}: not the report of `evaluate --checkpoint ... --json` (it needs "
                          f"{', '.join(need)})")
    for key in need[1:] + tuple(k for k in ("fid_floor", "label_accuracy") if k in metrics):
        v = metrics[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ConfigError(f"{what}: {key} must be a number, got {v!r}")
    if not isinstance(metrics["dataset"], str):
        raise ConfigError(f"{what}: dataset must be a name, got {metrics['dataset']!r}")
    if "sampler" in metrics and not isinstance(metrics["sampler"], dict):
        raise ConfigError(f"{what}: sampler must be an object, got {metrics['sampler']!r}")
    if "noise_mse" in metrics and not (isinstance(metrics["noise_mse"], dict)
                                       and isinstance(metrics["noise_mse"].get("overall"), (int, float))):
        raise ConfigError(f"{what}: noise_mse.overall must be a number")
    return metrics


# what a model folder stores its weights as unless told: half the size, FID within one draw's noise
# (docs/decisions/fp16-export.md); the library and `mnist-diffusion export` both default to it
EXPORT_DTYPE = "fp16"


def export(diff, output: str | os.PathLike, *, dtype: str = EXPORT_DTYPE, metrics: Optional[dict] = None,
           command: Optional[str] = None, training: Optional[dict] = None, samples=None,
           allow_shipped: bool = False) -> Path:
    """Write `diff` (a Diffusion) as a model folder. `metrics`: an `evaluate --json` report for the
    card; `command`: how the model was trained; `training`: facts for the card (machine, minutes);
    `samples`: a uint8 image grid for samples.png (None: none written).

    Everything is checked and built first; the folder is then written in a fresh sibling folder and
    swapped in, so a failure leaves the old folder as it was. The shipped models' folder is refused
    unless `allow_shipped` (scripts/make_pretrained.py, the documented build)."""
    from safetensors.torch import save

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = check_folder(output, "model", allow_shipped=allow_shipped)
    if metrics is not None:
        check_report(metrics)
    tensors = _tensors(diff.model, dtype)
    # one metadata key: safetensors writes the metadata map in a random order, and the pinned
    # SHA-256 needs the same bytes every time (the dtype is in config.json and in the tensors)
    payload = save(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(payload).hexdigest()
    info = {"weights": "model.safetensors", "sha256": digest, "dtype": dtype, "ema": diff.ema, "step": diff.step,
            "source_sha256": diff.source_sha256, "parameters": sum(v.numel() for v in tensors.values()),
            "config_sha256": config_fingerprint(diff.config.to_dict())}
    guide = _guide_payload(diff, dtype)
    if guide is not None:
        info["guide"] = guide[1]
    text = model_card(diff.config, info, metrics=metrics, command=command, training=training,
                      samples=samples is not None)  # before any write: a bad value fails here
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    os.chmod(stage, 0o755)  # mkdtemp's 0700 would otherwise become the folder's
    try:
        atomic_write_bytes(stage / "model.safetensors", payload)
        if guide is not None:
            atomic_write_bytes(stage / GUIDE, guide[0])
        atomic_write_json(stage / "config.json", {**diff.config.to_dict(), "export": info})
        atomic_write_json(stage / "scheduler_config.json", scheduler_config(diff.config, diff.schedule.betas))
        if samples is not None:
            save_png(samples, stage / "samples.png", scale=2)
        atomic_write_text(stage / "README.md", text)
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


GUIDE = "guide.safetensors"


def _tensors(model: torch.nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()}


def _guide_payload(diff, dtype: str) -> Optional[tuple[bytes, dict]]:
    """An autoguided model's guide as guide.safetensors' bytes and its `export.guide` entry, or None.
    The folder stores one network description, so the guide must be a set of weights of the same
    network (an earlier checkpoint of the same run, as autoguidance.md measures)."""
    from safetensors.torch import save

    weak = getattr(diff, "guide", None)
    if weak is None:
        return None
    same = ("model", "diffusion")
    if any(weak.config.to_dict()[k] != diff.config.to_dict()[k] for k in same):
        raise ConfigError("a model folder stores its guide as weights of the same network: this guide's network "
                          "or noise schedule differs (export the model without it, or guide with an earlier "
                          "checkpoint of the same run)")
    if not diff.config.sampling.guidance:
        raise ConfigError("an autoguided model folder needs the guidance that weighs its guide in its sampling "
                          "section (export with a --metrics report drawn with --autoguide and --guidance W)")
    payload = save(_tensors(weak.model, dtype), metadata={"format": FORMAT})
    return payload, {"weights": GUIDE, "sha256": hashlib.sha256(payload).hexdigest(), "step": weak.step,
                     "ema": weak.ema, "source_sha256": weak.source_sha256}


def _swap_in(stage: Path, out: Path) -> None:
    """Put the finished folder `stage` where `out` is: a rename when `out` is new; else the old
    one is moved aside, the new one renamed in, and the old one removed (a crash between the two
    renames leaves both, the old one beside it as .NAME.old-*)."""
    if not out.exists():
        os.rename(stage, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def config_fingerprint(config: dict) -> str:
    """The SHA-256 of what a model folder's weights were made with: config.json less its `export`
    entry (which records this) and its `sampling` section (how to draw; the user's to tune). A
    hand edit of the prediction, the schedule or T would make the weights draw noise: load_folder
    compares this with the fingerprint export recorded beside the weights' SHA-256."""
    kept = {k: v for k, v in config.items() if k not in ("export", "sampling")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def load_folder(path: str | os.PathLike, expected_sha256: Optional[str] = None):
    """(network, RunConfig, info) from a model folder: the weights' SHA-256 must match the one
    recorded in config.json (and `expected_sha256`, for shipped models); their names and shapes
    must fit the config's network. Weights stored at fp16/bf16 are loaded into an fp32 network."""
    folder = Path(path)
    try:
        raw = json.loads(read_regular(folder / "config.json", MAX_CONFIG_BYTES).decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        cfg = RunConfig.from_dict(raw)
        info = raw.get("export")
        if not isinstance(info, dict):  # every folder export writes has one: weights unchecked otherwise
            raise ValueError("it has no `export` entry (the weights' SHA-256): not a folder written by export")
        if not (info.get("weights", "model.safetensors") == "model.safetensors"
                and re.fullmatch(r"[0-9a-f]{64}", str(info.get("sha256", "")))):
            raise ValueError("its `export` entry is not one export writes")
        data = read_regular(folder / "model.safetensors")  # never a path the config names
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder}: not a model folder (no {Path(e.filename).name})") from None
    except RecursionError:
        raise CheckpointError(f"{folder}/config.json: nested too deeply to be a config") from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{folder}/config.json: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") \
            from None
    recorded = info.get("config_sha256")
    if recorded is None and expected_sha256 is not None:
        raise CheckpointError(f"{folder}/config.json: a shipped model's config records its fingerprint; this one "
                              "has none (edited or replaced)")
    if recorded is not None and recorded != config_fingerprint(raw):
        raise CheckpointError(f"{folder}/config.json was edited after export: its model, diffusion or training "
                              "settings no longer match the fingerprint recorded with the weights (they would draw "
                              "noise); export again from the checkpoint (only the sampling section may be edited)")
    model, digest = _network(folder / "model.safetensors", data, cfg, info.get("sha256"), expected_sha256)
    return model, cfg, {**info, "sha256": digest}


def load_guide(path: str | os.PathLike, cfg: RunConfig, info: dict, expected_sha256: Optional[str] = None):
    """The guide network of an autoguided model folder (load_folder's `cfg` and `info`), its
    guide.safetensors checked against the SHA-256 in config.json (and `expected_sha256`, a shipped
    model's pin); None for a folder without a guide, which a pin refuses."""
    folder, entry = Path(path), info.get("guide")
    if entry is None:
        if expected_sha256 is not None:
            raise CheckpointError(f"{folder}/config.json: this shipped model is guided by {GUIDE}, which the "
                                  "config no longer names (edited or replaced)")
        return None
    if not (isinstance(entry, dict) and entry.get("weights") == GUIDE
            and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", "")))):
        raise CheckpointError(f"{folder}/config.json: its `export.guide` entry is not one export writes")
    try:
        data = read_regular(folder / GUIDE)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: the model is autoguided but {GUIDE} is missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/{GUIDE}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") \
            from None
    return _network(folder / GUIDE, data, cfg, entry["sha256"], expected_sha256)[0].eval()


def _network(path: Path, data: bytes, cfg: RunConfig, recorded: Optional[str], pinned: Optional[str]):
    """(the fp32 network of `cfg` holding the safetensors `data` read from `path`, its SHA-256), after
    checking the bytes against the SHA-256 recorded in config.json and the one pinned for a shipped model."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    digest = hashlib.sha256(data).hexdigest()
    for want, what in ((recorded, "the SHA-256 recorded in config.json"),
                       (pinned, "the SHA-256 pinned for this shipped model")):
        if want is not None and digest != want:
            raise CheckpointError(f"{path} does not match {what} ({digest[:12]}... vs "
                                  f"{want[:12]}...): the file was modified or damaged")
    try:
        tensors = load(data)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    model = build_model(cfg.model, cfg.diffusion.timesteps)
    own = model.state_dict()
    load_state(model, {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}, str(path))
    return model.eval(), digest


def card_samples(diff, seed: int = 0):
    """The grid a model card shows, drawn as the model's own sampling section says: one row per
    class, or 64 images (a clustered model's clusters drawn by their sizes)."""
    if diff.num_classes and not diff.clustered:
        return grid(diff.sample(label="all", seed=seed), nrow=10)
    return grid(diff.sample(64, seed=seed), nrow=8)


def model_card(cfg: RunConfig, info: dict, *, metrics: Optional[dict] = None, command: Optional[str] = None,
               training: Optional[dict] = None, samples: bool = False) -> str:
    """A README.md in the Hub's model-card form: YAML front matter, then what the model is, how to
    use it, how it was made and how good it is (the numbers of an `evaluate --json` report)."""
    m, d = cfg.model, cfg.train.dataset
    conditional, clustered = bool(m.num_classes), bool(cfg.train.cluster_sizes)
    tags = ["diffusion", "ddpm", "pytorch", "mnist-diffusion", d.replace("_", "-"),
            "label-free" if clustered else "class-conditional" if conditional else "unconditional"]
    kind = "label-free, k-means clusters" if clustered else "class-conditional" if conditional else "unconditional"
    lines = ["---", "license: mit", "library_name: mnist-diffusion", "tags:", *[f"- {t}" for t in tags],
             "datasets:", f"- {HF_DATASETS.get(d, d)}",
             "pipeline_tag: unconditional-image-generation", "---", "",
             f"# {d.replace('_', '-')} DDPM ({kind})", "",
             f"A denoising diffusion model (Ho et al. 2020) for 28x28 {d.replace('_', '-')} images, made and read "
             f"by [mnist-diffusion](https://pypi.org/project/mnist-diffusion/): a `{m.name}` network "
             f"({info['parameters']:,} parameters, base width {m.base_dim}, levels "
             f"{'x'.join(map(str, m.channel_mults))}), predicting {m.prediction}, {cfg.diffusion.schedule} schedule "
             f"with T = {cfg.diffusion.timesteps}"
             + (f", conditioned on {m.num_classes} k-means clusters of its training images (no labels used) plus a "
                "null label for classifier-free guidance; sampling draws each image's cluster by the clusters' sizes"
                if clustered else
                f", {m.num_classes} classes plus a null label for classifier-free guidance" if conditional else "")
             + f". Weights: {'EMA, ' if info.get('ema') else ''}{info['dtype']}, step {info.get('step')}, "
             f"SHA-256 `{info['sha256']}`.", ""]
    if info.get("guide"):
        g = info["guide"]
        lines += [f"Autoguided (Karras et al. 2024, \"Guiding a diffusion model with a bad version of itself\"): "
                  f"`{GUIDE}` holds the same network's {'EMA ' if g.get('ema') else ''}weights at step {g.get('step')} "
                  f"(SHA-256 `{g['sha256']}`), and every draw pushes away from them with the weight W = "
                  f"{cfg.sampling.guidance:g} of config.json's sampling section (`guidance=0`: the model alone, one "
                  "network evaluation per step instead of two).", ""]
    if cfg.distill.distilled:
        t = cfg.distill
        lines += [f"A distilled student of `{t.teacher}` (teacher weights SHA-256 `{t.teacher_sha256}`), trained by "
                  f"`{t.method}` (docs/decisions/distillation.md) with the teacher's classifier-free guidance "
                  f"W = {t.guidance:g} built in: one network evaluation per image (the default), or two with "
                  "`steps=2`; it takes a label and no further guidance.", ""]
    if samples:
        lines += ["![samples](samples.png)", ""]
    lines += ["## Use", "", "```python", "import mnist_diffusion as md",
              "diff = md.load(\"path/to/this/folder\")", use_line(cfg, metrics), "```", "",
              "`mnist-diffusion sample --checkpoint path/to/this/folder ...` reads it as well. "
              "`scheduler_config.json` loads into diffusers' `DDPMScheduler.from_config` with the same betas.", ""]
    if command or training:
        lines += ["## Training", ""]
        if command:
            lines += ["```", command, "```", ""]
        for key, value in (training or {}).items():
            lines.append(f"- {key}: {value}")
        lines.append("")
    if metrics:
        lines += evaluation_section(metrics, clustered)
    return "\n".join(lines)


def use_line(cfg: RunConfig, metrics: Optional[dict] = None) -> str:
    """The card's line of Python that draws from the model: its config's sampling section is the
    default, so the line names no sampler settings."""
    s = cfg.sampling
    said = f"{s.sampler}, {_steps(s.steps or 'default')}" + (f", guidance {s.guidance:g}" if s.guidance else "")
    use = ('diff.sample(16, seed=0)' if cfg.train.cluster_sizes or not cfg.model.num_classes
           else 'diff.sample(10, label="all", seed=0)')
    return f"images = {use}   # uint8 (N, 28, 28); {said}, as config.json's sampling section says"


def draw_description(s: dict, clustered: bool = False) -> str:
    """How a report's images were drawn, as the card says it: 'dpmpp, 20 steps, logsnr-capped grid,
    eta 0.5, linear corrector, guidance W = 0.5 at noise levels 0.3-5, balanced labels' (from the
    report's "sampler" entry, i.e. sampling.SamplingPlan.report())."""
    return (f"{s.get('sampler')}, {_steps(s.get('steps'))}"
            + (f", {s['spacing']} grid" if s.get("spacing") else "")
            + (f", eta {s['eta']:g}" if s.get("eta") is not None else "")
            + (f", {('linear', 'quadratic')[s['corrector'] - 1]} corrector" if s.get("corrector") else "")
            + (f", guidance W = {s['guidance']:g}"
               + (f" at noise levels {s['guidance_interval'][0]:g}-{s['guidance_interval'][1]:g}"
                  if s.get("guidance_interval") else "")
               + (", second order where guidance switches" if s.get("first_order_switches") is False else "")
               + ", "
               + (f"autoguided by the step-{s.get('autoguide_step')} weights" if s.get("autoguide") else
                  "clusters drawn by their sizes" if clustered else "balanced labels")
               if s.get("guidance") is not None else ""))


def evaluation_section(metrics: dict, clustered: bool = False, *, note: Optional[str] = None) -> list[str]:
    """The card's "## Evaluation" lines from an `evaluate --json` report: how the images were drawn
    (sampler, steps, grid, eta, corrector, guidance), then FID against its floor, precision /
    recall, recognizability, label accuracy, class balance, noise MSE. `note`: a sentence after the table."""
    lines = ["## Evaluation", "",
             f"`mnist-diffusion evaluate` with the shipped evaluator, n = {metrics['n']:,} images "
             f"({draw_description(metrics.get('sampler', {}), clustered)}) against the {metrics['dataset']} "
             "test split:", "",
             "| metric | value |", "|---|---:|",
             f"| FID (evaluator features; floor at this n: {metrics.get('fid_floor', float('nan')):.3f}) | "
             f"{metrics['fid']:.3f} |",
             f"| precision / recall | {metrics['precision']:.3f} / {metrics['recall']:.3f} |",
             f"| recognizable (top-1 probability >= 0.9) | {metrics['recognizable']:.3f} |"]
    if "label_accuracy" in metrics:
        lines.append(f"| label accuracy (the requested class) | {metrics['label_accuracy']:.3f} |")
    lines.append(f"| class balance (normalised entropy) | {metrics['class_entropy']:.3f} |")
    if "noise_mse" in metrics:
        lines.append(f"| noise-prediction MSE on test images | {metrics['noise_mse']['overall']:.4f} |")
    lines.append("")
    if note:
        lines += [note, ""]
    return lines


def rescore_card(folder: str | os.PathLike, metrics: dict, *, note: Optional[str] = None,
                 samples=None, sampling=None) -> Path:
    """Give a model folder's card new numbers without touching its weights: its "## Evaluation"
    section (the card's last) is replaced by `metrics`' (an `evaluate --json` report of these
    weights), `samples` (a uint8 grid) replaces samples.png, and `sampling` (a SamplingConfig: the
    draw the report scored) replaces config.json's sampling section. The weights must still match
    the SHA-256 in config.json."""
    folder = Path(folder)
    check_report(metrics, "the report")
    _, cfg, _ = load_folder(folder)  # refuses a folder whose weights changed
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if "library_name: mnist-diffusion" not in text:
        raise ConfigError(f"{card}: not a card written by export")
    if sampling is not None:
        cfg = dataclasses.replace(cfg, sampling=sampling).validate()
    clustered = bool(cfg.train.cluster_sizes)
    head = text.split("\n## Evaluation\n", 1)[0].rstrip("\n").split("\n")
    head = [use_line(cfg, metrics) if ln.startswith("images = ") else ln for ln in head]
    if samples is not None and "![samples](samples.png)" not in head and "## Use" in head:  # exported without
        at = head.index("## Use")
        head[at:at] = ["![samples](samples.png)", ""]
    new_card = "\n".join(head + [""] + evaluation_section(metrics, clustered, note=note))  # before any write
    if sampling is not None:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        # only the sampling section changes: every other byte (and so the fingerprint, which leaves
        # the sampling section out) stays as export wrote it
        atomic_write_json(folder / "config.json", {**raw, "sampling": cfg.to_dict()["sampling"]})
    if samples is not None:
        save_png(samples, folder / "samples.png", scale=2)
    atomic_write_text(card, new_card)
    return folder


def _steps(n) -> str:
    return "1 step" if n == 1 else f"{n} steps"
