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
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from . import distributed
from .config import ConfigError, RunConfig, SamplingConfig, check_resume
from .data import Split, to_model_range
from .device import autocast, describe_precision, resolve_device, resolve_precision
from .diffusion import Diffusion
from .models import build_model, count_parameters
from .rundir import NonFiniteLoss, RunFiles, TrainingError, _what_is_kept, bind_data
from .schedule import Schedule, diffusion_loss, logit_normal_timesteps, make_schedule

# elapsed_s: wall-clock seconds of training so far (previews and checkpoints included, summed over
# resumes), so a run's quality can be read against minutes, not only steps


class Interrupted(TrainingError):
    def __init__(self, signum: int, checkpoint: Optional[Path], command: str = "train", saved: Optional[str] = None):
        self.signum = signum
        self.checkpoint = checkpoint
        saved = saved or (f"checkpoint saved to {checkpoint}; resume with: mnist-diffusion {command} --resume "
                          f"{checkpoint}" if checkpoint else "nothing was saved (an in-memory run)")
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {saved}")


@dataclass
class TrainResult:
    step: int
    final_loss: float
    checkpoint: Optional[Path]  # the last.pt written; None for an in-memory run
    seconds: float
    world_size: int = 1
    rank_checksums: tuple = ()  # sum of the weights on every rank (they must agree under DDP)
    diffusion: Optional[Diffusion] = None  # the EMA weights, ready to sample
    start_step: int = 0  # where this invocation began (a resumed run: the checkpoint's step)


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
    if tc.lr_schedule == "wsd":
        # held at the peak, then linear to 0: the last cool-down step trains at lr / cooldown_steps
        cooldown = max(1, round(tc.lr_cooldown * (total - tc.warmup_steps)))
        return tc.lr * min(1.0, (total - step) / cooldown)
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_beta(decay: float, step: int, gamma: float = 0.0) -> float:
    """The EMA's decay after optimiser step `step` (0-based). gamma = 0: the classic warm-up
    min(decay, (1 + step) / (10 + step)), so early EMA weights are not stuck at init; gamma > 0:
    EDM2's power function (1 - 1/t)^(gamma + 1) with t = step + 1, which makes the EMA at every t
    the average of the weights so far with weight tau^gamma (t = 1 copies the weights)."""
    if gamma > 0:
        t = step + 1
        return (1.0 - 1.0 / t) ** (gamma + 1.0)
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int, gamma: float = 0.0) -> None:
    d = ema_beta(decay, step, gamma)
    # one fused call over all tensors: a per-parameter loop costs a Python dispatch per tensor
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def accumulate_gradients(net, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                         y: Optional[torch.Tensor], device: torch.device, amp: Optional[torch.dtype],
                         micro_batch: Optional[int] = None, min_snr_gamma: float = 0.0,
                         prediction: str = "eps", loss_fn: Optional["LossFn"] = None) -> torch.Tensor:
    """Forward and backward the diffusion loss over the batch, `micro_batch` images at a time (all at once
    when None), adding into .grad; returns the batch's mean loss, detached.

    Each chunk's loss is weighted by its share of the batch, so the summed gradient is the full
    batch's mean-loss gradient (every layer here is per-sample: GroupNorm, no BatchNorm), while
    only one chunk's activations are alive at a time. Under DDP only the last chunk all-reduces.
    `loss_fn(net, x0, t, noise, y)` replaces the diffusion loss (a distillation objective's)."""
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
                yp = None if y is None else y[part]
                loss = diffusion_loss(net, schedule, x0[part], t[part], noise[part], yp, min_snr_gamma, prediction) \
                    if loss_fn is None else loss_fn(net, x0[part], t[part], noise[part], yp)
            (loss * share).backward()
        total += loss.detach() * share
    return total


