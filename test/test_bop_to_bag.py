"""BOP scene -> replay bag converter: the bag holds the scene's images, cameras and poses; its CLI."""

import math

import cv2
import numpy as np
import pytest
import skimage.data

from hrpose_ros import bag_io, bop_format, bop_to_bag, bop_writer

K = np.array([[320.0, 0.0, 159.5], [0.0, 320.0, 119.5], [0.0, 0.0, 1.0]])


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def _photo_scene(scene_dir, n=3):
    """A BOP scene of real photographs with annotated poses (the converter does not look at pixels)."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    truth = []
    with bop_writer.SceneWriter(scene_dir) as writer:
        for i in range(n):
            image = cv2.resize(photos[i % 3], (320, 240), interpolation=cv2.INTER_AREA)
            instances = [
                bop_format.GtInstance(1, _rot_x(10.0 * i), [0.01 * i, 0.0, 0.5]),
                bop_format.GtInstance(2, _rot_z(5.0 * i), [-0.05, 0.02, 0.6]),
                bop_format.GtInstance(1, _rot_z(-7.0 * i), [0.05, 0.03, 0.55]),
            ]
            writer.add_frame(image, K, instances)
            truth.append((image, instances))
    return truth


def test_bop_scene_round_trips_through_the_converter(tmp_path):
    truth = _photo_scene(tmp_path / "000007")
    n = bop_to_bag.bop_scene_to_bag(
        tmp_path / "000007", tmp_path / "bag", names={1: "cube", 2: "prism"}, fps=5.0, progress=False
    )
    assert n == 3
    frames = list(bag_io.read_frames(tmp_path / "bag"))
    assert [f.stamp_ns for f in frames] == [bag_io.DEFAULT_START_NS + i * 200_000_000 for i in range(3)]
    for frame, (image, instances) in zip(frames, truth):
        np.testing.assert_array_equal(frame.image, image)
        np.testing.assert_allclose(frame.camera.K, K)
        assert [(g.obj_id, g.class_name, g.instance_id) for g in frame.ground_truth] == [
            (1, "cube", 0),
            (2, "prism", 0),
            (1, "cube", 1),
        ]
        for got, want in zip(frame.ground_truth, instances):
            np.testing.assert_allclose(
                got.R, want.R, atol=1e-9
            )  # scene_gt.json keeps R to its printed digits
            np.testing.assert_allclose(got.t, want.t, atol=1e-9)  # metres -> mm -> metres


def test_converter_cli_writes_the_bag_and_refuses_an_existing_one(tmp_path, capsys):
    _photo_scene(tmp_path / "000001", n=2)
    argv = [
        str(tmp_path / "000001"),
        str(tmp_path / "bag"),
        "--storage",
        "sqlite3",
        "--image-format",
        "png",
        "--quiet",
    ]
    assert bop_to_bag.main(argv) == 0
    assert "wrote 2 frames" in capsys.readouterr().out
    assert bag_io.resolve_topics(tmp_path / "bag").image == "/camera/color/image_raw/compressed"
    assert bop_to_bag.main(argv) == 1
    assert "already exists" in capsys.readouterr().err


def test_depth_topic_needs_a_scene_with_depth_images(tmp_path):
    _photo_scene(tmp_path / "scene", n=1)
    topics = bag_io.BagTopics(depth=bag_io.DEPTH_TOPIC)
    with pytest.raises(ValueError, match="asked for, but the scene has images without depth"):
        bop_to_bag.bop_scene_to_bag(tmp_path / "scene", tmp_path / "bag", topics=topics, progress=False)
    assert not (tmp_path / "bag").exists()
