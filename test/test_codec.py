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


def _blob_maps(codec, height, width, blobs):
    """Return (belief_maps, vector_fields) holding hand-placed peaks, in map pixels.

    ``blobs``: (class_index, keypoint, x, y, value, vector or None); each is a Gaussian of sigma 1
    scaled to ``value`` (so its sub-pixel peak is exactly (x, y)), the vector written at its pixel.
    """
    K = codec.config.num_keypoints
    belief = np.zeros((codec.belief_channels, height, width), np.float32)
    vectors = np.zeros((codec.vector_channels, height, width), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    for c, k, x, y, value, vector in blobs:
        blob = value * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0)
        np.maximum(belief[c * K + k], blob, out=belief[c * K + k])
        if vector is not None:
            j = c * (K - 1) + k
            vectors[2 * j : 2 * j + 2, int(round(y)), int(round(x))] = vector
    return belief, vectors


def _towards(source, target, degrees=0.0):
    """Return the unit vector from ``source`` to ``target``, rotated by ``degrees``."""
    d = np.subtract(target, source, dtype=np.float64)
    a = np.arctan2(d[1], d[0]) + np.deg2rad(degrees)
    return np.array([np.cos(a), np.sin(a)])


def test_round_trip_seven_instances_of_three_classes_in_class_order():
    codec = KeypointCodec(CodecConfig(num_classes=3))
    centres = [(45.2, 50.7), (118.9, 40.1), (190.4, 52.3), (262.6, 47.8), (60.1, 150.5), (135.7, 160.2)]
    centres.append((215.3, 170.9))
    classes = np.array([0, 1, 2, 0, 1, 0, 2])  # class 0 three times, two of them side by side
    rng = np.random.default_rng(3)
    keypoints = np.stack(
        [_box_keypoints(np.array(c), 22.0, rng.uniform(-4, 4, 2)) for c in centres]
    )
    belief, vectors = codec.encode(keypoints, classes, height=256, width=320)
    decoded = codec.decode(belief, vectors)
    assert len(decoded) == 7
    assert [d.class_index for d in decoded] == sorted(classes.tolist())
    for truth, cls in zip(keypoints, classes):
        (match,) = [
            d for d in decoded if d.class_index == cls and np.linalg.norm(d.keypoints[-1] - truth[-1]) < 2
        ]
        assert match.found.all()
        assert np.max(np.abs(match.keypoints - truth)) < 0.5


def test_find_peaks_on_the_border_refine_only_along_the_border():
    codec = KeypointCodec(CodecConfig(num_classes=1))
    h, w = 40, 50
    ys, xs = np.mgrid[0:h, 0:w]
    centres = [(0.0, 5.3, 1.0), (-0.6, 20.25, 0.9), (w - 1.0, 30.7, 0.8), (25.4, h - 1.0, 0.7)]
    belief = np.zeros((h, w), np.float32)
    for x, y, value in centres:
        np.maximum(belief, value * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8.0), out=belief)
    peaks = codec.find_peaks(belief)
    # On the border there is no neighbour outside: the coordinate across it stays the pixel's.
    # Values: the Gaussians (sigma 2) at the peak pixels (0, 5), (0, 20), (49, 31), (25, 39).
    expected = [
        (0.0, 5.3, np.exp(-0.09 / 8.0)),
        (0.0, 20.25, 0.9 * np.exp(-(0.36 + 0.0625) / 8.0)),  # centre 0.6 px outside the map: peak at x = 0
        (w - 1.0, 30.7, 0.8 * np.exp(-0.09 / 8.0)),
        (25.4, h - 1.0, 0.7 * np.exp(-0.16 / 8.0)),
    ]
    assert peaks.shape == (4, 3)
    assert np.allclose(peaks, expected, atol=1e-5)


def test_peaks_closer_than_the_window_keep_only_the_strongest():
    belief = np.zeros((20, 20), np.float32)
    belief[10, 10], belief[11, 11] = 1.0, 0.8  # diagonal neighbours: inside a 3x3 window
    belief[10, 16] = 0.5  # 6 px away: its own peak
    peaks = KeypointCodec(CodecConfig(peak_window=3)).find_peaks(belief)
    assert np.allclose(peaks, [(10, 10, 1.0), (16, 10, 0.5)])
    belief[11, 11] = 0.0
    belief[10, 12] = 0.9  # 2 px away: a peak of its own for a 3x3 window, suppressed by a 5x5 one
    window_3 = KeypointCodec(CodecConfig(peak_window=3)).find_peaks(belief)
    window_5 = KeypointCodec(CodecConfig(peak_window=5)).find_peaks(belief)
    assert np.allclose(window_3[:, :2], [(10, 10), (12, 10), (16, 10)])
    assert np.allclose(window_5[:, :2], [(10, 10), (16, 10)])


