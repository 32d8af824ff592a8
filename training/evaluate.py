"""Evaluate HRPose checkpoints on BOP test splits: ADD(-S) 0.1d, 2D projection 5 px, 5 cm 5 deg recall.

Prints (and writes as Markdown/CSV/JSON) a table per metric like the paper's Tables 1 and 4:
one row per object plus the mean, one column per model (teacher, student, student + KD),
and the KD gain over the student. Each split is reported separately (e.g. single-object views
and multi-instance bin scenes).

    python -m training.evaluate --split test=data/test \
        --model Teacher=runs/teacher/last.pt --model HRPose=runs/student/last.pt \
        --model HRPose+KD=runs/student_kd/last.pt --out runs/eval

``--gt-maps CHECKPOINT`` adds a column "GT maps": the frames' ground-truth keypoints encoded by
that checkpoint's codec at its input size and decoded + solved by the same pipeline, i.e. what
a perfect network would score. It is the ceiling the input size, the codec and PnP put on any
model trained that way (``--input-size WxH`` evaluates every model, and this ceiling, at another
input size).

Every model is also compared instance by instance with the ``--baseline`` model (else the first
one): how many instances only it gets right, how many only the baseline does, and McNemar's
exact p-value for that split of the disagreements. Recall differences of a point or two between
two checkpoints are often chance; the p-value says when they are not.

Three more tables say where the misses are: "decoded" (the share of instances with a grouped
instance of their object, centroid peak plus at least ``min_keypoints`` keypoints, whose centroid
lies within :data:`DECODED_RADIUS_PX` of the true one: a miss there is the maps', peaks below the
threshold or corners not grouped), "pose found" (any pose at all: decoded but not found means PnP
or its acceptance checks turned the keypoints down) and "ADD(-S) 0.1d of those found" (accuracy of
the poses that exist; "-" when none was found).

``--max-translation-cm N --max-rotation-deg M`` adds one more metric, "N cm M deg" (for example
issue 6's 1 cm 5 deg for well-visible objects), beside the paper's 5 cm 5 deg, with the count of
instances within it per model; ``hrpose-replay-eval`` takes the same two flags for a bag.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest
from tqdm import tqdm

from hrpose_ros import bop_reader, metrics, replay, scoring
from hrpose_ros.codec import DecodedInstance
from hrpose_ros.crop_pipeline import CORRESPONDENCES, CropPosePipeline, load_crops_file
from hrpose_ros.devices import resolve_device
from hrpose_ros.estimators import estimator_of, load_estimator
from hrpose_ros.geometry import project
from hrpose_ros.letterbox import Letterbox, letterbox_scale, scale_points
from hrpose_ros.pipeline import NetworkMaps, PosePipeline, PoseThresholds
from hrpose_ros.types import Detection, ObjectModel, ObjectPose
from training.crop_data import amodal_box
from training.data import frame_keypoints

__all__ = [
    "InstanceResult",
    "evaluate_split",
    "format_paired",
    "format_table",
    "ground_truth_boxes",
    "ground_truth_crops",
    "ground_truth_maps",
    "main",
    "mark_decoded",
    "match_poses",
    "metric_names",
    "metric_titles",
    "paired_comparison",
    "scored_instances",
    "summarise",
]

logger = logging.getLogger(__name__)

METRICS = ("add", "proj2d", "5cm5deg")
# The extra "n cm n deg" metric of --max-translation-cm/--max-rotation-deg (only when given).
CM_DEG = "cm_deg"
GT_MAPS = "GT maps"  # the --gt-maps column
# Where the misses are: the share of instances grouped by the decoder, the share with any pose, and
# ADD(-S) among those.
DIAGNOSTICS = ("decoded", "found", "add_if_found")
# A grouped instance "decodes" a ground-truth one when its centroid is this close to the projected
# true centroid (image pixels; 1.25 map pixels of the 320x256 input for a 640x480 frame).
DECODED_RADIUS_PX = 10.0
METRIC_TITLES = {
    "add": "ADD(-S) 0.1d",
    "proj2d": "2D projection 5 px",
    "5cm5deg": "5 cm 5 deg",
    "decoded": f"decoded (grouped instance within {DECODED_RADIUS_PX:g} px)",
    "found": "pose found (any error)",
    "add_if_found": "ADD(-S) 0.1d of those found",
}


@dataclass
class InstanceResult:
    """One ground-truth instance: object, whether each metric calls its best estimate correct, errors."""

    obj_id: int
    correct: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    decoded: bool = False  # a grouped instance of its object near its centroid (DECODED_RADIUS_PX)

    @property
    def found(self) -> bool:
        """True when an estimate was matched to this instance (its errors are filled only then)."""
        return bool(self.errors)


def metric_names(bounds: tuple[float, float] | None = None) -> tuple[str, ...]:
    """Return the metrics scored: :data:`METRICS`, plus :data:`CM_DEG` when ``bounds`` are given."""
    return METRICS + ((CM_DEG,) if bounds is not None else ())


def metric_titles(bounds: tuple[float, float] | None = None) -> dict[str, str]:
    """Return :data:`METRIC_TITLES` with the title of :data:`CM_DEG` for ``bounds`` (metres, degrees)."""
    if bounds is None:
        return dict(METRIC_TITLES)
    translation_m, rotation_deg = bounds
    return {**METRIC_TITLES, CM_DEG: f"{100.0 * translation_m:g} cm {rotation_deg:g} deg"}


def _bounds(bounds) -> tuple[float, float] | None:
    """Return ``bounds`` as (metres, degrees), both finite and > 0, or a ValueError saying which is not."""
    if bounds is None:
        return None
    translation_m, rotation_deg = (float(v) for v in bounds)
    for name, value in (("translation bound", translation_m), ("rotation bound", rotation_deg)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return translation_m, rotation_deg


def match_poses(
    poses: Sequence[ObjectPose],
    frame: bop_reader.BopFrame,
    objects: dict[int, ObjectModel],
    min_visib_fract: float = 0.1,
    bounds: tuple[float, float] | None = None,
) -> list[InstanceResult]:
    """Return one result per ground-truth instance of ``frame``, matched to estimates of its object.

    Matching is the rosbag replay's, :func:`hrpose_ros.metrics.match_estimates` (per object, best
    score first, each taking the unmatched instance with the smallest ADD(-S) error); an unmatched
    instance counts as wrong for every metric. Instances with less than ``min_visib_fract``
    visible (when the split has scene_gt_info) are not evaluated, as in BOP. ``bounds``
    (translation in metres, rotation in degrees) adds the verdict :data:`CM_DEG`: both errors
    below them (strictly, as 5 cm 5 deg).
    """
    bounds = _bounds(bounds)
    names = metric_names(bounds)
    K = frame.camera.K
    gts = scored_instances(frame, objects, min_visib_fract)
    results = [InstanceResult(obj_id=g.obj_id) for g in gts]
    for gt, result, e in zip(gts, results, metrics.match_estimates(poses, gts, objects)):
        if e is None:
            result.correct = {m: False for m in names}
            continue
        obj = objects[gt.obj_id]
        # 2D projection and 5 cm 5 deg against the symmetric equivalent of the ground truth closest
        # in rotation, as the rosbag replay scores them (a box-shaped jenga block turned by 180 deg
        # looks the same, and its keypoints are labelled from that equivalent: training/data.py).
        add, proj, re, te = scoring.pose_errors(poses[e], gt, obj, K)
        result.errors = {"add_m": add, "proj2d_px": proj, "re_deg": re, "te_m": te}
        result.correct = {
            "add": add < metrics.ADD_THRESHOLD_DIAMETER * obj.diameter,
            "proj2d": proj < metrics.PROJ2D_THRESHOLD_PX,
            "5cm5deg": re < metrics.ROTATION_THRESHOLD_DEG and te < metrics.TRANSLATION_THRESHOLD_M,
        }
        if bounds is not None:
            result.correct[CM_DEG] = te < bounds[0] and re < bounds[1]
    return results


def scored_instances(
    frame: bop_reader.BopFrame, objects: Container[int], min_visib_fract: float = 0.1
) -> list:
    """Return the scored ground-truth instances of ``frame`` (object id in ``objects``, visible enough)."""
    return [
        g
        for g in frame.instances
        if g.obj_id in objects and (g.info is None or g.info.visib_fract >= min_visib_fract)
    ]


def mark_decoded(
    results: Sequence[InstanceResult],
    decoded: Sequence[DecodedInstance],
    pipeline: PosePipeline,
    frame: bop_reader.BopFrame,
    min_visib_fract: float = 0.1,
) -> None:
    """Set ``decoded`` on :func:`match_poses`' ``results`` for ``frame`` from the grouped instances.

    True when an instance of the same object has its centroid within :data:`DECODED_RADIUS_PX` of
    the ground truth's projected centroid keypoint (image pixels).
    """
    index = {o.obj_id: c for c, o in enumerate(pipeline.objects)}  # object id -> class index
    gts = scored_instances(frame, index, min_visib_fract)
    if len(gts) != len(results):
        raise ValueError(f"results: expected one per scored instance ({len(gts)}), got {len(results)}")
    centroids = [(d.class_index, d.keypoints[-1]) for d in decoded]
    for gt, result in zip(gts, results):
        c = index[gt.obj_id]
        truth = project(pipeline.keypoints_3d[c][-1:], gt.R, gt.t, frame.camera.K, frame.camera.dist)[0]
        result.decoded = any(
            k == c and np.hypot(*(point - truth)) <= DECODED_RADIUS_PX for k, point in centroids
        )


def ground_truth_maps(pipeline: PosePipeline, frame: bop_reader.BopFrame) -> NetworkMaps:
    """Return the maps a perfect network would give ``pipeline`` for ``frame``.

    The frame's annotated keypoints (as training labels them: :func:`training.data.frame_keypoints`)
    are letterboxed like the image and encoded by the pipeline's codec at its input size (Eq. 1-2).
    """
    width, height = pipeline.input_size
    scale = letterbox_scale(frame.camera.width, frame.camera.height, width, height)
    keypoints, classes = frame_keypoints(frame, pipeline.objects)
    belief, vectors = pipeline.codec.encode(scale_points(keypoints, scale), classes, height, width)
    box = Letterbox(scale=float(scale), width=width, height=height)
    return NetworkMaps(belief, vectors, box, {})


def ground_truth_boxes(frame: bop_reader.BopFrame, objects: dict[int, ObjectModel],
                       min_visib_fract: float = 0.1) -> list[Detection]:
    """Return the scored instances' amodal boxes as detections (score 1): crops without the detector."""
    return [box for _, box in ground_truth_crops(frame, objects, min_visib_fract)]


