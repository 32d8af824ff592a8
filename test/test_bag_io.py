"""rosbag2 replay bags: round trips through mcap and sqlite3, and every bad-bag error naming bag and topic."""

import shutil

import cv2
import numpy as np
import pytest
import skimage.data
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin

from hrpose_ros import bag_io
from hrpose_ros import ros_conversions as rc
from hrpose_ros.bag_io import BagError, BagTopics, BagWriter
from hrpose_ros.geometry import matrix_from_quaternion
from hrpose_ros.msg import ObjectPoseArray
from hrpose_ros.types import CameraModel, ObjectPose

T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000  # 10 Hz


def _photos(n: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """Real photographs (scikit-image's data), resized to one camera size."""
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    return [
        cv2.resize(sources[i % len(sources)], (width, height), interpolation=cv2.INTER_AREA) for i in range(n)
    ]


CAMERA = CameraModel(
    K=[[300.0, 0.0, 159.5], [0.0, 310.0, 119.5], [0.0, 0.0, 1.0]],
    width=320,
    height=240,
    dist=[0.05, -0.01, 0.001, 0.002, 0.003],
)


def _truth(i: int) -> list[ObjectPose]:
    """Two instances of object 1 and one of object 3, moving with the frame index."""
    angles = [0.1 * i, 0.5 + 0.2 * i, -0.3 * i]
    rotations = [
        matrix_from_quaternion(np.array([np.sin(a / 2) * 0.6, 0.0, np.sin(a / 2) * 0.8, np.cos(a / 2)]))
        for a in angles
    ]
    return [
        ObjectPose("duck", 1, 0, 1.0, rotations[0], np.array([0.01 * i, 0.02, 0.5])),
        ObjectPose("duck", 1, 1, 1.0, rotations[1], np.array([-0.05, 0.01 * i, 0.6])),
        ObjectPose("mug", 3, 0, 1.0, rotations[2], np.array([0.03, -0.04, 0.45 + 0.001 * i])),
    ]


def _write_bag(path, n=4, **kwargs):
    images = _photos(n)
    with BagWriter(path, **kwargs) as writer:
        for i, image in enumerate(images):
            writer.write_frame(T0 + i * PERIOD, image, CAMERA, _truth(i) if i != 2 else [])
    return images


@pytest.mark.parametrize(
    ("storage", "image_format", "zstd"),
    [
        ("mcap", "raw", False),
        ("mcap", "raw", True),
        ("sqlite3", "raw", False),
        ("mcap", "png", False),
        ("sqlite3", "jpeg", False),
    ],
)
def test_frames_round_trip(tmp_path, storage, image_format, zstd):
    bag = tmp_path / "bag"
    images = _write_bag(bag, storage=storage, image_format=image_format, zstd=zstd)
    frames = list(bag_io.read_frames(bag))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.stamp_ns for f in frames] == [T0 + i * PERIOD for i in range(4)]
    for frame, image in zip(frames, images):
        assert frame.frame_id == bag_io.CAMERA_FRAME
        if image_format == "jpeg":
            assert np.abs(frame.image.astype(int) - image).mean() < 3.0
        else:
            np.testing.assert_array_equal(frame.image, image)
        np.testing.assert_array_equal(frame.camera.K, CAMERA.K)
        np.testing.assert_array_equal(frame.camera.dist, CAMERA.dist)
        expected = _truth(frame.index) if frame.index != 2 else []
        assert len(frame.ground_truth) == len(expected)
        for got, want in zip(frame.ground_truth, expected):
            assert (got.obj_id, got.class_name, got.instance_id, got.score) == (
                want.obj_id,
                want.class_name,
                want.instance_id,
                1.0,
            )
            np.testing.assert_allclose(got.R, want.R, atol=1e-12)
            np.testing.assert_array_equal(got.t, want.t)


