"""Inference engines: the torch model and its ONNX Runtime export behind one call.

An engine takes a batch of RGB images (B, 3, H, W) float32 in [0, 1] and returns float32 numpy
(belief_maps, vector_fields). ``ENGINES`` maps a backend name to its constructor; both take a
``device`` and a ``precision`` (:data:`~hrpose_ros.devices.PRECISIONS`) and expose the precision actually used
(``engine.precision``); ONNX Runtime engines also their execution providers (``engine.providers``).

- torch: fp32, or bf16 = channels_last tensors under ``torch.autocast`` (oneDNN runs it on
  AMX / AVX-512 BF16 units; on a GPU, bf16 or fp16 autocast).
- onnxruntime: providers TensorRT > CUDA > CPU among those installed; fp32, or int8 = a static
  QDQ model (``<name>.int8.onnx``, written by training/quantize_int8.py).

Device and precision choice: :mod:`hrpose_ros.devices`; the checkpoint format:
:mod:`hrpose_ros.checkpoints`; the ONNX export: :mod:`hrpose_ros.onnx_export`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hrpose_ros.checkpoints import Checkpoint, load_checkpoint
from hrpose_ros.devices import (
    BF16_FLAGS,
    cpu_features,
    has_native_bf16,
    onnx_providers,
    parse_device,
    resolve_device,
    resolve_precision,
)
from hrpose_ros.networks import HRPose
from hrpose_ros.onnx_export import OUTPUT_NAMES, cached_onnx_export, load_onnx_metadata, model_cache_dir

__all__ = [
    "ENGINES",
    "OnnxEngine",
    "TorchEngine",
    "create_engine",
    "int8_model_path",
    "is_quantized_onnx",
]

logger = logging.getLogger(__name__)

# Graph ops that only a quantised ONNX model holds (QDQ and QOperator formats, dynamic quantisation).
_QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
)


class TorchEngine:
    """Run an HRPose model in torch (eval mode, inference_mode) on ``device``, in fp32 or bf16.

    bf16: the model and its input in channels_last memory format under ``torch.autocast``, so
    oneDNN runs the convolutions on AMX / AVX-512 BF16 units (session 1: 3.4x fp32 on this
    machine's CPU; bf16 alone without channels_last gained only 1.3x). On a CPU without native
    bf16 the engine runs fp32 and logs one warning naming the missing flags. On CUDA, bf16
    autocast where the GPU supports bf16, else fp16 autocast (``precision`` says which).
    ``features`` (:func:`cpu_features`) defaults to this machine's.
    """

    name = "torch"

    def __init__(
        self,
        model: HRPose,
        device: str = "cpu",
        precision: str = "fp32",
        features: dict[str, bool] | None = None,
    ):
        self.device = parse_device(str(device))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device here")
        precision = resolve_precision(precision, "torch", str(self.device), features)
        self.autocast_dtype: torch.dtype | None = None
        if precision == "bf16" and self.device.type == "cpu":
            features = cpu_features() if features is None else features
            if has_native_bf16(features):
                self.autocast_dtype = torch.bfloat16
            else:
                logger.warning(
                    "precision bf16: this CPU has neither %s (emulated bf16 is slower than fp32); "
                    "running fp32",
                    " nor ".join(BF16_FLAGS),
                )
                precision = "fp32"
        elif precision == "bf16":  # CUDA
            if torch.cuda.is_bf16_supported():
                self.autocast_dtype = torch.bfloat16
            else:
                logger.info("precision bf16: this GPU has no bf16 support; running fp16 autocast")
                self.autocast_dtype, precision = torch.float16, "fp16"
        self.precision = precision
        model = model.eval().to(self.device)
        if self.autocast_dtype is not None:
            # Outside inference_mode: converting inside it makes inference-only tensors that later
            # break export or training of the same model (this-machine.md, pitfalls).
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @property
    def description(self) -> str:
        """Return a one-line summary for logs, e.g. ``torch bf16 (autocast, channels_last) on cpu (AVX512)``.

        On the CPU, the parenthesis is torch's kernel instruction set (``get_cpu_capability``).
        """
        how = " (autocast, channels_last)" if self.autocast_dtype is not None else ""
        isa = f" ({torch.backends.cpu.get_cpu_capability()})" if self.device.type == "cpu" else ""
        return f"torch {self.precision}{how} on {self.device}{isa}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (belief_maps (B, C*K, H/4, W/4), vector_fields (B, C*(K-1)*2, H/4, W/4)) float32."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            if self.autocast_dtype is None:
                out = self.model(x)
                belief_maps, vector_fields = out.belief_maps, out.vector_fields
            else:
                x = x.contiguous(memory_format=torch.channels_last)
                belief_maps, vector_fields = self._forward_reduced(x)
        return _to_numpy(belief_maps), _to_numpy(vector_fields)

    def _forward_reduced(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (belief_maps, vector_fields) float32: backbone and hidden layers autocast, output conv fp32.

        The output convolution runs in fp32 because bf16 outputs (8-bit mantissa) turn the smooth
        top of a belief-map peak into a plateau of equal values, each of which the codec counts as
        a local maximum: on the shipped student, bf16 outputs gave 1.3-3.4x the peaks and up to
        2.6x the decoded instances of fp32 (4 synthetic frames). In fp32 this one 1x1
        convolution costs ~1 % of the network.
        """
        model = self.model
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            hidden = model.regressor[:-1](model.extract_features(x))
        out = model.regressor[-1](hidden.float())
        n = model.config.belief_channels
        return out[:, :n], out[:, n:]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """Return ``t`` as a C-contiguous float32 numpy array (channels_last outputs are strided)."""
    return t.float().contiguous().cpu().numpy()


def is_quantized_onnx(path) -> bool:
    """Return True if the ONNX model at ``path`` holds quantisation ops (QDQ or QOperator int8)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common type
        raise ValueError(f"{path}: not a readable ONNX file ({exc})") from exc
    return any(node.op_type in _QUANTIZED_OPS for node in model.graph.node)


class OnnxEngine:
    """Run an exported HRPose in ONNX Runtime: providers for ``device``, no idle spinning, all optimisations.

    ``providers``: an explicit list (kept in order, filtered by what is installed) overrides the
    device's :func:`onnx_providers`. ``threads``: intra-op threads (None = ORT's default, one
    per physical core). ``spinning`` False sets ``session.intra_op.allow_spinning`` to "0": ORT's
    workers then block instead of spinning after each run, which on 2 shared cores left the
    CPU to the decoding, PnP and ROS work that follow (measured in session 1). The session
    options are kept in ``options``; ``providers`` are those the session uses, ``precision`` is
    "int8" for a quantised file, else "fp32".
    """

    name = "onnxruntime"

    def __init__(
        self,
        path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        spinning: bool = False,
        output_names: Sequence[str] = OUTPUT_NAMES,
    ):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: ONNX file not found")
        available = ort.get_available_providers()
        if providers is None:
            chosen = onnx_providers(device, available)
        else:
            chosen = [p for p in providers if p in available]
            if not chosen:
                raise ValueError(f"providers: none of {list(providers)} available (have {sorted(available)})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.options = options
        self.precision = "int8" if is_quantized_onnx(path) else "fp32"
        try:
            self.session = ort.InferenceSession(
                str(path),
                options,
                providers=chosen,
                provider_options=[_provider_options(p, device) for p in chosen],
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: ONNX Runtime could not load the model ({exc})") from exc
        self.providers = tuple(self.session.get_providers())
        self.path = path
        self.output_names = list(output_names)

    @property
    def description(self) -> str:
        """Return a one-line summary for logs, e.g. ``onnxruntime int8 on CPUExecutionProvider``."""
        return f"onnxruntime {self.precision} on {' > '.join(self.providers)} ({self.path.name})"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return the outputs ``output_names`` float32: for HRPose (belief_maps, vector_fields)."""
        feed = {"image": np.ascontiguousarray(images, dtype=np.float32)}
        return tuple(self.session.run(self.output_names, feed))


