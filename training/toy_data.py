"""A tiny BOP split of flat-shaded boxes painted with OpenCV: for tests and smoke runs, no renderer needed.

Each box face gets its own colour, faces are painted far to near (painter's algorithm), so
the images carry real geometric cues for the keypoint network while taking milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import trimesh

from hrpose_ros import bop_format, bop_models, bop_writer
from hrpose_ros.geometry import box_corners_3d, project
from hrpose_ros.types import CameraModel, ObjectModel

__all__ = ["TOY_CAMERA", "toy_objects", "write_tiny_crops_file", "write_toy_models", "write_toy_split"]

TOY_CAMERA = CameraModel(K=np.array([[320.0, 0, 160.0], [0, 320.0, 120.0], [0, 0, 1]]), width=320, height=240)

# Faces of box_corners_3d's corner order (bit 2: x, bit 1: y, bit 0: z).
_FACES = ((0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5))


def toy_objects() -> list[ObjectModel]:
    """Return two box objects (obj_id 1: 6x4x3 cm, obj_id 2: 3x3x8 cm), points = surface samples (metres)."""
    objects = []
    for obj_id, size in ((1, (0.06, 0.04, 0.03)), (2, (0.03, 0.03, 0.08))):
        half = np.asarray(size) / 2
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
        surface = grid[np.any(np.abs(grid) == 1, axis=1)] * half
        objects.append(
            ObjectModel(
                obj_id=obj_id, name=f"box{obj_id}", points=surface, diameter=float(2 * np.linalg.norm(half))
            )
        )
    return objects


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _paint(
    image: np.ndarray, obj: ObjectModel, R: np.ndarray, t: np.ndarray, K: np.ndarray, colour_seed: int
):
    corners = box_corners_3d(obj.points)
    uv = project(corners, R, t, K)
    depth = (corners @ R.T + t)[:, 2]
    colours = np.random.default_rng(colour_seed).integers(40, 255, size=(6, 3))
    for f in sorted(range(6), key=lambda f: -depth[list(_FACES[f])].mean()):
        polygon = np.round(uv[list(_FACES[f])] * 16).astype(np.int32)
        cv2.fillConvexPoly(image, polygon, colours[f].tolist(), lineType=cv2.LINE_AA, shift=4)


def write_toy_models(models_dir) -> None:
    """Write the toy boxes as a BOP models dir (box meshes, models_info.json, object_names.json)."""
    objects = toy_objects()
    for obj in objects:
        size = obj.points.max(axis=0) - obj.points.min(axis=0)
        bop_models.write_ply_model(bop_models.model_path(models_dir, obj.obj_id),
                                   trimesh.creation.box(extents=size))
    bop_models.write_models_info(Path(models_dir) / "models_info.json",
                                 [bop_models.model_info_from_points(o.obj_id, o.points) for o in objects])
    bop_models.write_object_names(models_dir, {o.obj_id: o.name for o in objects})


def write_toy_split(split_dir, n_frames: int = 8, seed: int = 0) -> list[ObjectModel]:
    """Write ``n_frames`` 320x240 frames (one scene, 1-3 boxes each) to ``split_dir``; return the objects.

    The models go to ``split_dir``/../models (BOP layout).
    """
    rng = np.random.default_rng(seed)
    objects = toy_objects()
    write_toy_models(Path(split_dir).parent / "models")
    K = TOY_CAMERA.K
    with bop_writer.SceneWriter(Path(split_dir) / "000000") as writer:
        for _ in range(n_frames):
            image = np.full((TOY_CAMERA.height, TOY_CAMERA.width, 3), rng.integers(0, 60, size=3), np.uint8)
            instances = []
            for slot in rng.permutation(3)[: rng.integers(1, 4)]:
                obj = objects[int(rng.integers(len(objects)))]
                t = np.array(
                    [
                        (-0.12, 0.0, 0.12)[slot] + rng.uniform(-0.02, 0.02),
                        rng.uniform(-0.05, 0.05),
                        rng.uniform(0.45, 0.6),
                    ]
                )
                instances.append(bop_format.GtInstance(obj_id=obj.obj_id, R=_random_rotation(rng), t=t))
            for inst in sorted(instances, key=lambda i: -i.t[2]):
                obj = next(o for o in objects if o.obj_id == inst.obj_id)
                _paint(image, obj, inst.R, inst.t, K, colour_seed=obj.obj_id)
            writer.add_frame(image, K, instances)
    return objects


def write_tiny_crops_file(
    path, objects, crop_size: int = 64, input_size=(128, 96), **keypoint_config
) -> Path:
    """Write a crops weights file of untrained, randomly initialised tiny networks for ``objects``
    (tests: the file format and the code around the networks, not their accuracy); ``keypoint_config``:
    further CropKeypointConfig fields."""
    # imported here: the toy split writer needs no torch
    from hrpose_ros.crop_keypoints import CropKeypointConfig, CropKeypointNet
    from hrpose_ros.crop_pipeline import keypoints_to_dict, save_crops_file
    from hrpose_ros.detector import DetectorConfig, SingleShotDetector, detector_to_dict

    detector = SingleShotDetector(DetectorConfig(num_classes=len(objects), input_size=tuple(input_size),
                                                 pretrained=False))
    keypoints = CropKeypointNet(CropKeypointConfig(num_classes=len(objects), pretrained=False,
                                                   crop_size=crop_size, **keypoint_config))
    return save_crops_file(path, detector_to_dict(detector, objects), keypoints_to_dict(keypoints, objects))
