"""Evaluate a detector checkpoint on a BOP split: box recall and AP at IoU 0.5 per object and mean.

Ground truth: each instance's amodal ``bbox_obj``. Instances with visib_fract < 0.1 count as
"difficult" (PASCAL VOC): a detection matching one is neither true nor false positive, and
they are not in the recall's denominator. Matching is VOC's: detections of a class in order
of score, each to the ground-truth box of highest IoU in its frame, once.

- AP@0.5: VOC all-point interpolation, over detections down to ``--ap-threshold`` (0.05).
- recall@0.5: the share of instances matched by a detection scoring at least the
  checkpoint's ``score_threshold`` (what the runtime uses).

    python -m training.evaluate_detector --detector runs/det/detector.pt --split data/test --out runs/det/eval
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_reader
from hrpose_ros.crop_pipeline import is_crops_file, load_crops_file
from hrpose_ros.detector import Detector
from hrpose_ros.metrics import iou_2d
from hrpose_ros.types import Detection
from training.train_detector import instance_boxes

DIFFICULT_VISIB = 0.1
IOU_THRESHOLD = 0.5


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Return VOC's all-point interpolated AP: area under the precision envelope of (K,) recall/precision."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def match_class(
    detections: list[tuple[int, float, np.ndarray]],
    ground_truth: dict[int, tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (scores (K,) descending, outcome (K,) 1 true / 0 false / -1 ignored, non-difficult box count).

    ``detections``: (frame index, score, box) of one class; ``ground_truth``: frame index ->
    (boxes (N, 4), difficult (N,) bool) of that class.
    """
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])
    used = {frame: np.zeros(len(boxes), bool) for frame, (boxes, _) in ground_truth.items()}
    outcome = np.zeros(len(order), np.int64)
    for k, i in enumerate(order):
        frame, _, box = detections[i]
        boxes, difficult = ground_truth.get(frame, (np.zeros((0, 4)), np.zeros(0, bool)))
        ious = [iou_2d(box, gt) for gt in boxes]
        if not ious or max(ious) < iou_threshold:
            continue
        best = int(np.argmax(ious))
        if difficult[best]:
            outcome[k] = -1
        elif not used[frame][best]:
            used[frame][best] = True
            outcome[k] = 1
    n_positive = int(sum((~difficult).sum() for _, difficult in ground_truth.values()))
    scores = np.array([detections[i][1] for i in order], np.float64)
    return scores, outcome, n_positive


def class_metrics(scores: np.ndarray, outcome: np.ndarray, n_positive: int, score_threshold: float) -> dict:
    """Return {"ap", "recall", "precision", "n_gt"} of one class's :func:`match_class` results."""
    counted = outcome >= 0
    tp = np.cumsum(outcome[counted] == 1)
    fp = np.cumsum(outcome[counted] == 0)
    if n_positive == 0:
        return {"ap": float("nan"), "recall": float("nan"), "precision": float("nan"), "n_gt": 0}
    recall_curve = tp / n_positive
    precision_curve = tp / np.maximum(tp + fp, 1)
    above = scores[counted] >= score_threshold
    true_above = int((outcome[counted][above] == 1).sum())
    return {
        "ap": average_precision(recall_curve, precision_curve) if len(tp) else 0.0,
        "recall": true_above / n_positive,
        "precision": true_above / max(int(above.sum()), 1),
        "n_gt": n_positive,
    }


