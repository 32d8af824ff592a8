"""Renderer: silhouettes match the projected meshes, depth is metric, occlusion gives visible masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hrpose_ros import bop_models
from hrpose_ros.data.objects import load_default_objects
from hrpose_ros.geometry import project
from hrpose_ros.render import Renderer

WIDTH, HEIGHT = 320, 240
K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def objects():
    return load_default_objects()


@pytest.fixture(scope="module")
def renderer(objects):
    with Renderer(objects, WIDTH, HEIGHT) as renderer:
        yield renderer


def _projected_silhouette(obj, R, t) -> np.ndarray:
    """Return the (H, W) bool union of the model's projected triangles (filled by OpenCV)."""
    mesh = bop_models.read_ply_model(obj.mesh_path)
    uv = project(np.asarray(mesh.vertices), R, t, K)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    shift = 4  # sub-pixel vertex positions: OpenCV fixed point with 4 fractional bits
    triangles = np.round(uv[mesh.faces] * (1 << shift)).astype(np.int32)
    for triangle in triangles:  # one at a time: fillPoly would cancel overlapping triangles out
        cv2.fillConvexPoly(mask, triangle, 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def test_uses_egl_here(renderer):
    assert renderer.backend == "egl"


@pytest.mark.parametrize("index", range(8))
def test_mask_matches_projected_mesh_and_depth_is_metric(renderer, objects, index):
    obj = objects[index]
    R = Rotation.from_euler("xyz", [25 + 40 * index, -30 + 15 * index, 10 * index], degrees=True).as_matrix()
    t = np.array([0.01 * (index - 4), 0.005 * index - 0.02, 0.45])
    out = renderer.render(K, [(obj.obj_id, R, t)])
    visib, full = out.masks_visib[0], out.masks_full[0]
    silhouette = _projected_silhouette(obj, R, t)
    assert _iou(visib, silhouette) >= 0.9, obj.name
    assert np.array_equal(visib, full)  # alone: nothing hides it
    assert np.array_equal(out.depth > 0, visib)
    assert out.rgb[visib].mean() > 10 and out.rgb[~visib].max() == 0
    u, v = np.round(project(np.zeros((1, 3)), R, t, K)[0]).astype(int)
    extent = float(np.linalg.norm(obj.points, axis=1).max())  # farthest surface point from the centre
    if visib[v, u]:  # a torus or mug may have a hole where its centre projects
        assert abs(out.depth[v, u] - t[2]) <= extent
    assert out.depth[visib].min() >= t[2] - obj.diameter / 2 - 1e-6
    assert out.depth[visib].max() <= t[2] + obj.diameter / 2 + 1e-6


def test_two_renderers_in_one_process_each_draw_their_own_image(renderer, objects):
    obj = objects[1]
    R, t = Rotation.from_euler("xy", [30, 20], degrees=True).as_matrix(), np.array([0.0, 0.0, 0.4])
    before = renderer.render(K, [(obj.obj_id, R, t)]).masks_visib[0]
    with Renderer([obj], 64, 64) as small:  # a second EGL context, made after the first
        K_small = np.array([[80.0, 0.0, 31.5], [0.0, 80.0, 31.5], [0.0, 0.0, 1.0]])
        assert small.render(K_small, [(obj.obj_id, R, t)]).masks_visib[0].sum() > 100
        assert np.array_equal(renderer.render(K, [(obj.obj_id, R, t)]).masks_visib[0], before)
    assert np.array_equal(renderer.render(K, [(obj.obj_id, R, t)]).masks_visib[0], before)
    assert before.sum() > 1000


def test_depth_of_a_face_seen_head_on_is_exact(renderer, objects):
    jenga = next(o for o in objects if o.name == "jenga")  # 7.5 x 2.5 x 1.5 cm block, z = thinnest side
    t = np.array([0.0, 0.0, 0.4])
    depth = renderer.render_depth(jenga.obj_id, np.eye(3), t, K)
    # The face z = -7.5 mm faces the camera: every pixel well inside it is at 0.4 - 0.0075 m.
    inner = depth[114:126, 135:185]
    assert np.allclose(inner, 0.3925, atol=1e-5)
    # Its image spans x = +-37.5 mm at 0.3925 m: 300 * 0.0375 / 0.3925 = 28.66 px each side of 159.5.
    columns = np.nonzero(depth[120] > 0)[0]
    assert columns.min() == pytest.approx(159.5 - 28.66, abs=1.0)
    assert columns.max() == pytest.approx(159.5 + 28.66, abs=1.0)


def test_occlusion_gives_visible_and_full_masks(renderer, objects):
    can, mug = objects[6], objects[4]
    R = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    poses = [(mug.obj_id, np.eye(3), np.array([0.0, 0.0, 0.6])), (can.obj_id, R, np.array([0.03, 0.0, 0.4]))]
    out = renderer.render(K, poses)
    mug_visib, can_visib = out.masks_visib
    mug_full, can_full = out.masks_full
    assert not np.any(mug_visib & can_visib)
    assert np.array_equal(can_visib, can_full)  # in front
    assert np.all(mug_full >= mug_visib)
    hidden = mug_full & ~mug_visib
    assert hidden.sum() > 0.2 * mug_full.sum()
    assert np.all(can_visib[hidden])  # the mug is hidden only where the can is
    assert np.all(out.depth[can_visib] < 0.5) and np.all(out.depth[mug_visib] > 0.5)
    alone = renderer.render(K, poses[:1]).masks_visib[0]
    assert np.array_equal(alone, mug_full)


def test_bad_poses_are_named(renderer):
    with pytest.raises(ValueError, match=r"poses\[0\]: obj_id 99 is not one of"):
        renderer.render(K, [(99, np.eye(3), np.zeros(3))])
    with pytest.raises(ValueError, match=r"poses\[1\] R"):
        renderer.render(K, [(1, np.eye(3), np.ones(3)), (1, 2 * np.eye(3), np.ones(3))])


def test_tiny_renderer_fallback_agrees_with_egl(renderer, objects):
    R = Rotation.from_euler("xyz", [40, 20, 10], degrees=True).as_matrix()
    poses = [(1, R, np.array([-0.04, 0.0, 0.5])), (2, R.T, np.array([0.05, 0.01, 0.55]))]
    with Renderer(objects[:2], WIDTH, HEIGHT, backend="tiny") as tiny:
        slow = tiny.render(K, poses)
    fast = renderer.render(K, poses)
    for a, b in zip(slow.masks_visib + slow.masks_full, fast.masks_visib + fast.masks_full):
        assert _iou(a, b) > 0.95
    both = (slow.depth > 0) & (fast.depth > 0)
    assert np.median(np.abs(slow.depth[both] - fast.depth[both])) < 1e-3
