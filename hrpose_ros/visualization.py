"""OpenCV drawing of poses on images: 3D boxes, axes, labels, and contact sheets.

Images are RGB uint8 (H, W, 3) as everywhere in the package; colours are RGB tuples.
Drawing functions draw in place and return the image so calls can be chained.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hrpose_ros.geometry import box_corners_3d, project

__all__ = ["BOX_EDGES", "colour_for", "contact_sheet", "draw_axes", "draw_box_3d", "draw_label", "draw_pose"]

BOX_EDGES = tuple((i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1)
"""The 12 edges of geometry.box_corners_3d's corners: pairs whose indices differ in one bit."""

_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def colour_for(index: int) -> tuple:
    """Return a distinct RGB colour for an object id or class index (12 colours, cycling)."""
    return _PALETTE[int(index) % len(_PALETTE)]


def _image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 array, got "
                         f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}")
    return image


def _point(xy) -> tuple:
    return (int(round(float(xy[0]))), int(round(float(xy[1]))))


def draw_box_3d(image: np.ndarray, corners_2d, colour=(0, 255, 0), thickness: int = 2) -> np.ndarray:
    """Return ``image`` with the 12 edges of a projected 3D box drawn; ``corners_2d`` (8, 2) px.

    Corner order as geometry.box_corners_3d; the face x = x_max (corners 4-7) gets a cross so
    the box's orientation shows.
    """
    image = _image(image)
    corners = np.asarray(corners_2d, dtype=np.float64)
    if corners.shape != (8, 2):
        raise ValueError(f"corners_2d: expected (8, 2) pixels, got shape {corners.shape}")
    if not np.all(np.isfinite(corners)) or np.abs(corners).max() > 1e5:
        return image  # behind the camera or at infinity: nothing sensible to draw
    for i, j in BOX_EDGES:
        cv2.line(image, _point(corners[i]), _point(corners[j]), colour, thickness, cv2.LINE_AA)
    for i, j in ((4, 7), (5, 6)):
        cv2.line(image, _point(corners[i]), _point(corners[j]), colour, max(1, thickness // 2), cv2.LINE_AA)
    return image


def draw_axes(image: np.ndarray, R, t, K, length: float = 0.05, thickness: int = 2, dist=None) -> np.ndarray:
    """Return ``image`` with the model's x (red), y (green), z (blue) axes of ``length`` metres drawn."""
    image = _image(image)
    points = np.vstack([np.zeros(3), np.eye(3) * float(length)])
    if (points @ np.asarray(R, dtype=np.float64).T + np.asarray(t, dtype=np.float64))[:, 2].min() <= 1e-6:
        return image
    uv = project(points, R, t, K, dist)
    for axis, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        cv2.line(image, _point(uv[0]), _point(uv[axis + 1]), colour, thickness, cv2.LINE_AA)
    return image


def draw_label(image: np.ndarray, text: str, origin, colour=(255, 255, 255), scale: float = 0.45,
               background=(0, 0, 0)) -> np.ndarray:
    """Return ``image`` with ``text`` written at ``origin`` (x, y) px (top left) on a filled background."""
    image = _image(image)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = _point(origin)
    x = min(max(x, 0), max(image.shape[1] - width - 2, 0))
    y = min(max(y, 0), max(image.shape[0] - height - baseline - 2, 0))
    cv2.rectangle(image, (x, y), (x + width + 2, y + height + baseline + 2), background, cv2.FILLED)
    cv2.putText(image, text, (x + 1, y + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return image


def draw_pose(image: np.ndarray, points, R, t, K, colour=(0, 255, 0), label: str = "",
              axes_length: float | None = None, thickness: int = 2, dist=None) -> np.ndarray:
    """Return ``image`` with one object's pose drawn: its (N, 3) model ``points``' 3D box, axes, label."""
    corners = box_corners_3d(points)
    if (corners @ np.asarray(R, dtype=np.float64).T + np.asarray(t, dtype=np.float64))[:, 2].min() <= 1e-6:
        return _image(image)
    corners_2d = project(corners, R, t, K, dist)
    draw_box_3d(image, corners_2d, colour, thickness)
    if axes_length is None:
        axes_length = 0.5 * float(np.min(corners.max(axis=0) - corners.min(axis=0)))
    if axes_length > 0:
        draw_axes(image, R, t, K, axes_length, thickness, dist)
    if label:
        draw_label(image, label, corners_2d.min(axis=0) - (0, 18), colour)
    return image


def contact_sheet(images: Sequence[np.ndarray], columns: int = 4, tile_width: int = 320,
                  labels: Sequence[str] | None = None) -> np.ndarray:
    """Return one (rows * h, columns * tile_width, 3) uint8 image tiling ``images`` (resized, in order)."""
    if not images:
        raise ValueError("images: expected at least one image for the contact sheet")
    if columns < 1 or tile_width < 8:
        raise ValueError(f"columns/tile_width: expected >= 1 and >= 8, got {columns}, {tile_width}")
    first = _image(images[0])
    tile_height = max(1, round(first.shape[0] * tile_width / first.shape[1]))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * tile_height, columns * tile_width, 3), np.uint8)
    for index, image in enumerate(images):
        tile = cv2.resize(_image(image), (tile_width, tile_height), interpolation=cv2.INTER_AREA)
        if labels is not None and index < len(labels) and labels[index]:
            draw_label(tile, labels[index], (2, 2))
        row, column = divmod(index, columns)
        sheet[row * tile_height:(row + 1) * tile_height, column * tile_width:(column + 1) * tile_width] = tile
    return sheet
