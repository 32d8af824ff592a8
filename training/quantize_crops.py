"""Static int8 (ONNX QDQ) of the crop estimator's two networks, and what it costs on validation frames.

The detector and the keypoint network are exported as the pipeline exports them
(:func:`hrpose_ros.crop_pipeline.export_crops_onnx`) and quantised with ONNX Runtime's static
quantisation, as ``training.quantize_int8`` does for HRPose: ``quant_pre_process``, then
``quantize_static`` in QDQ format, weights int8 per output channel, activations 8-bit with MinMax
ranges calibrated on inputs prepared exactly as the pipeline prepares them (the detector's resized
frame; the keypoint network's crops around the true boxes of the calibration frames). The
calibration input differs from HRPose's (crops, not letterboxed frames), hence this script.

Each network alone and both are then swapped into the same ONNX Runtime pipeline and scored on a
validation split with the evaluation's matching (ADD(-S) below 0.1 d, mean over objects), beside
fp32, with the networks' median times:

    python -m training.quantize_crops --calib data/ctrain --val data/val --out out/int8_crops

int8 is worth shipping for a network only where ADD(-S) drops by at most
``training.quantize_int8.MAX_RECALL_DROP_POINTS``; the verdict is printed and written with the
numbers (report.md, metrics.json) and the int8 files stay in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hrpose_ros import bop_reader
from hrpose_ros.crop_pipeline import (
    DEFAULT_CROPS_WEIGHTS,
    CropPosePipeline,
    export_crops_onnx,
    keypoint_outputs,
)
from hrpose_ros.detector import preprocess
from hrpose_ros.engines import OnnxEngine
from training.evaluate import ground_truth_boxes, match_poses, summarise
from training.quantize_int8 import MAX_RECALL_DROP_POINTS, quantize_qdq

__all__ = ["calibration_inputs", "main", "score"]

DETECTOR_OUTPUTS = ["heatmap", "size", "offset"]


class _Inputs:
    """ONNX Runtime CalibrationDataReader over prepared batches (ORT calls only get_next and rewind)."""

    def __init__(self, batches):
        self.batches, self.index = list(batches), 0

    def get_next(self):
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"image": self.batches[self.index - 1]}

    def rewind(self):
        self.index = 0


def calibration_inputs(pipeline: CropPosePipeline, split, frames: int) -> tuple[list, list]:
    """Return (detector inputs (1, 3, H, W), keypoint batches (N, 3, S, S)) of ``frames`` frames spread
    over the BOP split ``split``, prepared as ``pipeline`` prepares them (crops around true boxes)."""
    all_frames = bop_reader.read_frames(split)
    if not all_frames:
        raise ValueError(f"--calib {split}: no frames to calibrate on")
    spread = np.linspace(0, len(all_frames) - 1, min(frames, len(all_frames))).astype(int)
    picked = [all_frames[i] for i in spread]
    objects = {o.obj_id: o for o in pipeline.objects}
    detector, keypoints = [], []
    for frame in picked:
        image = frame.read_rgb()
        detector.append(preprocess(image, pipeline.input_size)[0])
        crops, batch = pipeline.crop_batch(image, ground_truth_boxes(frame, objects))
        if crops:
            keypoints.append(batch)
    if not keypoints:
        raise ValueError(f"--calib {split}: no annotated instances of the weights' objects to crop")
    return detector, keypoints


def score(pipeline: CropPosePipeline, frames, label: str) -> dict:
    """Return {"add": mean over objects of ADD(-S) recall (%), "per_object": {name: %}, "detection_ms",
    "keypoints_ms": medians} of ``pipeline`` on ``frames`` (the detector's boxes)."""
    objects = {o.obj_id: o for o in pipeline.objects}
    instances, detection, keypoints = [], [], []
    for frame in tqdm(frames, desc=label, leave=False):
        instances.extend(match_poses(pipeline(frame.read_rgb(), frame.camera), frame, objects))
        detection.append(pipeline.last_timings["detection"])
        keypoints.append(pipeline.last_timings["inference"])
    per_object = summarise(instances, {k: o.name for k, o in sorted(objects.items())}, ("add",))["add"]
    return {"add": per_object.pop("Mean"), "per_object": per_object,
            "detection_ms": 1e3 * float(np.median(detection)),
            "keypoints_ms": 1e3 * float(np.median(keypoints))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(DEFAULT_CROPS_WEIGHTS), help="crops weights file (.pt)")
    parser.add_argument("--calib", required=True, help="BOP split to calibrate on (training frames)")
    parser.add_argument("--val", required=True, help="BOP split to score on")
    parser.add_argument("--frames", type=int, default=50, help="calibration frames")
    parser.add_argument("--activations", default="uint8", choices=("uint8", "int8"))
    parser.add_argument("--max-frames", type=int, default=0, help="score only the first N validation frames")
    parser.add_argument("--out", default="out/int8_crops")
    args = parser.parse_args(argv)
    out = Path(args.out)

    def pipeline() -> CropPosePipeline:
        return CropPosePipeline.from_pretrained(args.weights, backend="onnxruntime", device="cpu")

    fp32 = pipeline()
    det_fp32, kp_fp32 = export_crops_onnx(args.weights)
    det_inputs, kp_inputs = calibration_inputs(fp32, args.calib, args.frames)
    # MinMax ranges, weights per channel: training.quantize_int8's choices for HRPose
    det_int8 = quantize_qdq(det_fp32, out / "detector.int8.onnx", _Inputs(det_inputs),
                            activations=args.activations)
    kp_int8 = quantize_qdq(kp_fp32, out / "keypoints.int8.onnx", _Inputs(kp_inputs),
                           activations=args.activations)
    frames = bop_reader.read_frames(args.val)
    if args.max_frames:
        frames = frames[: args.max_frames]
    if not frames:
        parser.error(f"--val {args.val}: no frames")
    results = {"fp32": score(fp32, frames, "fp32")}
    for label, det, kp in (("int8 detector", det_int8, None), ("int8 keypoints", None, kp_int8),
                           ("int8 both", det_int8, kp_int8)):
        candidate = pipeline()
        if det is not None:
            candidate.engine.detector = OnnxEngine(det, device="cpu", output_names=DETECTOR_OUTPUTS)
        if kp is not None:
            names = keypoint_outputs(candidate.keypoint_config)
            candidate.engine.keypoints = OnnxEngine(kp, device="cpu", output_names=names)
        results[label] = score(candidate, frames, label)
    base = results["fp32"]["add"]
    rows = ["| networks | ADD(-S) % | drop (points) | detection ms | keypoints ms | verdict |",
            "|---|---:|---:|---:|---:|---|"]
    for label, r in results.items():
        drop = base - r["add"]
        r["drop_points"] = drop
        r["keeps_accuracy"] = bool(drop <= MAX_RECALL_DROP_POINTS)
        verdict = "" if label == "fp32" else ("keeps accuracy" if r["keeps_accuracy"] else "loses accuracy")
        rows.append(f"| {label} | {r['add']:.1f} | {drop:.1f} | {r['detection_ms']:.1f} | "
                    f"{r['keypoints_ms']:.1f} | {verdict} |")
    title = (f"int8 ({args.activations} activations, MinMax, {len(det_inputs)} calibration frames of "
             f"{args.calib}) against fp32 on {args.val} ({len(frames)} frames, the detector's boxes)")
    table = "\n".join(rows)
    print(f"{title}\n\n{table}")
    (out / "report.md").write_text(f"# {title}\n\n{table}\n")
    numbers = {"weights": args.weights, "calib": args.calib, "val": args.val, "activations": args.activations}
    (out / "metrics.json").write_text(json.dumps({**numbers, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
