"""Which precision to train in, and why.

`auto` picks bf16 autocast (fp32 master weights) only where bf16 runs natively: CUDA, and CPUs
with AMX or AVX512-BF16. On an AVX2-only CPU, bf16 matmuls are emulated and ~40x slower than
fp32 (measured on an AMD EPYC), so `auto` must not pick bf16 there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) at or above which its matmuls and convs run bf16 natively
NATIVE_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT")


@dataclass(frozen=True)
class Precision:
    name: str                       # "fp32", "bf16" or "fp16"
    dtype: torch.dtype | None       # autocast dtype, None for fp32
    reason: str

    def autocast(self, device_type: str) -> AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (as lscpu prints it), or the architecture where it
    cannot be read: what benchmark results record as the machine."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def bf16_matmul_speedup(n: int = 512, repeats: int = 3) -> float:
    """fp32 time / bf16 time for an n^3 matmul on this CPU (> 1 means bf16 is faster)."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best(a, b):
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(a32, b32) / best(a16, b16)


def cpu_native_bf16(flags: set[str] | None = None, capability: str | None = None,
                    benchmark: bool = True, onednn_isa: str | None = None) -> tuple[bool, str]:
    """(does this CPU run bf16 natively?, the reason), from flags, else a micro-benchmark.

    A cap on oneDNN's instruction set (ONEDNN_MAX_CPU_ISA=AVX2, as when emulating an older CPU)
    makes bf16 emulated even where the CPU has the instructions, so it wins over the flags.
    """
    capability = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
    onednn_isa = (onednn_isa if onednn_isa is not None else os.environ.get("ONEDNN_MAX_CPU_ISA", "")).strip().upper()
    if onednn_isa and onednn_isa not in NATIVE_BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={onednn_isa} caps oneDNN below native bf16: bf16 would be emulated"
    flags = cpu_flags() if flags is None else flags
    found = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if "AMX" in capability.upper() or found:
        return True, f"CPU has native bf16 ({', '.join(found) or capability})"
    if flags:
        return False, f"CPU capability {capability} without amx_bf16/avx512_bf16: bf16 would be emulated"
    if not benchmark:
        return False, f"CPU capability {capability}, flags unknown: fp32 is the safe choice"
    speedup = bf16_matmul_speedup()
    return speedup > 1.2, f"CPU flags unknown; a 512^3 matmul ran {speedup:.2f}x as fast in bf16"


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """Turn 'auto' | 'fp32' | 'bf16' | 'fp16' into a Precision for `device`."""
    device = torch.device(device)
    if requested == "fp32":
        return Precision("fp32", None, "requested fp32")
    if requested == "bf16":
        return Precision("bf16", torch.bfloat16, "requested bf16")
    if requested == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 training needs a CUDA device (it relies on a GradScaler)")
        return Precision("fp16", torch.float16, "requested fp16")
    if requested != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {requested!r}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16, "CUDA device supports bf16")
        return Precision("fp32", None, "CUDA device without bf16 support")
    if device.type == "cpu":
        native, reason = cpu_native_bf16()
        return Precision("bf16", torch.bfloat16, reason) if native else Precision("fp32", None, reason)
    return Precision("fp32", None, f"no bf16 policy for device type {device.type}")
