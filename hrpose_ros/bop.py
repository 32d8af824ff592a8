"""BOP datasets and results: the one place in the package that knows millimetres.

Reads and writes the BOP-scenewise format (thodan/bop_toolkit, docs/bop_datasets_format.md)
and the BOP19 results CSV (docs/bop_challenge_2019.md). Everything returned is in metres;
everything written is converted to BOP's millimetres exactly once, here.

Layout handled::

    models/models_info.json, models/obj_OBJID.ply          (OBJID: 6 digits)
    SPLIT/SCENEID/scene_camera.json, scene_gt.json, scene_gt_info.json
    SPLIT/SCENEID/rgb/IMID.png|jpg, depth/IMID.png (uint16, x depth_scale = mm),
    SPLIT/SCENEID/mask/IMID_GTID.png, mask_visib/IMID_GTID.png (uint8 0/255)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import trimesh
from PIL import Image
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from hrpose_ros.geometry import check_intrinsics, check_rotation, symmetry_transformations
from hrpose_ros.types import CameraModel, ObjectModel

__all__ = [
    "MM_PER_M",
    "BopFrame",
    "BopInstance",
    "BopResult",
    "ContinuousSymmetry",
    "GtInfo",
    "GtInstance",
    "ModelInfo",
    "SceneCamera",
    "SceneWriter",
    "compute_gt_info",
    "load_object_models",
    "model_info_from_points",
    "model_path",
    "read_depth",
    "read_mask",
    "read_models_info",
    "read_object_names",
    "read_ply_model",
    "read_results_csv",
    "read_rgb",
    "read_scene",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
    "read_split",
    "write_depth",
    "write_mask",
    "write_models_info",
    "write_object_names",
    "write_ply_model",
    "write_results_csv",
    "write_rgb",
    "write_scene_camera",
    "write_scene_gt",
    "write_scene_gt_info",
]

logger = logging.getLogger(__name__)

MM_PER_M = 1000.0
"""BOP stores lengths in millimetres; the package works in metres."""

RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"
OBJECT_NAMES_FILE = "object_names.json"
"""Not part of BOP: ``{"obj_id": "name"}`` beside models_info.json, for human-readable class names."""


# ----------------------------------------------------------------------------- small helpers


def _m(value_mm) -> np.ndarray:
    """Return millimetres as metres (float64)."""
    return np.asarray(value_mm, dtype=np.float64) / MM_PER_M


def _mm(value_m) -> list:
    """Return metres as a flat list of millimetres for JSON/CSV."""
    return (np.asarray(value_m, dtype=np.float64) * MM_PER_M).ravel().tolist()


def _numbers(value, where: str, size: int) -> np.ndarray:
    """Return ``value`` as a finite float64 vector of ``size`` numbers, or a ValueError naming ``where``."""
    try:
        array = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: expected {size} numbers, got {value!r}") from exc
    if array.size != size:
        raise ValueError(f"{where}: expected {size} numbers, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: contains NaN or infinite values")
    return array


def _get(entry: Mapping, key: str, where: str):
    """Return ``entry[key]`` or a ValueError naming the file/entry and the missing key."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: missing field '{key}'")
    return entry[key]


def _int_key(key: str, where: str) -> int:
    try:
        return int(key)
    except ValueError as exc:
        raise ValueError(f"{where}: expected integer keys, got '{key}'") from exc


