"""Checkpoints and inference engines: the torch model and its ONNX Runtime export behind one call.

An engine takes a batch of RGB images (B, 3, H, W) float32 in [0, 1] and returns float32 numpy
(belief_maps, vector_fields). ``ENGINES`` maps a backend name to its constructor; both take a
``device`` and a ``precision`` (:data:`PRECISIONS`) and expose the precision actually used
(``engine.precision``); ONNX Runtime engines also their execution providers (``engine.providers``).

- torch: fp32, or bf16 = channels_last tensors under ``torch.autocast`` (oneDNN runs it on
  AMX / AVX-512 BF16 units; on a GPU, bf16 or fp16 autocast).
- onnxruntime: providers TensorRT > CUDA > CPU among those installed; fp32, or int8 = a static
  QDQ model (``<name>.int8.onnx``, written by training/quantize_int8.py).

:func:`cpu_features` says what the CPU offers, so "auto" and bf16 fall back cleanly.

A checkpoint is a ``torch.save``d dict of plain types and tensors (loads with
``weights_only=True``): model and codec configs, input size, the objects it knows, the training
config, and the weights. ``export_onnx`` writes the same metadata into the ONNX file, so either
file alone builds a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from hrpose_ros.codec import CodecConfig
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.types import ObjectModel, checked_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "CPU_FLAGS",
    "ENGINES",
    "ONNX_PROVIDERS",
    "PRECISIONS",
    "Checkpoint",
    "OnnxEngine",
    "TorchEngine",
    "cached_onnx_export",
    "compact_points",
    "cpu_features",
    "cpu_model",
    "create_engine",
    "export_onnx",
    "has_native_bf16",
    "int8_model_path",
    "is_quantized_onnx",
    "load_checkpoint",
    "load_onnx_metadata",
    "onnx_providers",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hrpose-checkpoint-1"
OUTPUT_NAMES = ("belief_maps", "vector_fields")

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
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# torch's cpuinfo probes (private, present in torch 2.x) for the flags they cover, where no
# /proc/cpuinfo exists (macOS, Windows).
_TORCH_CPU_PROBES = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_tile": "_is_amx_tile_supported",
}
# Graph ops that only a quantised ONNX model holds (QDQ and QOperator formats, dynamic quantisation).
_QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
)


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
    return any(features.get(flag, False) for flag in _BF16_FLAGS)


def resolve_precision(
    precision: str, backend: str = "torch", device: str = "cpu", features: dict[str, bool] | None = None
) -> str:
    """Return the precision to ask the ``backend`` engine for: ``precision``, or what "auto" picks here.

    "auto" picks bf16 for torch where the hardware computes bf16 natively (a CPU with AVX-512
    BF16 or AMX BF16, ``features`` from :func:`cpu_features`; a CUDA GPU that supports bf16), and
    fp32 everywhere else, including every onnxruntime engine. Why: measured on this project's
    2-core Xeon (AMX) in session 1, torch bf16 with channels_last ran the student 3.4x faster than
    torch fp32 (57 vs 204 ms at 640x480), faster than ONNX Runtime fp32 (96 ms); without bf16
    units oneDNN emulates bf16 and is slower than fp32. "auto" never picks int8: issue 8 makes int8
    the CPU default only if it costs at most 1 point of ADD(-S) recall, which has not been
    measured with the shipped weights yet (training/quantize_int8.py measures it); ask for int8
    explicitly.

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
    if _parse_device(device).type == "cuda":
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


def _parse_device(device: str) -> torch.device:
    """Return ``device`` ("cpu", "cuda" or "cuda:N") as a torch.device (ValueError naming ``device``)."""
    return torch.device(checked_device(device))


def _cache_dir(cache_dir=None) -> Path:
    """Return the directory for derived model files: ``cache_dir``, $HRPOSE_CACHE, or ~/.cache/hrpose_ros."""
    return Path(cache_dir or os.environ.get("HRPOSE_CACHE", Path.home() / ".cache" / "hrpose_ros"))


