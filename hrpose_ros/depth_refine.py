"""Depth refinement: an RGB pose moved onto the aligned depth image by point-to-plane ICP.

Per instance: the object's surface sample (points + normals from its mesh), culled to what the
camera sees at the estimated pose (front faces, then a coarse z-buffer for self-occlusion), is
fitted to the depth image coarse to fine over shrinking correspondence distances, re-culled at
each stage, with a Tukey kernel (robust M-estimation, Babin et al., "Analysis of Robust Functions
for Registration Algorithms", ICRA 2019). Pairs are projective by default (``association``): each
visible model point with the depth measured at the pixel it projects to, as KinectFusion's ICP
(Newcombe et al., ISMAR 2011) pairs a model with a depth image. ``association="nearest"`` runs
Open3D's point-to-plane ICP instead, the depth points at the model's pixels (``model_pixels``; else
all of the pose's projected box, which in a bin also holds the floor and the neighbours) each
paired with their nearest model point.

A refinement is refused, and the RGB pose kept, when it moves the pose by more than
``max_translation`` / ``max_rotation``, when its fit residual is not lower than the RGB pose's
(the mean point-to-plane distance of the same depth points, truncated at the coarsest
correspondence distance, metres), or when the depth image sees through more of it than of the
RGB pose (:func:`depth_support`: a pose slid off its object onto the background).

Multi-start (``hypotheses`` > 0): ICP ends in the local minimum nearest its start, and from an RGB
pose that is off by centimetres a slab or a box finds several. The pose is then also refined from
that many copies of itself, disturbed at half the render-and-compare refiner's training sigmas
(5 deg per axis, 1.5 % of the diameter across the view, 2 % in depth), and the refined pose the
depth agrees with most (:func:`depth_agreement`) is kept.

The per-point loops (visibility, projective ICP steps, fit residual) are compiled with numba: in
numpy each pass over a few hundred points is dozens of calls whose overhead outweighed the work.
The first use compiles them (about 20 s; :func:`compile_kernels`, which :class:`DepthRefiner` calls),
later processes load numba's on-disk cache.

Depth is (H, W) float32 metres aligned to the colour image, 0 or NaN = no measurement.
Nothing here imports ROS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numba
import numpy as np
import open3d as o3d
import trimesh

from hrpose_ros import bop_models
from hrpose_ros.geometry import disturb_pose
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = [
    "ASSOCIATIONS",
    "DepthRefiner",
    "RefineConfig",
    "Refinement",
    "SurfaceModel",
    "best_of_restarts",
    "check_depth",
    "compile_kernels",
    "depth_agreement",
    "depth_points",
    "depth_support",
    "evenly_spaced",
    "fit_residual",
    "nearest_icp",
    "pose_change",
    "projective_icp",
    "refine_multistart",
    "refine_pose",
    "surface_model",
    "visible_surface",
    "whole_frame_config",
    "with_meshes",
]


# Slide along the viewing ray first only when the depth says the pose is this far off: nearer
# than that ICP does better alone (measured on rendered and on the test split's bin frames).
RECENTRE_MIN_SHIFT = 0.01
ASSOCIATIONS = ("projective", "nearest")
# Multi-start copies: :func:`hrpose_ros.geometry.disturb_pose` at this scale of its sigmas (half the
# refiner's training disturbance; the full sigmas scored the same on data/val_rgbd).
HYPOTHESIS_SCALE = 0.5


@dataclass(frozen=True)
class RefineConfig:
    """Bounds of the refinement; lengths in metres, angles in radians.

    ``stages`` are the ICP's maximum correspondence distances, coarse to fine, each run for at
    most ``iterations`` iterations; the Tukey kernel's width is half the stage's distance.
    ``box_margin`` widens the projected box by that fraction of its size; depth points further
    than ``depth_margin`` in front of or behind the model's visible depth range are dropped.
    ``frame_budget`` (seconds) bounds one frame: instances left when it is spent keep their
    RGB pose. ``threads``: instances of a frame refined at once. ``support_tolerance`` and
    ``support_margin``: :func:`depth_support`'s tolerance, and
    how much less of the refined pose than of the RGB pose the depth may confirm.
    ``hypotheses``: disturbed copies of each pose refined too (multi-start, from the second stage
    on: each about three quarters of the pose's own time); ``agreement_tolerance``:
    :func:`depth_agreement`'s, which picks among them. ``association``: "projective" pairs each
    visible model point (at most ``max_depth_points`` of them) with the depth at its pixel;
    "nearest" (Open3D) pairs depth points with their nearest model point. ``model_pixels``: the fits
    are compared over the depth at the RGB pose's model pixels, and nearest-neighbour ICP takes the
    depth at the pixels of the visible model at each stage's start pose, not the whole box (which
    serves when fewer than ``min_depth_points`` of them are measured).
    """

    stages: tuple = (0.02, 0.01, 0.005)
    iterations: int = 4
    # RGB poses err by several centimetres along the viewing ray and by tens of degrees when a keypoint
    # is wrong; on validation frames (data/val_rgbd) 50 mm / 25 deg refused more good refinements than
    # bad ones (ADD(-S) 62.3 -> 65.3 % with these).
    max_translation: float = 0.1
    max_rotation: float = np.deg2rad(45.0)
    box_margin: float = 0.1
    depth_margin: float = 0.03
    max_depth_points: int = 500
    min_depth_points: int = 50
    frame_budget: float = 0.03
    # A frame of the test split's bin frames (about 10 instances) took 36.7 ms on two threads against
    # 34.2 ms on one with projective pairs: what is left outside the compiled steps holds the GIL.
    threads: int = 1
    zbuffer_cell: int = 3
    support_tolerance: float = 0.01
    support_margin: float = 0.05
    hypotheses: int = 0
    # A bin's floor and neighbours inside the box dragged thin objects off even from the true pose:
    # data/val_rgbd ADD(-S) 67.5 -> 71.1 %, within 5 mm 2 deg 46.1 -> 55.8 %. The box holds more of
    # an object alone that the pose misses by centimetres (cut-and-paste frames 71.3 against 70.7 %).
    model_pixels: bool = True
    # 5 mm picks better than 10 mm on data/val_rgbd (ADD(-S) 71.7 against 69.8 %, 10 copies)
    agreement_tolerance: float = 0.005
    # Projective pairs (each model point with the depth at its pixel) against Open3D's nearest
    # neighbours, 4 iterations: data/val_rgbd ADD(-S) 72.4 against 70.7 %, within 5 mm 2 deg 64.1
    # against 58.7 %; test bin frames 68.0 against 65.8 % and 60.1 against 54.9 %, 3.7 against 11.1 ms
    # per instance (benchmarks/README.md).
    association: str = "projective"

    def __post_init__(self):
        stages = tuple(float(s) for s in self.stages)
        if not stages or any(not s > 0 for s in stages):
            raise ValueError(f"stages: expected positive correspondence distances (m), got {self.stages}")
        object.__setattr__(self, "stages", stages)
        if int(self.iterations) < 1:
            raise ValueError(f"iterations: expected at least 1, got {self.iterations}")
        for name in ("max_translation", "max_rotation", "depth_margin", "frame_budget", "support_tolerance",
                     "agreement_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        for name in ("box_margin", "support_margin"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if int(self.min_depth_points) < 6 or int(self.max_depth_points) < int(self.min_depth_points):
            raise ValueError(f"min_depth_points/max_depth_points: expected 6 <= min <= max, got "
                             f"{self.min_depth_points}, {self.max_depth_points}")
        if int(self.threads) < 1:
            raise ValueError(f"threads: expected at least 1, got {self.threads}")
        if int(self.zbuffer_cell) < 1:
            raise ValueError(f"zbuffer_cell: expected >= 1 pixel, got {self.zbuffer_cell}")
        if self.association not in ASSOCIATIONS:
            raise ValueError(f"association: expected one of {ASSOCIATIONS}, got {self.association!r}")
        if int(self.hypotheses) < 0:
            raise ValueError(f"hypotheses: expected 0 or more copies per pose, got {self.hypotheses}")


def whole_frame_config(hypotheses: int = 0) -> RefineConfig:
    """The refinement replays and evaluations score: every instance of a frame refined, with
    ``hypotheses`` restarts each (the node's 30 ms budget would leave instances out)."""
    return RefineConfig(frame_budget=10.0, hypotheses=hypotheses)


@dataclass(frozen=True)
class SurfaceModel:
    """An object's surface sample in metres: ``points`` (N, 3), unit ``normals`` (N, 3), the
    rotations (S, 3, 3) of its symmetries (identity included), so that turning a symmetric
    object about its axis does not count as moving it, and its ``diameter`` (m)."""

    obj_id: int
    points: np.ndarray
    normals: np.ndarray
    symmetries: np.ndarray
    diameter: float


@dataclass(frozen=True)
class Refinement:
    """One instance's outcome: the pose kept (refined or the input), and why.

    ``residual`` / ``residual_before`` are :func:`fit_residual` at the kept and at the input
    pose (metres; NaN when no depth was usable); ``depth_points`` the depth points used;
    ``reason`` is "" when refined, else why the input pose was kept.
    """

    R: np.ndarray
    t: np.ndarray
    refined: bool
    residual: float
    residual_before: float
    depth_points: int
    reason: str
    seconds: float


def surface_model(obj: ObjectModel, count: int = 2000, seed: int = 0) -> SurfaceModel:
    """Return ``count`` points sampled uniformly by area on ``obj``'s mesh (``mesh_path``, a BOP .ply),
    with their faces' normals."""
    if not obj.mesh_path:
        raise ValueError(f"{obj.name}: no mesh_path; depth refinement needs the object's mesh (BOP .ply)")
    mesh = bop_models.read_ply_model(obj.mesh_path)
    if len(mesh.faces) == 0:
        raise ValueError(f"{obj.mesh_path}: the model has no faces")
    points, faces = trimesh.sample.sample_surface(mesh, int(count), seed=seed)
    return SurfaceModel(obj_id=int(obj.obj_id), points=np.asarray(points, dtype=np.float64),
                        normals=np.asarray(mesh.face_normals[faces], dtype=np.float64),
                        symmetries=np.asarray(obj.symmetries[:, :3, :3], dtype=np.float64),
                        diameter=float(obj.diameter))


def with_meshes(objects: Iterable[ObjectModel], models_dir=None) -> list[ObjectModel]:
    """Return ``objects`` with ``mesh_path`` from the BOP ``models_dir`` (None: the shipped object set).

    A weights file keeps only a sample of each object's points; refinement needs the mesh.
    ValueError naming the obj_ids ``models_dir`` has no model for.
    """
    from hrpose_ros.data.objects import default_object_set_dir

    models_dir = models_dir or default_object_set_dir()
    meshes = {o.obj_id: o.mesh_path for o in bop_models.load_object_models(models_dir)}
    objects = list(objects)
    missing = sorted({o.obj_id for o in objects} - set(meshes))
    if missing:
        raise ValueError(f"{models_dir} has no meshes for obj_id {missing}")
    return [replace(o, mesh_path=meshes[o.obj_id]) for o in objects]


def check_depth(depth, camera: CameraModel) -> np.ndarray:
    """Return ``depth`` as (H, W) float32 metres for ``camera``; ValueError when it cannot be used.

    NaN and 0 mean no measurement; a frame with no measurement at all, negative or infinite
    values, or another size than the camera's is refused.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise ValueError(f"depth: expected an (H, W) float image in metres, got {depth.shape} {depth.dtype}")
    if depth.shape != (camera.height, camera.width):
        raise ValueError(f"depth: size {depth.shape[1]}x{depth.shape[0]} differs from the camera's "
                         f"{camera.width}x{camera.height} (depth must be aligned to the colour image)")
    if np.any(np.isinf(depth)) or np.any(depth < 0):
        raise ValueError("depth: contains negative or infinite values (expected metres, 0 or NaN = none)")
    if not np.any(depth > 0):
        raise ValueError("depth: no valid measurement in the frame (all zero or NaN)")
    return depth.astype(np.float32, copy=False)


def visible_surface(surface: SurfaceModel, R, t, camera: CameraModel,
                    cell: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (points (V, 3), normals (V, 3) in the camera frame, pixels (V, 2)) seen at pose R, t.

    Front faces only, then a z-buffer on ``cell`` x ``cell`` pixel cells keeps points within
    a few millimetres of the nearest in their cell (the rest is hidden behind the object itself).
    """
    K = camera.K
    return _visible(_array(surface.points), _array(surface.normals), _array(R), _array(t), float(K[0, 0]),
                    float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(camera.width), int(camera.height),
                    int(cell))


def _array(values) -> np.ndarray:
    """``values`` as a C-ordered float64 array: the compiled steps are compiled (and cached) for that
    layout; a strided view, say a rotation cut from a 4x4 matrix, would compile another version."""
    return np.ascontiguousarray(values, dtype=np.float64)


@numba.njit(cache=True, nogil=True)
def _rotate(R, x0, x1, x2):
    """R @ (x0, x1, x2) as three scalars: a small array per point would be a heap allocation each."""
    return (R[0, 0] * x0 + R[0, 1] * x1 + R[0, 2] * x2, R[1, 0] * x0 + R[1, 1] * x1 + R[1, 2] * x2,
            R[2, 0] * x0 + R[2, 1] * x1 + R[2, 2] * x2)


@numba.njit(cache=True, nogil=True)
def _visible(model_points, model_normals, R, t, fx, fy, cx, cy, width, height, cell):
    """:func:`visible_surface` compiled: in numpy its dozen passes over the sample cost 0.5 ms a pose,
    and the refinement culls four times or more per instance."""
    count = model_points.shape[0]
    points = np.empty((count, 3))
    normals = np.empty((count, 3))
    uv = np.empty((count, 2))
    keys = np.empty(count, dtype=np.int64)
    columns = width // cell + 1
    nearest = np.full((height // cell + 1) * columns, np.inf)
    n = 0
    for i in range(count):
        p0, p1, p2 = _rotate(R, model_points[i, 0], model_points[i, 1], model_points[i, 2])
        p0, p1, p2 = p0 + t[0], p1 + t[1], p2 + t[2]
        q0, q1, q2 = _rotate(R, model_normals[i, 0], model_normals[i, 1], model_normals[i, 2])
        if not (p0 * q0 + p1 * q1 + p2 * q2 < 0 and p2 > 1e-3):  # front faces in front of the camera
            continue
        u, v = p0 / p2 * fx + cx, p1 / p2 * fy + cy
        if not (u >= 0 and u < width and v >= 0 and v < height):
            continue
        key = int(v // cell) * columns + int(u // cell)
        nearest[key] = min(nearest[key], p2)
        points[n, 0], points[n, 1], points[n, 2] = p0, p1, p2
        normals[n, 0], normals[n, 1], normals[n, 2] = q0, q1, q2
        uv[n, 0], uv[n, 1] = u, v
        keys[n] = key
        n += 1
    kept = 0
    for i in range(n):
        # A cell spans cell * z / fx metres; three times that in depth admits surfaces up to ~70 deg slant.
        near = nearest[keys[i]]
        if points[i, 2] <= near + max(0.002, 3.0 * cell * near / fx):
            points[kept] = points[i]
            normals[kept] = normals[i]
            uv[kept] = uv[i]
            kept += 1
    return points[:kept], normals[:kept], uv[:kept]


def evenly_spaced(count: int, cap: int) -> slice | np.ndarray:
    """Return an index of at most ``cap`` of ``count`` items, evenly spaced (repeatable, unlike a
    random draw, and spread over the whole input): all of them (a slice) when there are no more."""
    if count <= cap:
        return slice(None)
    return np.linspace(0, count - 1, cap).astype(np.int64)


def depth_points(depth: np.ndarray, camera: CameraModel, box, z_range, max_points: int,
                 pixels: np.ndarray | None = None) -> np.ndarray:
    """Return up to ``max_points`` (M, 3) camera-frame points of ``depth`` in ``box`` (x0, y0, x1, y1 px)
    with depth in ``z_range`` (near, far) metres, evenly spaced in raster order; only at the pixels
    nearest ``pixels`` (V, 2), when given (not grown to a filled silhouette: the surface sample's own
    pixels scored better on data/val_rgbd than the same grown by 1 or 2 px, ADD(-S) 71.1 against
    70.6-70.9 and 69.9 %)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if pixels is None:
        patch = depth[y0:y1, x0:x1]
        v, u = np.nonzero((patch > z_range[0]) & (patch < z_range[1]))  # False for NaN too
        z = patch[v, u]
        v, u = v + y0, u + x0
    else:
        # The sample's pixels themselves, not a mask over the whole box: a few hundred lookups
        # instead of a pass over every pixel of the box. Sorted linear indices are raster order.
        px = np.round(pixels).astype(np.int64)
        keep = (px[:, 0] >= x0) & (px[:, 0] < x1) & (px[:, 1] >= y0) & (px[:, 1] < y1)
        v, u = np.divmod(np.unique(px[keep, 1] * depth.shape[1] + px[keep, 0]), depth.shape[1])
        z = depth[v, u]
        valid = np.flatnonzero((z > z_range[0]) & (z < z_range[1]))
        v, u, z = v[valid], u[valid], z[valid]
    pick = evenly_spaced(len(v), max_points)  # in raster order: spread over the whole box
    v, u, z = v[pick], u[pick], z[pick]
    z = z.astype(np.float64)
    K = camera.K
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=1)


def fit_residual(scene: np.ndarray, model_points: np.ndarray, model_normals: np.ndarray,
                 truncation: float) -> float:
    """Return the mean over ``scene`` points (M, 3) of their point-to-plane distance to the nearest
    model point, truncated at ``truncation`` metres (points with no model point that near count as
    ``truncation``): lower is a better fit, comparable between poses for the same scene points."""
    if len(model_points) == 0 or len(scene) == 0:
        return float(truncation)
    return float(_fit_residual(_array(scene), _array(model_points), _array(model_normals), float(truncation)))


@numba.njit(cache=True, nogil=True)
def _fit_residual(scene, model_points, model_normals, truncation):
    """:func:`fit_residual` by a grid of cells half the ``truncation`` wide over the model points, searched
    in rings of cells around each scene point until no unsearched cell can hold a nearer model point.
    Built per pose in a few microseconds, where a k-d tree (build and query) took about 0.5 ms and
    its numpy around it as much again."""
    count = model_points.shape[0]
    lo = np.empty(3)
    size = np.empty(3)
    for a in range(3):
        lo[a] = model_points[:, a].min()
        size[a] = model_points[:, a].max() - lo[a]
    width = max(truncation / 2, size.max() / 64.0)  # at most 65^3 cells, whatever the truncation
    reach = int(np.ceil(truncation / width))  # rings that can hold a point within the truncation
    shape = np.empty(3, dtype=np.int64)
    for a in range(3):
        shape[a] = int(size[a] / width) + 1
    cells = np.empty(count, dtype=np.int64)
    for i in range(count):
        c0 = min(int((model_points[i, 0] - lo[0]) / width), shape[0] - 1)
        c1 = min(int((model_points[i, 1] - lo[1]) / width), shape[1] - 1)
        c2 = min(int((model_points[i, 2] - lo[2]) / width), shape[2] - 1)
        cells[i] = (c0 * shape[1] + c1) * shape[2] + c2
    order = np.argsort(cells, kind="mergesort")
    start = np.zeros(shape[0] * shape[1] * shape[2] + 1, dtype=np.int64)
    for i in range(count):
        start[cells[i] + 1] += 1
    for i in range(1, start.shape[0]):
        start[i] += start[i - 1]
    total = 0.0
    limit = truncation * truncation
    for j in range(scene.shape[0]):
        s0, s1, s2 = scene[j, 0], scene[j, 1], scene[j, 2]
        # clamped: a point far outside the grid has no cell within reach (the ranges below come out empty)
        g0 = int(min(max(np.floor((s0 - lo[0]) / width), -reach - 1.0), shape[0] + reach))
        g1 = int(min(max(np.floor((s1 - lo[1]) / width), -reach - 1.0), shape[1] + reach))
        g2 = int(min(max(np.floor((s2 - lo[2]) / width), -reach - 1.0), shape[2] + reach))
        best, nearest = limit, -1
        for ring in range(reach + 1):
            for a in range(max(g0 - ring, 0), min(g0 + ring + 1, shape[0])):
                for b in range(max(g1 - ring, 0), min(g1 + ring + 1, shape[1])):
                    for c_ in range(max(g2 - ring, 0), min(g2 + ring + 1, shape[2])):
                        if max(abs(a - g0), abs(b - g1), abs(c_ - g2)) != ring:
                            continue  # an inner ring's cell, searched already
                        cell = (a * shape[1] + b) * shape[2] + c_
                        for k in range(start[cell], start[cell + 1]):
                            i = order[k]
                            d0 = s0 - model_points[i, 0]
                            d1 = s1 - model_points[i, 1]
                            d2 = s2 - model_points[i, 2]
                            distance = d0 * d0 + d1 * d1 + d2 * d2
                            if distance < best:
                                best, nearest = distance, i
            # the cells beyond this ring are at least ring * width away
            if best <= (ring * width) ** 2:
                break
        if nearest < 0:
            total += truncation
        else:
            i = nearest
            plane = abs((s0 - model_points[i, 0]) * model_normals[i, 0] + (s1 - model_points[i, 1])
                        * model_normals[i, 1] + (s2 - model_points[i, 2]) * model_normals[i, 2])
            total += min(plane, truncation)
    return total / scene.shape[0]


def _measured(depth: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Return the depth (V,) at the pixels nearest ``uv`` (V, 2), clamped into the image."""
    pixels = np.minimum(np.round(uv).astype(np.int64), [depth.shape[1] - 1, depth.shape[0] - 1])
    return depth[pixels[:, 1], pixels[:, 0]]


def depth_support(points: np.ndarray, uv: np.ndarray, depth: np.ndarray, tolerance: float) -> float:
    """Return the share in [0, 1] of visible model ``points`` (V, 3) at pixels ``uv`` (V, 2) that the
    depth image confirms: measured within ``tolerance`` metres of their depth, among those it does
    not hide (something nearer in front) and does measure. The rest were seen through: depth behind
    where the object would be (free space), which a right pose cannot leave (NaN when none count)."""
    measured = _measured(depth, uv)
    with np.errstate(invalid="ignore"):  # NaN: no measurement, counted in neither
        confirmed = np.abs(measured - points[:, 2]) <= tolerance
        seen_through = measured > points[:, 2] + tolerance
    counted = int(confirmed.sum() + seen_through.sum())
    return float(confirmed.sum() / counted) if counted else float("nan")


def depth_agreement(points: np.ndarray, uv: np.ndarray, depth: np.ndarray, tolerance: float) -> float:
    """Return (confirmed - seen through) / visible, in [-1, 1], over visible model ``points`` (V, 3) at
    pixels ``uv`` (V, 2): confirmed when measured within ``tolerance`` metres of their depth, seen
    through when measured behind them. Points hidden behind something nearer, and points with no
    measurement, count as neither: a pose slid off its object onto a hole or an occluder scores
    lower than one on it (NaN for no points)."""
    if len(points) == 0:
        return float("nan")
    with np.errstate(invalid="ignore"):  # NaN: no measurement, counted in neither
        offset = _measured(depth, uv) - points[:, 2]
        confirmed = int((np.abs(offset) <= tolerance).sum())
        seen_through = int((offset > tolerance).sum())
    return (confirmed - seen_through) / len(points)


def pose_change(R0, t0, R1, t1, symmetries=None) -> tuple[float, float]:
    """Return (translation m, rotation rad) from pose R0, t0 to R1, t1, the rotation the smallest over
    the object's ``symmetries`` (S, 3, 3) (None: no symmetry)."""
    relative = np.asarray(R0).T @ np.asarray(R1)
    if symmetries is None:
        symmetries = np.eye(3)[None]
    # angle of S_k^T R0^T R1 from its trace; the largest trace is the smallest angle
    trace = np.einsum("kij,ij->k", np.asarray(symmetries), relative).max()
    angle = np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))
    return float(np.linalg.norm(np.asarray(t1) - np.asarray(t0))), float(angle)


@contextmanager
def _one_open3d_thread() -> Iterator[None]:
    """Run Open3D on one thread inside the block (its setting is process-wide: restored after).

    Open3D's ICP sums its normal equations in a parallel reduction whose order changes from run to
    run; on a pose that fits the depth in more than one way the last bits steer it to another
    minimum, centimetres apart. One thread makes a pose depend on its inputs only (replays repeat)
    for about 1 ms more per instance.
    """
    threads = o3d.utility.get_max_threads()
    o3d.utility.set_max_threads(1)
    try:
        yield
    finally:
        o3d.utility.set_max_threads(threads)


@numba.njit(cache=True, nogil=True)
def _projective_steps(local, local_n, R, t, depth, fx, fy, cx, cy, distance, iterations, z_near, z_far):
    """:func:`projective_icp`'s iterations on model-frame ``local`` / ``local_n`` (3, V) from pose R, t.

    Compiled: in numpy each step was some fifty calls on a few hundred points, about 0.5 ms spent
    mostly in call overhead, and it held the GIL; here a step takes tens of microseconds.
    """
    height, width = depth.shape
    count = local.shape[1]
    P = np.empty((count, 3))
    N = np.empty((count, 3))
    r = np.empty(count)
    w = np.empty(count)
    R1, t1 = R.copy(), t.copy()
    k = distance / 2  # the Tukey width, as for nearest pairs
    pairs = 0
    for _ in range(iterations):
        n = 0
        for i in range(count):
            p0, p1, p2 = _rotate(R1, local[0, i], local[1, i], local[2, i])
            p0, p1, p2 = p0 + t1[0], p1 + t1[1], p2 + t1[2]
            z = max(p2, 1e-3)
            u = int(np.rint(p0 / z * fx + cx))
            v = int(np.rint(p1 / z * fy + cy))
            if u < 0 or u >= width or v < 0 or v >= height:
                continue
            m = float(depth[v, u])
            if not (m > z_near and m < z_far):  # False for NaN too
                continue
            d0, d1, d2 = p0 - (u - cx) / fx * m, p1 - (v - cy) / fy * m, p2 - m  # model - measured
            if d0 * d0 + d1 * d1 + d2 * d2 >= distance * distance:
                continue
            q0, q1, q2 = _rotate(R1, local_n[0, i], local_n[1, i], local_n[2, i])
            P[n, 0], P[n, 1], P[n, 2] = p0, p1, p2
            N[n, 0], N[n, 1], N[n, 2] = q0, q1, q2
            r[n] = d0 * q0 + d1 * q1 + d2 * q2
            n += 1
        pairs = n
        if n < 6:
            break
        total = 0.0
        c0 = c1 = c2 = 0.0
        for j in range(n):
            a = max(1.0 - (r[j] / k) ** 2, 0.0)
            w[j] = a * a  # Tukey's weight
            total += w[j]
            c0 += w[j] * P[j, 0]
            c1 += w[j] * P[j, 1]
            c2 += w[j] * P[j, 2]
        if not total > 0:
            break
        c = np.array([c0, c1, c2]) / total
        A = np.zeros((6, 6))
        b = np.zeros(6)
        J = np.empty(6)  # d r / d (small rotation about c, translation)
        for j in range(n):
            e0, e1, e2 = P[j, 0] - c[0], P[j, 1] - c[1], P[j, 2] - c[2]
            n0, n1, n2 = N[j, 0], N[j, 1], N[j, 2]
            J[0], J[1], J[2] = e1 * n2 - e2 * n1, e2 * n0 - e0 * n2, e0 * n1 - e1 * n0
            J[3], J[4], J[5] = n0, n1, n2
            for a_ in range(6):
                b[a_] += w[j] * J[a_] * r[j]
                for b_ in range(a_, 6):
                    A[a_, b_] += w[j] * J[a_] * J[b_]
        for a_ in range(6):
            for b_ in range(a_):
                A[a_, b_] = A[b_, a_]
        damping = 1e-12 + 1e-6 * np.trace(A) / 6  # a can turning about its axis
        for a_ in range(6):
            A[a_, a_] += damping
        x = np.linalg.solve(A, -b)
        angle = np.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2])
        Rw = np.eye(3)
        if angle > 1e-12:  # Rodrigues' formula
            a0, a1, a2 = x[0] / angle, x[1] / angle, x[2] / angle
            S = np.array([[0.0, -a2, a1], [a2, 0.0, -a0], [-a1, a0, 0.0]])
            Rw += np.sin(angle) * S + (1.0 - np.cos(angle)) * (S @ S)
        R1 = Rw @ R1
        t1 = Rw @ (t1 - c) + c + x[3:]
    return R1, t1, pairs


