"""RGB-only beside RGB-D (depth refinement) on BOP frames with depth, per object.

Each frame goes through the estimator once; its poses are scored as they are (RGB) and after
:class:`hrpose_ros.depth_refine.DepthRefiner` against the frame's depth image (RGB-D), with the
matching of :func:`training.evaluate.match_poses`: ADD(-S) below 0.1 d, and within 5 mm 2 deg
(a grasping threshold; rotation against the closest symmetric equivalent). The refinement's time
per instance and per frame is measured here too, on this machine's cores.

    python -m training.evaluate_depth --split data/test/000001 --out out/depth_eval

Prints the table and writes ``report.md`` and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hrpose_ros import bop_reader
from hrpose_ros.depth_refine import ASSOCIATIONS, DepthRefiner, RefineConfig, whole_frame_config, with_meshes
from hrpose_ros.estimators import load_estimator
from training.evaluate import CM_DEG, ground_truth_boxes, match_poses

__all__ = ["evaluate_depth", "evaluate_refiners", "format_comparison", "format_report", "main",
           "parse_overrides"]

GRASP_BOUNDS = (0.005, 2.0)  # metres, degrees


def evaluate_depth(estimator, refiner: DepthRefiner, frames, gt_boxes: bool = False) -> dict:
    """Return {"rgb": [InstanceResult], "rgbd": [InstanceResult], "instance_seconds": [s per refined
    instance], "frame_seconds": [s per frame, summed over instances], "frame_wall_seconds": [s per
    frame, as the caller waits], "refined": {obj_id: [bool per estimate]}} on ``frames``."""
    return evaluate_refiners(estimator, [refiner], frames, gt_boxes)[0]


def evaluate_refiners(estimator, refiners: Sequence[DepthRefiner], frames,
                      gt_boxes: bool = False) -> list[dict]:
    """Return :func:`evaluate_depth`'s result for each of ``refiners`` on the same RGB poses.

    Each frame's poses are estimated once, then refined by every refiner in turn, the order rotated
    from frame to frame: timings compared this way share the machine's state (its clock, its other
    load), which varies more between runs than between refinement settings.
    """
    objects = {o.obj_id: o for o in estimator.objects}
    results = [{"rgb": [], "rgbd": [], "instance_seconds": [], "frame_seconds": [], "frame_wall_seconds": [],
                "refined": {}} for _ in refiners]
    for number, frame in enumerate(tqdm(frames, desc="frames", leave=False)):
        image, depth = frame.read_rgb(), frame.read_depth()
        if gt_boxes:
            maps = estimator.estimate_maps(image, frame.camera, detections=ground_truth_boxes(frame, objects))
            poses, _ = estimator.poses_from_maps(maps, frame.camera)
        else:
            poses = estimator(image, frame.camera)
        rgb = match_poses(poses, frame, objects, bounds=GRASP_BOUNDS)
        for k in range(len(refiners)):
            which = (number + k) % len(refiners)
            out = results[which]
            started = time.perf_counter()
            refined, outcomes = refiners[which].refine(poses, depth, frame.camera)
            out["frame_wall_seconds"].append(time.perf_counter() - started)
            out["rgb"].extend(rgb)
            out["rgbd"].extend(match_poses(refined, frame, objects, bounds=GRASP_BOUNDS))
            out["instance_seconds"].extend(o.seconds for o in outcomes if o.depth_points > 0)
            out["frame_seconds"].append(float(sum(o.seconds for o in outcomes)))
            for pose in refined:
                out["refined"].setdefault(pose.obj_id, []).append(pose.refined)
    return results


def parse_overrides(text: str, base: RefineConfig) -> RefineConfig:
    """Return ``base`` with the RefineConfig fields of ``text`` ("key=value,key=value"; ``stages`` as
    distances in metres joined by ':') set; ValueError naming what is wrong."""
    types = {f.name: type(getattr(base, f.name)) for f in fields(RefineConfig)}
    changes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise ValueError(f"{item!r}: expected key=value with key one of {sorted(types)}")
        kind = types[key]
        try:
            if kind is tuple:
                changes[key] = tuple(float(v) for v in value.split(":"))
            elif kind is bool:
                if value.strip().lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[key] = value.strip().lower() in ("true", "1")
            else:
                changes[key] = kind(value.strip())
        except ValueError:
            raise ValueError(f"{item!r}: {key} expects a {kind.__name__}, got {value!r}") from None
    if not changes:
        raise ValueError(f"{text!r}: no key=value given")
    return replace(base, **changes)


def _share(flags) -> float:
    return 100.0 * float(np.mean(flags)) if len(flags) else float("nan")


def format_report(result: dict, names: dict[int, str]) -> tuple[str, dict]:
    """Return (Markdown table per object and mean, the same numbers as a dict)."""
    rows, table = [], {}
    for obj_id, name in sorted(names.items()):
        rgb = [r for r in result["rgb"] if r.obj_id == obj_id]
        rgbd = [r for r in result["rgbd"] if r.obj_id == obj_id]
        if not rgb:
            continue
        table[name] = {
            "instances": len(rgb),
            "add_rgb": _share([r.correct["add"] for r in rgb]),
            "add_rgbd": _share([r.correct["add"] for r in rgbd]),
            "grasp_rgb": _share([r.correct[CM_DEG] for r in rgb]),
            "grasp_rgbd": _share([r.correct[CM_DEG] for r in rgbd]),
            "refined": _share(result["refined"].get(obj_id, [])),
        }
    columns = ("add_rgb", "add_rgbd", "grasp_rgb", "grasp_rgbd")
    mean = {c: float(np.mean([v[c] for v in table.values()])) for c in columns}
    instance_ms = 1e3 * np.asarray(result["instance_seconds"] or [np.nan])
    frame_ms = 1e3 * np.asarray(result["frame_seconds"] or [np.nan])
    wall_ms = 1e3 * np.asarray(result.get("frame_wall_seconds") or [np.nan])
    timing = {"instance_ms_median": float(np.median(instance_ms)),
              "instance_ms_p90": float(np.percentile(instance_ms, 90)),
              "frame_ms_median": float(np.median(frame_ms)), "frame_ms_max": float(np.max(frame_ms)),
              "frame_wall_ms_median": float(np.median(wall_ms)),
              "instances_refined_or_tried": len(result["instance_seconds"]),
              "frames": len(result["frame_seconds"])}
    rows.append("| object | instances | ADD(-S) RGB | ADD(-S) RGB-D | 5 mm 2° RGB | 5 mm 2° RGB-D | "
                "estimates refined |")
    rows.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, v in table.items():
        rows.append(f"| {name} | {v['instances']} | {v['add_rgb']:.1f} | {v['add_rgbd']:.1f} | "
                    f"{v['grasp_rgb']:.1f} | {v['grasp_rgbd']:.1f} | {v['refined']:.0f} % |")
    rows.append(f"| **mean** | {sum(v['instances'] for v in table.values())} | {mean['add_rgb']:.1f} | "
                f"{mean['add_rgbd']:.1f} | {mean['grasp_rgb']:.1f} | {mean['grasp_rgbd']:.1f} | |")
    rows.append("")
    rows.append(f"Refinement time per instance: median {timing['instance_ms_median']:.2f} ms, "
                f"p90 {timing['instance_ms_p90']:.2f} ms ({timing['instances_refined_or_tried']} instances); "
                f"per frame: median {timing['frame_ms_median']:.1f} ms, max {timing['frame_ms_max']:.1f} ms "
                f"(median wall time {timing['frame_wall_ms_median']:.1f} ms; {timing['frames']} frames; "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).")
    return "\n".join(rows), {"objects": table, "mean": mean, "timing": timing}


def format_comparison(labels: Sequence[str], numbers: Sequence[dict]) -> str:
    """Return a Markdown table of :func:`format_report`'s numbers for each refinement setting."""
    rows = ["| refinement | ADD(-S) RGB-D | 5 mm 2° RGB-D | ms per instance (median) | ms per frame (median "
            "wall time) |", "|---|---:|---:|---:|---:|"]
    for label, n in zip(labels, numbers):
        rows.append(f"| {label} | {n['mean']['add_rgbd']:.1f} | {n['mean']['grasp_rgbd']:.1f} | "
                    f"{n['timing']['instance_ms_median']:.2f} | {n['timing']['frame_wall_ms_median']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True, help="BOP split or scene folder with depth/")
    parser.add_argument("--model", default="", help="weights file (default: the shipped estimator)")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--gt-boxes", action="store_true", help="crops around true boxes, no detector")
    parser.add_argument("--hypotheses", type=int, default=0, metavar="N",
                        help="multi-start: N disturbed copies of each pose refined too "
                        "(RefineConfig.hypotheses)")
    parser.add_argument("--association", choices=ASSOCIATIONS, default=RefineConfig.association,
                        help="ICP pairs (RefineConfig.association)")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also refine the same poses with these RefineConfig fields changed (e.g. "
                        "association=nearest or threads=2,iterations=6; stages as 0.02:0.01), taking turns "
                        "frame by frame; repeatable")
    parser.add_argument("--max-frames", type=int, default=0, help="evaluate only the first N frames")
    parser.add_argument("--out", default="out/depth_eval", help="folder for report.md and metrics.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frames = bop_reader.read_frames(args.split)
    if args.max_frames:
        frames = frames[: args.max_frames]
    if not frames or frames[0].depth_path is None:
        parser.error(f"--split {args.split}: no frames with depth images")
    if args.hypotheses < 0:
        parser.error(f"--hypotheses: expected 0 or more, got {args.hypotheses}")
    config = replace(whole_frame_config(args.hypotheses), association=args.association)
    try:
        others = [parse_overrides(text, config) for text in args.compare]
    except ValueError as error:
        parser.error(f"--compare {error}")
    estimator = load_estimator(args.model or None, backend=args.backend, device="cpu")
    meshed = with_meshes(estimator.objects)
    refiners = [DepthRefiner(meshed, c) for c in [config, *others]]
    results = evaluate_refiners(estimator, refiners, frames, gt_boxes=args.gt_boxes)
    for refiner in refiners:
        refiner.close()
    names = {o.obj_id: o.name for o in estimator.objects}
    report, numbers = format_report(results[0], names)
    if others:
        labels = ["as above", *args.compare]
        compared = [numbers, *(format_report(r, names)[1] for r in results[1:])]
        report += ("\n\nThe same RGB poses refined with other settings, taking turns frame by frame:\n\n"
                   + format_comparison(labels, compared))
        numbers = {**numbers, "compared": dict(zip(args.compare, compared[1:]))}
    boxes = "ground-truth boxes" if args.gt_boxes else "the detector's boxes"
    if args.hypotheses:
        boxes += f", {args.hypotheses} depth hypotheses per pose"
    title = f"RGB-only vs RGB-D on {args.split} ({len(frames)} frames, {boxes}), recall in %"
    print(f"{title}\n\n{report}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(f"# {title}\n\n{report}\n")
    (out / "metrics.json").write_text(json.dumps({"split": args.split, "gt_boxes": args.gt_boxes,
                                                  "hypotheses": args.hypotheses, **numbers},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
