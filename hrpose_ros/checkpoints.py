"""HRPose checkpoints: what a trained network needs at run time, saved to and loaded from a .pt file.

A checkpoint is a ``torch.save``d dict of plain types and tensors (loads with
``weights_only=True``): model and codec configs, input size, the objects it knows, the training
config, and the weights. :func:`hrpose_ros.onnx_export.export_onnx` writes the same metadata into
the ONNX file, so either file alone builds a pipeline.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hrpose_ros.codec import CodecConfig
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.types import ObjectModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "checkpoint_from_metadata",
    "compact_points",
    "load_checkpoint",
    "object_from_dict",
    "object_to_dict",
    "read_torch_file",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "hrpose-checkpoint-1"


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
            "objects": [object_to_dict(o) for o in self.objects],
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


def object_to_dict(obj: ObjectModel) -> dict:
    return {
        "obj_id": int(obj.obj_id),
        "name": obj.name,
        "points": np.asarray(obj.points, dtype=np.float32).tolist(),
        "diameter": float(obj.diameter),
        "symmetries": np.asarray(obj.symmetries, dtype=np.float64).tolist(),
    }


def object_from_dict(d: dict) -> ObjectModel:
    return ObjectModel(
        obj_id=int(d["obj_id"]),
        name=str(d["name"]),
        points=np.asarray(d["points"]),
        diameter=float(d["diameter"]),
        symmetries=np.asarray(d["symmetries"]),
    )


def checkpoint_from_metadata(meta: dict, where: str) -> Checkpoint:
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
            objects=[object_from_dict(o) for o in meta["objects"]],
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


def read_torch_file(path, kind: str, weights_only: bool = True):
    """Return what torch saved at ``path``; a ValueError names the file and its ``kind`` ("weights",
    "refiner", ...) when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {kind} file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable {kind} file ({exc})") from exc


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
    checkpoint = checkpoint_from_metadata(meta, str(path))
    checkpoint.state_dict = state
    return checkpoint
