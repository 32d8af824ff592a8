"""Small frozen dataclasses for what travels between the pipeline's stages, and their input checks.

Units follow REP 103 everywhere inside the package: metres and radians. Millimetres
appear only at the BOP-format boundary (``hrpose_ros.bop_format``). Header stamps are integer
nanoseconds inside the package (:func:`stamp_to_ns`, :func:`ns_to_stamp`). Nothing here
imports ROS or torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CameraModel",
    "Detection",
    "ObjectModel",
    "ObjectPose",
    "checked_array",
    "checked_device",
    "checked_image",
    "ns_to_stamp",
    "stamp_to_ns",
]

_NS_PER_SEC = 1_000_000_000
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def checked_array(value, name: str, shape: tuple, allow_batch: bool = False) -> np.ndarray:
    """Return ``value`` as a finite float64 array of ``shape`` (-1 = any length); ValueError naming ``name``.

    With ``allow_batch`` leading batch dimensions are accepted: ``shape`` is then the trailing
    shape. The one input checker of the core (types, geometry).
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        got = type(value).__name__
        raise ValueError(f"{name}: expected a numeric array of shape {shape}, got {got}") from exc
    core = array.shape[array.ndim - len(shape):] if array.ndim >= len(shape) else None
    if (
        core is None
        or (not allow_batch and array.ndim != len(shape))
        or any(s not in (-1, a) for s, a in zip(shape, core))
    ):
        expected = f"(..., {', '.join(map(str, shape))})" if allow_batch else str(shape)
        raise ValueError(f"{name}: expected shape {expected} (-1 = any), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def checked_device(device, name: str = "device", allow_auto: bool = False) -> str:
    """Return ``device`` if it is "cpu", "cuda" or "cuda:N" ("auto" too with ``allow_auto``).

    ValueError naming ``name`` otherwise. The one device-name check, torch-free so that
    configuration can validate a device without importing torch.
    """
    if isinstance(device, str) and (_DEVICE.fullmatch(device) or (allow_auto and device == "auto")):
        return device
    expected = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
    raise ValueError(f"{name}: expected {expected}, got {device!r}")


def stamp_to_ns(stamp) -> int:
    """Return a ``builtin_interfaces/Time`` ``stamp`` (anything with ``sec``, ``nanosec``) in nanoseconds."""
    return int(stamp.sec) * _NS_PER_SEC + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """Return (sec, nanosec) of ``stamp_ns`` nanoseconds: the fields of a ``builtin_interfaces/Time``."""
    return divmod(int(stamp_ns), _NS_PER_SEC)


def _frozen_array(value, name: str, shape: tuple) -> np.ndarray:
    """Return a read-only copy of :func:`checked_array` (dataclass fields must not change under the user)."""
    array = np.array(checked_array(value, name, shape))
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera: 3x3 intrinsics ``K`` in pixels, image size, OpenCV distortion.

    ``dist`` holds OpenCV's coefficients (k1, k2, p1, p2[, k3, ...]); empty or all
    zeros means a rectified image (then ``K`` is the projection matrix P's left 3x3).
    """

    K: np.ndarray
    width: int
    height: int
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        K = _frozen_array(self.K, "K", (3, 3))
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0 or abs(K[0, 1]) > 1e-6 * K[0, 0]:
            raise ValueError(f"K: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width/height: must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "dist", _frozen_array(self.dist, "dist", (-1,)))

    @property
    def is_rectified(self) -> bool:
        """True when there is no lens distortion to undo."""
        return not np.any(self.dist)

    def scaled(self, width: int, height: int) -> CameraModel:
        """Return the camera for the same view resized to ``width`` x ``height`` pixels."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5  # pixel centres, not corners, keep their place
        K[1, 1] *= sy
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(K=K, width=width, height=height, dist=self.dist)


@dataclass(frozen=True)
class ObjectModel:
    """A known object: BOP ``obj_id``, name, surface points and symmetries, in metres.

    ``points`` (N, 3) are model vertices (or a surface sample) used by PnP keypoints
    and the ADD metrics; ``symmetries`` (S, 4, 4) are the BOP symmetry transformations
    (identity included, translation in metres); ``diameter`` is the largest distance
    between two model points.
    """

    obj_id: int
    name: str
    points: np.ndarray
    diameter: float
    symmetries: np.ndarray = field(default_factory=lambda: np.eye(4)[None])
    mesh_path: str = ""

    def __post_init__(self):
        points = _frozen_array(self.points, f"{self.name}.points", (-1, 3))
        symmetries = _frozen_array(self.symmetries, f"{self.name}.symmetries", (-1, 4, 4))
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "symmetries", symmetries)
        if len(self.points) < 4:
            raise ValueError(f"{self.name}.points: need at least 4 points, got {len(self.points)}")
        if not (self.diameter > 0 and np.isfinite(self.diameter)):
            raise ValueError(f"{self.name}.diameter: must be positive, in metres; got {self.diameter}")

    @property
    def is_symmetric(self) -> bool:
        """True when the object has a symmetry besides the identity (use ADD-S)."""
        return len(self.symmetries) > 1


@dataclass(frozen=True)
class Detection:
    """A 2D detection: object id and name, score in [0, 1], box (x, y, w, h) in pixels."""

    obj_id: int
    class_name: str
    score: float
    box_xywh: np.ndarray


@dataclass(frozen=True)
class ObjectPose:
    """One estimated object instance: the model frame in the camera frame.

    ``R`` (3, 3) and ``t`` (3,) metres map model points into the camera optical frame
    (x_cam = R @ x_model + t). ``keypoints_2d`` (M, 2) are the found keypoints in
    pixels of the input image and ``keypoint_ids`` (M,) says which of the model's
    keypoints each one is (0-7 box corners, 8 centroid). ``reprojection_error`` is the
    RMS PnP reprojection error in pixels. ``refined`` says the pose was moved onto the aligned
    depth image (:mod:`hrpose_ros.depth_refine`); ``depth_residual`` is the pose's fit to that
    depth (metres, NaN when no depth was used).
    """

    class_name: str
    obj_id: int
    instance_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    keypoints_2d: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    keypoint_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reprojection_error: float = 0.0
    refined: bool = False
    depth_residual: float = float("nan")


def checked_image(image_rgb, camera: CameraModel) -> np.ndarray:
    """Return ``image_rgb`` as an (H, W, 3) uint8 array the size ``camera`` says; ValueError otherwise."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image_rgb: expected (H, W, 3) uint8, got {image_rgb.shape} {image_rgb.dtype}")
    if (camera.width, camera.height) != (image_rgb.shape[1], image_rgb.shape[0]):
        raise ValueError(
            f"camera: size {camera.width}x{camera.height} differs from the image's "
            f"{image_rgb.shape[1]}x{image_rgb.shape[0]}"
        )
    return image_rgb