def ground_truth_crops(frame: bop_reader.BopFrame, objects: dict[int, ObjectModel],
                       min_visib_fract: float = 0.1) -> list[tuple]:
    """Return (ground-truth instance, its amodal box as a Detection) for the scored instances with a box.

    Boxes come from scene_gt_info's bbox_obj, else from the projected model points.
    """
    pairs = []
    for gt in scored_instances(frame, objects, min_visib_fract):
        obj = objects[gt.obj_id]
        box = gt.info.bbox_obj if gt.info is not None else amodal_box(obj, gt.R, gt.t, frame.camera)
        if box[2] > 0 and box[3] > 0:
            pairs.append((gt, Detection(obj.obj_id, obj.name, 1.0, np.asarray(box, dtype=np.float64))))
    return pairs


def evaluate_split(
    pipeline: PosePipeline,
    frames: Sequence[bop_reader.BopFrame],
    desc: str = "",
    gt_maps: bool = False,
    bounds: tuple[float, float] | None = None,
    gt_boxes: bool = False,
) -> dict:
    """Return {"instances": [InstanceResult], "seconds_per_frame": float} for ``pipeline`` on ``frames``.

    With ``gt_maps`` the network is replaced by :func:`ground_truth_maps` (decoding and PnP stay),
    and the seconds are those of decoding and PnP alone. ``bounds``: as :func:`match_poses`.
    ``gt_boxes`` (crop estimator): crops around the ground-truth amodal boxes instead of detections.
    """
    objects = {o.obj_id: o for o in pipeline.objects}
    crops = isinstance(pipeline, CropPosePipeline)
    results, seconds = [], []
    for frame in tqdm(frames, desc=desc, leave=False):
        if gt_maps:
            maps = ground_truth_maps(pipeline, frame)
            start = time.perf_counter()
        else:
            image = frame.read_rgb()
            start = time.perf_counter()
            if crops:
                boxes = ground_truth_boxes(frame, objects) if gt_boxes else None
                maps = pipeline.estimate_maps(image, frame.camera, detections=boxes)
            else:
                maps = pipeline.estimate_maps(image, frame.camera)
        # pipeline.poses_from_maps in its two steps, to keep the grouped instances for "decoded"
        if crops:
            decoded = pipeline.decode(maps)
        else:
            decoded = pipeline.decode(maps.belief_maps, maps.vector_fields, maps.box)
        poses = pipeline.solve(decoded, frame.camera)
        if crops and not gt_maps:
            poses, _ = pipeline.improve(image, frame.camera, poses)
        seconds.append(time.perf_counter() - start)
        own = match_poses(poses, frame, objects, bounds=bounds)
        mark_decoded(own, decoded, pipeline, frame)
        results.extend(own)
    return {"instances": results, "seconds_per_frame": float(np.median(seconds)) if seconds else 0.0}


