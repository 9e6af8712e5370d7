"""Device and precision choice: `auto` picks CUDA, then MPS, then CPU; bf16 autocast only where it is fast.

Reduced precision helps only where the hardware computes it natively: on a CPU with AVX-512 BF16
or AMX a bf16 training step of the quick model is about 2x faster than fp32, while on an AVX2-only
CPU (most laptops) bf16 is emulated and about 10x *slower* (11 against 108 images/s, measured with
AVX2 kernels forced on an Intel VM). So `auto` asks torch which kernels this process will run.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple, Optional

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("--device mps was asked for but MPS is not available on this machine")
    return torch.device(name)


class Precision(NamedTuple):
    """The autocast dtype (None = plain fp32) and why it was chosen, for the first log line."""
    dtype: Optional[torch.dtype]
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


# oneDNN (the CPU convolutions) names the instruction sets it may use; bf16 is native from these on
_ONEDNN_BF16 = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """(bf16 is native here, why): the CPU must have AVX-512 BF16 or AMX, and this process's kernels
    must be allowed to use them (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can forbid it)."""
    capability = torch.backends.cpu.get_cpu_capability()  # what ATen dispatches to: AVX512, AVX2, ...
    cpu = torch.cpu
    has_amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    has_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if not (has_amx or has_bf16):
        return False, f"this CPU has neither AVX-512 BF16 nor AMX (kernels: {capability})"
    if not capability.startswith("AVX512"):
        return False, f"the kernels in use are {capability} (ATEN_CPU_CAPABILITY), without native bf16"
    if isa and not isa.startswith(_ONEDNN_BF16):
        return False, f"ONEDNN_MAX_CPU_ISA={isa} keeps the convolutions off native bf16"
    return True, "this CPU runs bf16 natively (" + ("AMX" if has_amx else "AVX-512 BF16") + ")"


def choose_precision(precision: str, device: torch.device) -> Precision:
    """The autocast of `precision` on `device`. auto: bf16 on a CPU that computes it natively
    (cpu_bf16), fp32 on other CPUs; bf16 on CUDA where supported, else fp32 (fp16 autocast would
    need loss scaling to train); fp32 on MPS."""
    if precision == "fp32":
        return Precision(None, "asked for")
    if precision == "bf16":
        return Precision(torch.bfloat16, "asked for")
    if precision == "fp16":
        return Precision(torch.float16, "asked for")
    if device.type == "cpu":
        native, why = cpu_bf16()
        return Precision(torch.bfloat16 if native else None, why)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "this GPU runs bf16")
        return Precision(None, "this GPU has no bf16 (fp16 autocast would need loss scaling)")
    return Precision(None, f"fp32 on {device.type}")


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of choose_precision, or None for plain fp32."""
    return choose_precision(precision, device).dtype


def describe_precision(precision: str, device: torch.device) -> str:
    """One phrase for a log line: 'bf16 autocast (auto: this CPU runs bf16 natively (AMX))'."""
    p = choose_precision(precision, device)
    shown = "fp32" if p.dtype is None else f"{p.name} autocast"
    return f"{shown} ({precision}: {p.reason})"


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
