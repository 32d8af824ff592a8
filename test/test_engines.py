"""Engines: torch and ONNX Runtime at each precision (fp32 / bf16 / int8 / auto), providers and options.

The bf16 tests run bf16 where this CPU computes it natively (AMX / AVX-512 BF16, as on the
project's machines) and check the clean fall-back to fp32 with the flags of a CPU that lacks it
(a Cascade Lake Xeon's, not this machine's).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hrpose_ros.checkpoints import Checkpoint, save_checkpoint
from hrpose_ros.codec import CodecConfig
from hrpose_ros.devices import CPU_FLAGS, has_native_bf16, onnx_providers
from hrpose_ros.engines import OnnxEngine, TorchEngine, create_engine, int8_model_path, is_quantized_onnx
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.onnx_export import export_onnx
from hrpose_ros.pipeline import PosePipeline
from training.quantize_int8 import quantize_int8
from training.toy_data import toy_objects

INPUT_SIZE = (160, 128)  # (W, H) of the tiny test network


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Return (checkpoint .pt, ONNX export) of a tiny 2-class HRPose with random weights and BN statistics."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("engines")
    config = HRPoseConfig(variant="tiny", num_classes=2, head_channels=32)
    model = HRPose(config)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint = Checkpoint(config, CodecConfig(num_classes=2), INPUT_SIZE, toy_objects(), model.state_dict())
    pt = save_checkpoint(root / "tiny.pt", checkpoint)
    return pt, export_onnx(checkpoint, root / "tiny.onnx")


@pytest.fixture(scope="module")
def torch_engines(tiny):
    """Return (fp32, bf16) torch engines of the tiny checkpoint (bf16 as this CPU allows)."""
    pt, _ = tiny
    return create_engine("torch", pt, precision="fp32")[0], create_engine("torch", pt, precision="bf16")[0]


def _image_batch(seed: int = 0) -> np.ndarray:
    """Return a deterministic smooth (1, 3, H, W) float32 image in [0, 1]: random 8x8 colours upsampled."""
    coarse = torch.from_numpy(np.random.default_rng(seed).random((1, 3, 8, 10), dtype=np.float32))
    width, height = INPUT_SIZE
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------ invalid precision, device


@pytest.mark.parametrize(
    "backend, precision, message",
    [
        ("torch", "fp16", "precision: expected one of fp32, bf16, int8, auto, got 'fp16'"),
        ("onnxruntime", "", "precision: expected one of fp32, bf16, int8, auto, got ''"),
        ("torch", "int8", "precision: int8 runs in the onnxruntime backend"),
        ("onnxruntime", "bf16", "precision: bf16 runs in the torch backend"),
    ],
)
def test_invalid_precision_names_the_argument_and_choices(tiny, backend, precision, message):
    pt, _ = tiny
    with pytest.raises(ValueError, match=message):
        create_engine(backend, pt, precision=precision)
    with pytest.raises(ValueError, match=message):
        PosePipeline.from_pretrained(pt, backend=backend, precision=precision)


def test_invalid_device_names_the_argument(tiny):
    pt, onnx_path = tiny
    with pytest.raises(ValueError, match="device: expected auto, cpu, cuda or cuda:N, got 'gpu'"):
        create_engine("torch", pt, device="gpu")
    with pytest.raises(ValueError, match="device: expected cpu, cuda or cuda:N, got 'gpu'"):
        onnx_providers("gpu")


# ----------------------------------------------------------------------------------------- torch


def test_torch_bf16_maps_match_fp32(torch_engines):
    fp32, bf16 = torch_engines
    assert fp32.precision == "fp32"
    assert bf16.precision == ("bf16" if has_native_bf16() else "fp32")
    images = _image_batch()
    for a, b in zip(fp32(images), bf16(images)):
        assert a.shape == b.shape and b.dtype == np.float32 and b.flags.c_contiguous
        assert _cosine(a, b) > 0.99
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_torch_bf16_outputs_are_fp32_values_so_peaks_do_not_tie(torch_engines):
    # The output layer runs in fp32: values rounded to bf16 (8-bit mantissa) would form plateaus
    # that the codec counts as several peaks. Here at most a few values happen to be bf16 numbers.
    belief, _ = torch_engines[1](_image_batch())
    representable = belief == torch.from_numpy(belief).bfloat16().float().numpy()
    assert representable.mean() < 0.05


def test_torch_bf16_keeps_the_strongest_peaks_where_decoding_is_well_defined(torch_engines):
    """The strongest belief peak of each channel stays within one map pixel in bf16.

    Random weights give maps without trained peaks, so only channels whose maximum beats every
    value outside its 3x3 window by more than twice the channel's largest fp32-bf16 difference
    count: there no bf16 rounding can move the maximum out of the window. Needs such channels.
    """
    fp32, bf16 = torch_engines
    checked = 0
    for seed in range(3):
        images = _image_batch(seed)
        for channel_a, channel_b in zip(fp32(images)[0][0], bf16(images)[0][0]):
            error = np.abs(channel_a - channel_b).max()
            y, x = np.unravel_index(np.argmax(channel_a), channel_a.shape)
            outside = channel_a.copy()
            outside[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = -np.inf
            if channel_a[y, x] - outside.max() > 2 * error:
                checked += 1
                yb, xb = np.unravel_index(np.argmax(channel_b), channel_b.shape)
                assert max(abs(yb - y), abs(xb - x)) <= 1
                assert abs(channel_b.max() - channel_a.max()) <= error
    assert checked >= 10


def test_bf16_without_bf16_units_runs_fp32_with_one_warning(tiny, torch_engines, tmp_path, caplog):
    pt, _ = tiny
    # the features of a Cascade Lake Xeon: AVX-512 and VNNI, no bf16 units
    cascade = {flag: flag in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni") for flag in CPU_FLAGS}
    fp32 = torch_engines[0]
    with caplog.at_level(logging.WARNING, logger="hrpose_ros.engines"):
        engine = TorchEngine(fp32.model, "cpu", "bf16", features=cascade)
        images = _image_batch()
        maps = [engine(images) for _ in range(2)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "avx512_bf16" in warnings[0].getMessage() and "amx_bf16" in warnings[0].getMessage()
    assert engine.precision == "fp32" and engine.autocast_dtype is None
    for a, b in zip(fp32(images), maps[1]):
        assert np.array_equal(a, b)


def test_bf16_engine_leaves_the_model_trainable():
    # channels_last conversion happens outside inference_mode: the model still trains afterwards.
    torch.manual_seed(0)
    engine = TorchEngine(HRPose(HRPoseConfig(variant="tiny", head_channels=8)), precision="bf16")
    images = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    engine(images)
    model = engine.model.train()
    model(torch.from_numpy(images)).belief_maps.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_from_pretrained_passes_precision_through(tiny):
    pt, _ = tiny
    native = "bf16" if has_native_bf16() else "fp32"
    assert PosePipeline.from_pretrained(pt).engine.precision == "fp32"
    assert PosePipeline.from_pretrained(pt, precision="auto").engine.precision == native
    assert PosePipeline.from_pretrained(pt, precision="bf16").engine.description.startswith(f"torch {native}")


def test_torch_on_cuda_needs_a_cuda_device(tiny):
    pt, _ = tiny
    if torch.cuda.is_available():
        assert create_engine("torch", pt, device="cuda")[0].device.type == "cuda"
    else:
        with pytest.raises(ValueError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
            create_engine("torch", pt, device="cuda")


# ---------------------------------------------------------------------------------- onnxruntime


def test_onnx_engine_runs_on_cpu_without_spinning(tiny):
    pt, onnx_path = tiny
    engine, metadata = create_engine("onnxruntime", onnx_path)
    assert isinstance(engine, OnnxEngine)
    assert engine.providers == ("CPUExecutionProvider",)
    assert engine.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert engine.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert engine.precision == "fp32" and metadata.input_size == INPUT_SIZE
    images = _image_batch()
    for a, b in zip(engine(images), create_engine("torch", pt)[0](images)):
        assert np.abs(a - b).max() < 1e-4
    spinning = OnnxEngine(onnx_path, spinning=True)
    with pytest.raises(RuntimeError, match="allow_spinning"):  # ORT's default (spin) left alone
        spinning.options.get_session_config_entry("session.intra_op.allow_spinning")


def test_auto_device_engines_run_where_the_backend_can(tiny):
    # The default of create_engine, PosePipeline.from_pretrained and pose_node.
    pt, onnx_path = tiny
    gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(ort.get_available_providers())
    engine, _ = create_engine("onnxruntime", onnx_path)
    assert (engine.providers[0] in gpu) if gpu else engine.providers == ("CPUExecutionProvider",)
    engine, _ = create_engine("torch", pt)
    assert engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_onnx_engine_on_cuda_uses_a_gpu_provider_or_says_there_is_none(tiny):
    _, onnx_path = tiny
    gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(ort.get_available_providers())
    if gpu:
        assert create_engine("onnxruntime", onnx_path, device="cuda")[0].providers[0] in gpu
    else:
        with pytest.raises(ValueError, match="device: 'cuda' asked for, but onnxruntime offers no GPU"):
            create_engine("onnxruntime", onnx_path, device="cuda")


def test_int8_without_a_quantised_file_names_the_file(tiny):
    pt, onnx_path = tiny
    sibling = onnx_path.with_name("tiny.int8.onnx")
    assert not sibling.exists()
    for path in (pt, onnx_path):
        message = f"{re.escape(str(sibling))}: int8 model not found .*training.quantize_int8"
        with pytest.raises(ValueError, match=message):
            create_engine("onnxruntime", path, precision="int8")


def test_int8_runs_the_quantised_file_next_to_the_model(tiny, tmp_path):
    pt, onnx_path = tiny
    # A copy of the model in its own directory, quantised there (calibrated on two smooth images).
    model = tmp_path / "tiny.pt"
    model.write_bytes(pt.read_bytes())
    fp32 = export_onnx(create_engine("torch", model)[1], tmp_path / "tiny.onnx")
    calibration = [np.round(255 * _image_batch(s)[0].transpose(1, 2, 0)).astype(np.uint8) for s in (4, 5)]
    int8 = quantize_int8(fp32, calibration)
    assert int8 == tmp_path / "tiny.int8.onnx" and is_quantized_onnx(int8) and not is_quantized_onnx(fp32)
    assert int8_model_path(model) == int8_model_path(fp32) == int8_model_path(int8) == int8
    engine, metadata = create_engine("onnxruntime", model, precision="int8")
    assert engine.precision == "int8" and engine.path == int8 and metadata.input_size == INPUT_SIZE
    assert engine.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # The int8 file named directly runs as it is, whatever the (default fp32) precision asked.
    assert create_engine("onnxruntime", int8)[0].precision == "int8"
    assert create_engine("onnxruntime", fp32)[0].precision == "fp32"
    images = _image_batch(6)
    for a, b in zip(create_engine("onnxruntime", fp32)[0](images), engine(images)):
        assert _cosine(a, b) > 0.98
