"""Images reach pose_node over real DDS: a best-effort camera in another process, and malformed input.

One pose_node with the launch file's defaults (best-effort inputs, the shipped Fast DDS profile
from conftest.py, as env.sh and the launch file give it) serves the module; benchmarks/ holds the
camera peer, the monitor and the fuzzer that `make delivery` and `make fuzz` run longer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.dds_node import REPO, Monitor, start_node, stop_node
from benchmarks.fuzz import fuzz, log_budget

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """(monitor, pose_node process): the node with default parameters, ready."""
    log = tmp_path_factory.mktemp("delivery") / "pose_node.log"
    monitor = Monitor("delivery_test")
    process = start_node(log)
    try:
        monitor.wait_node_ready(process)
        yield monitor, process
    finally:
        code = stop_node(process)
        monitor.close()
    assert code == 0, f"pose_node did not stop cleanly ({code}):\n{log.read_text()[-3000:]}"


def test_best_effort_camera_in_another_process_reaches_the_node(node):
    monitor, process = node
    received = monitor.counter("images received")
    peer = subprocess.run([sys.executable, "-m", "benchmarks.camera_peer", "--n", "10", "--rate", "2",
                           "--reliability", "best_effort", "--stamp-base", "1000"],
                          cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=90)
    assert peer.returncode == 0, peer.stdout + peer.stderr
    stamps = [(1000 + i, 0) for i in range(10)]
    monitor.wait_for(lambda: all(s in monitor.served for s in stamps), 30.0, "10 frames served", process)
    monitor.wait_for(lambda: monitor.counter("images received") - received >= 10, 5.0, "diagnostics")
    assert monitor.counter("images received") - received == 10
    assert monitor.counter("lost in transport (images)") == 0


def test_good_frames_between_100_malformed_pairs_are_all_served(node):
    monitor, process = node
    result = fuzz(monitor, process, n_bad=100, good_every=5, seed=35)
    assert (result.good_served, result.unserved) == (20, [])
    assert process.poll() is None
    assert max(result.log_kinds.values(), default=0) <= log_budget(result), result.log_kinds
