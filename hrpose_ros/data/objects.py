"""The shipped default object set, and adding users' meshes to a BOP models directory.

The default set is eight meshes from the ``pybullet_data`` package (zlib licence), turned
once into BOP models by :func:`build_default_object_set`: rotated so symmetry axes lie on
z, centred on their bounding box, scaled to realistic sizes (5-20 cm), written as
millimetre PLY files (``hrpose_ros.bop_models``) with models_info.json (diameter, bounding box,
BOP symmetries), object_names.json and each texture as ``obj_OBJID.png`` beside its model
(the PLY header names it with BOP's ``comment TextureFile``).

Command line: ``hrpose-add-object MESH --unit mm|cm|m --name NAME [--symmetry ...]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from hrpose_ros import bop_models
from hrpose_ros.geometry import symmetry_transformations
from hrpose_ros.types import ObjectModel

__all__ = [
    "SYMMETRIES",
    "UNITS",
    "ObjectSource",
    "add_object",
    "build_default_object_set",
    "default_object_set_dir",
    "load_default_objects",
    "main",
    "prepare_mesh",
    "select_objects",
    "symmetry_error",
    "texture_path",
]

logger = logging.getLogger(__name__)

UNITS = {"mm": 1e-3, "cm": 1e-2, "m": 1.0}
"""Metres per unit of a user's mesh file."""

MAX_TEXTURE_SIDE = 256
"""Textures are shrunk to at most this many pixels per side: the shipped set stays small."""

DIAMETER_RANGE_M = (0.005, 5.0)
"""Objects outside this range (metres) are taken as a wrong ``--unit`` (a 1000x error)."""


def _rotation(axis: str, degrees: float) -> np.ndarray:
    """Return the (4, 4) rotation by ``degrees`` about the coordinate ``axis`` ("x", "y" or "z")."""
    matrix = np.eye(4)
    matrix[:3, :3] = trimesh.transformations.rotation_matrix(
        math.radians(degrees), np.eye(3)["xyz".index(axis)])[:3, :3]
    return np.round(matrix, 12)


SYMMETRIES = {
    "none": ((), ()),
    "z90": ((_rotation("z", 90), _rotation("z", 180), _rotation("z", 270)), ()),
    "z180": ((_rotation("z", 180),), ()),
    "box": ((_rotation("x", 180), _rotation("y", 180), _rotation("z", 180)), ()),
    "z-continuous": ((), (bop_models.ContinuousSymmetry(axis=np.array([0.0, 0.0, 1.0]),
                                                        offset=np.zeros(3)),)),
    "z-continuous-flip": ((_rotation("x", 180),),
                          (bop_models.ContinuousSymmetry(axis=np.array([0.0, 0.0, 1.0]),
                                                         offset=np.zeros(3)),)),
}
"""BOP symmetries by name, about the model's centred frame: (discrete 4x4s, continuous axes).

"box": a block with three different sides (180 deg about x, y, z); "z180"/"z90": 180/90 deg
steps about z;
"z-continuous": a body of revolution about z; "-flip" adds 180 deg about x (cylinder, torus).
"""


@dataclass(frozen=True)
class ObjectSource:
    """How one default object is made from a pybullet_data mesh.

    ``size`` (metres) is the longest side after scaling, or three sides (x, y, z) for an
    anisotropic scale; ``up`` is the mesh axis that becomes z; ``colour`` (RGB 0-255) paints
    a textureless object (None keeps the mesh's texture).
    """

    name: str
    mesh: str
    size: float | tuple
    up: str = "z"
    colour: tuple | None = None
    symmetry: str = "none"


DEFAULT_OBJECTS = (
    ObjectSource("duck", "duck.obj", 0.10),
    ObjectSource("lego", "lego/lego.obj", 0.08, up="y", colour=(200, 30, 30), symmetry="z90"),
    # Jenga's texture is a debug texture with "TOP" written on it: painted wood, so the block stays symmetric.
    ObjectSource("jenga", "jenga/jenga.obj", (0.075, 0.025, 0.015), colour=(215, 170, 110), symmetry="box"),
    ObjectSource("domino", "domino/domino.obj", 0.06),
    ObjectSource("mug", "objects/mug.obj", 0.12, colour=(225, 220, 200)),
    ObjectSource("torus", "torus/torus_textured.obj", 0.10, up="y", colour=(240, 140, 20),
                 symmetry="z-continuous-flip"),
    # The toy cylinder's cross-section is an ellipse (2:1); scaling it to a circle makes a can.
    ObjectSource("can", "toys/cylinder.obj", (0.06, 0.06, 0.11), up="x", colour=(30, 70, 200),
                 symmetry="z-continuous-flip"),
    ObjectSource("prism", "toys/prism.obj", 0.10, up="y", colour=(40, 170, 60), symmetry="z180"),
)


