"""Pose metrics against hand-worked values, and VSD on ray-cast depth images."""

import math

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from hrpose_ros import metrics
from hrpose_ros.geometry import box_corners_3d, symmetry_transformations
from hrpose_ros.metrics import (
    add_error,
    add_or_adds_error,
    adds_error,
    average_recall,
    depth_to_distance,
    iou_2d,
    match_estimates,
    mspd_error,
    mssd_error,
    proj2d_error,
    recall,
    recall_curve,
    rotation_error_deg,
    translation_error,
    vsd_error,
)
from hrpose_ros.types import ObjectModel, ObjectPose

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
A, B, C = 0.03, 0.04, 0.02  # half extents of a 6 x 8 x 4 cm box
BOX = box_corners_3d(np.array([[-A, -B, -C], [A, B, C]]))
HALF_TURN_Z = np.diag([-1.0, -1.0, 1.0])
T = np.array([0.0, 0.0, 0.5])


def test_add_of_pure_translation_is_its_norm():
    offset = np.array([0.003, -0.004, 0.012])  # |offset| = 13 mm
    assert add_error(np.eye(3), T + offset, np.eye(3), T, BOX) == pytest.approx(0.013, abs=1e-15)
    assert translation_error(T + offset, T) == pytest.approx(0.013, abs=1e-15)


def test_adds_of_symmetric_turn_is_zero_while_add_is_not():
    # Turning the box half-way about z maps every corner onto another corner.
    assert adds_error(HALF_TURN_Z, T, np.eye(3), T, BOX) == pytest.approx(0.0, abs=1e-15)
    # Each corner moves from (x, y) to (-x, -y): 2 sqrt(A^2 + B^2) = 0.1 m.
    assert add_error(HALF_TURN_Z, T, np.eye(3), T, BOX) == pytest.approx(0.1, abs=1e-15)
    symmetric = ObjectModel(1, "box", BOX, diameter=0.1077, symmetries=np.stack([np.eye(4), _h(HALF_TURN_Z)]))
    plain = ObjectModel(2, "box", BOX, diameter=0.1077)
    assert add_or_adds_error(HALF_TURN_Z, T, np.eye(3), T, symmetric) == pytest.approx(0.0, abs=1e-15)
    assert add_or_adds_error(HALF_TURN_Z, T, np.eye(3), T, plain) == pytest.approx(0.1, abs=1e-15)


def _h(R, t=(0.0, 0.0, 0.0)):
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = R, t
    return matrix


def test_rotation_error_of_a_known_angle():
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    R_gt = Rotation.from_euler("zyx", [40, -15, 70], degrees=True).as_matrix()
    R_est = Rotation.from_rotvec(math.radians(30) * axis).as_matrix() @ R_gt
    assert rotation_error_deg(R_est, R_gt) == pytest.approx(30.0, abs=1e-9)
    assert rotation_error_deg(HALF_TURN_Z, np.eye(3)) == pytest.approx(180.0, abs=1e-9)
    assert rotation_error_deg(R_gt, R_gt) == pytest.approx(0.0, abs=1e-5)


def test_proj2d_error_of_a_known_pixel_shift():
    flat = BOX.copy()
    flat[:, 2] = 0.0  # all points at depth 0.5 m: a 5 mm sideways shift moves each by 600 * 0.005 / 0.5 px
    assert proj2d_error(np.eye(3), T + [0.005, 0, 0], np.eye(3), T, K, flat) == pytest.approx(6.0, abs=1e-9)
    with pytest.raises(ValueError, match="behind the camera"):
        proj2d_error(np.eye(3), -T, np.eye(3), T, K, BOX)


