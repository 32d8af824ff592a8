"""Augmentation: keypoints follow the rotated image, photometric steps leave them alone."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hrpose_ros.data.augment import AugmentConfig, augment, rotation_about_centre

ROTATE_ONLY = AugmentConfig(rotation_prob=1.0, jitter_prob=0.0, blur_prob=0.0, noise_prob=0.0)
PHOTOMETRIC_ONLY = AugmentConfig(rotation_prob=0.0, jitter_prob=1.0, blur_prob=1.0, noise_prob=1.0)


def _dots(keypoints, width=160, height=120) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for x, y in keypoints.reshape(-1, 2):
        cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    return image


@pytest.mark.parametrize("seed", range(6))
def test_rotated_keypoints_land_on_the_rotated_dots(seed):
    keypoints = np.array([[[40.0, 30.0], [120.0, 40.0]], [[80.0, 90.0], [60.0, 60.0]]])  # (N=2, K=2, 2)
    image = _dots(keypoints)
    out, moved = augment(image, keypoints, np.random.default_rng(seed), ROTATE_ONLY)
    assert moved.shape == keypoints.shape
    grey = out[..., 0].astype(np.float64)
    for x, y in moved.reshape(-1, 2):
        window = grey[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5]
        ys, xs = np.mgrid[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5]
        centre = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()
        assert np.allclose(centre, (x, y), atol=0.6)
    # The centre stays put and distances from it are kept: a rotation, within +-30 degrees.
    centre = np.array([79.5, 59.5])
    before, after = keypoints.reshape(-1, 2) - centre, moved.reshape(-1, 2) - centre
    assert np.allclose(np.linalg.norm(before, axis=1), np.linalg.norm(after, axis=1))
    angles = np.degrees(np.arctan2(before[:, 1], before[:, 0]) - np.arctan2(after[:, 1], after[:, 0]))
    angles = (angles + 180) % 360 - 180
    assert np.allclose(angles, angles[0], atol=1e-6) and abs(angles[0]) <= 30


def test_rotation_matrix_turns_a_quarter_about_the_centre():
    matrix = rotation_about_centre(5, 3, 90.0)  # centre (2, 1)
    assert np.allclose(matrix @ [4.0, 1.0, 1.0], [2.0, -1.0])  # right of centre -> above it (y up on screen)


def test_photometric_steps_keep_keypoints_and_change_pixels():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    keypoints = np.array([[[10.5, 20.25], [np.nan, np.nan]]], dtype=np.float32)
    out, moved = augment(image, keypoints, np.random.default_rng(0), PHOTOMETRIC_ONLY)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert moved.dtype == np.float32
    assert np.array_equal(moved, keypoints, equal_nan=True)
    assert np.abs(out.astype(int) - image).mean() > 3
    assert np.array_equal(image, np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8))


def test_nothing_enabled_is_identity_and_same_seed_repeats():
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    keypoints = np.array([[[5.0, 6.0]]])
    off = AugmentConfig(rotation_prob=0.0, jitter_prob=0.0, blur_prob=0.0, noise_prob=0.0)
    out, moved = augment(image, keypoints, np.random.default_rng(0), off)
    assert np.array_equal(out, image) and out is not image and np.array_equal(moved, keypoints)
    a = augment(image, keypoints, np.random.default_rng(7))
    b = augment(image, keypoints, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_input_is_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="image: expected an"):
        augment(np.zeros((10, 10), np.uint8), np.zeros((1, 9, 2)), rng)
    with pytest.raises(ValueError, match="keypoints_2d: expected"):
        augment(np.zeros((10, 10, 3), np.uint8), np.zeros((1, 9, 3)), rng)
    with pytest.raises(ValueError, match="AugmentConfig.blur_prob"):
        AugmentConfig(blur_prob=1.5)
    with pytest.raises(ValueError, match="AugmentConfig.noise_std"):
        AugmentConfig(noise_std=(5.0, 1.0))
