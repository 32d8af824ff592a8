"""hrpose_ros performance benchmark: where the time of one 640x480 frame goes, per backend.

    make bench                                   # full run (>= 100 frames per measurement), out/bench
    python benchmarks/benchmark.py --quick       # a few frames per measurement, to check it works
    python benchmarks/benchmark.py --checkpoint runs/student_kd/last.pt --out out/bench_kd

What it measures, all in one run so that ratios are comparable on a shared machine:

1. per stage, median and p90 over ``--frames`` frames at 640x480: message -> image
   (hrpose_ros.ros_conversions, as pose_node does it), preprocess, inference, peak extraction
   + grouping (codec decode), PnP, message build + publish (real rclpy publishers, with
   subscribers); for torch fp32, torch bf16 + channels_last (autocast, AMX when present),
   ONNX Runtime fp32 and ONNX Runtime int8 (static QDQ, training/quantize_int8.py), and int8
   once more with ORT's idle worker threads blocking instead of spinning. The
   backends take turns in blocks of 10 frames, so a load change on the machine hits all alike;
2. end to end through the live node: the installed ``pose_node`` executable is started as a
   subprocess per backend; an image + camera_info are published and the time until its
   ``~/poses`` PoseArray arrives is measured (closed loop), then images are published at 30 Hz
   and the rate of PoseArrays counted (open loop);
3. the network's achieved GFLOP/s (FLOPs from torch.utils.flop_counter) next to a 2048x2048
   matmul's GFLOP/s in fp32 and bf16 measured in the same run: how close to the machine's limit;
4. decode + PnP latency vs number of instances (1, 5, 10, 20) on maps encoded by the codec
   from ground truth (real maps, not fakes), and inference + decode latency vs input size;
5. resident memory (psutil) of this process and of each node;
6. which goals (benchmarks/goals.yaml) are met and by how much.

Without ``--checkpoint`` it uses the shipped weights (hrpose_ros/assets/weights) when present.
Otherwise it builds a student with random weights whose output layer is zero: latency does not
depend on weight values (dense convolutions do the same arithmetic), but random maps would
decode into hundreds of spurious peaks, so with random weights the decode and PnP stages read
the codec's encoding of the synthetic frame's ground truth instead of the network's output,
and the live node (which runs the network itself) sees empty maps: its end-to-end time then
excludes decode + PnP, which are reported next to it. The printout says which case applies.

Writes to ``--out``: benchmark.json (every number), stages.csv, benchmark.png, report.txt
(the printed tables), and the models it exported (model.onnx, model.int8.onnx).

``--estimator crops`` measures the crop estimator instead (hrpose_ros.crop_pipeline; weights:
``--checkpoint``, default the shipped crops file): per stage (message -> image, detection, crops,
inference, decode, PnP, message build + publish) for torch fp32 and ONNX Runtime fp32, the frames
found per frame, and the live node (``estimator:=crops``) closed and open loop; with ``--depth``
also the depth refinement per instance and per frame on the split's depth images. The HRPose-only
measurements (bf16, int8, GFLOP/s, maps encoded from ground truth, input sizes, goals) are skipped.

This file is the command line; each job is a module beside it (benchmarks/README.md lists them).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.run_crops import run_crops
from benchmarks.run_hrpose import run_hrpose
from benchmarks.settings import QUICK, Settings
from hrpose_ros.estimators import ESTIMATORS
from hrpose_ros.networks import BACKBONES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--estimator",
        default="hrpose",
        choices=ESTIMATORS,
        help="pose estimator to measure: hrpose (the full benchmark) or crops (stages and live node only)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="HRPose checkpoint (.pt); default: the shipped weights, else a student with random weights "
        "(--estimator crops: a crops weights file, default the shipped one)",
    )
    parser.add_argument(
        "--variant",
        default="student",
        choices=sorted(BACKBONES),
        help="network of the random-weights checkpoint",
    )
    parser.add_argument(
        "--input-size",
        default="640x480",
        help="network input WxH of the random-weights checkpoint (multiples of 32)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--quick", action="store_true", help="a few frames per measurement")
    parser.add_argument("--frames", type=int, help="frames per in-process stage measurement (default 100)")
    parser.add_argument(
        "--node-frames", type=int, help="closed-loop frames through each live node (default 100)"
    )
    parser.add_argument(
        "--instances", type=int, default=None,
        help="objects per synthetic frame (default 10); with --split and --estimator crops: use only the "
        "split's frames with this many annotated objects",
    )
    parser.add_argument("--split", type=Path,
                        help="BOP split or scene folder whose frames to use instead of synthetic ones")
    parser.add_argument(
        "--calib-dir",
        type=Path,
        help="BOP split of synthetic images to calibrate int8 on (default: data/train "
        "when present, else the benchmark's own frames)",
    )
    parser.add_argument("--depth", action="store_true",
                        help="crops: also time depth refinement on the --split frames' depth images")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--no-node", action="store_true", help="skip the live pose_node measurements")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch and ORT threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--node-timeout", type=float, default=120.0)
    parser.add_argument(
        "--transport",
        choices=("shm", "default"),
        default="shm",
        help="Fast DDS transport of the live-node runs: shm (FASTDDS_BUILTIN_TRANSPORTS=SHM) or Fast DDS's "
        "default (SHM + UDP); the full run also measures the other one for one backend",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the benchmark, print its report and write it to --out; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    # Own DDS domain on localhost: the benchmark never talks to other runs on the machine.
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(102, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    settings = replace(QUICK if args.quick else Settings(), notes=[])
    settings.frames = args.frames or settings.frames
    settings.node_frames = args.node_frames or settings.node_frames
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.estimator == "crops":
        return run_crops(args, settings, out)
    return run_hrpose(args, settings, out)


if __name__ == "__main__":
    sys.exit(main())
