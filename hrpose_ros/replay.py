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

Matching: per image and object, estimates in descending score are each given the
still-unmatched ground-truth instance of that object with the smallest ADD(-S) error;
ground truth left unmatched counts as a miss, estimates left over as false positives.
Correct means: ADD(-S) below 10 % of the diameter (ADD-S for objects with symmetries;
Hinterstoisser et al. 2012), mean 2D projection error below 5 px (Brachmann et al. 2016),
rotation error below 5 deg and translation error below 5 cm (Shotton et al. 2013), all from
:mod:`hrpose_ros.metrics`. For a symmetric object the last three are measured against the
symmetric equivalent of the ground truth closest in rotation to the estimate.

``hrpose-bop-to-bag SCENE_DIR BAG`` turns one BOP scene folder (rgb/, scene_camera.json,
scene_gt.json) into such a bag; the bundled demo bag is made that way.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from hrpose_ros import bag_io, bop, metrics, ros_conversions
from hrpose_ros.bag_io import BagError, BagFrame, BagTopics
from hrpose_ros.estimators import ESTIMATORS
from hrpose_ros.metrics import Thresholds
from hrpose_ros.node_driver import NodeDriver, NodeDriverError, pose_node_command
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose, stamp_to_ns

__all__ = [
    "DEFAULT_START_NS",
    "EvalResult",
    "Estimator",
    "FrameResult",
    "InstanceScore",
    "LiveNodeError",
    "LiveNodeEstimator",
    "ObjectSummary",
    "bop_scene_to_bag",
    "bop_to_bag_main",
    "evaluate_bag",
    "evaluate_frames",
    "latency_stats",
    "match_frame",
    "metrics_dict",
    "pose_errors",
    "positive_float",
    "read_scores_csv",
    "recalls",
    "replay_eval_main",
    "summarize",
    "symmetric_ground_truth",
]

_log = logging.getLogger(__name__)

# Bag stamps of converted scenes start here (2023-11-14 22:13:20 UTC): a plausible wall time,
# fixed so that converting a scene twice gives identical bags.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000


class Estimator(Protocol):
    """What the evaluator runs: an estimator (hrpose_ros.estimators), or the live pose_node as one."""

    objects: list[ObjectModel]
    last_timings: dict[str, float]

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]: ...


@dataclass(frozen=True)
class FrameResult:
    """One processed image: its estimates, its ground truth, and seconds per pipeline stage."""

    im_id: int
    stamp_ns: int
    camera: CameraModel
    estimates: tuple[ObjectPose, ...]
    ground_truth: tuple[ObjectPose, ...] | None
    timings: dict[str, float]


@dataclass(frozen=True)
class InstanceScore:
    """One ground-truth instance and the errors of the estimate matched to it (inf when missed).

    ``add_error`` is ADD, or ADD-S for a symmetric object (metres); ``proj2d_error`` pixels;
    ``rotation_error_deg`` degrees; ``translation_error`` metres.
    """

    im_id: int
    obj_id: int
    instance_id: int
    found: bool
    score: float
    add_error: float
    proj2d_error: float
    rotation_error_deg: float
    translation_error: float


@dataclass(frozen=True)
class ObjectSummary:
    """Recalls in [0, 1] of one object (or of the mean row, ``obj_id`` 0) at the thresholds."""

    obj_id: int
    name: str
    instances: int
    found: int
    false_positives: int
    add_recall: float
    proj2d_recall: float
    cm_deg_recall: float
    symmetric: bool = False


@dataclass
class EvalResult:
    """Everything one evaluation produced; ``error`` holds the message when it stopped early."""

    bag: str
    mode: str
    frames: list[FrameResult]
    scores: list[InstanceScore]
    false_positives: dict[int, int]
    objects: dict[int, ObjectModel]
    thresholds: Thresholds
    summary: list[ObjectSummary] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    fps: float = 0.0
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.error is None


# --- scoring ----------------------------------------------------------------------------------


