"""Belief-map/vector-field codec: encode -> decode round trips and the target values of Eq. 1-2."""

import numpy as np
import pytest

from hrpose_ros.codec import CodecConfig, KeypointCodec


def _box_keypoints(centre, half, tilt):
    """Return (9, 2): 8 projected-box-like corners around ``centre`` then the centre itself."""
    corners = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                # A perspective-ish box: the "far" face slightly smaller and shifted.
                scale = half * (1.0 if sz > 0 else 0.7)
                corners.append(centre + scale * np.array([sx, sy]) + tilt * sz)
    return np.vstack([corners, centre])


def test_round_trip_three_instances_two_classes_within_half_pixel():
    codec = KeypointCodec(CodecConfig(num_classes=2))
    keypoints = np.stack(
        [
            _box_keypoints(np.array([70.3, 80.6]), 30.0, np.array([4.1, -3.3])),
            _box_keypoints(np.array([190.8, 90.2]), 34.0, np.array([-5.2, 2.7])),
            _box_keypoints(np.array([130.1, 190.9]), 28.0, np.array([3.6, 5.4])),
        ]
    )
    classes = np.array([0, 1, 0])
    belief, vectors = codec.encode(keypoints, classes, height=256, width=256)
    assert belief.shape == (18, 64, 64) and vectors.shape == (32, 64, 64)

    decoded = codec.decode(belief, vectors)
    assert len(decoded) == 3
    for truth, cls in zip(keypoints, classes):
        # Same grouping: the instance whose centroid matches holds all of this instance's keypoints.
        match = [
            d for d in decoded if d.class_index == cls and np.linalg.norm(d.keypoints[-1] - truth[-1]) < 2.0
        ]
        assert len(match) == 1
        assert match[0].found.all()
        assert np.max(np.abs(match[0].keypoints - truth)) < 0.5
        assert match[0].score == pytest.approx(1.0, abs=0.05)


def test_encode_values_follow_eq1_and_eq2():
    codec = KeypointCodec(CodecConfig(num_classes=1, sigma=2.0))
    keypoints = _box_keypoints(np.array([128.0, 128.0]), 40.0, np.zeros(2))[None]
    belief, vectors = codec.encode(keypoints, np.array([0]), height=256, width=256)
    # Corner 1 at (88, 88) input px = map (22, 22); one map pixel away: exp(-1 / (2 * 2^2)).
    assert belief[1, 22, 22] == pytest.approx(1.0)
    assert belief[1, 22, 23] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
    # Unit vector from corner 1 toward the centroid: (1, 1)/sqrt(2), within 3 map pixels only.
    assert vectors[2, 22, 22] == pytest.approx(np.sqrt(0.5))
    assert vectors[3, 24, 24] == pytest.approx(np.sqrt(0.5))  # distance sqrt(8) < 3
    assert vectors[2, 22, 26] == 0.0  # distance 4 > 3


def test_decode_rejects_instances_with_too_few_keypoints():
    codec = KeypointCodec(CodecConfig(num_classes=1, min_keypoints=5))
    keypoints = _box_keypoints(np.array([128.0, 128.0]), 40.0, np.zeros(2))[None]
    visible = np.array([[True, True, True, False, False, False, False, False, True]])
    belief, vectors = codec.encode(keypoints, np.array([0]), 256, 256, visible=visible)
    assert codec.decode(belief, vectors) == []
    visible[0, 3] = True
    (instance,) = codec.decode(*codec.encode(keypoints, np.array([0]), 256, 256, visible=visible))
    assert instance.found.sum() == 5


def test_bad_inputs_raise_value_error_naming_the_argument():
    codec = KeypointCodec(CodecConfig(num_classes=2))
    with pytest.raises(ValueError, match="class_indices"):
        codec.encode(np.zeros((1, 9, 2)), np.array([2]), 64, 64)
    with pytest.raises(ValueError, match="belief_maps"):
        codec.decode(np.zeros((9, 16, 16)), np.zeros((32, 16, 16)))
    with pytest.raises(ValueError, match="min_keypoints"):
        CodecConfig(min_keypoints=3)
