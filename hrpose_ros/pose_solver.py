"""PnP and pose acceptance shared by every estimator: 2D keypoints of an instance -> ObjectPose.

Estimators differ in how they find keypoints (HRPose's belief maps and vector fields over the
whole frame, or the crop estimator's heatmaps per detection); from decoded instances on, the
path is one: PnP (plain, then RANSAC only when a keypoint is off), then the checks of
:class:`PoseThresholds`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hrpose_ros.codec import DecodedInstance
from hrpose_ros.geometry import keypoints_3d as box_keypoints
from hrpose_ros.geometry import project, solve_pnp
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = ["PoseSolver", "PoseThresholds", "keypoint_spread", "split_thresholds"]

logger = logging.getLogger(__name__)


def keypoint_spread(points: np.ndarray) -> float:
    """Return the smallest / largest eigenvalue of (N, 2) ``points``' scatter: 0 on a line, 1 when round."""
    centred = points - points.mean(axis=0)
    low, high = np.linalg.eigvalsh(centred.T @ centred)
    return float(low / high) if high > 0 else 0.0



@dataclass(frozen=True)
class PoseThresholds:
    """Pose acceptance: score, PnP reprojection error (px), RANSAC, instances per image, depth range (m).

    ``min_depth``/``max_depth`` bound the object origin's distance along the optical axis: keypoints
    bunched within a few pixels fit a pose tens of metres away with a small reprojection error.
    5 m default: a 10 cm object is then 12 px wide at 600 px focal length.
    """

    min_score: float = 0.1
    max_reprojection_error: float = 10.0
    ransac: bool = True
    ransac_threshold: float = 5.0  # px, in the input image
    max_instances: int = 20  # PnP only for the best-scoring instances (bounds latency in clutter)
    min_depth: float = 0.05  # m
    max_depth: float = 5.0  # m
    # Keypoints along one line fix no rotation about that line: PnP then returns one of several
    # poses that fit equally. A pose is kept only when the smallest / largest eigenvalue of its
    # inlier keypoints' 2D scatter is at least this (0.01: spread across at least 10 % of the
    # spread along; chosen on validation frames, training/HRPOSE_MODEL_CARD.md). Thin objects seen
    # edge-on come close: lower it for objects thinner than a domino; 0 = off. (solve_pnp refuses
    # exactly collinear points as bad input; this is the policy for nearly collinear ones.)
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


def split_thresholds(options: dict, other_names=()) -> tuple[PoseThresholds, dict]:
    """Return (PoseThresholds of ``options``' fields, the options named in ``other_names``).

    ValueError for any other name, listing the accepted ones: the estimators' ``from_pretrained``
    take PoseThresholds fields plus their own decoding options as keyword arguments.
    """
    pose_fields = set(PoseThresholds.__dataclass_fields__)
    accepted = pose_fields | set(other_names)
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"thresholds: unknown names {sorted(unknown)}; expected some of {sorted(accepted)}")
    pose = PoseThresholds(**{k: v for k, v in options.items() if k in pose_fields})
    return pose, {k: v for k, v in options.items() if k in other_names}


class PoseSolver:
    """Decoded instances (class index, score, 2D keypoints) + camera -> accepted ObjectPoses."""

    def __init__(
        self,
        objects: Sequence[ObjectModel],
        thresholds: PoseThresholds = PoseThresholds(),
        keypoints_3d: Sequence[np.ndarray] | None = None,
        box_depth_weight: float = 0.0,
    ):
        """``keypoints_3d``: per object, the (K, 3) model points the 2D keypoints locate (default:
        HRPose's box corners + centre, :func:`geometry.keypoints_3d`).

        ``box_depth_weight`` w in [0, 1], for instances with a predicted silhouette ``box``: the PnP
        pose moves along its viewing ray to z_pnp^(1-w) * z_box^w, z_box the distance at which the
        object's projected points span the box's diagonal. Keypoints fix the distance worst (an
        object's keypoints span tens of pixels); the outline's extent is a second, independent
        measure of it, and the weighted geometric mean of the two is the usual fusion of two
        estimates with multiplicative errors.
        """
        if not 0.0 <= box_depth_weight <= 1.0:
            raise ValueError(f"box_depth_weight: expected a number in [0, 1], got {box_depth_weight!r}")
        self.box_depth_weight = float(box_depth_weight)
        self.objects = list(objects)
        self.thresholds = thresholds
        if keypoints_3d is None:
            keypoints_3d = [box_keypoints(o.points) for o in self.objects]
        if len(keypoints_3d) != len(self.objects):
            raise ValueError(f"keypoints_3d: expected one (K, 3) array per object ({len(self.objects)}), "
                             f"got {len(keypoints_3d)}")
        self.keypoints_3d = [np.asarray(k, dtype=np.float64).reshape(-1, 3) for k in keypoints_3d]

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

    def _box_depth(self, instance: DecodedInstance, R: np.ndarray, t: np.ndarray, camera: CameraModel):
        """Return ``t`` moved along its ray by the instance's box (see ``box_depth_weight``)."""
        uv = project(self.objects[instance.class_index].points, R, t, camera.K, camera.dist)
        projected = float(np.hypot(*(uv.max(axis=0) - uv.min(axis=0))))
        x0, y0, x1, y1 = instance.box
        predicted = float(np.hypot(x1 - x0, y1 - y0))
        if not (projected > 0 and predicted > 0):
            return t
        return t * (projected / predicted) ** self.box_depth_weight

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
            model_points = self.keypoints_3d[instance.class_index]
            points_3d = (model_points if instance.points_3d is None else instance.points_3d)[ids]
            solution = self._pnp(points_2d, points_3d, camera)
            if solution is None or solution.reprojection_error > th.max_reprojection_error:
                continue
            t = solution.t
            if self.box_depth_weight and instance.box is not None:
                t = self._box_depth(instance, solution.R, t, camera)
            if not th.min_depth <= t[2] <= th.max_depth:
                continue
            used = ids[solution.inliers]
            if keypoint_spread(instance.keypoints[used]) < th.min_keypoint_spread:
                continue
            # Dense correspondences follow the object's keypoints: only keypoints are reported.
            used = used[used < len(model_points)] if instance.points_3d is not None else used
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
                    t=t,
                    keypoints_2d=instance.keypoints[used],
                    keypoint_ids=used,
                    reprojection_error=solution.reprojection_error,
                )
            )
        return poses
