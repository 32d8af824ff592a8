"""Drive a pose_node subprocess over DDS: start it as a launch file would, feed it images, wait for answers.

Shared by the replay evaluation (``hrpose-replay-eval --live-node``) and the benchmark's end-to-end
measurement. The node runs as its installed executable with ``--ros-args`` (a unique node name,
``image``/``camera_info`` remapped to private topics made reliable through ``qos_overrides``
parameters, so no frame is lost on the way); the driver is an rclpy node in its own context.
The node's stdout and stderr go to a temporary file, not a pipe: a full pipe would block the node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["NodeDriver", "NodeDriverError", "pose_node_command"]


class NodeDriverError(RuntimeError):
    """The pose_node subprocess did not start, exited, or did not answer in time."""


def pose_node_command() -> list[str]:
    """Return the pose_node executable: the colcon install space first, then PATH, then ``python -m``."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "lib" / "hrpose_ros" / "pose_node"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("pose_node")
    return [found] if found else [sys.executable, "-m", "hrpose_ros.pose_node"]


class NodeDriver:
    """A pose_node subprocess and the rclpy node that publishes its camera_info + image (+ depth).

    ``params`` are node parameters (``-p name:=value``); ``env`` overrides environment variables
    for both processes while they start (e.g. FASTDDS_BUILTIN_TRANSPORTS). ``depth``: also publish
    the node's ``depth`` topic (the node needs ``use_depth: true``). After construction,
    subscribe to the node's outputs with :meth:`subscribe`, then call :meth:`wait_ready`.
    """

    def __init__(
        self,
        command: Sequence[str],
        name: str,
        params: Mapping[str, object] = {},  # noqa: B006 - read only
        timeout: float = 60.0,
        env: Mapping[str, str | None] = {},  # noqa: B006 - read only
        depth: bool = False,
    ):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        self.name = name
        self.namespace = f"/{name}"
        self.timeout = float(timeout)
        ns = self.namespace
        args = ["--ros-args", "-r", f"__node:={name}", "-r", f"image:={ns}/image"]
        args += ["-r", f"camera_info:={ns}/camera_info"]
        inputs = ["image", "camera_info", *(["depth"] if depth else [])]
        if depth:
            args += ["-r", f"depth:={ns}/depth"]
        params = {
            **{f"qos_overrides.{ns}/{topic}.subscription.reliability": "reliable" for topic in inputs},
            **params,
        }
        for key, value in params.items():
            args += ["-p", f"{key}:={value}"]
        self.command = [*command, *args]
        self._log = tempfile.TemporaryFile(mode="w+")
        saved = {key: os.environ.get(key) for key in env}
        _update_env(env)
        try:
            self.process = subprocess.Popen(
                self.command, stdout=self._log, stderr=subprocess.STDOUT, text=True
            )
            self.context = rclpy.Context()
            rclpy.init(context=self.context)
            self.node = rclpy.create_node(f"{name}_driver", context=self.context)
        finally:
            _update_env(saved)
        self.qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{ns}/camera_info", self.qos)
        self.image_pub = self.node.create_publisher(Image, f"{ns}/image", self.qos)
        self.depth_pub = self.node.create_publisher(Image, f"{ns}/depth", self.qos) if depth else None
        self._outputs = []
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def subscribe(self, msg_type, topic: str, callback, qos=None, output: bool = True):
        """Return a driver subscription to ``topic`` (reliable by default).

        :meth:`wait_ready` waits until the node publishes every ``output`` topic.
        """
        subscription = self.node.create_subscription(msg_type, topic, callback, qos or self.qos)
        if output:
            self._outputs.append(subscription)
        return subscription

    def spin_until(self, done: Callable[[], bool], seconds: float, period: float = 0.01) -> bool:
        """Spin the driver until ``done()``; False on timeout or once the node has exited."""
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            self.executor.spin_once(timeout_sec=period)
        return True

    def output(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines the node printed (stdout and stderr)."""
        self._log.flush()
        self._log.seek(0)
        return "\n".join(self._log.read().strip().splitlines()[-lines:])

    def failure(self, what: str) -> NodeDriverError:
        """Return the error for ``what`` went wrong, with the node's exit code and last output."""
        if self.process.poll() is not None:
            what = f"{what}: pose_node exited with code {self.process.returncode}"
        output = self.output()
        return NodeDriverError(what + (f"; its last output:\n{output}" if output else ""))

    def wait_ready(self) -> None:
        """Block until the node subscribes to its inputs and publishes every output; else NodeDriverError."""
        outputs = list(self._outputs)

        def connected() -> bool:
            return (
                self.info_pub.get_subscription_count() > 0
                and self.image_pub.get_subscription_count() > 0
                and (self.depth_pub is None or self.depth_pub.get_subscription_count() > 0)
                and all(s.get_publisher_count() > 0 for s in outputs)
            )

        if not self.spin_until(connected, self.timeout):
            raise self.failure(f"pose_node not connected within {self.timeout:.0f} s")

    def send(self, image_msg, info_msg, depth_msg=None) -> float:
        """Publish the image then its camera_info (stamps as given); return its time.perf_counter().

        Image first, as image_transport's CameraPublisher does (since pose_node runs its network
        outside the executor, both orders measure the same: 40 closed-loop frames, 152-203 ms).
        ``depth_msg`` goes before both: the node buffers depth and looks it up once the pair is complete.
        """
        if depth_msg is not None and self.depth_pub is None:
            raise ValueError("depth_msg: this driver was made without depth=True")
        sent = time.perf_counter()
        if depth_msg is not None:
            self.depth_pub.publish(depth_msg)
        self.image_pub.publish(image_msg)
        self.info_pub.publish(info_msg)
        return sent

    def close(self) -> None:
        """Stop the node (terminate, then kill after 10 s) and shut the driver's context down."""
        import rclpy

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self.context.ok():
            self.executor.shutdown()
            self.node.destroy_node()
            rclpy.shutdown(context=self.context)


def _update_env(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
