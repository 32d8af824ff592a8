"""Training samples from a BOP split: image -> (scaled, augmented, cropped) input + encoded targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hrpose_ros.bop_reader import BopFrame
from hrpose_ros.codec import KeypointCodec
from hrpose_ros.data.augment import augment
from hrpose_ros.geometry import keypoints_3d, project
from hrpose_ros.letterbox import letterbox, scale_points
from hrpose_ros.types import ObjectModel

__all__ = ["KeypointDataset", "canonical_pose", "frame_keypoints", "random_crop"]


def canonical_pose(R: np.ndarray, t: np.ndarray, symmetries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (R (3, 3), t (3,)) of the symmetric equivalent pose whose rotation is closest to the identity.

    Not in the paper (its symmetric LINEMOD objects are two of thirteen): for a symmetric object
    the poses (R S_R, R S_t + t) look the same, so labelling box corners from the raw pose would
    give the network contradicting targets for one appearance. Choosing the equivalent closest
    to the camera's axes makes the labels a function of the view (as in PVNet/GDR-Net practice);
    ADD-S then scores the estimate. ``symmetries`` (S, 4, 4), identity included, metres.
    """
    if len(symmetries) < 2:
        return R, t
    rotations = R @ symmetries[:, :3, :3]  # (S, 3, 3)
    best = int(np.argmax(np.trace(rotations, axis1=1, axis2=2)))  # max trace = smallest angle to I
    return rotations[best], R @ symmetries[best, :3, 3] + t


