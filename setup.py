"""Python packaging of hrpose_ros: `pip install -e .` for use without colcon.

Inside a ROS 2 workspace the package is built by ament_cmake (CMakeLists.txt), which
generates the interfaces and installs this same Python package; see README "Layout".
Metadata and entry points are in setup.cfg.
"""

from setuptools import setup

setup()