def draw_detections(image: np.ndarray, detections: list[Detection], gt_boxes: np.ndarray) -> np.ndarray:
    """Return a copy of (H, W, 3) RGB ``image``, ground-truth boxes in green, labelled detections in red."""
    out = image.copy()
    for x, y, w, h in np.round(gt_boxes).astype(int):
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), 1)
    for det in detections:
        x, y, w, h = np.round(det.box_xywh).astype(int)
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 40, 40), 2)
        cv2.putText(
            out,
            f"{det.class_name} {det.score:.2f}",
            (x, max(y - 3, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 0),
            1,
            cv2.LINE_AA,
        )
    return out


def evaluate(
    detector: Detector,
    frames: list[bop_reader.BopFrame],
    ap_threshold: float = 0.05,
    draw: int = 0,
    out_dir: Path | None = None,
) -> dict:
    """Return {"objects": {name: metrics}, "mean": metrics, ...} of ``detector`` on ``frames``.

    The first ``draw`` frames are drawn into ``out_dir`` as PNGs.
    """
    objects = detector.objects
    detections = {c: [] for c in range(len(objects))}
    ground_truth = {c: {} for c in range(len(objects))}
    seconds = []
    for index, frame in enumerate(tqdm(frames, desc="evaluate", leave=False)):
        image = frame.read_rgb()
        start = time.perf_counter()
        found = detector(image, score_threshold=ap_threshold)
        seconds.append(time.perf_counter() - start)
        boxes, classes, visib = instance_boxes(frame, objects)
        for c in range(len(objects)):
            ground_truth[c][index] = (boxes[classes == c], visib[classes == c] < DIFFICULT_VISIB)
        class_of = {o.obj_id: c for c, o in enumerate(objects)}
        for det in found:
            detections[class_of[det.obj_id]].append((index, det.score, det.box_xywh))
        if index < draw and out_dir is not None:
            shown = [d for d in found if d.score >= detector.config.score_threshold]
            picture = draw_detections(image, shown, boxes)
            cv2.imwrite(
                str(out_dir / f"detections_{index:03d}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
            )
    per_object = {}
    for c, obj in enumerate(objects):
        metrics = class_metrics(*match_class(detections[c], ground_truth[c]), detector.config.score_threshold)
        per_object[obj.name] = {"obj_id": obj.obj_id, **metrics}
    valid = [m for m in per_object.values() if m["n_gt"] > 0]
    mean = {k: float(np.mean([m[k] for m in valid])) for k in ("ap", "recall", "precision")}
    mean["n_gt"] = int(sum(m["n_gt"] for m in valid))
    return {
        "objects": per_object,
        "mean": mean,
        "frames": len(frames),
        "iou_threshold": IOU_THRESHOLD,
        "ap_score_threshold": ap_threshold,
        "recall_score_threshold": detector.config.score_threshold,
        "ms_per_frame_median": 1000 * float(np.median(seconds)) if seconds else float("nan"),
    }


def format_table(result: dict) -> str:
    """Return the per-object table as text: obj_id, name, instances, recall@0.5, precision, AP@0.5."""
    lines = [f"{'obj':>4} {'name':<10} {'n_gt':>5} {'recall@.5':>10} {'prec':>6} {'AP@.5':>7}"]
    for name, m in result["objects"].items():
        lines.append(
            f"{m['obj_id']:>4} {name:<10} {m['n_gt']:>5} {m['recall']:>10.3f} {m['precision']:>6.3f} "
            f"{m['ap']:>7.3f}"
        )
    m = result["mean"]
    lines.append(
        f"{'':>4} {'mean':<10} {m['n_gt']:>5} {m['recall']:>10.3f} {m['precision']:>6.3f} {m['ap']:>7.3f}"
    )
    lines.append(
        f"recall and precision at score >= {result['recall_score_threshold']}, AP over scores >= "
        f"{result['ap_score_threshold']}; {result['frames']} frames, "
        f"{result['ms_per_frame_median']:.0f} ms/frame (torch, median)"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True,
                        help="checkpoint written by training/train_detector.py, or a crops weights file")
    parser.add_argument("--split", required=True, help="BOP split with scene_gt_info.json")
    parser.add_argument("--out", default="", help="directory for metrics.json and drawn detections")
    parser.add_argument("--ap-threshold", type=float, default=0.05)
    parser.add_argument("--draw", type=int, default=6, help="draw the first N frames' detections")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if is_crops_file(args.detector):  # the detector inside a crops weights file
        model, _, objects, _ = load_crops_file(args.detector)
        detector = Detector(model, objects)
    else:
        detector = Detector.from_file(args.detector)
    result = evaluate(detector, bop_reader.read_split(args.split), args.ap_threshold, args.draw, out_dir)
    result["detector"], result["split"] = str(args.detector), str(args.split)
    print(format_table(result))
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