def projective_icp(points: np.ndarray, normals: np.ndarray, R, t, depth: np.ndarray, camera: CameraModel,
                   distance: float, iterations: int, z_range) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (R, t, pairs) after point-to-plane ICP of the model's visible ``points`` / ``normals`` (camera
    frame at R, t) against ``depth``, each model point paired with the depth measured at the pixel it
    projects to (projective association) instead of its nearest depth point.

    Written here because Open3D's registration pairs by nearest neighbour only, and its RGB-D
    odometry, which pairs projectively, aligns two depth images (the model would be rendered at
    every step). Each of the ``iterations`` is one Gauss-Newton step of the Tukey-weighted
    point-to-plane error about the pairs' weighted centre (no early stop: at 4 iterations a
    convergence test never fired); ``pairs`` is the count the last step used.
    """
    R0, t0 = _array(R), _array(t)
    # model-frame copies, (3, V): the pose moves them; the visible set stays the stage start's
    local = _array(R0.T @ (np.asarray(points, dtype=np.float64) - t0).T)
    local_n = _array(R0.T @ np.asarray(normals, dtype=np.float64).T)
    K = camera.K
    return _projective_steps(local, local_n, R0, t0, np.ascontiguousarray(depth, dtype=np.float32),
                             float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), float(distance),
                             int(iterations), float(z_range[0]), float(z_range[1]))


def nearest_icp(scene: np.ndarray, points: np.ndarray, normals: np.ndarray, R, t, distance: float,
                iterations: int, min_pairs: int = 6) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (R, t, pairs) after Open3D's point-to-plane ICP (Tukey kernel) of the depth points
    ``scene`` (M, 3), each paired with its nearest visible model point (``points`` / ``normals``,
    camera frame at R, t); point-to-point when that ends with fewer than ``min_pairs`` pairs.
    ``pairs`` is the count of the last correspondence set."""
    # Centred on the model: about the camera's origin, 0.5 m away, rotations and translations
    # are nearly the same motion and point-to-plane's normal equations turn ill-conditioned.
    centre = points.mean(axis=0)
    source, target = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
    source.points = o3d.utility.Vector3dVector(scene - centre)
    target.points = o3d.utility.Vector3dVector(points - centre)
    target.normals = o3d.utility.Vector3dVector(normals)
    # Moves the depth points onto the model at the current pose; its inverse moves the model.
    reg = o3d.pipelines.registration
    criteria = reg.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6,
                                          max_iteration=int(iterations))
    with _one_open3d_thread():
        result = reg.registration_icp(source, target, distance, np.eye(4),
                                      reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=distance / 2)),
                                      criteria)
        if len(result.correspondence_set) < min_pairs:
            # Point-to-plane has no unique step where the surface allows a motion (a can turning
            # about its axis, a slab sliding): its solve can throw the pose away. Point-to-point
            # (closed form) always has one.
            result = reg.registration_icp(source, target, distance, np.eye(4),
                                          reg.TransformationEstimationPointToPoint(), criteria)
    T = np.linalg.inv(result.transformation)  # centred model -> centred depth
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    return T[:3, :3] @ R, T[:3, :3] @ (t - centre) + T[:3, 3] + centre, len(result.correspondence_set)


