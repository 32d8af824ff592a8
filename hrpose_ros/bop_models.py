"""BOP object models: models_info.json, the PLY meshes and object names, loaded as ObjectModels in metres."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from hrpose_ros.bop_format import (
    MM_PER_M,
    checked_numbers,
    json_field,
    load_json_dict,
    to_metres,
    to_millimetres,
    write_json_dict,
)
from hrpose_ros.geometry import symmetry_transformations
from hrpose_ros.types import ObjectModel

__all__ = [
    "OBJECT_NAMES_FILE",
    "ContinuousSymmetry",
    "ModelInfo",
    "load_object_models",
    "model_info_from_points",
    "model_path",
    "read_models_info",
    "read_object_names",
    "read_ply_model",
    "write_models_info",
    "write_object_names",
    "write_ply_model",
]

OBJECT_NAMES_FILE = "object_names.json"
"""Not part of BOP: ``{"obj_id": "name"}`` beside models_info.json, for human-readable class names."""


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
    discrete = tuple(checked_numbers(s, f"symmetries_discrete[{i}]", 16).reshape(4, 4)
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
    for obj_id, entry in load_json_dict(path).items():
        where = f"{path} [{obj_id}]"
        diameter_mm = checked_numbers(json_field(entry, "diameter", where), f"{where}.diameter", 1)[0]
        diameter = float(diameter_mm) / MM_PER_M
        if not diameter > 0:
            raise ValueError(f"{where}.diameter: expected a positive length in mm, got {entry['diameter']}")
        lo = [json_field(entry, f"min_{a}", where) for a in "xyz"]
        size = [json_field(entry, f"size_{a}", where) for a in "xyz"]
        discrete = []
        for i, sym in enumerate(entry.get("symmetries_discrete", [])):
            matrix = checked_numbers(sym, f"{where}.symmetries_discrete[{i}]", 16).reshape(4, 4)
            matrix[:3, 3] /= MM_PER_M
            discrete.append(matrix)
        continuous = []
        for i, sym in enumerate(entry.get("symmetries_continuous", [])):
            sym_where = f"{where}.symmetries_continuous[{i}]"
            axis = checked_numbers(json_field(sym, "axis", sym_where), f"{sym_where}.axis", 3)
            offset_mm = checked_numbers(json_field(sym, "offset", sym_where), f"{sym_where}.offset", 3)
            offset = offset_mm / MM_PER_M
            continuous.append(ContinuousSymmetry(axis=axis, offset=offset))
        infos[obj_id] = ModelInfo(
            obj_id=obj_id,
            diameter=diameter,
            min=to_metres(checked_numbers(lo, f"{where}.min_x/y/z", 3)),
            size=to_metres(checked_numbers(size, f"{where}.size_x/y/z", 3)),
            symmetries_discrete=tuple(discrete),
            symmetries_continuous=tuple(continuous),
        )
    return infos


def write_models_info(path, infos: Iterable[ModelInfo]) -> None:
    """Write :class:`ModelInfo` records (metres) to a BOP models_info.json (millimetres)."""
    content = {}
    for info in infos:
        entry = {"diameter": info.diameter * MM_PER_M}
        for axis, lo, size in zip("xyz", to_millimetres(info.min), to_millimetres(info.size)):
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
                {"axis": np.asarray(s.axis, dtype=np.float64).tolist(), "offset": to_millimetres(s.offset)}
                for s in info.symmetries_continuous
            ]
        content[int(info.obj_id)] = entry
    write_json_dict(path, content)


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
    names = load_json_dict(path)
    for obj_id, name in names.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path} [{obj_id}]: expected a non-empty name string, got {name!r}")
    return names


def write_object_names(models_dir, names: Mapping[int, str]) -> None:
    """Write ``{obj_id: name}`` to ``models_dir/object_names.json`` (beside models_info.json)."""
    write_json_dict(Path(models_dir) / OBJECT_NAMES_FILE, {int(k): str(v) for k, v in names.items()})


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