def test_mssd_and_mspd_with_and_without_symmetries():
    syms = symmetry_transformations({"symmetries_discrete": [_h(HALF_TURN_Z).ravel()]})
    identity = np.eye(4)[None]
    # Without the symmetry every corner moved by 2 sqrt(A^2 + B^2) = 0.1 m.
    assert mssd_error(HALF_TURN_Z, T, np.eye(3), T, BOX, identity) == pytest.approx(0.1, abs=1e-15)
    assert mssd_error(HALF_TURN_Z, T, np.eye(3), T, BOX, syms) == pytest.approx(0.0, abs=1e-15)
    # Projected, the nearest corners (z = -C, depth 0.48 m) move most: 600 * 0.1 / 0.48 = 125 px.
    assert mspd_error(HALF_TURN_Z, T, np.eye(3), T, K, BOX, identity) == pytest.approx(125.0, abs=1e-9)
    assert mspd_error(HALF_TURN_Z, T, np.eye(3), T, K, BOX, syms) == pytest.approx(0.0, abs=1e-9)
    # A symmetric pose plus a 2 mm shift along x: MSSD is the shift, MSPD its largest image (600 * 2 / 480).
    shifted = T + [0.002, 0.0, 0.0]
    assert mssd_error(HALF_TURN_Z, shifted, np.eye(3), T, BOX, syms) == pytest.approx(0.002, abs=1e-15)
    assert mspd_error(HALF_TURN_Z, shifted, np.eye(3), T, K, BOX, syms) == pytest.approx(2.5, abs=1e-9)
    with pytest.raises(ValueError, match="syms: expected"):
        mssd_error(np.eye(3), T, np.eye(3), T, BOX, np.eye(3))


def test_continuous_symmetry_makes_a_cylinder_turn_free():
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    ring = np.stack([0.05 * np.cos(angles), 0.05 * np.sin(angles), np.zeros_like(angles)], axis=1)
    cylinder = np.vstack([ring + [0, 0, -0.04], ring + [0, 0, 0.04]])
    syms = symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]},
                                    max_sym_disc_step=0.01)
    turn = Rotation.from_rotvec([0, 0, math.radians(50)]).as_matrix()
    # Steps of 360 / 315 deg: the nearest to 50 deg is 44 steps = 50.2857 deg, so the points
    # on the rim stay 0.2857 deg apart: a chord of 2 * 0.05 * sin(0.2857 / 2 deg) = 0.249 mm.
    nearest = 44 * 360 / 315 - 50
    assert mssd_error(turn, T, np.eye(3), T, cylinder, syms) == pytest.approx(
        2 * 0.05 * math.sin(math.radians(nearest / 2)), abs=1e-12)
    assert mssd_error(turn, T, np.eye(3), T, cylinder, np.eye(4)[None]) == pytest.approx(
        2 * 0.05 * math.sin(math.radians(25)), abs=1e-12)


