"""Depth camera noise: axial noise grows with distance as Nguyen et al.'s model, holes at depth edges."""

from __future__ import annotations

import numpy as np
import pytest

from hrpose_ros.bop_reader import read_depth, read_rgb
from hrpose_ros.data import make_data as make_data_module
from hrpose_ros.data.depth_noise import DepthNoise, add_depth_noise


@pytest.mark.parametrize(("z", "sigma"), [(0.6, 0.0012 + 0.0019 * 0.2**2), (1.2, 0.0012 + 0.0019 * 0.8**2)])
def test_axial_noise_follows_the_kinect_model(z, sigma):
    plane = np.full((200, 200), z)
    noisy = add_depth_noise(plane, np.random.default_rng(0), DepthNoise(dropout=0.0, quantisation=0.0))
    assert noisy.dtype == np.float32
    assert np.mean(noisy) == pytest.approx(z, abs=2e-4)
    assert np.std(noisy) == pytest.approx(sigma, rel=0.03)


def test_pixels_next_to_a_depth_step_go_missing_far_ones_rarely():
    step = np.full((300, 200), 0.6)
    step[:, 100:] = 0.7
    noise = DepthNoise(edge_dropout=0.6, dropout=0.002)
    noisy = add_depth_noise(step, np.random.default_rng(1), noise)
    missing = noisy == 0
    assert missing[:, 99:101].mean() == pytest.approx(0.6, abs=0.05)  # one pixel on each side of the step
    assert missing[:, :90].mean() == pytest.approx(0.002, abs=0.002)
    wide = add_depth_noise(step, np.random.default_rng(1), DepthNoise(edge_width=3, dropout=0.0))
    assert (wide[:, 97:103] == 0).mean() == pytest.approx(0.6, abs=0.05)
    assert not np.any(wide[:, :96] == 0)


def test_no_depth_stays_none_and_values_are_whole_millimetres():
    depth = np.zeros((50, 50))
    depth[10:40, 10:40] = 0.65
    noisy = add_depth_noise(depth, np.random.default_rng(2))
    assert not np.any(noisy[depth == 0])
    kept = noisy[noisy > 0].astype(np.float64)
    np.testing.assert_allclose(kept * 1000, np.round(kept * 1000), atol=1e-3)


@pytest.mark.parametrize("bad", [np.full((4, 4), np.nan), np.full((4, 4), -1.0), np.zeros(4)])
def test_bad_depth_is_refused(bad):
    with pytest.raises(ValueError, match="depth: expected an"):
        add_depth_noise(bad, np.random.default_rng(0))


def test_make_data_adds_noise_on_its_own_stream_leaving_rgb_unchanged(tmp_path):
    clean = make_data_module.make_data(tmp_path / "clean", ["cutpaste"], n=2, seed=5, rgb_ext="png",
                                       depth_noise=None, progress=False).split_dir
    noisy = make_data_module.make_data(tmp_path / "noisy", ["cutpaste"], n=2, seed=5, rgb_ext="png",
                                       progress=False).split_dir
    for im_id in range(2):
        a, b = (split / "000000" for split in (clean, noisy))
        np.testing.assert_array_equal(read_rgb(a / "rgb" / f"{im_id:06d}.png"),
                                      read_rgb(b / "rgb" / f"{im_id:06d}.png"))
        depth_clean = read_depth(a / "depth" / f"{im_id:06d}.png", 0.1)
        depth_noisy = read_depth(b / "depth" / f"{im_id:06d}.png", 0.1)
        both = (depth_clean > 0) & (depth_noisy > 0)
        assert 0.0005 < np.std(depth_noisy[both] - depth_clean[both]) < 0.003
        assert ((depth_clean > 0) & (depth_noisy == 0)).sum() > 0  # holes


def test_demo_bag_with_depth_has_the_same_colour_frames_and_noisy_depth(tmp_path):
    from hrpose_ros import bag_io
    from hrpose_ros.demo_bag import make_demo_bag

    make_demo_bag(tmp_path / "rgb", n_frames=2, progress=False)
    make_demo_bag(tmp_path / "rgbd", n_frames=2, progress=False, depth=True)
    rgb = list(bag_io.read_frames(tmp_path / "rgb"))
    rgbd = list(bag_io.read_frames(tmp_path / "rgbd", bag_io.resolve_topics(tmp_path / "rgbd",
                                                                             depth=bag_io.DEPTH_TOPIC)))
    assert len(rgb) == len(rgbd) == 2
    for a, b in zip(rgb, rgbd):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.depth is None and b.depth.shape == (480, 640)
        tray = b.depth[200:280, 280:360]  # the middle of the tray floor, about 0.6 m away
        assert 0.4 < np.median(tray[tray > 0]) < 0.8 and (b.depth == 0).any()
