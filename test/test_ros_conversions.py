"""Message conversions: images of every supported encoding, camera intrinsics, poses -> messages."""

import math

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from hrpose_ros import ros_conversions as rc
from hrpose_ros.geometry import box_corners_3d, matrix_from_quaternion, project
from hrpose_ros.msg import ObjectPoseArray
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])


def encode(rgb, encoding, padding=0):
    """Return an Image of ``rgb`` in ``encoding`` with ``padding`` extra bytes per row."""
    h, w = rgb.shape[:2]
    alpha = np.full((h, w, 1), 200, np.uint8)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        "mono8": rgb[:, :, :1],
    }[encoding]
    rows = pixels.reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, padding), 77, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding", rc.SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 3, 64])
def test_image_to_rgb_every_encoding_with_row_padding(encoding, padding):
    got = rc.image_to_rgb(encode(RGB, encoding, padding))
    expected = np.repeat(RGB[:, :, :1], 3, axis=2) if encoding == "mono8" else RGB
    assert got.shape == (5, 7, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_rgb_to_image_round_trip_keeps_header():
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = rc.rgb_to_image(RGB, header)
    assert (msg.encoding, msg.step, msg.width, msg.height) == ("rgb8", 21, 7, 5)
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(rc.image_to_rgb(msg), RGB)


@pytest.mark.parametrize("encoding", ["yuv422", "16UC1", "bayer_rggb8", ""])
def test_unsupported_encoding_is_named(encoding):
    msg = encode(RGB, "rgb8")
    msg.encoding = encoding
    if rc.CvBridge is None:
        with pytest.raises(ValueError, match=f"image.encoding: '{encoding}' is not supported"):
            rc.image_to_rgb(msg)
    else:  # cv_bridge knows more encodings, but never a mislabelled buffer
        with pytest.raises(ValueError, match="image.encoding"):
            rc.image_to_rgb(msg)


def test_data_length_must_equal_step_times_height():
    msg = encode(RGB, "bgr8", padding=2)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ValueError, match=r"image.data: 114 bytes, expected step x height = 23 x 5 = 115"):
        rc.image_to_rgb(msg)


def test_step_shorter_than_a_row_is_refused():
    msg = encode(RGB, "rgba8")
    msg.step = 27
    with pytest.raises(ValueError, match="image.step: 27 bytes is shorter than one rgba8 row"):
        rc.image_to_rgb(msg)


def test_rgb_to_image_rejects_other_arrays():
    with pytest.raises(ValueError, match="rgb"):
        rc.rgb_to_image(RGB[:, :, 0], Header())