def test_peak_threshold_compares_float32_maps_exactly():
    belief = np.zeros((3, 9, 9), np.float32)
    above = np.float32(0.3)  # 0.30000001 > 0.3
    below = np.nextafter(above, np.float32(0))  # 0.29999998
    belief[0, 4, 4], belief[1, 4, 4], belief[2, 4, 4] = above, below, np.float32(0.25)
    codec = KeypointCodec(CodecConfig(peak_threshold=0.3))
    channels, peaks = codec.find_all_peaks(belief)
    assert channels.tolist() == [0] and peaks[0, 2] == float(above)
    # 0.25 is a float32 exactly: the test is strict, as for float64 maps.
    channels, _ = KeypointCodec(CodecConfig(peak_threshold=0.25)).find_all_peaks(belief)
    assert channels.tolist() == [0, 1]
    assert len(KeypointCodec(CodecConfig(peak_threshold=0.25)).find_peaks(belief[2].astype(np.float64))) == 0


def test_vertex_goes_to_the_centroid_its_vector_points_at_not_the_nearest():
    # K = 5: four vertices and a centroid per instance; two instances of class 0 and one of class 1.
    codec = KeypointCodec(CodecConfig(num_classes=2, num_keypoints=5, min_keypoints=4))
    a, b, c = (20.0, 20.0), (50.0, 20.0), (35.0, 40.0)
    blobs = [(0, 4, *a, 1.0, None), (0, 4, *b, 0.9, None), (1, 4, *c, 0.8, None)]
    corners = ((-6, -6), (6, -6), (-6, 6), (6, 6))
    for k, (dx, dy) in enumerate(corners):
        if k != 0:  # the first vertex of A and B is the ambiguous one below
            blobs.append((0, k, a[0] + dx, a[1] + dy, 0.7, _towards((a[0] + dx, a[1] + dy), a)))
            blobs.append((0, k, b[0] + dx, b[1] + dy, 0.7, _towards((b[0] + dx, b[1] + dy), b)))
        blobs.append((1, k, c[0] + dx, c[1] + dy, 0.7, _towards((c[0] + dx, c[1] + dy), c)))
    # 14 px from A, 16 px from B, pointing at B.
    blobs.append((0, 0, 34.0, 20.0, 0.6, _towards((34.0, 20.0), b)))
    # A class-0 vertex pointing straight at the class-1 centroid goes nowhere else.
    blobs.append((0, 1, 35.0, 32.0, 0.6, _towards((35.0, 32.0), c)))
    belief, vectors = _blob_maps(codec, 60, 70, blobs)
    inst_a, inst_b, inst_c = codec.decode(belief, vectors)
    assert [i.class_index for i in (inst_a, inst_b, inst_c)] == [0, 0, 1]
    assert inst_a.found.tolist() == [False, True, True, True, True]
    assert inst_b.found.all() and np.allclose(inst_b.keypoints[0], np.array([34.0, 20.0]) * 4, atol=1e-4)
    assert inst_c.found.all() and np.allclose(inst_c.keypoints[1], np.array([41.0, 34.0]) * 4, atol=1e-4)
    assert inst_b.score == pytest.approx((0.9 + 3 * 0.7 + 0.6) / 5, abs=1e-6)


