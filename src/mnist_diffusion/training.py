"""The training loop: epsilon-prediction loss, AdamW, EMA, autocast, checkpoints, exact resume.

The trainer takes a config, a data split and a run directory; it knows nothing of a network's
insides (models come from the registry) nor of the schedule's math (schedule.py).

Randomness is derived, not carried: the permutation of epoch e comes from a generator seeded with
(seed, e), and the timesteps, noise and label drops of step k from one seeded with (seed, k). A
resumed run therefore draws exactly what an uninterrupted one would, with no RNG state to restore.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from . import distributed
from .config import RunConfig
from .data import Split
from .device import autocast, resolve_device, resolve_precision
from .images import save_grid
from .models import build_model, count_parameters
from .schedule import Schedule, make_schedule, q_sample, v_target

# elapsed_s: wall-clock seconds of training so far (previews and checkpoints included, summed over
# resumes), so a run's quality can be read against minutes, not only steps
LOSS_FIELDS = ["step", "epoch", "loss", "lr", "images_per_s", "skipped", "elapsed_s"]
PREVIEW_SEED = 1234  # training previews use the same noise every time, so the grids show one set forming
PREVIEW_SAMPLER = ("ddim", 50)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


class NonFiniteLoss(TrainingError):
    pass


class Interrupted(TrainingError):
    def __init__(self, signum: int, checkpoint: Path):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved to {checkpoint}; "
                         f"resume with: mnist-diffusion train --resume {checkpoint}")


@dataclass
class TrainResult:
    step: int
    final_loss: float
    checkpoint: Path
    seconds: float
    world_size: int = 1
    rank_checksums: tuple = ()  # sum of the weights on every rank (they must agree under DDP)


def _mix(seed: int, k: int, salt: int) -> int:
    return (seed * 6_364_136_223_846_793_005 + k * 1_442_695_040_888_963_407 + salt) % (2**63 - 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)  # the last partial batch is dropped: every step sees B images


def planned_steps(cfg: RunConfig, n: int) -> int:
    total = cfg.train.epochs * steps_per_epoch(n, cfg.train.batch_size)
    return min(total, cfg.train.max_steps) if cfg.train.max_steps else total


def lr_at(cfg: RunConfig, step: int, total: int) -> float:
    tc = cfg.train
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if not tc.lr_decay or total <= tc.warmup_steps:
        return tc.lr
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # warm-up of the decay (as in many DDPM codebases): early EMA weights are not stuck at init
    d = min(decay, (1 + step) / (10 + step))
    # one fused call over all tensors: a per-parameter loop costs a Python dispatch per tensor
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def diffusion_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   y: Optional[torch.Tensor] = None, min_snr_gamma: float = 0.0,
                   prediction: str = "eps") -> torch.Tensor:
    """L_simple (Ho et al. 2020, eq. 14): || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2,
    or for prediction "v" the same with the target v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (Salimans &
    Ho 2022). With min_snr_gamma > 0 each image's term is weighted by Min-SNR-gamma (Hang et al.
    2023): min(SNR_t, gamma) / SNR_t for eps, min(SNR_t, gamma) / (SNR_t + 1) for v."""
    x_t = q_sample(schedule, x0, t, noise)
    pred = model(x_t, t, y) if y is not None else model(x_t, t)
    target = noise if prediction == "eps" else v_target(schedule, x0, t, noise)
    if min_snr_gamma <= 0:
        return F.mse_loss(pred.float(), target)
    weight = min_snr_weight(schedule, t, min_snr_gamma, prediction)
    return (weight * (pred.float() - target).pow(2).flatten(1).mean(1)).mean()


def min_snr_weight(schedule: Schedule, t: torch.Tensor, gamma: float, prediction: str = "eps") -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t per timestep for eps-prediction (1 where SNR_t <= gamma, the noisy
    steps; gamma / SNR_t below), or min(SNR_t, gamma) / (SNR_t + 1) for v-prediction: both turn
    the loss into the same min(SNR_t, gamma)-weighted error in x_0."""
    snr = schedule.snr[t.cpu()]  # float64 on the CPU (MPS has no float64)
    return (snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)).float().to(t.device)


