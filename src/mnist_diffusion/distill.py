"""Distilled students: a teacher's 26-evaluation guided draw in one (or two) network evaluations.

A student is one more denoiser: the teacher's network, started from the teacher's weights, that
predicts v (Salimans & Ho 2022), so that x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v is well conditioned
even at t = T-1, where x_t is pure noise. Its config's sampling section draws it by DDIM (eta 0) on
the "student" grid (samplers.student_timesteps): one step maps noise straight to an image; two
steps re-noise that image to sigma = 1 and refine it. The teacher's classifier-free guidance W is
built in: the student takes the label and gives the guided image in one evaluation.

Two objectives, picked by measurement (docs/decisions/distillation.md):
- "pairs": the teacher's deterministic ODE (DPM-Solver++, eta 0, guided) solved once for N noises
  z, giving images x = teacher(z). The student is then trained as a diffusion model on the coupled
  pairs: x_t = sqrt(a_t) x + sqrt(1 - a_t) z with the pair's own z instead of fresh noise, so at
  t = T-1 it learns z -> teacher(z), and at the grid's other timesteps the map a DDIM step from its
  own first image lands on. The pairs are drawn in chunks kept in the run directory (a stopped run
  keeps what it drew).
- "consistency": consistency distillation (Song et al. 2023): from x_t of a training image, one
  teacher DDIM step (guided) to the next point s of a grid; the student's x0 at (x_t, t) is pulled
  towards its own (stop-gradient) x0 at (x_s, s), and at the grid's end towards the teacher's x0.

Everything else is the training loop's (training.py): EMA, checkpoints, exact resume, the lock, the
progress bar, previews.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .atomic import atomic_write
from .config import ConfigError, DistillConfig, RunConfig, SamplingConfig, resolve
from .data import Split
from .diffusion import Diffusion
from .pretrained import PRETRAINED
from .rundir import TrainingError, find_resume
from .samplers import timestep_sequence
from .sampling import plan, run_plan
from .schedule import Schedule, extract, q_sample
from .training import Batch, Objective, TrainResult, TrainState, image_objective, train

CHUNK = 1000  # teacher pairs per file in DIR/pairs/
# how a student is drawn: DDIM, deterministic, on the student grid, guidance built in
STUDENT_SAMPLING = SamplingConfig(sampler="ddim", steps=1, spacing="student", eta=0.0, guidance=0.0)
# the recipe's defaults (docs/decisions/distillation.md): a fine-tune of the teacher's weights
STUDENT_TRAIN = {"max_steps": 6000, "batch_size": 64, "lr": 5e-4, "warmup_steps": 200, "lr_decay": True,
                 "ema_decay": 0.999, "cond_drop_prob": 0.0, "min_snr_gamma": 0.0, "t_sampling": "uniform",
                 "sample_interval": 1000, "save_interval": 500, "log_interval": 50}


def student_config(teacher: Diffusion, distill: DistillConfig, train_changes: Optional[dict] = None) -> RunConfig:
    """The student's config: the teacher's network and process predicting v, the recipe's training
    options (STUDENT_TRAIN, then `train_changes`), the student's sampling section and `distill`."""
    if teacher.config.distill.distilled:
        raise ConfigError(f"the teacher {teacher.source} is itself a distilled student; distil from its teacher "
                          f"({teacher.config.distill.teacher})")
    if teacher.num_classes is None and distill.guidance:
        distill = dataclasses.replace(distill, guidance=0.0)  # nothing to guide an unlabelled model with
    # the student takes the teacher's classes as they are (no clusters of its own)
    train = {**STUDENT_TRAIN, "epochs": 10**6, "clusters": 0, "cluster_sizes": []}
    try:
        base = dataclasses.replace(teacher.config, sampling=STUDENT_SAMPLING, distill=distill).replace(
            model={"prediction": "v"}, train=train)
        return resolve(base, {f"train.{k}": v for k, v in (train_changes or {}).items()})  # train's resolver
    except ConfigError as e:
        raise TrainingError(str(e)) from None


def load_teacher(source: str | os.PathLike, *, device="auto", precision: str = "auto") -> Diffusion:
    """A teacher by checkpoint, model folder or shipped name (its EMA weights), as Diffusion.load."""
    try:
        return Diffusion.load(source, device=device, precision=precision)
    except FileNotFoundError:
        raise ConfigError(f"--teacher {source}: no such checkpoint, model folder or shipped model") from None


# ---------------------------------------------------------------------------------------------
# the teacher's ODE, solved once per pair

def teacher_plan(teacher: Diffusion, distill: DistillConfig):
    """The teacher's deterministic draw: DPM-Solver++ (eta 0) with its guidance rules at W."""
    w = distill.guidance if teacher.num_classes is not None else 0.0
    return plan(teacher, SamplingConfig(sampler="dpmpp", steps=distill.teacher_steps, guidance=w, eta=0.0))