def test_zstd_chunks_make_the_bag_smaller_with_identical_frames(tmp_path):
    _write_bag(tmp_path / "plain")
    _write_bag(tmp_path / "zstd", zstd=True)
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).iterdir()) for name in ("plain", "zstd")}
    assert size["zstd"] < 0.9 * size["plain"]
    for a, b in zip(bag_io.read_frames(tmp_path / "plain"), bag_io.read_frames(tmp_path / "zstd")):
        np.testing.assert_array_equal(a.image, b.image)


def test_ground_truth_bytes_are_what_rclpy_deserializes(tmp_path):
    """The typestore's ObjectPoseArray (from msg/) is the same CDR layout as the generated interface."""
    bag = tmp_path / "bag"
    _write_bag(bag, n=2)
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == bag_io.GROUND_TRUTH_TOPIC]
        raw = [data for _, _, data in reader.messages(connections=conns)]
    msg = deserialize_message(bytes(raw[1]), ObjectPoseArray)
    assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == T0 + PERIOD
    assert [(o.class_name, o.class_id, o.instance_id) for o in msg.objects] == [
        ("duck", 1, 0),
        ("duck", 1, 1),
        ("mug", 3, 0),
    ]
    assert msg.objects[2].pose.position.z == pytest.approx(0.451)


def test_topics_are_found_by_type_and_compressed_images_resolved(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, n=1, image_format="png")
    topics = bag_io.resolve_topics(bag)
    assert topics == BagTopics(image="/camera/color/image_raw/compressed")
    assert bag_io.bag_topics(bag)[topics.image] == (bag_io.COMPRESSED_IMAGE_TYPE, 1)


def test_truncated_mcap_yields_its_complete_frames_then_names_bag_and_topic(tmp_path):
    bag = tmp_path / "bag"
    images = _write_bag(bag, n=8)  # 230 kB per image: several 1 MB chunks
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(0.7 * len(data))])  # a recorder killed mid-write: no index, no footer
    frames = []
    with pytest.raises(BagError) as err:
        for frame in bag_io.read_frames(bag):
            frames.append(frame)
    assert str(bag) in str(err.value) and err.value.topic == bag_io.IMAGE_TOPIC
    assert "truncated" in str(err.value)
    assert 2 <= len(frames) < 8
    for frame in frames:
        np.testing.assert_array_equal(frame.image, images[frame.index])