def default_object_set_dir() -> Path:
    """Return the path of the shipped default object set: a BOP models dir (hrpose_ros/assets/objects)."""
    return Path(__file__).resolve().parent.parent / "assets" / "objects"


def load_default_objects(names: Sequence[str] | None = None) -> list[ObjectModel]:
    """Return the default set's objects (metres, symmetries filled), all or those ``names`` in order."""
    return select_objects(bop_models.load_object_models(default_object_set_dir()), names)


def select_objects(objects: Sequence[ObjectModel], names: Sequence[str] | None) -> list[ObjectModel]:
    """Return the objects called ``names`` (in that order), or all when ``names`` is None/empty."""
    if not names:
        return list(objects)
    by_name = {o.name: o for o in objects}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"objects: {unknown} not in the object set; expected names from {sorted(by_name)}")
    return [by_name[n] for n in names]


def texture_path(model_path) -> Path | None:
    """Return the texture image beside a BOP model (obj_OBJID.png), or None for a textureless model."""
    path = Path(model_path).with_suffix(".png")
    return path if path.exists() else None


# ----------------------------------------------------------------------------- meshes


def _load_mesh(path) -> trimesh.Trimesh:
    """Return the triangle mesh in ``path`` (obj/ply/stl/...), or a ValueError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: mesh file not found")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many exception types for bad files
        raise ValueError(f"{path}: not a readable mesh ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0:
        raise ValueError(f"{path}: expected a triangle mesh, found no faces (nor mesh vertices)")
    if len(mesh.faces) == 0:
        raise ValueError(f"{path}: the mesh has no faces (a point cloud cannot be rendered)")
    if not np.all(np.isfinite(mesh.vertices)):
        raise ValueError(f"{path}: vertices contain NaN or infinite values")
    return mesh


def _texture_image(mesh: trimesh.Trimesh) -> Image.Image | None:
    """Return the mesh's texture image (RGB) when it has one and texture coordinates, else None."""
    visual = mesh.visual
    if getattr(visual, "kind", None) != "texture" or getattr(visual, "uv", None) is None:
        return None
    image = getattr(getattr(visual, "material", None), "image", None)
    if image is None or min(image.size) < 4:
        return None
    return image.convert("RGB")


def _material_colour(mesh: trimesh.Trimesh) -> tuple:
    """Return an RGB colour for an untextured mesh: its material's diffuse colour, else light grey."""
    material = getattr(mesh.visual, "material", None)
    colour = getattr(material, "main_color", None)
    if colour is not None:
        return tuple(int(c) for c in np.asarray(colour)[:3])
    if getattr(mesh.visual, "kind", None) in ("vertex", "face"):
        return tuple(int(c) for c in np.median(mesh.visual.vertex_colors[:, :3], axis=0))
    return (180, 180, 180)


def prepare_mesh(
    mesh: trimesh.Trimesh,
    scale,
    up: str = "z",
    colour: tuple | None = None,
) -> tuple[trimesh.Trimesh, Image.Image | None]:
    """Return (mesh in metres centred on its bounding box, texture image or None).

    ``scale`` multiplies the (rotated) vertices: a number or three per-axis factors; ``up``
    names the axis that becomes z; ``colour`` (RGB) paints it as vertex colours and drops
    any texture. Textures are shrunk to :data:`MAX_TEXTURE_SIDE`.
    """
    if up not in ("x", "y", "z"):
        raise ValueError(f"up: expected 'x', 'y' or 'z', got {up!r}")
    texture = None if colour is not None else _texture_image(mesh)
    if colour is None and texture is None:
        colour = _material_colour(mesh)
    rotate = {"x": _rotation("y", -90), "y": _rotation("x", 90), "z": np.eye(4)}[up]
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ rotate[:3, :3].T
    vertices = vertices * np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,))
    vertices -= (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    faces = np.asarray(mesh.faces)
    if np.linalg.det(np.diag(np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,)))) < 0:
        faces = faces[:, ::-1]  # a mirroring scale flips the winding
    if texture is not None:
        if max(texture.size) > MAX_TEXTURE_SIDE:
            factor = MAX_TEXTURE_SIDE / max(texture.size)
            texture = texture.resize((max(4, round(texture.size[0] * factor)),
                                      max(4, round(texture.size[1] * factor))), Image.LANCZOS)
        uv = np.asarray(mesh.visual.uv, dtype=np.float64)
        visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.tile([*colour, 255], (len(vertices), 1)))
    out = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)
    return out, texture


