"""Drawing: box edges, axes colours and the contact sheet layout."""

from __future__ import annotations

import numpy as np
import pytest

from hrpose_ros.geometry import box_corners_3d, project
from hrpose_ros.visualization import BOX_EDGES, contact_sheet, draw_axes, draw_box_3d, draw_label, draw_pose

K = np.array([[200.0, 0.0, 99.5], [0.0, 200.0, 79.5], [0.0, 0.0, 1.0]])


def test_box_edges_are_the_twelve_cube_edges():
    assert len(BOX_EDGES) == 12
    assert np.bincount(np.array(BOX_EDGES).ravel()).tolist() == [3] * 8
    corners = box_corners_3d(np.array([[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]))
    for i, j in BOX_EDGES:  # an edge joins corners differing along exactly one axis, by the full side
        assert np.count_nonzero(corners[i] != corners[j]) == 1


def test_draw_box_3d_marks_each_edge_midpoint():
    image = np.zeros((160, 200, 3), np.uint8)
    corners = box_corners_3d(np.array([[-0.02, -0.02, -0.02], [0.02, 0.02, 0.02]]))
    corners_2d = project(corners, np.eye(3), np.array([0.0, 0.0, 0.3]), K)
    draw_box_3d(image, corners_2d, (0, 255, 0), thickness=1)
    for i, j in BOX_EDGES:
        x, y = np.round((corners_2d[i] + corners_2d[j]) / 2).astype(int)
        assert image[y - 1:y + 2, x - 1:x + 2, 1].max() > 100, (i, j)
    assert image[..., 0].max() == 0 and image[..., 2].max() == 0
    with pytest.raises(ValueError, match=r"corners_2d: expected \(8, 2\)"):
        draw_box_3d(image, corners_2d[:4])


def test_draw_axes_colours_x_red_y_green_z_blue():
    image = np.zeros((160, 200, 3), np.uint8)
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # model z points up in the image (-y)
    draw_axes(image, R, np.array([0.0, 0.0, 0.5]), K, length=0.1, thickness=1)
    # x ends 40 px right of (99.5, 79.5), z 40 px above it (anti-aliased lines: check the hue).
    red, blue = image[79:81, 125:130].reshape(-1, 3), image[45:50, 99:101].reshape(-1, 3)
    assert red[:, 0].max() > 200 and red[:, 1:].max() == 0
    assert blue[:, 2].max() > 200 and blue[:, :2].max() == 0


def test_draw_pose_label_and_behind_camera_is_skipped():
    points = np.array([[-0.03, -0.02, -0.01], [0.03, 0.02, 0.01]])
    image = np.zeros((160, 200, 3), np.uint8)
    draw_pose(image, points, np.eye(3), np.array([0.0, 0.0, -0.5]), K, label="duck")
    assert image.max() == 0
    draw_pose(image, points, np.eye(3), np.array([0.0, 0.0, 0.5]), K, label="duck")
    assert image.max() > 0
    draw_label(image, "x", (-50, 500))  # clamped into the image, no exception
    with pytest.raises(ValueError, match="image: expected an"):
        draw_label(np.zeros((5, 5), np.uint8), "x", (0, 0))


def test_contact_sheet_tiles_in_rows():
    images = [np.full((48, 64, 3), v, np.uint8) for v in (10, 20, 30, 40, 50)]
    sheet = contact_sheet(images, columns=2, tile_width=32)
    assert sheet.shape == (3 * 24, 64, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 40, 0] == 20 and sheet[30, 0, 0] == 30 and sheet[50, 0, 0] == 50
    assert sheet[50, 40].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="images: expected at least one"):
        contact_sheet([])
