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

import cv2
import numpy as np

from hrpose_ros.codec import DecodedInstance, KeypointCodec
from hrpose_ros.geometry import keypoints_3d, project, solve_pnp
from hrpose_ros.runtime import create_engine
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = [
    "DEFAULT_WEIGHTS",
    "Letterbox",
    "NetworkMaps",
    "PoseThresholds",
    "PosePipeline",
    "keypoint_spread",
    "letterbox",
    "letterbox_scale",
    "scale_points",
]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "weights" / "hrpose_student_kd.pt"


@dataclass(frozen=True)
class Letterbox:
    """How an image was mapped to the network input: one ``scale``, content at the top-left, zero padding."""

    scale: float
    width: int  # network input size
    height: int


def scale_points(points: np.ndarray, scale: float) -> np.ndarray:
    """Return (..., 2) pixel coordinates after resizing the image by ``scale`` (pixel centres stay)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


def keypoint_spread(points: np.ndarray) -> float:
    """Return the smallest / largest eigenvalue of (N, 2) ``points``' scatter: 0 on a line, 1 when round."""
    centred = points - points.mean(axis=0)
    low, high = np.linalg.eigvalsh(centred.T @ centred)
    return float(low / high) if high > 0 else 0.0


def letterbox_scale(image_width: int, image_height: int, width: int, height: int) -> float:
    """Return the largest scale that fits an image of that size into ``width`` x ``height``."""
    return min(width / image_width, height / image_height)


