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
        if args.depth:
            if split[0].depth_path is None:
                raise SystemExit(f"--depth: the frames of --split {args.split} have no depth images")
            depths = [f.read_depth() for f in split]
    else:
        if args.depth:
            raise SystemExit("--depth: needs --split frames with depth images")
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
    depth = measure_depth(backends[-1].pipeline, frames, depths) if args.depth else None
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
    if depth is not None:
        frame_ms = stages[backends[-1].label]["frame"].median_ms
        lines += ["", f"depth refinement ({backends[-1].label} poses, the node's defaults: "
                      f"{1e3 * depth['config'].frame_budget:.0f} ms budget per frame)",
                  table(["", "median / p90 ms"], [
                      ["per refined instance", str(depth["instance"])],
                      ["per frame", str(depth["frame"])],
                      ["instances refined / attempted per frame (median)",
                       f"{depth['refined']:.0f} / {depth['attempted']:.0f}"],
                      ["frame total with depth (median)", f"{frame_ms + depth['frame'].median_ms:.1f}"],
                  ])]
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
        "depth_refinement": None if depth is None else {k: v for k, v in depth.items() if k != "config"},
    }
    (out / "benchmark.json").write_text(json.dumps(to_jsonable(results), indent=2, ensure_ascii=False))
    (out / "report.txt").write_text(report + "\n")
    return 0


def measure_depth(estimator, frames: list[Frame], depths: list[np.ndarray]) -> dict:
    """Return the depth refinement's times on ``frames``' poses, as pose_node runs it (default RefineConfig).

    Stats per refined instance and per frame, and the median instances refined and attempted.
    """
    from hrpose_ros.depth_refine import DepthRefiner, RefineConfig, with_meshes

    config = RefineConfig()
    refiner = DepthRefiner(with_meshes(estimator.objects), config)
    instance, frame, refined, attempted = [], [], [], []
    refiner.refine(estimator(frames[0].image, frames[0].camera), depths[0], frames[0].camera)  # warm-up
    for f, depth in zip(frames, depths):
        poses = estimator(f.image, f.camera)
        start = time.perf_counter()
        _, outcomes = refiner.refine(poses, depth, f.camera)
        frame.append(time.perf_counter() - start)
        tried = [o for o in outcomes if o.depth_points > 0]
        instance += [o.seconds for o in tried]
        refined.append(sum(o.refined for o in outcomes))
        attempted.append(len(tried))
    return {"config": config, "instance": Stats.of(instance), "frame": Stats.of(frame),
            "refined": float(np.median(refined)), "attempted": float(np.median(attempted))}