def refine_pose(surface: SurfaceModel, R, t, depth: np.ndarray, camera: CameraModel,
                config: RefineConfig = RefineConfig(), first_stage: int = 0) -> Refinement:
    """Return the :class:`Refinement` of pose ``R`` (3, 3), ``t`` (3,) m against checked ``depth`` (m),
    ICP from ``config.stages[first_stage]`` on (fits still compared at the coarsest distance)."""
    started = time.perf_counter()
    R0, t0 = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    truncation = config.stages[0]  # the coarsest distance: poses far from the depth still compare

    def kept(reason: str, residual: float = np.nan, count: int = 0) -> Refinement:
        return Refinement(R=R0, t=t0, refined=False, residual=residual, residual_before=residual,
                          depth_points=count, reason=reason, seconds=time.perf_counter() - started)

    points, normals, uv = visible_surface(surface, R0, t0, camera, config.zbuffer_cell)
    if len(points) < 3:
        return kept("the model is not in view at the RGB pose")
    rgb_points, rgb_normals, rgb_uv = points, normals, uv
    # RGB poses err most along the viewing ray: slide the model along it onto the depth under its
    # silhouette first (the median offset ignores occluders that cover less than half of it).
    measured = _measured(depth, uv)
    under = measured > 0  # False for NaN too
    t_start = t0
    if under.sum() >= config.min_depth_points:
        shift = float(np.median(measured[under] - points[under, 2]))
        if abs(shift) > RECENTRE_MIN_SHIFT:
            t_start = t0 * (1.0 + shift / t0[2])
            points, normals, uv = visible_surface(surface, R0, t_start, camera, config.zbuffer_cell)
            if len(points) < 3:
                return kept("the model is not in view along the depth")
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    pad = config.box_margin * (hi - lo) + 2
    box = (max(0, np.floor(lo[0] - pad[0])), max(0, np.floor(lo[1] - pad[1])),
           min(camera.width, np.ceil(hi[0] + pad[0]) + 1), min(camera.height, np.ceil(hi[1] + pad[1]) + 1))
    z_range = (points[:, 2].min() - config.depth_margin, points[:, 2].max() + config.depth_margin)

    def own_pixels(pixels: np.ndarray, fallback: np.ndarray | None) -> np.ndarray | None:
        """The depth points at the model's ``pixels``; ``fallback`` when too few of them are measured."""
        there = depth_points(depth, camera, box, z_range, config.max_depth_points, pixels)
        return there if len(there) >= config.min_depth_points else fallback

    # The fits are compared over the RGB pose's own pixels too: the box's floor seen through a
    # torus's hole or beside a duck refused good refinements (data/val_rgbd, within 5 mm 2 deg
    # 55.8 -> 59.0 %, ADD(-S) unchanged). The whole box (a superset of those pixels) is read only
    # when they are too few.
    scene = own_pixels(rgb_uv, None) if config.model_pixels else None
    if scene is None:
        scene = depth_points(depth, camera, box, z_range, config.max_depth_points)
        if len(scene) < config.min_depth_points:
            return kept(f"{len(scene)} depth points in the box (need {config.min_depth_points})",
                        count=len(scene))
    before = fit_residual(scene, rgb_points, rgb_normals, truncation)
    support_before = depth_support(rgb_points, rgb_uv, depth, config.support_tolerance)

    R1, t1 = R0, t_start
    for stage, distance in enumerate(config.stages[first_stage:]):
        if stage > 0:
            points, normals, uv = visible_surface(surface, R1, t1, camera, config.zbuffer_cell)
            if len(points) < 3:
                return kept("the model left the view during refinement", before, len(scene))
        if config.association == "projective":
            pick = evenly_spaced(len(points), config.max_depth_points)
            R1, t1, pairs = projective_icp(points[pick], normals[pick], R1, t1, depth, camera, distance,
                                           config.iterations, z_range)
        else:
            # at the RGB pose itself (first stage, not slid along the ray) those pixels give ``scene``
            source = own_pixels(uv, scene) if config.model_pixels and uv is not rgb_uv else scene
            R1, t1, pairs = nearest_icp(source, points, normals, R1, t1, distance, config.iterations,
                                        config.min_depth_points)
        if pairs < config.min_depth_points:
            # too few pairs left: the last steps slid off the object and their transform means nothing
            return kept(f"ICP kept {pairs} depth points at {1e3 * distance:g} mm", before, len(scene))
    points, normals, uv = visible_surface(surface, R1, t1, camera, config.zbuffer_cell)
    after = fit_residual(scene, points, normals, truncation)
    support = depth_support(points, uv, depth, config.support_tolerance)
    moved, turned = pose_change(R0, t0, R1, t1, surface.symmetries)
    reason = ""
    if moved > config.max_translation or turned > config.max_rotation:
        reason = (f"refinement moved the pose {1e3 * moved:.1f} mm / {np.rad2deg(turned):.1f} deg (limits "
                  f"{1e3 * config.max_translation:.0f} mm / {np.rad2deg(config.max_rotation):.0f} deg)")
    elif not after < before:
        reason = f"refinement fits worse ({1e3 * after:.2f} mm against {1e3 * before:.2f} mm)"
    elif support < support_before - config.support_margin:
        reason = (f"the depth sees through the refined pose more ({100 * support:.0f} % of it confirmed "
                  f"against {100 * support_before:.0f} %)")
    if reason:
        return kept(reason, before, len(scene))
    return Refinement(R=R1, t=t1, refined=True, residual=after, residual_before=before,
                      depth_points=len(scene), reason="", seconds=time.perf_counter() - started)


