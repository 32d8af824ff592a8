"""Checkpoints and inference engines: the torch model and its ONNX Runtime export behind one call.

An engine takes a batch of RGB images (B, 3, H, W) float32 in [0, 1] and returns numpy
(belief_maps, vector_fields). ``ENGINES`` maps a backend name to its constructor; precision
(fp32 now) and execution providers are constructor arguments, so bf16/int8 variants and the
TensorRT > CUDA > CPU provider order slot in as more arguments or entries.

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
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hrpose_ros.codec import CodecConfig
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.types import ObjectModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "ENGINES",
    "Checkpoint",
    "OnnxEngine",
    "TorchEngine",
    "compact_points",
    "create_engine",
    "export_onnx",
    "load_checkpoint",
    "load_onnx_metadata",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hrpose-checkpoint-1"
OUTPUT_NAMES = ("belief_maps", "vector_fields")


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


def cached_onnx_export(checkpoint_path, cache_dir=None) -> Path:
    """Return an ONNX export of the checkpoint at ``checkpoint_path``, exporting it once into a cache.

    The cache file is named by the checkpoint's content hash, so a retrained checkpoint re-exports.
    """
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ValueError(f"{checkpoint_path}: checkpoint file not found")
    digest = hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()[:16]
    cache_dir = Path(cache_dir or os.environ.get("HRPOSE_CACHE", Path.home() / ".cache" / "hrpose_ros"))
    target = cache_dir / f"{checkpoint_path.stem}-{digest}.onnx"
    if not target.is_file():
        logger.info("exporting %s to %s", checkpoint_path, target)
        export_onnx(load_checkpoint(checkpoint_path), target)
    return target


class TorchEngine:
    """Run an HRPose model in torch (eval mode, inference_mode) on ``device``."""

    name = "torch"

    def __init__(self, model: HRPose, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (belief_maps (B, C*K, H/4, W/4), vector_fields (B, C*(K-1)*2, H/4, W/4)) float32."""
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device))
        return out.belief_maps.float().cpu().numpy(), out.vector_fields.float().cpu().numpy()


class OnnxEngine:
    """Run an exported HRPose in ONNX Runtime with the given execution providers (default: CPU)."""

    name = "onnxruntime"

    def __init__(
        self, path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        if not chosen:
            raise ValueError(f"providers: none of {list(providers)} available (have {sorted(available)})")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: ONNX Runtime could not load the model ({exc})") from exc

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (belief_maps, vector_fields) float32, as :meth:`TorchEngine.__call__`."""
        belief, vectors = self.session.run(
            list(OUTPUT_NAMES), {"image": np.ascontiguousarray(images, dtype=np.float32)}
        )
        return belief, vectors


def create_engine(backend: str, path, device: str = "cpu") -> tuple[object, Checkpoint]:
    """Return (engine, checkpoint metadata) for ``backend`` ("torch" | "onnxruntime") from ``path``.

    ``path`` is a checkpoint (.pt) or an ONNX export (.onnx, onnxruntime only); for onnxruntime a
    .pt is exported once into the cache (:func:`cached_onnx_export`).
    """
    if backend not in ENGINES:
        raise ValueError(f"backend: expected one of {sorted(ENGINES)}, got {backend!r}")
    return ENGINES[backend](Path(path), device)


def _torch_engine(path: Path, device: str):
    if path.suffix == ".onnx":
        raise ValueError(f"{path}: the torch backend needs a .pt checkpoint, not an ONNX file")
    checkpoint = load_checkpoint(path)
    return TorchEngine(checkpoint.build_model(), device), checkpoint


def _onnx_engine(path: Path, device: str):
    if device != "cpu":
        raise ValueError(f"device: the onnxruntime backend runs on 'cpu' here, got {device!r}")
    onnx_path = path if path.suffix == ".onnx" else cached_onnx_export(path)
    return OnnxEngine(onnx_path), load_onnx_metadata(onnx_path)


# Backend name -> constructor (path, device) -> (engine, checkpoint metadata).
ENGINES = {"torch": _torch_engine, "onnxruntime": _onnx_engine}
