"""hrpose_ros: real-time 6D object pose estimation from one RGB camera, for ROS 2.

The core (geometry, metrics, data, networks, decoding, engines, pipeline) imports
without ROS; only the node, message conversion and bag modules need rclpy.
"""

# The generated interfaces (hrpose_ros.msg) are installed by rosidl into the colcon
# install space, while a developer's checkout holds the Python sources: let one
# ``hrpose_ros`` package span both directories. In a plain ROS 2 install both live in
# one directory and this is a no-op. (Why one package name: see README, "Layout".)
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
