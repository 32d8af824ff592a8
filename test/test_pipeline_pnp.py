"""PosePipeline's PnP stage: RANSAC only when the plain solution leaves a keypoint off; the depth range."""

import numpy as np
import pytest

from hrpose_ros.codec import CodecConfig, DecodedInstance, KeypointCodec
from hrpose_ros.geometry import keypoints_3d, project, solve_pnp
from hrpose_ros.pipeline import PosePipeline, PoseThresholds, keypoint_spread
from hrpose_ros.types import CameraModel
from training.toy_data import toy_objects

CAMERA = CameraModel(
    K=np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]),
    width=640,
    height=480,
    dist=np.array([0.05, -0.02, 0.0, 0.0, 0.0]),
)
R_TRUE = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
T_TRUE = np.array([0.03, -0.02, 0.4])


def _pipeline(ransac: bool, **thresholds) -> PosePipeline:
    return PosePipeline(
        engine=None,
        codec=KeypointCodec(CodecConfig(num_classes=2)),
        objects=toy_objects(),
        input_size=(320, 256),
        thresholds=PoseThresholds(
            ransac=ransac, ransac_threshold=5.0, max_reprojection_error=50.0, **thresholds
        ),
    )


def _instance(keypoints: np.ndarray) -> DecodedInstance:
    return DecodedInstance(class_index=1, score=0.9, keypoints=keypoints, found=np.ones(9, bool))


def test_keypoints_within_the_ransac_threshold_keep_the_plain_solution():
    points_3d = keypoints_3d(toy_objects()[1].points)
    # +-2 px on every keypoint: RMS * sqrt(9) > 5 px, yet every residual < 5 px, so the bound
    # does not decide and the keypoints are projected again.
    noise = 2.0 * np.array([[1, -1], [-1, 1], [1, 1], [-1, -1], [1, -1], [-1, 1], [1, 1], [-1, -1], [0, 1]])
    keypoints = project(points_3d, R_TRUE, T_TRUE, CAMERA.K, CAMERA.dist) + noise
    plain = solve_pnp(keypoints, points_3d, CAMERA.K, CAMERA.dist)
    reprojected = project(points_3d, plain.R, plain.t, CAMERA.K, CAMERA.dist)
    residuals = np.linalg.norm(reprojected - keypoints, axis=1)
    assert plain.reprojection_error * 3 > 5.0 and residuals.max() < 5.0

    (with_ransac,) = _pipeline(ransac=True).solve([_instance(keypoints)], CAMERA)
    (without,) = _pipeline(ransac=False).solve([_instance(keypoints)], CAMERA)
    assert np.array_equal(with_ransac.R, without.R) and np.array_equal(with_ransac.t, without.t)
    assert with_ransac.keypoint_ids.tolist() == list(range(9))
    assert with_ransac.reprojection_error == plain.reprojection_error


def test_keypoints_off_by_more_than_the_threshold_go_through_ransac():
    points_3d = keypoints_3d(toy_objects()[1].points)
    keypoints = project(points_3d, R_TRUE, T_TRUE, CAMERA.K, CAMERA.dist)
    keypoints[[2, 6]] += [[40.0, -30.0], [-35.0, 45.0]]  # two wrong keypoints

    (with_ransac,) = _pipeline(ransac=True).solve([_instance(keypoints)], CAMERA)
    assert with_ransac.keypoint_ids.tolist() == [0, 1, 3, 4, 5, 7, 8]
    assert np.allclose(with_ransac.R, R_TRUE, atol=1e-6) and np.allclose(with_ransac.t, T_TRUE, atol=1e-7)
    assert with_ransac.reprojection_error < 1e-4

    (without,) = _pipeline(ransac=False).solve([_instance(keypoints)], CAMERA)
    assert without.keypoint_ids.tolist() == list(range(9))
    angle = np.degrees(np.arccos(np.clip((np.trace(without.R.T @ R_TRUE) - 1) / 2, -1, 1)))
    assert angle > 2.0 and without.reprojection_error > 5.0


@pytest.mark.parametrize(
    "depth, thresholds, kept",
    [(0.4, {}, True), (4.9, {}, True), (8.0, {}, False), (8.0, {"max_depth": 10.0}, True),
     (0.4, {"min_depth": 0.5}, False)],
)
def test_poses_outside_the_depth_range_are_dropped(depth, thresholds, kept):
    points_3d = keypoints_3d(toy_objects()[1].points)
    t = np.array([0.0, 0.0, depth])
    keypoints = project(points_3d, R_TRUE, t, CAMERA.K, CAMERA.dist)
    poses = _pipeline(ransac=True, **thresholds).solve([_instance(keypoints)], CAMERA)
    assert len(poses) == int(kept)
    if kept:
        assert np.allclose(poses[0].t, t, atol=1e-6 * depth)


def test_depth_range_must_be_ordered():
    with pytest.raises(ValueError, match="expected 0 <= min_depth < max_depth, got 1.0/0.5"):
        PoseThresholds(min_depth=1.0, max_depth=0.5)


def test_keypoints_along_a_line_give_no_pose():
    # The torus seen with the shipped weights: 5 keypoints, two pairs 1.3 px apart and a centroid
    # 15 px off the line through them; torch and ONNX poses differed by 179 deg for keypoints
    # 1e-4 px apart. Corners 1, 2, 5, 6 and the centroid of the toy box stand in for the model's.
    keypoints = np.array(
        [[147.41, 263.40], [147.32, 262.06], [327.02, 109.14], [326.29, 109.90], [224.77, 176.90]]
    )
    assert 0 < keypoint_spread(keypoints) < PoseThresholds().min_keypoint_spread
    found = np.zeros(9, bool)
    found[[1, 2, 5, 6, 8]] = True
    full = np.zeros((9, 2))
    full[found] = keypoints
    instance = DecodedInstance(class_index=1, score=0.9, keypoints=full, found=found)
    assert _pipeline(ransac=True).solve([instance], CAMERA) == []
    assert _pipeline(ransac=False).solve([instance], CAMERA) == []
    # the same pipeline with the check off returns a pose for them: the check is what drops it
    assert len(_pipeline(ransac=False, min_keypoint_spread=0.0).solve([instance], CAMERA)) == 1


def test_a_box_seen_whole_passes_the_spread_check():
    points_3d = keypoints_3d(toy_objects()[1].points)
    keypoints = project(points_3d, R_TRUE, T_TRUE, CAMERA.K, CAMERA.dist)
    assert keypoint_spread(keypoints) > PoseThresholds().min_keypoint_spread
    assert len(_pipeline(ransac=True).solve([_instance(keypoints)], CAMERA)) == 1
    with pytest.raises(ValueError, match="min_keypoint_spread: expected 0 <= value < 1, got 1.5"):
        PoseThresholds(min_keypoint_spread=1.5)
