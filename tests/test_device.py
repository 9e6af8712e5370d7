"""device.py: `auto` precision is bf16 only where this process's CPU kernels compute it natively."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mnist_diffusion.device import choose_precision, cpu_bf16, describe_precision

CPU = torch.device("cpu")
PROBE = ("from mnist_diffusion.device import choose_precision; import torch; "
         "p = choose_precision('auto', torch.device('cpu')); print(p.name); print(p.reason)")


def _probe(**env) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_explicit_precisions_are_taken_as_asked():
    assert choose_precision("fp32", CPU).dtype is None
    assert choose_precision("bf16", CPU).dtype is torch.bfloat16
    assert choose_precision("fp16", CPU).dtype is torch.float16


def test_auto_on_cpu_follows_the_native_bf16_query():
    native, why = cpu_bf16()
    p = choose_precision("auto", CPU)
    assert p.dtype is (torch.bfloat16 if native else None) and p.reason == why
    assert describe_precision("auto", CPU).startswith("bf16 autocast (auto: " if native else "fp32 (auto: ")


@pytest.mark.system
def test_auto_is_fp32_with_avx2_kernels_forced():
    """An AVX2-only laptop, emulated: bf16 would be emulated there (about 10x slower than fp32)."""
    name, reason = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert name == "fp32"
    assert "AVX2" in reason or "neither" in reason


@pytest.mark.system
def test_auto_is_fp32_when_onednn_is_kept_off_bf16():
    name, reason = _probe(ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    assert name == "fp32" and ("ONEDNN_MAX_CPU_ISA" in reason or "neither" in reason or "kernels" in reason)