def test_vertex_goes_to_the_nearest_centroid_within_the_angle_not_the_best_aligned():
    # The paper's rule (and DOPE's): of the centroids within the angular threshold, the closest.
    # Two class-0 centroids: the vertex's vector points exactly at the far one and 18 degrees
    # off the near one; both are within 30 degrees, so the near one takes it.
    config = CodecConfig(num_classes=1, num_keypoints=5, min_keypoints=4, angle_threshold_deg=30)
    codec = KeypointCodec(config)
    near, far = (30.0, 20.0), (30.0, 50.0)
    corners = ((-5, -5), (5, -5), (-5, 5), (5, 5))
    blobs = [(0, 4, *near, 1.0, None), (0, 4, *far, 0.9, None)]
    for k, (dx, dy) in enumerate(corners):
        for centre in (near, far):
            point = (centre[0] + dx, centre[1] + dy)
            if (k, centre) != (0, near):
                blobs.append((0, k, *point, 0.7, _towards(point, centre)))
    vertex = (24.0, 8.0)  # above both: 13 px from near, 42 px from far, 18 degrees between them
    to_near, to_far = np.subtract(near, vertex), np.subtract(far, vertex)
    angle = np.degrees(np.arccos(to_near @ to_far / np.linalg.norm(to_near) / np.linalg.norm(to_far)))
    assert 15 < angle < 30 and np.linalg.norm(to_near) < np.linalg.norm(to_far)
    blobs.append((0, 0, *vertex, 0.6, _towards(vertex, far)))
    near_instance, far_instance = codec.decode(*_blob_maps(codec, 64, 60, blobs))
    assert near_instance.found.all()
    assert np.allclose(near_instance.keypoints[0], np.array(vertex) * 4, atol=1e-4)
    # The far centroid keeps its own first vertex: nearer than the one that pointed at it.
    assert np.allclose(far_instance.keypoints[0], np.array([25.0, 45.0]) * 4, atol=1e-4)


def test_angle_threshold_and_the_nearest_vertex_per_keypoint():
    config = CodecConfig(num_classes=1, num_keypoints=5, min_keypoints=4, angle_threshold_deg=30)
    codec = KeypointCodec(config)
    centroid = (30.0, 30.0)
    vertices = [(22.0, 22.0), (38.0, 22.0), (22.0, 38.0), (38.0, 38.0)]
    blobs = [(0, 4, *centroid, 1.0, None)]
    blobs.append((0, 0, *vertices[0], 0.8, _towards(vertices[0], centroid, 25.0)))  # within 30 deg: kept
    blobs.append((0, 1, *vertices[1], 0.8, _towards(vertices[1], centroid, -35.0)))  # beyond: dropped
    # Keypoint 2 twice: the weaker peak 11.3 px from the centroid, 20 deg off; the stronger one
    # 14 px away, pointing straight at it. The nearer wins (DOPE keeps the smallest distance).
    blobs.append((0, 2, *vertices[2], 0.5, _towards(vertices[2], centroid, 20.0)))
    blobs.append((0, 2, 30.0, 44.0, 0.9, _towards((30.0, 44.0), centroid)))
    blobs.append((0, 3, *vertices[3], 0.8, _towards(vertices[3], centroid)))
    (instance,) = codec.decode(*_blob_maps(codec, 60, 60, blobs))
    assert instance.found.tolist() == [True, False, True, True, True]
    assert np.allclose(instance.keypoints[2], np.array(vertices[2]) * 4, atol=1e-4)
    assert instance.score == pytest.approx((1.0 + 0.8 + 0.5 + 0.8) / 4, abs=1e-6)


def test_several_instances_drop_only_the_one_with_too_few_keypoints():
    keypoints = np.stack(
        [
            _box_keypoints(np.array([70.0, 80.0]), 30.0, np.zeros(2)),
            _box_keypoints(np.array([190.0, 90.0]), 30.0, np.zeros(2)),
        ]
    )
    visible = np.ones((2, 9), bool)
    visible[1, :5] = False  # 3 vertices + centroid
    for min_keypoints, expected in ((5, 1), (4, 2)):
        codec = KeypointCodec(CodecConfig(num_classes=1, min_keypoints=min_keypoints))
        decoded = codec.decode(*codec.encode(keypoints, np.array([0, 0]), 256, 256, visible=visible))
        assert len(decoded) == expected
        assert np.allclose(decoded[0].keypoints, keypoints[0], atol=0.5)
    assert decoded[1].found.sum() == 4


def test_empty_maps_decode_to_nothing():
    codec = KeypointCodec(CodecConfig(num_classes=2))
    belief, vectors = np.zeros((18, 32, 40), np.float32), np.zeros((32, 32, 40), np.float32)
    assert codec.decode(belief, vectors) == []
    assert codec.find_peaks(belief[0]).shape == (0, 3)
    channels, peaks = codec.find_all_peaks(belief)
    assert channels.shape == (0,) and peaks.shape == (0, 3)
    # Vertices without a centroid make no instance either.
    keypoints = _box_keypoints(np.array([80.0, 60.0]), 20.0, np.zeros(2))[None]
    visible = np.array([[True] * 8 + [False]])
    assert codec.decode(*codec.encode(keypoints, np.array([1]), 128, 160, visible=visible)) == []
