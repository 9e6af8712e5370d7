"""Speed and memory of a model on a device: training images/s, sampling time per sampler, peak
memory, parameters, checkpoint size, and interleaved A/B comparisons (precision, channels_last,
torch.compile). Every function returns a plain dict that the CLI prints and writes as JSON.

How the numbers are taken:
- Training steps are real ones (the loss, backward, gradient clipping, AdamW step and EMA update
  of training.py) on random uint8 images held in memory like the real split; the pixel values do
  not change the cost. Warm-up steps are not timed; the rate is the median over several windows,
  each sized from the warm-up to last about `window_seconds`.
- Sampling times `sampling.generate` for one batch of images. A sampler with more network
  evaluations than `max_full_steps` (ddpm's 1000) is timed over a few steps and extrapolated;
  its entry says so.
- Peak memory comes from a fresh subprocess that only trains, so earlier allocations of this
  process (other variants, sampling) cannot inflate it.
- A/B comparisons alternate windows of A and B in one process, so machine noise hits both alike.
- Utilisation: the FLOPs of one training step are counted (torch.utils.flop_counter.FlopCounterMode:
  matmul, convolution and attention FLOPs, 2 per multiply-add, forward and backward), the machine's
  bf16 and fp32 matmul peak is timed in the same run, and the training rate is quoted as a share of
  the peak of the precision it trained at.

Not here: speed targets (docs/RESULTS.md holds measured tables, docs/BENCHMARKS.md how they are measured), sample quality (evaluation.py).
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .config import RunConfig, SamplingConfig, preset, resolve
from .device import autocast, choose_precision, describe_precision, resolve_device, resolve_precision
from .diffusion import Diffusion
from .models import count_parameters, default_config
from .sampling import generate, plan
from .schedule import make_schedule
from .training import TrainState, apply_update, draw_batch, t_logit_normal, training_step

FORMAT = "mnist-diffusion-benchmark/1"
TRAIN_IMAGES = 60_000  # the in-memory "split" the benchmark batches from: MNIST's size, so memory matches a run
COMPARISONS = ("precision", "channels_last", "compile")
# the samplers timed (euler costs what ddim does per evaluation, heun twice per grid point)
BENCH_SAMPLERS = ("ddpm", "ddim", "dpmpp")


class BenchmarkError(ValueError):
    """A benchmark option or setting cannot be honoured; the message says which."""


@dataclass(frozen=True)
class Settings:
    """How long to measure. `quick()` is for tests and CI smoke runs, not for published numbers."""
    warmup_steps: int = 5  # untimed training steps (more when torch.compile is on: see compile_warmup)
    windows: int = 5  # timed windows; the median is reported
    window_seconds: float = 3.0  # target length of one window
    max_window_steps: int = 1000
    compile_warmup: int = 3  # extra untimed steps for compiled variants (compilation happens here)
    sample_images: int = 64  # one batch
    sample_repeats: int = 3  # full sampling runs per sampler; the median is reported
    max_full_steps: int = 100  # samplers with more evaluations are timed on `timed_steps` and extrapolated
    timed_steps: int = 20
    memory_steps: int = 10  # training steps in the memory subprocess
    full_sampling: bool = False  # time every sampler fully, even ddpm at 1000 steps
    peak_size: Optional[int] = None  # the matmul peak's n (n x n by n x n); None: 2048, 8192 on CUDA
    peak_repeats: int = 5  # timed repetitions per precision after warm-up; the fastest is reported
    peak_seconds: float = 0.5  # target length of one repetition

    @classmethod
    def quick(cls) -> "Settings":
        return cls(warmup_steps=2, windows=3, window_seconds=0.2, compile_warmup=2, sample_repeats=1,
                   timed_steps=5, memory_steps=3, peak_size=512, peak_repeats=3, peak_seconds=0.05)


# ---------------------------------------------------------------------------------------------
# machine

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return _cpu_model()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, including how busy the machine was when we started."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads the work's end and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------------------------------
# one training step, as training.py takes it

class TrainStep:
    """One training step as training.py takes it (training.draw_batch, training_step, apply_update on a
    training.TrainState), on random images held in memory like the real split.

    The variant options are those `--compare` switches: autocast dtype, channels_last memory
    format and torch.compile of the network (the loss, optimiser and EMA stay eager, as in training).
    """

    def __init__(self, cfg: RunConfig, device: torch.device, batch_size: int, amp: Optional[torch.dtype],
                 channels_last: bool = False, compile: bool = False, seed: int = 0):
        self.cfg, self.device, self.batch_size, self.amp = cfg, device, batch_size, amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
        self.state = TrainState(cfg.replace(train={"seed": seed}), device)  # every variant: the same weights
        self.model = self.state.model.to(memory_format=self.memory_format)
        self.ema = self.state.ema.to(memory_format=self.memory_format)
        self.net = torch.compile(self.model) if compile else self.model
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (TRAIN_IMAGES, 28, 28), dtype=torch.uint8, generator=g).to(device)
        self.labels = torch.randint(0, 10, (TRAIN_IMAGES,), generator=g).to(device)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.model.train()

    def __call__(self) -> float:

        idx = torch.randint(0, TRAIN_IMAGES, (self.batch_size,), device=self.device, generator=self.gen)
        batch = draw_batch(self.images, self.labels, idx, self.gen, timesteps=self.schedule.timesteps,
                           cond_drop_prob=self.cfg.train.cond_drop_prob, null_label=self.cfg.model.num_classes,
                           t_logit_normal=t_logit_normal(self.cfg.train))
        batch.x0 = batch.x0.contiguous(memory_format=self.memory_format)
        loss = training_step(self.state, self.net, self.schedule, batch, self.cfg.train.lr, self.device, self.amp)
        value = float(loss)  # training reads the loss every step (finiteness check): a sync point
        apply_update(self.state)
        self.state.step += 1
        return value

    def eval_step(self, batch: int) -> Callable[[], None]:
        """One network evaluation over `batch` images without gradients: the cost of one sampler step."""
        x = torch.randn((batch, 1, 28, 28), device=self.device, generator=self.gen)
        x = x.contiguous(memory_format=self.memory_format)
        t = torch.full((batch,), self.schedule.timesteps // 2, device=self.device, dtype=torch.long)

        def run() -> None:
            with torch.no_grad(), autocast(self.device, self.amp):
                self.net(x, t)
        return run

    def checkpoint_state(self) -> dict:
        """The dict training.py saves as last.pt (model, EMA, AdamW moments, config, counters)."""
        return self.state.checkpoint(0, 0.0)


def saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


# ---------------------------------------------------------------------------------------------
# timing

def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line[:200]}" if line else type(e).__name__


def interleaved_windows(fns: dict[str, Callable[[], object]], device: torch.device, settings: Settings,
                        warmup: Optional[dict[str, int]] = None) -> dict[str, dict]:
    """Time each callable in alternating windows (A B A B ...) after untimed warm-up calls.

    Returns, per name, {"seconds_per_call": [one per window], "calls_per_window", "warmup_seconds"},
    or {"failed": reason} when a callable raised (warm-up included: torch.compile fails there)."""
    out: dict[str, dict] = {}
    live: dict[str, Callable] = {}
    for name, fn in fns.items():
        n_warm = max(1, (warmup or {}).get(name, settings.warmup_steps))
        try:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(n_warm - 1):
                fn()
            synchronize(device)
            t1 = time.perf_counter()
            fn()  # the last warm-up call, timed alone, sizes the windows
            synchronize(device)
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001  (any failure of a variant is a result, not a crash)
            out[name] = {"failed": _first_line(e)}
            continue
        per_call = max(t2 - t1, 1e-6)
        calls = int(min(settings.max_window_steps, max(1, round(settings.window_seconds / per_call))))
        out[name] = {"seconds_per_call": [], "calls_per_window": calls, "warmup_calls": n_warm,
                     "warmup_seconds": t2 - t0}
        live[name] = fn
    for _ in range(settings.windows):
        for name, fn in live.items():
            if "failed" in out[name]:
                continue
            calls = out[name]["calls_per_window"]
            try:
                synchronize(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                synchronize(device)
            except Exception as e:  # noqa: BLE001
                out[name] = {"failed": _first_line(e)}
                continue
            out[name]["seconds_per_call"].append((time.perf_counter() - t0) / calls)
    return out


def _rate(timing: dict, items_per_call: int) -> dict:
    """images/s summary of one interleaved_windows entry."""
    if "failed" in timing:
        return {"failed": timing["failed"]}
    rates = [items_per_call / s for s in timing["seconds_per_call"]]
    return {"images_per_s": statistics.median(rates), "windows_images_per_s": rates,
            "step_ms": 1000 * statistics.median(timing["seconds_per_call"]),
            "steps_per_window": timing["calls_per_window"], "warmup_steps": timing["warmup_calls"],
            "warmup_seconds": timing["warmup_seconds"]}


# ---------------------------------------------------------------------------------------------
# the measurements

def training_throughput(step: TrainStep, settings: Settings) -> dict:
    timing = interleaved_windows({"train": step}, step.device, settings)["train"]
    if "failed" in timing:
        raise BenchmarkError(f"a training step failed: {timing['failed']}")
    return {"batch_size": step.batch_size, **_rate(timing, step.batch_size)}


def sampling_times(model: torch.nn.Module, cfg: RunConfig, device: torch.device, amp: Optional[torch.dtype],
                   settings: Settings, steps: Optional[dict[str, int]] = None) -> dict[str, dict]:
    """Seconds to draw `settings.sample_images` images (one batch) with each sampler.

    A sampler with more evaluations than `settings.max_full_steps` (unless `full_sampling`) is
    timed over `timed_steps` steps, on a schedule of that many timesteps (the same network and
    the same work per step), and its total is extrapolated as (seconds per step) x (steps)."""

    _check_sampler_steps(steps, cfg.diffusion.timesteps)
    precision = _precision_name(amp)
    diff = Diffusion(model, cfg, device=device, precision=precision)
    k = settings.timed_steps
    short = Diffusion(model, cfg.replace(diffusion={"timesteps": max(2, k)}, sampling={"steps": None}), device=device,
                      precision=precision)
    n = settings.sample_images
    out = {}
    for name in BENCH_SAMPLERS:
        # the planner's steps (a rule longer than the model's T, ddim's 50 on a T = 20 model, is every
        # timestep); steps asked for are never cut short (_check_sampler_steps), so the table never shows
        # steps it did not run
        planned = plan(diff, SamplingConfig(name, steps=(steps or {}).get(name)))
        n_steps = planned.steps
        full = settings.full_sampling or n_steps <= settings.max_full_steps
        timed, options = (diff, planned) if full else \
            (short, plan(short, SamplingConfig(name, steps=k)))
        generate(diff, n, plan(diff, SamplingConfig(name, steps=2)), batch_size=n)  # warm-up, untimed
        runs = []
        for r in range(settings.sample_repeats if full else 1):
            synchronize(device)
            t0 = time.perf_counter()
            generate(timed, n, options, seed=r, batch_size=n)
            synchronize(device)
            runs.append(time.perf_counter() - t0)
        if full:
            seconds = statistics.median(runs)
            how = "measured" + (f" (median of {len(runs)} runs)" if len(runs) > 1 else "")
            entry = {"method": "measured", "runs_seconds": runs}
        else:
            seconds = runs[0] / k * n_steps
            how = f"extrapolated from {k} timed steps"
            entry = {"method": "extrapolated", "timed_steps": k, "step_ms": 1000 * runs[0] / k}
        out[name] = {"steps": n_steps, "images": n, "seconds": seconds, "images_per_s": n / seconds,
                     "how": how, **entry}
    return out


# ---------------------------------------------------------------------------------------------
# utilisation: counted FLOPs against the machine's measured matmul peak

FLOPS_HOW = ("torch.utils.flop_counter.FlopCounterMode over one training step (forward and backward of the "
             "loss): matmul, convolution and attention FLOPs, 2 per multiply-add; elementwise ops, norms and "
             "the optimiser are not counted")


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """The FLOPs torch.utils.flop_counter counts while `fn()` runs: matmuls, convolutions and attention,
    2 per multiply-add, backward included. Attention on CPU (a kernel torch's table lacks) is counted
    with torch's own attention formulas."""
    from torch.utils.flop_counter import FlopCounterMode
    ops = (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
           ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop))
    cpu_attention = {getattr(torch.ops.aten, name): f for name, f in ops if hasattr(torch.ops.aten, name)}
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn()
    return int(counter.get_total_flops())