def pair_labels(n: int, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Balanced labels for pairs 0..n-1: pair i is of class i mod C (None for an unlabelled teacher)."""
    return None if num_classes is None else torch.arange(n) % num_classes


def draw_pairs(teacher: Diffusion, distill: DistillConfig, seed: int, first: int, n: int,
               batch_size: int = 125) -> dict[str, torch.Tensor]:
    """Pairs first..first+n-1: noise z (fp16, a generator seeded with (seed, chunk)), label and the
    teacher's image x = ODE(z) in [-1, 1] (fp16). A pair depends only on its index and the seed."""
    how = teacher_plan(teacher, distill)
    g = torch.Generator().manual_seed(seed * 1_000_003 + first)
    z = torch.randn((n, 1, 28, 28), generator=g).half()
    labels = pair_labels(first + n, teacher.num_classes)
    y = None if labels is None else labels[first:]
    out = []
    for s in range(0, n, batch_size):
        part = slice(s, s + batch_size)
        yb = None if y is None else y[part].to(teacher.device)
        eps_fn = teacher.eps_fn(yb, how.guidance, how.guidance_interval)
        x = run_plan(how, eps_fn, teacher.schedule, z[part].float().to(teacher.device), None)
        out.append(x.clamp(-1, 1).cpu().half())
    pairs = {"noise": z, "images": torch.cat(out)}
    if y is not None:
        pairs["labels"] = y.clone()
    return pairs


def teacher_pairs(teacher: Diffusion, distill: DistillConfig, seed: int, folder: Optional[Path], *,
                  progress: bool = True, log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """All distill.pairs pairs, drawn CHUNK at a time; with `folder`, each chunk is a safetensors
    file there (written atomically), and the chunks a stopped run left are read back, not redrawn."""
    from safetensors.torch import load_file, save_file

    n, chunks, t0, drawn = distill.pairs, [], time.time(), 0
    key = pairs_key(teacher, distill, seed)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        others = [p for p in folder.glob("pairs-*.safetensors") if not p.name.startswith(f"pairs-{key}-")]
        if others:
            log(f"note: {len(others)} pair files in {folder} were drawn with other settings (another teacher, "
                "guidance, steps or seed): not used")
    with tqdm(total=n, desc="teacher pairs", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for first in range(0, n, CHUNK):
            size = min(CHUNK, n - first)
            path = None if folder is None else folder / f"pairs-{key}-{first:07d}-{size}.safetensors"
            part = _read_chunk(path, size, load_file) if path is not None and path.exists() else None
            if part is None:
                part = draw_pairs(teacher, distill, seed, first, size)
                drawn += size
                if path is not None:
                    atomic_write(path, lambda f, p=part: f.write(_safetensors_bytes(p, save_file)))
            chunks.append(part)
            bar.update(size)
            if drawn:
                bar.set_postfix(img_s=f"{drawn / max(time.time() - t0, 1e-9):.0f}")
    if drawn:
        log(f"teacher pairs: drew {drawn:,} in {time.time() - t0:.0f} s ({drawn / max(time.time() - t0, 1e-9):.0f} "
            f"images/s; {teacher_plan(teacher, distill).describe()})")
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def pairs_key(teacher: Diffusion, distill: DistillConfig, seed: int) -> str:
    """What decides a pair, as 16 hex digits of a SHA-256: the teacher's weights, the draw it is
    solved with (sampler, steps, grid, guidance and its rules) and the seed. A pair file's name
    starts with it, so a rerun with another teacher, guidance or steps never reads old pairs."""
    how = teacher_plan(teacher, distill)
    facts = {"teacher_sha256": teacher.source_sha256 or str(teacher.source), "draw": how.report(), "seed": seed,
             "chunk": CHUNK, "version": 2}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _read_chunk(path: Path, size: int, load_file) -> Optional[dict]:
    try:
        part = load_file(str(path))
    except Exception:  # a damaged chunk is drawn again
        return None
    if part.get("images") is None or part["images"].shape != (size, 1, 28, 28) or part["noise"].shape[0] != size:
        return None
    return part


def _safetensors_bytes(tensors: dict, save_file) -> bytes:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "chunk.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(p))
        return p.read_bytes()


# ---------------------------------------------------------------------------------------------
# the two objectives

def draw_times(B: int, T: int, top_share: float, g: torch.Generator, device) -> torch.Tensor:
    """Timesteps of a student batch: T-1 (the one-step input) for a `top_share` of the images, the
    rest uniform over 0..T-1 (the few-step grid's inputs)."""
    t = torch.randint(0, T, (B,), generator=g, device=device)
    top = torch.rand(B, generator=g, device=device) < top_share
    return torch.where(top, torch.full_like(t, T - 1), t)


def pairs_objective(pairs: dict[str, torch.Tensor], cfg: RunConfig, device) -> Objective:
    """The diffusion loss (v-prediction) on the teacher's pairs with their own noise: x_t = sqrt(a_t)
    x + sqrt(1 - a_t) z, x = teacher(z), at draw_times' timesteps."""
    images, noise = pairs["images"].to(device), pairs["noise"].to(device)
    labels = pairs.get("labels")
    labels = None if labels is None else labels.to(device)
    T, share = cfg.diffusion.timesteps, cfg.distill.top_share

    def draw(idx: torch.Tensor, g: torch.Generator, shard: slice) -> Batch:
        t = draw_times(idx.shape[0], T, share, g, idx.device)
        idx, t = idx[shard], t[shard]
        x0 = images[idx].float()
        return Batch(x0, t, noise[idx].float(), None if labels is None else labels[idx])
    return Objective(int(images.shape[0]), draw)


def student_x0(net, schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
    """The student's image at (x_t, t): x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v (v-prediction)."""
    v = (net(x_t, t, y) if y is not None else net(x_t, t)).float()
    return extract(schedule.sqrt_alpha_bar, t, x_t) * x_t - extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * v


def consistency_objective(teacher: Diffusion, cfg: RunConfig, images, labels) -> Objective:
    """Consistency distillation on the training images: t on the teacher's grid (T-1 for a
    top_share of the batch), x_t = q(x_t | x0); one guided teacher DDIM step to the grid's next
    point s; loss || x0_student(x_t, t) - sg(x0_student(x_s, s)) ||^2, the teacher's x0 past s = 0."""
    base = image_objective(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cond_drop_prob=0.0)),
                           images, labels)
    schedule, d = teacher.schedule, cfg.distill
    grid = timestep_sequence(schedule, d.teacher_steps, "logsnr-capped")  # T-1 ... 0, decreasing
    grid_t = torch.tensor(grid, device=images.device)
    nxt = torch.full((schedule.timesteps,), -1, dtype=torch.long, device=images.device)
    for a, b in zip(grid[:-1], grid[1:]):
        nxt[a] = b
    w = d.guidance if teacher.num_classes is not None else 0.0

    def draw(idx: torch.Tensor, g: torch.Generator, shard: slice) -> Batch:
        batch = base.draw(idx, g, shard)
        k = torch.randint(0, len(grid), (idx.shape[0],), generator=g, device=idx.device)
        top = torch.rand(idx.shape[0], generator=g, device=idx.device) < d.top_share
        t = torch.where(top, torch.zeros_like(k), k)[shard]
        return dataclasses.replace(batch, t=grid_t[t])

    def loss_fn(net, x0, t, noise, y):
        x_t = q_sample(schedule, x0, t, noise)
        with torch.no_grad():
            s = nxt[t]
            eps = teacher.eps_fn(y, w)(x_t, t)
            a_t = extract(schedule.alpha_bar, t, x_t)
            x0_teacher = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (x_t - a_t.sqrt() * x0_teacher) / (1 - a_t).sqrt()
            a_s = torch.where(s < 0, 1.0, schedule.alpha_bar.to(x_t.device, torch.float32)[s.clamp(min=0)])
            a_s = a_s.view(-1, 1, 1, 1)
            x_s = a_s.sqrt() * x0_teacher + (1 - a_s).sqrt() * eps
            target = student_x0(net, schedule, x_s, s.clamp(min=0), y).clamp(-1, 1)
            target = torch.where((s < 0).view(-1, 1, 1, 1), x0_teacher, target)
        pred = student_x0(net, schedule, x_t, t, y)
        return (pred - target).pow(2).mean()
    return Objective(base.n, draw, loss_fn)


# ---------------------------------------------------------------------------------------------
# the run

def distill(teacher: Diffusion, cfg: RunConfig, data: Split, run_dir: Optional[str | os.PathLike] = None, *,
            resume: Optional[str] = None, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) a student of `teacher` by `cfg` (student_config). With `run_dir` the pairs,
    checkpoints, previews and loss.csv are kept there; without, everything stays in memory."""
    d = cfg.distill
    if d.teacher_sha256 and teacher.source_sha256 and d.teacher_sha256 != teacher.source_sha256:
        raise TrainingError(f"the teacher's weights (SHA-256 {teacher.source_sha256[:12]}...) are not the ones the "
                            f"run was distilled from ({d.teacher_sha256[:12]}...)")
    teacher_state = {k: v.detach().float().clone() for k, v in teacher.model.state_dict().items()}

    def init(state: TrainState) -> None:  # the student starts as its teacher
        state.model.load_state_dict(teacher_state)
        state.ema.load_state_dict(teacher_state)

    def objective(c: RunConfig, images, labels) -> Objective:
        if d.method == "consistency":
            return consistency_objective(teacher, c, images, labels)
        folder = None if run_dir is None else Path(run_dir) / "pairs"
        pairs = teacher_pairs(teacher, d, c.train.seed, folder, progress=progress, log=log)
        return pairs_objective(pairs, c, images.device)

    log(f"distilling {teacher.source} ({d.method}, guidance {d.guidance:g} built in) into a "
        f"{'one-step' if cfg.sampling.steps == 1 else f'{cfg.sampling.steps}-step'} student")
    return train(cfg, data, run_dir, resume=resume, progress=progress, log=log, objective=objective, init=init)


def distill_run(teacher_source: Optional[str], *, output_dir: Optional[str | os.PathLike] = None,
                resume: Optional[str] = None, distill_changes: Optional[dict] = None,
                train_changes: Optional[dict] = None, device="auto", precision: str = "auto",
                log: Callable[[str], None] = print) -> tuple[Diffusion, RunConfig, Path, Optional[str]]:
    """(teacher, student config, run directory, checkpoint to resume or None) of a distillation
    request, as `distill` takes them. A new run: the guidance built in is the teacher's own (its
    sampling section) unless `distill_changes` say otherwise. Resuming (`resume` a checkpoint, or
    "auto": the newest good one in output_dir, else a new run): the checkpoint's config and its
    teacher; only the resumable training options may change."""
    distill_changes = {k: v for k, v in (distill_changes or {}).items() if v is not None}
    train_changes = {k: v for k, v in (train_changes or {}).items() if v is not None}
    run_dir = Path(output_dir) if output_dir else None
    resume = find_resume(resume, run_dir, log)
    if resume:
        ckpt = ckpt_io.load(resume)
        ckpt_io.check_made_by(ckpt, "distill", resume)
        base = ckpt_io.config_of(ckpt, resume)
        changed = {k: v for k, v in distill_changes.items() if getattr(base.distill, k, None) != v}
        if changed:
            k, v = next(iter(changed.items()))
            raise ConfigError(f"--{k.replace('_', '-')} {v} differs from the run's {getattr(base.distill, k)!r}: the "
                              "distillation settings cannot change when resuming (start a new --output-dir)")
        teacher = _resume_teacher(base.distill, teacher_source, device=device, precision=precision, log=log)
        cfg = resolve(base, {f"train.{k}": v for k, v in train_changes.items()}, resuming=resume)
        return teacher, cfg, run_dir or Path(resume).resolve().parent.parent, resume
    if not teacher_source:
        raise ConfigError("--teacher is required (a checkpoint, a model folder or a shipped model's name)")
    teacher = load_teacher(teacher_source, device=device, precision=precision)
    fields = {"teacher": _teacher_name(teacher_source), "teacher_sha256": teacher.source_sha256 or "",
              "guidance": float(teacher.config.sampling.guidance), **distill_changes}
    try:
        d = DistillConfig(**fields)
        d.validate()
    except TypeError as e:
        raise ConfigError(str(e)) from None
    if not math.isfinite(d.guidance):
        raise ConfigError("distill.guidance must be a finite number")
    cfg = student_config(teacher, d, train_changes)
    name = Path(str(teacher_source).rstrip("/")).name.removesuffix(".pt")
    return teacher, cfg, run_dir or Path("runs") / f"{name}-fast", None


def _teacher_name(source: str | os.PathLike) -> str:
    """How the config records the teacher: a shipped model by its name, a file or folder by its
    absolute path (a relative one would not be found by a resume started from another folder)."""
    return str(source) if str(source) in PRETRAINED else str(Path(source).resolve())


def _resume_teacher(d: DistillConfig, given: Optional[str], *, device, precision: str,
                    log: Callable[[str], None]) -> Diffusion:
    """The teacher of a resumed distillation: the recorded one; or `given` (--teacher), when it
    is the same weights (SHA-256) moved elsewhere or the recorded path is not found from here."""
    if given and str(given) != d.teacher:
        teacher = load_teacher(given, device=device, precision=precision)
        if d.teacher_sha256 and teacher.source_sha256 != d.teacher_sha256:
            raise ConfigError(f"--teacher {given} is not the run's teacher (its weights' SHA-256 is "
                              f"{str(teacher.source_sha256)[:12]}..., the run's {d.teacher_sha256[:12]}..., "
                              f"recorded as {d.teacher})")
        log(f"note: the run's teacher {d.teacher} read from {given} (the same weights)")
        return teacher
    if d.teacher not in PRETRAINED and not Path(d.teacher).exists():
        raise ConfigError(f"the run's teacher {d.teacher} is not found from here: pass --teacher PATH (the same "
                          f"weights, SHA-256 {d.teacher_sha256[:12]}...)")
    return load_teacher(d.teacher, device=device, precision=precision)
