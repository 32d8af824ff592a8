"""Geometry: keypoint order, projection, PnP round trips, rotation representations, symmetries."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hrpose_ros.geometry import (
    NUM_KEYPOINTS,
    box_corners_3d,
    keypoints_3d,
    matrix_from_quaternion,
    matrix_from_rotation_6d,
    model_keypoints,
    project,
    quaternion_from_matrix,
    rotation_6d_from_matrix,
    solve_pnp,
    surface_keypoints,
    symmetry_transformations,
)

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
HALF = 0.05  # a 10 cm cube
CUBE = np.array([[x, y, z] for x in (-HALF, HALF) for y in (-HALF, HALF) for z in (-HALF, HALF)])


def rotation_error_deg(R_a, R_b):
    return math.degrees(math.acos(np.clip((np.trace(R_a @ R_b.T) - 1.0) / 2.0, -1.0, 1.0)))


def test_keypoints_are_box_corners_in_bit_order_then_centre():
    points = np.array([[0.0, -1.0, 2.0], [3.0, 1.0, 5.0], [1.0, 0.0, 3.0]])
    corners = box_corners_3d(points)
    np.testing.assert_array_equal(corners[0], [0.0, -1.0, 2.0])
    np.testing.assert_array_equal(corners[1], [0.0, -1.0, 5.0])  # bit 0: z max
    np.testing.assert_array_equal(corners[2], [0.0, 1.0, 2.0])  # bit 1: y max
    np.testing.assert_array_equal(corners[4], [3.0, -1.0, 2.0])  # bit 2: x max
    np.testing.assert_array_equal(corners[7], [3.0, 1.0, 5.0])
    keypoints = keypoints_3d(points)
    assert keypoints.shape == (NUM_KEYPOINTS, 3)
    np.testing.assert_allclose(keypoints[8], [1.5, 0.0, 3.5])


def test_project_known_pixel():
    # A point 0.1 m right and 0.05 m down at 0.5 m: u = 320 + 600 * 0.2, v = 240 + 600 * 0.1.
    uv = project([[0.1, 0.05, 0.0]], np.eye(3), [0.0, 0.0, 0.5], K)
    np.testing.assert_allclose(uv, [[440.0, 300.0]])


def test_project_with_distortion_matches_opencv_model():
    dist = np.array([-0.2, 0.05, 0.001, -0.002, 0.0])
    uv = project([[0.1, 0.05, 0.0]], np.eye(3), [0.0, 0.0, 0.5], K, dist)
    x, y = 0.2, 0.1
    r2 = x * x + y * y
    radial = 1 - 0.2 * r2 + 0.05 * r2 * r2
    xd = x * radial + 2 * 0.001 * x * y - 0.002 * (r2 + 2 * x * x)
    yd = y * radial + 0.001 * (r2 + 2 * y * y) + 2 * -0.002 * x * y
    np.testing.assert_allclose(uv, [[320 + 600 * xd, 240 + 600 * yd]], atol=1e-9)


def test_project_rejects_points_behind_camera_and_zero_focal_length():
    with pytest.raises(ValueError, match="behind the camera"):
        project([[0.0, 0.0, -1.0]], np.eye(3), np.zeros(3), K)
    bad_K = K.copy()
    bad_K[0, 0] = 0.0
    with pytest.raises(ValueError, match="K: focal lengths"):
        project([[0.0, 0.0, 1.0]], np.eye(3), np.zeros(3), bad_K)


def random_pose(seed):
    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=seed).as_matrix()
    t = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0.5])
    return R, t


@pytest.mark.parametrize("dist", [None, np.array([-0.1, 0.02, 0.0, 0.0, 0.0])])
def test_pnp_round_trip_exact(dist):
    points = keypoints_3d(CUBE)
    for seed in range(20):
        R, t = random_pose(seed)
        solution = solve_pnp(project(points, R, t, K, dist), points, K, dist)
        assert solution is not None
        assert np.linalg.norm(solution.t - t) < 1e-6
        assert rotation_error_deg(solution.R, R) < 1e-4
        assert solution.reprojection_error < 1e-6
        np.testing.assert_array_equal(solution.inliers, np.arange(9))


def test_pnp_with_one_pixel_noise_within_two_degrees():
    points = keypoints_3d(CUBE)
    rng = np.random.default_rng(7)
    errors = []
    for seed in range(50):
        R, t = random_pose(seed)
        noisy = project(points, R, t, K) + rng.normal(0.0, 1.0, (9, 2))
        solution = solve_pnp(noisy, points, K)
        errors.append(rotation_error_deg(solution.R, R))
        assert 0.3 < solution.reprojection_error < 2.5
    assert max(errors) < 2.0


def test_pnp_ransac_rejects_two_outliers_of_nine():
    points = keypoints_3d(CUBE)
    rng = np.random.default_rng(3)
    for seed in range(20):
        R, t = random_pose(seed)
        observed = project(points, R, t, K) + rng.normal(0.0, 1.0, (9, 2))
        outliers = rng.choice(9, 2, replace=False)
        observed[outliers] += rng.uniform(30, 80, (2, 2)) * rng.choice([-1, 1], (2, 2))
        solution = solve_pnp(observed, points, K, ransac=True)
        assert solution is not None
        assert rotation_error_deg(solution.R, R) < 2.0
        assert not set(outliers) & set(solution.inliers.tolist())
        assert len(solution.inliers) == 7
        plain = solve_pnp(observed, points, K)
        assert rotation_error_deg(plain.R, R) > rotation_error_deg(solution.R, R)


def test_pnp_rejects_bad_input():
    points = keypoints_3d(CUBE)
    uv = project(points, np.eye(3), [0, 0, 0.5], K)
    with pytest.raises(ValueError, match="at least 4"):
        solve_pnp(uv[:3], points[:3], K)
    line = np.array([[0.0, 0.0, z] for z in np.linspace(0, 0.1, 6)])
    with pytest.raises(ValueError, match="points_3d: .*collinear"):
        solve_pnp(uv[:6], line, K)
    nan_uv = uv.copy()
    nan_uv[2, 0] = np.nan
    with pytest.raises(ValueError, match="points_2d: contains NaN"):
        solve_pnp(nan_uv, points, K)
    with pytest.raises(ValueError, match="points_2d/points_3d"):
        solve_pnp(uv[:8], points, K)
    with pytest.raises(ValueError, match="points_3d: expected shape"):
        solve_pnp(uv, points[:, :2], K)



def test_pnp_rejects_bad_float64_arrays_with_the_same_messages():
    # Float64 arrays take solve_pnp's fast path; each failed check there must still name the problem.
    points = keypoints_3d(CUBE)
    uv = project(points, np.eye(3), [0.02, -0.01, 0.5], K)
    flat_uv = np.column_stack([np.linspace(100.0, 200.0, 9), np.linspace(50.0, 90.0, 9)])
    inf_points = points.copy()
    inf_points[4, 1] = np.inf
    skewed_K = K.copy()
    skewed_K[2, 0] = 1e-3
    nan_K = K.copy()
    nan_K[0, 2] = np.nan
    cases = [
        ((flat_uv, points, K), "points_2d: the image points are collinear"),
        ((flat_uv.tolist(), points.tolist(), K.tolist()), "points_2d: the image points are collinear"),
        ((uv, inf_points, K), "points_3d: contains NaN or infinite values"),
        ((uv, points, skewed_K), r"K: expected last row \[0, 0, 1\]"),
        ((uv, points, nan_K), "K: contains NaN or infinite values"),
        ((uv, points, K, np.array([0.1, np.nan, 0.0, 0.0])), "dist: expected OpenCV distortion coefficients"),
        ((uv, points, K, np.array([0.1, 0.2, 0.3])), "dist: expected 0, 4, 5, 8, 12 or 14"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            solve_pnp(*args)


def test_pnp_gives_the_same_pose_for_lists_read_only_arrays_and_zero_distortion():
    # Lists are converted and checked one by one, float64 arrays take the fast path: same numbers.
    points = keypoints_3d(CUBE)
    R, t = random_pose(11)
    uv = project(points, R, t, K) + np.random.default_rng(11).normal(0.0, 1.0, (9, 2))
    reference = solve_pnp(uv, points, K)
    read_only = [a.copy() for a in (uv, points, K)]
    for array in read_only:
        array.setflags(write=False)  # as CameraModel.K and .dist are
    for args in [
        (uv.tolist(), points.tolist(), K.tolist()),
        tuple(read_only),
        (uv, points, K, np.zeros(5)),  # all-zero coefficients mean no distortion
        (uv, points, K, np.zeros(0)),
    ]:
        solution = solve_pnp(*args)
        np.testing.assert_array_equal(solution.R, reference.R)
        np.testing.assert_array_equal(solution.t, reference.t)
        np.testing.assert_array_equal(solution.inliers, reference.inliers)
        assert solution.reprojection_error == reference.reprojection_error
    assert 0.3 < reference.reprojection_error < 2.5
    assert rotation_error_deg(reference.R, R) < 2.0

def test_quaternion_round_trip_and_known_value():
    # 90 degrees about z: q = (0, 0, sin 45, cos 45) in x, y, z, w order.
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(quaternion_from_matrix(Rz), [0, 0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    unnormalised = [0, 0, 2 * math.sqrt(0.5), 2 * math.sqrt(0.5)]
    np.testing.assert_allclose(matrix_from_quaternion(unnormalised), Rz, atol=1e-12)
    # 180 degrees about x (w = 0): the quaternion cannot come from dividing by w.
    np.testing.assert_allclose(quaternion_from_matrix(np.diag([1.0, -1.0, -1.0])), [1, 0, 0, 0], atol=1e-12)
    for seed in range(50):
        R = Rotation.random(random_state=seed).as_matrix()
        q = quaternion_from_matrix(R)
        assert q[3] >= 0
        np.testing.assert_allclose(q, Rotation.from_matrix(R).as_quat(canonical=True), atol=1e-12)
        np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-12)
    # An R off orthonormal by less than the tolerance still gives a unit quaternion near its rotation.
    R = Rotation.random(random_state=7).as_matrix()
    q = quaternion_from_matrix(R + 2e-4 * np.random.default_rng(7).standard_normal((3, 3)))
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(q, quaternion_from_matrix(R), atol=1e-3)
    with pytest.raises(ValueError, match="q: expected a non-zero"):
        matrix_from_quaternion([0, 0, 0, 0])
    with pytest.raises(ValueError, match="R: expected a rotation"):
        quaternion_from_matrix(np.diag([1.0, 1.0, -1.0]))


def test_rotation_6d_round_trip_and_gram_schmidt():
    R = Rotation.random(5, random_state=1).as_matrix()
    r6 = rotation_6d_from_matrix(R)
    assert r6.shape == (5, 6)
    np.testing.assert_allclose(matrix_from_rotation_6d(r6), R, atol=1e-12)
    # Unnormalised, non-orthogonal columns: a1 = 2 x, a2 = x + 3 y gives the identity.
    np.testing.assert_allclose(matrix_from_rotation_6d([2, 0, 0, 1, 3, 0]), np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="r6: .*parallel"):
        matrix_from_rotation_6d([1, 0, 0, 2, 0, 0])


def test_symmetry_transformations_discrete_and_continuous():
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [0.02, 0.0, 0.0]  # rotation by pi about the z axis through (0.01, 0, 0)
    syms = symmetry_transformations({"symmetries_discrete": [flip.ravel().tolist()]})
    assert syms.shape == (2, 4, 4)
    np.testing.assert_array_equal(syms[0], np.eye(4))
    np.testing.assert_array_equal(syms[1], flip)

    info = {"symmetries_continuous": [{"axis": [0, 0, 2], "offset": [0.01, 0, 0]}]}
    syms = symmetry_transformations(info, max_sym_disc_step=0.01)
    count = math.ceil(math.pi / 0.01)  # 315 steps of 2 pi / 315
    assert syms.shape == (count, 4, 4)
    np.testing.assert_allclose(syms[0], np.eye(4), atol=1e-15)
    angle = 2 * math.pi / count
    np.testing.assert_allclose(syms[1][:3, :3], Rotation.from_rotvec([0, 0, angle]).as_matrix(), atol=1e-12)
    # The axis passes through the offset: that point stays where it is.
    for sym in syms[::50]:
        np.testing.assert_allclose(sym[:3, :3] @ [0.01, 0, 0.3] + sym[:3, 3], [0.01, 0, 0.3], atol=1e-12)

    both = symmetry_transformations({**info, "symmetries_discrete": [flip.ravel()]}, max_sym_disc_step=0.1)
    assert both.shape == (2 * math.ceil(math.pi / 0.1), 4, 4)
    np.testing.assert_allclose(both[0], np.eye(4), atol=1e-15)


def test_symmetry_transformations_rejects_malformed_fields():
    with pytest.raises(ValueError, match=r"symmetries_discrete\[0\]: expected shape"):
        symmetry_transformations({"symmetries_discrete": [[1, 0, 0]]})
    with pytest.raises(ValueError, match=r"symmetries_continuous\[0\]: expected keys"):
        symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 1]}]})
    with pytest.raises(ValueError, match=r"symmetries_continuous\[0\].axis: expected a non-zero"):
        symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]})


def test_surface_keypoints_are_spread_model_points_then_the_box_centre():
    points = np.random.default_rng(4).normal(size=(500, 3)) * [0.05, 0.03, 0.02] + [0.01, 0.0, -0.02]
    keypoints = surface_keypoints(points)
    assert keypoints.shape == (NUM_KEYPOINTS, 3)
    assert np.allclose(keypoints[-1], keypoints_3d(points)[-1])  # the centre as HRPose's ninth keypoint
    assert all(np.any(np.all(points == k, axis=1)) for k in keypoints[:-1])  # on the model
    gaps = np.linalg.norm(keypoints[:-1, None] - keypoints[None, :-1], axis=-1) + np.eye(8)
    assert gaps.min() > 0.3 * np.linalg.norm(points.max(0) - points.min(0)) / 2  # spread, not clustered
    assert np.array_equal(surface_keypoints(points), keypoints)  # deterministic
    # on a cube's corners the farthest points are the corners themselves: the box keypoints' set
    assert {tuple(k) for k in surface_keypoints(CUBE)[:-1]} == {tuple(c) for c in box_corners_3d(CUBE)}


def test_model_keypoints_kinds():
    assert np.array_equal(model_keypoints(CUBE, "box"), keypoints_3d(CUBE))
    with pytest.raises(ValueError, match="keypoints: expected 'box' or 'surface', got 'corners'"):
        model_keypoints(CUBE, "corners")
    with pytest.raises(ValueError, match="need at least 8 model points"):
        surface_keypoints(CUBE[:5])