def accumulate_gradients(net, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                         y: Optional[torch.Tensor], device: torch.device, amp: Optional[torch.dtype],
                         micro_batch: Optional[int] = None, min_snr_gamma: float = 0.0,
                         prediction: str = "eps") -> torch.Tensor:
    """Forward and backward the diffusion loss over the batch, `micro_batch` images at a time (all at once
    when None), adding into .grad; returns the batch's mean loss, detached.

    Each chunk's loss is weighted by its share of the batch, so the summed gradient is the full
    batch's mean-loss gradient (every layer here is per-sample: GroupNorm, no BatchNorm), while
    only one chunk's activations are alive at a time. Under DDP only the last chunk all-reduces."""
    B = x0.shape[0]
    size = min(micro_batch or B, B)
    total = torch.zeros((), device=device)
    for start in range(0, B, size):
        part = slice(start, start + size)
        last = start + size >= B
        share = (min(B, start + size) - start) / B
        sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with autocast(device, amp):
                loss = diffusion_loss(net, schedule, x0[part], t[part], noise[part], None if y is None else y[part],
                                      min_snr_gamma, prediction)
            (loss * share).backward()
        total += loss.detach() * share
    return total


def check_writable(run_dir: Path, checkpoint_bytes: int = 0) -> None:
    """Fail before training, not after an hour, when the run directory cannot be written or
    has no room for two checkpoints (the temp file of an atomic save sits beside the old one)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--output-dir {run_dir} exists and is a file, not a directory")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to --output-dir {run_dir}: {e.strerror or e}") from None
    free = shutil.disk_usage(run_dir).free
    need = 2 * checkpoint_bytes + (16 << 20)
    if free < need:
        raise TrainingError(f"only {free / 1e6:.0f} MB free under {run_dir}; a checkpoint needs about "
                            f"{checkpoint_bytes / 1e6:.0f} MB and a save needs room for two")


def compatible(saved: RunConfig, cfg: RunConfig) -> None:
    """A resumed run must train the same network on the same process and data."""
    pairs = [("model", saved.model, cfg.model), ("diffusion", saved.diffusion, cfg.diffusion)]
    for section, a, b in pairs:
        for k, v in a.__dict__.items():
            if getattr(b, k) != v:
                raise TrainingError(f"checkpoint was trained with {section}.{k}={v!r}, "
                                    f"but this run asks for {getattr(b, k)!r}")
    for k in ("dataset", "seed", "subset", "batch_size"):
        if getattr(saved.train, k) != getattr(cfg.train, k):
            raise TrainingError(f"checkpoint was trained with train.{k}={getattr(saved.train, k)!r}, "
                                f"but this run asks for {getattr(cfg.train, k)!r}")


class _SignalCatcher:
    """Turn SIGINT/SIGTERM into a flag checked between steps (restored on exit)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def read_loss_rows(path: Path, upto_step: Optional[int] = None) -> list[dict]:
    """The logged rows of a run's loss.csv (up to `upto_step`), [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f)
                if r.get("step", "").isdigit() and (upto_step is None or int(r["step"]) <= upto_step)]


def elapsed_seconds(rows: list[dict], batch_size: int) -> list[float]:
    """Training wall time at each loss.csv row: the recorded `elapsed_s`, or for rows written
    before that column existed, an estimate from the images/s of each log interval (which leaves
    out preview and checkpoint time)."""
    out, prev_step, prev_s = [], 0, 0.0
    for r in rows:
        step = int(r["step"])
        if r.get("elapsed_s"):
            prev_s = float(r["elapsed_s"])
        else:
            ips = float(r.get("images_per_s") or 0)
            prev_s += (step - prev_step) * batch_size / ips if ips > 0 else 0.0
        prev_step = step
        out.append(prev_s)
    return out


def _write_loss_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOSS_FIELDS)
    w.writeheader()
    w.writerows(rows)
    ckpt_io.atomic_write_text(path, buf.getvalue())


def train(cfg: RunConfig, data: Split, run_dir: str | os.PathLike, *, resume: Optional[str] = None,
          progress: bool = True, log: Callable[[str], None] = print,
          step_hook: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume) a run in `run_dir`. Returns the final step, loss and checkpoint path."""
    run_dir = Path(run_dir)
    world, device = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(cfg, data, run_dir, world, device, resume=resume, progress=progress, log=log,
                      step_hook=step_hook)
    finally:
        distributed.teardown(world)


