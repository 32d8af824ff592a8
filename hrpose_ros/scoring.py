"""Scoring of replayed frames: match estimates to ground truth, per-instance errors, recalls, latency.

Matching: per image and object, estimates in descending score are each given the
still-unmatched ground-truth instance of that object with the smallest ADD(-S) error;
ground truth left unmatched counts as a miss, estimates left over as false positives.
Correct means: ADD(-S) below 10 % of the diameter (ADD-S for objects with symmetries;
Hinterstoisser et al. 2012), mean 2D projection error below 5 px (Brachmann et al. 2016),
rotation error below 5 deg and translation error below 5 cm (Shotton et al. 2013), all from
:mod:`hrpose_ros.metrics`. For a symmetric object the last three are measured against the
symmetric equivalent of the ground truth closest in rotation to the estimate.

``scores.csv`` holds one :class:`InstanceScore` per ground-truth instance
(:func:`write_scores_csv`, :func:`read_scores_csv`); :func:`metrics_dict` gives what
``metrics.json`` holds.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hrpose_ros import metrics
from hrpose_ros.metrics import Thresholds
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = [
    "EvalResult",
    "FrameResult",
    "InstanceScore",
    "ObjectSummary",
    "latency_stats",
    "match_frame",
    "metrics_dict",
    "pose_errors",
    "read_scores_csv",
    "recalls",
    "summarize",
    "symmetric_ground_truth",
    "write_scores_csv",
]


@dataclass(frozen=True)
class FrameResult:
    """One processed image: its estimates, its ground truth, and seconds per pipeline stage.

    ``rgb_estimates`` are the same network's poses before depth refinement (RGB-D replays only).
    """

    im_id: int
    stamp_ns: int
    camera: CameraModel
    estimates: tuple[ObjectPose, ...]
    ground_truth: tuple[ObjectPose, ...] | None
    timings: dict[str, float]
    rgb_estimates: tuple[ObjectPose, ...] | None = None


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
    rgb_summary: list[ObjectSummary] = field(default_factory=list)  # before depth refinement (RGB-D)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    fps: float = 0.0
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.error is None


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


def write_scores_csv(path: Path, scores: Sequence[InstanceScore]) -> None:
    """Write ``scores`` to ``path``: one row per instance, floats as repr so they read back exactly."""
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
        **({"objects_rgb_only": [asdict(s) for s in result.rgb_summary]} if result.rgb_summary else {}),
        "latency_ms": result.latency,
        "fps": result.fps,
        "outputs": result.outputs,
    }
