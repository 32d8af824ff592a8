"""Test session set-up shared by all tests.

ROS tests talk over real DDS. Each pytest session gets its own ROS_DOMAIN_ID and stays
on localhost, so parallel runs on one machine (a developer's and CI's) never hear each
other. Set before anything imports rclpy; subprocesses inherit it.
"""

import os
import random
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# The shipped transports (what env.sh and the launch file give): without them Fast DDS loses
# 640x480 images whole on best-effort links.
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      str(Path(__file__).resolve().parents[1] / "config" / "fastdds_profile.xml"))

# torch, torchvision and triton load before any test creates the renderer's EGL context (moderngl
# on Mesa): loaded after it they crash the process, whatever subset of files runs first.
import hrpose_ros.networks  # noqa: E402,F401
