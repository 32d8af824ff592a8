"""Fuzz a live pose_node over DDS: malformed Image/CameraInfo pairs with good frames between them.

    python -m benchmarks.fuzz --n 1000 --out out/fuzz      # make fuzz

Every ``--good-every`` malformed pairs, one good 640x480 frame follows; the run waits until the node
answers it on ~/objects. Passes when the node never dies, every good frame is served, and its
logs stay throttled (per kind of problem, at most one message per log_throttle_period).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.camera_peer import FRAME_ID, WIDTH, camera_messages
from benchmarks.dds_node import PROFILE, Monitor, start_node, stop_node

ENCODINGS = ("", "rgb8", "bgr8", "mono8", "rgba8", "bgra8", "mono16", "16UC1", "32FC1", "yuv422",
             "bayer_rggb8", "jpeg", "rgb16", "8UC3", "nonsense\x00enc")
FAR_FUTURE_S = 10**9  # ~32 years after the good frames' stamps
THROTTLE_PERIOD = 5.0  # config/pose_node.yaml's log_throttle_period


def _mutate_image(rng: np.random.Generator, image) -> str:
    """Break ``image`` one random way; return the name of the way."""
    kind = rng.choice(["encoding", "size", "step", "truncated", "oversized", "empty", "huge"])
    if kind == "encoding":
        image.encoding = str(rng.choice(ENCODINGS[2:]))  # all but "" and rgb8 would be valid-looking
    elif kind == "size":
        image.width, image.height = int(rng.integers(0, 2000)), int(rng.integers(0, 2000))
    elif kind == "step":
        image.step = int(rng.choice([0, 1, 3 * WIDTH - 1, 3 * WIDTH + 7, 2**31 - 1]))
    elif kind == "truncated":
        image.data = bytes(image.data[: int(rng.integers(0, len(image.data)))])
    elif kind == "oversized":
        image.data = bytes(image.data) + bytes(int(rng.integers(1, 4096)))
    elif kind == "empty":
        image.data, image.width, image.height, image.step = b"", 0, 0, 0
    else:  # claims 100k x 100k pixels
        image.width = image.height = 100_000
        image.step = 300_000
    return f"image:{kind}"


def _mutate_info(rng: np.random.Generator, info) -> str:
    """Break ``info`` one random way; return the name of the way."""
    kind = rng.choice(["k_nan", "k_zero", "k_negative", "k_inf", "size", "d_nan", "d_model"])
    K = np.array(info.k, dtype=float)
    if kind == "k_nan":
        K[rng.integers(0, 9)] = math.nan
    elif kind == "k_zero":
        K[:] = 0.0
    elif kind == "k_negative":
        K[0], K[4] = -abs(K[0]), -abs(K[4])
    elif kind == "k_inf":
        K[2] = math.inf
    elif kind == "size":
        info.width, info.height = int(rng.integers(0, 4000)), int(rng.integers(0, 4000))
    elif kind == "d_nan":
        info.d = [math.nan] * 5
    else:
        info.distortion_model, info.d = "rational_polynomial", [0.1] * int(rng.integers(0, 3))
    info.k = K.tolist()
    return f"info:{kind}"


def malformed_pair(rng: np.random.Generator, stamp_sec: int, last_good_sec: int):
    """Return (Image, CameraInfo, kind): a frame broken one or two ways, stamped near ``stamp_sec``."""
    image, info = camera_messages(stamp_sec)
    kinds = []
    what = rng.choice(["image", "info", "both", "frame_id", "stamp"])
    if what in ("image", "both"):
        kinds.append(_mutate_image(rng, image))
    if what in ("info", "both"):
        kinds.append(_mutate_info(rng, info))
    if what == "frame_id":
        info.header.frame_id = str(rng.choice(["", "other_camera", FRAME_ID + "_"]))
        kinds.append("frame_id")
    if what == "stamp":
        way = rng.choice(["old", "future", "apart"])
        if way == "old":  # older than the last good frame: out of order
            image.header.stamp.sec = info.header.stamp.sec = max(0, last_good_sec - int(rng.integers(1, 100)))
        elif way == "future":
            image.header.stamp.sec = info.header.stamp.sec = stamp_sec + FAR_FUTURE_S
        else:  # image and camera_info never match
            info.header.stamp.sec = stamp_sec + 1
            info.header.stamp.nanosec = 500_000_000
        kinds.append(f"stamp:{way}")
    return image, info, "+".join(kinds)


@dataclass
class FuzzResult:
    bad_pairs: int = 0
    good_sent: int = 0
    good_served: int = 0
    unserved: list = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    node_logs: int = 0
    log_kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def fuzz(monitor: Monitor, process, n_bad: int, good_every: int = 5, seed: int = 0,
         serve_timeout: float = 10.0) -> FuzzResult:
    """Publish ``n_bad`` malformed pairs through ``monitor``, a good frame after every ``good_every``.

    Good frames have increasing stamps; each is waited for on ~/objects (``serve_timeout`` s).
    """
    rng = np.random.default_rng(seed)
    result = FuzzResult()
    logs_before = len(monitor.logs)
    started = time.monotonic()
    stamp = 2_000_000  # seconds; every good frame and most bad ones 1 s apart
    last_good = stamp
    for i in range(n_bad):
        stamp += 1
        image, info, kind = malformed_pair(rng, stamp, last_good)
        monitor.image_pub.publish(image)
        monitor.info_pub.publish(info)
        result.bad_pairs += 1
        result.kinds[kind.split("+")[0]] += 1
        if (i + 1) % good_every == 0:
            stamp += 1
            last_good = stamp
            good_image, good_info = camera_messages(stamp)
            monitor.image_pub.publish(good_image)
            monitor.info_pub.publish(good_info)
            result.good_sent += 1
            try:
                monitor.wait_for(lambda s=stamp: (s, 0) in monitor.served, serve_timeout,
                                 f"good frame {stamp} served", process)
                result.good_served += 1
            except AssertionError:
                if process.poll() is not None:
                    raise
                result.unserved.append((stamp, kind))
    result.seconds = time.monotonic() - started
    time.sleep(1.5)  # the last throttled messages reach /rosout
    logs = monitor.logs[logs_before:]
    result.node_logs = len(logs)
    # The node throttles per kind: the reason up to its first colon ("frame skipped: image.encoding").
    result.log_kinds = Counter(":".join(log.msg.split(":")[:2])[:80] for log in logs)
    return result


def log_budget(result: FuzzResult, throttle_period: float = THROTTLE_PERIOD) -> int:
    """Return the most log messages throttling allows per kind of message over the run."""
    return int(result.seconds // throttle_period) + 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="malformed Image/CameraInfo pairs")
    parser.add_argument("--good-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"))
    args = parser.parse_args(argv)
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
    args.out.mkdir(parents=True, exist_ok=True)
    monitor = Monitor("fuzz_monitor")
    process = start_node(args.out / "pose_node.log")
    try:
        monitor.wait_node_ready(process)
        result = fuzz(monitor, process, args.n, args.good_every, args.seed)
    finally:
        code = stop_node(process)
        monitor.close()
    budget = log_budget(result)
    worst = max(result.log_kinds.values(), default=0)
    messages = 2 * result.bad_pairs
    lines = [f"malformed pairs {result.bad_pairs} ({messages} messages) in {result.seconds:.0f} s; "
             f"good frames served {result.good_served}/{result.good_sent}; node exit code {code}",
             f"node log messages {result.node_logs}; most of one kind {worst} (throttle budget {budget})",
             "malformed by: " + ", ".join(f"{k} {v}" for k, v in sorted(result.kinds.items()))]
    lines += [f"  log x{n}: {kind}" for kind, n in result.log_kinds.most_common()]
    lines += [f"  NOT SERVED: good frame {s} after {kind}" for s, kind in result.unserved]
    text = "\n".join(lines)
    print(text)
    (args.out / "fuzz.txt").write_text(text + "\n")
    ok = result.good_served == result.good_sent and code == 0 and worst <= budget
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
