"""Crop samples from BOP splits: each instance cut once with context, then jittered like a detector's box.

Every annotated instance (at least ``min_visib_fract`` visible) is cut from its frame once, into a
square "context crop" around its amodal box (``CONTEXT_PADDING`` x the longer side), with its 9
keypoints (canonical pose for symmetric objects, :func:`training.data.canonical_pose`) in that
crop's pixels. Training samples then re-crop it at the model's padding with the box shifted and
scaled at random, as detector boxes are off, and with photometric augmentation. Holding context
crops instead of frames keeps 30,000 instances in ~3 GB of memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_reader
from hrpose_ros.backbones import LiteFPN
from hrpose_ros.checkpoints import compact_points
from hrpose_ros.crop_keypoints import coordinate_frame
from hrpose_ros.crops import Crop, crop_around_box, crop_images
from hrpose_ros.data.augment import AugmentConfig, augment
from hrpose_ros.geometry import keypoints_3d as box_keypoints
from hrpose_ros.geometry import project, projected_box
from hrpose_ros.render import Renderer
from hrpose_ros.types import ObjectModel
from training.data import canonical_pose

__all__ = [
    "CONTEXT_PADDING",
    "CONTEXT_SIZE",
    "CropSamples",
    "JitterConfig",
    "amodal_box",
    "coordinate_targets",
    "crop_batch",
    "extreme_points",
    "load_crop_samples",
]

CONTEXT_PADDING = 2.2
CONTEXT_SIZE = 192
COORD_SIZE = 64  # object-coordinate labels per context crop: 3 context px per cell, ~ the 4 px map cell


@dataclass(frozen=True)
class JitterConfig:
    """Box noise of training crops, relative to the box's longer side: centre shift and log-scale."""

    shift: float = 0.08  # uniform +-, per axis
    scale: tuple = (0.9, 1.15)  # multiplies the crop side
    augment: AugmentConfig = AugmentConfig(rotation_prob=0.0)  # in-plane turns would change symmetric labels


@dataclass
class CropSamples:
    """Context crops (N, S, S, 3) uint8 and, in their pixels, keypoints (N, 9, 2), box centres (N, 2) and
    longer box sides (N,); class indices (N,)."""

    images: np.ndarray
    keypoints: np.ndarray
    classes: np.ndarray
    box_centres: np.ndarray
    box_sides: np.ndarray
    contexts: list  # the context Crop of each sample in its frame
    sources: np.ndarray  # (N, 2): index of the frame in the splits' order, gt_id
    # With coordinates: (N, COORD_SIZE, COORD_SIZE, 3) float16 normalised object coordinates of the
    # visible surface (crop_keypoints.coordinate_frame) over the context crop, and where they are.
    coords: np.ndarray | None = None
    coord_masks: np.ndarray | None = None

    def crop_in_context(self, i: int, crop_size: int, padding: float) -> Crop:
        """Return the un-jittered crop of sample ``i`` in its context crop's pixels (validation's crop)."""
        side = float(self.box_sides[i])
        cx, cy = (float(v) for v in self.box_centres[i])
        return crop_around_box((cx - side / 2, cy - side / 2, side, side), crop_size, padding)

    def __len__(self) -> int:
        return len(self.classes)


def amodal_box(obj: ObjectModel, R: np.ndarray, t: np.ndarray, camera) -> tuple:
    """Return the (x, y, w, h) px box of the object's projected points (BOP's bbox_obj without a mask)."""
    return tuple(float(v) for v in projected_box(obj.points, R, t, camera.K, camera.dist))


