"""Writing BOP scenes: the scene JSON files, images, depth and masks in BOP's units; :class:`SceneWriter`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hrpose_ros.bop_format import (
    MM_PER_M,
    GtInfo,
    GtInstance,
    SceneCamera,
    checked_numbers,
    im_name,
    to_millimetres,
    write_json_dict,
)
from hrpose_ros.bop_reader import read_scene_camera, read_scene_gt, read_scene_gt_info
from hrpose_ros.geometry import check_intrinsics, check_rotation
from hrpose_ros.types import CameraModel

__all__ = [
    "SceneWriter",
    "compute_gt_info",
    "write_depth",
    "write_mask",
    "write_rgb",
    "write_scene_camera",
    "write_scene_gt",
    "write_scene_gt_info",
]

logger = logging.getLogger(__name__)


def write_scene_camera(path, cameras: Mapping[int, SceneCamera]) -> None:
    """Write ``{im_id: SceneCamera}`` (metres) to a BOP scene_camera.json (millimetres)."""
    write_json_dict(path, {int(k): _camera_entry(v) for k, v in cameras.items()})


def _camera_entry(camera: SceneCamera) -> dict:
    entry = {"cam_K": np.asarray(camera.K, dtype=np.float64).ravel().tolist(),
             "depth_scale": float(camera.depth_scale)}
    if camera.R_w2c is not None:
        entry["cam_R_w2c"] = np.asarray(camera.R_w2c, dtype=np.float64).ravel().tolist()
        entry["cam_t_w2c"] = to_millimetres(camera.t_w2c)
    if camera.view_level is not None:
        entry["view_level"] = int(camera.view_level)
    return entry


def write_scene_gt(path, scene_gt: Mapping[int, Sequence[GtInstance]]) -> None:
    """Write ``{im_id: [GtInstance, ...]}`` (metres) to a BOP scene_gt.json (millimetres)."""
    write_json_dict(path, {int(k): [_gt_entry(g) for g in v] for k, v in scene_gt.items()})


def _gt_entry(gt: GtInstance) -> dict:
    return {
        "cam_R_m2c": np.asarray(gt.R).ravel().tolist(),
        "cam_t_m2c": to_millimetres(gt.t),
        "obj_id": int(gt.obj_id),
    }


def write_scene_gt_info(path, scene_info: Mapping[int, Sequence[GtInfo]]) -> None:
    """Write ``{im_id: [GtInfo, ...]}`` to a BOP scene_gt_info.json."""
    write_json_dict(path, {int(k): [_info_entry(i) for i in v] for k, v in scene_info.items()})


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


def write_mask(path, mask) -> None:
    """Write an (H, W) bool mask as a BOP mask PNG (uint8, 255 = object)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) mask, got shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.where(mask.astype(bool), 255, 0).astype(np.uint8)):
        raise ValueError(f"{path}: could not write the mask")


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
        stem = im_name(im_id)
        write_rgb(self.scene_dir / "rgb" / f"{stem}.{self.rgb_ext}", rgb, self.jpg_quality)
        if depth is not None:
            write_depth(self.scene_dir / "depth" / f"{stem}.png", depth, self.depth_scale)
        for folder, masks in (("mask_visib", masks_visib), ("mask", masks_full)):
            for gt_id, mask in enumerate(masks or []):
                write_mask(self.scene_dir / folder / f"{stem}_{gt_id:06d}.png", mask)
        self._cameras[im_id] = SceneCamera(
            K=K, depth_scale=self.depth_scale,
            R_w2c=None if R_w2c is None else check_rotation(R_w2c, "R_w2c", tol=1e-3),
            t_w2c=None if t_w2c is None else checked_numbers(t_w2c, "t_w2c", 3),
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
