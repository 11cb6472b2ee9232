"""The precision policy: which precision a run or a prediction computes in (fp32 or bf16 autocast), and why.

`auto` means bf16 on CUDA and fp32 elsewhere; bf16 asked for on a CPU that only emulates it warns with the measured
slowdown. Training steps (`avvp.steps`) and prediction (`avvp.inference`) enter `autocast` with the result.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# bf16 autocast on a CPU without native bf16 (measured on a 2-core AVX2 machine, batch 16, `TrainStep`)
SLOW_BF16 = (
    "about 20x slower than fp32 there (measured per training step: MGN 3,346 ms against 167, HAN 2,008 against 72)"
)


def autocast(device: torch.device, precision: str, *, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for (`precision == "bf16"`), a no-op context for fp32.

    `cache_enabled=False` is needed while capturing CUDA graphs (the cast weights must not be cached across steps).
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` means bf16 on CUDA and fp32 elsewhere; bf16 asked for on a CPU without native bf16 warns."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        log.warning("bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16): %s; use fp32 or auto", SLOW_BF16)
    return precision


def native_bf16_cpu() -> bool:
    """Whether torch's CPU kernels here compute bf16 natively: on x86, AVX-512 kernels on a CPU with avx512_bf16 or
    amx_bf16 (an AVX2-only CPU, or kernels capped at AVX2, emulate it); elsewhere, what oneDNN says."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags
