"""Letterboxing: an image resized by one scale to fit a network input, zero padded at the bottom/right.

The whole-frame networks (HRPose and the detector) see images this way; :func:`scale_points` maps
pixel coordinates through the resize (OpenCV's convention: integers are pixel centres).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Letterbox", "letterbox", "letterbox_scale", "scale_points"]


@dataclass(frozen=True)
class Letterbox:
    """How an image was mapped to the network input: one ``scale``, content at the top-left, zero padding."""

    scale: float
    width: int  # network input size
    height: int


def scale_points(points: np.ndarray, scale: float) -> np.ndarray:
    """Return (..., 2) pixel coordinates after resizing the image by ``scale`` (pixel centres stay)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


def letterbox_scale(image_width: int, image_height: int, width: int, height: int) -> float:
    """Return the largest scale that fits an image of that size into ``width`` x ``height``."""
    return min(width / image_width, height / image_height)


def letterbox(
    image: np.ndarray, width: int, height: int, scale: float | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Return (image (height, width, 3) uint8, Letterbox): ``image`` resized by one scale, zero padded.

    ``scale`` defaults to the largest that fits the image into ``width`` x ``height``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    if scale is None:
        scale = letterbox_scale(w, h, width, height)
    new_w, new_h = min(int(round(w * scale)), width), min(int(round(h * scale)), height)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = (
        image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    )
    out = np.zeros((height, width, 3), np.uint8)
    out[:new_h, :new_w] = resized[:height, :width]
    return out, Letterbox(scale=float(scale), width=width, height=height)