def camera_info(width=640, height=480, frame="cam_optical", **fields):
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob",
                      d=[0.1, -0.05, 0.001, 0.002, 0.0], k=K.ravel().tolist(),
                      p=[480.0, 0.0, 318.0, 0.0, 0.0, 490.0, 242.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.header.frame_id = frame
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def test_raw_input_uses_k_and_distortion():
    camera = rc.camera_model_from_info(camera_info(), rectified=False)
    np.testing.assert_array_equal(camera.K, K)
    np.testing.assert_array_equal(camera.dist, [0.1, -0.05, 0.001, 0.002, 0.0])
    assert (camera.width, camera.height) == (640, 480) and not camera.is_rectified


@pytest.mark.parametrize(
    "dist", [[], [0.1, -0.05, 0.001, 0.002], [0.1, -0.05, 0.001, 0.002, 0.01, 0.2, 0.0, 0.03]]
)
def test_camera_info_msg_round_trips_through_camera_model_from_info(dist):
    camera = CameraModel(K=K, width=640, height=480, dist=dist)
    header = Header(frame_id="cam_optical")
    info = rc.camera_info_msg(camera, header)
    assert info.header.frame_id == "cam_optical"
    assert info.distortion_model == ("rational_polynomial" if len(dist) > 5 else "plumb_bob")
    np.testing.assert_array_equal(np.reshape(info.p, (3, 4)), np.hstack([K, np.zeros((3, 1))]))
    back = rc.camera_model_from_info(info, rectified=False)
    np.testing.assert_array_equal(back.K, K)
    np.testing.assert_array_equal(back.dist, np.pad(dist, (0, max(0, 5 - len(dist)))))
    assert (back.width, back.height) == (640, 480)


def test_rectified_input_uses_p_without_distortion():
    camera = rc.camera_model_from_info(camera_info(), rectified=True)
    np.testing.assert_array_equal(camera.K, [[480.0, 0, 318.0], [0, 490.0, 242.0], [0, 0, 1]])
    assert camera.is_rectified and camera.dist.size == 0


def test_binning_and_roi_intrinsics_project_like_the_full_image():
    roi = RegionOfInterest(x_offset=100, y_offset=60, width=400, height=300)
    info = camera_info(d=[], binning_x=2, binning_y=2, roi=roi)
    camera = rc.camera_model_from_info(info, rectified=False)
    assert (camera.width, camera.height) == (200, 150)
    points = np.array([[0.05, -0.02, 0.6], [-0.1, 0.04, 0.9]])
    full = project(points, np.eye(3), np.zeros(3), K)
    binned = project(points, np.eye(3), np.zeros(3), camera.K)
    np.testing.assert_allclose(binned, (full - [100, 60]) / 2, atol=1e-9)


def test_k_all_zeros_is_refused():
    with pytest.raises(ValueError, match="camera_info.k: all zeros"):
        rc.camera_model_from_info(camera_info(k=[0.0] * 9), rectified=False)
    with pytest.raises(ValueError, match="camera_info.p: all zeros"):
        rc.camera_model_from_info(camera_info(p=[0.0] * 12), rectified=True)


def test_malformed_k_is_refused_with_the_field_name():
    bad = K.copy()
    bad[2, 2] = 0.0
    with pytest.raises(ValueError, match=r"camera_info.k: K: expected \[\[fx"):
        rc.camera_model_from_info(camera_info(k=bad.ravel().tolist()), rectified=False)


def test_fisheye_distortion_needs_rectified_images():
    info = camera_info(distortion_model="equidistant", d=[0.1, 0.01, 0.0, 0.0])
    with pytest.raises(ValueError, match="camera_info.distortion_model: 'equidistant'"):
        rc.camera_model_from_info(info, rectified=False)
    assert rc.camera_model_from_info(info, rectified=True).is_rectified


def image_msg(width=640, height=480, frame="cam_optical"):
    msg = Image(width=width, height=height, encoding="rgb8", step=3 * width)
    msg.header.frame_id = frame
    return msg


def test_matching_image_and_camera_info_pass():
    rc.check_image_matches_camera_info(image_msg(), camera_info())
    roi = RegionOfInterest(x_offset=10, y_offset=20, width=320, height=240)
    rc.check_image_matches_camera_info(image_msg(160, 120), camera_info(roi=roi, binning_x=2, binning_y=2))


@pytest.mark.parametrize(
    "image, info, message",
    [(image_msg(frame="cam_a"), camera_info(frame="cam_b"),
      "frame_id: image is in 'cam_a' but camera_info in 'cam_b'"),
     (image_msg(frame=""), camera_info(frame=""), "image.header.frame_id: empty"),
     (image_msg(320, 240), camera_info(), "image size: image is 320x240 but camera_info describes 640x480"),
     (image_msg(), camera_info(width=0, height=0), "camera_info.width/height")],
)
def test_mismatched_image_and_camera_info_are_named(image, info, message):
    with pytest.raises(ValueError, match=message):
        rc.check_image_matches_camera_info(image, info)


def rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def object_pose(name="duck", obj_id=1, instance=0, R=None, t=(0.1, -0.05, 0.7), **kwargs):
    return ObjectPose(class_name=name, obj_id=obj_id, instance_id=instance, score=0.875,
                      R=rot_z(90) if R is None else R, t=np.array(t), **kwargs)


def test_pose_msg_hand_computed_quaternion():
    pose = rc.pose_msg(rot_z(90), np.array([0.1, -0.05, 0.7]))
    q = pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [0, 0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    assert (pose.position.x, pose.position.y, pose.position.z) == (0.1, -0.05, 0.7)


def test_pose_msg_rotation_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        R *= np.sign(np.linalg.det(R))
        q = rc.pose_msg(R, np.zeros(3)).orientation
        np.testing.assert_allclose(matrix_from_quaternion([q.x, q.y, q.z, q.w]), R, atol=1e-9)


def stamped(frame="cam_optical"):
    header = Header(frame_id=frame)
    header.stamp.sec, header.stamp.nanosec = 1700000000, 123456789
    return header


def test_pose_array_and_object_pose_array_carry_header_and_fields():
    poses = [object_pose(keypoints_2d=np.array([[10.5, 20.25], [30.0, 40.0]]), keypoint_ids=np.array([0, 8]),
                         reprojection_error=0.75),
             object_pose(name="mug", obj_id=2, instance=3, t=(0.0, 0.0, 1.0))]
    array = rc.pose_array_msg(poses, stamped())
    assert array.header.frame_id == "cam_optical" and array.header.stamp.nanosec == 123456789
    assert [p.position.z for p in array.poses] == [0.7, 1.0]

    msg = rc.object_pose_array_msg(poses, stamped())
    msg = deserialize_message(serialize_message(msg), ObjectPoseArray)  # survives the wire format
    assert msg.header.stamp.sec == 1700000000
    first, second = msg.objects
    assert (first.class_name, first.class_id, first.instance_id) == ("duck", 1, 0)
    assert first.score == pytest.approx(0.875)
    np.testing.assert_allclose(first.keypoints_2d, [10.5, 20.25, 30.0, 40.0])
    assert list(first.keypoint_ids) == [0, 8] and first.reprojection_error == pytest.approx(0.75)
    assert (second.class_name, second.class_id, second.instance_id) == ("mug", 2, 3)
    assert len(second.keypoints_2d) == 0 and second.pose.position.z == 1.0


def test_nothing_seen_gives_empty_arrays_with_header():
    assert rc.object_pose_array_msg([], stamped()).objects == []
    assert rc.object_pose_array_msg([], stamped()).header.frame_id == "cam_optical"
    assert rc.pose_array_msg([], stamped()).poses == []


def test_transforms_are_children_of_the_image_frame():
    poses = [object_pose(), object_pose(name="big mug/2", obj_id=2, instance=1)]
    transforms = rc.transform_msgs(poses, stamped(), "hrpose/")
    assert [t.child_frame_id for t in transforms] == ["hrpose/duck_0", "hrpose/big_mug_2_1"]
    assert all(t.header.frame_id == "cam_optical" and t.header.stamp.nanosec == 123456789 for t in transforms)
    translation = transforms[0].transform.translation
    assert (translation.x, translation.y, translation.z) == (0.1, -0.05, 0.7)
    assert transforms[0].transform.rotation.z == pytest.approx(math.sqrt(0.5))


def models():
    # Box from x in [0, 0.04], y in [-0.01, 0.01], z in [-0.02, 0.02]: centre (0.02, 0, 0).
    corners = np.array([[x, y, z] for x in (0.0, 0.04) for y in (-0.01, 0.01) for z in (-0.02, 0.02)])
    return {1: ObjectModel(obj_id=1, name="duck", points=corners, diameter=0.05,
                           mesh_path="/m/obj_000001.ply"),
            2: ObjectModel(obj_id=2, name="mug", points=corners * 2, diameter=0.1)}


def test_markers_cuboid_sits_on_the_box_centre():
    array, shown = rc.marker_array_msg([object_pose()], models(), stamped())
    cuboid, label = array.markers
    assert (cuboid.ns, cuboid.id, cuboid.type, cuboid.action) == ("cuboid", 0, Marker.CUBE, Marker.ADD)
    # centre (0.02, 0, 0) rotated 90 deg about z -> (0, 0.02, 0), plus t.
    p = cuboid.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], [0.1, -0.03, 0.7], atol=1e-12)
    np.testing.assert_allclose([cuboid.scale.x, cuboid.scale.y, cuboid.scale.z], [0.04, 0.02, 0.04])
    assert cuboid.header.frame_id == "cam_optical" and 0 < cuboid.color.a < 1
    assert label.type == Marker.TEXT_VIEW_FACING and label.text == "duck 0 0.88"
    assert label.pose.position.y < p.y  # above the box: optical y points down
    assert shown == {("cuboid", 0), ("label", 0)}