def _provider_options(provider: str, device: str) -> dict[str, str]:
    """Return ONNX Runtime options for ``provider``: the GPU index of ``device``; TensorRT engines cached."""
    if provider == "CPUExecutionProvider":
        return {}
    options = {"device_id": str(parse_device(device).index or 0)}
    if provider == "TensorrtExecutionProvider":
        # Building a TensorRT engine takes minutes; the cache makes later starts fast.
        options.update(
            trt_engine_cache_enable="True", trt_engine_cache_path=str(model_cache_dir() / "tensorrt")
        )
    return options


def int8_model_path(path) -> Path:
    """Return the int8 QDQ ONNX file of the model ``path``: ``path`` if quantised, else ``<stem>.int8.onnx``.

    The rule follows training/quantize_int8.py, which writes ``x.int8.onnx`` next to ``x.onnx``
    (and exports ``x.pt`` to ``x.onnx`` first): for ``x.pt`` or ``x.onnx`` the int8 model is the
    sibling ``x.int8.onnx``. ValueError naming the expected file (and how to make it) if missing.
    """
    path = Path(path)
    if path.suffix == ".onnx" and is_quantized_onnx(path):
        return path
    sibling = path.with_name(path.stem + ".int8.onnx")
    if not sibling.is_file():
        raise ValueError(
            f"{sibling}: int8 model not found (precision int8 runs the static QDQ model next to {path.name}; "
            f"make it with: python -m training.quantize_int8 {path})"
        )
    return sibling


