"""Run configuration as frozen dataclasses with a strict JSON round trip.

Three parts, as in the paper's split of concerns: the network (`ModelConfig`), the forward
process (`DiffusionConfig`) and the optimisation (`TrainConfig`). No torch here, so configs can be
read, validated and printed without importing the heavy stack. Unknown keys and wrong types are
errors, never silently ignored: a typo in a config.json must not train the wrong model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key."""


DATASETS = ("mnist", "fashion_mnist")
CLASS_NAMES = {  # the datasets' classes, in label order
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
SCHEDULES = ("linear", "cosine", "flow")
PREDICTIONS = ("eps", "v", "flow")
LR_SCHEDULES = ("cosine", "wsd")
T_SAMPLINGS = ("uniform", "logit-normal")
MAX_CLUSTERS = 1000  # train.clusters: k-means clusters as classes (clusters.py)
MAX_LEVELS = 5  # resolution levels a 28x28 image can be halved into: 28, 14, 7, 4, 2
SAMPLERS = ("ddpm", "ddim", "dpmpp", "euler", "heun")
SPACINGS = ("uniform", "quadratic", "logsnr", "logsnr-capped", "student", "flow")
DISTILL_METHODS = ("pairs", "consistency")
MAX_GUIDANCE = 100.0
MAX_ETA = 10.0  # dpmpp's eta > 1 keeps exact marginals; beyond ~5 each step is nearly a fresh draw


def option(default, help: str, *, flag: Optional[str] = None, kind: Optional[str] = None,
           choices: Optional[tuple] = None, resumable: bool = False, cli: bool = True, research: bool = False,
           open_choices: bool = False):
    """A config field and what the command line needs to know of it (dataclass field metadata):
    its --help text, its flag (default --name-with-dashes), `kind` of number (positive, nonneg,
    unit = [0, 1)), `choices`, and whether it may change when a run is resumed. cli=False keeps it
    out of the command line (set through --config or the library); research=True keeps it out of
    --help (listed by --help-all): a knob kept for measurements, not for everyday use."""
    return field(default=default, metadata={"help": help, "flag": flag, "kind": kind, "choices": choices,
                                            "resumable": resumable, "cli": cli, "research": research,
                                            "open_choices": open_choices})


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("unet", "network name (see `mnist-diffusion models`)", flag="--model")
    base_dim: int = option(32, "channels at full resolution", kind="positive")
    channel_mults: tuple[int, ...] = option((1, 2, 2), "channel multiplier per resolution level, e.g. 1,2,2")
    num_res_blocks: int = option(2, "residual blocks per level", kind="positive")
    dropout: float = option(0.0, "dropout in the residual blocks", kind="unit")
    # None = unconditional; an int = number of classes for class-conditional models
    num_classes: typing.Optional[int] = option(None, "classes of a class-conditional model", cli=False)
    # what the network outputs: "eps" (the noise, Ho et al. 2020), "v" (sqrt(a_t) eps -
    # sqrt(1 - a_t) x_0, Salimans & Ho 2022) or "flow" (eps - x_0, the velocity of flow matching);
    # samplers always receive eps (schedule.eps_from_output)
    prediction: str = option("eps", "what the network learns to output: eps (the noise, default), v "
                                    "(Salimans & Ho 2022) or flow (eps - x0, flow matching; see --objective)",
                             choices=PREDICTIONS)

    # issue 47 lever b, the network's cost: the up path's residual blocks per level (each reads one
    # skip, the deepest first; the unread skips of a level are dropped) and the GroupNorms per block
    decoder_blocks: int = option(0, "residual blocks per level on the way up (0 = --num-res-blocks + 1, one per "
                                    "skip connection)", kind="nonneg", research=True)
    block_norms: int = option(2, "GroupNorms per residual block: 2 (before each convolution) or 1 (before the "
                                 "first only)", choices=(1, 2), research=True)

    def validate(self) -> None:
        _at_most(self, base_dim=1024, num_res_blocks=16, num_classes=100_000)
        if not self.channel_mults or any(int(m) <= 0 for m in self.channel_mults):
            raise ConfigError("model.channel_mults must be a non-empty list of positive integers")
        if len(self.channel_mults) > MAX_LEVELS:
            raise ConfigError(f"model.channel_mults has {len(self.channel_mults)} levels; 28x28 images allow at "
                              f"most {MAX_LEVELS} (28 -> 14 -> 7 -> 4 -> 2)")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2 or null, got {self.num_classes}")
        if self.decoder_blocks > self.num_res_blocks + 1:
            raise ConfigError(f"model.decoder_blocks {self.decoder_blocks}: a level has only num_res_blocks + 1 = "
                              f"{self.num_res_blocks + 1} skip connections to read")
        check_options(self)  # the metadata's bounds and choices, after the more specific messages above


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = option(1000, "T, the number of diffusion steps", kind="positive")
    schedule: str = option("cosine", "beta schedule", choices=SCHEDULES)

    def validate(self) -> None:
        if self.timesteps < 2 or self.timesteps > 100_000:
            raise ConfigError(f"diffusion.timesteps must be in [2, 100000], got {self.timesteps}")
        check_options(self)  # the metadata's bounds and choices, after the more specific messages above


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = option("mnist", "training data: mnist, fashion_mnist, folder:PATH (images, optionally in one "
                                   "folder per class) or npz:PATH (uint8 `images` (N, 28, 28), optional `labels`)")
    # the identity of the training set (data.data_sha256) and its class names: set by training from
    # the data itself; resuming on other data is refused
    data_sha256: typing.Optional[str] = option(None, "SHA-256 of the training images and labels", cli=False)
    classes: tuple[str, ...] = option((), "names of the classes of one's own labelled data", cli=False)
    # label-free conditioning (clusters.py): K > 0 trains on k-means cluster ids of the images instead
    # of labels; training records each cluster's size, and sampling draws clusters in that proportion
    clusters: int = option(0, "condition on K k-means clusters of the images instead of class labels (no labels "
                              "needed; sampling draws each image's cluster by the clusters' sizes; 0 = off)",
                           kind="nonneg")
    cluster_sizes: tuple[int, ...] = option((), "images per cluster, set by training", cli=False)
    epochs: int = option(20, "passes over the data", kind="positive", resumable=True)
    max_steps: typing.Optional[int] = option(None, "stop after this many optimiser steps, whatever --epochs says",
                                             kind="positive", resumable=True)
    subset: typing.Optional[int] = option(None, "train on the first N images only", kind="positive")
    batch_size: int = option(128, "images per optimiser step", kind="positive")
    # the gradients of a batch's chunks are summed before the step, so the update is the full
    # batch's while only one chunk's activations are alive
    micro_batch: typing.Optional[int] = option(None, "forward/backward N images at a time and sum the gradients: "
                                                     "same update, less memory", kind="positive", resumable=True)
    lr: float = option(2e-4, "peak learning rate of AdamW", kind="positive")
    weight_decay: float = option(0.0, "AdamW weight decay", kind="nonneg")
    adam_beta2: float = option(0.999, "AdamW's second-moment decay beta2 (EDM2 trains with 0.99: a shorter memory "
                                      "of the gradient's scale)", kind="unit", research=True)
    warmup_steps: int = option(200, "linear learning-rate warm-up", kind="nonneg")
    lr_decay: bool = option(True, "cosine decay to 10% over the planned steps", flag="--no-lr-decay")
    # warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): the peak rate held, then a linear
    # cool-down to 0 over the last share of the planned steps
    lr_schedule: str = option("cosine", "the rate after warm-up: cosine (to 10% over the planned steps) or wsd "
                                        "(constant, then linear to 0 over the last --lr-cooldown of them)",
                              choices=LR_SCHEDULES, research=True)
    lr_cooldown: float = option(0.2, "wsd: the share of the planned steps that cools the rate down to 0",
                                kind="unit", research=True)
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)", kind="nonneg")
    ema_decay: float = option(0.999, "decay of the EMA weights that sampling uses, warmed up as "
                              "min(decay, (1 + step) / (10 + step)) (so 0.999 is reached only after ~9,000 "
                              "steps; see --ema-gamma)", kind="unit")
    # EDM2's power-function EMA (Karras et al. 2024, eq. 3): beta_t = (1 - 1/t)^(gamma + 1) at step t,
    # the average of all weights so far with weight ~ tau^gamma, so its length is a share of the run
    # (relative std sqrt((g + 1) / ((g + 2)^2 (g + 3))): 0.19 at 2, 0.13 at 4, 0.09 at 8) at every
    # step, whatever the run's length. The classic warm-up above is close to gamma = 8 below 9,000 steps.
    ema_gamma: float = option(0.0, "power-function EMA (EDM2): average the weights so far with weight "
                                   "step^gamma (2: the last ~third of the run, 8: the last ~ninth); 0 = the "
                                   "classic --ema-decay warm-up", kind="nonneg", research=True)
    sample_interval: int = option(0, "steps between sample grids (0 = each epoch)", kind="nonneg", resumable=True)
    save_interval: int = option(0, "steps between checkpoints (0 = each epoch)", kind="nonneg", resumable=True)
    log_interval: int = option(50, "steps between loss.csv rows", kind="positive", resumable=True)
    num_samples: int = option(64, "images per sample grid", kind="positive", resumable=True)
    clip: bool = option(True, "do not clip predicted x0 in training previews", flag="--no-clip", resumable=True)
    seed: int = option(0, "seed of the weights, the batches, the timesteps and the noise", kind="nonneg")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda", "mps"), resumable=True,
                         open_choices=True)
    # auto: bf16 autocast where it is fast (CPU with bf16, CUDA), else fp32
    precision: str = option("auto", "autocast precision", choices=("auto", "fp32", "bf16", "fp16"), resumable=True)
    cond_drop_prob: float = option(0.1, "label drop probability for guidance (default 0.1; the quick preset: 0.2)",
                                   kind="unit")
    # > 0: weight each image's eps loss by min(SNR_t, gamma) / SNR_t (Min-SNR-gamma, Hang et al.
    # 2023), which stops the many nearly-clean timesteps from dominating the gradient; 0 = L_simple
    min_snr_gamma: float = option(0.0, "weight each image's loss by min(SNR, G)/SNR (Min-SNR-gamma; 5 is the "
                                       "paper's); 0 = plain L_simple", kind="nonneg")
    # which noise levels training sees: t uniform on 0..T-1 (Ho et al. 2020), or logit(t/T) ~
    # N(t_logit_mean, t_logit_std^2) (Esser et al. 2024), drawn with the plain loss (no re-weighting)
    t_sampling: str = option("uniform", "how training draws timesteps: uniform, or logit-normal (Esser et al. "
                                        "2024; see --t-logit-mean/--t-logit-std)", choices=T_SAMPLINGS)
    t_logit_mean: float = option(0.0, "mean of logit(t/T) with --t-sampling logit-normal (> 0: noisier)")
    t_logit_std: float = option(1.0, "standard deviation of logit(t/T) with --t-sampling logit-normal",
                                kind="positive")
    nonfinite: str = option("stop", "skip batches whose loss is NaN/inf instead of stopping",
                            flag="--skip-nonfinite", choices=("stop", "skip"), resumable=True)
    keep_checkpoints: int = option(0, "periodic checkpoints to keep (0 = all)", kind="nonneg", resumable=True)
    time_limit: float = option(0.0, "stop (with a checkpoint and a sample grid) after this many minutes of "
                                    "training (0 = no limit)", kind="nonneg", resumable=True)

    def validate(self) -> None:
        if self.dataset not in DATASETS and not self.dataset.startswith(("folder:", "npz:")):
            raise ConfigError(f"train.dataset must be one of {DATASETS}, folder:PATH or npz:PATH, got {self.dataset!r}")
        _at_most(self, batch_size=65536, num_samples=10_000, epochs=10**6, max_steps=10**9, log_interval=10**9)
        if not (0.0 < self.lr < 1.0):
            raise ConfigError(f"train.lr must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.ema_gamma <= 1000.0:
            raise ConfigError(f"train.ema_gamma must be in [0, 1000] (0 = the classic warm-up), got {self.ema_gamma}")
        if not 0 <= self.time_limit < math.inf:
            raise ConfigError(f"train.time_limit must be >= 0 minutes, got {self.time_limit}")
        if not (0 <= self.grad_clip < math.inf and 0 <= self.weight_decay < math.inf):
            raise ConfigError("train.grad_clip and train.weight_decay must be finite and >= 0")
        if self.min_snr_gamma < 0 or not math.isfinite(self.min_snr_gamma):
            raise ConfigError(f"train.min_snr_gamma must be >= 0 (0 = off), got {self.min_snr_gamma}")
        if not (math.isfinite(self.t_logit_mean) and abs(self.t_logit_mean) <= 20):
            raise ConfigError(f"train.t_logit_mean must be a finite number in [-20, 20], got {self.t_logit_mean}")
        if not 0 < self.t_logit_std <= 20:
            raise ConfigError(f"train.t_logit_std must be in (0, 20], got {self.t_logit_std}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.clusters and not 2 <= self.clusters <= MAX_CLUSTERS:
            raise ConfigError(f"train.clusters must be 0 (off) or in [2, {MAX_CLUSTERS}], got {self.clusters}")
        if self.cluster_sizes and (len(self.cluster_sizes) != self.clusters or min(self.cluster_sizes) < 0
                                   or sum(self.cluster_sizes) == 0):
            raise ConfigError(f"train.cluster_sizes must be {self.clusters} counts (one per cluster), not all zero")
        check_options(self)  # the metadata's bounds and choices, after the more specific messages above


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw from a model: the options a user sets. A model carries its recommended ones
    (RunConfig.sampling, written by `train` and `export`), and a command's flags override them field
    by field. None (steps, eta, spacing, guidance_interval, corrector) means "the rule's choice",
    which sampling.plan resolves against the model into concrete values. The field metadata is
    what the command line shows (research=True: only under --help-all)."""
    sampler: str = option("dpmpp", "ddpm (ancestral), ddim, dpmpp (DPM-Solver++(2M), the default), or euler / "
                                   "heun (the flow ODE in the straight path's time)", choices=SAMPLERS)
    steps: Optional[int] = option(None, "network evaluations (default: dpmpp 20, ddim 50, euler 20, heun 10, ddpm "
                                        "all T); heun counts grid points, 2 steps - 1 evaluations", kind="positive")
    guidance: float = option(0.0, "classifier-free guidance weight w (needs labels; 0 = plain conditional; "
                                  "default: the model's own)", kind="nonneg")
    eta: Optional[float] = option(None, "stochasticity of ddim and dpmpp: 0 = deterministic; 1 = DDPM-like for "
                                        "ddim, SDE-DPM-Solver++(2M) for dpmpp; dpmpp also takes up to 10 (more "
                                        "fresh noise per step, same marginals); default for dpmpp 2, or 0.5 with "
                                        "--guidance, 0 with --autoguide; ddim 0", kind="nonneg", research=True)
    spacing: Optional[str] = option(None, "timestep grid for respaced samplers: uniform in t, quadratic (denser "
                                          "near t=0), logsnr (uniform in log-SNR), or logsnr-capped (T-1, then "
                                          "uniform in log-SNR from noise level 20 down), or flow (uniform in the "
                                          "straight path's time s); default logsnr-capped for dpmpp, flow for "
                                          "euler and heun, uniform otherwise", choices=SPACINGS, research=True)
    clip: bool = option(True, "do not clip predicted x0 to [-1, 1]", flag="--no-clip", research=True)
    guidance_interval: Optional[tuple[float, float]] = option(
        None, "guide only at noise levels sigma_t = sqrt((1-a_t)/a_t) in LO,HI (Kynkaanniemi et al. 2024), "
              "unguided elsewhere (one network evaluation instead of two); default for dpmpp with --guidance "
              "0.3,5, otherwise every step (0,inf)", research=True)
    first_order_switches: bool = option(
        True, "dpmpp with a guidance interval: extrapolate (second order) across the steps where guidance "
              "switches on or off, instead of the default first-order steps there",
        flag="--no-first-order-switches", research=True)
    corrector: Optional[int] = option(
        None, "dpmpp only: after each network evaluation, redo the step that led there with the new x0 as well "
              "(UniPC's corrector; 1 linear, 2 quadratic in log-SNR; no extra evaluations; 0 = none); default 1 "
              "with --guidance, else 0", choices=(0, 1, 2), research=True)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line errors naming the option (also for the library's keywords: wrong types too)."""
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        for name in ("guidance", "eta"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{name} must be a number, got {v!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r}; choose from {', '.join(SPACINGS)}")
        if self.corrector not in (None, 0, 1, 2) or isinstance(self.corrector, bool):
            raise ConfigError(f"corrector must be 0 (none), 1 (linear) or 2 (quadratic), got {self.corrector!r}")
        if self.corrector and self.sampler != "dpmpp":
            raise ConfigError(f"the corrector is dpmpp's; {self.sampler} has none (sampler dpmpp: --sampler dpmpp)")
        if self.eta and self.sampler in ("euler", "heun"):
            raise ConfigError(f"{self.sampler} solves the flow ODE deterministically: it takes no eta (leave eta, --eta, out)")
        top = MAX_ETA if self.sampler == "dpmpp" else 1.0
        if self.eta is not None and not 0.0 <= self.eta <= top:  # also NaN
            raise ConfigError(f"eta {self.eta} is outside [0, {top:g}] for {self.sampler} "
                              f"(0: deterministic, 1: as stochastic as DDPM; above 1 only dpmpp)")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise ConfigError(f"guidance {self.guidance} is outside [0, {MAX_GUIDANCE:g}] (useful values are below 10)")
        if self.guidance_interval is not None:
            gi = tuple(self.guidance_interval)
            if len(gi) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in gi) \
                    or not 0.0 <= gi[0] < gi[1]:
                raise ConfigError(f"guidance interval {self.guidance_interval!r}: need two noise levels LO,HI "
                                  "with 0 <= LO < HI (HI may be inf), e.g. 0.3,5")
        check_options(self)

    def override(self, **given) -> "SamplingConfig":
        """These options with the given ones (None = not given, keep this one's) put over them."""
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in given.items() if v is not None}
        if "sampler" in changes and changes["sampler"] != self.sampler:
            # the stored steps, eta and grid were chosen for the stored sampler: a new one starts from its own
            base = {"guidance": self.guidance, "clip": self.clip, "guidance_interval": self.guidance_interval,
                    "first_order_switches": self.first_order_switches}
            return SamplingConfig(**{**base, **changes})
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["guidance_interval"] is not None:
            d["guidance_interval"] = list(d["guidance_interval"])
        return d


def recommended_sampling(cfg: "RunConfig") -> SamplingConfig:
    """What a newly trained model of `cfg` recommends when its config says nothing: DPM-Solver++ 20
    steps, guided at W = 1 when conditioned on clusters and 0.5 on labels (the quick preset's
    measured best on MNIST; docs/RESULTS.md), unguided otherwise."""
    w = 1.0 if cfg.train.clusters else 0.5 if cfg.model.num_classes else 0.0
    return SamplingConfig(sampler="dpmpp", steps=min(20, cfg.diffusion.timesteps), guidance=w)


@dataclass(frozen=True)
class DistillConfig:
    """A distilled student's origin and recipe (distill.py); the empty default (no teacher) is a model
    trained from data. A student maps noise to an image in one network evaluation (or a few: the
    "student" timestep grid), with the teacher's classifier-free guidance W built in."""
    teacher: str = option("", "the teacher: a checkpoint, a model folder or a shipped model's name", cli=False)
    teacher_sha256: str = option("", "SHA-256 of the teacher's weights file", cli=False)
    method: str = option("pairs", "pairs (regression onto the teacher's ODE solutions: noise -> image pairs, "
                                  "drawn once) or consistency (consistency distillation: one teacher ODE step "
                                  "as the target)", choices=DISTILL_METHODS)
    guidance: float = option(0.5, "the teacher's classifier-free guidance W built into the student", kind="nonneg")
    pairs: int = option(20_000, "pairs method: noise -> image pairs drawn from the teacher", kind="positive")
    teacher_steps: int = option(20, "the teacher's DPM-Solver++ steps per pair (pairs) or ODE grid points "
                                    "(consistency)", kind="positive")
    top_share: float = option(0.5, "share of each batch trained at the noisiest timestep (the one-step input); "
                                   "the rest at timesteps drawn uniformly (for the few-step grid)", kind="unit")

    @property
    def distilled(self) -> bool:
        return bool(self.teacher)

    def validate(self) -> None:
        if self.method not in DISTILL_METHODS:
            raise ConfigError(f"distill.method must be one of {', '.join(DISTILL_METHODS)}, got {self.method!r}")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise ConfigError(f"distill.guidance {self.guidance} is outside [0, {MAX_GUIDANCE:g}]")
        if not 0.0 <= self.top_share <= 1.0:
            raise ConfigError(f"distill.top_share must be in [0, 1], got {self.top_share}")
        _at_most(self, pairs=1_000_000, teacher_steps=1000)
        if self.pairs < 1 or self.teacher_steps < 1:
            raise ConfigError("distill.pairs and distill.teacher_steps must be positive")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # how to draw from the model (the section a checkpoint or model folder ships with); a config
    # without one gets the library's default, DPM-Solver++ 20 steps unguided
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # a distilled student's teacher and recipe (empty: trained from data)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.diffusion.validate()
        self.train.validate()
        self.sampling.validate()
        self.distill.validate()
        if self.sampling.steps is not None and self.sampling.steps > self.diffusion.timesteps:
            raise ConfigError(f"sampling.steps {self.sampling.steps}: the model has only T = "
                              f"{self.diffusion.timesteps} timesteps")
        if self.train.clusters and self.model.num_classes != self.train.clusters:
            raise ConfigError(f"train.clusters {self.train.clusters} needs model.num_classes {self.train.clusters} "
                              f"(the clusters are the classes), got {self.model.num_classes}")
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not self.distill.distilled:  # a model trained from data: no section of its own
            del out["distill"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """The config of a dict. A run directory's config.json also names its run (`run_id`) and a
        model folder's describes its weights (`export`): facts about files, not part of the
        configuration, dropped here."""
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object")
        data = {k: v for k, v in data.items() if k not in ("run_id", "export")}
        parts = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig, "sampling": SamplingConfig,
                 "distill": DistillConfig}
        unknown = set(data) - set(parts)
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        built = {name: _build(klass, data.get(name, {}), name) for name, klass in parts.items()}
        return cls(**built).validate()

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        except RecursionError:  # a config is two levels deep; thousands are an attack, not a config
            raise ConfigError("config is nested too deeply to be a config") from None
        return cls.from_dict(data)

    def replace(self, **sections) -> "RunConfig":
        """Replace fields per section: cfg.replace(train={"lr": 1e-3})."""
        new = {}
        for name, changes in sections.items():
            part = getattr(self, name)
            new[name] = _build(type(part), {**dataclasses.asdict(part), **changes}, name)
        return dataclasses.replace(self, **new).validate()


def check_options(obj) -> None:
    """What each field's option metadata promises, checked in one place for every section: `kind`
    (positive; nonneg: >= 0 and finite; unit: in [0, 1)) and `choices` (except where `open_choices`
    says the command line offers fewer than a config may hold: train.device also takes cuda:N).
    None passes (an optional field not set)."""
    section = type(obj).__name__.replace("Config", "").lower()
    for f in dataclasses.fields(obj):
        v, meta = getattr(obj, f.name), f.metadata
        if v is None or isinstance(v, (tuple, list)):
            continue
        kind, choices, name = meta.get("kind"), meta.get("choices"), f"{section}.{f.name}"
        if choices and not meta.get("open_choices") and v not in choices:
            raise ConfigError(f"{name} must be one of {choices}, got {v!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if kind == "positive" and not v > 0:
            raise ConfigError(f"{name} must be positive, got {v}")
        if kind == "nonneg" and not 0 <= v < math.inf:
            raise ConfigError(f"{name} must be >= 0, got {v}")
        if kind == "unit" and not 0.0 <= v < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {v}")


def _at_most(obj, **limits) -> None:
    """Sizes with a sane upper bound: a typo such as base_dim 32000 is a one-line error, not a
    MemoryError after minutes of work."""
    section = type(obj).__name__.replace("Config", "").lower()
    for name, limit in limits.items():
        v = getattr(obj, name)
        if v is not None and v > limit:
            raise ConfigError(f"{section}.{name} {v} is too large (at most {limit:,})")


def _check_type(value, hint, key: str):
    """Return `value` coerced to the annotated type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_type(value, inner, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        if key.endswith("guidance_interval") and len(value) == 2 and value[1] == math.inf:  # 0,inf: every step
            return (_check_type(value[0], args[0], key), math.inf)
        return tuple(_check_type(v, args[0], key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a bug in this module, not user input


def _build(klass, data: dict, section: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config section {section!r} must be an object")
    hints = typing.get_type_hints(klass)
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in {section}: {', '.join(sorted(unknown))}")
    values = {k: _check_type(v, hints[k], f"{section}.{k}") for k, v in data.items()}
    try:
        return klass(**values)
    except ConfigError as e:  # SamplingConfig checks itself on construction: name the section
        raise ConfigError(f"{section}: {e}") from None


# `train --objective NAME`: what the network learns, as the settings it stands for (explicit options
# win). flow: flow matching on the straight path z_s = (1 - s) x_0 + s eps (the "flow" schedule),
# the velocity eps - x_0 as the target and its logit-normal time distribution (Esser et al. 2024,
# logit(s) ~ N(0, 1)); the samplers reach it through the change of variables (schedule.eps_from_flow)
OBJECTIVES: dict[str, dict[str, str]] = {
    "eps": {"model.prediction": "eps"},
    "v": {"model.prediction": "v"},
    "flow": {"model.prediction": "flow", "diffusion.schedule": "flow", "train.t_sampling": "logit-normal"},
}


def objective_values(objective: Optional[str], values: dict) -> dict:
    """`values` (option dest -> value, None = not given) with an objective's settings under them."""
    if objective is None:
        return values
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return {**OBJECTIVES[objective], **{k: v for k, v in values.items() if v is not None}}


# Presets. `quick`: recognisable, requested MNIST digits within `make run`'s budget on a 2-core CPU;
# `quick-unet`: its former recipe, slower, better on Fashion-MNIST and without labels.
# `default`: the longer unconditional run the README's default-model numbers come from. `tiny`: a
# smoke test that trains in seconds (tests, trying the API); its samples are not digits yet.
# Why each value: docs/decisions/ (conditional-quick-preset.md, network.md, micro-batch.md); the numbers: docs/RESULTS.md.
PRESETS: dict[str, dict[str, dict]] = {
    "quick": {
        # A thin first level (16 channels at 28x28, 64 below) with self-attention at 7x7, predicting v:
        # 1,850 steps reach the FID and recognizable of the former 3,200-step eps U-Net in ~0.43x its
        # time (issue 47; docs/decisions/network.md). Batch 64: twice the updates of 128 at the same
        # images/s on 2 cores. Class-conditional, labels dropped 20% of the time (guidance and an
        # unlabelled path)
        "model": {"name": "unet_attn", "base_dim": 16, "channel_mults": [1, 4, 4], "num_res_blocks": 1,
                  "num_classes": 10, "prediction": "v"},
        "diffusion": {"timesteps": 1000, "schedule": "cosine"},
        "train": {"epochs": 100, "max_steps": 1850, "batch_size": 64, "lr": 1.5e-3, "warmup_steps": 100,
                  "ema_decay": 0.999, "sample_interval": 400, "save_interval": 400, "cond_drop_prob": 0.2},
    },
    "quick-unet": {
        # The quick preset before issue 47: the 1.05M-parameter eps U-Net for 3,200 steps (~2.3x the
        # time). `quick` was tuned on labelled MNIST; on Fashion-MNIST (FID 0.237 against 1.774) and
        # for label-free clusters (0.179 against 0.320) this one is better, and the shipped models of
        # those kinds are made with it (docs/decisions/network.md)
        "model": {"name": "unet", "base_dim": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
                  "num_classes": 10},
        "diffusion": {"timesteps": 1000, "schedule": "cosine"},
        "train": {"epochs": 100, "max_steps": 3200, "batch_size": 64, "lr": 1.5e-3, "warmup_steps": 100,
                  "ema_decay": 0.999, "sample_interval": 400, "save_interval": 400, "cond_drop_prob": 0.2},
    },
    "default": {
        # 1.5M parameters; batch 128 in two passes of 64: the same update, less peak memory
        "model": {"name": "unet", "base_dim": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 2},
        "diffusion": {"timesteps": 1000, "schedule": "cosine"},
        "train": {"epochs": 20, "batch_size": 128, "micro_batch": 64, "lr": 1e-3, "warmup_steps": 500,
                  "ema_decay": 0.9995},
    },
    "tiny": {
        "model": {"name": "unet", "base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "num_classes": 10},
        "diffusion": {"timesteps": 50, "schedule": "cosine"},
        "train": {"epochs": 1, "max_steps": 20, "subset": 512, "batch_size": 16, "lr": 2e-3, "warmup_steps": 0,
                  "sample_interval": 20, "save_interval": 20, "num_samples": 10, "cond_drop_prob": 0.2},
    },
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name])


# ---------------------------------------------------------------------------------------------
# options and the resume rule, shared by the command line and the library

SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def resume_conflicts(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """What `cfg` changes of a checkpoint's config that a resumed run may not change: everything
    but the fields marked resumable (how long, how often to log and save, where and how precisely
    to compute). The network, the process, the data and the optimisation stay the checkpoint's,
    so a resumed run continues the same run."""
    out = []
    if saved.distill != cfg.distill:
        out.append(f"the distillation (teacher {cfg.distill.teacher or 'none'}, method {cfg.distill.method}) differs "
                   f"from the checkpoint's (teacher {saved.distill.teacher or 'none'}, method {saved.distill.method})")
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            old, new = getattr(getattr(saved, section), f.name), getattr(getattr(cfg, section), f.name)
            if old == new or f.metadata.get("resumable"):
                continue
            if f.name == "data_sha256":
                if old is None:  # a checkpoint from before the data was recorded
                    continue
                out.append(f"the training data (SHA-256 {str(new)[:12]}...) differs from the checkpoint's "
                           f"train.data_sha256 ({old[:12]}...)")
            elif f.name == "cluster_sizes":
                out.append("the training images fall into other clusters than the checkpoint's (train.cluster_sizes "
                           "differs: other data, or a k-means that differs on this machine)")
            elif f.name == "num_classes":
                flag = "--unconditional" if new is None else "--conditional"
                kind = "an unconditional" if old is None else "a class-conditional"
                out.append(f"{flag} differs from the checkpoint ({kind} model)")
            else:
                shown = "" if isinstance(new, bool) else " " + ",".join(map(str, new)) if isinstance(new, tuple) \
                    else f" {new}"
                out.append(f"{flag_of(f)}{shown} differs from the checkpoint's {section}.{f.name}={old!r}")
    return out


def check_resume(saved: RunConfig, cfg: RunConfig) -> None:
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise ConfigError(f"{conflicts[0]}; it cannot change when resuming")


def check_preset(name: str, cfg: RunConfig, changes: dict[str, dict], origin: str) -> None:
    """A run resumed with --preset must hold the network and process the preset (plus the options
    given) would train now. A run left by an older preset otherwise resumes silently and fails
    later, e.g. at `sample --label all` on a model without labels."""
    want = preset(name).replace(**{k: v for k, v in changes.items() if v and k != "train"})
    diffs = []
    for section in ("model", "diffusion"):
        have, wanted = dataclasses.asdict(getattr(cfg, section)), dataclasses.asdict(getattr(want, section))
        diffs += [f"{section}.{key}={have[key]!r} (preset: {value!r})" for key, value in wanted.items()
                  if have[key] != value]
    if diffs:
        raise ConfigError(f"{origin} is not a --preset {name} run: {'; '.join(diffs)}; resume it without "
                          f"--preset, or train into a new --output-dir")


def resolve(base: RunConfig, values: dict, *, conditional: Optional[bool] = None, resuming: Optional[str] = None,
            preset_name: Optional[str] = None, model_defaults=None) -> RunConfig:
    """Apply option values ({"train.lr": 1e-3, ...}; None = not given) to a base config: a preset's, a
    config file's or, when `resuming` names a checkpoint, the checkpoint's; then the resume rule
    (check_resume) and, with `preset_name`, check_preset. `conditional` True/False sets 10 classes /
    none. A new network name starts from that network's canonical size (`model_defaults(name)`, a
    ModelConfig) before the explicit options. A config without a sampling section gets the
    recommended one: what this returns is finished, as training.train takes it."""
    changes: dict[str, dict] = {"model": {}, "diffusion": {}, "train": {}}
    name = values.get("model.name")
    if name and name != base.model.name and not resuming and model_defaults is not None:
        keep = ("num_classes", "prediction")  # what the data and loss decide, not the network's size
        changes["model"] = {k: v for k, v in dataclasses.asdict(model_defaults(name)).items() if k not in keep}
    for dest, value in values.items():
        if value is not None:
            section, key = dest.split(".")
            changes[section][key] = list(value) if isinstance(value, tuple) else value
    if conditional is not None:  # 10 classes unless the base already has its own number
        changes["model"]["num_classes"] = (base.model.num_classes or 10) if conditional else None
    clusters = values.get("train.clusters")
    if clusters is not None:  # the clusters are the classes; without labels, so --unconditional is no conflict
        if clusters and not 2 <= clusters <= MAX_CLUSTERS:
            raise ConfigError(f"--clusters must be 0 (off) or in [2, {MAX_CLUSTERS}], got {clusters}")
        if clusters and conditional:
            raise ConfigError("--clusters conditions on clusters of the images instead of labels: leave out "
                              "--conditional")
        if clusters or base.train.clusters:
            changes["model"]["num_classes"] = clusters or None
    cfg = base.replace(**{k: v for k, v in changes.items() if v})
    if base.sampling == SamplingConfig():  # no section of its own (a preset, an old checkpoint): the recommended one
        cfg = dataclasses.replace(cfg, sampling=recommended_sampling(cfg)).validate()
    if resuming:
        check_resume(base, cfg)
        if preset_name:
            check_preset(preset_name, cfg, changes, resuming)
    if values.get("train.cond_drop_prob") is not None and cfg.model.num_classes is None:
        raise ConfigError("--cond-drop-prob is for class-conditional models (this one has no labels)")
    return cfg
