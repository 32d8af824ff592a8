"""Rigid-body geometry: HRPose keypoints, projection, PnP, rotation representations, symmetries.

Units: metres and radians; poses map model points into the camera optical frame,
``x_cam = R @ x_model + t``. Nothing here knows about millimetres (see ``hrpose_ros.bop_format``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from hrpose_ros.types import checked_array as _array

__all__ = [
    "NUM_KEYPOINTS",
    "PnPSolution",
    "box_corners_3d",
    "check_intrinsics",
    "check_rotation",
    "disturb_pose",
    "keypoints_3d",
    "matrix_from_quaternion",
    "model_keypoints",
    "matrix_from_rotation_6d",
    "project",
    "projected_box",
    "quaternion_from_matrix",
    "rotation_6d_from_matrix",
    "solve_pnp",
    "surface_keypoints",
    "symmetry_transformations",
    "transform_points",
]

NUM_KEYPOINTS = 9
"""HRPose's keypoints: the 8 bounding-box corners, then the centroid (box centre)."""

# Ratio of the second to the first eigenvalue of the scatter matrix below which points count as collinear.
_COLLINEAR_TOL = 1e-12

# Lengths of OpenCV's distortion coefficient vectors.
_DIST_SIZES = (0, 4, 5, 8, 12, 14)


