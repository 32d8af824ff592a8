"""Delivery of camera frames to a live pose_node, per QoS pairing and rate: what is lost where.

    python -m benchmarks.delivery --n 300 --rates 15 30 --out out/delivery    # make delivery
    python -m benchmarks.delivery --profile none    # Fast DDS's default transports, for comparison

A camera process (benchmarks/camera_peer.py) publishes N 640x480 rgb8 frames + camera_info, reliable
or best effort; pose_node (default parameters) subscribes reliable or best effort. Per run, from
the node's /diagnostics totals: frames received by the node, processed, dropped on purpose (its
one-slot drop-oldest queue), unmatched in the image/camera_info synchroniser, and the losses DDS
reported; published minus received is what the transport lost. Writes delivery.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.dds_node import PROFILE, REPO, Monitor, input_reliability, start_node, stop_node

COUNTERS = {"received": "images received", "processed": "frames processed",
            "dropped": "dropped frames (queue)", "unmatched": "unmatched messages (sync)",
            "dds_lost": "lost in transport (images)"}
COLUMNS = ("node_input", "camera", "rate_hz", "published", "received", "lost", "processed", "dropped",
           "unmatched", "dds_lost")


def counters(monitor: Monitor) -> dict[str, int]:
    return {name: monitor.counter(key) for name, key in COUNTERS.items()}


def run_camera(monitor: Monitor, process, reliability: str, rate: float, n: int, stamp_base: int,
               env: dict[str, str]) -> dict[str, int | str]:
    """Publish ``n`` frames from a camera process; return the counts of this run."""
    before = counters(monitor)
    peer = subprocess.run([sys.executable, "-m", "benchmarks.camera_peer", "--n", str(n), "--rate", str(rate),
                           "--reliability", reliability, "--stamp-base", str(stamp_base), "--wait", "8"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=n / rate + 120)
    if peer.returncode == 3:
        return {"published": 0, "received": "incompatible QoS"}
    if peer.returncode != 0:
        raise RuntimeError(f"camera_peer failed:\n{peer.stdout}{peer.stderr}")
    # The node drains its queue, then two diagnostics periods carry the final totals.
    settled, last = time.monotonic() + 60, None
    while time.monotonic() < settled:
        time.sleep(2.5)
        now = counters(monitor)
        if now == last:
            break
        last = now
    if process.poll() is not None:
        raise RuntimeError(f"pose_node exited with {process.returncode}")
    after = counters(monitor)
    row = {name: after[name] - before[name] for name in COUNTERS}
    row["published"] = n
    row["lost"] = n - row["received"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="frames per run")
    parser.add_argument("--rates", type=float, nargs="+", default=[15.0, 30.0])
    parser.add_argument("--profile", default=str(PROFILE),
                        help="Fast DDS profile for the camera and the node; 'none' = Fast DDS defaults")
    parser.add_argument("--out", type=Path, default=Path("out/delivery"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = "" if args.profile == "none" else str(Path(args.profile).resolve())
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": profile}
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))  # the monitor's own transports
    monitor = Monitor("delivery_monitor")
    rows, stamp_base = [], 10_000
    try:
        for node_input in ("best_effort", "reliable"):
            log = args.out / f"pose_node_{node_input}.log"
            process = start_node(log, env, **input_reliability(node_input))
            try:
                monitor.wait_node_ready(process)
                for camera in ("best_effort", "reliable"):
                    for rate in args.rates:
                        row = run_camera(monitor, process, camera, rate, args.n, stamp_base, env)
                        stamp_base += args.n + 10
                        rows.append({"node_input": node_input, "camera": camera, "rate_hz": f"{rate:g}",
                                     **row})
                        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
                        if row["received"] == "incompatible QoS":
                            break
            finally:
                stop_node(process)
    finally:
        monitor.close()
    title = (f"Delivery of {args.n} 640x480 rgb8 frames to pose_node, Fast DDS profile: "
             f"{profile or 'none (Fast DDS defaults)'}")
    text = f"{title}\n\n{markdown(rows)}\n"
    print("\n" + text)
    (args.out / "delivery.md").write_text(text)
    with open(args.out / "delivery.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    transport_lost = sum(r["lost"] for r in rows if isinstance(r.get("received"), int))
    print(f"frames lost in transport: {transport_lost}")
    return 0 if transport_lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