def test_markers_optional_mesh_uses_the_model_file():
    poses = [object_pose(), object_pose(name="mug", obj_id=2)]
    array, shown = rc.marker_array_msg(poses, models(), stamped(), mesh_scale=0.001)
    meshes = [m for m in array.markers if m.ns == "mesh"]
    assert len(meshes) == 1  # the mug has no mesh file
    assert meshes[0].mesh_resource == "file:///m/obj_000001.ply" and meshes[0].scale.x == 0.001
    assert len(shown) == 5


def test_stale_markers_are_deleted():
    poses = [object_pose(instance=k) for k in range(3)]
    _, shown = rc.marker_array_msg(poses, models(), stamped(), mesh_scale=0.001)
    array, shown_now = rc.marker_array_msg(poses[:1], models(), stamped(), previous=shown)
    deletes = [(m.ns, m.id) for m in array.markers if m.action == Marker.DELETE]
    assert sorted(deletes) == [("cuboid", 1), ("cuboid", 2), ("label", 1), ("label", 2),
                               ("mesh", 0), ("mesh", 1), ("mesh", 2)]
    assert shown_now == {("cuboid", 0), ("label", 0)}
    # Nothing seen: everything shown before goes.
    array, shown_none = rc.marker_array_msg([], models(), stamped(), previous=shown_now)
    assert {(m.ns, m.id, m.action) for m in array.markers} == {("cuboid", 0, Marker.DELETE),
                                                               ("label", 0, Marker.DELETE)}
    assert shown_none == frozenset()


