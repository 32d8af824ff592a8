"""One conversion for both message flavours: rclpy's (the node) and rosbags' (bags) give the same results."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from hrpose_ros import bag_io
from hrpose_ros import ros_conversions as rc
from hrpose_ros.msg import ObjectPoseArray
from hrpose_ros.types import CameraModel, ObjectPose

REPO = Path(__file__).resolve().parents[1]
TS = bag_io.hrpose_typestore()
RNG = np.random.default_rng(11)
RGB = RNG.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
STAMP_NS = 1_700_000_000_123_456_789
ROS_TYPE = {Image: "sensor_msgs/msg/Image", CompressedImage: "sensor_msgs/msg/CompressedImage",
            CameraInfo: "sensor_msgs/msg/CameraInfo", ObjectPoseArray: "hrpose_ros/msg/ObjectPoseArray"}


def both_flavours(msg):
    """Return (the rclpy message, the rosbags message deserialized from the same CDR bytes)."""
    return msg, TS.deserialize_cdr(serialize_message(msg), ROS_TYPE[type(msg)])


def padded(rgb, encoding, padding):
    h, w = rgb.shape[:2]
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, :1],
              "bgra8": np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 9, np.uint8)], axis=2)}[encoding]
    rows = np.concatenate([pixels.reshape(h, -1), np.full((h, padding), 77, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "bgra8", "mono8"])
def test_same_image_bytes_give_the_same_pixels_in_both_flavours(encoding):
    node_msg, bag_msg = both_flavours(padded(RGB, encoding, padding=5))
    expected = np.repeat(RGB[:, :, :1], 3, axis=2) if encoding == "mono8" else RGB
    np.testing.assert_array_equal(rc.image_to_rgb(node_msg), expected)
    np.testing.assert_array_equal(rc.image_to_rgb(bag_msg), expected)


@pytest.mark.parametrize("extra", [-1, 1])
def test_data_not_step_times_height_is_refused_in_both_flavours(extra):
    msg = padded(RGB, "rgb8", padding=2)
    msg.data = bytes(msg.data) + bytes(extra) if extra > 0 else bytes(msg.data)[:extra]
    size = 6 * 29 + extra
    for flavour in both_flavours(msg):
        with pytest.raises(ValueError, match=rf"image.data: {size} bytes, expected step x height = 29 x 6"):
            rc.image_to_rgb(flavour)


def test_unsupported_encoding_has_one_wording_in_both_flavours():
    msg = padded(RGB, "rgb8", padding=0)
    msg.encoding = "rgb9"  # known to neither this module nor cv_bridge (where installed)
    for flavour in both_flavours(msg):
        with pytest.raises(ValueError, match="image.encoding: 'rgb9'"):
            rc.image_to_rgb(flavour)


def camera_info(**fields):
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[0.1, -0.05, 0.0, 0.0, 0.0],
                      k=K.ravel().tolist(), p=np.hstack([K, np.zeros((3, 1))]).ravel().tolist())
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def test_roi_and_binning_give_the_same_camera_in_both_flavours():
    roi = RegionOfInterest(x_offset=100, y_offset=60, width=400, height=300)
    cameras = [rc.camera_model_from_info(m, rectified=False)
               for m in both_flavours(camera_info(binning_x=2, binning_y=2, roi=roi))]
    for camera in cameras:
        assert (camera.width, camera.height) == (200, 150)
        np.testing.assert_allclose(camera.K, [[250.0, 0.0, 110.0], [0.0, 255.0, 90.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(("model", "d", "accepted"), [
    ("", [0.1, 0.0, 0.0, 0.0, 0.0], False),
    ("equidistant", [0.1, 0.01, 0.0, 0.0], False),
    ("", [], True),
    ("equidistant", [0.0, 0.0, 0.0, 0.0], True),
    ("rational_polynomial", [0.1, -0.05, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0], True),
])
def test_distortion_is_read_the_same_in_both_flavours(model, d, accepted):
    for flavour in both_flavours(camera_info(distortion_model=model, d=d)):
        if accepted:
            np.testing.assert_array_equal(rc.camera_model_from_info(flavour, rectified=False).dist, d)
        else:
            with pytest.raises(ValueError, match=f"camera_info.distortion_model: '{model}' is not supported"):
                rc.camera_model_from_info(flavour, rectified=False)


def test_uncalibrated_k_has_one_wording_in_both_flavours():
    for flavour in both_flavours(camera_info(k=[0.0] * 9)):
        with pytest.raises(ValueError, match="camera_info.k: all zeros"):
            rc.camera_model_from_info(flavour, rectified=False)


POSES = [ObjectPose("duck", 1, 0, 0.875, np.eye(3), np.array([0.1, -0.05, 0.7]),
                    keypoints_2d=np.array([[10.5, 20.25], [30.0, 40.0]]), keypoint_ids=np.array([0, 8]),
                    reprojection_error=0.75, refined=True, depth_residual=2.0**-11),  # exact in float32
         # a finite residual: messages holding NaN never compare equal, which the builders test needs
         ObjectPose("mug", 3, 2, 1.0, np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
                    np.array([0.0, 0.0, 1.0]), depth_residual=0.0)]
CAMERA = CameraModel(K=K, width=640, height=480, dist=[0.1, -0.05, 0.001, 0.002, 0.01, 0.2, 0.0, 0.03])


def node_header():
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = divmod(STAMP_NS, 10**9)
    return header


@pytest.mark.parametrize("build", [
    lambda header, types: rc.rgb_to_image(RGB, header, types),
    lambda header, types: rc.compressed_image_msg(RGB, header, "png", types=types),
    lambda header, types: rc.camera_info_msg(CAMERA, header, types),
    lambda header, types: rc.object_pose_array_msg(POSES, header, types),
], ids=["image", "compressed", "camera_info", "object_poses"])
def test_builders_write_the_same_message_in_both_flavours(build):
    node_msg = build(node_header(), rc.RCLPY_TYPES)
    bag_msg = build(rc.header_msg(STAMP_NS, "cam", TS.types), TS.types)
    # Compared after a trip through rclpy: CDR bytes differ in alignment padding (rclpy leaves it unset).
    cdr = bytes(TS.serialize_cdr(bag_msg, ROS_TYPE[type(node_msg)]))
    assert deserialize_message(cdr, type(node_msg)) == node_msg


def test_header_msg_stamps_nanoseconds():
    for types in (rc.RCLPY_TYPES, TS.types):
        header = rc.header_msg(STAMP_NS, "cam", types)
        assert (header.stamp.sec, header.stamp.nanosec) == (1_700_000_000, 123_456_789)
        assert header.frame_id == "cam"


def test_object_poses_round_trip_through_either_flavour():
    for flavour in both_flavours(rc.object_pose_array_msg(POSES, node_header())):
        back = rc.poses_from_msg(flavour)
        assert [(p.class_name, p.obj_id, p.instance_id) for p in back] == [("duck", 1, 0), ("mug", 3, 2)]
        for got, want in zip(back, POSES):
            np.testing.assert_allclose(got.R, want.R, atol=1e-12)
            np.testing.assert_array_equal(got.t, want.t)
        np.testing.assert_array_equal(back[0].keypoints_2d, [[10.5, 20.25], [30.0, 40.0]])
        assert list(back[0].keypoint_ids) == [0, 8] and back[0].reprojection_error == pytest.approx(0.75)
        assert back[0].refined and back[0].depth_residual == 2.0**-11
        assert not back[1].refined


def test_a_pose_without_depth_carries_nan_residual_through_either_flavour():
    pose = ObjectPose("duck", 1, 0, 1.0, np.eye(3), np.array([0.0, 0.0, 0.5]))
    for flavour in both_flavours(rc.object_pose_array_msg([pose], node_header())):
        (back,) = rc.poses_from_msg(flavour)
        assert not back.refined and np.isnan(back.depth_residual)


def test_keypoint_ids_beyond_uint8_are_refused_not_wrapped():
    pose = ObjectPose("duck", 1, 0, 1.0, np.eye(3), np.zeros(3), keypoints_2d=np.zeros((1, 2)),
                      keypoint_ids=np.array([256]))
    for types in (rc.RCLPY_TYPES, TS.types):
        with pytest.raises(ValueError, match=r"poses\[0\].keypoint_ids: must fit the message's uint8"):
            rc.object_pose_array_msg([pose], rc.header_msg(0, "cam", types), types)


def test_bad_quaternion_is_named_by_field():
    msg = rc.object_pose_array_msg(POSES, node_header())
    msg.objects[1].pose.orientation.w = 2.0
    for flavour in both_flavours(msg):
        with pytest.raises(ValueError, match=r"objects\[1\].pose.orientation: quaternion norm"):
            rc.poses_from_msg(flavour)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_images_decode_to_rgb_in_both_flavours(fmt):
    # Smooth colours: JPEG keeps them within a few levels (noise would be smeared by chroma subsampling).
    u, v = np.meshgrid(np.arange(32), np.arange(24))
    rgb = np.stack([8 * u, 10 * v, 255 - 4 * (u + v)], axis=2).astype(np.uint8)
    for flavour in both_flavours(rc.compressed_image_msg(rgb, node_header(), fmt)):
        assert flavour.format == f"rgb8; {fmt} compressed bgr8"
        got = rc.image_to_rgb(flavour)
        if fmt == "png":
            np.testing.assert_array_equal(got, rgb)
        else:
            assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).mean() < 3.0


def compressed(array: np.ndarray, fmt: str = "mono8; png compressed mono8") -> CompressedImage:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return CompressedImage(format=fmt, data=encoded.tobytes())


def test_compressed_grey_becomes_grey_rgb_and_16_bit_is_refused():
    grey = RGB[:, :, 0]
    for flavour in both_flavours(compressed(grey)):
        np.testing.assert_array_equal(rc.image_to_rgb(flavour), np.repeat(grey[:, :, None], 3, axis=2))
    fmt = "16UC1; png compressed mono16"
    for flavour in both_flavours(compressed(grey.astype(np.uint16) * 257, fmt)):
        with pytest.raises(ValueError, match=f"image.format: '{fmt}' decodes to uint16 channels"):
            rc.image_to_rgb(flavour)
    for flavour in both_flavours(CompressedImage(format="jpeg", data=b"not a jpeg")):
        with pytest.raises(ValueError, match="image.data: 10 bytes of format 'jpeg' could not be decoded"):
            rc.image_to_rgb(flavour)


def test_bag_io_writes_and_reads_a_bag_without_rclpy(tmp_path):
    """bag_io and the conversions it uses import no ROS Python package: replay works without ROS."""
    script = f"""
import importlib.abc, sys
ROS = ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces", "visualization_msgs",
       "hrpose_ros.msg", "cv_bridge")
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(ROS):
            raise ImportError(name + " blocked: no ROS here")
sys.meta_path.insert(0, NoRos())
import numpy as np
from hrpose_ros import bag_io
from hrpose_ros.types import CameraModel
camera = CameraModel(K=[[50.0, 0, 4.5], [0, 50.0, 3.5], [0, 0, 1]], width=9, height=6)
rgb = np.arange(6 * 9 * 3, dtype=np.uint8).reshape(6, 9, 3)
with bag_io.BagWriter({str(tmp_path / "bag")!r}) as writer:
    writer.write_frame(1, rgb, camera, [])
(frame,) = bag_io.read_frames({str(tmp_path / "bag")!r})
assert (frame.image == rgb).all() and frame.camera.width == 9
assert not [m for m in sys.modules if m.startswith(ROS)]
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