def letterbox(
    image: np.ndarray, width: int, height: int, scale: float | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Return (image (height, width, 3) uint8, Letterbox): ``image`` resized by one scale, zero padded.

    ``scale`` defaults to the largest that fits the image into ``width`` x ``height``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    if scale is None:
        scale = letterbox_scale(w, h, width, height)
    new_w, new_h = min(int(round(w * scale)), width), min(int(round(h * scale)), height)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = (
        image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    )
    out = np.zeros((height, width, 3), np.uint8)
    out[:new_h, :new_w] = resized[:height, :width]
    return out, Letterbox(scale=float(scale), width=width, height=height)


@dataclass(frozen=True)
class NetworkMaps:
    """One image's network output: belief maps (C*K, h, w), vector fields, its letterbox, stage seconds."""

    belief_maps: np.ndarray
    vector_fields: np.ndarray
    box: Letterbox
    timings: dict[str, float]


@dataclass(frozen=True)
class PoseThresholds:
    """Pose acceptance: score, PnP reprojection error (px), RANSAC, instances per image, depth range (m).

    ``min_depth``/``max_depth`` bound the object origin's distance along the optical axis: keypoints
    bunched within a few pixels fit a pose tens of metres away with a small reprojection error
    (seen with the shipped weights on a uniform grey frame: 5 "mugs" at 16-68 m, 2-3 px RMS), which
    no RGB pose network resolves. 5 m default: a 10 cm object is then 12 px wide at 600 px focal length.
    """

    min_score: float = 0.1
    max_reprojection_error: float = 10.0
    ransac: bool = True
    ransac_threshold: float = 5.0  # px, in the input image
    max_instances: int = 20  # PnP only for the best-scoring instances (bounds latency in clutter)
    min_depth: float = 0.05  # m
    max_depth: float = 5.0  # m
    # Keypoints along one line fix no rotation about that line: PnP then returns one of several
    # poses that fit equally (seen with the shipped weights: a torus from 5 keypoints, 2D spread
    # ratio 0.003, whose torch and ONNX poses differ by 179 deg for keypoints 1e-4 px apart). A
    # pose is kept only when the smallest / largest eigenvalue of its inlier keypoints' 2D scatter
    # (spread across / along their main direction, squared) is at least this. 0.01 (spread across
    # at least 10 % of the spread along), chosen on validation frames: with the shipped weights,
    # of the poses below it 2 of 58 are right by ADD(-S) on data/val2 and 1 of 12 on data/val;
    # with ground-truth maps (a perfect network) data/val2 keeps 99.13 % ADD(-S) (99.17 % without
    # the check). 0.03 dropped thin dominoes seen edge-on (98.9 -> 85.3 %), whose keypoints lie
    # nearly along a line yet give a good pose: for objects thinner than that, lower it; 0 = off.
    # (geometry.solve_pnp itself refuses exactly collinear points as bad input; this is the
    # acceptance threshold for nearly collinear ones, a policy, so it lives here.)
    min_keypoint_spread: float = 0.01

    def __post_init__(self):
        for name in ("max_reprojection_error", "ransac_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number of pixels, got {getattr(self, name)}")
        if not 0 <= self.min_keypoint_spread < 1:
            raise ValueError(f"min_keypoint_spread: expected 0 <= value < 1, got {self.min_keypoint_spread}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(
                "min_depth/max_depth: expected 0 <= min_depth < max_depth, got "
                f"{self.min_depth}/{self.max_depth}"
            )


class PosePipeline:
    """Image (H, W, 3) uint8 RGB + CameraModel -> list[ObjectPose], with per-stage timings."""

    def __init__(
        self,
        engine,
        codec: KeypointCodec,
        objects: list[ObjectModel],
        input_size: tuple[int, int],
        thresholds: PoseThresholds = PoseThresholds(),
    ):
        if len(objects) != codec.config.num_classes:
            raise ValueError(
                f"objects: the codec has {codec.config.num_classes} classes, got {len(objects)} objects"
            )
        self.engine = engine
        self.codec = codec
        self.objects = list(objects)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.thresholds = thresholds
        self.keypoints_3d = [keypoints_3d(o.points) for o in self.objects]
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls,
        path=None,
        backend: str = "torch",
        device: str = "auto",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        **thresholds,
    ) -> PosePipeline:
        """Return a pipeline for the checkpoint (.pt) or ONNX file at ``path`` (None = shipped default).

        ``backend``, ``device`` ("auto": a GPU where the backend can use one, else the CPU) and
        ``precision`` ("fp32" | "bf16" | "int8" | "auto") choose the engine
        (:func:`hrpose_ros.runtime.create_engine`); ``pipeline.engine.precision`` is the
        precision actually used. ``input_size`` (W, H) letterboxes images into another network
        input than the model's trained one (the ONNX export is made for it). ``thresholds``:
        PoseThresholds fields (min_score, max_reprojection_error, ransac, ransac_threshold,
        max_instances, min_depth, max_depth) and
        codec decoding fields (peak_threshold, angle_threshold_deg, min_keypoints). A missing or
        corrupt file raises ValueError naming it.
        """
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        engine, checkpoint = create_engine(backend, path, device, precision, input_size)
        pose_fields = set(PoseThresholds.__dataclass_fields__)
        codec_fields = {"peak_threshold", "angle_threshold_deg", "min_keypoints"}
        unknown = set(thresholds) - pose_fields - codec_fields
        if unknown:
            raise ValueError(
                f"thresholds: unknown names {sorted(unknown)}; expected some of "
                f"{sorted(pose_fields | codec_fields)}"
            )
        codec_config = replace(
            checkpoint.codec_config, **{k: v for k, v in thresholds.items() if k in codec_fields}
        )
        pose_thresholds = PoseThresholds(**{k: v for k, v in thresholds.items() if k in pose_fields})
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
        image_rgb = np.asarray(image_rgb)
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f"image_rgb: expected (H, W, 3) uint8, got {image_rgb.shape} {image_rgb.dtype}")
        if (camera.width, camera.height) != (image_rgb.shape[1], image_rgb.shape[0]):
            raise ValueError(
                f"camera: size {camera.width}x{camera.height} differs from the image's "
                f"{image_rgb.shape[1]}x{image_rgb.shape[0]}"
            )
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

    def _pnp(self, points_2d: np.ndarray, points_3d: np.ndarray, camera: CameraModel):
        """Return geometry.solve_pnp's solution, or None for degenerate keypoints.

        With ``ransac``, the plain solution comes first: when it reprojects every keypoint within
        ``ransac_threshold``, RANSAC's consensus would be all keypoints and its final fit the same
        solver on the same set, so RANSAC (~0.1 ms per instance, ~1 ms with outliers) only runs
        when a keypoint is off. OpenCV's SQPnP asserts (cv2.error) when a RANSAC sample of nearly
        coincident keypoints has too little spread; the plain solution is then kept.
        """
        th = self.thresholds
        dist = camera.dist if not camera.is_rectified else None
        plain, plain_failed = None, False
        try:
            plain = solve_pnp(points_2d, points_3d, camera.K, dist, ransac=False)
        except ValueError as exc:  # collinear keypoints: no pose for this instance (RANSAC checks the same)
            logger.debug("instance skipped: %s", exc)
            return None
        except cv2.error as exc:
            logger.debug("PnP failed (%s)", exc)
            plain_failed = True
        if not th.ransac or (plain is not None and self._all_within(plain, points_2d, points_3d, camera)):
            return plain
        # solvePnPRansac draws from OpenCV's global RNG, whose state depends on every earlier call:
        # a fixed seed per instance makes a pose depend on its keypoints only (reproducible runs).
        cv2.setRNGSeed(0)
        try:
            return solve_pnp(
                points_2d, points_3d, camera.K, dist, ransac=True, ransac_threshold=th.ransac_threshold
            )
        except cv2.error as exc:
            logger.debug("RANSAC PnP failed (%s); plain solution %s", exc, "none" if plain_failed else "kept")
            return plain

    def _all_within(self, solution, points_2d: np.ndarray, points_3d: np.ndarray, camera: CameraModel):
        """Return True when ``solution`` reprojects every (N, 2) ``points_2d`` within ransac_threshold px."""
        limit = self.thresholds.ransac_threshold
        # max residual <= sqrt(N) * RMS: most clean instances pass without projecting again.
        if solution.reprojection_error * np.sqrt(len(points_2d)) <= limit:
            return True
        projected = project(points_3d, solution.R, solution.t, camera.K, camera.dist)
        return bool(np.all(np.sum((projected - points_2d) ** 2, axis=1) <= limit**2))

    def solve(self, instances: list[DecodedInstance], camera: CameraModel) -> list[ObjectPose]:
        """Return an ObjectPose per instance whose PnP succeeds within the thresholds, best score first.

        Within the thresholds: reprojection error at most ``max_reprojection_error`` px and the
        object's origin between ``min_depth`` and ``max_depth`` metres along the optical axis.
        """
        th = self.thresholds
        poses = []
        per_class: dict[int, int] = {}  # poses so far per object: instances are numbered within their class
        ranked = [i for i in sorted(instances, key=lambda i: -i.score) if i.score >= th.min_score]
        for instance in ranked[: th.max_instances]:
            ids = np.flatnonzero(instance.found)
            points_2d = instance.keypoints[ids]
            points_3d = self.keypoints_3d[instance.class_index][ids]
            solution = self._pnp(points_2d, points_3d, camera)
            if solution is None or solution.reprojection_error > th.max_reprojection_error:
                continue
            if not th.min_depth <= solution.t[2] <= th.max_depth:
                continue
            used = ids[solution.inliers]
            if keypoint_spread(instance.keypoints[used]) < th.min_keypoint_spread:
                continue
            obj = self.objects[instance.class_index]
            instance_id = per_class.get(obj.obj_id, 0)
            per_class[obj.obj_id] = instance_id + 1
            poses.append(
                ObjectPose(
                    class_name=obj.name,
                    obj_id=obj.obj_id,
                    # numbered within its class, as ObjectPose.msg and the TF frame names say
                    instance_id=instance_id,
                    score=instance.score,
                    R=solution.R,
                    t=solution.t,
                    keypoints_2d=instance.keypoints[used],
                    keypoint_ids=used,
                    reprojection_error=solution.reprojection_error,
                )
            )
        return poses