def _verdicts(own: Sequence[InstanceResult], metric: str) -> list[bool]:
    """Return the verdicts of ``metric`` (or of a :data:`DIAGNOSTICS` entry) on one object's instances."""
    if metric == "decoded":
        return [r.decoded for r in own]
    if metric == "found":
        return [r.found for r in own]
    if metric == "add_if_found":
        return [r.correct["add"] for r in own if r.found]
    return [r.correct[metric] for r in own]


def summarise(
    instances: Sequence[InstanceResult], names: dict[int, str], scored: Sequence[str] = METRICS
) -> dict[str, dict[str, float]]:
    """Return {metric: {object name: recall %, ..., "Mean": mean over objects}} (objects with instances).

    Besides the ``scored`` metrics (:func:`metric_names`) it holds the :data:`DIAGNOSTICS`:
    "decoded" (% of instances with a grouped instance near their centroid), "found" (% of
    instances with any pose) and "add_if_found" (ADD(-S) % among those; None for an object with
    none found, left out of its mean).
    """
    by_object = {obj_id: [r for r in instances if r.obj_id == obj_id] for obj_id in names}
    table = {}
    for metric in tuple(scored) + DIAGNOSTICS:
        per_object = {}
        for obj_id, name in names.items():
            if not by_object[obj_id]:
                continue
            hits = _verdicts(by_object[obj_id], metric)
            per_object[name] = 100.0 * float(np.mean(hits)) if hits else None
        values = [v for v in per_object.values() if v is not None]
        per_object["Mean"] = float(np.mean(values)) if values else 0.0
        table[metric] = per_object
    return table