def test_corrupt_image_message_names_bag_and_topic_after_good_frames(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, n=4, storage="sqlite3", image_format="png")
    db = next(bag.glob("*.db3"))
    data = bytearray(db.read_bytes())
    start = data.find(b"IDAT", len(data) // 2)  # inside a later frame's PNG stream
    data[start + 8 : start + 2008] = bytes(range(256)) * 7 + bytes(208)
    db.write_bytes(bytes(data))
    frames = []
    with pytest.raises(BagError) as err:
        frames.extend(bag_io.read_frames(bag))
    assert err.value.topic == "/camera/color/image_raw/compressed" and str(bag) in str(err.value)
    assert 1 <= len(frames) < 4


def test_missing_topic_lists_what_the_bag_has(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, n=1)
    with pytest.raises(BagError, match=r"topic /left/image: no such topic \(image\); the bag has: /camera"):
        bag_io.resolve_topics(bag, image="/left/image")
    with pytest.raises(BagError, match="no such file"):
        bag_io.resolve_topics(tmp_path / "nope")


def _manual_bag(path, frame_ids=("cam", "cam", "cam"), with_info=True, truth_obj=1, edit_image=None,
                edit_info=None):
    """A bag written message by message, to make what BagWriter never writes (``edit_*`` change a message)."""
    ts = bag_io.hrpose_typestore()
    image = _photos(1)[0]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        img_c = writer.add_connection("/cam/image", bag_io.IMAGE_TYPE, typestore=ts)
        info_c = (
            writer.add_connection("/cam/info", bag_io.CAMERA_INFO_TYPE, typestore=ts) if with_info else None
        )
        gt_c = writer.add_connection("/gt", bag_io.OBJECT_POSE_ARRAY_TYPE, typestore=ts)
        for i in range(2):
            stamp = T0 + i * PERIOD
            image_header, info_header, truth_header = (rc.header_msg(stamp, f, ts.types) for f in frame_ids)
            image_msg = rc.rgb_to_image(image, image_header, ts.types)
            if edit_image is not None:
                edit_image(image_msg)
            writer.write(img_c, stamp, ts.serialize_cdr(image_msg, bag_io.IMAGE_TYPE))
            if info_c is not None:
                info_msg = rc.camera_info_msg(CAMERA, info_header, ts.types)
                if edit_info is not None:
                    edit_info(info_msg)
                writer.write(info_c, stamp, ts.serialize_cdr(info_msg, bag_io.CAMERA_INFO_TYPE))
            truth = [ObjectPose("thing", truth_obj, 0, 1.0, np.eye(3), np.array([0.0, 0.0, 0.5]))]
            truth_msg = rc.object_pose_array_msg(truth, truth_header, ts.types)
            writer.write(gt_c, stamp, ts.serialize_cdr(truth_msg, bag_io.OBJECT_POSE_ARRAY_TYPE))


def test_no_camera_info_is_named(tmp_path):
    _manual_bag(tmp_path / "bag", with_info=False)
    with pytest.raises(BagError, match=r"topic /camera/color/camera_info: no camera_info topic"):
        bag_io.resolve_topics(tmp_path / "bag")


@pytest.mark.parametrize(
    ("frame_ids", "topic"), [(("cam", "other", "cam"), "/cam/info"), (("cam", "cam", "world"), "/gt")]
)
def test_mismatched_frame_ids_name_the_topic(tmp_path, frame_ids, topic):
    _manual_bag(tmp_path / "bag", frame_ids=frame_ids)
    with pytest.raises(BagError, match=f"topic {topic}: frame_id"):
        list(bag_io.read_frames(tmp_path / "bag"))


def test_manual_bag_topics_resolve_by_type(tmp_path):
    _manual_bag(tmp_path / "bag")
    assert bag_io.resolve_topics(tmp_path / "bag") == BagTopics("/cam/image", "/cam/info", "/gt")
    frames = list(bag_io.read_frames(tmp_path / "bag"))
    assert [f.ground_truth[0].obj_id for f in frames] == [1, 1]


def test_image_data_longer_than_step_times_height_is_refused_like_the_node_does(tmp_path):
    def one_byte_more(msg):
        msg.data = np.append(msg.data, np.uint8(0))

    _manual_bag(tmp_path / "bag", edit_image=one_byte_more)
    with pytest.raises(BagError, match=r"topic /cam/image: message 1: image.data: 230401 bytes, expected"):
        list(bag_io.read_frames(tmp_path / "bag"))


def test_camera_info_binning_reaches_the_frame_camera(tmp_path):
    def full_resolution_binned_by_two(msg):
        msg.width, msg.height, msg.binning_x, msg.binning_y = 640, 480, 2, 2
        msg.k = np.array([[600.0, 0.0, 319.0], [0.0, 620.0, 239.0], [0.0, 0.0, 1.0]]).ravel()

    _manual_bag(tmp_path / "bag", edit_info=full_resolution_binned_by_two)
    for frame in bag_io.read_frames(tmp_path / "bag"):
        assert (frame.camera.width, frame.camera.height) == (320, 240)
        np.testing.assert_allclose(frame.camera.K, CAMERA.K)


def test_writer_refuses_existing_path_and_bad_options(tmp_path):
    (tmp_path / "bag").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        BagWriter(tmp_path / "bag")
    with pytest.raises(ValueError, match="image_format"):
        BagWriter(tmp_path / "b2", image_format="tiff")
    with pytest.raises(ValueError, match="zstd"):
        BagWriter(tmp_path / "b3", storage="sqlite3", zstd=True)
    shutil.rmtree(tmp_path / "bag")


def test_bag_recorded_before_the_depth_fields_reads_with_its_own_definition(tmp_path):
    """ObjectPose gained refined/depth_residual; bags recorded with the older definition stay readable."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    current = (bag_io._msg_dirs()[0] / "ObjectPose.msg").read_text()
    older = "\n".join(line for line in current.splitlines()
                      if not line.startswith(("bool refined", "float32 depth_residual")))
    assert older != current
    ts = get_typestore(Stores.ROS2_JAZZY)
    ts.register(get_types_from_msg(older, bag_io.OBJECT_POSE_TYPE))
    ts.register(get_types_from_msg((bag_io._msg_dirs()[0] / "ObjectPoseArray.msg").read_text(),
                                   bag_io.OBJECT_POSE_ARRAY_TYPE))
    bag = tmp_path / "old"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = [writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in (
            ("/cam/image", bag_io.IMAGE_TYPE), ("/cam/info", bag_io.CAMERA_INFO_TYPE),
            ("/gt", bag_io.OBJECT_POSE_ARRAY_TYPE))]
        header = rc.header_msg(T0, "cam", ts.types)
        pose = rc.pose_msg(np.eye(3), np.array([0.01, 0.0, 0.5]), ts.types)
        truth = ts.types[bag_io.OBJECT_POSE_TYPE](
            class_name="duck", class_id=1, instance_id=0, score=1.0, pose=pose,
            keypoints_2d=np.zeros(0, np.float32), keypoint_ids=np.zeros(0, np.uint8), reprojection_error=0.0)
        messages = (rc.rgb_to_image(_photos(1)[0], header, ts.types),
                    rc.camera_info_msg(CAMERA, header, ts.types),
                    ts.types[bag_io.OBJECT_POSE_ARRAY_TYPE](header=header, objects=[truth]))
        for connection, msg in zip(connections, messages):
            writer.write(connection, T0, ts.serialize_cdr(msg, connection.msgtype))

    topics = BagTopics(image="/cam/image", camera_info="/cam/info", ground_truth="/gt")
    (frame,) = bag_io.read_frames(bag, topics)

    (pose,) = frame.ground_truth
    assert pose.class_name == "duck" and pose.t[0] == pytest.approx(0.01)
    assert not pose.refined and np.isnan(pose.depth_residual)


def test_depth_frames_round_trip_in_millimetres_beside_the_colour_image(tmp_path):
    bag = tmp_path / "rgbd"
    topics = BagTopics(depth=bag_io.DEPTH_TOPIC)
    depths = [np.full((CAMERA.height, CAMERA.width), 0.5 + 0.1 * i, np.float32) for i in range(3)]
    depths[1][:10] = 0.0  # no measurement stays none
    with BagWriter(bag, topics=topics) as writer:
        for i, (image, depth) in enumerate(zip(_photos(3), depths)):
            writer.write_frame(T0 + i * PERIOD, image, CAMERA, _truth(i), depth=depth)
        with pytest.raises(ValueError, match="depth: give it exactly when the bag has a depth topic"):
            writer.write_frame(T0 + 9 * PERIOD, image, CAMERA, _truth(0))

    resolved = bag_io.resolve_topics(bag, depth=bag_io.DEPTH_TOPIC)  # two Image topics: depth named
    assert resolved == topics
    frames = list(bag_io.read_frames(bag, resolved))
    assert len(frames) == 3
    for frame, depth in zip(frames, depths):
        np.testing.assert_allclose(frame.depth, depth, atol=5e-4)
    assert all(f.depth is None for f in bag_io.read_frames(bag, BagTopics()))  # RGB reading ignores it
    assert bag_io.resolve_topics(bag).image == bag_io.IMAGE_TOPIC  # the colour topic, not the depth one
