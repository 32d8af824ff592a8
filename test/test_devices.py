"""Device choice: CPU features from /proc/cpuinfo, the precision "auto" picks, the device and providers.

Flag lines of real CPUs stand in for this machine's where a test needs a CPU with or without
bf16 units.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from hrpose_ros.devices import (
    CPU_FLAGS,
    cpu_features,
    cpu_model,
    has_native_bf16,
    onnx_providers,
    resolve_device,
    resolve_precision,
)

# /proc/cpuinfo flag lines (abridged) of two real Xeons: Cascade Lake (AVX-512 and VNNI, no bf16)
# and Sapphire Rapids (AVX-512 BF16 and AMX).
CASCADE_LAKE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
    "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq "
    "ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm "
    "abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed adx "
    "smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves arat avx512_vnni"
)
SAPPHIRE_RAPIDS_FLAGS = CASCADE_LAKE_FLAGS + (
    " avx_vnni avx512_bf16 avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_bitalg "
    "avx512_vpopcntdq movdiri movdir64b serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8"
)



def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    """Return the path of a two-processor /proc/cpuinfo-style file whose processors have ``flags``."""
    block = (
        "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n"
        "flags\t\t: {flags}\n"
    )
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(block.format(i=i, flags=flags) for i in range(2)))
    return path


# ----------------------------------------------------------------------------------- CPU features


def test_cpu_features_are_the_flags_of_proc_cpuinfo():
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next(line for line in lines if line.startswith("flags")).split(":", 1)[1].split())
    features = cpu_features()
    assert list(features) == list(CPU_FLAGS)
    assert all(type(v) is bool for v in features.values())
    assert features == {name: name in flags for name in CPU_FLAGS}


def test_cpu_features_of_given_cpus(tmp_path):
    cascade = cpu_features(_cpuinfo(tmp_path, CASCADE_LAKE_FLAGS))
    assert cascade["avx512f"] and cascade["avx512_vnni"] and cascade["avx2"]
    assert not (cascade["avx512_bf16"] or cascade["amx_bf16"] or cascade["amx_int8"] or cascade["amx_tile"])
    assert not has_native_bf16(cascade)
    sapphire = cpu_features(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))
    assert all(sapphire.values()) and has_native_bf16(sapphire)


def test_cpu_features_without_cpuinfo_come_from_torch_probes(tmp_path):
    probed = cpu_features(tmp_path / "no_such_cpuinfo")
    real = cpu_features()
    covered = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    assert {f: probed[f] for f in covered} == {f: real[f] for f in covered}
    assert not any(v for f, v in probed.items() if f not in covered)


def test_cpu_model_is_the_model_name_of_cpuinfo_else_the_platform(tmp_path):
    assert cpu_model(_cpuinfo(tmp_path, CASCADE_LAKE_FLAGS)) == "Intel(R) Xeon(R)"
    assert cpu_model(tmp_path / "no_such_cpuinfo") == (platform.processor() or platform.machine())


# -------------------------------------------------------------------------------- precision choice


def test_auto_picks_bf16_only_for_torch_on_cpus_with_bf16_units(tmp_path):
    cascade = cpu_features(_cpuinfo(tmp_path, CASCADE_LAKE_FLAGS))
    sapphire = cpu_features(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))
    assert resolve_precision("auto", "torch", "cpu", sapphire) == "bf16"
    assert resolve_precision("auto", "torch", "cpu", cascade) == "fp32"
    assert resolve_precision("auto", "onnxruntime", "cpu", sapphire) == "fp32"  # never int8 by itself
    for precision in ("fp32", "bf16"):
        assert resolve_precision(precision, "torch", "cpu", cascade) == precision  # the engine falls back
    assert resolve_precision("int8", "onnxruntime") == "int8"


# ------------------------------------------------------------------------------ device, providers


def test_onnx_providers_prefer_tensorrt_then_cuda_then_cpu():
    everything = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider",
                  "TensorrtExecutionProvider"]
    assert onnx_providers("cuda:1", everything) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cuda", ["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu", everything) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device: 'cuda' asked for, but onnxruntime offers no GPU provider"):
        onnx_providers("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"])


def test_auto_device_is_a_gpu_where_the_backend_can_use_one():
    cpu, cuda, tensorrt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert resolve_device("auto", "onnxruntime", ["AzureExecutionProvider", cpu]) == "cpu"
    assert resolve_device("auto", "onnxruntime", [cpu, cuda]) == "cuda"
    assert resolve_device("auto", "onnxruntime", [tensorrt, cpu]) == "cuda"
    assert resolve_device("auto", "torch") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1", "onnxruntime", ["CPUExecutionProvider"]) == "cuda:1"  # asked for: kept
