"""Pose error functions and recall, as defined by the BOP toolkit (pose_error.py), in metres.

Signatures follow bop_toolkit_lib.pose_error: ``(R_est, t_est, R_gt, t_gt, ...)`` with R
(3, 3), t (3,) metres mapping model points into the camera frame, model ``points`` (N, 3)
metres, K (3, 3) pixels. Sources: ADD/ADD-S (ADI) Hinterstoisser et al., ACCV 2012;
2D projection Brachmann et al., CVPR 2016; VSD Hodan et al., ECCVW 2016 / ECCV 2018
(BOP19 visibility, step cost); MSSD/MSPD BOP Challenge 2019. Thresholds: HRPose (ADD(-S)
10 % of the diameter, 2D projection 5 px), Shotton et al. 2013 (5 cm 5 deg), the CIN-KD paper
(VSD tau 20 mm, delta 15 mm, correct below 0.3) and BOP 2019 (ranges for average recall).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from hrpose_ros.geometry import check_intrinsics, project, transform_points
from hrpose_ros.types import ObjectModel, ObjectPose

__all__ = [
    "ADD_THRESHOLD_DIAMETER",
    "BOP19_MSPD_THRESHOLDS_PX",
    "BOP19_MSSD_THRESHOLDS_DIAMETER",
    "BOP19_VSD_DELTA_M",
    "BOP19_VSD_TAUS_DIAMETER",
    "BOP19_VSD_THRESHOLDS",
    "PROJ2D_THRESHOLD_PX",
    "ROTATION_THRESHOLD_DEG",
    "TRANSLATION_THRESHOLD_M",
    "VSD_DELTA_M",
    "VSD_TAU_M",
    "VSD_THRESHOLD",
    "Thresholds",
    "add_error",
    "add_or_adds_error",
    "adds_error",
    "average_recall",
    "depth_to_distance",
    "iou_2d",
    "match_estimates",
    "mspd_error",
    "mssd_error",
    "proj2d_error",
    "recall",
    "recall_curve",
    "rotation_error_deg",
    "translation_error",
    "vsd_error",
]

ADD_THRESHOLD_DIAMETER = 0.1
"""ADD(-S): correct when the error is below 10 % of the object diameter (HRPose, Sec. 4)."""
PROJ2D_THRESHOLD_PX = 5.0
"""2D projection: correct when the mean projection error is below 5 px (HRPose, Sec. 4)."""
ROTATION_THRESHOLD_DEG = 5.0
TRANSLATION_THRESHOLD_M = 0.05
"""5 cm 5 deg: rotation error below 5 deg and translation error below 5 cm."""
VSD_TAU_M = 0.020
VSD_DELTA_M = 0.015
VSD_THRESHOLD = 0.3
"""VSD as in the CIN-KD paper (Sec. 4) and BOP 2016-18: tau 20 mm, delta 15 mm, e_VSD < 0.3."""

BOP19_VSD_DELTA_M = 0.015
BOP19_VSD_TAUS_DIAMETER = tuple(np.round(np.arange(0.05, 0.51, 0.05), 2).tolist())
BOP19_VSD_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.51, 0.05), 2).tolist())
BOP19_MSSD_THRESHOLDS_DIAMETER = tuple(np.round(np.arange(0.05, 0.51, 0.05), 2).tolist())
BOP19_MSPD_THRESHOLDS_PX = tuple(np.arange(5.0, 51.0, 5.0).tolist())
"""BOP 2019 threshold ranges; MSPD's are for a 640 px wide image (scale by width / 640)."""


@dataclass(frozen=True)
class Thresholds:
    """The papers' default thresholds for deciding a pose is correct (metres, degrees, pixels)."""

    add_diameter_fraction: float = ADD_THRESHOLD_DIAMETER
    proj2d_px: float = PROJ2D_THRESHOLD_PX
    rotation_deg: float = ROTATION_THRESHOLD_DEG
    translation_m: float = TRANSLATION_THRESHOLD_M
    vsd_tau_m: float = VSD_TAU_M
    vsd_delta_m: float = VSD_DELTA_M
    vsd_threshold: float = VSD_THRESHOLD


