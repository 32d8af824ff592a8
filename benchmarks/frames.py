"""The benchmark's 640x480 frames: painted boxes on a grid or a BOP split, with ground-truth maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from hrpose_ros.codec import KeypointCodec
from hrpose_ros.geometry import box_corners_3d, keypoints_3d, project
from hrpose_ros.letterbox import letterbox_scale, scale_points
from hrpose_ros.types import CameraModel, ObjectModel

FRAME_WIDTH, FRAME_HEIGHT = 640, 480


CAMERA = CameraModel(
    K=np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]]),
    width=FRAME_WIDTH,
    height=FRAME_HEIGHT,
)


@dataclass
class Frame:
    """One benchmark image with its ground truth (class index, R, t metres) and encoded maps."""

    image: np.ndarray
    camera: CameraModel
    instances: list[tuple[int, np.ndarray, np.ndarray]]
    maps: tuple[np.ndarray, np.ndarray] | None = None  # (1, C*K, h, w), (1, V, h, w) at the network input


# Faces of box_corners_3d's corner order (bit 2: x, bit 1: y, bit 0: z), as 4-cycles.
_FACES = ((0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5))


def scene_instances(
    objects: Sequence[ObjectModel], count: int, camera: CameraModel, rng: np.random.Generator
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Return ``count`` (class index, R, t) laid out on a grid so that no two instances overlap.

    Each instance is placed at a depth where its diameter spans ~60 % of its grid cell.
    """
    cols = math.ceil(math.sqrt(count * camera.width / camera.height))
    rows = math.ceil(count / cols)
    cell_w, cell_h = camera.width / cols, camera.height / rows
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    out = []
    for i in range(count):
        c = i % len(objects)
        u, v = (i % cols + 0.5) * cell_w, (i // cols + 0.5) * cell_h
        z = fx * objects[c].diameter / (0.6 * min(cell_w, cell_h))
        t = np.array([(u - cx) * z / fx, (v - cy) * z / fy, z])
        R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        out.append((c, R, t))
    return out


def paint_scene(
    objects: Sequence[ObjectModel], instances, camera: CameraModel, rng: np.random.Generator
) -> np.ndarray:
    """Return an (H, W, 3) uint8 image of flat-coloured boxes (one colour per face and class) on noise."""
    noise = rng.integers(30, 110, size=(camera.height // 8, camera.width // 8, 3)).astype(np.uint8)
    image = cv2.resize(noise, (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)
    for c, R, t in sorted(instances, key=lambda inst: -inst[2][2]):  # far first
        corners = box_corners_3d(objects[c].points)
        uv = project(corners, R, t, camera.K)
        depth = (corners @ R.T + t)[:, 2]
        colours = np.random.default_rng(1000 + c).integers(60, 255, size=(6, 3))
        for f in sorted(range(6), key=lambda f: -depth[list(_FACES[f])].mean()):
            polygon = np.round(uv[list(_FACES[f])] * 16).astype(np.int32)
            cv2.fillConvexPoly(image, polygon, colours[f].tolist(), lineType=cv2.LINE_AA, shift=4)
    return image


def encode_maps(
    codec: KeypointCodec,
    objects: Sequence[ObjectModel],
    instances,
    camera: CameraModel,
    input_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Return the codec's (1, C*K, h, w), (1, V, h, w) maps of ``instances`` at the network input.

    Keypoints are projected in the camera image and mapped through the pipeline's letterbox.
    """
    width, height = input_size
    scale = letterbox_scale(camera.width, camera.height, width, height)
    if not instances:
        belief, vectors = codec.encode(
            np.zeros((0, codec.config.num_keypoints, 2)), np.zeros(0, int), height, width
        )
        return belief[None], vectors[None]
    keypoints = np.stack(
        [
            scale_points(project(keypoints_3d(objects[c].points), R, t, camera.K), scale)
            for c, R, t in instances
        ]
    )
    classes = np.array([c for c, _, _ in instances])
    belief, vectors = codec.encode(keypoints, classes, height, width)
    return belief[None], vectors[None]


def synthetic_frames(objects, codec, input_size, count: int, instances: int, seed: int = 0) -> list[Frame]:
    """Return ``count`` 640x480 frames of ``instances`` painted boxes with their ground-truth maps."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        chosen = scene_instances(objects, instances, CAMERA, rng)
        image = paint_scene(objects, chosen, CAMERA, rng)
        frames.append(Frame(image, CAMERA, chosen, encode_maps(codec, objects, chosen, CAMERA, input_size)))
    return frames


def split_frames(split_dir: Path, objects, codec, input_size, count: int) -> list[Frame]:
    """Return up to ``count`` frames of the BOP split at ``split_dir`` with their ground-truth maps."""
    from hrpose_ros import bop_reader as bop

    index = {o.obj_id: i for i, o in enumerate(objects)}
    frames = []
    for bop_frame in bop.read_split(split_dir)[:count]:
        chosen = [(index[i.obj_id], i.R, i.t) for i in bop_frame.instances if i.obj_id in index]
        maps = encode_maps(codec, objects, chosen, bop_frame.camera, input_size)
        frames.append(Frame(bop_frame.read_rgb(), bop_frame.camera, chosen, maps))
    if not frames:
        raise ValueError(f"{split_dir}: no frames")
    return frames