def refine_multistart(surface: SurfaceModel, R, t, depth: np.ndarray, camera: CameraModel,
                      config: RefineConfig = RefineConfig()) -> Refinement:
    """Return :func:`refine_pose` from ``R``, ``t`` and from ``config.hypotheses`` disturbed copies of it
    (drawn from a fixed seed: the same input gives the same pose), keeping the pose whose visible
    surface the depth agrees with most (:func:`depth_agreement`; ties keep the first). Only copies
    that refined, and stayed within the limits of ``R``, ``t``, compete with the first result
    (refined or not); ``residual_before`` is the input pose's fit.
    """
    return best_of_restarts(surface, R, t, refine_pose(surface, R, t, depth, camera, config), depth, camera,
                            config)


def best_of_restarts(surface: SurfaceModel, R, t, first: Refinement, depth: np.ndarray, camera: CameraModel,
                     config: RefineConfig = RefineConfig()) -> Refinement:
    """Return :func:`refine_multistart`'s pick given ``first``, :func:`refine_pose`'s result from ``R``,
    ``t``: the restarts alone, so a caller can run them when it has the time (``seconds`` adds theirs)."""
    started = time.perf_counter()
    if config.hypotheses == 0 or first.depth_points < config.min_depth_points:
        return first  # no depth to compare the copies with

    def agreement(result: Refinement) -> float:
        points, _, uv = visible_surface(surface, result.R, result.t, camera, config.zbuffer_cell)
        return depth_agreement(points, uv, depth, config.agreement_tolerance)

    best, best_agreement = first, agreement(first)
    # The copies skip the coarsest ICP stage: as good on data/val_rgbd in three quarters of the time.
    skip = 1 if len(config.stages) > 1 else 0
    rng = np.random.default_rng(0)
    for _ in range(int(config.hypotheses)):
        R_start, t_start = disturb_pose(R, t, surface.diameter, rng, scale=HYPOTHESIS_SCALE)
        result = refine_pose(surface, R_start, t_start, depth, camera, config, first_stage=skip)
        if not result.refined:
            continue
        moved, turned = pose_change(R, t, result.R, result.t, surface.symmetries)
        if moved > config.max_translation or turned > config.max_rotation:
            continue
        score = agreement(result)
        if np.isfinite(score) and not score <= best_agreement:  # NaN best: any measured score wins
            best, best_agreement = result, score
    return replace(best, residual_before=first.residual_before,
                   seconds=first.seconds + time.perf_counter() - started)


