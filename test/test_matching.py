"""One matcher for both scorers: the rosbag replay and training's BOP evaluation pair poses alike."""

import math
from pathlib import Path

import numpy as np
import pytest

from hrpose_ros import bop_reader, scoring
from hrpose_ros.geometry import box_corners_3d
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

K = np.array([[320.0, 0.0, 159.5], [0.0, 320.0, 119.5], [0.0, 0.0, 1.0]])
CAMERA = CameraModel(K=K, width=320, height=240)
CUBE_POINTS = box_corners_3d(np.array([[-0.05] * 3, [0.05] * 3]))  # a 10 cm cube, scored with ADD
CUBE = ObjectModel(1, "cube", CUBE_POINTS, diameter=0.1 * math.sqrt(3))
T = np.array([0.0, 0.0, 0.5])


def _pose(t, score):
    return ObjectPose("cube", 1, 0, score, np.eye(3), np.asarray(t, dtype=float))


def test_replay_and_evaluation_match_the_same_pairs_where_score_and_error_order_differ():
    from training.evaluate import match_poses

    truth = [T, T + [0.1, 0.0, 0.0]]
    # Scores 0.9 / 0.5 / 0.2 at 4 / 1 / 0 cm from gt 0 (6 / 9 / 10 cm from gt 1). Best score first
    # pairs (0.9, 4 cm) and (0.5, 9 cm); smallest error first would pair (0.2, 0 cm) and (0.9, 6 cm).
    estimates = [_pose(T + [0.01, 0.0, 0.0], 0.5), _pose(T + [0.04, 0.0, 0.0], 0.9), _pose(T, 0.2)]
    frame = scoring.FrameResult(0, 0, CAMERA, tuple(estimates), tuple(_pose(t, 1.0) for t in truth), {})
    scores, false_positives = scoring.match_frame(frame, {1: CUBE})
    instances = tuple(bop_reader.BopInstance(i, 1, np.eye(3), t) for i, t in enumerate(truth))
    bop_frame = bop_reader.BopFrame(0, 0, CAMERA, 1.0, Path("unused.png"), instances=instances)
    results = match_poses(estimates, bop_frame, {1: CUBE})

    assert [s.score for s in scores] == [0.9, 0.5] and false_positives == {1: 1}
    assert [s.add_error for s in scores] == pytest.approx([0.04, 0.09], abs=1e-12)
    for score, result in zip(scores, results):
        assert result.errors == pytest.approx({
            "add_m": score.add_error,
            "proj2d_px": score.proj2d_error,
            "re_deg": score.rotation_error_deg,
            "te_m": score.translation_error,
        }, abs=1e-12)
    # ADD(-S) 0.1 d is 17.3 mm: both pairs fail (smallest error first would have passed gt 0).
    assert [r.correct["add"] for r in results] == [False, False]
