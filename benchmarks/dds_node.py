"""A pose_node process with default parameters, and a monitor that hears everything it says.

Shared by the delivery benchmark, the fuzz and soak runs and their CI tests: the node is the
installed executable started as launch/pose.launch.py starts it (config/pose_node.yaml, inputs
remapped to /camera/image_raw and /camera/camera_info), the monitor an rclpy node spinning in a
thread of the caller's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from hrpose_ros.node_driver import pose_node_command

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "pose_node.yaml"
PROFILE = REPO / "config" / "fastdds_profile.xml"
CAMERA = "/camera"


def node_command(**parameters) -> list[str]:
    """Return the pose_node command line of the launch file's defaults, plus ``parameters`` (-p)."""
    command = [*pose_node_command(), "--ros-args", "-r", "__node:=pose_node",
               "--params-file", str(PARAMS_FILE), "-r", f"image:={CAMERA}/image_raw",
               "-r", f"camera_info:={CAMERA}/camera_info"]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return command


def input_reliability(reliability: str) -> dict[str, str]:
    """Return the qos_overrides parameters that make the node's two inputs ``reliability``."""
    return {f"qos_overrides.{CAMERA}/{topic}.subscription.reliability": reliability
            for topic in ("image_raw", "camera_info")}


def start_node(log_path: Path, env: dict[str, str] | None = None, **parameters) -> subprocess.Popen:
    """Start pose_node (stdout and stderr to ``log_path``); ``env`` is added to this environment."""
    log = open(log_path, "w")  # noqa: SIM115 - the child holds it; closed with the process
    return subprocess.Popen(node_command(**parameters), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def stop_node(process: subprocess.Popen) -> int | None:
    """Stop pose_node with SIGINT (as ros2 launch does); return its exit code, None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def rss_mb(pid: int) -> float:
    """Return the resident set size of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class Monitor:
    """An rclpy node in its own context and thread: records ~/objects stamps, /diagnostics and /rosout."""

    def __init__(self, name: str = "delivery_monitor"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import Log
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from hrpose_ros.msg import ObjectPoseArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.served: dict[tuple[int, int], float] = {}  # stamp -> time.monotonic() of the answer
        self.diagnostics: dict[str, str] = {}
        self.logs: list = []
        reliable = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(ObjectPoseArray, "/pose_node/objects", self._on_objects, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self.node.create_subscription(Log, "/rosout", self._on_log, QoSProfile(depth=1000))
        self.image_pub = self.node.create_publisher(Image, f"{CAMERA}/image_raw", QoSProfile(depth=10))
        self.info_pub = self.node.create_publisher(CameraInfo, f"{CAMERA}/camera_info", QoSProfile(depth=10))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_objects(self, msg) -> None:
        with self.lock:
            self.served.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), time.monotonic())

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("pose_node"):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _on_log(self, msg) -> None:
        if msg.name.endswith("pose_node"):
            with self.lock:
                self.logs.append(msg)

    def counter(self, key: str) -> int:
        """Return the latest /diagnostics total ``key`` (0 before the first message)."""
        with self.lock:
            return int(self.diagnostics.get(key, "0"))

    def wait_for(self, predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
        """Return predicate()'s first truthy value; AssertionError on timeout or when ``process`` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if process is not None and process.poll() is not None:
                raise AssertionError(f"pose_node exited with {process.returncode} while waiting for {what}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_node_ready(self, process: subprocess.Popen, timeout: float = 120.0) -> None:
        """Wait until pose_node subscribes the camera and has published /diagnostics."""
        self.wait_for(lambda: (self.image_pub.get_subscription_count() > 0
                               and self.info_pub.get_subscription_count() > 0 and self.diagnostics),
                      timeout, "pose_node to subscribe and publish /diagnostics", process)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)
