"""Soak a live pose_node: 30 Hz 640x480 frames for minutes, RSS each second, latency p99 per minute.

    python -m benchmarks.soak --minutes 10 --out out/soak    # make soak (not in CI)

The node runs with default parameters (the shipped model); this process publishes over DDS and
times each frame from publish to its ~/objects answer (frames the node drops on purpose have no
answer and no latency). Passes when RSS after the first minute (warm-up) grows < 5 %, the
per-minute latency p99 stays within 1.5x of the first full minute's, and the node never dies.
Writes soak.png (RSS and latency over time) and soak.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.camera_peer import camera_messages
from benchmarks.dds_node import PROFILE, Monitor, rss_mb, start_node, stop_node

WARMUP_S = 60.0


def textured_frames(count: int = 8, seed: int = 0) -> list[bytes]:
    """Return ``count`` 640x480 rgb8 frames: grey with noise-textured boxes, so the detector has work."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        rgb = np.full((480, 640, 3), 110, np.uint8)
        for _ in range(6):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            w, h = rng.integers(30, 80), rng.integers(30, 80)
            rgb[y:y + h, x:x + w] = rng.integers(0, 255, (h, w, 3), np.uint8)
        frames.append(rgb.tobytes())
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    args = parser.parse_args(argv)
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
    args.out.mkdir(parents=True, exist_ok=True)
    monitor = Monitor("soak_monitor")
    process = start_node(args.out / "pose_node.log")
    sent: dict[tuple[int, int], float] = {}
    rss: list[tuple[float, float]] = []
    frames = textured_frames()
    try:
        monitor.wait_node_ready(process)
        start = time.monotonic()
        duration = 60.0 * args.minutes
        next_sample, i = start, 0
        while (now := time.monotonic()) < start + duration and process.poll() is None:
            if now >= next_sample:
                rss.append((now - start, rss_mb(process.pid)))
                next_sample += 1.0
            image, info = camera_messages(100_000 + i)
            image.data = frames[i % len(frames)]
            sent[(image.header.stamp.sec, 0)] = time.monotonic()
            monitor.image_pub.publish(image)
            monitor.info_pub.publish(info)
            i += 1
            time.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        time.sleep(2.0)
        crashed = process.poll() is not None
        keys = ("images received", "frames processed", "dropped frames (queue)",
                "lost in transport (images)", "failed frames")
        counters = {key: monitor.counter(key) for key in keys}
    finally:
        code = stop_node(process)
        monitor.close()

    with monitor.lock:
        answers = [(sent[s] - start, served - sent[s]) for s, served in monitor.served.items() if s in sent]
    minutes = int(np.ceil(duration / 60.0))
    table = ["| minute | frames answered | latency p50 (ms) | p99 (ms) | RSS mean (MiB) |",
             "|---|---|---|---|---|"]
    p99s = []
    for m in range(minutes):
        lat = [1e3 * d for t, d in answers if 60 * m <= t < 60 * (m + 1)]
        mem = [r for t, r in rss if 60 * m <= t < 60 * (m + 1)]
        p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if lat else (np.nan, np.nan)
        p99s.append(p99)
        mean_rss = np.mean(mem) if mem else np.nan
        table.append(f"| {m + 1} | {len(lat)} | {p50:.0f} | {p99:.0f} | {mean_rss:.1f} |")
    after_warmup = [r for t, r in rss if t >= WARMUP_S]
    growth = (100.0 * (np.mean(after_warmup[-10:]) - np.mean(after_warmup[:10])) / np.mean(after_warmup[:10])
              if len(after_warmup) >= 20 else np.nan)
    reference = p99s[1] if len(p99s) > 1 else p99s[0]
    p99_ratio = np.nanmax(p99s[1:]) / reference if len(p99s) > 2 else 1.0
    summary = (f"{args.minutes:g} min at {args.rate:g} Hz, {i} frames published; node: "
               + ", ".join(f"{k} {v}" for k, v in counters.items())
               + f"; RSS growth after warm-up {growth:+.1f} %; "
               f"worst minute p99 / minute-2 p99 {p99_ratio:.2f}; "
               f"crashed: {crashed}; exit code {code}")
    text = summary + "\n\n" + "\n".join(table) + "\n"
    print(text)
    (args.out / "soak.md").write_text(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_rss.plot([t for t, _ in rss], [r for _, r in rss])
    ax_rss.axvline(WARMUP_S, color="grey", linestyle=":")
    ax_rss.set_ylabel("pose_node RSS (MiB)")
    ax_lat.plot([t for t, _ in answers], [1e3 * d for _, d in answers], ".", markersize=1)
    ax_lat.set_ylabel("publish -> ~/objects (ms)")
    ax_lat.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(args.out / "soak.png", dpi=100)
    ok = not crashed and code == 0 and growth < 5.0 and p99_ratio < 1.5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
