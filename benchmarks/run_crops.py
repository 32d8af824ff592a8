"""The --estimator crops run: the crop estimator's stages per backend and its live node."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.backends import Backend
from benchmarks.frames import CAMERA, Frame, paint_scene, scene_instances
from benchmarks.live_node import measure_node
from benchmarks.machine import rss_mb
from benchmarks.report import table, to_jsonable
from benchmarks.ros_messages import RosSide
from benchmarks.settings import Settings
from benchmarks.stage_timing import CROP_PIPELINE_STAGES, measure_stages
from benchmarks.timing import Stats
from hrpose_ros.estimators import default_weights, load_estimator


def run_crops(args, settings: Settings, out: Path) -> int:
    """Run ``--estimator crops``: the crop estimator's stages per backend and its live node; return 0."""
    started = time.time()
    weights = args.checkpoint if args.checkpoint is not None else default_weights("crops")
    backends = []
    for label, backend in (("torch fp32", "torch"), ("ORT fp32", "onnxruntime")):
        before = rss_mb()
        estimator = load_estimator(weights, "crops", backend=backend, device=args.device)
        backends.append(Backend(label, estimator, estimator.engine.description, node_backend=backend,
                                node_model=str(weights), node_estimator="crops"))
        backends[-1].rss_increase_mb = rss_mb() - before
    objects = backends[0].pipeline.objects
    rng = np.random.default_rng(0)
    if args.split:
        from hrpose_ros import bop_reader as bop

        split = bop.read_frames(args.split)
        frames_note = f"BOP frames {args.split}"
        if args.instances is not None:
            split = [f for f in split if len(f.instances) == args.instances]
            if not split:
                raise SystemExit(f"--split {args.split}: no frame has {args.instances} annotated objects")
            frames_note += f", its {len(split)} frames with {args.instances} objects"
        split = split[: max(settings.frames, 10)]
        frames = [Frame(f.read_rgb(), f.camera, []) for f in split]
    else:
        frames = []
        for _ in range(10):
            chosen = scene_instances(objects, args.instances or 10, CAMERA, rng)
            frames.append(Frame(paint_scene(objects, chosen, CAMERA, rng), CAMERA, chosen))
        frames_note = "synthetic painted boxes (the detector may find few: see poses found)"
    ros = RosSide(objects)
    nodes = []
    try:
        samples, found = measure_stages(backends, frames, ros, settings.frames, settings.warmup,
                                        pipeline_stages=CROP_PIPELINE_STAGES)
        if not args.no_node:
            transport = "SHM" if args.transport == "shm" else ""
            for backend in [b for b in backends if b.label in settings.node_backends]:
                print(f"live pose_node: crops {backend.label}, transport {transport or 'default'}",
                      file=sys.stderr)
                nodes.append(measure_node(backend, frames, settings.node_frames, settings.warmup,
                                          settings.open_loop_seconds, args.node_timeout, ros, transport))
    finally:
        ros.close()
    stages = {b: {s: Stats.of(v) for s, v in st.items()} for b, st in samples.items()}
    names = list(stages)
    rows = [[s, *(str(stages[b][s]) for b in names)] for s in stages[names[0]] if s != "frame"]
    rows.append(["frame total", *(str(stages[b]["frame"]) for b in names)])
    rows.append(["frames per second", *(f"{1e3 / stages[b]['frame'].median_ms:.1f}" for b in names)])
    rows.append(["poses found (median)", *(f"{np.median(found[b]):.0f}" for b in names)])
    lines = [
        f"hrpose_ros benchmark, crop estimator {time.strftime('%Y-%m-%d %H:%M')} | weights {weights}",
        f"frames: {frames[0].image.shape[1]}x{frames[0].image.shape[0]}, {frames_note}",
        "",
        "per stage, median / p90 ms",
        table(["stage", *names], rows),
    ]
    node_rows = []
    for n in nodes:
        closed = Stats.of(n.get("closed_loop", []))
        rate = n.get("open_loop", {}).get("output_hz", math.nan)
        node_rows.append([n["backend"], str(closed), f"{rate:.1f}", n.get("error", "")])
    if node_rows:
        lines += ["", "live pose_node (estimator:=crops)",
                  table(["backend", "closed loop ms", "Hz out at 30 Hz in", "error"], node_rows)]
    report = "\n".join(lines)
    report += f"\n\ntook {time.time() - started:.0f} s; wrote {out}/benchmark.json, report.txt"
    print(report)
    results = {
        "estimator": "crops",
        "weights": str(weights),
        "frames_note": frames_note,
        "backends": [
            {"label": b.label, "detail": b.detail, "rss_increase_mb": b.rss_increase_mb} for b in backends
        ],
        "stages": stages,
        "poses_found": {b: float(np.median(v)) for b, v in found.items()},
        "nodes": nodes,
    }
    (out / "benchmark.json").write_text(json.dumps(to_jsonable(results), indent=2, ensure_ascii=False))
    (out / "report.txt").write_text(report + "\n")
    return 0
