"""The machine the benchmark runs on: CPU model and flags, matmul GFLOP/s, resident memory."""

from __future__ import annotations

import os

import numpy as np
import psutil
import torch

from benchmarks.timing import time_calls
from hrpose_ros.devices import cpu_features, cpu_model, has_native_bf16


def cpu_summary() -> dict:
    """Return the CPU model, logical CPUs and hrpose_ros.devices.cpu_features()'s flags with summaries."""
    flags = cpu_features()
    return {
        "model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "flags": flags,
        "bf16_hardware": has_native_bf16(flags),
        "amx": flags["amx_bf16"] and flags["amx_int8"],
        "vnni": flags["avx512_vnni"] or flags["avx_vnni"],
    }


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Return torch's GFLOP/s for a ``size`` x ``size`` matmul in ``dtype`` (median of ``repeats``)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = time_calls(lambda: torch.mm(a, b), repeats, warmup=2)
    return 2.0 * size**3 / float(np.median(seconds)) / 1e9


def rss_mb(pid: int | None = None) -> float:
    """Return the resident set size of process ``pid`` (default: this one) in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20
