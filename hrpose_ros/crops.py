"""Square, scale-normalised crops around detected boxes, and the mapping of points in and out of them.

A crop fixes an object's apparent size, so the keypoint network learns one scale instead of all
the sizes an object takes in a frame. Pixel coordinates follow OpenCV: integers are pixel
centres. A crop of ``size`` pixels covering the image square [x0 - 0.5, x0 + side - 0.5] maps an
image point p to ``(p - x0 + 0.5) * size / side - 0.5``: an affine map, used both by
cv2.warpAffine for the pixels and by :meth:`Crop.to_crop`/:meth:`Crop.to_image` for keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Crop", "crop_around_box", "crop_images"]


@dataclass(frozen=True)
class Crop:
    """A square region of an image, [x0 - 0.5, x0 + side - 0.5] x [y0 - 0.5, y0 + side - 0.5] in image
    pixels (the module docstring's convention), resampled to ``size`` x ``size`` crop pixels."""

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return self.size / self.side

    def matrix(self) -> np.ndarray:
        """Return the 2x3 affine matrix image px -> crop px (for cv2.warpAffine)."""
        s = self.scale
        return np.array([[s, 0.0, (0.5 - self.x0) * s - 0.5], [0.0, s, (0.5 - self.y0) * s - 0.5]])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Return (..., 2) image pixel coordinates as crop pixel coordinates."""
        p = np.asarray(points, dtype=np.float64)
        return (p - [self.x0, self.y0] + 0.5) * self.scale - 0.5

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Return (..., 2) crop pixel coordinates as image pixel coordinates (inverse of :meth:`to_crop`)."""
        p = np.asarray(points, dtype=np.float64)
        return (p + 0.5) / self.scale - 0.5 + [self.x0, self.y0]


def crop_around_box(box_xywh, size: int, padding: float = 1.5) -> Crop:
    """Return the square Crop centred on ``box_xywh`` (x, y, w, h px), side ``padding`` x the longer side.

    The padding keeps the box corners of the object's 3D bounding box inside the crop (they
    project outside the silhouette) and leaves room for a detector's box error.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    if not (w > 0 and h > 0 and np.isfinite([x, y, w, h]).all()):
        raise ValueError(f"box_xywh: expected finite x, y and positive w, h, got {(x, y, w, h)}")
    if size < 8 or padding <= 0:
        raise ValueError(f"size/padding: expected size >= 8 and padding > 0, got {size}/{padding}")
    side = max(w, h) * padding
    cx, cy = x + w / 2, y + h / 2
    # The crop covers [x0 - 0.5, x0 + side - 0.5]: centred on cx when x0 = cx - side / 2 + 0.5.
    return Crop(x0=cx - side / 2 + 0.5, y0=cy - side / 2 + 0.5, side=side, size=int(size))


def crop_images(image: np.ndarray, crops: list[Crop]) -> np.ndarray:
    """Return (N, size, size, 3) uint8: ``image`` (H, W, 3) resampled into each crop (zeros outside it).

    Downscaling by more than 2x is area-averaged first (pyrDown), so small crops of large
    objects do not alias.
    """
    if not crops:
        return np.zeros((0, 0, 0, 3), np.uint8)
    size = crops[0].size
    out = np.zeros((len(crops), size, size, 3), np.uint8)
    for i, crop in enumerate(crops):
        if crop.size != size:
            raise ValueError(f"crops: expected one size per batch, got {crop.size} and {size}")
        source, matrix = image, crop.matrix()
        while matrix[0, 0] < 0.5 and min(source.shape[:2]) > 16:
            source = cv2.pyrDown(source)  # image px -> half-size px: p' = (p + 0.5) / 2 - 0.5
            matrix = matrix @ np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
        out[i] = cv2.warpAffine(
            source, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
    return out