def training_flops(step: TrainStep) -> dict:
    """FLOPs of one real training step (the step is taken: it is one more untimed step), per image."""
    flops = count_flops(step)
    return {"flops_per_step": flops, "flops_per_image": flops / step.batch_size, "flops_how": FLOPS_HOW}


PEAK_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int, seconds: float) -> float:
    """TFLOP/s of an n x n by n x n matmul (2 n^3 FLOPs) in `dtype` on `device`: two untimed calls, then
    `repeats` timed repetitions of as many calls as fill about `seconds`; the fastest repetition counts."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn((n, n), generator=g).to(device=device, dtype=dtype) for _ in range(2))
    out = torch.empty((n, n), device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    synchronize(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    synchronize(device)
    calls = max(1, round(seconds / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / calls)
    return 2 * n ** 3 / best / 1e12


def matmul_peak(device: torch.device, amp: Optional[torch.dtype], settings: Settings) -> dict:
    """This machine's bf16 and fp32 matmul rate (and fp16's when training runs fp16), with the threads
    and device the benchmark uses. A precision the device cannot multiply in is null, with the reason."""
    n = settings.peak_size or (8192 if device.type == "cuda" else 2048)  # a GPU needs a large one to reach its peak
    out: dict = {"matmul_size": n, "repeats": settings.peak_repeats,
                 "how": f"{n}x{n} @ {n}x{n} torch.mm, 2 n^3 FLOPs, fastest of {settings.peak_repeats} "
                        f"repetitions of ~{settings.peak_seconds:g} s after 2 untimed calls"}
    for name in ("bf16", "fp32") + (("fp16",) if amp == torch.float16 else ()):
        try:
            out[f"{name}_tflops"] = matmul_tflops(device, PEAK_DTYPES[name], n, settings.peak_repeats,
                                                  settings.peak_seconds)
        except Exception as e:  # noqa: BLE001  (a device without that precision is a result)
            out[f"{name}_tflops"] = None
            out.setdefault("failed", {})[name] = _first_line(e)
    if device.type == "cuda":
        out["fp32_allows_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return out


def utilisation(training: dict, peak: Optional[dict], precision: str) -> dict:
    """Achieved TFLOP/s (images/s x counted FLOPs per image) and its share of the peak of the precision
    training ran at (`share_of_peak`, against `share_of_peak_against`), and of every peak measured."""
    achieved = training["images_per_s"] * training["flops_per_image"] / 1e12
    out: dict = {"achieved_tflops": achieved}
    if peak is not None:
        shares = {name: achieved / peak[f"{name}_tflops"] for name in PEAK_DTYPES if peak.get(f"{name}_tflops")}
        out.update(share_of_peak=shares.get(precision), share_of_peak_against=precision,
                   share_of_each_peak=shares)
    return out


# ---------------------------------------------------------------------------------------------
# peak memory, in a fresh process

def _rss_now() -> dict:
    """Current and peak resident set size of this process, in bytes, where the OS tells us."""
    status = Path("/proc/self/status")
    if status.exists():
        fields = {}
        for line in status.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) * 1024  # reported in kB
        if "VmHWM" in fields:
            return {"rss": fields.get("VmRSS"), "peak": fields["VmHWM"], "source": "/proc/self/status VmHWM"}
    try:
        import resource
    except ImportError:  # Windows
        return {"rss": None, "peak": None, "source": "unavailable"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    return {"rss": None, "peak": peak * scale, "source": "getrusage ru_maxrss"}


def _memory_probe(spec: dict) -> dict:
    """Runs in the subprocess: build, then train `steps` steps; report RSS before and the peak."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cfg = RunConfig.from_dict(spec["config"])
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]
    step = TrainStep(cfg, device, spec["batch_size"], amp)
    before = _rss_now()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["steps"]):
        step()
    synchronize(device)
    after = _rss_now()
    out = {"peak_rss_bytes": after["peak"], "rss_before_training_bytes": before["rss"], "source": after["source"],
           "steps": spec["steps"], "batch_size": spec["batch_size"]}
    if device.type == "cuda":
        out["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return out


def peak_memory(cfg: RunConfig, device: torch.device, batch_size: int, amp: Optional[torch.dtype],
                settings: Settings, timeout: float = 900) -> dict:
    """Peak memory of training at `batch_size`, measured in a fresh Python process that imports
    torch, builds the model and data as training does, and trains `memory_steps` steps."""
    spec = {"config": cfg.to_dict(), "device": str(device), "batch_size": batch_size,
            "precision": _precision_name(amp), "steps": settings.memory_steps, "threads": torch.get_num_threads()}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # so the child imports this very package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        r = subprocess.run([sys.executable, "-m", "mnist_diffusion.benchmark", "--memory-probe", json.dumps(spec)],
                           capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"failed": f"the memory subprocess took longer than {timeout:.0f} s"}
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": f"the memory subprocess exited with {r.returncode}: {tail[:200]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _precision_name(amp: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


# ---------------------------------------------------------------------------------------------
# A/B comparisons

def amp_dtype_for(device: torch.device) -> torch.dtype:
    """The reduced precision --compare tests: bf16 autocast on CPU (also where `auto` picks fp32:
    the comparison shows why), AMP (bf16, else fp16) on GPUs."""
    if device.type == "cpu":
        return torch.bfloat16
    return resolve_precision("auto", device) or torch.float16


def compare(cfg: RunConfig, device: torch.device, batch_size: int, amp: Optional[torch.dtype], settings: Settings,
            which: tuple[str, ...] = COMPARISONS) -> dict[str, dict]:
    """For each comparison, A and B train (and evaluate the network once at the sampling batch, the
    cost of one sampler step) in alternating windows; ratio = B's median images/s over A's.
    precision: A is fp32, B the device's reduced precision. channels_last and compile: A is the
    default memory format / eager, B switches it on, both at `amp` (the run's precision)."""
    out = {}
    for what in which:
        if what == "precision":
            low = amp_dtype_for(device)
            variants = {"a": dict(amp=None), "b": dict(amp=low)}
            labels = ("fp32", f"{_precision_name(low)} autocast" if device.type == "cpu" else f"{_precision_name(low)} AMP")
        elif what == "channels_last":
            variants = {"a": dict(amp=amp), "b": dict(amp=amp, channels_last=True)}
            labels = ("contiguous", "channels_last")
        elif what == "compile":
            variants = {"a": dict(amp=amp), "b": dict(amp=amp, compile=True)}
            labels = ("eager", "torch.compile")
        else:
            raise BenchmarkError(f"unknown comparison {what!r}; choose from {', '.join(COMPARISONS)}")
        out[what] = {"a": labels[0], "b": labels[1], **_compare_pair(cfg, device, batch_size, settings, variants)}
    return out


def _compare_pair(cfg, device, batch_size, settings, variants: dict[str, dict]) -> dict:
    steps, failed = {}, {}
    for key, kw in variants.items():
        try:
            steps[key] = TrainStep(cfg, device, batch_size, **kw)
        except Exception as e:  # noqa: BLE001
            failed[key] = _first_line(e)
    if failed:
        return {"train_ratio": None, "sample_eval_ratio": None,
                "failed": "; ".join(f"{k}: {v}" for k, v in failed.items())}
    warm = {k: settings.warmup_steps + (settings.compile_warmup if variants[k].get("compile") else 0) for k in steps}
    train = interleaved_windows({k: steps[k] for k in steps}, device, settings, warmup=warm)
    evals = interleaved_windows({k: steps[k].eval_step(settings.sample_images) for k in steps}, device, settings,
                                warmup=warm)
    result = {"train": {k: _rate(train[k], batch_size) for k in steps},
              "sample_eval": {k: _rate(evals[k], settings.sample_images) for k in steps}}
    for part in ("train", "sample_eval"):
        a, b = result[part]["a"], result[part]["b"]
        bad = [f"{k}: {v['failed']}" for k, v in (("a", a), ("b", b)) if "failed" in v]
        if bad:
            result[f"{part}_ratio"] = None
            result["failed"] = "; ".join(bad)
        else:
            result[f"{part}_ratio"] = b["images_per_s"] / a["images_per_s"]
    return result


# ---------------------------------------------------------------------------------------------
# everything

def sampler_steps_arg(text: str) -> dict[str, int]:
    """An argparse type: NAME=N[,NAME=N...] -> {"ddpm": N, ...}"""
    import argparse
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name not in BENCH_SAMPLERS:
            raise argparse.ArgumentTypeError(f"expected NAME=STEPS with NAME one of {', '.join(BENCH_SAMPLERS)}, got {part!r}")
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
        out[name] = int(value)
    if not out:
        raise argparse.ArgumentTypeError(f"expected NAME=STEPS[,NAME=STEPS], got {text!r}")
    return out


def parse_comparisons(text: Optional[str]) -> tuple[str, ...]:
    """--compare's value: 'all', or a comma-separated subset of COMPARISONS; None: no comparisons."""
    if text is None:
        return ()
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    comparisons = COMPARISONS if wanted == ["all"] else tuple(wanted)
    if not comparisons or any(w not in COMPARISONS for w in comparisons):
        raise BenchmarkError(f"--compare {text}: choose from {', '.join(COMPARISONS)} or all")
    return comparisons


def resolve_config(preset_name: Optional[str] = None, model: Optional[str] = None, base_dim: Optional[int] = None,
                   micro_batch: Optional[int] = None) -> RunConfig:
    """A preset's config, with another network (at its canonical size), width or micro-batch: what
    `train` would run with these options (config.resolve, the one resolver)."""
    return resolve(preset(preset_name or "default"), {"model.name": model, "model.base_dim": base_dim,
                                                      "train.micro_batch": micro_batch}, model_defaults=default_config)


def run_from_options(preset_name: Optional[str] = None, *, model: Optional[str] = None, base_dim: Optional[int] = None,
                     micro_batch: Optional[int] = None, device: str = "auto", precision: str = "auto",
                     threads: Optional[int] = None, batch_size: int = 128, quick: bool = False,
                     sample_images: int = 64, full_sampling: bool = False, **kwargs) -> dict:
    """`run` for the options `mnist-diffusion benchmark` takes; records which preset the network is."""
    from dataclasses import replace


    cfg = resolve_config(preset_name, model, base_dim, micro_batch)
    _check_sampler_steps(kwargs.get("sampler_steps"), cfg.diffusion.timesteps)  # before anything is said or set
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    settings = replace(Settings.quick() if quick else Settings(), sample_images=sample_images,
                       full_sampling=full_sampling)
    chosen = choose_precision(precision, dev)
    log = kwargs.get("log") or (lambda _m: None)
    log(f"precision: {describe_precision(precision, dev)}")
    result = run(cfg, dev, batch_size=batch_size, amp=chosen.dtype, settings=settings, **kwargs)
    result["precision_reason"] = f"{precision}: {chosen.reason}"
    # the preset the model came from (None when --model or --base-dim replaced its network)
    name = preset_name or "default"
    result["preset"] = name if preset(name).model == cfg.model else None
    return result


def _check_sampler_steps(sampler_steps: Optional[dict[str, int]], timesteps: int) -> None:
    """The steps asked for, each a sampler of the table and no more than the model's T: a longer
    request would be run (and reported) as T steps, a number for steps that never ran."""
    for name, n in (sampler_steps or {}).items():
        if name not in BENCH_SAMPLERS:
            raise BenchmarkError(f"unknown sampler {name!r} in sampler steps; choose from {', '.join(BENCH_SAMPLERS)}")
        if n < 1:
            raise BenchmarkError(f"{name}: steps must be >= 1, got {n}")
        if n > timesteps:
            raise BenchmarkError(f"sampler steps {name}={n}: the model has {timesteps} timesteps, so {name} takes at "
                                 f"most {timesteps} steps")


def run(cfg: RunConfig, device: torch.device, *, batch_size: int = 128, amp: Optional[torch.dtype] = None,
        settings: Settings = Settings(), sampler_steps: Optional[dict[str, int]] = None, memory: bool = True,
        peak: bool = True, comparisons: tuple[str, ...] = (), log: Callable[[str], None] = lambda _m: None) -> dict:
    """The whole benchmark as one JSON-ready dict (docs/BENCHMARKS.md, "What each number means")."""
    _check_sampler_steps(sampler_steps, cfg.diffusion.timesteps)  # before any work
    result = {"format": FORMAT, "machine": machine_info(device),
              "model": {**asdict(cfg.model), "channel_mults": list(cfg.model.channel_mults)},
              "diffusion": asdict(cfg.diffusion), "precision": _precision_name(amp), "settings": asdict(settings),
              "micro_batch": cfg.train.micro_batch if cfg.train.micro_batch and cfg.train.micro_batch < batch_size
              else None}
    log("building the model and a training step")
    step = TrainStep(cfg, device, batch_size, amp)
    result["parameters"] = count_parameters(step.model)
    log(f"training: {settings.warmup_steps} warm-up steps, then {settings.windows} windows")
    result["training"] = training_throughput(step, settings)
    log("counting the FLOPs of one training step" + ("; timing the bf16 and fp32 matmul peak" if peak else ""))
    result["training"].update(training_flops(step))
    result["peak"] = matmul_peak(device, amp, settings) if peak else None
    result["training"].update(utilisation(result["training"], result["peak"], _precision_name(amp)))
    result["weights_bytes"] = saved_bytes(step.model.state_dict())
    result["checkpoint_bytes"] = saved_bytes(step.checkpoint_state())
    log("sampling: " + ", ".join(BENCH_SAMPLERS))
    result["sampling"] = sampling_times(step.ema, cfg, device, amp, settings, sampler_steps)
    del step
    if memory:
        log(f"peak memory: training at batch {batch_size} in a fresh process")
        result["memory"] = peak_memory(cfg, device, batch_size, amp, settings)
    if comparisons:
        log(f"comparisons (interleaved windows): {', '.join(comparisons)}")
        result["compare"] = compare(cfg, device, batch_size, amp, settings, comparisons)
    return result


# ---------------------------------------------------------------------------------------------
# the table

def _mb(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.1f} MB"


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def _tflops(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def _utilisation(r: dict) -> str:
    """'334 img/s x 1.11 GFLOP = 0.37 TFLOP/s = 14.2% of this machine's bf16 matmul peak (...)'."""
    t, peak = r["training"], r.get("peak")
    text = (f"{t['images_per_s']:,.0f} img/s x {t['flops_per_image'] / 1e9:.3g} GFLOP = "
            f"{_tflops(t['achieved_tflops'])} TFLOP/s")
    if peak is None:
        return text + " (matmul peak not measured: --no-peak)"
    against, share = t.get("share_of_peak_against"), t.get("share_of_peak")
    if share is None:
        return text + f"; {against} matmul peak failed: {peak.get('failed', {}).get(against, 'unknown')}"
    notes = [f"{_tflops(peak[f'{against}_tflops'])} TFLOP/s"]
    notes += [f"{name} {_tflops(peak[f'{name}_tflops'])}" for name in PEAK_DTYPES
              if name != against and peak.get(f"{name}_tflops")]
    return text + (f" = {share:.1%} of this machine's {against} matmul peak "
                   f"({'; '.join(notes)}; {peak['matmul_size']}^3)")


def format_table(r: dict) -> str:
    m, mc = r["machine"], r["model"]
    precision = "fp32" if r["precision"] == "fp32" else f"{r['precision']} autocast"
    lines = [
        f"model      {mc['name']} (base {mc['base_dim']}, mults {','.join(map(str, mc['channel_mults']))}, "
        f"x{mc['num_res_blocks']}), T = {r['diffusion']['timesteps']}, {precision}"
        + (f" ({r['precision_reason']})" if r.get("precision_reason") else "")
        + (f"; preset {r['preset']}" if r.get("preset") else ""),
        f"machine    {m['device_name']} ({m['device']}), {m['usable_cores']} of {m['cpu_count']} cores, "
        f"torch {m['torch']} with {m['torch_threads']} threads"
        + (f", load {m['load_average_1m']}" if "load_average_1m" in m else "") + f", {m['date']}",
        "",
        f"{'parameters':<34}{r['parameters']:>14,}",
        f"{'weights (state_dict)':<34}{_mb(r['weights_bytes']):>14}",
        f"{'checkpoint (model + EMA + AdamW)':<34}{_mb(r['checkpoint_bytes']):>14}",
    ]
    t = r["training"]
    ws = t["windows_images_per_s"]
    chunks = f" ({r['micro_batch']} at a time)" if r.get("micro_batch") else ""
    lines.append(f"{'training, batch ' + str(t['batch_size']) + chunks:<34}{t['images_per_s']:>9,.1f} img/s"
                 f"   step {t['step_ms']:.1f} ms; {len(ws)} windows {min(ws):,.1f}-{max(ws):,.1f} img/s")
    if "flops_per_image" in t:
        lines.append(f"{'utilisation (counted FLOPs)':<34}{_utilisation(r)}")
    mem = r.get("memory")
    if mem is not None:
        label = f"peak memory, training batch {mem.get('batch_size', t['batch_size'])}{chunks}"
        if "failed" in mem:
            lines.append(f"{label:<34}{'failed':>14}   {mem['failed']}")
        else:
            extra = f"   RSS ({mem['source']})"
            if mem.get("rss_before_training_bytes"):
                extra += f"; {_mb(mem['rss_before_training_bytes'])} before the first step"
            lines.append(f"{label:<34}{_mb(mem['peak_rss_bytes']):>14}{extra}")
            if "cuda_peak_allocated_bytes" in mem:
                lines.append(f"{'peak GPU memory (allocated)':<34}{_mb(mem['cuda_peak_allocated_bytes']):>14}")
    s = r["sampling"]
    n = next(iter(s.values()))["images"]
    lines += ["", f"sampling {n} images (one batch)",
              f"  {'sampler':<8}{'steps':>6}{'time':>10}{'img/s':>10}   how"]
    for name, e in s.items():
        lines.append(f"  {name:<8}{e['steps']:>6}{_seconds(e['seconds']):>10}{e['images_per_s']:>10.2f}   {e['how']}")
    if r.get("compare"):
        lines += ["", "comparisons (interleaved A/B windows; ratio = B / A, > 1 means B is faster)",
                  f"  {'what':<15}{'A':<13}{'B':<18}{'train B/A':>10}{'sampling B/A':>14}"]
        for what, c in r["compare"].items():
            head = f"  {what:<15}{c['a']:<13}{c['b']:<18}"
            if c.get("train_ratio") is None:
                lines.append(head + f"failed: {c.get('failed', 'unknown')}")
                continue
            note = ""
            if what == "compile":  # compilation happens in the warm-up: say what it cost
                note = f"   (B's warm-up, compilation included: {c['train']['b']['warmup_seconds']:.0f} s)"
            lines.append(head + f"{c['train_ratio']:>9.2f}x{c['sample_eval_ratio']:>13.2f}x" + note)
    return "\n".join(lines)


if __name__ == "__main__":  # the memory subprocess: python -m mnist_diffusion.benchmark --memory-probe SPEC
    if len(sys.argv) != 3 or sys.argv[1] != "--memory-probe":
        sys.exit("usage: python -m mnist_diffusion.benchmark --memory-probe JSON (used by `mnist-diffusion benchmark`)")
    print(json.dumps(_memory_probe(json.loads(sys.argv[2]))))
