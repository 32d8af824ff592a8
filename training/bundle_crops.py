"""Put a trained detector and keypoint network into one crops weights file (what the node loads).

    python -m training.bundle_crops --detector runs/det/detector.pt --keypoints runs/crops_s/keypoints.pt \\
        --out hrpose_ros/assets/weights/crops_lite0.pt

``--from CROPS_PT`` takes the detector, keypoint network and stored options of an existing crops
file, so a new refiner (or new options) goes in without the checkpoints the file was made from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hrpose_ros.crop_pipeline import (
    CORRESPONDENCES,
    keypoints_from_dict,
    keypoints_to_dict,
    load_crops_file,
    save_crops_file,
)
from hrpose_ros.detector import detector_to_dict, load_detector
from hrpose_ros.refiner import load_refiner

__all__ = ["bundle", "rebundle"]


def _check_refiner_objects(refiner: dict | None, objects, refiner_path) -> None:
    """ValueError naming ``refiner_path`` when the refiner was not trained on all ``objects``."""
    if refiner is None:
        return
    missing = set(o.obj_id for o in objects) - set(refiner["object_ids"])
    if missing:
        raise ValueError(f"{refiner_path}: the refiner was not trained on obj_ids {sorted(missing)}")


def bundle(detector_path, keypoints_path, out, thresholds: dict | None = None, refiner_path=None) -> Path:
    """Write the crops file ``out`` from the two checkpoints (checked to know the same objects).

    ``thresholds``: PoseThresholds fields and decoding options (``drop_keypoints``) chosen on a
    validation split, stored as the file's defaults. ``refiner_path``: a refiner.pt to store with them.
    """
    detector, det_objects = load_detector(detector_path)
    keypoints, objects, history = keypoints_from_dict(
        torch.load(keypoints_path, map_location="cpu", weights_only=False), str(keypoints_path)
    )
    if [o.obj_id for o in det_objects] != [o.obj_id for o in objects]:
        raise ValueError(f"{detector_path} and {keypoints_path}: trained on other objects")
    refiner = load_refiner(refiner_path) if refiner_path is not None else None
    _check_refiner_objects(refiner, objects, refiner_path)
    path = save_crops_file(
        out,
        detector_to_dict(detector, det_objects),
        keypoints_to_dict(keypoints, objects, history),
        thresholds,
        refiner,
    )
    load_crops_file(path)  # reads back
    return path


def rebundle(crops_path, out, thresholds: dict | None = None, refiner_path=None) -> Path:
    """Write ``out``: the crops file ``crops_path`` with ``thresholds`` (over its stored ones) and, when
    given, the refiner of ``refiner_path`` in place of its own."""
    _, _, objects, d = load_crops_file(crops_path)
    refiner = load_refiner(refiner_path) if refiner_path is not None else d.get("refiner")
    _check_refiner_objects(refiner, objects, refiner_path)
    merged = {**d.get("thresholds", {}), **(thresholds or {})}
    path = save_crops_file(out, d["detector"], d["keypoints"], merged, refiner)
    load_crops_file(path)  # reads back
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", default=None, metavar="CROPS_PT",
                        help="take the detector, keypoints and stored options of this crops file")
    parser.add_argument("--detector", default=None)
    parser.add_argument("--keypoints", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--max-reprojection-error",
        type=float,
        default=None,
        metavar="PX",
        help="the file's PnP acceptance (RMS px), chosen on a validation split",
    )
    parser.add_argument(
        "--ransac-threshold",
        type=float,
        default=None,
        metavar="PX",
        help="the file's RANSAC inlier distance (px), chosen on a validation split",
    )
    parser.add_argument(
        "--drop-keypoints",
        type=int,
        default=None,
        metavar="N",
        help="PnP leaves out the N least confident keypoints of each crop, chosen on a validation split",
    )
    parser.add_argument(
        "--correspondences",
        default=None,
        choices=CORRESPONDENCES,
        help="with a coordinate head: PnP on the keypoints, the dense coordinates or both (default both)",
    )
    parser.add_argument(
        "--box-depth-weight",
        type=float,
        default=None,
        metavar="W",
        help="with an extreme-point head: how much the distance follows the predicted box (0-1), "
             "chosen on a validation split",
    )
    parser.add_argument("--refiner", default=None, help="a refiner.pt (training/train_refiner.py) to include")
    parser.add_argument(
        "--refine-iterations",
        type=int,
        default=None,
        metavar="N",
        help="with --refiner: render-and-compare steps per pose (default 2), chosen on a validation split",
    )
    parser.add_argument(
        "--recrop",
        type=int,
        choices=(0, 1),
        default=None,
        help="1: a second keypoint pass on crops around the first poses, chosen on a validation split",
    )
    parser.add_argument(
        "--hypothesis-gate",
        type=float,
        default=None,
        metavar="LOGIT",
        help="with a scored refiner: only poses scoring below this logit get hypotheses, chosen on a "
             "validation split",
    )
    args = parser.parse_args(argv)
    thresholds = {
        k: v
        for k, v in (
            ("max_reprojection_error", args.max_reprojection_error),
            ("ransac_threshold", args.ransac_threshold),
            ("drop_keypoints", args.drop_keypoints),
            ("correspondences", args.correspondences),
            ("box_depth_weight", args.box_depth_weight),
            ("refine_iterations", args.refine_iterations),
            ("recrop", args.recrop),
            ("hypothesis_gate", args.hypothesis_gate),
        )
        if v is not None
    }
    if args.source is not None:
        if args.detector or args.keypoints:
            parser.error("--from takes the detector and keypoints of that file: "
                         "leave out --detector and --keypoints")
        path = rebundle(args.source, args.out, thresholds, args.refiner)
    elif not (args.detector and args.keypoints):
        parser.error("expected --detector and --keypoints, or --from CROPS_PT")
    else:
        path = bundle(args.detector, args.keypoints, args.out, thresholds, args.refiner)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