def compile_kernels() -> None:
    """Compile (first run: about 20 s; later runs load numba's cache in well under a second) the
    refinement's compiled steps on a toy input, so the first depth frame is not the one that waits."""
    points = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.01, 0.0]])
    normals = np.array([[0.0, 0.0, -1.0]] * 3)
    R, t = np.eye(3), np.array([0.0, 0.0, 0.5])
    _visible(points, normals, R, t, 500.0, 500.0, 2.0, 2.0, 4, 4, 3)
    _fit_residual(points, points, normals, 0.02)
    _projective_steps(np.ascontiguousarray(points.T), np.ascontiguousarray(normals.T), R, t,
                      np.full((4, 4), 0.5, np.float32), 500.0, 500.0, 2.0, 2.0, 0.02, 1, 0.4, 0.6)


class DepthRefiner:
    """Refines a frame's :class:`ObjectPose` list against its depth image, instance by instance."""

    def __init__(self, objects: Iterable[ObjectModel], config: RefineConfig = RefineConfig(),
                 points_per_object: int = 2000):
        self.config = config
        self.surfaces = {int(o.obj_id): surface_model(o, points_per_object) for o in objects}
        if not self.surfaces:
            raise ValueError("objects: expected at least one object model with a mesh")
        compile_kernels()
        # Open3D's ICP runs outside Python's GIL, so with nearest pairs a second thread takes about a
        # quarter off a frame of several instances.
        self._pool = ThreadPoolExecutor(config.threads, "depth_refine") if config.threads > 1 else None

    def refine(self, poses: Sequence[ObjectPose], depth, camera: CameraModel
               ) -> tuple[list[ObjectPose], list[Refinement]]:
        """Return (poses with ``refined`` and ``depth_residual`` set, one :class:`Refinement` each).

        ``depth`` is checked first (:func:`check_depth`: ValueError for an unusable frame).
        Instances are refined in descending score, the first whatever the time; those of unknown
        objects and those left when ``frame_budget`` is spent keep their pose. With ``hypotheses``
        a second pass, in the same order, gives each refined instance its restarts
        (:func:`best_of_restarts`) while the budget lasts, again the first whatever the time: a
        tight budget still refines every instance once. With ``threads`` > 1 that many instances
        are refined at once (each result the same as alone). Both lists keep the order of ``poses``.
        """
        depth = check_depth(depth, camera)
        started = time.perf_counter()
        order = sorted(range(len(poses)), key=lambda i: -poses[i].score)
        first = order[0] if order else None

        def one(index: int) -> Refinement:
            pose = poses[index]
            surface = self.surfaces.get(int(pose.obj_id))
            if surface is None:
                return Refinement(pose.R, pose.t, False, np.nan, np.nan, 0,
                                  f"no mesh for obj_id {pose.obj_id}", 0.0)
            if index != first and time.perf_counter() - started > self.config.frame_budget:
                return Refinement(pose.R, pose.t, False, np.nan, np.nan, 0,
                                  f"frame budget of {1e3 * self.config.frame_budget:.0f} ms spent", 0.0)
            return refine_pose(surface, pose.R, pose.t, depth, camera, self.config)

        def restarts(index: int) -> Refinement:
            pose, once = poses[index], done[index]
            surface = self.surfaces.get(int(pose.obj_id))
            spent = index != first and time.perf_counter() - started > self.config.frame_budget
            if surface is None or spent:
                return once
            return best_of_restarts(surface, pose.R, pose.t, once, depth, camera, self.config)

        # One Open3D thread for the whole frame: its setting is process-wide, so instances refined
        # side by side must not restore each other's (refine_pose's own block then changes nothing).
        with _one_open3d_thread():
            done = dict(zip(order, self._map(one, order)))
            if self.config.hypotheses:
                done = dict(zip(order, self._map(restarts, order)))
        outcomes = [done[i] for i in range(len(poses))]
        out = [replace(pose, R=o.R, t=o.t, refined=o.refined, depth_residual=o.residual)
               for pose, o in zip(poses, outcomes)]
        return out, outcomes

    def _map(self, function, items: list) -> list:
        if self._pool is not None and len(items) > 1:
            return list(self._pool.map(function, items))
        return [function(i) for i in items]

    def close(self) -> None:
        """Stop the worker threads (refine then runs on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