class _SignalCatcher:
    """Turn SIGINT/SIGTERM into a flag checked between steps (restored on exit). Inside `urgent()`
    (a preview, which can take minutes) a signal stops at once instead."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}
        self._urgent = False

    @contextlib.contextmanager
    def urgent(self):
        self._urgent = True
        try:
            yield
        finally:
            self._urgent = False

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if not first or self._urgent:  # a second Ctrl-C, or a long phase: stop now
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# the named pieces of a training step (benchmark.TrainStep takes the same ones)

@dataclass
class Batch:
    x0: torch.Tensor  # (B, 1, 28, 28) in [-1, 1]
    t: torch.Tensor  # (B,) timesteps
    noise: torch.Tensor  # (B, 1, 28, 28)
    y: Optional[torch.Tensor]  # (B,) labels, null_label where dropped; None for unconditional models


def t_logit_normal(tc) -> Optional[tuple[float, float]]:
    """(mean, std) of logit(t/T) when the run draws timesteps logit-normally, else None (uniform)."""
    return (tc.t_logit_mean, tc.t_logit_std) if tc.t_sampling == "logit-normal" else None


def draw_batch(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, generator: torch.Generator, *,
               timesteps: int, cond_drop_prob: float, null_label: Optional[int],
               shard: slice = slice(None), t_logit_normal: Optional[tuple[float, float]] = None) -> Batch:
    """The images at `idx`, and their timesteps, noise and label drops from `generator`. The draws
    are made for the whole global batch on every rank and then sharded, so N processes see exactly
    the images, timesteps and noise that one process would. Timesteps are uniform, or with
    t_logit_normal = (mean, std) logit-normal (schedule.logit_normal_timesteps)."""
    B, device = idx.shape[0], images.device
    if t_logit_normal is None:
        t = torch.randint(0, timesteps, (B,), device=device, generator=generator)
    else:
        t = logit_normal_timesteps(timesteps, B, *t_logit_normal, generator, device=device)
    noise = torch.randn((B, 1, 28, 28), device=device, generator=generator)
    drop = torch.rand(B, device=device, generator=generator) < cond_drop_prob
    idx, t, noise, drop = idx[shard], t[shard], noise[shard], drop[shard]
    y = None
    if null_label is not None:
        y = torch.where(drop, torch.full_like(labels[idx], null_label), labels[idx])
    return Batch(to_model_range(images[idx]), t, noise, y)


# loss_fn(net, x0, t, noise, y) -> the batch's mean loss: an objective other than the diffusion loss
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass
class Objective:
    """What the loop trains on: `n` examples, a batch of them drawn by `draw(idx, generator, shard)`,
    and the loss (None: the diffusion loss of schedule.py). The default is DDPM's (`image_objective`);
    distill.py brings its own: the teacher's noise -> image pairs, or a teacher ODE step."""
    n: int
    draw: Callable[[torch.Tensor, torch.Generator, slice], Batch]
    loss_fn: Optional[LossFn] = None


def image_objective(cfg: RunConfig, images: torch.Tensor, labels: torch.Tensor) -> Objective:
    """The diffusion objective on the training images: uniform (or logit-normal) timesteps, fresh
    noise, labels dropped for classifier-free guidance."""
    tc = cfg.train

    def draw(idx: torch.Tensor, g: torch.Generator, shard: slice) -> Batch:
        return draw_batch(images, labels, idx, g, timesteps=cfg.diffusion.timesteps, cond_drop_prob=tc.cond_drop_prob,
                          null_label=cfg.model.num_classes, shard=shard, t_logit_normal=t_logit_normal(tc))
    return Objective(int(images.shape[0]), draw)