def paired_comparison(reference: Sequence[bool], other: Sequence[bool]) -> dict:
    """Return how two models' verdicts on the same instances differ, with McNemar's exact p-value.

    ``reference[i]`` and ``other[i]`` say whether each model got ground-truth instance ``i`` right.
    Returns {"only_other", "only_reference", "both", "p"}; p is the two-sided exact McNemar test,
    which is the binomial test of the disagreements against an even split (scipy's ``binomtest``;
    statsmodels' ``mcnemar`` would be a dependency for this one line). No disagreement gives p = 1.
    """
    reference, other = np.asarray(reference, dtype=bool), np.asarray(other, dtype=bool)
    if reference.shape != other.shape or reference.ndim != 1:
        raise ValueError(
            f"paired comparison needs one verdict per instance from both models, got {reference.shape} "
            f"and {other.shape}"
        )
    only_other, only_reference = int(np.sum(other & ~reference)), int(np.sum(reference & ~other))
    disagreements = only_other + only_reference
    p = binomtest(only_other, disagreements, 0.5).pvalue if disagreements else 1.0
    return {
        "only_other": only_other,
        "only_reference": only_reference,
        "both": int(np.sum(reference & other)),
        "p": float(p),
    }


def format_paired(
    reference: str, paired: dict[str, dict[str, dict]], titles: dict[str, str] | None = None
) -> str:
    """Return a Markdown table of :func:`paired_comparison` results, one row per model and metric.

    ``titles``: the metrics' titles (default :data:`METRIC_TITLES`; :func:`metric_titles` for bounds).
    """
    titles = titles or METRIC_TITLES
    lines = [
        f"| paired with {reference} | metric | right only with this model | right only with {reference} "
        "| McNemar exact p |",
        "|---|---|---|---|---|",
    ]
    for model, by_metric in paired.items():
        for metric, c in by_metric.items():
            counts = f"{c['only_other']} | {c['only_reference']}"
            lines.append(f"| {model} | {titles[metric]} | {counts} | {c['p']:.3g} |")
    return "\n".join(lines)