def symmetric_ground_truth(
    est: ObjectPose, gt: ObjectPose, obj: ObjectModel
) -> tuple[np.ndarray, np.ndarray]:
    """Return (R (3, 3), t (3,) m): ``gt`` under the symmetry of ``obj`` closest in rotation to ``est``."""
    rotations = gt.R @ obj.symmetries[:, :3, :3]  # (S, 3, 3); identity first
    cosines = 0.5 * (np.einsum("ij,sij->s", est.R, rotations) - 1.0)  # trace(R_est R^T) per symmetry
    best = int(np.argmax(cosines))
    return rotations[best], gt.R @ obj.symmetries[best, :3, 3] + gt.t


def pose_errors(
    est: ObjectPose, gt: ObjectPose, obj: ObjectModel, K: np.ndarray
) -> tuple[float, float, float, float]:
    """Return (ADD(-S) m, 2D projection px, rotation deg, translation m) of ``est`` against ``gt``.

    ADD-S for symmetric objects, else ADD. The other three are measured against the
    symmetric equivalent of ``gt`` closest in rotation (:func:`symmetric_ground_truth`).
    """
    add = metrics.add_or_adds_error(est.R, est.t, gt.R, gt.t, obj)
    R_gt, t_gt = symmetric_ground_truth(est, gt, obj)
    return (
        add,
        metrics.proj2d_error(est.R, est.t, R_gt, t_gt, K, obj.points),
        metrics.rotation_error_deg(est.R, R_gt),
        metrics.translation_error(est.t, t_gt),
    )


def match_frame(
    frame: FrameResult, objects: dict[int, ObjectModel]
) -> tuple[list[InstanceScore], dict[int, int]]:
    """Return one InstanceScore per ground-truth instance of ``frame`` and false positives per obj_id.

    Scores are ordered by obj_id, then as in ``frame.ground_truth``; the matching is
    :func:`hrpose_ros.metrics.match_estimates` (per object, best score first, each taking the
    unmatched ground truth with the smallest ADD(-S) error).
    """
    if frame.ground_truth is None:
        raise ValueError(f"frame {frame.im_id}: no ground truth to score against")
    gts = frame.ground_truth
    matched = metrics.match_estimates(frame.estimates, gts, objects)
    scores: list[InstanceScore] = []
    for g in sorted(range(len(gts)), key=lambda i: gts[i].obj_id):
        gt = gts[g]
        est = None if matched[g] is None else frame.estimates[matched[g]]
        errors = (math.inf,) * 4 if est is None else pose_errors(est, gt, objects[gt.obj_id], frame.camera.K)
        scores.append(
            InstanceScore(
                im_id=frame.im_id,
                obj_id=gt.obj_id,
                instance_id=gt.instance_id,
                found=est is not None,
                score=est.score if est is not None else 0.0,
                add_error=errors[0],
                proj2d_error=errors[1],
                rotation_error_deg=errors[2],
                translation_error=errors[3],
            )
        )
    unmatched = sorted(est.obj_id for e, est in enumerate(frame.estimates) if e not in matched)
    return scores, {obj_id: unmatched.count(obj_id) for obj_id in unmatched}


def recalls(
    scores: Sequence[InstanceScore], obj: ObjectModel, thresholds: Thresholds
) -> tuple[float, float, float]:
    """Return the recalls in [0, 1] of ``scores`` (one object) under (ADD(-S), 2D projection, n cm n deg)."""
    add = [s.add_error for s in scores]
    proj2d = [s.proj2d_error for s in scores]
    # n cm n deg is one error below 1: the larger of the two errors relative to their thresholds.
    cm_deg = [
        max(s.rotation_error_deg / thresholds.rotation_deg, s.translation_error / thresholds.translation_m)
        for s in scores
    ]
    return (
        metrics.recall(add, thresholds.add_diameter_fraction * obj.diameter),
        metrics.recall(proj2d, thresholds.proj2d_px),
        metrics.recall(cm_deg, 1.0),
    )


