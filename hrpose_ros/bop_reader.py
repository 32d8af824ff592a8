"""Reading BOP scenes: scene_camera/scene_gt/scene_gt_info.json, images, depth and masks, in metres.

:func:`read_scene` and :func:`read_split` give :class:`BopFrame` records whose images are read
on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hrpose_ros.bop_format import (
    MM_PER_M,
    GtInfo,
    GtInstance,
    SceneCamera,
    checked_numbers,
    checked_rotation,
    im_name,
    int_key,
    json_field,
    load_json_dict,
    to_metres,
)
from hrpose_ros.geometry import check_intrinsics
from hrpose_ros.types import CameraModel

__all__ = [
    "BopFrame",
    "BopInstance",
    "read_depth",
    "read_mask",
    "read_rgb",
    "read_scene",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
    "read_frames",
    "read_split",
]


def read_scene_camera(path) -> dict[int, SceneCamera]:
    """Return ``{im_id: SceneCamera}`` (metres) from a BOP scene_camera.json."""
    path = Path(path)
    cameras = {}
    for im_id, entry in load_json_dict(path).items():
        where = f"{path} [{im_id}]"
        K = checked_numbers(json_field(entry, "cam_K", where), f"{where}.cam_K", 9).reshape(3, 3)
        K = check_intrinsics(K, f"{where}.cam_K")
        depth_scale = float(checked_numbers(entry.get("depth_scale", 1.0), f"{where}.depth_scale", 1)[0])
        if not depth_scale > 0:
            raise ValueError(f"{where}.depth_scale: expected > 0, got {depth_scale}")
        R_w2c = t_w2c = None
        if "cam_R_w2c" in entry:
            R_w2c = checked_rotation(entry["cam_R_w2c"], f"{where}.cam_R_w2c")
            t_w2c = to_metres(checked_numbers(json_field(entry, "cam_t_w2c", where), f"{where}.cam_t_w2c", 3))
        view_level = entry.get("view_level")
        cameras[im_id] = SceneCamera(K=K, depth_scale=depth_scale, R_w2c=R_w2c, t_w2c=t_w2c,
                                     view_level=None if view_level is None else int(view_level))
    return cameras


def read_scene_gt(path) -> dict[int, list[GtInstance]]:
    """Return ``{im_id: [GtInstance, ...]}`` (metres) from a BOP scene_gt.json; list index = gt_id."""
    path = Path(path)
    scene_gt = {}
    for im_id, entries in load_json_dict(path).items():
        if not isinstance(entries, list):
            raise ValueError(f"{path} [{im_id}]: expected a list of instances")
        instances = []
        for gt_id, entry in enumerate(entries):
            where = f"{path} [{im_id}][{gt_id}]"
            instances.append(GtInstance(
                obj_id=int(json_field(entry, "obj_id", where)),
                R=checked_rotation(json_field(entry, "cam_R_m2c", where), f"{where}.cam_R_m2c"),
                t=to_metres(checked_numbers(json_field(entry, "cam_t_m2c", where), f"{where}.cam_t_m2c", 3)),
            ))
        scene_gt[im_id] = instances
    return scene_gt


def read_scene_gt_info(path) -> dict[int, list[GtInfo]]:
    """Return ``{im_id: [GtInfo, ...]}`` from a BOP scene_gt_info.json (pixels; no lengths)."""
    path = Path(path)
    scene_info = {}
    for im_id, entries in load_json_dict(path).items():
        if not isinstance(entries, list):
            raise ValueError(f"{path} [{im_id}]: expected a list of instance infos")
        infos = []
        for gt_id, entry in enumerate(entries):
            where = f"{path} [{im_id}][{gt_id}]"
            infos.append(GtInfo(
                bbox_obj=_bbox(json_field(entry, "bbox_obj", where), f"{where}.bbox_obj"),
                bbox_visib=_bbox(json_field(entry, "bbox_visib", where), f"{where}.bbox_visib"),
                px_count_all=int(json_field(entry, "px_count_all", where)),
                px_count_valid=int(json_field(entry, "px_count_valid", where)),
                px_count_visib=int(json_field(entry, "px_count_visib", where)),
                visib_fract=float(json_field(entry, "visib_fract", where)),
            ))
        scene_info[im_id] = infos
    return scene_info


def _bbox(value, where: str) -> tuple:
    return tuple(int(v) for v in checked_numbers(value, where, 4))


def read_rgb(path) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB image at ``path`` (grey images are expanded to 3 channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(path, depth_scale: float) -> np.ndarray:
    """Return the (H, W) float32 depth in metres (0 = no measurement) of a BOP uint16 depth PNG."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: not a readable depth image")
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.uint8):
        raise ValueError(f"{path}: expected a single-channel 16-bit depth PNG, got {raw.dtype} {raw.shape}")
    return (raw.astype(np.float64) * (depth_scale / MM_PER_M)).astype(np.float32)


def read_mask(path) -> np.ndarray:
    """Return the (H, W) bool mask stored in a BOP mask PNG (non-zero = object)."""
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"{path}: not a readable mask image")
    return raw > 0


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
        candidate = folder / (im_name(im_id) + ext)
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
        scene_id = int_key(scene_dir.name, f"{scene_dir} (scene directory name)")
    cameras = read_scene_camera(scene_dir / "scene_camera.json")
    scene_gt = read_scene_gt(scene_dir / "scene_gt.json") if (scene_dir / "scene_gt.json").exists() else {}
    info_path = scene_dir / "scene_gt_info.json"
    scene_info = read_scene_gt_info(info_path) if info_path.exists() else {}
    frames = []
    for im_id in sorted(cameras):
        camera = cameras[im_id]
        rgb_path = _find_image(scene_dir / "rgb", im_id) or _find_image(scene_dir / "gray", im_id)
        if rgb_path is None:
            raise ValueError(f"{scene_dir}: no rgb/{im_name(im_id)}.png or .jpg for image {im_id}")
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
            name = f"{im_name(im_id)}_{gt_id:06d}.png"
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
        if (split_dir / "scene_camera.json").is_file():
            raise ValueError(f"{split_dir}: a scene, not a split; give the directory that holds it "
                             f"({split_dir.parent}), or a directory holding only a link to it")
        raise ValueError(f"{split_dir}: no scene directories (expected {split_dir}/000000/scene_camera.json)")
    return [frame for scene in scenes for frame in read_scene(scene)]


def read_frames(path) -> list[BopFrame]:
    """Return the frames of ``path``: one BOP scene folder (with scene_camera.json) or a split of them."""
    path = Path(path)
    return read_scene(path) if (path / "scene_camera.json").is_file() else read_split(path)
