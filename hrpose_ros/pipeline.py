"""PosePipeline: RGB image + camera -> object poses, in four swappable stages with timings.

Stages (each one method, timed in ``last_timings``):

1. ``preprocess``: resize the image by one scale so it fits the network input and pad it
   (letterbox), RGB in [0, 1];
2. ``estimate`` ("inference"): the engine (torch or ONNX Runtime) -> belief maps, vector fields;
3. ``decode``: the codec parses keypoints into instances (input-image pixels after undoing the
   letterbox);
4. ``solve`` ("pnp"): PnP per instance with the camera's K and distortion.

This is HRPose's bottom-up path (no detector: the whole frame is one crop). A detector path
(single-shot detector, then crops into a shared regressor) replaces ``preprocess``/``estimate``/
``decode`` with its own and keeps ``solve``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hrpose_ros.codec import DecodedInstance, KeypointCodec
from hrpose_ros.engines import create_engine
from hrpose_ros.letterbox import Letterbox, letterbox, scale_points
from hrpose_ros.pose_solver import PoseSolver, PoseThresholds, keypoint_spread, split_thresholds
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose, checked_image

__all__ = [
    "DEFAULT_WEIGHTS",
    "NetworkMaps",
    "PoseThresholds",
    "PosePipeline",
    "keypoint_spread",
]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "weights" / "hrpose_student_kd.pt"


@dataclass(frozen=True)
class NetworkMaps:
    """One image's network output: belief maps (C*K, h, w), vector fields, its letterbox, stage seconds."""

    belief_maps: np.ndarray
    vector_fields: np.ndarray
    box: Letterbox
    timings: dict[str, float]


class PosePipeline:
    """Image (H, W, 3) uint8 RGB + CameraModel -> list[ObjectPose], with per-stage timings."""

    def __init__(
        self,
        engine,
        codec: KeypointCodec,
        objects: list[ObjectModel],
        input_size: tuple[int, int],
        thresholds: PoseThresholds | None = None,
    ):
        thresholds = thresholds if thresholds is not None else PoseThresholds()
        if len(objects) != codec.config.num_classes:
            raise ValueError(
                f"objects: the codec has {codec.config.num_classes} classes, got {len(objects)} objects"
            )
        self.engine = engine
        self.codec = codec
        self.objects = list(objects)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.solver = PoseSolver(self.objects, thresholds)
        self.thresholds = thresholds
        self.keypoints_3d = self.solver.keypoints_3d
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls,
        path=None,
        backend: str = "torch",
        device: str = "auto",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        estimator: str = "hrpose",
        **thresholds,
    ) -> PosePipeline:
        """Return a pipeline for the checkpoint (.pt) or ONNX file at ``path`` (None = shipped default).

        ``estimator`` "hrpose" (the default, as before it existed): this class, on the shipped HRPose
        weights when ``path`` is None. "auto" or "crops" hand everything to
        :func:`hrpose_ros.estimators.load_estimator`, which returns the estimator the file belongs
        to ("auto"; with no ``path`` the shipped default, the crop estimator's when shipped) or
        checks that it is a crops file ("crops"), so the result may be a CropPosePipeline.

        ``backend``, ``device`` ("auto": a GPU where the backend can use one, else the CPU) and
        ``precision`` ("fp32" | "bf16" | "int8" | "auto") choose the engine
        (:func:`hrpose_ros.engines.create_engine`); ``pipeline.engine.precision`` is the
        precision actually used. ``input_size`` (W, H) letterboxes images into another network
        input than the model's trained one (the ONNX export is made for it). ``thresholds``:
        PoseThresholds fields (min_score, max_reprojection_error, ransac, ransac_threshold,
        max_instances, min_depth, max_depth) and
        codec decoding fields (peak_threshold, angle_threshold_deg, min_keypoints). A missing or
        corrupt file raises ValueError naming it.
        """
        if estimator != "hrpose":
            from hrpose_ros.estimators import load_estimator

            return load_estimator(path, estimator, backend=backend, device=device, precision=precision,
                                  input_size=input_size, **thresholds)
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        engine, checkpoint = create_engine(backend, path, device, precision, input_size)
        pose_thresholds, decoding = split_thresholds(
            thresholds, ("peak_threshold", "angle_threshold_deg", "min_keypoints")
        )
        codec_config = replace(checkpoint.codec_config, **decoding)
        return cls(
            engine,
            KeypointCodec(codec_config),
            checkpoint.objects,
            input_size if input_size is not None else checkpoint.input_size,
            pose_thresholds,
        )

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]:
        """Return the object poses found in ``image_rgb`` (H, W, 3) uint8 seen by ``camera`` (metres)."""
        maps = self.estimate_maps(image_rgb, camera)
        poses, timings = self.poses_from_maps(maps, camera)
        self.last_timings = {**maps.timings, **timings}
        return poses

    def estimate_maps(self, image_rgb: np.ndarray, camera: CameraModel) -> NetworkMaps:
        """Return the network's maps of ``image_rgb`` (stages preprocess + inference), sizes checked.

        With :meth:`poses_from_maps` this is ``__call__`` in two halves, so a caller can run the
        network on one frame while another thread decodes the previous one (pose_node does).
        """
        image_rgb = checked_image(image_rgb, camera)
        t0 = time.perf_counter()
        batch, box = self.preprocess(image_rgb)
        t1 = time.perf_counter()
        belief, vectors = self.estimate(batch)
        t2 = time.perf_counter()
        return NetworkMaps(belief[0], vectors[0], box, {"preprocess": t1 - t0, "inference": t2 - t1})

    def poses_from_maps(
        self, maps: NetworkMaps, camera: CameraModel
    ) -> tuple[list[ObjectPose], dict[str, float]]:
        """Return (the poses in ``maps``, seconds of the stages decode and pnp)."""
        t0 = time.perf_counter()
        instances = self.decode(maps.belief_maps, maps.vector_fields, maps.box)
        t1 = time.perf_counter()
        poses = self.solve(instances, camera)
        return poses, {"decode": t1 - t0, "pnp": time.perf_counter() - t1}

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Return (batch (1, 3, h, w) float32 in [0, 1], Letterbox) for the network input size."""
        width, height = self.input_size
        boxed, box = letterbox(image_rgb, width, height)
        return (boxed.transpose(2, 0, 1)[None].astype(np.float32) / 255.0), box

    def estimate(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the engine's (belief_maps, vector_fields) for ``batch``."""
        return self.engine(batch)

    def decode(
        self, belief_maps: np.ndarray, vector_fields: np.ndarray, box: Letterbox
    ) -> list[DecodedInstance]:
        """Return decoded instances with keypoints in the original image's pixels."""
        instances = self.codec.decode(belief_maps, vector_fields)
        return [replace(i, keypoints=scale_points(i.keypoints, 1.0 / box.scale)) for i in instances]

    def solve(self, instances: list[DecodedInstance], camera: CameraModel) -> list[ObjectPose]:
        """Return the poses of ``instances`` (PoseSolver.solve: PnP and acceptance, shared by estimators)."""
        return self.solver.solve(instances, camera)