def _vector(value, name: str, size: int) -> np.ndarray:
    """Return ``value`` flattened to a finite float64 vector of ``size`` elements."""
    try:
        flat = np.ravel(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {size} numbers, got {value!r}") from exc
    return _array(flat, name, (size,))


def check_intrinsics(K, name: str = "K") -> np.ndarray:
    """Return ``K`` as a (3, 3) float64 pinhole matrix; ValueError unless fx, fy > 0 and row 3 is 0 0 1."""
    K = _array(K, name, (3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if K[2, 0] != 0 or K[2, 1] != 0 or abs(K[2, 2] - 1.0) > 1e-9:
        raise ValueError(f"{name}: expected last row [0, 0, 1], got {K[2].tolist()}")
    return K


def check_rotation(R, name: str = "R", tol: float = 1e-4) -> np.ndarray:
    """Return ``R`` as a (3, 3) float64 array; ValueError unless it is a rotation (R^T R = I, det +1)."""
    R = _array(R, name, (3, 3))
    if np.abs(R.T @ R - np.eye(3)).max() > tol or np.linalg.det(R) <= 0:
        raise ValueError(f"{name}: expected a rotation matrix (orthonormal, det +1), got {R.tolist()}")
    return R


def _distortion(dist) -> np.ndarray | None:
    """Return OpenCV distortion coefficients, or None when there is no distortion."""
    if dist is None:
        return None
    try:
        dist = _array(np.ravel(np.asarray(dist, dtype=np.float64)), "dist", (-1,))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dist: expected OpenCV distortion coefficients, got {dist!r}") from exc
    if dist.size not in _DIST_SIZES:
        raise ValueError(f"dist: expected 0, 4, 5, 8, 12 or 14 OpenCV coefficients, got {dist.size}")
    return dist if np.any(dist) else None


def transform_points(points, R, t) -> np.ndarray:
    """Return (N, 3) ``R @ p + t`` for each of the (N, 3) ``points`` (same units as ``t``)."""
    points = _array(points, "points", (-1, 3))
    R = _array(R, "R", (3, 3))
    t = _vector(t, "t", 3)
    return points @ R.T + t


def box_corners_3d(points) -> np.ndarray:
    """Return the (8, 3) corners of the axis-aligned bounding box of (N, 3) model ``points``.

    Order (as in Tekin et al., single-shot pose): corner ``i`` takes the maximum along x
    when bit 2 of ``i`` is set, along y for bit 1 and along z for bit 0, so corner 0 is
    (x_min, y_min, z_min), 1 is (x_min, y_min, z_max), ..., 7 is (x_max, y_max, z_max).
    """
    points = _array(points, "points", (-1, 3))
    if len(points) == 0:
        raise ValueError("points: expected at least one model point, got none")
    lo, hi = points.min(axis=0), points.max(axis=0)
    bits = (np.arange(8)[:, None] >> np.array([2, 1, 0])) & 1
    return np.where(bits == 1, hi, lo)


def keypoints_3d(points) -> np.ndarray:
    """Return HRPose's (9, 3) keypoints of (N, 3) model ``points``: the 8 box corners, then the box centre.

    Corner order as in :func:`box_corners_3d`; index 8 is the centroid of the bounding
    box (the mean of its corners), which HRPose regresses as its ninth belief map.
    """
    corners = box_corners_3d(points)
    return np.vstack([corners, corners.mean(axis=0, keepdims=True)])


def surface_keypoints(points, count: int = NUM_KEYPOINTS - 1) -> np.ndarray:
    """Return (count + 1, 3) keypoints on the model: ``count`` farthest-point samples, then the box centre.

    PVNet's keypoints (Peng et al., CVPR 2019): farthest point sampling over the model points,
    seeded with the box centre. Unlike box corners they lie on the object, where a crop network
    sees them, and inside its box, so they never leave the crop. Written here (a few lines)
    because neither OpenCV nor trimesh offers farthest point sampling; deterministic, so the
    same model always gives the same keypoints.
    """
    points = _array(points, "points", (-1, 3))
    if len(points) < count:
        raise ValueError(
            f"points: need at least {count} model points for surface keypoints, got {len(points)}"
        )
    centre = keypoints_3d(points)[-1]
    nearest = np.linalg.norm(points - centre, axis=1)  # distance of each point to the chosen set
    chosen = []
    for _ in range(count):
        i = int(np.argmax(nearest))
        chosen.append(points[i])
        nearest = np.minimum(nearest, np.linalg.norm(points - points[i], axis=1))
    return np.vstack([np.asarray(chosen), centre[None]])


def model_keypoints(points, kind: str = "box") -> np.ndarray:
    """Return an object's (9, 3) keypoints of ``kind``: "box" (HRPose's corners + centre) or "surface"."""
    if kind == "box":
        return keypoints_3d(points)
    if kind == "surface":
        return surface_keypoints(points)
    raise ValueError(f"keypoints: expected 'box' or 'surface', got {kind!r}")


def project(points, R, t, K, dist=None) -> np.ndarray:
    """Return (N, 2) pixel coordinates of (N, 3) model ``points`` (metres) seen at pose R, t.

    Pinhole model ``u ~ K (R p + t)``; with non-zero OpenCV ``dist`` coefficients the lens
    distortion is applied as in ``cv2.projectPoints``. Points at or behind the camera
    plane (z <= 0) have no image: a ValueError names them.
    """
    K = check_intrinsics(K)
    cam = transform_points(points, R, t)
    if np.any(cam[:, 2] <= 0):
        bad = np.flatnonzero(cam[:, 2] <= 0)
        raise ValueError(f"points: {len(bad)} point(s) at or behind the camera (z <= 0), e.g. index {bad[0]}")
    return _image_points(cam, K, _distortion(dist))



def projected_box(points, R, t, K, dist=None) -> np.ndarray:
    """Return the (x, y, w, h) px box of model ``points`` projected at pose R, t (BOP's bbox_obj
    without a mask: the amodal box, hidden parts included)."""
    uv = project(points, R, t, K, dist)
    low, high = uv.min(axis=0), uv.max(axis=0)
    return np.array([low[0], low[1], high[0] - low[0], high[1] - low[1]], dtype=np.float64)

def _image_points(cam: np.ndarray, K: np.ndarray, dist: np.ndarray | None) -> np.ndarray:
    """Return (N, 2) pixels of (N, 3) camera-frame points in front of the camera."""
    if dist is None:
        uvw = cam @ K.T
        return uvw[:, :2] / uvw[:, 2:3]
    uv, _ = cv2.projectPoints(cam, np.zeros(3), np.zeros(3), K, dist)
    return uv.reshape(-1, 2)


class PnPSolution(NamedTuple):
    """A PnP pose: R (3, 3), t (3,) metres, RMS reprojection error (px) over inliers, inlier indices (M,)."""

    R: np.ndarray
    t: np.ndarray
    reprojection_error: float
    inliers: np.ndarray


def _collinear(points: np.ndarray) -> tuple[bool, bool]:
    """Return (collinear_3d, collinear_2d) of finite (N, 5) ``points``: 3D points in columns 0-2, pixels 3-4.

    True when that point set lies on one line (or one point), relative to its spread. The
    scatter matrix C of collinear points has one non-zero eigenvalue, so the sum of its
    principal 2x2 minors (the sum of eigenvalue pairs' products) vanishes next to trace(C)^2.
    One (5, 5) scatter matrix serves both sets: its top-left 3x3 block is the 3D points',
    its bottom-right 2x2 block the pixels'.
    """
    centred = points - np.add.reduce(points, axis=0) / len(points)
    scatter = (centred.T @ centred).tolist()
    (a, ab, ac, _, _), (_, b, bc, _, _), (_, _, c, _, _), (*_, u, uv), (*_, v) = scatter
    trace_3d, trace_2d = a + b + c, u + v
    minors_3d = (a * b - ab * ab) + (a * c - ac * ac) + (b * c - bc * bc)
    minors_2d = u * v - uv * uv
    return (
        trace_3d == 0 or minors_3d <= _COLLINEAR_TOL * trace_3d * trace_3d,
        trace_2d == 0 or minors_2d <= _COLLINEAR_TOL * trace_2d * trace_2d,
    )


def _usual_pnp_inputs(points_2d, points_3d, K, dist):
    """Return (points_2d, points_3d, K, dist or None) as given when they pass solve_pnp's checks, else None.

    The fast path for what the pipeline passes: float64 arrays of the right shapes, checked with
    a few vectorised operations and Python floats (~12 us instead of ~25 us). Any other input, or
    any failed check, returns None and :func:`_checked_pnp_inputs` converts it or names the problem.
    """
    if not (
        type(points_2d) is np.ndarray and points_2d.dtype == np.float64 and points_2d.ndim == 2
        and type(points_3d) is np.ndarray and points_3d.dtype == np.float64
        and type(K) is np.ndarray and K.dtype == np.float64 and K.shape == (3, 3)
    ):
        return None
    n = points_2d.shape[0]
    if n < 4 or points_2d.shape[1] != 2 or points_3d.shape != (n, 3):
        return None
    (fx, skew, cx), (k10, fy, cy), (k20, k21, k22) = K.tolist()
    if not (
        fx > 0 and fy > 0 and k20 == 0 and k21 == 0 and abs(k22 - 1.0) <= 1e-9
        and math.isfinite(fx + skew + cx + k10 + fy + cy)
    ):
        return None
    if dist is not None:
        if not (
            type(dist) is np.ndarray and dist.dtype == np.float64 and dist.ndim == 1
            and dist.flags.c_contiguous and dist.size in _DIST_SIZES
        ):
            return None
        coefficients = dist.tolist()
        if not all(map(math.isfinite, coefficients)):
            return None
        if not any(coefficients):
            dist = None
    points = np.concatenate((points_3d, points_2d), axis=1)
    if not np.isfinite(points).all() or any(_collinear(points)):
        return None
    return points_2d, points_3d, K, dist


def _checked_pnp_inputs(points_2d, points_3d, K, dist):
    """Return float64 points_2d (N, 2), points_3d (N, 3), K (3, 3), dist or None; ValueError on bad input."""
    points_2d = _array(points_2d, "points_2d", (-1, 2))
    points_3d = _array(points_3d, "points_3d", (-1, 3))
    K = check_intrinsics(K)
    dist = _distortion(dist)
    if len(points_2d) != len(points_3d):
        raise ValueError(
            "points_2d/points_3d: expected the same number of points, "
            f"got {len(points_2d)} and {len(points_3d)}"
        )
    if len(points_3d) < 4:
        raise ValueError(f"points_3d: PnP needs at least 4 correspondences, got {len(points_3d)}")
    collinear_3d, collinear_2d = _collinear(np.concatenate((points_3d, points_2d), axis=1))
    if collinear_3d:
        raise ValueError("points_3d: the 3D points are collinear; the pose is not determined")
    if collinear_2d:
        raise ValueError("points_2d: the image points are collinear; the pose is not determined")
    return points_2d, points_3d, K, dist


def solve_pnp(
    points_2d,
    points_3d,
    K,
    dist=None,
    ransac: bool = False,
    ransac_threshold: float = 5.0,
    ransac_iterations: int = 100,
    ransac_confidence: float = 0.999,
    refine: bool = True,
) -> PnPSolution | None:
    """Return the pose R (3, 3), t (3,) metres projecting (N, 3) ``points_3d`` onto (N, 2) ``points_2d`` px.

    Returns a :class:`PnPSolution` (RMS reprojection error in px over the inliers), or None
    when OpenCV finds no pose, RANSAC keeps fewer than 4 inliers, or the pose puts the
    object behind the camera. ``points_2d`` are raw image pixels when ``dist`` is given.

    Method, chosen by measurement (9 HRPose keypoints of a 10 cm box at 0.5 m, 1 px noise,
    300 random poses, OpenCV 4.14 on this 2-core machine): SQPnP (Terzakis & Lourakis 2020,
    globally optimal) 45 us, median 0.46 deg / p95 0.86 deg; EPnP 77 us, 0.54 / 0.94 deg;
    ITERATIVE 143 us, 0.45 / 0.85 deg. A Levenberg-Marquardt refinement of the reprojection
    error after SQPnP (+~100 us) lowers the p95 to 0.81 deg. With 2 of 9 points off by
    30-80 px every plain solver is off by 12-20 deg (median); ``solvePnPRansac`` with SQPnP
    brings it back to 0.5 deg (p95 1.0 deg) at ~1.2 ms, so RANSAC is opt-in (``ransac=True``).
    Tried and dropped (2026-11-29): AP3P hypotheses (4-point samples) with SQPnP on their inliers
    are 3x faster (0.38 vs 1.0 ms with 2 outliers of 9, 1.2 vs 4.1 ms without consensus) and as
    accurate at 1 px noise, but at 3 px their noisier hypotheses miss the 5 px consensus: no pose
    for 21 / 85 / 198 of 300 poses (2 outliers of 9 / 2 of 8 / 1 of 6) against 2 / 9 / 83.
    Float64 arrays of the right shapes take a fast path through the input checks (~12 us);
    other inputs (lists, float32, ...) are converted and checked one by one (~25-35 us).
    A call without RANSAC then costs ~0.13 ms under load, three quarters of it in OpenCV
    (SQPnP + LM refinement).
    """
    usual = _usual_pnp_inputs(points_2d, points_3d, K, dist)
    if usual is None:
        usual = _checked_pnp_inputs(points_2d, points_3d, K, dist)
    points_2d, points_3d, K, dist = usual
    if ransac and not (ransac_threshold > 0 and ransac_iterations > 0 and 0 < ransac_confidence < 1):
        raise ValueError(
            "ransac_threshold/ransac_iterations/ransac_confidence: expected > 0, > 0 and in (0, 1), got "
            f"{ransac_threshold}, {ransac_iterations}, {ransac_confidence}"
        )

    # OpenCV wants contiguous float64 Nx1x3 / Nx1x2 for every solver.
    obj = np.ascontiguousarray(points_3d).reshape(-1, 1, 3)
    img = np.ascontiguousarray(points_2d).reshape(-1, 1, 2)
    if ransac:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, K, dist,
            iterationsCount=int(ransac_iterations),
            reprojectionError=float(ransac_threshold),
            confidence=float(ransac_confidence),
            flags=cv2.SOLVEPNP_SQPNP,
        )
        if not ok or inliers is None or len(inliers) < 4:
            return None
        inliers = np.sort(inliers.ravel().astype(np.int64))
        obj, img = obj[inliers], img[inliers]
    else:
        ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            return None
        inliers = np.arange(len(points_3d), dtype=np.int64)
    if refine:
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvec, tvec)
    rvec, tvec = np.asarray(rvec, np.float64).ravel(), np.asarray(tvec, np.float64).ravel()
    if not all(map(math.isfinite, rvec.tolist() + tvec.tolist())):
        return None
    R = cv2.Rodrigues(rvec)[0]
    cam = obj.reshape(-1, 3) @ R.T + tvec
    if cam[:, 2].min() <= 0:
        return None
    residual = _image_points(cam, K, dist) - img.reshape(-1, 2)
    rms = math.sqrt(np.add.reduce(np.add.reduce(residual * residual, axis=1)) / len(residual))
    return PnPSolution(R=R, t=tvec, reprojection_error=rms, inliers=inliers)


def disturb_pose(R, t, diameter: float, rng: np.random.Generator, rot_deg: float = 10.0, shift: float = 0.03,
                 depth: float = 0.04, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return pose R, t disturbed as the render-and-compare refiner (:mod:`hrpose_ros.refiner`) was
    trained, and as multi-start refinements draw their starts: a rotation of N(0, ``rot_deg``) degrees
    per camera axis, an image-plane shift of N(0, ``shift`` x ``diameter``) at the object's distance
    and a log depth ratio of N(0, ``depth``); ``scale`` multiplies the three sigmas."""
    R_noise = Rotation.from_rotvec(np.deg2rad(rng.normal(0.0, scale * rot_deg, 3))).as_matrix()
    z = t[2] * np.exp(rng.normal(0.0, scale * depth))
    xy = t[:2] / t[2] + rng.normal(0.0, scale * shift * diameter, 2) / t[2]
    return R_noise @ R, np.array([xy[0] * z, xy[1] * z, z])


def quaternion_from_matrix(R) -> np.ndarray:
    """Return the unit quaternion (4,) x, y, z, w (ROS order, w >= 0) of rotation matrix ``R`` (3, 3)."""
    R = check_rotation(R, tol=1e-3)
    # scipy's order is x, y, z, w (ROS's). R passed check_rotation, so its SVD orthonormalisation (4x
    # slower, once per published pose) is skipped: Markley's method on R, then a normalised quaternion.
    q = Rotation.from_matrix(R, assume_valid=True).as_quat()
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q) -> np.ndarray:
    """Return the (3, 3) rotation matrix of quaternion ``q`` (4,) given as x, y, z, w (ROS order).

    ``q`` is normalised first; a zero quaternion is a ValueError.
    """
    q = _vector(q, "q", 4)
    norm = np.linalg.norm(q)
    if norm < 1e-12:
        raise ValueError(f"q: expected a non-zero quaternion (x, y, z, w), got {q.tolist()}")
    return Rotation.from_quat(q).as_matrix()  # scipy normalises q, in x, y, z, w order


def matrix_from_rotation_6d(r6) -> np.ndarray:
    """Return (..., 3, 3) rotation matrices from (..., 6) 6D rotations (Zhou et al., CVPR 2019, Sec. 4.2).

    ``r6`` holds the first two columns (a1, a2) of the matrix, possibly unnormalised; the
    Gram-Schmidt map gives b1 = a1/|a1|, b2 = unit(a2 - (b1.a2) b1), b3 = b1 x b2 as columns.
    """
    r6 = _array(r6, "r6", (6,), allow_batch=True)
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    n1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - np.sum(a1 * a2, axis=-1, keepdims=True) / np.maximum(n1, 1e-300) ** 2 * a1
    n2 = np.linalg.norm(b2, axis=-1, keepdims=True)
    if np.any(n1 < 1e-12) or np.any(n2 < 1e-12 * np.maximum(np.linalg.norm(a2, axis=-1, keepdims=True), 1)):
        raise ValueError("r6: the two 3-vectors must be non-zero and not parallel")
    b1, b2 = a1 / n1, b2 / n2
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def rotation_6d_from_matrix(R) -> np.ndarray:
    """Return the (..., 6) 6D representation (first two columns, Zhou et al. 2019) of (..., 3, 3) ``R``."""
    R = _array(R, "R", (3, 3), allow_batch=True)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def _field(model_info, key: str):
    """Return ``model_info[key]`` (mapping) or ``model_info.key`` (record), or None."""
    if isinstance(model_info, Mapping):
        return model_info.get(key)
    return getattr(model_info, key, None)


def symmetry_transformations(model_info, max_sym_disc_step: float = 0.01) -> np.ndarray:
    """Return the (S, 4, 4) symmetry transformations of an object (translation in metres), identity first.

    ``model_info`` carries BOP's ``symmetries_discrete`` (each 16 numbers or a 4x4, row-major,
    translation in metres) and ``symmetries_continuous`` (each ``{"axis": (3,), "offset": (3,)
    metres}`` or a record with those attributes), as keys of a mapping or as attributes
    (``bop_models.ModelInfo``, which converted BOP's millimetres once when reading). Semantics as
    in the BOP toolkit (misc.get_symmetry_transformations, BOP 2019+): a continuous
    symmetry is discretised so that no surface point moves by more than
    ``max_sym_disc_step`` x diameter between steps, giving ceil(pi / step) rotations about
    the axis through ``offset``; every discrete symmetry (identity included) is combined
    with every continuous step, zero angle included, so the identity is the first element.
    """
    if not max_sym_disc_step > 0:
        raise ValueError(f"max_sym_disc_step: expected > 0, got {max_sym_disc_step}")
    discrete = [np.eye(4)]
    for i, sym in enumerate(_field(model_info, "symmetries_discrete") or []):
        matrix = _vector(sym, f"symmetries_discrete[{i}]", 16).reshape(4, 4)
        check_rotation(matrix[:3, :3], f"symmetries_discrete[{i}] rotation part", tol=1e-3)
        if not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError(
                f"symmetries_discrete[{i}]: expected last row [0, 0, 0, 1], got {matrix[3].tolist()}"
            )
        discrete.append(matrix)

    continuous = []
    for i, sym in enumerate(_field(model_info, "symmetries_continuous") or []):
        try:
            if isinstance(sym, Mapping):
                axis, offset = sym["axis"], sym["offset"]
            else:
                axis, offset = sym.axis, sym.offset
        except (KeyError, AttributeError) as exc:
            raise ValueError(
                f"symmetries_continuous[{i}]: expected keys 'axis' and 'offset', got {sym!r}"
            ) from exc
        axis = _vector(axis, f"symmetries_continuous[{i}].axis", 3)
        offset = _vector(offset, f"symmetries_continuous[{i}].offset", 3)
        if np.linalg.norm(axis) < 1e-12:
            raise ValueError(
                f"symmetries_continuous[{i}].axis: expected a non-zero vector, got {axis.tolist()}"
            )
        axis = axis / np.linalg.norm(axis)
        # A rotation by angle a moves a point at distance <= diameter/2 from the axis by at most
        # a * diameter / 2, so steps of 2 pi / ceil(pi / step) keep each move below step * diameter.
        count = int(math.ceil(math.pi / max_sym_disc_step))
        angles = 2.0 * math.pi * np.arange(count) / count
        for rot in Rotation.from_rotvec(angles[:, None] * axis).as_matrix():
            matrix = np.eye(4)
            matrix[:3, :3] = rot
            matrix[:3, 3] = offset - rot @ offset  # rotate about the axis through ``offset``
            continuous.append(matrix)

    if not continuous:
        return np.stack(discrete)
    return np.stack([cont @ disc for disc in discrete for cont in continuous])
