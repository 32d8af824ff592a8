"""Export an HRPose checkpoint to ONNX and measure torch vs ONNX Runtime parity.

    python -m training.export_onnx runs/student_kd/last.pt --out runs/student_kd/hrpose.onnx \
        --parity-split data/test --parity-frames 20
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

import numpy as np
import torch

from hrpose_ros import bop_reader
from hrpose_ros.checkpoints import load_checkpoint
from hrpose_ros.engines import OnnxEngine, TorchEngine
from hrpose_ros.onnx_export import export_onnx
from hrpose_ros.pipeline import PosePipeline

__all__ = ["main", "output_parity", "pose_parity"]

logger = logging.getLogger(__name__)


def output_parity(checkpoint_path, onnx_path, images: np.ndarray) -> dict[str, float]:
    """Return max |torch - ORT| over belief maps and vector fields for ``images`` (B, 3, H, W) in [0, 1]."""
    torch_engine = TorchEngine(load_checkpoint(checkpoint_path).build_model())
    onnx_engine = OnnxEngine(onnx_path)
    tb, tv = torch_engine(images)
    ob, ov = onnx_engine(images)
    return {
        "belief_max_abs": float(np.abs(tb - ob).max()),
        "vector_max_abs": float(np.abs(tv - ov).max()),
        "belief_peak": float(tb.max()),
    }


def pose_parity(
    checkpoint_path, onnx_path, frames: Sequence[bop_reader.BopFrame], ransac: bool = True
) -> dict[str, float]:
    """Return pose counts and the largest R (deg) / t (m) / keypoint (px) differences, torch vs ORT."""
    torch_pipe = PosePipeline.from_pretrained(checkpoint_path, backend="torch", ransac=ransac)
    onnx_pipe = PosePipeline.from_pretrained(onnx_path, backend="onnxruntime", ransac=ransac)
    counts, rot, trans, kps, same = [0, 0], [0.0], [0.0], [0.0], 0
    for frame in frames:
        image = frame.read_rgb()
        a, b = torch_pipe(image, frame.camera), onnx_pipe(image, frame.camera)
        counts[0] += len(a)
        counts[1] += len(b)
        same += int(len(a) == len(b))
        for pa, pb in zip(a, b):
            cos = np.clip((np.trace(pa.R @ pb.R.T) - 1) / 2, -1, 1)
            rot.append(float(np.degrees(np.arccos(cos))))
            trans.append(float(np.linalg.norm(pa.t - pb.t)))
            if pa.keypoints_2d.shape == pb.keypoints_2d.shape:
                kps.append(float(np.abs(pa.keypoints_2d - pb.keypoints_2d).max()))
    return {
        "frames": len(frames),
        "poses_torch": counts[0],
        "poses_onnx": counts[1],
        "frames_same_count": same,
        "max_rotation_deg": max(rot),
        "max_translation_m": max(trans),
        "max_keypoint_px": max(kps),
    }


def main(argv=None) -> None:
    """Command line: export, then report output and pose parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--dynamic-size", action="store_true", help="dynamic H and W (slower)")
    parser.add_argument("--parity-split", help="BOP split whose frames are used for the parity check")
    parser.add_argument("--parity-frames", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids thrashing on busy cores)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    path = export_onnx(checkpoint, args.out, dynamic_size=args.dynamic_size)
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    width, height = checkpoint.input_size
    images = np.random.default_rng(0).random((2, 3, height, width), dtype=np.float32)
    report = {"random_images": output_parity(args.checkpoint, path, images)}
    if args.parity_split:
        frames = bop_reader.read_split(args.parity_split)[: args.parity_frames]
        pipe = PosePipeline.from_pretrained(args.checkpoint)
        batch = np.concatenate([pipe.preprocess(f.read_rgb())[0] for f in frames[:4]])
        report["test_images"] = output_parity(args.checkpoint, path, batch)
        # RANSAC's inlier choice can flip on tiny keypoint differences for badly fitting instances;
        # without RANSAC, PnP is a continuous function of the keypoints. Both are reported.
        report["poses_ransac"] = pose_parity(args.checkpoint, path, frames, ransac=True)
        report["poses_no_ransac"] = pose_parity(args.checkpoint, path, frames, ransac=False)
    print(json.dumps(report, indent=2))  # the parity numbers are this script's output


if __name__ == "__main__":
    main()
