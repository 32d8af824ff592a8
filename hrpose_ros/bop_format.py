"""The BOP-scenewise format: millimetres to metres and back, JSON files keyed by id, scene records.

BOP (thodan/bop_toolkit, docs/bop_datasets_format.md) stores lengths in millimetres; the
package works in metres. The conversions here (:func:`to_metres`, :func:`to_millimetres`)
are used only by the bop_* modules, so millimetres stay at the BOP boundary:
:mod:`hrpose_ros.bop_models` (models), :mod:`hrpose_ros.bop_reader` (reading scenes),
:mod:`hrpose_ros.bop_writer` (writing scenes), :mod:`hrpose_ros.bop_results` (results CSV).

Layout handled::

    models/models_info.json, models/obj_OBJID.ply          (OBJID: 6 digits)
    SPLIT/SCENEID/scene_camera.json, scene_gt.json, scene_gt_info.json
    SPLIT/SCENEID/rgb/IMID.png|jpg, depth/IMID.png (uint16, x depth_scale = mm),
    SPLIT/SCENEID/mask/IMID_GTID.png, mask_visib/IMID_GTID.png (uint8 0/255)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrpose_ros.geometry import check_rotation

__all__ = [
    "MM_PER_M",
    "GtInfo",
    "GtInstance",
    "SceneCamera",
    "checked_numbers",
    "checked_rotation",
    "im_name",
    "int_key",
    "json_field",
    "load_json_dict",
    "to_metres",
    "to_millimetres",
    "write_json_dict",
]

MM_PER_M = 1000.0
"""BOP stores lengths in millimetres; the package works in metres."""


def to_metres(value_mm) -> np.ndarray:
    """Return millimetres as metres (float64)."""
    return np.asarray(value_mm, dtype=np.float64) / MM_PER_M


def to_millimetres(value_m) -> list:
    """Return metres as a flat list of millimetres for JSON/CSV."""
    return (np.asarray(value_m, dtype=np.float64) * MM_PER_M).ravel().tolist()


def checked_numbers(value, where: str, size: int) -> np.ndarray:
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


def json_field(entry: Mapping, key: str, where: str):
    """Return ``entry[key]`` or a ValueError naming the file/entry and the missing key."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: missing field '{key}'")
    return entry[key]


def int_key(key: str, where: str) -> int:
    """Return a JSON key (an id as a string) as an int, or a ValueError naming ``where``."""
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


def load_json_dict(path: Path) -> dict[int, object]:
    """Return a BOP JSON file whose top level maps integer ids (as strings) to entries."""
    content = _load_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by id, got {type(content).__name__}")
    return {int_key(k, str(path)): v for k, v in content.items()}


def write_json_dict(path: Path, content: Mapping[int, object]) -> None:
    """Write ``{id: entry}`` as BOP does: keys sorted numerically, one entry per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'  "{k}": {json.dumps(content[k], sort_keys=True)}' for k in sorted(content)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    tmp.replace(path)  # readers never see a half-written file


def checked_rotation(value, where: str) -> np.ndarray:
    """Return 9 row-major numbers as a (3, 3) rotation, or a ValueError naming ``where``."""
    matrix = checked_numbers(value, where, 9).reshape(3, 3)
    return check_rotation(matrix, where, tol=1e-3)


def im_name(im_id: int) -> str:
    """Return the 6-digit stem BOP gives the files of image ``im_id``."""
    return f"{im_id:06d}"


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
        object.__setattr__(self, "t", checked_numbers(self.t, f"obj {self.obj_id} t", 3))


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