def _train(cfg: RunConfig, data: Split, run_dir: Path, world: "distributed.World", device: torch.device, *,
           resume, progress, log, step_hook) -> TrainResult:
    tc = cfg.train
    if not world.main:
        log = _silent  # only rank 0 talks and writes
    if tc.batch_size % world.size:
        raise TrainingError(f"--batch-size {tc.batch_size} must be divisible by the {world.size} processes")
    amp = resolve_precision(tc.precision, device)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)

    images = torch.as_tensor(data.images)
    labels = torch.as_tensor(data.labels).long()
    if tc.subset is not None:
        images, labels = images[: tc.subset], labels[: tc.subset]
    n = images.shape[0]
    if n < tc.batch_size:
        raise TrainingError(f"--batch-size {tc.batch_size} is larger than the {n} training images")
    # The whole split lives on the device as uint8 (47 MB for MNIST); batches are index gathers.
    images = images.to(device)
    labels = labels.to(device)

    # initial weights from the run's seed (isolated from the global generator's other users)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(tc.seed, 0, 3))
        model = build_model(cfg.model, cfg.diffusion.timesteps).to(device)
    if world.main:
        # model + EMA + Adam's two moments, 4 bytes each
        check_writable(run_dir, checkpoint_bytes=16 * count_parameters(model))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    start_step, skipped = 0, 0
    total = planned_steps(cfg, n)
    spe = steps_per_epoch(n, tc.batch_size)

    ck_dir = run_dir / "checkpoints"
    loss_csv = run_dir / "loss.csv"
    if world.main:
        for stale in ck_dir.glob(".*.tmp"):  # temp files of a save that a crash interrupted
            stale.unlink()
    if resume:
        ck = ckpt_io.load(resume, map_location=device)
        saved = ckpt_io.config_of(ck, str(resume))
        compatible(saved, cfg)
        ckpt_io.load_state(model, ck["model"], str(resume))
        ckpt_io.load_state(ema, ck.get("ema") or ck["model"], str(resume))
        if "optimizer" in ck:
            opt.load_state_dict(ck["optimizer"])
        start_step = int(ck["step"])
        skipped = int(ck.get("skipped", 0))
        rows = read_loss_rows(loss_csv, start_step)
        # checkpoints from before elapsed_s was saved: estimate it from the loss rows
        elapsed_before = float(ck["elapsed_s"]) if "elapsed_s" in ck else \
            (elapsed_seconds(rows, tc.batch_size)[-1] if rows else 0.0)
        log(f"resumed from {resume} at step {start_step}")
    else:
        if (ck_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir} already holds a run; resume it with --resume auto "
                                "or choose another --output-dir")
        rows = []
        elapsed_before = 0.0
    if world.main:
        ckpt_io.atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
        _write_loss_csv(loss_csv, rows)
    net = model
    if world.active:
        # gradients are averaged over ranks: with equal shards that is the global-batch gradient
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    log(f"training {cfg.model.name} ({count_parameters(model):,} parameters) on {tc.dataset} "
        f"({n} images) for {total} steps on {device}" + (f" with {str(amp).split('.')[-1]} autocast" if amp else "")
        + (f" on {world.size} processes" if world.active else ""))

    def elapsed() -> float:  # wall time of training so far, over every resume
        return elapsed_before + time.time() - t_start

    def save(step: int, periodic: bool) -> Path:
        last = ck_dir / "last.pt"
        if not world.main:
            return last
        state = {
            "format": ckpt_io.FORMAT, "config": cfg.to_dict(), "step": step, "epoch": step // spe,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "skipped": skipped, "torch": str(torch.__version__),
            "elapsed_s": elapsed(),
        }
        ckpt_io.atomic_save(state, last)
        if periodic:
            ckpt_io.atomic_save(state, ck_dir / f"step_{step:07d}.pt")
            if tc.keep_checkpoints:
                for old in sorted(ck_dir.glob("step_*.pt"))[: -tc.keep_checkpoints]:
                    old.unlink()
        return last

    def preview(step: int) -> None:
        if not world.main:
            return
        from .sampling import generate
        imgs = generate(ema, schedule, tc.num_samples, seed=PREVIEW_SEED, sampler=PREVIEW_SAMPLER[0],
                        steps=PREVIEW_SAMPLER[1], clip=tc.clip, device=device, amp_dtype=amp,
                        labels=(torch.arange(tc.num_samples, device=device) % cfg.model.num_classes
                                if cfg.model.num_classes else None),
                        null_label=cfg.model.num_classes, progress=False)
        save_grid(imgs, run_dir / "samples" / f"step_{step:07d}.png")

    sample_every = tc.sample_interval or spe
    save_every = tc.save_interval or spe
    perm_epoch, perm = -1, None
    bar = tqdm(total=total, initial=start_step, desc="training", unit="step", disable=not progress or not world.main,
               dynamic_ncols=True)
    t_start = time.time()
    window_loss, window_n, window_t = 0.0, 0, time.time()
    loss_value = float("nan")
    step = start_step
    last_ck = ck_dir / "last.pt"
    model.train()
    with _SignalCatcher() as sig:
        time_up = False
        while step < total and not time_up:
            epoch, i = divmod(step, spe)
            if epoch != perm_epoch:
                g_epoch = torch.Generator().manual_seed(_mix(tc.seed, epoch, 1))
                perm = torch.randperm(n, generator=g_epoch).to(device)
                perm_epoch = epoch
            idx = perm[i * tc.batch_size:(i + 1) * tc.batch_size]
            g = torch.Generator(device=device).manual_seed(_mix(tc.seed, step, 2))
            # the whole global batch's draws are made on every rank, then each keeps its shard, so
            # N processes see exactly the images, timesteps and noise that one process would
            t = torch.randint(0, schedule.timesteps, (tc.batch_size,), device=device, generator=g)
            noise = torch.randn((tc.batch_size, 1, 28, 28), device=device, generator=g)
            drop = torch.rand(tc.batch_size, device=device, generator=g) < tc.cond_drop_prob
            shard = slice(world.rank, None, world.size)
            idx, t, noise, drop = idx[shard], t[shard], noise[shard], drop[shard]
            x0 = images[idx].unsqueeze(1).float() / 127.5 - 1.0
            y = None
            if cfg.model.num_classes:
                y = torch.where(drop, torch.full_like(labels[idx], cfg.model.num_classes), labels[idx])

            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step, total)
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradients(net, schedule, x0, t, noise, y, device, amp, tc.micro_batch, tc.min_snr_gamma,
                                        cfg.model.prediction)
            time_up = bool(tc.time_limit) and time.time() - t_start > tc.time_limit * 60
            loss_value, (stop, time_up) = distributed.agree(world, float(loss),
                                                            (sig.signum is not None, time_up), device)
            if not math.isfinite(loss_value):
                if tc.nonfinite == "stop":
                    raise NonFiniteLoss(f"loss became {loss_value} at step {step + 1}; the last good checkpoint "
                                        f"({last_ck}) is kept. Lower --lr, or pass --skip-nonfinite")
                skipped += 1  # its gradients are dropped by the next step's zero_grad
            else:
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                ema_update(ema, model, tc.ema_decay, step)
                window_loss += loss_value
                window_n += 1
            step += 1
            bar.update(1)
            if step_hook is not None:
                step_hook(step, loss_value)

            if world.main and (step % tc.log_interval == 0 or step == total):
                dt = max(time.time() - window_t, 1e-9)
                ips = window_n * tc.batch_size / dt
                mean = window_loss / max(window_n, 1)
                rows.append({"step": step, "epoch": f"{step / spe:.3f}", "loss": f"{mean:.6f}",
                             "lr": f"{lr_at(cfg, step - 1, total):.3e}", "images_per_s": f"{ips:.1f}",
                             "skipped": skipped, "elapsed_s": f"{elapsed():.1f}"})
                _write_loss_csv(loss_csv, rows)
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}")
                window_loss, window_n, window_t = 0.0, 0, time.time()
            done = step == total or time_up
            if time_up and step < total:
                log(f"time limit of {tc.time_limit:g} min reached at step {step}")
            if step % save_every == 0 or done:
                last_ck = save(step, periodic=step % save_every == 0)
            if step % sample_every == 0 or done:
                preview(step)
                model.train()
            if stop and not done:
                last_ck = save(step, periodic=False)
                bar.close()
                raise Interrupted(sig.signum or signal.SIGTERM, last_ck)
    bar.close()
    if step == start_step:  # nothing left to train: still leave a loadable last.pt
        last_ck = save(step, periodic=False)
    if world.main:
        try:
            from .visualize import plot_loss
            plot_loss(loss_csv, run_dir / "loss.png")
        except Exception as e:  # a plotting failure must not lose a finished run
            log(f"warning: could not draw loss.png ({e})")
    sums = tuple(distributed.gather_floats(world, distributed.weights_checksum(model), device))
    return TrainResult(step=step, final_loss=loss_value, checkpoint=last_ck, seconds=time.time() - t_start,
                       world_size=world.size, rank_checksums=sums)


def _silent(_msg: str) -> None:
    pass
