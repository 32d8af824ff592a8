"""What this machine offers and where a model runs: CPU features, device, precision, ONNX Runtime providers.

:func:`cpu_features` says what the CPU offers, so "auto" and bf16 fall back cleanly;
:func:`resolve_device` and :func:`resolve_precision` turn "auto" into a device and a precision
for a backend; :func:`onnx_providers` gives ONNX Runtime's execution providers for a device.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import torch

from hrpose_ros.types import checked_device

__all__ = [
    "BF16_FLAGS",
    "CPU_FLAGS",
    "ONNX_PROVIDERS",
    "PRECISIONS",
    "cpu_features",
    "cpu_model",
    "has_native_bf16",
    "onnx_providers",
    "parse_device",
    "resolve_device",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "int8", "auto")
"""Engine precisions: bf16 runs in torch, int8 in ONNX Runtime, "auto" picks (:func:`resolve_precision`)."""

ONNX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
"""ONNX Runtime execution providers in the order tried on a GPU device (those installed)."""

CPU_FLAGS = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""x86 instruction-set flags (Linux /proc/cpuinfo names) that decide which precision is fast here."""

# Flags with native bf16 arithmetic: without them oneDNN emulates bf16, slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# torch's cpuinfo probes (private, present in torch 2.x) for the flags they cover, where no
# /proc/cpuinfo exists (macOS, Windows).
_TORCH_CPU_PROBES = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_tile": "_is_amx_tile_supported",
}


def _cpuinfo_field(cpuinfo, key: str) -> str | None:
    """Return the value of the first ``key`` line of ``cpuinfo`` (Linux /proc/cpuinfo), or None."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_model(cpuinfo="/proc/cpuinfo") -> str:
    """Return the CPU's model name from ``cpuinfo``, else the platform's processor or machine name."""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine()


def cpu_features(cpuinfo="/proc/cpuinfo") -> dict[str, bool]:
    """Return {flag: present} for each name in :data:`CPU_FLAGS`, from ``cpuinfo``'s first ``flags`` line.

    Without a readable ``cpuinfo`` holding a ``flags`` line (not Linux, or not x86), torch's own
    cpuinfo probes answer the flags they cover (avx2, avx512f, avx512_vnni, avx512_bf16, amx_tile);
    every other flag is then False. Never raises.
    """
    line = _cpuinfo_field(cpuinfo, "flags")
    flags = set() if line is None else set(line.split())
    if line is None:
        for flag, probe in _TORCH_CPU_PROBES.items():
            check = getattr(torch.cpu, probe, None)
            try:
                if check is not None and check():
                    flags.add(flag)
            except RuntimeError:  # cpuinfo could not initialise on this platform
                pass
    return {name: name in flags for name in CPU_FLAGS}


def has_native_bf16(features: dict[str, bool] | None = None) -> bool:
    """Return True if the CPU computes bf16 natively (AVX-512 BF16 or AMX BF16), per ``features``."""
    features = cpu_features() if features is None else features
    return any(features.get(flag, False) for flag in BF16_FLAGS)


def resolve_precision(
    precision: str, backend: str = "torch", device: str = "cpu", features: dict[str, bool] | None = None
) -> str:
    """Return the precision to ask the ``backend`` engine for: ``precision``, or what "auto" picks here.

    "auto" picks bf16 for torch where the hardware computes bf16 natively (a CPU with AVX-512
    BF16 or AMX BF16, ``features`` from :func:`cpu_features`; a CUDA GPU that supports bf16), and
    fp32 everywhere else, including every onnxruntime engine. Why: with native bf16 units (AMX)
    torch bf16 + channels_last beats fp32 by several times (benchmarks/README.md); without them
    oneDNN emulates bf16, slower than fp32. "auto" never picks int8: its accuracy cost is not
    measured for the shipped weights (training/quantize_int8.py measures it); ask for it explicitly.

    ValueError (naming ``precision``) for a name not in :data:`PRECISIONS`, int8 with torch
    (int8 is an ONNX QDQ model) or bf16 with onnxruntime (ONNX Runtime's CPU kernels have no bf16
    convolutions).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "torch" and precision == "int8":
        raise ValueError(
            "precision: int8 runs in the onnxruntime backend (a static QDQ <model>.int8.onnx from "
            "training/quantize_int8.py); the torch backend takes fp32, bf16 or auto"
        )
    if backend == "onnxruntime" and precision == "bf16":
        raise ValueError("precision: bf16 runs in the torch backend; onnxruntime takes fp32, int8 or auto")
    if precision != "auto":
        return precision
    if backend != "torch":
        return "fp32"
    if parse_device(device).type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if has_native_bf16(features) else "fp32"


def resolve_device(device: str, backend: str = "torch", available: Sequence[str] | None = None) -> str:
    """Return ``device``, with "auto" replaced by "cuda" where ``backend`` can use a GPU, else "cpu".

    For torch that is a CUDA device torch sees; for onnxruntime a TensorRT or CUDA execution
    provider among ``available`` (default ``onnxruntime.get_available_providers()``), whatever
    torch sees. "auto" is the default of pose_node, the pipeline and the training tools, so that
    a machine with a GPU uses it without being told. ValueError (naming ``device``) for anything
    but auto, cpu, cuda or cuda:N.
    """
    if checked_device(device, allow_auto=True) != "auto":
        return device
    if backend == "onnxruntime":
        if available is None:
            import onnxruntime as ort

            available = ort.get_available_providers()
        return "cuda" if any(p in available for p in ONNX_PROVIDERS[:-1]) else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(device: str) -> torch.device:
    """Return ``device`` ("cpu", "cuda" or "cuda:N") as a torch.device (ValueError naming ``device``)."""
    return torch.device(checked_device(device))


def onnx_providers(device: str = "cpu", available: Sequence[str] | None = None) -> list[str]:
    """Return the ONNX Runtime execution providers for ``device``, best first, among ``available``.

    "cpu" gives CPUExecutionProvider only; "cuda"/"cuda:N" gives :data:`ONNX_PROVIDERS`
    (TensorRT > CUDA > CPU: CPU runs what the GPU providers do not take) filtered by
    ``available`` (default ``onnxruntime.get_available_providers()``). ValueError naming
    ``device`` for another name, or for a GPU device with neither GPU provider installed.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if parse_device(device).type == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in ONNX_PROVIDERS if p in available]
    if chosen == ["CPUExecutionProvider"] or not chosen:
        raise ValueError(
            f"device: {device!r} asked for, but onnxruntime offers no GPU provider here "
            f"(available: {', '.join(available)}; install onnxruntime-gpu)"
        )
    return chosen