@dataclass
class Checkpoint:
    """What a trained HRPose needs at run time: configs, input size (W, H), objects (class order), weights."""

    model_config: HRPoseConfig
    codec_config: CodecConfig
    input_size: tuple[int, int]
    objects: list[ObjectModel]
    state_dict: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

    def build_model(self) -> HRPose:
        """Return the HRPose model with these weights, in eval mode on the CPU."""
        model = HRPose(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def metadata(self) -> dict:
        """Return everything but the weights as JSON-able plain types."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config.to_dict(),
            "codec_config": asdict(self.codec_config),
            "input_size": list(self.input_size),
            "objects": [_object_to_dict(o) for o in self.objects],
            "train_config": self.train_config,
            "history": self.history,
        }


def compact_points(points: np.ndarray, max_points: int = 1000, seed: int = 0) -> np.ndarray:
    """Return (M <= max_points, 3) of ``points``, keeping the extreme points so the bounding box is unchanged.

    HRPose's 3D keypoints are the box corners of the model points (geometry.keypoints_3d), so a
    subset that keeps each axis' minimum and maximum gives the same keypoints.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) <= max_points:
        return points
    extremes = np.unique(np.concatenate([points.argmin(axis=0), points.argmax(axis=0)]))
    rest = np.setdiff1d(np.arange(len(points)), extremes)
    keep = np.random.default_rng(seed).choice(rest, size=max_points - len(extremes), replace=False)
    return points[np.sort(np.concatenate([extremes, keep]))]


def _object_to_dict(obj: ObjectModel) -> dict:
    return {
        "obj_id": int(obj.obj_id),
        "name": obj.name,
        "points": np.asarray(obj.points, dtype=np.float32).tolist(),
        "diameter": float(obj.diameter),
        "symmetries": np.asarray(obj.symmetries, dtype=np.float64).tolist(),
    }


def _object_from_dict(d: dict) -> ObjectModel:
    return ObjectModel(
        obj_id=int(d["obj_id"]),
        name=str(d["name"]),
        points=np.asarray(d["points"]),
        diameter=float(d["diameter"]),
        symmetries=np.asarray(d["symmetries"]),
    )


def _checkpoint_from_metadata(meta: dict, where: str) -> Checkpoint:
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{where}: not an HRPose checkpoint (format {meta.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    try:
        return Checkpoint(
            model_config=HRPoseConfig(**meta["model_config"]),
            codec_config=CodecConfig(**meta["codec_config"]),
            input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
            objects=[_object_from_dict(o) for o in meta["objects"]],
            train_config=dict(meta.get("train_config", {})),
            history=dict(meta.get("history", {})),
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{where}: checkpoint metadata incomplete ({exc!r})") from exc


def save_checkpoint(path, checkpoint: Checkpoint, half: bool = False) -> Path:
    """Write ``checkpoint`` to ``path`` and return the path; ``half`` stores float weights as float16.

    float16 storage halves the file (the shipped default must stay small); weights are cast back
    to float32 when loaded, a change below 1e-3 relative per weight.
    """
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in checkpoint.state_dict.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"metadata": json.dumps(checkpoint.metadata()), "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Return the :class:`Checkpoint` stored at ``path``; ValueError naming the file if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(raw["metadata"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable HRPose checkpoint ({exc})") from exc
    checkpoint = _checkpoint_from_metadata(meta, str(path))
    checkpoint.state_dict = state
    return checkpoint


def load_onnx_metadata(path) -> Checkpoint:
    """Return the checkpoint metadata (no weights) stored in an ONNX file written by :func:`export_onnx`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common type
        raise ValueError(f"{path}: not a readable ONNX file ({exc})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if "hrpose" not in props:
        raise ValueError(f"{path}: ONNX file has no HRPose metadata (export it with training/export_onnx.py)")
    return _checkpoint_from_metadata(json.loads(props["hrpose"]), str(path))


class _ExportWrapper(torch.nn.Module):
    """HRPose without the feature output (only distillation needs it)."""

    def __init__(self, model: HRPose):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model(image)
        return out.belief_maps, out.vector_fields


def export_onnx(checkpoint: Checkpoint, path, opset: int = 17, dynamic_size: bool = False) -> Path:
    """Write the checkpoint's network to ONNX at ``path`` (input ``image`` (B, 3, H, W) in [0, 1]).

    Legacy TorchScript exporter (dynamo=False: no onnxscript needed), weights embedded
    (no .onnx.data), batch dynamic; H and W fixed to the input size unless ``dynamic_size``
    (~5-10 % slower here). The checkpoint metadata goes into the file's metadata_props.
    """
    import onnx

    model = _ExportWrapper(checkpoint.build_model()).eval()
    width, height = checkpoint.input_size
    dummy = torch.zeros(1, 3, height, width)
    axes = {"image": {0: "batch"}, "belief_maps": {0: "batch"}, "vector_fields": {0: "batch"}}
    if dynamic_size:
        for name in axes:
            axes[name].update({2: "height", 3: "width"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (no onnxscript); its deprecation and the tracer's
        # notes on the shape checks in HRPose.forward (constant for a traced graph) are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            external_data=False,
        )
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "hrpose", json.dumps(checkpoint.metadata())
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def cached_onnx_export(checkpoint_path, cache_dir=None, input_size: tuple[int, int] | None = None) -> Path:
    """Return an ONNX export of the checkpoint at ``checkpoint_path``, exporting it once into a cache.

    The cache file is named by the checkpoint's content hash, so a retrained checkpoint re-exports.
    ``input_size`` (W, H) exports for another input size than the checkpoint's (the export's H and
    W are fixed: a dynamic-size graph ran 5-10 % slower); its metadata then gives that size.
    """
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ValueError(f"{checkpoint_path}: checkpoint file not found")
    digest = hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()[:16]
    size = f"-{input_size[0]}x{input_size[1]}" if input_size is not None else ""
    target = _cache_dir(cache_dir) / f"{checkpoint_path.stem}-{digest}{size}.onnx"
    if not target.is_file():
        logger.info("exporting %s to %s", checkpoint_path, target)
        checkpoint = load_checkpoint(checkpoint_path)
        if input_size is not None:
            checkpoint = replace(checkpoint, input_size=(int(input_size[0]), int(input_size[1])))
        export_onnx(checkpoint, target)
    return target


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
        self.device = _parse_device(str(device))
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
                    " nor ".join(_BF16_FLAGS),
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
    if _parse_device(device).type == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in ONNX_PROVIDERS if p in available]
    if chosen == ["CPUExecutionProvider"] or not chosen:
        raise ValueError(
            f"device: {device!r} asked for, but onnxruntime offers no GPU provider here "
            f"(available: {', '.join(available)}; install onnxruntime-gpu)"
        )
    return chosen


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
    options = {"device_id": str(_parse_device(device).index or 0)}
    if provider == "TensorrtExecutionProvider":
        # Building a TensorRT engine takes minutes; the cache makes later starts fast.
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(_cache_dir() / "tensorrt"))
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
    :data:`PRECISIONS` (see :func:`resolve_precision`; "auto" picks per hardware). For
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