def summarize(
    scores: Sequence[InstanceScore],
    false_positives: dict[int, int],
    objects: dict[int, ObjectModel],
    thresholds: Thresholds,
) -> list[ObjectSummary]:
    """Return one ObjectSummary per object with ground truth, then the mean over those objects (obj_id 0)."""
    rows = []
    for obj_id in sorted({s.obj_id for s in scores}):
        obj = objects[obj_id]
        own = [s for s in scores if s.obj_id == obj_id]
        add, proj2d, cm_deg = recalls(own, obj, thresholds)
        rows.append(
            ObjectSummary(
                obj_id=obj_id,
                name=obj.name,
                instances=len(own),
                found=sum(s.found for s in own),
                false_positives=false_positives.get(obj_id, 0),
                add_recall=add,
                proj2d_recall=proj2d,
                cm_deg_recall=cm_deg,
                symmetric=obj.is_symmetric,
            )
        )
    if rows:
        rows.append(
            ObjectSummary(
                obj_id=0,
                name="mean",
                instances=sum(r.instances for r in rows),
                found=sum(r.found for r in rows),
                false_positives=sum(false_positives.values()),
                add_recall=float(np.mean([r.add_recall for r in rows])),
                proj2d_recall=float(np.mean([r.proj2d_recall for r in rows])),
                cm_deg_recall=float(np.mean([r.cm_deg_recall for r in rows])),
            )
        )
    return rows


def latency_stats(frames: Sequence[FrameResult]) -> tuple[dict[str, dict[str, float]], float]:
    """Return ({stage: {mean, median, p90, max} ms}, fps = 1 / mean total seconds) over ``frames``."""
    stages: dict[str, list[float]] = {}
    for frame in frames:
        for stage, seconds in frame.timings.items():
            stages.setdefault(stage, []).append(seconds)
    stats = {
        stage: {
            "mean_ms": 1000.0 * float(np.mean(values)),
            "median_ms": 1000.0 * float(np.median(values)),
            "p90_ms": 1000.0 * float(np.percentile(values, 90)),
            "max_ms": 1000.0 * float(np.max(values)),
        }
        for stage, values in stages.items()
    }
    total = stages.get("total")
    fps = 1.0 / float(np.mean(total)) if total and np.mean(total) > 0 else 0.0
    return stats, fps


