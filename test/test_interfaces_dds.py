"""The package's generated messages and tf2_msgs/TFMessage cross real DDS intact.

A second process (dds_echo_peer.py) echoes what this one publishes, so every field
is serialised, sent over Fast DDS, deserialised and sent back between two processes.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from geometry_msgs.msg import Pose, TransformStamped
from rclpy.node import Node
from tf2_msgs.msg import TFMessage

from hrpose_ros.msg import ObjectPose, ObjectPoseArray

pytestmark = pytest.mark.ros


def make_objects() -> ObjectPoseArray:
    msg = ObjectPoseArray()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    msg.header.frame_id = "camera_color_optical_frame"
    for instance_id, (name, class_id) in enumerate([("duck", 1), ("duck", 1), ("cylinder", 5)]):
        obj = ObjectPose()
        obj.class_name, obj.class_id, obj.instance_id = name, class_id, instance_id
        obj.score = 0.5 + 0.125 * instance_id
        obj.pose = Pose()
        obj.pose.position.x, obj.pose.position.y, obj.pose.position.z = 0.01 * instance_id, -0.02, 0.5
        obj.pose.orientation.x, obj.pose.orientation.w = 0.6, 0.8
        obj.keypoints_2d = [float(v) for v in range(18)]
        obj.keypoint_ids = list(range(9))
        obj.reprojection_error = 0.75
        msg.objects.append(obj)
    return msg


def make_tf() -> TFMessage:
    msg = TFMessage()
    for i in range(2):
        transform = TransformStamped()
        transform.header.stamp.sec = 1700000000
        transform.header.frame_id = "camera_color_optical_frame"
        transform.child_frame_id = f"hrpose/duck_{i}"
        transform.transform.translation.z = 0.5 + i
        transform.transform.rotation.z, transform.transform.rotation.w = 0.6, 0.8
        msg.transforms.append(transform)
    return msg


@pytest.fixture(scope="module")
def echo_peer():
    peer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dds_echo_peer.py"))])
    yield peer
    peer.terminate()
    try:
        peer.wait(timeout=10)
    except subprocess.TimeoutExpired:
        peer.kill()
        peer.wait()


@pytest.fixture(scope="module")
def node():
    rclpy.init()
    node = Node("test_interfaces_dds")
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.mark.parametrize(
    "name,msg_type,make", [("objects", ObjectPoseArray, make_objects), ("tf", TFMessage, make_tf)]
)
def test_message_survives_a_round_trip_between_processes(echo_peer, node, name, msg_type, make):
    received = []
    node.create_subscription(msg_type, f"out/{name}", received.append, 10)
    publisher = node.create_publisher(msg_type, f"in/{name}", 10)
    sent = make()
    deadline = time.monotonic() + 30.0
    while not received and time.monotonic() < deadline:
        assert echo_peer.poll() is None, "the echo peer process died"
        publisher.publish(sent)
        rclpy.spin_once(node, timeout_sec=0.2)
    assert received, f"no {msg_type.__name__} came back over DDS within 30 s"
    assert received[0] == sent
