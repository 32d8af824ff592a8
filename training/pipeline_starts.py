"""Record the crop estimator's own poses (before refinement) for every instance of BOP splits.

    python -m training.pipeline_starts --split data/ctrain --split data/ctrain2 --split data/val

The refiner learns to correct what it is given. Random disturbances of the ground truth do not
have the keypoint network's systematic errors (thin boxes placed too far, rotations tens of
degrees off), so train_refiner's ``--starts-fraction`` draws a share of its samples from these
poses instead. Writes ``<split>/pipeline_starts.npz``: per matched instance the frame's position
in the split, gt_id, R, t and the ADD(-S) error / diameter. Detections are matched to the ground
truth as the evaluation matches them (:func:`hrpose_ros.metrics.match_estimates`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hrpose_ros import bop_reader, metrics
from hrpose_ros.crop_pipeline import CropPosePipeline

__all__ = ["STARTS_FILE", "load_starts", "record_starts"]

STARTS_FILE = "pipeline_starts.npz"


def record_starts(pipeline: CropPosePipeline, split, progress: bool = True) -> dict:
    """Return the arrays of ``STARTS_FILE`` for ``split`` (module docstring)."""
    objects = {o.obj_id: o for o in pipeline.objects}
    rows = {"frame": [], "gt_id": [], "R": [], "t": [], "error": []}
    for position, frame in enumerate(tqdm(bop_reader.read_split(split), desc=f"poses {split}",
                                          unit="frame", disable=not progress)):
        inference = pipeline.estimate_maps(frame.read_rgb(), frame.camera)
        poses = pipeline.solve(pipeline.decode(inference), frame.camera)
        gts = [g for g in frame.instances if g.obj_id in objects]
        for gt, e in zip(gts, metrics.match_estimates(poses, gts, objects)):
            if e is None:
                continue
            obj = objects[gt.obj_id]
            rows["frame"].append(position)
            rows["gt_id"].append(gt.gt_id)
            rows["R"].append(poses[e].R)
            rows["t"].append(poses[e].t)
            error = metrics.add_or_adds_error(poses[e].R, poses[e].t, gt.R, gt.t, obj)
            rows["error"].append(error / obj.diameter)
    return {
        "frame": np.asarray(rows["frame"], np.int64),
        "gt_id": np.asarray(rows["gt_id"], np.int64),
        "R": np.asarray(rows["R"], np.float64).reshape(-1, 3, 3),
        "t": np.asarray(rows["t"], np.float64).reshape(-1, 3),
        "error": np.asarray(rows["error"], np.float64),
    }


def load_starts(splits, frame_counts, max_error: float = np.inf) -> dict[tuple[int, int], tuple]:
    """Return {(frame index over the splits in order, gt_id): (R, t)} from each split's STARTS_FILE,
    for the starts with an ADD(-S) error below ``max_error`` x the diameter.

    ``frame_counts``: the number of frames of each split, to offset the indices. A split without
    the file is an error naming the command that writes it.
    """
    starts, offset = {}, 0
    for split, count in zip(splits, frame_counts):
        path = Path(split) / STARTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; write it with python -m training.pipeline_starts --split {split}"
            )
        with np.load(path) as f:
            for frame, gt_id, R, t, error in zip(f["frame"], f["gt_id"], f["R"], f["t"], f["error"]):
                if error < max_error:
                    starts[(int(frame) + offset, int(gt_id))] = (R, t)
        offset += count
    return starts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", action="append", required=True, help="a BOP split folder (repeatable)")
    parser.add_argument("--model", default=None, help="crops weights file (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    args = parser.parse_args(argv)
    pipeline = CropPosePipeline.from_pretrained(args.model, backend=args.backend, refine_iterations=0)
    for split in args.split:
        arrays = record_starts(pipeline, split)
        np.savez(Path(split) / STARTS_FILE, **arrays)
        error = arrays["error"]
        print(f"{split}: {len(error)} instances, ADD(-S) < 0.1 d {np.mean(error < 0.1) * 100:.1f} %, "
              f"median {np.median(error):.3f} d")


if __name__ == "__main__":
    main()