def _load_json(path: Path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _load_json_dict(path: Path) -> dict[int, object]:
    """Return a BOP JSON file whose top level maps integer ids (as strings) to entries."""
    content = _load_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by id, got {type(content).__name__}")
    return {_int_key(k, str(path)): v for k, v in content.items()}


def _write_json_dict(path: Path, content: Mapping[int, object]) -> None:
    """Write ``{id: entry}`` as BOP does: keys sorted numerically, one entry per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'  "{k}": {json.dumps(content[k], sort_keys=True)}' for k in sorted(content)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    tmp.replace(path)  # readers never see a half-written file


def _rotation(value, where: str) -> np.ndarray:
    matrix = _numbers(value, where, 9).reshape(3, 3)
    return check_rotation(matrix, where, tol=1e-3)


def _im_name(im_id: int) -> str:
    return f"{im_id:06d}"


# ----------------------------------------------------------------------------- object models


@dataclass(frozen=True)
class ContinuousSymmetry:
    """A continuous rotational symmetry: unit ``axis`` (3,) through the point ``offset`` (3,) metres."""

    axis: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class ModelInfo:
    """One entry of models_info.json in metres: diameter, bounding box min/size, symmetries.

    ``symmetries_discrete`` holds (4, 4) transformations (translation in metres);
    ``symmetries_continuous`` holds :class:`ContinuousSymmetry` records.
    """

    obj_id: int
    diameter: float
    min: np.ndarray
    size: np.ndarray
    symmetries_discrete: tuple = ()
    symmetries_continuous: tuple = ()

    def symmetries(self, max_sym_disc_step: float = 0.01) -> np.ndarray:
        """Return (S, 4, 4) symmetry transformations, metres, identity first (see geometry)."""
        return symmetry_transformations(self, max_sym_disc_step)


def _diameter(points: np.ndarray) -> float:
    """Return the largest distance between two of the (N, 3) ``points`` (hull vertices suffice)."""
    try:
        candidates = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or tiny point sets: no 3D hull
        candidates = points
    best = 0.0
    for start in range(0, len(candidates), 2048):  # bounded memory for big flat sets
        best = max(best, float(cdist(candidates[start:start + 2048], candidates).max()))
    return best


def model_info_from_points(
    obj_id: int,
    points,
    symmetries_discrete: Sequence = (),
    symmetries_continuous: Sequence[ContinuousSymmetry] = (),
) -> ModelInfo:
    """Return the :class:`ModelInfo` (metres) of (N, 3) model ``points`` in metres: diameter, min, size."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
        raise ValueError(f"points: expected (N, 3) model points with N >= 2, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points: contains NaN or infinite values")
    lo, hi = points.min(axis=0), points.max(axis=0)
    discrete = tuple(_numbers(s, f"symmetries_discrete[{i}]", 16).reshape(4, 4)
                     for i, s in enumerate(symmetries_discrete))
    return ModelInfo(
        obj_id=int(obj_id),
        diameter=_diameter(points),
        min=lo,
        size=hi - lo,
        symmetries_discrete=discrete,
        symmetries_continuous=tuple(symmetries_continuous),
    )


def read_models_info(path) -> dict[int, ModelInfo]:
    """Return ``{obj_id: ModelInfo}`` (metres) read from a BOP models_info.json (millimetres)."""
    path = Path(path)
    infos = {}
    for obj_id, entry in _load_json_dict(path).items():
        where = f"{path} [{obj_id}]"
        diameter = float(_numbers(_get(entry, "diameter", where), f"{where}.diameter", 1)[0]) / MM_PER_M
        if not diameter > 0:
            raise ValueError(f"{where}.diameter: expected a positive length in mm, got {entry['diameter']}")
        lo = [_get(entry, f"min_{a}", where) for a in "xyz"]
        size = [_get(entry, f"size_{a}", where) for a in "xyz"]
        discrete = []
        for i, sym in enumerate(entry.get("symmetries_discrete", [])):
            matrix = _numbers(sym, f"{where}.symmetries_discrete[{i}]", 16).reshape(4, 4)
            matrix[:3, 3] /= MM_PER_M
            discrete.append(matrix)
        continuous = []
        for i, sym in enumerate(entry.get("symmetries_continuous", [])):
            sym_where = f"{where}.symmetries_continuous[{i}]"
            axis = _numbers(_get(sym, "axis", sym_where), f"{sym_where}.axis", 3)
            offset = _numbers(_get(sym, "offset", sym_where), f"{sym_where}.offset", 3) / MM_PER_M
            continuous.append(ContinuousSymmetry(axis=axis, offset=offset))
        infos[obj_id] = ModelInfo(
            obj_id=obj_id,
            diameter=diameter,
            min=_m(_numbers(lo, f"{where}.min_x/y/z", 3)),
            size=_m(_numbers(size, f"{where}.size_x/y/z", 3)),
            symmetries_discrete=tuple(discrete),
            symmetries_continuous=tuple(continuous),
        )
    return infos


def write_models_info(path, infos: Iterable[ModelInfo]) -> None:
    """Write :class:`ModelInfo` records (metres) to a BOP models_info.json (millimetres)."""
    content = {}
    for info in infos:
        entry = {"diameter": info.diameter * MM_PER_M}
        for axis, lo, size in zip("xyz", _mm(info.min), _mm(info.size)):
            entry[f"min_{axis}"], entry[f"size_{axis}"] = lo, size
        if info.symmetries_discrete:
            discrete = []
            for sym in info.symmetries_discrete:
                matrix = np.array(sym, dtype=np.float64).reshape(4, 4)
                matrix[:3, 3] *= MM_PER_M
                discrete.append(matrix.ravel().tolist())
            entry["symmetries_discrete"] = discrete
        if info.symmetries_continuous:
            entry["symmetries_continuous"] = [
                {"axis": np.asarray(s.axis, dtype=np.float64).tolist(), "offset": _mm(s.offset)}
                for s in info.symmetries_continuous
            ]
        content[int(info.obj_id)] = entry
    _write_json_dict(path, content)


def model_path(models_dir, obj_id: int) -> Path:
    """Return the path of a BOP model file: ``models_dir/obj_OBJID.ply`` (6-digit id)."""
    return Path(models_dir) / f"obj_{int(obj_id):06d}.ply"


def read_ply_model(path) -> trimesh.Trimesh:
    """Return the mesh of a BOP .ply model (millimetres on disk) with vertices in metres.

    Vertices keep their order (``process=False``), so vertex colours and texture
    coordinates stay attached.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: model file not found")
    try:
        mesh = trimesh.load(path, file_type="ply", process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for a corrupt file
        raise ValueError(f"{path}: not a readable PLY mesh ({exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0:
        raise ValueError(f"{path}: expected a PLY mesh with vertices")
    mesh.apply_scale(1.0 / MM_PER_M)
    return mesh


def write_ply_model(path, mesh: trimesh.Trimesh, encoding: str = "ascii") -> None:
    """Write ``mesh`` (vertices in metres) as a BOP .ply model in millimetres with vertex normals.

    BOP ships ASCII PLY; ``encoding="binary"`` is smaller and the toolkit reads it too.
    """
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0:
        raise ValueError(f"mesh: expected a trimesh.Trimesh with vertices, got {type(mesh).__name__}")
    if encoding not in ("ascii", "binary"):
        raise ValueError(f"encoding: expected 'ascii' or 'binary', got {encoding!r}")
    scaled = mesh.copy()
    scaled.apply_scale(MM_PER_M)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trimesh.exchange.ply.export_ply(scaled, encoding=encoding, vertex_normal=True))


def read_object_names(models_dir) -> dict[int, str]:
    """Return ``{obj_id: name}`` from ``models_dir/object_names.json``, or {} when there is none."""
    path = Path(models_dir) / OBJECT_NAMES_FILE
    if not path.exists():
        return {}
    names = _load_json_dict(path)
    for obj_id, name in names.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path} [{obj_id}]: expected a non-empty name string, got {name!r}")
    return names


def write_object_names(models_dir, names: Mapping[int, str]) -> None:
    """Write ``{obj_id: name}`` to ``models_dir/object_names.json`` (beside models_info.json)."""
    _write_json_dict(Path(models_dir) / OBJECT_NAMES_FILE, {int(k): str(v) for k, v in names.items()})


def load_object_models(
    models_dir,
    names: Mapping[int, str] | None = None,
    max_sym_disc_step: float = 0.01,
    max_points: int | None = None,
) -> list[ObjectModel]:
    """Return one :class:`ObjectModel` (metres, symmetries filled) per entry of models_info.json.

    Points are the model's vertices in metres; ``max_points`` keeps an evenly spread,
    reproducible subset (seed 0) for faster metrics. Names come from ``names``, else
    object_names.json, else ``obj_OBJID``. ``mesh_path`` is the .ply file (millimetres:
    read it with :func:`read_ply_model`).
    """
    models_dir = Path(models_dir)
    infos = read_models_info(models_dir / "models_info.json")
    names = dict(names) if names is not None else read_object_names(models_dir)
    objects = []
    for obj_id in sorted(infos):
        info = infos[obj_id]
        path = model_path(models_dir, obj_id)
        points = np.asarray(read_ply_model(path).vertices, dtype=np.float64)
        if max_points is not None and len(points) > max_points:
            keep = np.random.default_rng(0).choice(len(points), size=int(max_points), replace=False)
            points = points[np.sort(keep)]
        objects.append(ObjectModel(
            obj_id=obj_id,
            name=names.get(obj_id, f"obj_{obj_id:06d}"),
            points=points,
            diameter=info.diameter,
            symmetries=info.symmetries(max_sym_disc_step),
            mesh_path=str(path),
        ))
    return objects


# ----------------------------------------------------------------------------- scene annotations


@dataclass(frozen=True)
class SceneCamera:
    """One scene_camera.json entry: K (3, 3) px, depth_scale (PNG unit -> mm), optional world pose (m)."""

    K: np.ndarray
    depth_scale: float = 1.0
    R_w2c: np.ndarray | None = None
    t_w2c: np.ndarray | None = None  # metres
    view_level: int | None = None


@dataclass(frozen=True)
class GtInstance:
    """One annotated object instance (scene_gt.json): obj_id, R (3, 3), t (3,) metres, model to camera."""

    obj_id: int
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "R", check_rotation(self.R, f"obj {self.obj_id} R", tol=1e-3))
        object.__setattr__(self, "t", _numbers(self.t, f"obj {self.obj_id} t", 3))


@dataclass(frozen=True)
class GtInfo:
    """One entry of scene_gt_info.json: boxes (x, y, w, h) px as BOP computes them, pixel counts, visib_fract.

    BOP's boxes span from the first to the last pixel (w = x_max - x_min), and an empty
    silhouette has the box (-1, -1, -1, -1).
    """

    bbox_obj: tuple
    bbox_visib: tuple
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float


def read_scene_camera(path) -> dict[int, SceneCamera]:
    """Return ``{im_id: SceneCamera}`` (metres) from a BOP scene_camera.json."""
    path = Path(path)
    cameras = {}
    for im_id, entry in _load_json_dict(path).items():
        where = f"{path} [{im_id}]"
        K = check_intrinsics(_numbers(_get(entry, "cam_K", where), f"{where}.cam_K", 9).reshape(3, 3),
                             f"{where}.cam_K")
        depth_scale = float(_numbers(entry.get("depth_scale", 1.0), f"{where}.depth_scale", 1)[0])
        if not depth_scale > 0:
            raise ValueError(f"{where}.depth_scale: expected > 0, got {depth_scale}")
        R_w2c = t_w2c = None
        if "cam_R_w2c" in entry:
            R_w2c = _rotation(entry["cam_R_w2c"], f"{where}.cam_R_w2c")
            t_w2c = _m(_numbers(_get(entry, "cam_t_w2c", where), f"{where}.cam_t_w2c", 3))
        view_level = entry.get("view_level")
        cameras[im_id] = SceneCamera(K=K, depth_scale=depth_scale, R_w2c=R_w2c, t_w2c=t_w2c,
                                     view_level=None if view_level is None else int(view_level))
    return cameras


def write_scene_camera(path, cameras: Mapping[int, SceneCamera]) -> None:
    """Write ``{im_id: SceneCamera}`` (metres) to a BOP scene_camera.json (millimetres)."""
    _write_json_dict(path, {int(k): _camera_entry(v) for k, v in cameras.items()})


def _camera_entry(camera: SceneCamera) -> dict:
    entry = {"cam_K": np.asarray(camera.K, dtype=np.float64).ravel().tolist(),
             "depth_scale": float(camera.depth_scale)}
    if camera.R_w2c is not None:
        entry["cam_R_w2c"] = np.asarray(camera.R_w2c, dtype=np.float64).ravel().tolist()
        entry["cam_t_w2c"] = _mm(camera.t_w2c)
    if camera.view_level is not None:
        entry["view_level"] = int(camera.view_level)
    return entry


def read_scene_gt(path) -> dict[int, list[GtInstance]]:
    """Return ``{im_id: [GtInstance, ...]}`` (metres) from a BOP scene_gt.json; list index = gt_id."""
    path = Path(path)
    scene_gt = {}
    for im_id, entries in _load_json_dict(path).items():
        if not isinstance(entries, list):
            raise ValueError(f"{path} [{im_id}]: expected a list of instances")
        instances = []
        for gt_id, entry in enumerate(entries):
            where = f"{path} [{im_id}][{gt_id}]"
            instances.append(GtInstance(
                obj_id=int(_get(entry, "obj_id", where)),
                R=_rotation(_get(entry, "cam_R_m2c", where), f"{where}.cam_R_m2c"),
                t=_m(_numbers(_get(entry, "cam_t_m2c", where), f"{where}.cam_t_m2c", 3)),
            ))
        scene_gt[im_id] = instances
    return scene_gt


def write_scene_gt(path, scene_gt: Mapping[int, Sequence[GtInstance]]) -> None:
    """Write ``{im_id: [GtInstance, ...]}`` (metres) to a BOP scene_gt.json (millimetres)."""
    _write_json_dict(path, {int(k): [_gt_entry(g) for g in v] for k, v in scene_gt.items()})


def _gt_entry(gt: GtInstance) -> dict:
    return {"cam_R_m2c": np.asarray(gt.R).ravel().tolist(), "cam_t_m2c": _mm(gt.t), "obj_id": int(gt.obj_id)}


def read_scene_gt_info(path) -> dict[int, list[GtInfo]]:
    """Return ``{im_id: [GtInfo, ...]}`` from a BOP scene_gt_info.json (pixels; no lengths)."""
    path = Path(path)
    scene_info = {}
    for im_id, entries in _load_json_dict(path).items():
        if not isinstance(entries, list):
            raise ValueError(f"{path} [{im_id}]: expected a list of instance infos")
        infos = []
        for gt_id, entry in enumerate(entries):
            where = f"{path} [{im_id}][{gt_id}]"
            infos.append(GtInfo(
                bbox_obj=_bbox(_get(entry, "bbox_obj", where), f"{where}.bbox_obj"),
                bbox_visib=_bbox(_get(entry, "bbox_visib", where), f"{where}.bbox_visib"),
                px_count_all=int(_get(entry, "px_count_all", where)),
                px_count_valid=int(_get(entry, "px_count_valid", where)),
                px_count_visib=int(_get(entry, "px_count_visib", where)),
                visib_fract=float(_get(entry, "visib_fract", where)),
            ))
        scene_info[im_id] = infos
    return scene_info


def _bbox(value, where: str) -> tuple:
    return tuple(int(v) for v in _numbers(value, where, 4))


def write_scene_gt_info(path, scene_info: Mapping[int, Sequence[GtInfo]]) -> None:
    """Write ``{im_id: [GtInfo, ...]}`` to a BOP scene_gt_info.json."""
    _write_json_dict(path, {int(k): [_info_entry(i) for i in v] for k, v in scene_info.items()})


def _info_entry(info: GtInfo) -> dict:
    return {
        "bbox_obj": [int(v) for v in info.bbox_obj],
        "bbox_visib": [int(v) for v in info.bbox_visib],
        "px_count_all": int(info.px_count_all),
        "px_count_valid": int(info.px_count_valid),
        "px_count_visib": int(info.px_count_visib),
        "visib_fract": float(info.visib_fract),
    }


def _mask_bbox(mask: np.ndarray) -> tuple:
    """Return BOP's (x, y, w, h) of a mask's pixels (w = x_max - x_min), (-1, -1, -1, -1) if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (-1, -1, -1, -1)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min()))


