"""The HRPose run: every measurement of one checkpoint, the goals, the report and its files."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.backends import build_backends, int8_model, resolve_checkpoint
from benchmarks.frames import split_frames, synthetic_frames
from benchmarks.goals import evaluate_goals, load_goals
from benchmarks.live_node import measure_node
from benchmarks.machine import cpu_summary, matmul_gflops, rss_mb
from benchmarks.report import format_report, summarize, to_jsonable, write_outputs
from benchmarks.ros_messages import RosSide
from benchmarks.settings import Settings
from benchmarks.stage_timing import measure_input_sizes, measure_instances, measure_stages
from hrpose_ros.checkpoints import load_checkpoint
from hrpose_ros.codec import KeypointCodec
from hrpose_ros.networks import BACKBONES, count_flops
from hrpose_ros.onnx_export import export_onnx


def run_hrpose(args, settings: Settings, out: Path) -> int:
    """Measure the HRPose checkpoint of ``args`` in every way, print the report, write ``out``; return 0."""
    goals = load_goals()
    started, load_start = time.time(), os.getloadavg()[0]
    cpu = cpu_summary()

    checkpoint_path = resolve_checkpoint(args, out)
    checkpoint = load_checkpoint(checkpoint_path)
    random_weights = bool(checkpoint.history.get("random_weights"))
    codec = KeypointCodec(checkpoint.codec_config)
    objects = checkpoint.objects
    in_w, in_h = checkpoint.input_size
    if args.split:
        frames = split_frames(args.split, objects, codec, checkpoint.input_size, max(settings.frames, 10))
    else:
        frames = synthetic_frames(objects, codec, checkpoint.input_size, 10, args.instances or 10)
    onnx_path = export_onnx(checkpoint, out / "model.onnx")
    int8_path = int8_model(args, settings, onnx_path, frames)

    rss_start = rss_mb()
    backends = build_backends(
        checkpoint_path, checkpoint, onnx_path, int8_path, random_weights, args.device, args.threads, cpu
    )
    active = [b for b in backends if b.pipeline is not None]
    # count_flops counts multiply-accumulates; GFLOP/s and the matmul reference count 2 FLOPs each.
    raw = {"flops": 2 * count_flops(checkpoint.build_model(), in_h, in_w), "nodes": []}
    ros = RosSide(objects)
    try:
        raw["samples"], raw["found"] = measure_stages(active, frames, ros, settings.frames, settings.warmup)
        raw["matmul"] = {
            "matmul_fp32": matmul_gflops(torch.float32, settings.matmul_size),
            "matmul_bf16": matmul_gflops(torch.bfloat16, settings.matmul_size),
        }
        raw["instances"] = measure_instances(
            active[0].pipeline, objects, codec, checkpoint.input_size, settings.repeats
        )
        raw["sizes"] = measure_input_sizes(checkpoint, out, settings, args, cpu)
        rss_after = rss_mb()
        if not args.no_node:
            transport = "SHM" if args.transport == "shm" else ""
            runs = [
                (b, transport, settings.node_frames, settings.open_loop_seconds)
                for b in active
                if b.label in settings.node_backends and b.node_backend
            ]
            if runs and settings.transport_check_frames:
                other = "" if transport else "SHM"
                runs.append((runs[-1][0], other, settings.transport_check_frames, settings.open_loop_seconds))
            for backend, run_transport, frames_count, open_seconds in runs:
                print(
                    f"live pose_node: {backend.label}, transport {run_transport or 'default'}",
                    file=sys.stderr,
                )
                raw["nodes"].append(
                    measure_node(
                        backend,
                        frames,
                        frames_count,
                        settings.warmup,
                        open_seconds,
                        args.node_timeout,
                        ros,
                        run_transport,
                    )
                )
    finally:
        ros.close()

    summary = summarize(raw)
    verdicts = evaluate_goals(summary, goals, random_weights)
    variant = checkpoint.model_config.variant
    results = {
        "title": (
            f"hrpose_ros benchmark {time.strftime('%Y-%m-%d %H:%M')} | {cpu['model']}, "
            f"{cpu['logical_cpus']} CPUs, {args.threads} threads | {variant} ({BACKBONES[variant]}) "
            f"input {in_w}x{in_h}{' | RANDOM weights' if random_weights else ''}"
        ),
        "checkpoint": str(checkpoint_path),
        "random_weights": random_weights,
        "weights_note": (
            "RANDOM weights (no trained checkpoint given or shipped): latency does not depend on the "
            "weights' values; peaks + grouping and PnP run on the codec's encoding of each frame's "
            "ground truth instead of the network's output, and the live node sees empty maps (its "
            "end-to-end time excludes decode + PnP, added in the goal check)"
            if random_weights
            else f"trained ({checkpoint.history})"
        ),
        "frames_note": (
            f"{frames[0].image.shape[1]}x{frames[0].image.shape[0]} "
            f"({'BOP split ' + str(args.split) if args.split else 'synthetic, painted boxes'}), "
            f"{len(frames[0].instances)} instances in the first"
        ),
        "cpu": cpu,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "numpy": np.__version__,
        },
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "input_size": [in_w, in_h],
        "frames": settings.frames,
        "backends": [
            {
                "label": b.label,
                "detail": b.detail,
                "skipped": b.skipped,
                "rss_increase_mb": b.rss_increase_mb,
                "node_backend": b.node_backend,
                "node_model": b.node_model,
            }
            for b in backends
        ],
        "flops_per_frame": raw["flops"],
        **{k: v for k, v in summary.items() if k != "inference_s"},
        "memory_mb": {
            "before_engines": rss_start,
            "after": rss_after,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "per_engine": {b.label: b.rss_increase_mb for b in active},
        },
        "goals": [{"met": met, "text": text} for met, text in verdicts],
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "notes": settings.notes,
    }
    report = format_report(results, summary, verdicts)
    report += (
        f"\n\ntook {time.time() - started:.0f} s; load average at end {results['load_average']['end']:.2f}; "
        f"wrote {out}/benchmark.json, stages.csv, report.txt, benchmark.png"
    )
    print(report)
    write_outputs(out, to_jsonable(results), report, goals)
    return 0
