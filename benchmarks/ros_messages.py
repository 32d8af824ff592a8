"""The ROS side of a frame in process: Image + CameraInfo messages in, pose_node's messages out."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from hrpose_ros.types import CameraModel, ObjectModel, ns_to_stamp


class RosSide:
    """rclpy publishers of what pose_node publishes per frame, each with a subscriber, in one context."""

    def __init__(self, objects: Sequence[ObjectModel]):
        import rclpy
        from geometry_msgs.msg import PoseArray
        from tf2_msgs.msg import TFMessage
        from visualization_msgs.msg import MarkerArray

        from hrpose_ros.msg import ObjectPoseArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"hrpose_benchmark_{os.getpid()}", context=self.context)
        self.listener = rclpy.create_node(f"hrpose_benchmark_listener_{os.getpid()}", context=self.context)
        self.objects = {o.obj_id: o for o in objects}
        self.shown: frozenset = frozenset()
        self.TFMessage = TFMessage
        self.publishers = {}
        for name, kind in (
            ("objects", ObjectPoseArray),
            ("poses", PoseArray),
            ("tf", TFMessage),
            ("markers", MarkerArray),
        ):
            topic = f"/hrpose_benchmark_{os.getpid()}/{name}"
            self.publishers[name] = self.node.create_publisher(kind, topic, 10)
            self.listener.create_subscription(kind, topic, lambda _msg: None, 10)

    def messages(self, rgb: np.ndarray, camera: CameraModel, stamp_ns: int):
        """Return (Image, CameraInfo) messages of one frame, as a camera driver publishes them."""
        from std_msgs.msg import Header

        from hrpose_ros import ros_conversions

        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec, header.stamp.nanosec = ns_to_stamp(stamp_ns)
        return ros_conversions.rgb_to_image(rgb, header), ros_conversions.camera_info_msg(camera, header)

    def publish(self, poses, header) -> None:
        """Build and publish ObjectPoseArray, PoseArray, TF and markers for ``poses`` (as pose_node)."""
        from hrpose_ros import ros_conversions as convert

        self.publishers["objects"].publish(convert.object_pose_array_msg(poses, header))
        self.publishers["poses"].publish(convert.pose_array_msg(poses, header))
        if poses:
            self.publishers["tf"].publish(
                self.TFMessage(transforms=convert.transform_msgs(poses, header, "hrpose/"))
            )
        markers, self.shown = convert.marker_array_msg(poses, self.objects, header, self.shown)
        self.publishers["markers"].publish(markers)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        self.listener.destroy_node()
        rclpy.shutdown(context=self.context)