def test_iou_2d():
    assert iou_2d((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert iou_2d((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou_2d((0, 0, 10, 10), (10, 0, 5, 5)) == 0.0
    with pytest.raises(ValueError, match="box_a/box_b"):
        iou_2d((0, 0, -1, 10), (0, 0, 1, 1))


def test_recall_helpers_and_defaults():
    errors = [0.001, 0.02, None, 0.005, float("nan")]
    assert recall(errors, 0.01) == pytest.approx(2 / 5)
    assert recall([0.009, 0.009], [0.01, 0.005]) == 0.5  # per-object thresholds (0.1 x diameter)
    np.testing.assert_allclose(recall_curve(errors, [0.0, 0.002, 0.01, 0.03]), [0.0, 0.2, 0.4, 0.6])
    assert average_recall(errors, [0.002, 0.01, 0.03]) == pytest.approx(0.4)
    assert recall([], 1.0) == 0.0
    assert (metrics.ADD_THRESHOLD_DIAMETER, metrics.PROJ2D_THRESHOLD_PX) == (0.1, 5.0)
    assert (metrics.ROTATION_THRESHOLD_DEG, metrics.TRANSLATION_THRESHOLD_M) == (5.0, 0.05)
    assert (metrics.VSD_TAU_M, metrics.VSD_DELTA_M, metrics.VSD_THRESHOLD) == (0.02, 0.015, 0.3)
    assert metrics.BOP19_VSD_TAUS_DIAMETER == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    assert metrics.BOP19_MSPD_THRESHOLDS_PX[0] == 5.0 and metrics.BOP19_MSPD_THRESHOLDS_PX[-1] == 50.0


def _estimate(obj_id, t, score):
    return ObjectPose("", obj_id, 0, score, np.eye(3), np.asarray(t, dtype=float))


def test_matching_goes_by_score_then_smallest_error_each_ground_truth_once():
    # Pure translations of an unsymmetric box: ADD(-S) is the distance between the positions.
    objects = {i: ObjectModel(i, f"box {i}", BOX, diameter=0.1077) for i in (1, 2)}
    gts = [_estimate(1, T, 1.0), _estimate(1, T + [0.1, 0, 0], 1.0), _estimate(2, T - [0.1, 0, 0], 1.0)]
    estimates = [
        _estimate(1, T + [0.01, 0, 0], 0.5),  # 1 cm from gt 0, 9 cm from gt 1
        _estimate(2, T - [0.1, 0, 0.002], 0.1),  # the only estimate of object 2: other objects do not compete
        _estimate(1, T + [0.04, 0, 0], 0.9),  # 4 cm from gt 0, 6 cm from gt 1: chooses first
        _estimate(3, T, 1.0),  # an object without ground truth (nor model): a false positive
        _estimate(1, T, 0.2),  # exact, but both boxes are taken by better-scored estimates
    ]
    # Score first: 0.9 takes gt 0 (4 cm), 0.5 is left gt 1 (9 cm). Smallest error first would
    # have given gt 0 the exact 0.2 guess and gt 1 the 0.9 one (6 cm).
    assert match_estimates(estimates, gts, objects) == [2, 0, 1]
    # Equal scores go in the given order: the 4 cm estimate listed first still takes gt 0.
    tied = [_estimate(1, T + [0.04, 0, 0], 0.5), _estimate(1, T + [0.01, 0, 0], 0.5)]
    assert match_estimates(tied, gts[:2], objects) == [0, 1]
    assert match_estimates([], gts, objects) == [None, None, None]


class RayCastRenderer:
    """Depth by casting one ray per pixel centre at the mesh (trimesh), metres, 0 = background."""

    def __init__(self, meshes, width, height):
        self.meshes, self.width, self.height = meshes, width, height

    def render_depth(self, obj_id, R, t, K):
        mesh = self.meshes[obj_id].copy()
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, t
        mesh.apply_transform(pose)
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
        directions = pixels @ np.linalg.inv(K).T
        hits, ray_ids, _ = mesh.ray.intersects_location(
            np.zeros_like(directions), directions, multiple_hits=False)
        depth = np.zeros(u.size)
        if len(ray_ids):
            depth[ray_ids] = hits[:, 2]
        return depth.reshape(self.height, self.width)


K_SMALL = np.array([[60.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def renderer():
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    wall = trimesh.creation.box(extents=(2.0, 2.0, 0.01))  # fills the whole 64 x 48 view at 0.5 m
    return RayCastRenderer({1: box, 2: wall}, width=64, height=48)


def test_vsd_identical_pose_is_zero_and_disjoint_is_one(renderer):
    R = Rotation.from_euler("xyz", [20, 30, 10], degrees=True).as_matrix()
    t = np.array([-0.1, 0.0, 0.6])
    depth_test = renderer.render_depth(1, R, t, K_SMALL)
    assert np.count_nonzero(depth_test) > 100
    taus = [0.005, 0.02, 0.05]

    def vsd(t_est):
        return vsd_error(R, t_est, R, t, depth_test, K_SMALL, 0.015, taus, 0.17, renderer, obj_id=1)

    assert vsd(t) == [0.0, 0.0, 0.0]
    far = t + [0.25, 0.0, 0.0]  # the estimate lands beside the object, no pixel in common
    assert np.count_nonzero(renderer.render_depth(1, R, far, K_SMALL)) > 100
    assert vsd(far) == [1.0, 1.0, 1.0]
    assert vsd(t + [0.0, 0.0, -1.0]) == [1.0, 1.0, 1.0]  # behind the camera: renders nothing


def test_vsd_depth_offset_against_hand_computed_fraction(renderer):
    # A wall filling the image, estimated 10 mm too far: each pixel's distance differs by
    # 0.01 * sqrt(1 + x^2 + y^2), so e_VSD(tau) is the fraction of pixels where that reaches tau.
    t_gt, t_est = np.array([0, 0, 0.5]), np.array([0, 0, 0.51])
    depth_test = renderer.render_depth(2, np.eye(3), t_gt, K_SMALL)
    assert np.all(depth_test == pytest.approx(0.495))  # the wall's front face
    u, v = np.meshgrid((np.arange(64) - 31.5) / 60.0, (np.arange(48) - 23.5) / 60.0)
    per_pixel = 0.01 * np.sqrt(1 + u**2 + v**2)
    taus = [0.0105, 0.0115, 0.02, 0.005]
    expected = [float(np.mean(per_pixel >= tau)) for tau in taus]
    assert 0.2 < expected[0] < 0.9 and 0 < expected[1] < expected[0]
    errors = vsd_error(np.eye(3), t_est, np.eye(3), t_gt, depth_test, K_SMALL, 0.015, taus, 2.0, renderer,
                       obj_id=2)
    np.testing.assert_allclose(errors, expected, atol=1e-12)
    assert errors[2:] == [0.0, 1.0]
    # Normalised by a 1 m diameter the same taus read as fractions: same values.
    normalised = vsd_error(np.eye(3), t_est, np.eye(3), t_gt, depth_test, K_SMALL, 0.015, taus, 1.0, renderer,
                           obj_id=2, normalized_by_diameter=True)
    np.testing.assert_allclose(normalised, expected, atol=1e-12)


def test_vsd_ignores_occluded_pixels(renderer):
    # Cover the left half of the view with an occluder 10 cm in front: only the right half counts.
    t_gt, t_est = np.array([0, 0, 0.5]), np.array([0, 0, 0.51])
    depth_test = renderer.render_depth(2, np.eye(3), t_gt, K_SMALL)
    depth_test[:, :32] = 0.395
    u, v = np.meshgrid((np.arange(32, 64) - 31.5) / 60.0, (np.arange(48) - 23.5) / 60.0)
    expected = float(np.mean(0.01 * np.sqrt(1 + u**2 + v**2) >= 0.0105))
    (error,) = vsd_error(np.eye(3), t_est, np.eye(3), t_gt, depth_test, K_SMALL, 0.015, [0.0105], 2.0,
                         renderer, obj_id=2)
    assert error == pytest.approx(expected, abs=1e-12)


def test_depth_to_distance_and_bad_input(renderer):
    depth = np.full((48, 64), 0.5)
    dist = depth_to_distance(depth, K_SMALL)
    assert dist[0, 0] == pytest.approx(0.5 * math.sqrt(1 + (31.5 / 60) ** 2 + (23.5 / 60) ** 2))
    with pytest.raises(ValueError, match="depth_test: shape"):
        vsd_error(np.eye(3), T, np.eye(3), T, np.zeros((10, 10)), K_SMALL, 0.015, [0.02], 0.1, renderer, 1)
    with pytest.raises(ValueError, match="renderer: expected"):
        vsd_error(np.eye(3), T, np.eye(3), T, depth, K_SMALL, 0.015, [0.02], 0.1, object(), obj_id=1)
    with pytest.raises(ValueError, match="R_est/t_est: expected shapes"):
        add_error(np.eye(3), [0, 0], np.eye(3), T, BOX)
    with pytest.raises(ValueError, match="R_gt/t_gt: contain NaN"):
        add_error(np.eye(3), T, np.eye(3), [0, 0, np.nan], BOX)
    with pytest.raises(ValueError, match="points: expected"):
        adds_error(np.eye(3), T, np.eye(3), T, BOX[:, :2])