def _pose(R, t, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return R (3, 3), t (3,) as finite float64 arrays, or a ValueError naming the pose."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"R_{name}/t_{name}: expected shapes (3, 3) and (3,), got {R.shape} and {t.shape}")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        raise ValueError(f"R_{name}/t_{name}: contain NaN or infinite values")
    return R, t


def _points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points: expected (N, 3) model points in metres, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points: contain NaN or infinite values")
    return points


def _symmetries(syms) -> np.ndarray:
    syms = np.asarray(syms, dtype=np.float64)
    if syms.ndim != 3 or syms.shape[1:] != (4, 4) or len(syms) == 0:
        raise ValueError(f"syms: expected (S, 4, 4) symmetry transformations, got {syms.shape}")
    return syms


def add_error(R_est, t_est, R_gt, t_gt, points) -> float:
    """Return ADD in metres: mean distance between model points in the two poses (Hinterstoisser 2012).

    e = mean_x |(R_est x + t_est) - (R_gt x + t_gt)| (HRPose eq. in Sec. 4.1).
    """
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    points = _points(points)
    diff = transform_points(points, R_est, t_est) - transform_points(points, R_gt, t_gt)
    return float(np.linalg.norm(diff, axis=1).mean())


def adds_error(R_est, t_est, R_gt, t_gt, points) -> float:
    """Return ADD-S (ADI) in metres: mean distance of each ground-truth point to the nearest estimated one."""
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    points = _points(points)
    tree = cKDTree(transform_points(points, R_est, t_est))
    distances, _ = tree.query(transform_points(points, R_gt, t_gt), k=1)
    return float(distances.mean())


def add_or_adds_error(R_est, t_est, R_gt, t_gt, model: ObjectModel) -> float:
    """Return ADD(-S) in metres for ``model``: ADD-S when it has symmetries besides the identity, else ADD."""
    metric = adds_error if model.is_symmetric else add_error
    return metric(R_est, t_est, R_gt, t_gt, model.points)


def match_estimates(
    estimates: Sequence[ObjectPose], ground_truth: Sequence, objects: Mapping[int, ObjectModel]
) -> list[int | None]:
    """Return, per ground-truth instance, the index into ``estimates`` of the one matched to it, or None.

    Per object: estimates in descending score (ties in the given order) each take the still
    unmatched ground-truth instance of their object with the smallest ADD(-S) error (ties: the
    first), so each ground truth and each estimate is matched at most once. ``ground_truth``
    items have obj_id, R (3, 3) and t (3,) metres (ObjectPose, bop instances); ``objects`` holds
    the model of every ground truth's obj_id. Estimates whose index is not returned are false
    positives.
    """
    matched: list[int | None] = [None] * len(ground_truth)
    # Best score first, as in bop_toolkit: the estimator's ranking picks the pairs, not the error scored.
    for e in sorted(range(len(estimates)), key=lambda i: -estimates[i].score):
        est = estimates[e]
        free = [g for g, gt in enumerate(ground_truth) if gt.obj_id == est.obj_id and matched[g] is None]
        if not free:
            continue
        obj = objects[est.obj_id]
        errors = [add_or_adds_error(est.R, est.t, ground_truth[g].R, ground_truth[g].t, obj) for g in free]
        matched[free[int(np.argmin(errors))]] = e
    return matched


def proj2d_error(R_est, t_est, R_gt, t_gt, K, points) -> float:
    """Return the 2D projection error in px: mean distance between projected model points (Brachmann 2016)."""
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    points = _points(points)
    diff = project(points, R_est, t_est, K) - project(points, R_gt, t_gt, K)
    return float(np.linalg.norm(diff, axis=1).mean())


def rotation_error_deg(R_est, R_gt) -> float:
    """Return the angle in degrees of the rotation from R_gt to R_est: arccos((tr(R_est R_gt^T) - 1) / 2)."""
    R_est, _ = _pose(R_est, np.zeros(3), "est")
    R_gt, _ = _pose(R_gt, np.zeros(3), "gt")
    cos = 0.5 * (np.trace(R_est @ R_gt.T) - 1.0)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def translation_error(t_est, t_gt) -> float:
    """Return |t_est - t_gt| in metres."""
    _, t_est = _pose(np.eye(3), t_est, "est")
    _, t_gt = _pose(np.eye(3), t_gt, "gt")
    return float(np.linalg.norm(t_est - t_gt))


def mssd_error(R_est, t_est, R_gt, t_gt, points, syms) -> float:
    """Return MSSD in metres: min over symmetries S of the max point distance to the pose (R_gt, t_gt) S.

    ``syms`` (S, 4, 4), translation in metres (geometry.symmetry_transformations); BOP 2019.
    """
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    points = _points(points)
    est = transform_points(points, R_est, t_est)
    errors = []
    for sym in _symmetries(syms):
        gt = transform_points(points, R_gt @ sym[:3, :3], R_gt @ sym[:3, 3] + t_gt)
        errors.append(np.linalg.norm(est - gt, axis=1).max())
    return float(min(errors))


def mspd_error(R_est, t_est, R_gt, t_gt, K, points, syms) -> float:
    """Return MSPD in px: min over symmetries of the max distance of projected model points (BOP 2019)."""
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    points = _points(points)
    K = check_intrinsics(K)
    est = project(points, R_est, t_est, K)
    errors = []
    for sym in _symmetries(syms):
        gt = project(points, R_gt @ sym[:3, :3], R_gt @ sym[:3, 3] + t_gt, K)
        errors.append(np.linalg.norm(est - gt, axis=1).max())
    return float(min(errors))


def depth_to_distance(depth, K) -> np.ndarray:
    """Return the (H, W) distance image (camera centre to surface point, metres) of an (H, W) depth image.

    dist = depth * sqrt(1 + ((u - cx) / fx)^2 + ((v - cy) / fy)^2); 0 stays 0 (no measurement).
    """
    K = check_intrinsics(K)
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an (H, W) image, got shape {depth.shape}")
    u = (np.arange(depth.shape[1]) - K[0, 2]) / K[0, 0]
    v = (np.arange(depth.shape[0]) - K[1, 2]) / K[1, 1]
    return depth * np.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)