def compute_gt_info(mask_full, mask_visib, depth=None) -> GtInfo:
    """Return the :class:`GtInfo` of one instance from its (H, W) full and visible masks and (H, W) depth.

    As BOP's calc_gt_info.py: ``px_count_valid`` counts silhouette pixels with depth > 0
    (all of them when ``depth`` is None), ``visib_fract`` = visible / all (0 when empty).
    """
    mask_full, mask_visib = np.asarray(mask_full, dtype=bool), np.asarray(mask_visib, dtype=bool)
    if mask_full.ndim != 2 or mask_full.shape != mask_visib.shape:
        raise ValueError(f"mask_full/mask_visib: expected two (H, W) masks, got {mask_full.shape}, "
                         f"{mask_visib.shape}")
    count_all = int(mask_full.sum())
    count_visib = int(mask_visib.sum())
    if depth is None:
        count_valid = count_all
    else:
        depth = np.asarray(depth)
        if depth.shape != mask_full.shape:
            raise ValueError(f"depth: expected shape {mask_full.shape}, got {depth.shape}")
        count_valid = int(np.logical_and(mask_full, depth > 0).sum())
    return GtInfo(
        bbox_obj=_mask_bbox(mask_full),
        bbox_visib=_mask_bbox(mask_visib),
        px_count_all=count_all,
        px_count_valid=count_valid,
        px_count_visib=count_visib,
        visib_fract=count_visib / count_all if count_all > 0 else 0.0,
    )


