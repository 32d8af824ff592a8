"""End to end through a live pose_node over DDS: closed-loop latency, open-loop rate, its memory."""

from __future__ import annotations

import math
import os
import random
import shlex
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from benchmarks.backends import Backend
from benchmarks.frames import Frame
from benchmarks.machine import rss_mb
from benchmarks.ros_messages import RosSide
from hrpose_ros.node_driver import NodeDriver, NodeDriverError, pose_node_command
from hrpose_ros.types import ns_to_stamp, stamp_to_ns


class NodeRun:
    """A pose_node subprocess driven over DDS: images in, the time to its ~/poses PoseArray out.

    Built on :class:`hrpose_ros.node_driver.NodeDriver` (the replay evaluation's driver): image and
    camera_info go out reliable (the node's inputs are overridden to reliable through its
    qos_overrides parameters), so no frame is lost on the way: a closed loop waits for each
    answer. ``transport`` sets Fast DDS's builtin transports (FASTDDS_BUILTIN_TRANSPORTS) for
    both processes: "SHM" (shared memory only) or "" (Fast DDS's default: shared memory and
    UDP). The node's own per-stage latencies are read from its /diagnostics.
    """

    def __init__(self, executable: Sequence[str], params: dict[str, str], timeout: float, transport: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray

        tag = f"bench_{os.getpid()}_{random.randrange(10**6)}"
        self.node_name = f"pose_node_{tag}"
        transports = {"FASTDDS_BUILTIN_TRANSPORTS": transport or None}
        self.driver = NodeDriver(executable, self.node_name, params, timeout, env=transports)
        self.command = self.driver.command
        self.process = self.driver.process
        self.timeout = timeout
        self.received: dict[int, float] = {}
        self.driver.subscribe(PoseArray, f"/{self.node_name}/poses", self._on_poses)
        self.node_latency: dict[str, list[float]] = {}
        self.driver.subscribe(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos=10, output=False)

    def _on_diagnostics(self, msg) -> None:
        """Collect the node's "latency <stage> (ms)": "mean M max X" values (one mean per period)."""
        for status in msg.status:
            if self.node_name not in status.name:
                continue
            for kv in status.values:
                if kv.key.startswith("latency ") and kv.value.startswith("mean "):
                    stage = kv.key[len("latency ") :].replace(" (ms)", "")
                    self.node_latency.setdefault(stage, []).append(float(kv.value.split()[1]))

    def _on_poses(self, msg) -> None:
        self.received[stamp_to_ns(msg.header.stamp)] = time.perf_counter()

    def wait_ready(self) -> str:
        """Return "" once the node subscribes and publishes, else why not."""
        try:
            self.driver.wait_ready()
        except NodeDriverError as exc:
            return str(exc)
        return ""

    def send(self, messages, stamp_ns: int) -> float:
        """Publish camera_info + image of one frame stamped ``stamp_ns``; return the send time."""
        from builtin_interfaces.msg import Time

        image, info = messages
        sec, nanosec = ns_to_stamp(stamp_ns)
        stamp = Time(sec=sec, nanosec=nanosec)
        image.header.stamp = stamp
        info.header.stamp = stamp
        return self.driver.send(image, info)

    def closed_loop(self, messages: Sequence, count: int, warmup: int) -> tuple[list[float], str]:
        """Return (seconds from publish to PoseArray per frame, error): next image after the answer."""
        latencies = []
        stamp = 1_800_000_000_000_000_000
        for i in tqdm(range(-warmup, count), desc="  closed loop", unit="frame", leave=False):
            stamp += 1_000_000
            sent = self.send(messages[i % len(messages)], stamp)
            if not self.driver.spin_until(lambda s=stamp: s in self.received, self.timeout):
                error = self.driver.failure(f"no PoseArray for frame {i} within {self.timeout:.0f} s")
                return latencies, str(error)
            if i >= 0:
                latencies.append(self.received[stamp] - sent)
        return latencies, ""

    def open_loop(self, messages: Sequence, rate_hz: float, seconds: float) -> dict:
        """Publish frames at ``rate_hz`` for ``seconds``; return output rate (Hz) and latencies of answers."""
        stamp = 1_900_000_000_000_000_000
        sent_at: dict[int, float] = {}
        self.received.clear()
        start = time.perf_counter()
        next_send = start
        i = 0
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if now >= next_send:
                stamp += 1_000_000
                sent_at[stamp] = self.send(messages[i % len(messages)], stamp)
                i += 1
                next_send += 1.0 / rate_hz
            wait = max(0.0, min(0.005, next_send - time.perf_counter()))
            self.driver.executor.spin_once(timeout_sec=wait)
        self.driver.spin_until(lambda: False, 1.0)  # collect answers still in flight
        answered = [s for s in sent_at if s in self.received]
        window = [self.received[s] for s in answered]
        rate = (len(window) - 1) / (max(window) - min(window)) if len(window) > 1 else 0.0
        return {
            "input_hz": rate_hz,
            "sent": len(sent_at),
            "answered": len(answered),
            "output_hz": rate,
            "latency": [self.received[s] - sent_at[s] for s in answered],
        }

    def close(self) -> None:
        self.driver.close()


def measure_node(
    backend: Backend,
    frames: Sequence[Frame],
    count: int,
    warmup: int,
    open_seconds: float,
    timeout: float,
    ros: RosSide,
    transport: str,
) -> dict:
    """Return end-to-end latencies, rates, the node's own stage means and its resident memory."""
    messages = [ros.messages(f.image, f.camera, 0) for f in frames]
    params = {
        "backend": backend.node_backend,
        "model_path": backend.node_model,
        "precision": backend.node_precision,
        "estimator": backend.node_estimator,
        "device": "cpu",
    }
    result: dict = {"backend": backend.label, "transport": transport or "default", "params": params}
    try:
        run = NodeRun(pose_node_command(), params, timeout, transport)
    except ValueError as exc:
        return {**result, "error": str(exc)}
    result["command"] = " ".join(shlex.quote(c) for c in run.command)
    try:
        error = run.wait_ready()
        if not error:
            latencies, error = run.closed_loop(messages, count, warmup)
            result["closed_loop"] = latencies
            result["node_rss_mb"] = rss_mb(run.process.pid) if run.process.poll() is None else math.nan
            result["node_stage_means_ms"] = {k: float(np.mean(v)) for k, v in run.node_latency.items()}
            if not error and open_seconds > 0:
                result["open_loop"] = run.open_loop(messages, 30.0, open_seconds)
        if error:
            result["error"] = error
    finally:
        run.close()
    return result
