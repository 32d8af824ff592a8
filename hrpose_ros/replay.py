"""Replay evaluation: run the pose pipeline on every frame of a rosbag2 and score it against ground truth.

``hrpose-replay-eval BAG --out DIR`` reads a replay bag (see :mod:`hrpose_ros.bag_io` for its
topics and the ground-truth message), runs a pose estimator (``--estimator``: HRPose or the
crop estimator, :mod:`hrpose_ros.estimators`; ``auto`` follows ``--weights``) on every image in
bag order (no frame is dropped; one untimed warm-up call first), or with ``--live-node`` drives
a running ``pose_node`` over DDS frame by frame and records what it publishes, and writes to
DIR:

- ``results.csv``: BOP results (scene_id,im_id,obj_id,score,R,t,time; t in mm) where im_id
  is the image's index in the bag;
- ``scores.csv``: one row per ground-truth instance with its matched estimate's errors;
- ``metrics.json``: recalls per object and their mean, latency statistics, fps;
- ``recall_curves.png``, ``latency.png``, ``overlay.mp4``, ``overlay_strip.png``,
  ``report.md`` and ``report.html`` (see :mod:`hrpose_ros.report`).

With ``--depth-topic`` (an RGB-D bag: depth aligned to the colour image) every frame's poses are
also refined against its depth in-process (:mod:`hrpose_ros.depth_refine`); the report scores the
refined poses and gives the RGB-only recalls of the same network run beside them. With
``--live-node`` too, the node runs with ``use_depth`` and gets each frame's depth over DDS; it
publishes refined poses only, so the report has no RGB-only column then.

Matching, errors and recalls are :mod:`hrpose_ros.scoring`'s; ``--live-node`` drives the
node through :mod:`hrpose_ros.live_node`. ``hrpose-bop-to-bag`` (:mod:`hrpose_ros.bop_to_bag`)
makes such a bag from a BOP scene.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from hrpose_ros import bag_io, bop_results
from hrpose_ros.bag_io import BagError, BagFrame, BagTopics
from hrpose_ros.estimators import ESTIMATORS
from hrpose_ros.live_node import LiveNodeError, LiveNodeEstimator
from hrpose_ros.metrics import Thresholds
from hrpose_ros.scoring import (
    EvalResult,
    FrameResult,
    InstanceScore,
    latency_stats,
    match_frame,
    metrics_dict,
    summarize,
    write_scores_csv,
)
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = [
    "DepthRefinedEstimator",
    "Estimator",
    "evaluate_bag",
    "evaluate_frames",
    "main",
    "positive_float",
]


class Estimator(Protocol):
    """What the evaluator runs: an estimator (hrpose_ros.estimators), or the live pose_node as one."""

    objects: list[ObjectModel]
    last_timings: dict[str, float]

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]: ...


class DepthRefinedEstimator:
    """``estimator``'s poses refined against each frame's depth image; the RGB poses are kept too."""

    def __init__(self, estimator: Estimator, refiner):
        self.estimator, self.refiner = estimator, refiner
        self.objects = estimator.objects
        self.last_timings: dict[str, float] = {}
        self.rgb_poses: tuple[ObjectPose, ...] = ()
        self.uses_depth = True

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel, depth: np.ndarray | None = None
                 ) -> list[ObjectPose]:
        poses = list(self.estimator(image_rgb, camera))
        self.rgb_poses = tuple(poses)
        start = time.perf_counter()
        if depth is not None:
            try:
                poses, _ = self.refiner.refine(poses, depth, camera)
            except ValueError as exc:  # an unusable depth frame: the RGB poses, as the node does
                logging.getLogger(__name__).warning("frame without depth refinement: %s", exc)
        self.last_timings = {**self.estimator.last_timings, "depth refinement": time.perf_counter() - start}
        return poses

    def close(self) -> None:
        close = getattr(self.estimator, "close", None)
        if close is not None:
            close()


def _check_ground_truth(bag: Path, topic: str, frame: BagFrame, objects: dict[int, ObjectModel]) -> None:
    for gt in frame.ground_truth or ():
        if gt.obj_id not in objects:
            known = ", ".join(f"{o.obj_id} ({o.name})" for o in objects.values())
            raise BagError(
                bag,
                topic,
                f"image {frame.index}: ground truth for unknown object {gt.obj_id} ({gt.class_name!r}); "
                f"the estimator knows {known}",
            )


def evaluate_frames(
    bag: Path | str,
    estimator: Estimator,
    topics: BagTopics | None = None,
    max_frames: int | None = None,
    on_frame: Callable[[BagFrame, FrameResult], None] | None = None,
    progress: bool = True,
) -> tuple[list[FrameResult], Exception | None]:
    """Return (results of the images read, in bag order; the BagError/LiveNodeError that stopped it or None).

    Each image goes through ``estimator`` once, after one untimed warm-up call on the first
    image; ``timings`` holds the estimator's stages plus "total" (wall seconds of the call).
    """
    bag = Path(bag)
    topics = topics or bag_io.resolve_topics(bag)
    objects = {o.obj_id: o for o in estimator.objects}
    total = bag_io.bag_topics(bag).get(topics.image, ("", None))[1]
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    results: list[FrameResult] = []
    bar = tqdm(total=total, unit="frame", desc=f"replay {bag.name}", disable=not progress)
    try:
        for frame in bag_io.read_frames(bag, topics):
            if max_frames is not None and frame.index >= max_frames:
                break
            _check_ground_truth(bag, topics.ground_truth, frame, objects)
            if not results:
                estimator(frame.image, frame.camera)  # warm-up: lazy initialisation is not latency
            refined = isinstance(estimator, DepthRefinedEstimator)  # keeps its RGB poses to compare
            depth = {"depth": frame.depth} if getattr(estimator, "uses_depth", False) else {}
            start = time.perf_counter()
            estimates = tuple(estimator(frame.image, frame.camera, **depth))
            elapsed = time.perf_counter() - start
            timings = {**estimator.last_timings, "total": elapsed}
            result = FrameResult(
                frame.index, frame.stamp_ns, frame.camera, estimates, frame.ground_truth, timings,
                rgb_estimates=estimator.rgb_poses if refined else None,
            )
            results.append(result)
            if on_frame is not None:
                on_frame(frame, result)
            bar.update()
    except (BagError, LiveNodeError) as exc:
        return results, exc
    finally:
        bar.close()
    return results, None


def _score(frames: Sequence[FrameResult], objects: dict[int, ObjectModel]
           ) -> tuple[list[InstanceScore], dict[int, int]]:
    """Return the scores of the ground-truth instances of ``frames`` and the false positives per obj_id."""
    scores: list[InstanceScore] = []
    false_positives: dict[int, int] = {}
    for frame in frames:
        if frame.ground_truth is None:
            continue
        frame_scores, frame_fp = match_frame(frame, objects)
        scores += frame_scores
        for obj_id, n in frame_fp.items():
            false_positives[obj_id] = false_positives.get(obj_id, 0) + n
    return scores, false_positives


def _write_results_csv(path: Path, frames: Sequence[FrameResult], scene_id: int) -> None:
    records = [
        bop_results.BopResult(
            scene_id=scene_id,
            im_id=frame.im_id,
            obj_id=est.obj_id,
            score=est.score,
            R=est.R,
            t=est.t,
            time=frame.timings["total"],
        )
        for frame in frames
        for est in frame.estimates
    ]
    bop_results.write_results_csv(path, records)


def evaluate_bag(
    bag: Path | str,
    out_dir: Path | str,
    estimator: Estimator,
    topics: BagTopics | None = None,
    thresholds: Thresholds | None = None,
    scene_id: int = 0,
    max_frames: int | None = None,
    video: bool = True,
    mode: str = "pipeline",
    progress: bool = True,
) -> EvalResult:
    """Return the EvalResult of replaying ``bag`` through ``estimator``; all outputs go to ``out_dir``.

    Outputs are written even when reading stops early (truncated bag, unknown object, ...):
    then ``result.error`` holds the message and the report says the run is incomplete.
    """
    from hrpose_ros import report  # matplotlib is only needed once there is something to plot

    bag = Path(bag)
    thresholds = thresholds or Thresholds()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objects = {o.obj_id: o for o in estimator.objects}
    overlay = report.OverlayWriter(out, objects, video=video)
    frames: list[FrameResult] = []
    error: Exception | None = None
    try:
        topics = topics or bag_io.resolve_topics(bag)
        frames, error = evaluate_frames(
            bag,
            estimator,
            topics,
            max_frames,
            on_frame=lambda f, r: overlay.add(f.image, r),
            progress=progress,
        )
    except BagError as exc:
        error = exc
    finally:
        overlay.close()
    scores, false_positives = _score(frames, objects)
    result = EvalResult(
        bag=str(bag),
        mode=mode,
        frames=frames,
        scores=scores,
        false_positives=false_positives,
        objects=objects,
        thresholds=thresholds,
        summary=summarize(scores, false_positives, objects, thresholds),
        error=str(error) if error else None,
    )
    if frames and frames[0].rgb_estimates is not None:
        rgb_frames = [replace(f, estimates=f.rgb_estimates) for f in frames]
        result.rgb_summary = summarize(*_score(rgb_frames, objects), objects, thresholds)
    result.latency, result.fps = latency_stats(frames)
    _write_results_csv(out / "results.csv", frames, scene_id)
    write_scores_csv(out / "scores.csv", scores)
    result.outputs = {
        "results": str(out / "results.csv"),
        "scores": str(out / "scores.csv"),
        **overlay.outputs,
    }
    result.outputs.update(report.write_report(out, result))
    result.outputs["metrics"] = str(out / "metrics.json")
    (out / "metrics.json").write_text(json.dumps(metrics_dict(result), indent=2) + "\n")
    return result


# --- command line ----------------------------------------------------------------------------


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrpose-replay-eval",
        description="Replay a rosbag2 (mcap or sqlite3) through the pose pipeline, or a live pose_node, "
        "and score it against the bag's ground truth. Writes BOP results, metrics, plots, an overlay "
        "video and a report to --out.",
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory (or .mcap/.db3 file)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="weights file (default: the estimator's shipped weights)"
    )
    parser.add_argument(
        "--estimator",
        default="auto",
        choices=("auto", *ESTIMATORS),
        help="pose estimator: auto (the one --weights belongs to; without --weights the shipped default, "
        "crops when shipped, else hrpose), hrpose or crops (--weights must then be of that kind)",
    )
    parser.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    parser.add_argument("--device", default="auto",
                        help="auto (a GPU if the backend can use one, else cpu), cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "int8", "auto"),
        help="inference precision (hrpose_ros.devices; int8 needs --backend onnxruntime and a .int8.onnx)",
    )
    parser.add_argument(
        "--image-topic", default=None, help="default: the bag's only Image/CompressedImage topic"
    )
    parser.add_argument("--camera-info-topic", default=None, help="default: the bag's only CameraInfo topic")
    parser.add_argument("--gt-topic", default=None, help=f"default: {bag_io.GROUND_TRUTH_TOPIC}")
    parser.add_argument(
        "--depth-topic", default=None,
        help=f"RGB-D: refine every pose against this depth topic (e.g. {bag_io.DEPTH_TOPIC}) and report "
        "RGB-only beside RGB-D (with --live-node: the node's use_depth, its refined poses only)",
    )
    parser.add_argument(
        "--depth-hypotheses", type=int, default=0, metavar="N",
        help="with --depth-topic: N disturbed copies of each pose refined against depth too, the "
        "best-confirmed kept (the node's depth_hypotheses; about 70 ms per instance at 10)",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many images")
    parser.add_argument("--scene-id", type=int, default=0, help="scene_id written to results.csv")
    parser.add_argument("--no-video", action="store_true", help="skip overlay.mp4 (the strip is still drawn)")
    parser.add_argument(
        "--live-node",
        action="store_true",
        help="drive a pose_node subprocess over DDS instead of calling the pipeline in-process",
    )
    parser.add_argument(
        "--node-command",
        default="pose_node",
        help="executable started for --live-node (default: pose_node on PATH)",
    )
    parser.add_argument(
        "--node-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra pose_node parameter for --live-node (repeatable)",
    )
    parser.add_argument(
        "--node-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the node's answer to one image (and for its start)",
    )
    parser.add_argument(
        "--max-translation-cm",
        type=positive_float,
        default=100.0 * Thresholds.translation_m,
        help="translation bound of the 'n cm n deg' recall (default 5; 1 for issue 6's well-visible objects)",
    )
    parser.add_argument(
        "--max-rotation-deg",
        type=positive_float,
        default=Thresholds.rotation_deg,
        help="rotation bound of the 'n cm n deg' recall (default 5)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (argparse names the flag in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hrpose-replay-eval``; returns the exit code (2 = stopped early, partial outputs)."""
    from hrpose_ros import report

    parser = _replay_parser()
    args = parser.parse_args(argv)
    if args.depth_hypotheses and not args.depth_topic:
        parser.error("--depth-hypotheses: needs --depth-topic (the depth to refine against)")
    if args.depth_hypotheses < 0:
        parser.error(f"--depth-hypotheses: expected 0 or more, got {args.depth_hypotheses}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        topics = bag_io.resolve_topics(args.bag, args.image_topic, args.camera_info_topic, args.gt_topic,
                                       depth=args.depth_topic)
        from hrpose_ros.devices import resolve_device

        device = resolve_device(args.device, args.backend)  # the node and the reference on the same one
        from hrpose_ros.estimators import default_weights, estimator_of

        weights = args.weights if args.weights is not None else default_weights(args.estimator)
        kind = estimator_of(weights)  # for the report; load_estimator checks it against --estimator
        if args.live_node:
            estimator = LiveNodeEstimator.start(
                command=args.node_command,
                weights=weights,
                backend=args.backend,
                device=device,
                precision=args.precision,
                params=args.node_param,
                timeout=args.node_timeout,
                estimator=args.estimator,
                depth=bool(topics.depth),
                depth_hypotheses=args.depth_hypotheses,
            )
            mode = f"live pose_node ({kind}, {args.backend}, {args.precision}, {device})"
            if topics.depth:
                mode += " + use_depth"
        else:
            from hrpose_ros.estimators import load_estimator

            estimator = load_estimator(
                weights, args.estimator, backend=args.backend, device=device, precision=args.precision
            )
            mode = f"pipeline ({kind}, {args.backend}, {args.precision}, {device})"
        if topics.depth and not args.live_node:
            from hrpose_ros.depth_refine import DepthRefiner, whole_frame_config, with_meshes

            refine = whole_frame_config(args.depth_hypotheses)
            estimator = DepthRefinedEstimator(estimator, DepthRefiner(with_meshes(estimator.objects), refine))
            mode += " + depth refinement"
    except ValueError as exc:
        print(f"hrpose-replay-eval: error: {exc}", file=sys.stderr)
        return 1
    try:
        result = evaluate_bag(
            args.bag,
            args.out,
            estimator,
            topics=topics,
            scene_id=args.scene_id,
            max_frames=args.max_frames,
            video=not args.no_video,
            mode=mode,
            thresholds=Thresholds(
                translation_m=args.max_translation_cm / 100.0, rotation_deg=args.max_rotation_deg
            ),
            progress=not args.quiet,
        )
    finally:
        close = getattr(estimator, "close", None)
        if close is not None:
            close()
    print(report.summary_text(result))
    if result.error:
        print(
            f"hrpose-replay-eval: error: {result.error}\n(results for the {len(result.frames)} frames read "
            f"are in {args.out})",
            file=sys.stderr,
        )
        return 2
    return 0