def symmetry_error(mesh: trimesh.Trimesh, model_info: bop_models.ModelInfo, samples: int = 400) -> float:
    """Return the largest distance (metres) from a symmetry-moved surface sample to the surface.

    Near 0 when every symmetry in ``model_info`` maps the (metric, centred) ``mesh`` onto
    itself; continuous symmetries are checked at 10-degree steps.
    """
    points, _ = trimesh.sample.sample_surface(mesh, samples, seed=0)
    points = np.vstack([points, mesh.vertices])
    transforms = symmetry_transformations(model_info, max_sym_disc_step=math.pi / 18)
    worst = 0.0
    for transform in transforms[1:]:
        moved = points @ transform[:3, :3].T + transform[:3, 3]
        _, distance, _ = trimesh.proximity.closest_point(mesh, moved)
        worst = max(worst, float(distance.max()))
    return worst


def _write_model(models_dir: Path, obj_id: int, mesh: trimesh.Trimesh, texture: Image.Image | None) -> None:
    """Write obj_OBJID.ply (mm, binary) and its texture obj_OBJID.png, naming it as BOP does."""
    path = bop_models.model_path(models_dir, obj_id)
    bop_models.write_ply_model(path, mesh, encoding="binary")
    if texture is None:
        return
    texture.save(path.with_suffix(".png"), optimize=True)
    # BOP (bop_toolkit inout.load_ply) names the texture in a comment and reads texture_u/v.
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii")
    header = header.replace("property double s\n", "property double texture_u\n")
    header = header.replace("property double t\n", "property double texture_v\n")
    header = header.replace("\ncomment", f"\ncomment TextureFile {path.with_suffix('.png').name}\ncomment", 1)
    path.write_bytes(header.encode("ascii") + raw[end:])


def _model_info(obj_id: int, mesh: trimesh.Trimesh, symmetry: str) -> bop_models.ModelInfo:
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry: expected one of {sorted(SYMMETRIES)}, got {symmetry!r}")
    discrete, continuous = SYMMETRIES[symmetry]
    return bop_models.model_info_from_points(obj_id, mesh.vertices, discrete, continuous)


def _check_symmetry(mesh: trimesh.Trimesh, info: bop_models.ModelInfo, symmetry: str, where: str) -> None:
    error = symmetry_error(mesh, info)
    if error > 0.02 * info.diameter:
        raise ValueError(f"{where}: symmetry {symmetry!r} moves the surface by up to {error * 1000:.1f} mm "
                         f"(> 2 % of the {info.diameter * 1000:.0f} mm diameter); expected a shape with "
                         f"that symmetry about its centred bounding box axes")