def frame_keypoints(frame: BopFrame, objects: Sequence[ObjectModel],
                    min_visib_fract: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Return (keypoints (N, 9, 2) px, class_indices (N,)) of the frame's annotated instances.

    Classes are positions in ``objects``; instances of other objects, with a keypoint at or
    behind the camera plane, or less than ``min_visib_fract`` visible (when the split has
    scene_gt_info; the BOP evaluation skips them too) are left out. Symmetric objects use
    :func:`canonical_pose`.
    """
    index = {o.obj_id: i for i, o in enumerate(objects)}
    model_keypoints = [keypoints_3d(o.points) for o in objects]
    keypoints, classes = [], []
    for inst in frame.instances:
        c = index.get(inst.obj_id)
        if c is None or (inst.info is not None and inst.info.visib_fract < min_visib_fract):
            continue
        R, t = canonical_pose(inst.R, inst.t, objects[c].symmetries)
        cam_z = (model_keypoints[c] @ R.T + t)[:, 2]
        if np.any(cam_z <= 1e-3):
            continue
        keypoints.append(project(model_keypoints[c], R, t, frame.camera.K, frame.camera.dist))
        classes.append(c)
    return np.asarray(keypoints, np.float64).reshape(-1, 9, 2), np.asarray(classes, np.int64)


def random_crop(image: np.ndarray, keypoints: np.ndarray, size: int, rng: np.random.Generator,
                weights: np.ndarray | None = None):
    """Return (crop (size, size, 3), keypoints shifted into it): a square around a random instance's centroid.

    The instance is drawn with probability proportional to ``weights`` (N,), or uniformly when
    None. The centroid lands uniformly in the central 60 % of the crop; outside the image is zero.
    With no instance the crop is anywhere in the image.
    """
    h, w = image.shape[:2]
    if len(keypoints):
        if weights is None:  # the draw of every run so far, kept so they repeat
            chosen = int(rng.integers(len(keypoints)))
        else:
            chosen = int(rng.choice(len(keypoints), p=np.asarray(weights, np.float64) / np.sum(weights)))
        cx, cy = keypoints[chosen, -1]
        x0 = int(round(cx - rng.uniform(0.2, 0.8) * size))
        y0 = int(round(cy - rng.uniform(0.2, 0.8) * size))
    else:
        x0 = int(rng.integers(0, max(w - size, 0) + 1))
        y0 = int(rng.integers(0, max(h - size, 0) + 1))
    crop = np.zeros((size, size, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if sx0 < sx1 and sy0 < sy1:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return crop, keypoints - (x0, y0)


class KeypointDataset(torch.utils.data.Dataset):
    """(image (3, H, W) float in [0, 1], belief_maps (C*K, H/4, W/4), vector_fields) per BOP frame.

    Each frame is resized by ``image_scale``; with ``crop_size`` 0 it is letterboxed to
    ``input_size`` (W, H) as the pipeline does, else a random square crop around an object is
    taken. ``augment`` applies the data module's augmentation (blur, colour jitter, noise,
    rotation +-30 deg; paper Sec. IV.1) with keypoints moved consistently. ``class_weights``
    (one per object, ``TrainConfig.class_weights``) makes crops centre on some objects more often.
    ``scale_range`` (low, high; crops only) multiplies ``image_scale`` by a factor drawn
    log-uniformly from [low, high] per sample, so the network sees each object at more sizes.
    """

    def __init__(
        self,
        frames: Sequence[BopFrame],
        objects: Sequence[ObjectModel],
        codec: KeypointCodec,
        image_scale: float,
        input_size: tuple[int, int],
        crop_size: int = 0,
        augment: bool = False,
        seed: int = 0,
        class_weights: np.ndarray | None = None,
        scale_range: tuple[float, float] | None = None,
    ):
        if not frames:
            raise ValueError("frames: expected at least one training frame, got none")
        self.frames = list(frames)
        self.objects = list(objects)
        self.codec = codec
        self.image_scale = float(image_scale)
        self.input_size = input_size
        self.crop_size = int(crop_size)
        self.augment = augment
        self.seed = seed
        self.class_weights = None if class_weights is None else np.asarray(class_weights, np.float64)
        if self.class_weights is not None and self.class_weights.shape != (len(self.objects),):
            raise ValueError(
                f"class_weights: expected one weight per object ({len(self.objects)}), "
                f"got shape {self.class_weights.shape}"
            )
        if scale_range is not None:
            low, high = (float(v) for v in scale_range)
            if not (crop_size and 0 < low <= high):
                raise ValueError(
                    f"scale_range: expected 0 < low <= high and crop_size > 0, got {scale_range} and "
                    f"crop_size {crop_size}"
                )
            scale_range = (low, high)
        self.scale_range = scale_range
        self._calls = 0

    def __len__(self) -> int:
        return len(self.frames)

    def _rng(self, index: int) -> np.random.Generator:
        # A fresh stream per call (seed, worker, call count, index): epochs differ, runs repeat.
        info = torch.utils.data.get_worker_info()
        self._calls += 1
        return np.random.default_rng((self.seed, info.id if info else 0, self._calls, index))

    def resized(self, frame: BopFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (image, keypoints (N, K, 2) in its pixels, classes) of ``frame`` before augmentation.

        Crops: the whole frame resized by ``image_scale`` (times the ``scale_range`` factor);
        else letterboxed to ``input_size`` at ``image_scale``.
        """
        keypoints, classes = frame_keypoints(frame, self.objects)
        image = frame.read_rgb()
        scale = self.image_scale
        if self.crop_size:
            if self.scale_range is not None:  # drawn only then: runs without it repeat exactly
                scale *= float(np.exp(rng.uniform(*np.log(self.scale_range))))
            image, _ = letterbox(
                image,
                int(round(image.shape[1] * scale)),
                int(round(image.shape[0] * scale)),
                scale,
            )
        else:
            image, _ = letterbox(image, *self.input_size, scale)
        return image, scale_points(keypoints, scale), classes

    def __getitem__(self, index: int):
        frame = self.frames[index]
        rng = self._rng(index)
        image, keypoints, classes = self.resized(frame, rng)
        if self.augment:
            image, keypoints = augment(image, keypoints, rng)
        if self.crop_size:
            weights = None if self.class_weights is None else self.class_weights[classes]
            image, keypoints = random_crop(image, keypoints, self.crop_size, rng, weights)
        belief, vectors = self.codec.encode(keypoints, classes, image.shape[0], image.shape[1])
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return tensor, torch.from_numpy(belief), torch.from_numpy(vectors)
