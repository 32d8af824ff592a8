"""A second ROS 2 process for test_interfaces_dds.py: echoes what it hears.

Subscribes ``in/objects`` (hrpose_ros/ObjectPoseArray) and ``in/tf`` (tf2_msgs/TFMessage)
and republishes every message unchanged on ``out/objects`` and ``out/tf``. Runs until
killed. Run as a script: python dds_echo_peer.py
"""

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from tf2_msgs.msg import TFMessage

from hrpose_ros.msg import ObjectPoseArray


class EchoPeer(Node):
    def __init__(self):
        super().__init__("dds_echo_peer")
        for name, msg_type in (("objects", ObjectPoseArray), ("tf", TFMessage)):
            publisher = self.create_publisher(msg_type, f"out/{name}", 10)
            self.create_subscription(msg_type, f"in/{name}", publisher.publish, 10)


def main():
    rclpy.init()
    try:
        rclpy.spin(EchoPeer())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