def test_markers_for_unknown_object_are_refused():
    with pytest.raises(ValueError, match=r"poses\[0\].obj_id: 9"):
        rc.marker_array_msg([object_pose(obj_id=9)], models(), stamped())


def test_overlay_draws_boxes_where_the_camera_projects_them():
    K_small = np.array([[200.0, 0.0, 79.5], [0.0, 200.0, 59.5], [0.0, 0.0, 1.0]])
    rgb = np.zeros((120, 160, 3), np.uint8)
    pose = object_pose(R=np.eye(3), t=(0.0, 0.0, 0.5))
    for dist in ([], [-0.3, 0.1, 0.0, 0.0, 0.0]):
        camera = CameraModel(K=K_small, width=160, height=120, dist=dist)
        msg = rc.overlay_msg(rgb, [pose], models(), camera, stamped())
        drawn = rc.image_to_rgb(msg)
        assert msg.header.frame_id == "cam_optical" and msg.encoding == "rgb8"
        assert not rgb.any()  # the input image is left alone
        corners = project(box_corners_3d(models()[1].points), np.eye(3), np.array([0.0, 0.0, 0.5]), K_small,
                          np.asarray(dist) if dist else None)
        for u, v in np.round(corners).astype(int):  # every corner of the box is on a drawn line
            assert drawn[v - 1:v + 2, u - 1:u + 2].any(), (u, v)


# -- depth images --------------------------------------------------------------------------------

DEPTH_M = np.array([[0.0, 0.5, 1.2345], [2.0, 0.001, 65.535]], dtype=np.float32)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_round_trips_in_metres(encoding):
    msg = rc.depth_image_msg(DEPTH_M, rc.header_msg(0, "cam"), encoding)
    assert msg.encoding == encoding and msg.step == 3 * (2 if encoding == "16UC1" else 4)
    back = rc.depth_image_to_metres(msg)
    assert back.dtype == np.float32 and back.shape == (2, 3)
    np.testing.assert_allclose(back, DEPTH_M, atol=0.0005 if encoding == "16UC1" else 0.0)


def test_depth_16uc1_is_millimetres_big_endian_and_padded_rows_too():
    from sensor_msgs.msg import Image

    millimetres = np.array([[0, 600], [1500, 65535]], dtype=">u2")
    padded = np.zeros((2, 6), np.uint8)  # 4 bytes of pixels + 2 of padding per row
    padded[:, :4] = millimetres.view(np.uint8).reshape(2, 4)
    msg = Image(height=2, width=2, encoding="16UC1", is_bigendian=1, step=6, data=padded.tobytes())
    np.testing.assert_allclose(rc.depth_image_to_metres(msg), [[0.0, 0.6], [1.5, 65.535]], rtol=1e-6)


def test_depth_nan_stays_no_measurement():
    depth = np.array([[np.nan, 0.7]], dtype=np.float32)
    back = rc.depth_image_to_metres(rc.depth_image_msg(depth, rc.header_msg(0, "cam"), "32FC1"))
    assert np.isnan(back[0, 0]) and back[0, 1] == pytest.approx(0.7)
    assert rc.depth_image_to_metres(rc.depth_image_msg(depth, rc.header_msg(0, "cam"), "16UC1"))[0, 0] == 0


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: setattr(m, "encoding", "rgb8"), "depth.encoding: 'rgb8' is not supported; expected 16UC1"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "depth.data: 11 bytes, expected step x height"),
    (lambda m: setattr(m, "step", 4), "depth.step: 4 bytes is shorter than one 16UC1 row of 3 pixels"),
    (lambda m: setattr(m, "width", 0), "depth.width/height: must be positive"),
])
def test_unusable_depth_messages_name_the_field(edit, message):
    msg = rc.depth_image_msg(DEPTH_M, rc.header_msg(0, "cam"))
    edit(msg)
    with pytest.raises(ValueError, match=message):
        rc.depth_image_to_metres(msg)