# --- running ----------------------------------------------------------------------------------


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
            start = time.perf_counter()
            estimates = tuple(estimator(frame.image, frame.camera))
            elapsed = time.perf_counter() - start
            timings = {**estimator.last_timings, "total": elapsed}
            result = FrameResult(
                frame.index, frame.stamp_ns, frame.camera, estimates, frame.ground_truth, timings
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


def _write_results_csv(path: Path, frames: Sequence[FrameResult], scene_id: int) -> None:
    records = [
        bop.BopResult(
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
    bop.write_results_csv(path, records)


def _write_scores_csv(path: Path, scores: Sequence[InstanceScore]) -> None:
    names = [f for f in InstanceScore.__dataclass_fields__]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for s in scores:
            writer.writerow(
                [repr(v) if isinstance(v, float) else int(v) for v in (getattr(s, n) for n in names)]
            )


def read_scores_csv(path: Path | str) -> list[InstanceScore]:
    """Return the InstanceScores of a ``scores.csv`` written by the evaluator."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    types = {"found": lambda v: bool(int(v)), "im_id": int, "obj_id": int, "instance_id": int}
    return [InstanceScore(**{k: types.get(k, float)(v) for k, v in row.items()}) for row in rows]


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
    scores: list[InstanceScore] = []
    false_positives: dict[int, int] = {}
    for frame in frames:
        if frame.ground_truth is None:
            continue
        frame_scores, frame_fp = match_frame(frame, objects)
        scores += frame_scores
        for obj_id, n in frame_fp.items():
            false_positives[obj_id] = false_positives.get(obj_id, 0) + n
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
    result.latency, result.fps = latency_stats(frames)
    _write_results_csv(out / "results.csv", frames, scene_id)
    _write_scores_csv(out / "scores.csv", scores)
    result.outputs = {
        "results": str(out / "results.csv"),
        "scores": str(out / "scores.csv"),
        **overlay.outputs,
    }
    result.outputs.update(report.write_report(out, result))
    result.outputs["metrics"] = str(out / "metrics.json")
    (out / "metrics.json").write_text(json.dumps(metrics_dict(result), indent=2) + "\n")
    return result


def metrics_dict(result: EvalResult) -> dict:
    """Return the JSON-ready numbers of ``result`` (what metrics.json holds)."""
    return {
        "bag": result.bag,
        "mode": result.mode,
        "complete": result.complete,
        "error": result.error,
        "frames": len(result.frames),
        "thresholds": asdict(result.thresholds),
        "objects": [asdict(s) for s in result.summary],
        "latency_ms": result.latency,
        "fps": result.fps,
        "outputs": result.outputs,
    }


# --- BOP scene -> bag -------------------------------------------------------------------------


def bop_scene_to_bag(
    scene_dir: Path | str,
    bag: Path | str,
    names: dict[int, str] | None = None,
    storage: str = "mcap",
    image_format: str = "raw",
    zstd: bool = False,
    fps: float = 10.0,
    min_visib_fract: float = 0.1,
    jpeg_quality: int = 95,
    start_ns: int = DEFAULT_START_NS,
    frame_id: str = bag_io.CAMERA_FRAME,
    topics: BagTopics | None = None,
    progress: bool = True,
) -> int:
    """Return the number of frames written to a new replay bag from one BOP scene folder.

    Images go in ascending im_id, one every 1/``fps`` s from ``start_ns``; each with its
    camera_info (scene_camera.json K, no distortion) and its ground truth (scene_gt.json,
    metres) as an ObjectPoseArray, all three with the same stamp. ``names`` maps obj_id to
    the class_name written (default ``obj_OBJID``). When the scene has scene_gt_info.json,
    instances less than ``min_visib_fract`` visible are left out, as BOP leaves them out of
    its test targets.
    """
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    frames = bop.read_scene(scene_dir, scene_id=0 if not Path(scene_dir).name.isdigit() else None)
    if not frames:
        raise ValueError(f"{scene_dir}: scene_camera.json lists no images")
    names = names or {}
    period_ns = 1e9 / fps
    with bag_io.BagWriter(
        bag,
        storage=storage,
        image_format=image_format,
        zstd=zstd,
        topics=topics or BagTopics(),
        frame_id=frame_id,
        jpeg_quality=jpeg_quality,
    ) as writer:
        for i, frame in enumerate(
            tqdm(frames, unit="frame", desc=f"bag {Path(bag).name}", disable=not progress)
        ):
            per_class: dict[int, int] = {}
            truth = []
            for inst in frame.instances:
                if inst.info is not None and inst.info.visib_fract < min_visib_fract:
                    continue
                instance_id = per_class.get(inst.obj_id, 0)
                per_class[inst.obj_id] = instance_id + 1
                truth.append(
                    ObjectPose(
                        class_name=names.get(inst.obj_id, f"obj_{inst.obj_id:06d}"),
                        obj_id=inst.obj_id,
                        instance_id=instance_id,
                        score=1.0,
                        R=inst.R,
                        t=inst.t,
                    )
                )
            writer.write_frame(start_ns + round(i * period_ns), frame.read_rgb(), frame.camera, truth)
    return len(frames)


# --- live pose_node ---------------------------------------------------------------------------


LiveNodeError = NodeDriverError  # the pose_node subprocess did not start or did not answer an image in time


class LiveNodeEstimator:
    """The running ``pose_node`` behind the pipeline's call: publish one image, wait for its answer.

    Starts ``command`` (the pose_node executable) through :class:`~hrpose_ros.node_driver.NodeDriver`
    with the ``--ros-args`` a launch file would pass: a unique node name, ``image``/``camera_info``
    remapped to private topics with reliable QoS, TF/markers/overlay off, and the weights file,
    estimator and thresholds (keypoint threshold: HRPose only) of the in-process estimator, so both
    paths give the same poses. Each call publishes the image then its camera_info and blocks until
    ``~/objects`` arrives with the image's stamp, so no frame is dropped by the node's one-slot
    queue; the measured time is the round
    trip (conversion, inference and DDS both ways). ``objects`` are the models the node's weights
    name (loaded here from the same weights). Close with :meth:`close`.
    """

    def __init__(self, driver: NodeDriver, objects: list[ObjectModel]):
        self._driver = driver
        self.objects = objects
        self._calls = 0
        self._stamp_ns = DEFAULT_START_NS
        self._answers: dict[int, object] = {}
        self.last_timings: dict[str, float] = {}

    @classmethod
    def start(
        cls,
        command: str = "pose_node",
        weights: Path | None = None,
        backend: str = "torch",
        device: str = "auto",
        precision: str = "fp32",
        params: Sequence[str] = (),
        timeout: float = 60.0,
        estimator: str = "auto",
    ) -> LiveNodeEstimator:
        """Return an estimator driving a freshly started pose_node; LiveNodeError if it does not come up.

        ``weights`` None: the shipped default of ``estimator`` (hrpose_ros.estimators.default_weights).
        """
        import os
        import shlex

        from hrpose_ros.estimators import default_weights, load_estimator
        from hrpose_ros.msg import ObjectPoseArray
        from hrpose_ros.pipeline import PosePipeline

        # The same weights in-process give the object models to score against and the thresholds
        # the node must use to answer as the in-process estimator would; the node gets the resolved
        # file, so both run the same one whatever the defaults.
        weights = Path(weights) if weights is not None else default_weights(estimator)
        reference = load_estimator(weights, estimator, backend=backend, device=device, precision=precision)
        argv = shlex.split(command)
        if argv == ["pose_node"]:
            argv = pose_node_command()
        if isinstance(reference, PosePipeline):
            score = reference.thresholds.min_score
            hrpose_only = {"keypoint_threshold": reference.codec.config.peak_threshold}
        else:  # crops: poses scoring below the detector's own threshold are never made
            score, hrpose_only = max(reference.thresholds.min_score, reference.detection_threshold), {}
        node_params = {
            "model_path": weights,
            "estimator": estimator,
            "backend": backend,
            "device": device,
            "precision": precision,
            "publish_tf": "false",
            "publish_markers": "false",
            "publish_overlay": "false",
            "image_is_rectified": "false",
            "score_threshold": score,
            "min_depth": reference.thresholds.min_depth,
            "max_depth": reference.thresholds.max_depth,
            "min_keypoint_spread": reference.thresholds.min_keypoint_spread,
            **hrpose_only,
        }
        for param in params:
            key, sep, value = param.partition(":=")
            if not sep:
                raise ValueError(f"--node-param: expected NAME:=VALUE, got {param!r}")
            node_params[key] = value
        driver = NodeDriver(argv, f"hrpose_replay_{os.getpid()}", node_params, timeout)
        _log.info("starting %s", " ".join(driver.command))
        estimator = cls(driver, reference.objects)
        driver.subscribe(ObjectPoseArray, f"{driver.namespace}/objects", estimator._on_objects)
        try:
            driver.wait_ready()
        except NodeDriverError:
            driver.close()
            raise
        return estimator

    def _on_objects(self, msg) -> None:
        self._answers[stamp_to_ns(msg.header.stamp)] = msg

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]:
        """Return the poses the live node publishes for one image (sent with a fresh stamp)."""
        self._stamp_ns += 1_000_000  # a fresh stamp per call: the answer is recognised by it
        header = ros_conversions.header_msg(self._stamp_ns, bag_io.CAMERA_FRAME)
        info = ros_conversions.camera_info_msg(camera, header)
        image = ros_conversions.rgb_to_image(np.ascontiguousarray(image_rgb), header)
        stamp = self._stamp_ns
        self._calls += 1
        start = self._driver.send(image, info)
        if not self._driver.spin_until(lambda: stamp in self._answers, self._driver.timeout):
            timeout = self._driver.timeout
            raise self._driver.failure(f"pose_node: no answer to image {self._calls} within {timeout:.0f} s")
        msg = self._answers.pop(stamp)
        self.last_timings = {"round_trip": time.perf_counter() - start}
        return list(ros_conversions.poses_from_msg(msg))

    def close(self) -> None:
        """Stop the node subprocess and the driver node."""
        self._driver.close()


# --- command lines ----------------------------------------------------------------------------


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
        help="inference precision (hrpose_ros.runtime; int8 needs --backend onnxruntime and a .int8.onnx)",
    )
    parser.add_argument(
        "--image-topic", default=None, help="default: the bag's only Image/CompressedImage topic"
    )
    parser.add_argument("--camera-info-topic", default=None, help="default: the bag's only CameraInfo topic")
    parser.add_argument("--gt-topic", default=None, help=f"default: {bag_io.GROUND_TRUTH_TOPIC}")
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


def replay_eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hrpose-replay-eval``; returns the exit code (2 = stopped early, partial outputs)."""
    from hrpose_ros import report

    args = _replay_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        topics = bag_io.resolve_topics(args.bag, args.image_topic, args.camera_info_topic, args.gt_topic)
        from hrpose_ros.runtime import resolve_device

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
            )
            mode = f"live pose_node ({kind}, {args.backend}, {args.precision}, {device})"
        else:
            from hrpose_ros.estimators import load_estimator

            estimator = load_estimator(
                weights, args.estimator, backend=args.backend, device=device, precision=args.precision
            )
            mode = f"pipeline ({kind}, {args.backend}, {args.precision}, {device})"
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


def bop_to_bag_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hrpose-bop-to-bag``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="hrpose-bop-to-bag",
        description="Convert one BOP scene folder (rgb/, scene_camera.json, scene_gt.json) into a rosbag2 "
        f"replay bag: image, camera_info and ground truth ({bag_io.GROUND_TRUTH_TOPIC}, "
        "hrpose_ros/msg/ObjectPoseArray) per image, same stamps.",
    )
    parser.add_argument("scene_dir", type=Path)
    parser.add_argument("bag", type=Path, help="bag directory to create")
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="BOP models folder whose object_names.json names the objects "
        "(default: the shipped object set's names when present)",
    )
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument(
        "--image-format",
        default="raw",
        choices=("raw", "png", "jpeg"),
        help="raw = sensor_msgs/Image rgb8; png/jpeg = sensor_msgs/CompressedImage",
    )
    parser.add_argument("--zstd", action="store_true", help="zstd-compress mcap chunks")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument(
        "--min-visib-fract",
        type=float,
        default=0.1,
        help="leave out ground truth less visible than this (needs scene_gt_info.json)",
    )
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--frame-id", default=bag_io.CAMERA_FRAME)
    parser.add_argument("--image-topic", default=bag_io.IMAGE_TOPIC)
    parser.add_argument("--camera-info-topic", default=bag_io.CAMERA_INFO_TOPIC)
    parser.add_argument("--gt-topic", default=bag_io.GROUND_TRUTH_TOPIC)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        names = _object_names(args.models)
        n = bop_scene_to_bag(
            args.scene_dir,
            args.bag,
            names=names,
            storage=args.storage,
            image_format=args.image_format,
            zstd=args.zstd,
            fps=args.fps,
            min_visib_fract=args.min_visib_fract,
            jpeg_quality=args.jpeg_quality,
            frame_id=args.frame_id,
            topics=BagTopics(args.image_topic, args.camera_info_topic, args.gt_topic),
            progress=not args.quiet,
        )
    except ValueError as exc:
        print(f"hrpose-bop-to-bag: error: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.bag.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {n} frames to {args.bag} ({size:.1f} MB)")
    return 0


def _object_names(models_dir: Path | None) -> dict[int, str]:
    """Return {obj_id: name} from ``models_dir``'s object_names.json, or from the shipped object set."""
    if models_dir is not None:
        if not (models_dir / "models_info.json").is_file():
            raise ValueError(f"--models {models_dir}: expected a BOP models folder with models_info.json")
        return bop.read_object_names(models_dir)
    from hrpose_ros.data.objects import default_object_set_dir

    default = Path(default_object_set_dir())
    return bop.read_object_names(default) if (default / "models_info.json").is_file() else {}