# ----------------------------------------------------------------------------- images


def read_rgb(path) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB image at ``path`` (grey images are expanded to 3 channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path, image, jpg_quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG or JPEG (by the file extension)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpg_quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise ValueError(f"{path}: could not write the image (extension .png or .jpg expected)")


def read_depth(path, depth_scale: float) -> np.ndarray:
    """Return the (H, W) float32 depth in metres (0 = no measurement) of a BOP uint16 depth PNG."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: not a readable depth image")
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.uint8):
        raise ValueError(f"{path}: expected a single-channel 16-bit depth PNG, got {raw.dtype} {raw.shape}")
    return (raw.astype(np.float64) * (depth_scale / MM_PER_M)).astype(np.float32)


def write_depth(path, depth_m, depth_scale: float) -> None:
    """Write (H, W) depth in metres (0 = none) as a BOP uint16 PNG: value * depth_scale = mm.

    A depth beyond what 16 bits hold at ``depth_scale`` is a ValueError (no silent clipping).
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    if depth_m.ndim != 2:
        raise ValueError(f"depth: expected an (H, W) image in metres, got shape {depth_m.shape}")
    if not np.all(np.isfinite(depth_m)) or np.any(depth_m < 0):
        raise ValueError("depth: expected finite, non-negative metres (0 = no measurement)")
    if not depth_scale > 0:
        raise ValueError(f"depth_scale: expected > 0, got {depth_scale}")
    units = np.round(depth_m * (MM_PER_M / depth_scale))
    if units.max(initial=0) > np.iinfo(np.uint16).max:
        limit = np.iinfo(np.uint16).max * depth_scale / MM_PER_M
        raise ValueError(f"depth: {depth_m.max():.3f} m exceeds {limit:.3f} m, the 16-bit limit at "
                         f"depth_scale {depth_scale}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: depth images must be PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), units.astype(np.uint16)):
        raise ValueError(f"{path}: could not write the depth image")


def read_mask(path) -> np.ndarray:
    """Return the (H, W) bool mask stored in a BOP mask PNG (non-zero = object)."""
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"{path}: not a readable mask image")
    return raw > 0


def write_mask(path, mask) -> None:
    """Write an (H, W) bool mask as a BOP mask PNG (uint8, 255 = object)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) mask, got shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.where(mask.astype(bool), 255, 0).astype(np.uint8)):
        raise ValueError(f"{path}: could not write the mask")


# ----------------------------------------------------------------------------- frames and splits


@dataclass(frozen=True)
class BopInstance:
    """One annotated instance of a frame: ``gt_id`` (index in scene_gt), obj_id, R (3, 3), t (3,) metres.

    ``info`` is its scene_gt_info entry (None when the scene has none); mask paths are None
    when the files do not exist.
    """

    gt_id: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    info: GtInfo | None = None
    mask_path: Path | None = None
    mask_visib_path: Path | None = None

    def read_mask_visib(self) -> np.ndarray:
        """Return the (H, W) bool mask of the instance's visible pixels."""
        if self.mask_visib_path is None:
            raise ValueError(f"gt {self.gt_id} (obj {self.obj_id}): no mask_visib file")
        return read_mask(self.mask_visib_path)

    def read_mask(self) -> np.ndarray:
        """Return the (H, W) bool mask of the instance's full silhouette."""
        if self.mask_path is None:
            raise ValueError(f"gt {self.gt_id} (obj {self.obj_id}): no mask file")
        return read_mask(self.mask_path)


@dataclass(frozen=True)
class BopFrame:
    """One image of a BOP scene: camera (K, size), depth_scale, image paths and annotated instances.

    Images are read on demand (:meth:`read_rgb`, :meth:`read_depth`) so a split of
    thousands of frames loads in a moment.
    """

    scene_id: int
    im_id: int
    camera: CameraModel
    depth_scale: float
    rgb_path: Path
    depth_path: Path | None = None
    instances: tuple = ()
    R_w2c: np.ndarray | None = None
    t_w2c: np.ndarray | None = None  # metres

    def read_rgb(self) -> np.ndarray:
        """Return the (H, W, 3) uint8 RGB image."""
        return read_rgb(self.rgb_path)

    def read_depth(self) -> np.ndarray:
        """Return the (H, W) float32 depth in metres (0 = none)."""
        if self.depth_path is None:
            raise ValueError(f"scene {self.scene_id} image {self.im_id}: no depth image")
        return read_depth(self.depth_path, self.depth_scale)


def _find_image(folder: Path, im_id: int) -> Path | None:
    for ext in (".png", ".jpg", ".jpeg", ".tif"):
        candidate = folder / (_im_name(im_id) + ext)
        if candidate.exists():
            return candidate
    return None


def read_scene(scene_dir, scene_id: int | None = None) -> list[BopFrame]:
    """Return the frames of one BOP scene directory, sorted by im_id (lengths in metres).

    ``scene_id`` defaults to the directory name. Each frame needs an rgb/ (or gray/)
    image; depth/, mask/, mask_visib/ and scene_gt_info.json are optional.
    """
    scene_dir = Path(scene_dir)
    if scene_id is None:
        scene_id = _int_key(scene_dir.name, f"{scene_dir} (scene directory name)")
    cameras = read_scene_camera(scene_dir / "scene_camera.json")
    scene_gt = read_scene_gt(scene_dir / "scene_gt.json") if (scene_dir / "scene_gt.json").exists() else {}
    info_path = scene_dir / "scene_gt_info.json"
    scene_info = read_scene_gt_info(info_path) if info_path.exists() else {}
    frames = []
    for im_id in sorted(cameras):
        camera = cameras[im_id]
        rgb_path = _find_image(scene_dir / "rgb", im_id) or _find_image(scene_dir / "gray", im_id)
        if rgb_path is None:
            raise ValueError(f"{scene_dir}: no rgb/{_im_name(im_id)}.png or .jpg for image {im_id}")
        try:
            with Image.open(rgb_path) as image:  # reads the header only
                width, height = image.size
        except OSError as exc:
            raise ValueError(f"{rgb_path}: not a readable image ({exc})") from exc
        gts = scene_gt.get(im_id, [])
        infos = scene_info.get(im_id)
        if infos is not None and len(infos) != len(gts):
            raise ValueError(f"{info_path} [{im_id}]: {len(infos)} entries but scene_gt.json has {len(gts)}")
        instances = []
        for gt_id, gt in enumerate(gts):
            name = f"{_im_name(im_id)}_{gt_id:06d}.png"
            mask, visib = scene_dir / "mask" / name, scene_dir / "mask_visib" / name
            instances.append(BopInstance(
                gt_id=gt_id, obj_id=gt.obj_id, R=gt.R, t=gt.t,
                info=infos[gt_id] if infos is not None else None,
                mask_path=mask if mask.exists() else None,
                mask_visib_path=visib if visib.exists() else None,
            ))
        frames.append(BopFrame(
            scene_id=int(scene_id), im_id=im_id,
            camera=CameraModel(K=camera.K, width=width, height=height),
            depth_scale=camera.depth_scale,
            rgb_path=rgb_path,
            depth_path=_find_image(scene_dir / "depth", im_id),
            instances=tuple(instances),
            R_w2c=camera.R_w2c, t_w2c=camera.t_w2c,
        ))
    return frames


def read_split(split_dir) -> list[BopFrame]:
    """Return the frames of every scene (6-digit numeric sub-directory) of a BOP split, in order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ValueError(f"{split_dir}: split directory not found")
    scenes = sorted((p for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                    key=lambda p: int(p.name))
    if not scenes:
        raise ValueError(f"{split_dir}: no scene directories (expected {split_dir}/000000/scene_camera.json)")
    return [frame for scene in scenes for frame in read_scene(scene)]


@dataclass
class SceneWriter:
    """Writes one BOP scene frame by frame: images and masks at once, the JSON files on :meth:`close`.

    Use as a context manager. Existing JSON files in ``scene_dir`` are kept and new frames
    continue after the highest im_id, so a generator can resume. ``depth_scale`` is the
    millimetres per depth PNG unit (0.1: 0.1 mm steps up to 6.55 m).
    """

    scene_dir: Path
    depth_scale: float = 0.1
    rgb_ext: str = "png"
    jpg_quality: int = 95
    _cameras: dict = field(default_factory=dict, init=False, repr=False)
    _gt: dict = field(default_factory=dict, init=False, repr=False)
    _info: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.scene_dir = Path(self.scene_dir)
        if self.rgb_ext not in ("png", "jpg"):
            raise ValueError(f"rgb_ext: expected 'png' or 'jpg', got {self.rgb_ext!r}")
        if not self.depth_scale > 0:
            raise ValueError(f"depth_scale: expected > 0, got {self.depth_scale}")
        if (self.scene_dir / "scene_camera.json").exists():
            self._cameras = read_scene_camera(self.scene_dir / "scene_camera.json")
            if (self.scene_dir / "scene_gt.json").exists():
                self._gt = read_scene_gt(self.scene_dir / "scene_gt.json")
            if (self.scene_dir / "scene_gt_info.json").exists():
                self._info = read_scene_gt_info(self.scene_dir / "scene_gt_info.json")
        self.scene_dir.mkdir(parents=True, exist_ok=True)

    @property
    def next_im_id(self) -> int:
        """The im_id the next frame gets."""
        return max(self._cameras, default=-1) + 1

    def add_frame(
        self,
        rgb,
        K,
        instances: Sequence[GtInstance],
        depth=None,
        masks_visib: Sequence | None = None,
        masks_full: Sequence | None = None,
        R_w2c=None,
        t_w2c=None,
    ) -> int:
        """Write one frame and return its im_id.

        ``rgb`` (H, W, 3) uint8; ``K`` (3, 3) or a CameraModel; ``instances`` the poses in
        metres; ``depth`` (H, W) metres or None; ``masks_visib``/``masks_full`` one (H, W)
        bool mask per instance (both given: scene_gt_info is computed as BOP does).
        """
        K = check_intrinsics(K.K if isinstance(K, CameraModel) else K)
        rgb = np.asarray(rgb)
        if rgb.ndim != 3:
            raise ValueError(f"rgb: expected an (H, W, 3) uint8 image, got shape {rgb.shape}")
        shape = rgb.shape[:2]
        instances = list(instances)
        if not all(isinstance(gt, GtInstance) for gt in instances):
            raise ValueError("instances: expected GtInstance records (obj_id, R, t in metres)")
        for name, masks in (("masks_visib", masks_visib), ("masks_full", masks_full)):
            if masks is not None and (len(masks) != len(instances) or
                                      any(np.shape(m) != shape for m in masks)):
                raise ValueError(f"{name}: expected {len(instances)} masks of shape {shape}")
        if depth is not None and np.shape(depth) != shape:
            raise ValueError(f"depth: expected shape {shape}, got {np.shape(depth)}")
        if (R_w2c is None) != (t_w2c is None):
            raise ValueError("R_w2c/t_w2c: give both or neither")

        im_id = self.next_im_id
        stem = _im_name(im_id)
        write_rgb(self.scene_dir / "rgb" / f"{stem}.{self.rgb_ext}", rgb, self.jpg_quality)
        if depth is not None:
            write_depth(self.scene_dir / "depth" / f"{stem}.png", depth, self.depth_scale)
        for folder, masks in (("mask_visib", masks_visib), ("mask", masks_full)):
            for gt_id, mask in enumerate(masks or []):
                write_mask(self.scene_dir / folder / f"{stem}_{gt_id:06d}.png", mask)
        self._cameras[im_id] = SceneCamera(
            K=K, depth_scale=self.depth_scale,
            R_w2c=None if R_w2c is None else check_rotation(R_w2c, "R_w2c", tol=1e-3),
            t_w2c=None if t_w2c is None else _numbers(t_w2c, "t_w2c", 3),
        )
        self._gt[im_id] = instances
        if masks_visib is not None and masks_full is not None:
            self._info[im_id] = [compute_gt_info(full, visib, depth)
                                 for full, visib in zip(masks_full, masks_visib)]
        return im_id

    def close(self) -> None:
        """Write scene_camera.json, scene_gt.json and (when masks were given) scene_gt_info.json.

        Safe to call at any time to flush (e.g. every few hundred frames); frames added
        afterwards are written by the next call.
        """
        write_scene_camera(self.scene_dir / "scene_camera.json", self._cameras)
        write_scene_gt(self.scene_dir / "scene_gt.json", self._gt)
        if self._info:
            missing = sorted(set(self._gt) - set(self._info))
            if missing:
                logger.warning("%s: frames %s have no masks, so no scene_gt_info entry", self.scene_dir,
                               missing[:5])
            write_scene_gt_info(self.scene_dir / "scene_gt_info.json", self._info)

    def __enter__(self) -> SceneWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


# ----------------------------------------------------------------------------- results CSV


@dataclass(frozen=True)
class BopResult:
    """One BOP19 results CSV row: ids, score, R (3, 3), t (3,) metres, time (s, -1 = unknown).

    ``time`` is the wall time for the whole image; BOP requires the same value for every
    estimate of one image.
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    time: float = -1.0


def write_results_csv(path, results: Iterable[BopResult]) -> None:
    """Write pose estimates (metres) as a BOP19 results CSV (R row-major, t in mm, time in s)."""
    lines = [RESULTS_HEADER]
    times: dict[tuple, float] = {}
    for i, res in enumerate(results):
        R = check_rotation(res.R, f"results[{i}].R", tol=1e-3)
        t = _numbers(res.t, f"results[{i}].t", 3)
        if not math.isfinite(res.score) or not math.isfinite(res.time):
            raise ValueError(f"results[{i}]: score and time must be finite, got {res.score}, {res.time}")
        key = (int(res.scene_id), int(res.im_id))
        if abs(times.setdefault(key, float(res.time)) - float(res.time)) > 1e-3:
            raise ValueError(f"results[{i}].time: BOP needs one time per image; scene {key[0]} "
                             f"image {key[1]} has {times[key]} and {res.time}")
        lines.append(",".join([
            str(int(res.scene_id)), str(int(res.im_id)), str(int(res.obj_id)), repr(float(res.score)),
            " ".join(repr(v) for v in R.ravel().tolist()),
            " ".join(repr(v) for v in _mm(t)),
            repr(float(res.time)),
        ]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_results_csv(path) -> list[BopResult]:
    """Return the pose estimates (metres) of a BOP19 results CSV (header line optional)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    results = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or (line_no == 1 and line.startswith("scene_id")):
            continue
        where = f"{path}:{line_no}"
        fields = line.split(",")
        if len(fields) != 7:
            raise ValueError(f"{where}: expected 7 fields ({RESULTS_HEADER}), got {len(fields)}")
        try:
            scene_id, im_id, obj_id = (int(f) for f in fields[:3])
            score, time = float(fields[3]), float(fields[6])
        except ValueError as exc:
            raise ValueError(f"{where}: expected integer ids and numeric score/time ({exc})") from exc
        results.append(BopResult(
            scene_id=scene_id, im_id=im_id, obj_id=obj_id, score=score,
            R=_rotation(fields[4].split(), f"{where} R"),
            t=_m(_numbers(fields[5].split(), f"{where} t", 3)),
            time=time,
        ))
    return results