def create_engine(
    backend: str,
    path,
    device: str = "auto",
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
) -> tuple[object, Checkpoint]:
    """Return (engine, checkpoint metadata) for ``backend`` ("torch" | "onnxruntime") from ``path``.

    ``device``: "cpu", "cuda", "cuda:N" or "auto" (a GPU where the backend can use one,
    :func:`resolve_device`).

    ``path`` is a checkpoint (.pt) or an ONNX export (.onnx, onnxruntime only); for onnxruntime a
    .pt is exported once into the cache (:func:`cached_onnx_export`). ``precision`` is one of
    :data:`~hrpose_ros.devices.PRECISIONS` (see :func:`resolve_precision`; "auto" picks per hardware). For
    onnxruntime, int8 runs :func:`int8_model_path` of ``path``; fp32 and auto run the file given
    as it is (an int8 file stays int8). ``engine.precision`` is the precision actually used.
    ``input_size`` (W, H): the network input the engine will see, when not the checkpoint's (an
    export from a .pt is made for it; a given .onnx must accept it).
    """
    if backend not in ENGINES:
        raise ValueError(f"backend: expected one of {sorted(ENGINES)}, got {backend!r}")
    device = resolve_device(device, backend)
    resolve_precision(precision, backend, device)  # bad names and combinations fail before any loading
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: model file not found")
    return ENGINES[backend](path, device, precision, input_size)


def _torch_engine(path: Path, device: str, precision: str, _input_size=None):
    if path.suffix == ".onnx":
        raise ValueError(f"{path}: the torch backend needs a .pt checkpoint, not an ONNX file")
    checkpoint = load_checkpoint(path)
    return TorchEngine(checkpoint.build_model(), device, precision), checkpoint


def _onnx_engine(path: Path, device: str, precision: str, input_size=None):
    if resolve_precision(precision, "onnxruntime", device) == "int8":
        onnx_path = int8_model_path(path)
    else:
        onnx_path = path if path.suffix == ".onnx" else cached_onnx_export(path, input_size=input_size)
    metadata = load_onnx_metadata(onnx_path)
    return OnnxEngine(onnx_path, device=device), metadata


# Backend name -> constructor (path, device, precision, input_size) -> (engine, checkpoint metadata).
ENGINES = {"torch": _torch_engine, "onnxruntime": _onnx_engine}
