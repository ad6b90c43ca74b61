"""This machine's dense fp32 matmul peak, so every benchmark can say what fraction of it a method reaches.

The peak is the best of a few timed ``[n, n] @ [n, n]`` float32 matmuls (2 n^3 FLOPs each) with torch's
default thread count: what the BLAS torch ships actually delivers here, not a datasheet number.

Run alone to print it::

    /work/bench-venv/bin/python benchmarks/machine.py
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import torch


def matmul_peak_gflops(size: int = 3072, repeats: int = 5) -> float:
    """Best GFLOP/s of ``repeats`` float32 ``[size, size] @ [size, size]`` matmuls (after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


VECTOR_FLAGS = {  # /proc/cpuinfo flag -> the name printed atop benchmark tables
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


AVX2_ENVIRONMENT = {  # hold torch's kernels, oneDNN, MKL and FBGEMM (int8) to AVX2: an AVX2-only CPU
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}


def vector_flags() -> str:
    """The SIMD / matrix extensions the CPU advertises, and the kernel level torch dispatches to."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        flags = []
    present = [name for flag, name in VECTOR_FLAGS.items() if flag in flags] or ["none of AVX2/AVX-512/AMX"]
    return f"vector units: {', '.join(present)}; torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}"


def has_bfloat16_units() -> bool:
    """Whether the CPU advertises bf16 matmul instructions (AVX512-BF16 or AMX-BF16; Linux only)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_average() -> float:
    """1-minute load average: other work on the machine skews every timing (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def describe(peak_gflops: float) -> str:
    """One line naming the machine and its measured peak."""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores (bf16 units: {'yes' if has_bfloat16_units() else 'no'}), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"fp32 matmul peak {peak_gflops:.0f} GFLOP/s (best of 3072^3 matmuls); "
        f"load average {load_average():.1f}"
    )


if __name__ == "__main__":
    print(describe(matmul_peak_gflops()))


def versions(packages: tuple[str, ...]) -> str:
    """``"torch 2.13.0, transformers 5.24.0, ..."``, with ``missing`` for packages not installed."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)