def format_table(
    metric: str,
    summaries: dict[str, dict],
    baseline: str | None,
    distilled: str | None,
    titles: dict[str, str] | None = None,
) -> str:
    """Return a Markdown table: rows = objects + Mean, columns = models, the distilled one with its gain.

    ``titles``: as :func:`format_paired`.
    """
    titles = titles or METRIC_TITLES
    models = list(summaries)
    rows = list(next(iter(summaries.values()))[metric]) if summaries else []
    lines = [f"| {titles[metric]} | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for row in rows:
        cells = []
        for model in models:
            value = summaries[model][metric].get(row, float("nan"))
            if value is None:  # add_if_found of an object with no pose found
                cells.append("-")
                continue
            cell = f"{value:.2f}"
            reference = summaries[baseline][metric].get(row) if baseline in summaries else None
            if model == distilled and reference is not None:
                cell += f" ({value - reference:+.2f})"
            cells.append(cell)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gt_maps_backend(path: str) -> str:
    """Return the engine that loads ``path`` for --gt-maps (the network never runs, any will do)."""
    return "onnxruntime" if Path(path).suffix == ".onnx" else "torch"


def _input_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH (e.g. 640x480), got {text!r}") from None
    if width <= 0 or height <= 0 or width % 32 or height % 32:
        raise argparse.ArgumentTypeError(f"expected positive multiples of 32, got {text!r}")
    return width, height


def _device(text: str) -> str:
    try:
        resolve_device(text)  # the name only; "auto" is resolved for the backend in main()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("device: ")) from None
    return text


def _named(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        if "=" not in value:
            raise ValueError(f"{what}: expected NAME=PATH, got {value!r}")
        name, path = value.split("=", 1)
        out[name] = path
    return out


def _columns(models: dict[str, str], gt_boxes: bool) -> dict[str, tuple[str, bool]]:
    """Return {column: (weights, ground-truth boxes?)}: with ``gt_boxes``, crop models twice."""
    columns = {}
    for name, path in models.items():
        columns[name] = (path, False)
        if gt_boxes and name != GT_MAPS and estimator_of(path) == "crops":
            columns[f"{name} GT boxes"] = (path, True)
    return columns


def _options(path: str, input_size, overrides: dict) -> dict:
    """Return the from_pretrained options for ``path``'s estimator (HRPose-only ones refused for crops).

    ``correspondences`` goes only to crop models with a coordinate head, ``box_depth_weight`` only to
    those with an extreme-point head: the others have no such outputs.
    """
    estimator = estimator_of(path)
    heads = {"correspondences": "coordinates", "box_depth_weight": "extremes"}
    if any(k in heads for k in overrides):  # reading the network's config loads the whole file
        config = load_crops_file(path)[1].config if estimator == "crops" else None
        overrides = {k: v for k, v in overrides.items()
                     if k not in heads or (config is not None and getattr(config, heads[k]))}
    crops_only = [k for k in ("refiner", "refine_iterations", "recrop", "scorer", "hypotheses",
                              "hypothesis_gate") if k in overrides]
    if estimator == "hrpose" and crops_only:
        raise ValueError(f"{path}: {', '.join(crops_only)}: options of crop models only")
    if estimator == "hrpose":
        return {"input_size": input_size, **overrides}
    hrpose_only = [k for k in ("peak_threshold",) if k in overrides]
    hrpose_only += ["--input-size"] if input_size else []
    if hrpose_only:
        raise ValueError(f"{path}: a crop estimator has no {', '.join(hrpose_only)} (HRPose options)")
    return dict(overrides)


def main(argv=None) -> None:
    """Command line: evaluate named models on named splits, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=checkpoint.pt (or .onnx)")
    parser.add_argument("--split", action="append", required=True, help="NAME=BOP split dir")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--device", default="auto", type=_device,
                        help="auto (default: a GPU if the backend can use one, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--baseline", default="HRPose", help="model the KD gain is measured against")
    parser.add_argument("--distilled", default="HRPose+KD")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-threshold", type=float, default=None,
                        help="belief-map peak threshold for every model (default: each model's own); "
                             "to choose a model's threshold, evaluate a few and store the best in it")
    parser.add_argument("--ransac-threshold", type=float, default=None, metavar="PX",
                        help="RANSAC inlier distance of PnP for every model (default "
                             f"{PoseThresholds.ransac_threshold} px); larger gives more instances a "
                             "pose, and more wrong poses")
    parser.add_argument("--max-reprojection-error", type=float, default=None, metavar="PX",
                        help="reject poses whose RMS reprojection error is larger (default "
                             f"{PoseThresholds.max_reprojection_error} px)")
    parser.add_argument("--correspondences", default=None, choices=CORRESPONDENCES,
                        help="crop models with a coordinate head: what PnP fits (default: the file's)")
    parser.add_argument("--box-depth-weight", type=float, default=None, metavar="W",
                        help="crop models with an extreme-point head: how much the distance follows the "
                             "predicted silhouette box, 0-1 (default: the file's)")
    parser.add_argument("--refiner", default=None, metavar="REFINER_PT",
                        help="crop models: refine the poses with this render-and-compare refiner")
    parser.add_argument("--refine-iterations", type=int, default=None, metavar="N",
                        help="crop models: refiner steps per pose (0 = off; default the file's, else 2)")
    parser.add_argument("--scorer", default=None, metavar="SCORER_PT",
                        help="crop models: the pose scorer that picks among --hypotheses")
    parser.add_argument("--hypotheses", type=int, default=None, metavar="N",
                        help="crop models: disturbed copies of each pose refined and scored (0 = off; "
                             "default the file's)")
    parser.add_argument("--hypothesis-gate", type=float, default=None, metavar="LOGIT",
                        help="crop models: only poses scoring below this logit get --hypotheses "
                             "(default the file's, else all)")
    parser.add_argument("--recrop", type=int, default=None, choices=(0, 1),
                        help="crop models: a second keypoint pass on crops around the first poses "
                             "(default: the file's)")
    parser.add_argument("--gt-maps", metavar="CHECKPOINT",
                        help="add a 'GT maps' column: ground-truth maps through this checkpoint's "
                             "codec, decoding and PnP (the ceiling of its input size)")
    parser.add_argument("--input-size", metavar="WxH", type=_input_size,
                        help="letterbox to this network input instead of each model's own")
    parser.add_argument("--max-translation-cm", type=replay.positive_float, default=None, metavar="CM",
                        help="add an 'n cm n deg' metric with this translation bound (e.g. 1 for issue 6's "
                             "well-visible objects; with --max-rotation-deg, default 5)")
    parser.add_argument("--max-rotation-deg", type=replay.positive_float, default=None, metavar="DEG",
                        help="rotation bound of that metric (default 5; alone, with 5 cm)")
    parser.add_argument("--gt-boxes", action="store_true",
                        help="for crop-estimator models, add a column with crops around the ground-truth "
                             "amodal boxes (the keypoint network and PnP without the detector)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device, args.backend)
    models, splits = _named(args.model, "--model"), _named(args.split, "--split")
    if args.gt_maps:
        models[GT_MAPS] = args.gt_maps
    if not models:
        parser.error("expected at least one --model NAME=PATH or --gt-maps CHECKPOINT")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Decoding and PnP settings given on the command line, the same for every model.
    given = [
        (name, value, label)
        for name, value, label in (
            ("peak_threshold", args.peak_threshold, "peak threshold {}"),
            ("ransac_threshold", args.ransac_threshold, "RANSAC {} px"),
            ("max_reprojection_error", args.max_reprojection_error, "max RMS {} px"),
            ("correspondences", args.correspondences, "PnP on {}"),
            ("box_depth_weight", args.box_depth_weight, "box depth weight {}"),
            ("refiner", args.refiner, "refiner {}"),
            ("refine_iterations", args.refine_iterations, "{} refiner steps"),
            ("recrop", args.recrop, "second keypoint pass {}"),
            ("scorer", args.scorer, "scorer {}"),
            ("hypotheses", args.hypotheses, "{} scored hypotheses"),
            ("hypothesis_gate", args.hypothesis_gate, "hypotheses below logit {}"),
        )
        if value is not None
    ]
    overrides = {name: value for name, value, _ in given}
    bounds = None
    if args.max_translation_cm is not None or args.max_rotation_deg is not None:
        cm, deg = args.max_translation_cm, args.max_rotation_deg
        bounds = (
            (100.0 * metrics.TRANSLATION_THRESHOLD_M if cm is None else cm) / 100.0,
            metrics.ROTATION_THRESHOLD_DEG if deg is None else deg,
        )
    scored, titles = metric_names(bounds), metric_titles(bounds)
    report, markdown = {}, []
    for split_name, split_dir in splits.items():
        frames = bop_reader.read_split(split_dir)
        if args.max_frames:
            frames = frames[: args.max_frames]
        summaries, timing, instances = {}, {}, {}
        rows = []
        for model_name, (path, gt_boxes) in _columns(models, args.gt_boxes).items():
            gt_maps = model_name == GT_MAPS and path == args.gt_maps
            pipeline = load_estimator(
                path,
                backend=_gt_maps_backend(path) if gt_maps else args.backend,
                device=args.device,
                **_options(path, args.input_size, overrides),
            )
            names = {o.obj_id: o.name for o in pipeline.objects}
            result = evaluate_split(
                pipeline, frames, desc=f"{split_name} {model_name}", gt_maps=gt_maps, bounds=bounds,
                gt_boxes=gt_boxes,
            )
            summaries[model_name] = summarise(result["instances"], names, scored)
            timing[model_name] = result["seconds_per_frame"]
            instances[model_name] = result["instances"]
            for r in result["instances"]:
                rows.append(
                    {
                        "split": split_name,
                        "model": model_name,
                        "obj_id": r.obj_id,
                        **{m: int(r.correct[m]) for m in scored},
                        "decoded": int(r.decoded),
                        **r.errors,
                    }
                )
        n_instances = sum(1 for r in rows if r["model"] == next(iter(summaries)))
        markdown.append(f"## {split_name}: {len(frames)} frames, {n_instances} instances ({split_dir})\n")
        for metric in scored + DIAGNOSTICS:
            markdown.append(format_table(metric, summaries, args.baseline, args.distilled, titles) + "\n")
        if bounds is not None:  # the count, where one instance more or less matters (issue 6)
            markdown.append(
                f"Instances within {titles[CM_DEG]}: "
                + ", ".join(
                    f"{name} {sum(r.correct[CM_DEG] for r in own)} of {len(own)}"
                    for name, own in instances.items()
                )
                + "\n"
            )
        markdown.append(
            "Median seconds per frame (whole pipeline"
            + (f" ({GT_MAPS}: decoding + PnP only)" if args.gt_maps else "")
            + ", "
            + args.backend
            + f" on {args.device}"
            + (f", input {args.input_size[0]}x{args.input_size[1]}" if args.input_size else "")
            + "".join(f", {label.format(value)}" for _, value, label in given)
            + "): "
            + ", ".join(f"{k} {v:.3f}" for k, v in timing.items())
            + "\n"
        )
        reference = args.baseline if args.baseline in instances else next(iter(instances))
        ref = instances[reference]
        paired = {}
        for name, own in instances.items():
            if name == reference:
                continue
            if [r.obj_id for r in own] != [r.obj_id for r in ref]:  # other object sets: other instances
                logger.warning("%s: %s and %s know other objects, not paired", split_name, name, reference)
                continue
            paired[name] = {
                m: paired_comparison([r.correct[m] for r in ref], [r.correct[m] for r in own])
                for m in scored
            }
        if paired:
            markdown.append(format_paired(reference, paired, titles) + "\n")
        report[split_name] = {
            "frames": len(frames),
            "instances": n_instances,
            "recall": summaries,
            "seconds_per_frame": timing,
            "paired_with": reference,
            "paired": paired,
            # the extra metric's bounds (--max-translation-cm/--max-rotation-deg), None without
            "cm_deg_bounds": (
                None if bounds is None else {"translation_m": bounds[0], "rotation_deg": bounds[1]}
            ),
        }
        with open(out / f"instances_{split_name}.csv", "w", newline="") as f:
            fields = sorted(
                {k for r in rows for k in r}, key=lambda k: (k not in ("split", "model", "obj_id"), k)
            )
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    text = "\n".join(markdown)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(text)  # the evaluation table is this script's output


if __name__ == "__main__":
    main()