def load_crop_samples(
    splits: Sequence,
    objects: Sequence[ObjectModel],
    min_visib_fract: float = 0.1,
    max_frames: int | None = None,
    progress: bool = True,
    keypoints_3d: Sequence[np.ndarray] | None = None,
    coordinates: bool = False,
    extremes: bool = False,
    context_size: int = CONTEXT_SIZE,
) -> CropSamples:
    """Return every usable instance of the BOP ``splits`` as a context crop (see module docstring).

    ``keypoints_3d``: per object the (K, 3) keypoints to label (default HRPose's box corners + centre).
    ``coordinates``: also label the visible surface's object coordinates (:func:`coordinate_targets`;
    renders each instance, needs the models' meshes and the splits' mask_visib files).
    ``extremes``: each sample's keypoints are followed by its 4 extreme points (:func:`extreme_points`).
    ``context_size``: the context crops' side in px (a refiner on larger crops needs more than the
    default to cut them at full resolution; the coordinate labels assume the default).
    """
    if coordinates and context_size != CONTEXT_SIZE:
        raise ValueError(f"context_size: coordinate labels need {CONTEXT_SIZE} px context crops, "
                         f"got {context_size}")
    index = {o.obj_id: i for i, o in enumerate(objects)}
    if keypoints_3d is None:
        keypoints_3d = [box_keypoints(o.points) for o in objects]
    model_keypoints = [np.asarray(k, dtype=np.float64) for k in keypoints_3d]
    frames = [f for s in splits for f in bop_reader.read_split(s)]
    if max_frames is not None:
        frames = frames[:max_frames]
    images, keypoints, classes, centres, sides, contexts, sources = [], [], [], [], [], [], []
    coords, coord_masks = [], []
    renderer = Renderer(objects, COORD_SIZE, COORD_SIZE) if coordinates else None
    outline = [compact_points(o.points) for o in objects]  # the points a weights file keeps
    for frame_index, frame in enumerate(
        tqdm(frames, desc="context crops", unit="frame", disable=not progress)
    ):
        rgb, crops, kps = None, [], []
        for inst in frame.instances:
            c = index.get(inst.obj_id)
            if c is None or (inst.info is not None and inst.info.visib_fract < min_visib_fract):
                continue
            R, t = canonical_pose(inst.R, inst.t, objects[c].symmetries)
            if np.any((model_keypoints[c] @ R.T + t)[:, 2] <= 1e-3):
                continue
            box = inst.info.bbox_obj if inst.info is not None else amodal_box(objects[c], R, t, frame.camera)
            if box[2] <= 1 or box[3] <= 1:  # the amodal box, as the detector is trained to give it
                continue
            crop = crop_around_box(box, context_size, CONTEXT_PADDING)
            crops.append(crop)
            points = project(model_keypoints[c], R, t, frame.camera.K, frame.camera.dist)
            if extremes:
                points = np.concatenate([points, extreme_points(outline[c], inst.R, inst.t, frame.camera)])
            kps.append(crop.to_crop(points))
            classes.append(c)
            centres.append(crop.to_crop([box[0] + box[2] / 2, box[1] + box[3] / 2]))
            sides.append(max(box[2], box[3]) * crop.scale)
            contexts.append(crop)
            sources.append((frame_index, inst.gt_id))
            if renderer is not None:
                xyz, seen = coordinate_targets(renderer, objects[c], R, t, frame.camera.K, crop, inst)
                coords.append(xyz)
                coord_masks.append(seen)
        if crops:
            rgb = frame.read_rgb()
            images.append(crop_images(rgb, crops))
            keypoints.extend(kps)
    if renderer is not None:
        renderer.release()
    if not classes:
        raise ValueError(
            f"splits {list(map(str, splits))}: no instance of the objects "
            f"{[o.name for o in objects]} at least {min_visib_fract} visible"
        )
    return CropSamples(
        np.concatenate(images),
        np.asarray(keypoints, np.float32),
        np.asarray(classes, np.int64),
        np.asarray(centres, np.float32),
        np.asarray(sides, np.float32),
        contexts,
        np.asarray(sources, np.int64),
        np.stack(coords) if coordinates else None,
        np.stack(coord_masks) if coordinates else None,
    )


def extreme_points(points: np.ndarray, R, t, camera) -> np.ndarray:
    """Return (4, 2) px: the leftmost, rightmost, topmost and bottommost projections of model ``points``
    at pose R, t (the extreme points of the whole silhouette; their box is the amodal box)."""
    uv = project(points, R, t, camera.K, camera.dist)
    return uv[[uv[:, 0].argmin(), uv[:, 0].argmax(), uv[:, 1].argmin(), uv[:, 1].argmax()]]


def _context_to_coord_grid() -> np.ndarray:
    """Return the 3x3 affine context crop px -> label cell (pixel centres at integers in both)."""
    f = COORD_SIZE / CONTEXT_SIZE
    return np.array([[f, 0.0, 0.5 * f - 0.5], [0.0, f, 0.5 * f - 0.5], [0.0, 0.0, 1.0]])