def build_default_object_set(out_dir=None) -> Path:
    """Return ``out_dir`` (default: the shipped set's folder) after (re)writing the default object set.

    Written to a temporary folder first, then moved into place, so a failure leaves the
    old set untouched.
    """
    import pybullet_data

    out_dir = Path(out_dir) if out_dir is not None else default_object_set_dir()
    source_dir = Path(pybullet_data.getDataPath())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".objects-", dir=out_dir.parent))
    try:
        infos, names = [], {}
        for obj_id, source in enumerate(DEFAULT_OBJECTS, start=1):
            raw = _load_mesh(source_dir / source.mesh)
            rotated, _ = prepare_mesh(raw, 1.0, source.up, colour=(0, 0, 0))
            if isinstance(source.size, tuple):
                scale = np.asarray(source.size) / rotated.extents
            else:
                scale = source.size / rotated.extents.max()
            mesh, texture = prepare_mesh(raw, scale, source.up, source.colour)
            info = _model_info(obj_id, mesh, source.symmetry)
            _check_symmetry(mesh, info, source.symmetry, f"{source.mesh} ({source.name})")
            _write_model(tmp, obj_id, mesh, texture)
            infos.append(info)
            names[obj_id] = source.name
            logger.info("obj %d %s: %s cm, diameter %.1f cm, %s", obj_id, source.name,
                        np.round(mesh.extents * 100, 1).tolist(), info.diameter * 100, source.symmetry)
        bop_models.write_models_info(tmp / "models_info.json", infos)
        bop_models.write_object_names(tmp, names)
        tmp.chmod(0o755)  # mkdtemp makes it private; the set is package data
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def add_object(
    mesh_path,
    unit: str,
    name: str,
    models_dir=None,
    symmetry: str = "none",
    colour: tuple | None = None,
) -> ObjectModel:
    """Return the new :class:`ObjectModel` after adding the mesh at ``mesh_path`` to a BOP models dir.

    ``unit`` is the mesh file's length unit ("mm", "cm" or "m"); the model is centred on its
    bounding box and gets the next free obj_id. ``symmetry`` is a name from
    :data:`SYMMETRIES`, checked against the shape. ``models_dir`` defaults to the shipped set.
    Nothing is written unless every check passes.
    """
    if unit not in UNITS:
        raise ValueError(f"unit: expected one of {sorted(UNITS)}, got {unit!r}")
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry: expected one of {sorted(SYMMETRIES)}, got {symmetry!r}")
    if not name or not name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"name: expected a non-empty name without spaces, got {name!r}")
    models_dir = Path(models_dir) if models_dir is not None else default_object_set_dir()
    info_path = models_dir / "models_info.json"
    infos = bop_models.read_models_info(info_path) if info_path.exists() else {}
    names = bop_models.read_object_names(models_dir)
    if name in names.values():
        raise ValueError(f"name: {name!r} is already in {models_dir} (names: {sorted(names.values())})")

    raw = _load_mesh(mesh_path)
    mesh, texture = prepare_mesh(raw, UNITS[unit], "z", colour)
    diameter = bop_models.model_info_from_points(0, mesh.vertices).diameter
    low, high = DIAMETER_RANGE_M
    if not low <= diameter <= high:
        hint = "smaller unit" if diameter > high else "larger unit"
        raise ValueError(f"{mesh_path}: diameter {diameter:.4g} m with --unit {unit} is outside "
                         f"{low}-{high} m; is the file in another unit (try a {hint})?")
    obj_id = max(infos, default=0) + 1
    info = _model_info(obj_id, mesh, symmetry)
    _check_symmetry(mesh, info, symmetry, str(mesh_path))

    models_dir.mkdir(parents=True, exist_ok=True)
    model_file = bop_models.model_path(models_dir, obj_id)
    written = [model_file, model_file.with_suffix(".png")]
    try:
        _write_model(models_dir, obj_id, mesh, texture)
        bop_models.write_models_info(info_path, [*infos.values(), info])
        bop_models.write_object_names(models_dir, {**names, obj_id: name})
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if infos:
            bop_models.write_models_info(info_path, infos.values())
        bop_models.write_object_names(models_dir, names)
        raise
    logger.info("added obj %d %s to %s: %s cm, diameter %.1f cm", obj_id, name, models_dir,
                np.round(mesh.extents * 100, 1).tolist(), diameter * 100)
    return next(o for o in bop_models.load_object_models(models_dir) if o.obj_id == obj_id)


def main(argv: Sequence[str] | None = None) -> int:
    """``hrpose-add-object MESH --unit mm|cm|m --name NAME``: add a user's mesh to a BOP models dir."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("mesh", nargs="?", help="mesh file (obj, ply, stl, ...)")
    parser.add_argument("--unit", choices=sorted(UNITS), help="length unit of the mesh file")
    parser.add_argument("--name", help="object name (class name in the pipeline's output)")
    parser.add_argument("--symmetry", default="none", choices=sorted(SYMMETRIES),
                        help="BOP symmetry about the centred model's axes (checked against the shape)")
    parser.add_argument("--colour", type=int, nargs=3, metavar=("R", "G", "B"),
                        help="paint a textureless object this colour (0-255)")
    parser.add_argument("--models-dir", default=None,
                        help="BOP models directory to add to (default: the shipped object set)")
    parser.add_argument("--rebuild-default-set", action="store_true",
                        help="rewrite the shipped default object set from pybullet_data and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.rebuild_default_set:
            build_default_object_set(args.models_dir)
            return 0
        if not (args.mesh and args.unit and args.name):
            parser.error("MESH, --unit and --name are required")
        add_object(args.mesh, args.unit, args.name, args.models_dir, args.symmetry,
                   tuple(args.colour) if args.colour else None)
    except ValueError as exc:
        logger.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