class TrainState:
    """What a checkpoint holds: the network, its EMA copy, AdamW, and the counters."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # initial weights from the run's seed alone
            torch.manual_seed(_mix(cfg.train.seed, 0, 3))
            self.model = build_model(cfg.model, cfg.diffusion.timesteps).to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                     betas=(0.9, cfg.train.adam_beta2))
        self.step, self.skipped = 0, 0
        self.run_id = uuid.uuid4().hex  # which run a directory and its checkpoints belong to
        self.made_by = "distill" if cfg.distill.distilled else "train"  # the command its checkpoints name

    def resume(self, path: str, device: torch.device) -> dict:
        """Continue from a checkpoint of the same run, made by the same command (config.check_resume
        decides what may differ)."""
        ck = ckpt_io.load(path, map_location=device)
        try:
            ckpt_io.check_made_by(ck, self.made_by, path)
            check_resume(ckpt_io.config_of(ck, str(path)), self.cfg)
        except ConfigError as e:
            raise TrainingError(str(e)) from None
        ckpt_io.load_state(self.model, ck["model"], str(path))
        ckpt_io.load_state(self.ema, ck.get("ema") or ck["model"], str(path))
        if "optimizer" in ck:
            self.opt.load_state_dict(ck["optimizer"])
        self.step, self.skipped = int(ck["step"]), int(ck.get("skipped", 0))
        self.run_id = ck.get("run_id")  # None for a checkpoint from before run ids: RunFiles.prepare decides
        return ck

    def checkpoint(self, epoch: int, elapsed_s: float) -> dict:
        return ckpt_io.training_state(self.cfg, self.step, epoch, self.model, self.ema, self.opt, self.skipped,
                                      elapsed_s, self.run_id, self.made_by)


def training_step(state: TrainState, net, schedule: Schedule, batch: Batch, lr: float, device: torch.device,
                  amp: Optional[torch.dtype], loss_fn: Optional[LossFn] = None) -> torch.Tensor:
    """Set the learning rate and accumulate the batch's gradients; returns its loss (detached). The
    caller decides, from the loss, whether to `apply_update` (DDP ranks agree on it first)."""
    for group in state.opt.param_groups:
        group["lr"] = lr
    state.opt.zero_grad(set_to_none=True)
    tc = state.cfg.train
    return accumulate_gradients(net, schedule, batch.x0, batch.t, batch.noise, batch.y, device, amp, tc.micro_batch,
                                tc.min_snr_gamma, state.cfg.model.prediction, loss_fn)


def apply_update(state: TrainState) -> None:
    """Clip the gradient, step AdamW, update the EMA weights, count the step."""
    tc = state.cfg.train
    if tc.grad_clip:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    state.opt.step()
    ema_update(state.ema, state.model, tc.ema_decay, state.step, tc.ema_gamma)


# ---------------------------------------------------------------------------------------------
# the run directory


# ---------------------------------------------------------------------------------------------
# which run: a preset, a config file or a checkpoint, then the options given


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: RunConfig, data: Split, run_dir: Optional[str | os.PathLike] = None, *, resume: Optional[str] = None,
          progress: bool = True, log: Callable[[str], None] = print,
          step_hook: Optional[Callable[[int, float], None]] = None,
          objective: Optional[Callable[[RunConfig, torch.Tensor, torch.Tensor], Objective]] = None,
          init: Optional[Callable[[TrainState], None]] = None) -> TrainResult:
    """Train (or resume) a run of `cfg`, a finished config (config.resolve's: rundir.run_config and
    md.train resolve theirs). With `run_dir` it writes checkpoints, previews and loss.csv there;
    without, it trains in memory only. The result holds the EMA model as a `Diffusion`.
    `objective(cfg, images, labels)` replaces the diffusion objective (image_objective) and
    `init(state)` sets a fresh run's first weights (a student starts as its teacher)."""
    if cfg.distill.distilled and objective is None:  # a student's config trained on the data: not a student
        raise TrainingError(f"this is a distilled student's config (teacher {cfg.distill.teacher}); train trains "
                            "models from data: make or resume students with `mnist-diffusion distill`")
    if cfg.sampling == SamplingConfig():  # the resolver (config.resolve) chooses it; train never does
        raise ConfigError("train takes a finished config and this one has no sampling section: resolve it first "
                          "(config.resolve, rundir.run_config or md.train)")
    cfg, data = bind_data(cfg, data, log)
    world, device = distributed.setup(resolve_device(cfg.train.device))
    files = RunFiles(Path(run_dir) if run_dir is not None and world.main else None)  # only rank 0 writes
    try:
        return _train(cfg, data, files, world, device, resume=resume, progress=progress,
                      log=log if world.main else _silent, step_hook=step_hook,
                      objective=objective or image_objective, init=init)
    finally:
        files.close()
        distributed.teardown(world)