def coordinate_targets(renderer: Renderer, obj: ObjectModel, R, t, K, context: Crop, instance) -> tuple:
    """Return ((COORD_SIZE, COORD_SIZE, 3) float16 normalised object coordinates, (COORD_SIZE,) * 2 bool).

    The instance alone is rendered (pose R, t; the canonical one for symmetric objects, like the
    keypoints) with a camera whose pixels are the label cells over ``context``; its depth, back-
    projected and moved into the model frame, gives each cell's surface point, kept where the
    frame's mask_visib says the instance is seen (occluders, other instances, cut-paste clutter).
    """
    A = _context_to_coord_grid() @ np.vstack([context.matrix(), [0.0, 0.0, 1.0]])
    K_cells = A @ np.asarray(K, dtype=np.float64)
    depth = renderer.render_depth(obj.obj_id, R, t, K_cells)
    visible = cv2.warpAffine(
        instance.read_mask_visib().astype(np.uint8), A[:2], (COORD_SIZE, COORD_SIZE), flags=cv2.INTER_NEAREST
    ).astype(bool)
    seen = (depth > 0) & visible
    v, u = np.nonzero(seen)
    rays = np.linalg.solve(K_cells, np.stack([u, v, np.ones_like(u)]).astype(np.float64))  # (3, M)
    points = (rays * depth[v, u]).T  # camera frame
    model = (points - t) @ R  # R^T (x - t), row vectors
    centre, half = coordinate_frame(obj.points)
    xyz = np.zeros((COORD_SIZE, COORD_SIZE, 3), np.float16)
    xyz[v, u] = (model - centre) / half
    return xyz, seen


def crop_batch(
    samples: CropSamples,
    indices: np.ndarray,
    crop_size: int,
    padding: float,
    rng: np.random.Generator | None,
    jitter: JitterConfig = JitterConfig(),
    coordinates: bool = False,
) -> tuple:
    """Return (crops (B, 3, S, S) float in [0, 1], keypoints (B, 9, 2) crop px, classes (B,)).

    ``rng`` None gives the un-jittered crop (validation): the box centred in the context crop.
    ``coordinates`` (samples loaded with them) adds the map cells' (B, 3, S/4, S/4) object
    coordinates and (B, S/4, S/4) bool where they are known.
    """
    out = np.zeros((len(indices), crop_size, crop_size, 3), np.uint8)
    kps = np.zeros((len(indices), samples.keypoints.shape[1], 2), np.float32)
    if coordinates and samples.coords is None:
        raise ValueError("coordinates: the samples were loaded without coordinates=True")
    cells = crop_size // LiteFPN.stride
    xyz = np.zeros((len(indices), cells, cells, 3), np.float32)
    seen = np.zeros((len(indices), cells, cells), bool)
    # crop px -> map cell (cell u's centre is crop px 4u + 1.5), after label cell -> context px
    f, shift = 1 / LiteFPN.stride, -(LiteFPN.stride - 1) / 2 / LiteFPN.stride
    to_cells = np.array([[f, 0.0, shift], [0.0, f, shift], [0.0, 0.0, 1.0]])
    from_labels = np.linalg.inv(_context_to_coord_grid())
    for n, i in enumerate(indices):
        side = float(samples.box_sides[i])
        cx, cy = (float(v) for v in samples.box_centres[i])
        if rng is not None:
            cx += rng.uniform(-jitter.shift, jitter.shift) * side
            cy += rng.uniform(-jitter.shift, jitter.shift) * side
            side *= np.exp(rng.uniform(*np.log(jitter.scale)))
        crop = crop_around_box((cx - side / 2, cy - side / 2, side, side), crop_size, padding)
        # Context crop and crop differ in scale by about padding / CONTEXT_PADDING: no aliasing to fear.
        image = cv2.warpAffine(
            samples.images[i], crop.matrix(), (crop_size, crop_size), flags=cv2.INTER_LINEAR
        )
        points = crop.to_crop(samples.keypoints[i])
        if rng is not None:
            image, points = augment(image, points, rng, jitter.augment)
        out[n], kps[n] = image, points
        if coordinates:
            M = (to_cells @ np.vstack([crop.matrix(), [0.0, 0.0, 1.0]]) @ from_labels)[:2]
            # Bilinear inside the surface; at its edge the nearest label, as coordinates of the
            # surface and of "nothing" (zeros) must not blend.
            mask = samples.coord_masks[i]
            seen[n] = cv2.warpAffine(mask.astype(np.uint8), M, (cells, cells), flags=cv2.INTER_NEAREST) > 0
            labels = samples.coords[i].astype(np.float32)
            coverage = cv2.warpAffine(mask.astype(np.float32), M, (cells, cells), flags=cv2.INTER_LINEAR)
            inside = coverage > 0.999
            xyz[n] = np.where(
                inside[..., None],
                cv2.warpAffine(labels, M, (cells, cells), flags=cv2.INTER_LINEAR),
                cv2.warpAffine(labels, M, (cells, cells), flags=cv2.INTER_NEAREST),
            )
    crops = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
    batch = crops, torch.from_numpy(kps), torch.from_numpy(samples.classes[indices])
    if not coordinates:
        return batch
    return (*batch, torch.from_numpy(xyz).permute(0, 3, 1, 2), torch.from_numpy(seen))
