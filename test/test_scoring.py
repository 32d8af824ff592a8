"""Scoring of replayed frames: matching, errors and recalls against hand-computed values; scores.csv."""

import json
import math

import numpy as np
import pytest

from hrpose_ros import metrics, scoring
from hrpose_ros.geometry import box_corners_3d
from hrpose_ros.scoring import FrameResult
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

K = np.array([[320.0, 0.0, 159.5], [0.0, 320.0, 119.5], [0.0, 0.0, 1.0]])
CAMERA = CameraModel(K=K, width=320, height=240)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


# A 10 cm cube (no symmetries given: scored with ADD) and a square prism with its 4 turns about z.
CUBE = ObjectModel(
    obj_id=1,
    name="cube",
    points=box_corners_3d(np.array([[-0.05] * 3, [0.05] * 3])),
    diameter=0.1 * math.sqrt(3),
)
PRISM_SYMS = np.stack(
    [
        np.block([[_rot_z(a), np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
        for a in (0, 90, 180, 270)
    ]
)
PRISM = ObjectModel(
    obj_id=2,
    name="prism",
    points=box_corners_3d(np.array([[-0.03, -0.03, -0.06], [0.03, 0.03, 0.06]])),
    diameter=math.sqrt(0.06**2 + 0.06**2 + 0.12**2),
    symmetries=PRISM_SYMS,
)
OBJECTS = {1: CUBE, 2: PRISM}


def _pose(obj, instance, R, t, score=1.0):
    return ObjectPose(obj.name, obj.obj_id, instance, score, R, np.asarray(t, dtype=float))


def _frame(estimates, truth, im_id=0):
    return FrameResult(im_id, 0, CAMERA, tuple(estimates), tuple(truth), {"total": 0.1})



def test_errors_of_hand_made_offsets():
    R_gt, t_gt = _rot_x(30.0), np.array([0.02, -0.01, 0.6])
    gt = [
        _pose(CUBE, 0, R_gt, t_gt),
        _pose(CUBE, 1, R_gt, t_gt + [0.3, 0, 0]),
        _pose(CUBE, 2, R_gt, t_gt + [0, 0.3, 0]),
    ]
    est = [
        _pose(CUBE, 0, R_gt, t_gt + [0.003, 0.004, 0.0], score=0.9),  # pure translation: ADD = |d| = 5 mm
        _pose(CUBE, 1, R_gt @ _rot_z(10.0), t_gt + [0.3, 0, 0], score=0.8),  # 10 deg about the model z axis
    ]
    scores, false_positives = scoring.match_frame(_frame(est, gt), OBJECTS)
    assert false_positives == {}
    by_instance = {s.instance_id: s for s in scores}
    assert by_instance[0].add_error == pytest.approx(0.005, abs=1e-12)
    assert by_instance[0].translation_error == pytest.approx(0.005, abs=1e-12)
    assert by_instance[0].rotation_error_deg == pytest.approx(0.0, abs=1e-5)
    # Every cube corner is 5 cm * sqrt(2) from the z axis and moves by the chord 2 r sin(5 deg).
    assert by_instance[1].add_error == pytest.approx(
        2 * 0.05 * math.sqrt(2) * math.sin(math.radians(5)), rel=1e-9
    )
    assert by_instance[1].rotation_error_deg == pytest.approx(10.0, rel=1e-9)
    assert by_instance[1].translation_error == pytest.approx(0.0, abs=1e-12)
    assert not by_instance[2].found and by_instance[2].add_error == math.inf

    summary = scoring.summarize(scores, false_positives, OBJECTS, metrics.Thresholds())
    cube = summary[0]
    # ADD(-S) < 17.3 mm: instances 0 (5 mm) and 1 (12.3 mm); 5 cm 5 deg: only instance 0; one missed.
    assert (cube.instances, cube.found) == (3, 2)
    assert cube.add_recall == pytest.approx(2 / 3)
    assert cube.cm_deg_recall == pytest.approx(1 / 3)
    assert summary[-1].name == "mean" and summary[-1].add_recall == pytest.approx(2 / 3)


def test_symmetric_object_turned_by_a_symmetry_is_exact():
    R_gt, t_gt = _rot_x(-20.0), np.array([0.0, 0.05, 0.5])
    gt = [_pose(PRISM, 0, R_gt, t_gt)]
    est = [_pose(PRISM, 0, R_gt @ _rot_z(90.0), t_gt + [0.0, 0.0, 0.01])]  # a symmetry, 1 cm deeper
    (score,), _ = scoring.match_frame(_frame(est, gt), OBJECTS)
    assert score.add_error == pytest.approx(0.01, abs=1e-9)  # ADD-S: every corner has its twin 1 cm away
    assert score.rotation_error_deg == pytest.approx(0.0, abs=1e-5)
    assert score.translation_error == pytest.approx(0.01, abs=1e-12)
    # Against the symmetric ground truth (R_gt Rz(90)) the 2D error is the 1 cm depth change only.
    expected_px = metrics.proj2d_error(est[0].R, est[0].t, R_gt @ _rot_z(90.0), t_gt, K, PRISM.points)
    assert score.proj2d_error == pytest.approx(expected_px, rel=1e-12)
    assert metrics.add_error(est[0].R, est[0].t, R_gt, t_gt, PRISM.points) > 0.04  # plain ADD would fail it


def test_matching_gives_each_ground_truth_one_estimate_best_score_first():
    R, t = np.eye(3), np.array([0.0, 0.0, 0.5])
    gt = [_pose(CUBE, 0, R, t), _pose(CUBE, 1, R, t + [0.2, 0, 0])]
    est = [
        _pose(CUBE, 0, R, t + [0.2, 0, 0.004], score=0.4),  # near gt 1
        _pose(CUBE, 1, R, t + [0.0, 0, 0.002], score=0.9),  # near gt 0
        _pose(CUBE, 2, R, t + [0.0, 0, 0.030], score=0.3),  # a duplicate: nothing left to match
        _pose(PRISM, 0, R, t, score=0.7),  # no prism in the image
    ]
    scores, false_positives = scoring.match_frame(_frame(est, gt), OBJECTS)
    assert false_positives == {1: 1, 2: 1}
    assert [(s.instance_id, s.score) for s in scores] == [(0, 0.9), (1, 0.4)]
    assert [s.translation_error for s in scores] == pytest.approx([0.002, 0.004])


def test_latency_statistics_and_fps():
    frames = [
        FrameResult(i, 0, CAMERA, (), (), {"inference": s / 2, "total": s})
        for i, s in enumerate([0.1, 0.2, 0.3, 0.4])
    ]
    stats, fps = scoring.latency_stats(frames)
    assert stats["total"]["mean_ms"] == pytest.approx(250.0)
    assert stats["total"]["median_ms"] == pytest.approx(250.0)
    assert stats["total"]["max_ms"] == pytest.approx(400.0)
    assert stats["total"]["p90_ms"] == pytest.approx(370.0)  # linear interpolation between 300 and 400
    assert stats["inference"]["mean_ms"] == pytest.approx(125.0)
    assert fps == pytest.approx(4.0)


def test_scores_csv_round_trip(tmp_path):
    gt = [_pose(CUBE, 0, np.eye(3), [0, 0, 0.5]), _pose(CUBE, 1, np.eye(3), [0.1, 0, 0.5])]
    scores, _ = scoring.match_frame(_frame([_pose(CUBE, 0, np.eye(3), [0, 0.001, 0.5], 0.5)], gt), OBJECTS)
    scoring.write_scores_csv(tmp_path / "scores.csv", scores)
    assert scoring.read_scores_csv(tmp_path / "scores.csv") == scores
    assert json.dumps([s.add_error for s in scores])  # inf is still JSON-encodable (as Infinity)