def _train(cfg: RunConfig, data: Split, files: RunFiles, world: "distributed.World", device: torch.device,
           *, resume, progress, log, step_hook, objective, init) -> TrainResult:
    tc = cfg.train
    if tc.batch_size % world.size:
        raise TrainingError(f"--batch-size {tc.batch_size} must be divisible by the {world.size} processes")
    amp = resolve_precision(tc.precision, device)
    if amp == torch.float16:  # fp16 gradients underflow without loss scaling, which this loop does not do
        raise TrainingError("--precision fp16 trains without loss scaling here; use bf16 (or auto, fp32)")
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    images, labels = _split_tensors(data, tc.subset, tc.batch_size, device)

    # 1. the state: fresh, or the checkpoint's; the run directory checked (and locked) before any work
    state = TrainState(cfg, device)
    if init is not None and not resume:
        init(state)
    ck = state.resume(resume, device) if resume else {}
    files.prepare(state, checkpoint_bytes=16 * count_parameters(state.model), resume=resume)
    with _SignalCatcher() as sig, sig.urgent():  # a distillation draws its teacher pairs here, under the lock
        try:
            source = objective(cfg, images, labels)
        except KeyboardInterrupt:
            kept = (f"the teacher pairs drawn so far are kept in {files.path / 'pairs'}: run the same command again "
                    "to continue" if state.made_by == "distill" and files.path else None)
            raise Interrupted(sig.signum or signal.SIGINT, files.last, state.made_by,
                              kept or "stopped before training began") from None
    n, spe = source.n, steps_per_epoch(source.n, tc.batch_size)
    total = planned_steps(cfg, n)
    elapsed_before = float(ck.get("elapsed_s", files.begin(cfg, state.step, state.run_id)))  # old ones: loss.csv
    if resume:
        log(f"resumed from {resume} at step {state.step}")
    net = state.model
    if world.active:  # gradients are averaged over ranks: with equal shards that is the global-batch gradient
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    log(f"training {cfg.model.name} ({count_parameters(state.model):,} parameters) on {tc.dataset} ({n} images) for "
        f"{total} steps on {device}" + (f" on {world.size} processes" if world.active else "")
        + f", {describe_precision(tc.precision, device)}")

    t_start, start_step, window = time.time(), state.step, _Window()
    loss_value, time_up, perm, perm_epoch = float("nan"), False, None, -1
    state.model.train()
    with _SignalCatcher() as sig, tqdm(total=total, initial=state.step, desc="training", unit="step",
                                       disable=not progress or not world.main, dynamic_ncols=True) as bar:
        while state.step < total and not time_up:
            # 2. a batch: epoch e's permutation from (seed, e), step k's draws from (seed, k)
            epoch, i = divmod(state.step, spe)
            if epoch != perm_epoch:
                g_epoch = torch.Generator().manual_seed(_mix(tc.seed, epoch, 1))
                perm_epoch, perm = epoch, torch.randperm(n, generator=g_epoch).to(device)
            g = torch.Generator(device=device).manual_seed(_mix(tc.seed, state.step, 2))
            batch = source.draw(perm[i * tc.batch_size:(i + 1) * tc.batch_size], g, slice(world.rank, None, world.size))
            # 3. gradients; the ranks agree on the loss and on stopping before anyone updates
            loss = training_step(state, net, schedule, batch, lr_at(cfg, state.step, total), device, amp,
                                 source.loss_fn)
            time_up = bool(tc.time_limit) and time.time() - t_start > tc.time_limit * 60
            loss_value, (stop, time_up) = distributed.agree(world, float(loss), (sig.signum is not None, time_up),
                                                            device)
            if math.isfinite(loss_value):
                apply_update(state)
                window.add(loss_value)
            elif tc.nonfinite == "stop":
                raise NonFiniteLoss(f"loss became {loss_value} at step {state.step + 1}; "
                                    f"{_what_is_kept(files.path)}. Lower --lr, or pass --skip-nonfinite")
            else:
                state.skipped += 1  # its gradients are dropped by the next step's zero_grad
            state.step += 1
            bar.update(1)
            if step_hook is not None:
                step_hook(state.step, loss_value)
            # 4. log, checkpoint, preview; stop when asked
            step, done, elapsed = state.step, state.step == total or time_up, elapsed_before + time.time() - t_start
            if step % tc.log_interval == 0 or step == total:
                row = window.row(cfg, step, spe, total, state.skipped, elapsed)
                files.log(row)
                bar.set_postfix(loss=row["loss"][:6], img_s=row["images_per_s"].split(".")[0])
            if time_up and step < total:
                log(f"time limit of {tc.time_limit:g} min reached at step {step}")
            periodic = step % (tc.save_interval or spe) == 0
            if periodic or done or stop:
                files.save(state.checkpoint(step // spe, elapsed), periodic, tc.keep_checkpoints)
            if step % (tc.sample_interval or spe) == 0 or done:
                _preview(files, state, device, sig, step // spe, elapsed)
            if stop and not done:
                raise Interrupted(sig.signum or signal.SIGTERM, files.last, state.made_by)
    if state.step == start_step:  # nothing left to train: still leave a loadable last.pt
        files.save(state.checkpoint(state.step // spe, elapsed_before), False, 0)
    files.finish(log)
    sums = tuple(distributed.gather_floats(world, distributed.weights_checksum(state.model), device))
    if any(v != sums[0] for v in sums):
        raise TrainingError(f"weights differ between the {world.size} ranks (checksums "
                            f"{', '.join(f'{v:.6f}' for v in sums)}); the run is not trustworthy")
    diff = Diffusion(state.ema, cfg, device=device, precision=tc.precision, step=state.step, ema=True)
    return TrainResult(step=state.step, final_loss=loss_value, checkpoint=files.last, seconds=time.time() - t_start,
                       world_size=world.size, rank_checksums=sums, diffusion=diff, start_step=start_step)


def _preview(files: RunFiles, state: TrainState, device: torch.device, sig: _SignalCatcher, epoch: int,
             elapsed: float) -> None:
    """files.preview, stoppable within a moment: a signal during it (a big grid takes minutes) saves
    the step if it was not saved yet and stops the run."""
    try:
        with sig.urgent():
            files.preview(state, state.step, device)
    except KeyboardInterrupt:
        if sig.signum is None:
            raise
        if files.saved_step != state.step:
            files.save(state.checkpoint(epoch, elapsed), False, 0)
        raise Interrupted(sig.signum, files.last, state.made_by) from None
    state.model.train()


def _split_tensors(data: Split, subset: Optional[int], batch_size: int, device: torch.device):
    """The training images (uint8) and labels on the device: 47 MB for MNIST; batches are index gathers."""
    images = torch.as_tensor(data.images)
    labels = torch.zeros(len(images), dtype=torch.long) if data.labels is None else torch.as_tensor(data.labels).long()
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    if images.shape[0] < batch_size:
        raise TrainingError(f"--batch-size {batch_size} is larger than the {images.shape[0]} training images")
    return images.to(device), labels.to(device)


class _Window:
    """The loss and speed since the last loss.csv row."""

    def __init__(self):
        self.loss, self.n, self.t = 0.0, 0, time.time()

    def add(self, loss: float) -> None:
        self.loss, self.n = self.loss + loss, self.n + 1

    def row(self, cfg: RunConfig, step: int, spe: int, total: int, skipped: int, elapsed: float) -> dict:
        ips = self.n * cfg.train.batch_size / max(time.time() - self.t, 1e-9)
        row = {"step": step, "epoch": f"{step / spe:.3f}", "loss": f"{self.loss / max(self.n, 1):.6f}",
               "lr": f"{lr_at(cfg, step - 1, total):.3e}", "images_per_s": f"{ips:.1f}", "skipped": skipped,
               "elapsed_s": f"{elapsed:.1f}"}
        self.__init__()
        return row


def _silent(_msg: str) -> None:
    pass
