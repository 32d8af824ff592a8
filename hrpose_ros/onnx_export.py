"""ONNX export of an HRPose checkpoint: the network and the checkpoint's metadata in one file, cached.

:func:`export_onnx` writes the file, :func:`load_onnx_metadata` reads the metadata back, and
:func:`cached_onnx_export` exports a checkpoint once into :func:`model_cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from hrpose_ros.checkpoints import Checkpoint, checkpoint_from_metadata, load_checkpoint
from hrpose_ros.networks import HRPose

__all__ = [
    "OUTPUT_NAMES",
    "cached_onnx_export",
    "export_onnx",
    "load_onnx_metadata",
    "model_cache_dir",
]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("belief_maps", "vector_fields")


def model_cache_dir(cache_dir=None) -> Path:
    """Return the directory for derived model files: ``cache_dir``, $HRPOSE_CACHE, or ~/.cache/hrpose_ros."""
    return Path(cache_dir or os.environ.get("HRPOSE_CACHE", Path.home() / ".cache" / "hrpose_ros"))


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
    return checkpoint_from_metadata(json.loads(props["hrpose"]), str(path))


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
    target = model_cache_dir(cache_dir) / f"{checkpoint_path.stem}-{digest}{size}.onnx"
    if not target.is_file():
        logger.info("exporting %s to %s", checkpoint_path, target)
        checkpoint = load_checkpoint(checkpoint_path)
        if input_size is not None:
            checkpoint = replace(checkpoint, input_size=(int(input_size[0]), int(input_size[1])))
        export_onnx(checkpoint, target)
    return target