def _visible(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    """Return BOP19 visibility: model pixels at most delta behind the test surface, or without test depth."""
    return (dist_model > 0) & ((dist_model - dist_test <= delta) | (dist_test == 0))


def vsd_error(
    R_est,
    t_est,
    R_gt,
    t_gt,
    depth_test,
    K,
    delta,
    taus,
    diameter,
    renderer,
    obj_id: int,
    normalized_by_diameter: bool = False,
    cost_type: str = "step",
) -> list[float]:
    """Return the Visible Surface Discrepancy, one value in [0, 1] per tau (Hodan et al. 2016, BOP 2019).

    ``depth_test`` (H, W) metres (0 = no measurement); ``delta`` and ``taus`` in metres, or
    ``taus`` as fractions of ``diameter`` (metres) when ``normalized_by_diameter``.
    ``renderer`` is anything with ``render_depth(obj_id, R, t, K) -> (H, W)`` metres (0 =
    background), e.g. ``hrpose_ros.render.Renderer``. Visibility masks use the BOP19 rule
    (pixels without test depth count as visible; the estimate's mask also covers the
    ground truth's visible pixels that it renders), and the cost is the step function
    (``"step"``, BOP) or the truncated linear one (``"tlinear"``, ECCVW 2016):
    e = (sum of costs over the intersection + |union - intersection|) / |union|.
    """
    R_est, t_est = _pose(R_est, t_est, "est")
    R_gt, t_gt = _pose(R_gt, t_gt, "gt")
    K = check_intrinsics(K)
    depth_test = np.asarray(depth_test, dtype=np.float64)
    if depth_test.ndim != 2 or not np.all(np.isfinite(depth_test)):
        raise ValueError(f"depth_test: expected a finite (H, W) depth (m), got shape {depth_test.shape}")
    taus = [float(tau) for tau in np.ravel(taus)]
    if not taus or any(not tau > 0 for tau in taus):
        raise ValueError(f"taus: expected positive misalignment tolerances, got {taus}")
    if not delta >= 0:
        raise ValueError(f"delta: expected a non-negative tolerance in metres, got {delta}")
    if normalized_by_diameter and not diameter > 0:
        raise ValueError(f"diameter: expected a positive length in metres, got {diameter}")
    if cost_type not in ("step", "tlinear"):
        raise ValueError(f"cost_type: expected 'step' or 'tlinear', got {cost_type!r}")
    if not callable(getattr(renderer, "render_depth", None)):
        raise ValueError("renderer: expected an object with render_depth(obj_id, R, t, K)")

    depth_est = np.asarray(renderer.render_depth(obj_id, R_est, t_est, K), dtype=np.float64)
    depth_gt = np.asarray(renderer.render_depth(obj_id, R_gt, t_gt, K), dtype=np.float64)
    if depth_est.shape != depth_test.shape or depth_gt.shape != depth_test.shape:
        raise ValueError(f"depth_test: shape {depth_test.shape} differs from the rendered {depth_est.shape}")
    dist_test = depth_to_distance(depth_test, K)
    dist_est = depth_to_distance(depth_est, K)
    dist_gt = depth_to_distance(depth_gt, K)

    visib_gt = _visible(dist_test, dist_gt, delta)
    visib_est = _visible(dist_test, dist_est, delta) | (visib_gt & (dist_est > 0))
    inter = visib_gt & visib_est
    union_count = int(np.count_nonzero(visib_gt | visib_est))
    if union_count == 0:
        return [1.0] * len(taus)
    outside = union_count - int(np.count_nonzero(inter))
    distances = np.abs(dist_gt[inter] - dist_est[inter])
    if normalized_by_diameter:
        distances = distances / diameter
    errors = []
    for tau in taus:
        costs = (distances >= tau) if cost_type == "step" else np.minimum(distances / tau, 1.0)
        errors.append(float((np.sum(costs) + outside) / union_count))
    return errors


def iou_2d(box_a, box_b) -> float:
    """Return the intersection over union of two boxes given as (x, y, w, h) pixels (0 when disjoint)."""
    a = np.asarray(box_a, dtype=np.float64).reshape(-1)
    b = np.asarray(box_b, dtype=np.float64).reshape(-1)
    if a.shape != (4,) or b.shape != (4,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"box_a/box_b: expected finite (x, y, w, h) boxes, got {a.tolist()}, {b.tolist()}")
    if a[2] < 0 or a[3] < 0 or b[2] < 0 or b[3] < 0:
        raise ValueError(f"box_a/box_b: width and height must be >= 0, got {a.tolist()} and {b.tolist()}")
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def _errors(errors) -> np.ndarray:
    """Return errors as float64; None/NaN (no estimate) count as infinitely wrong."""
    values = np.array([np.inf if e is None else e for e in np.ravel(np.asarray(errors, dtype=object))],
                      dtype=np.float64)
    values[np.isnan(values)] = np.inf
    return values


def recall(errors, threshold) -> float:
    """Return the fraction of ``errors`` strictly below ``threshold`` (a scalar, or one per error).

    Missing estimates (None, NaN, inf) count as wrong. ``threshold`` may be an array, e.g.
    0.1 x each object's diameter for ADD(-S). An empty list gives 0.
    """
    values = _errors(errors)
    if values.size == 0:
        return 0.0
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim not in (0, 1) or (threshold.ndim == 1 and threshold.shape != values.shape):
        raise ValueError(f"threshold: expected a scalar or one per error {values.shape}, "
                         f"got {threshold.shape}")
    return float(np.mean(values < threshold))


def recall_curve(errors, thresholds) -> np.ndarray:
    """Return (T,) recalls, one per threshold of the (T,) ``thresholds`` (for accuracy-threshold curves)."""
    values = _errors(errors)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(len(thresholds))
    return np.mean(values[None, :] < thresholds[:, None], axis=1)


def average_recall(errors, thresholds) -> float:
    """Return the mean recall over ``thresholds`` (BOP 2019's AR for one error function)."""
    return float(np.mean(recall_curve(errors, thresholds)))
