"""How well the refiner keeps poses that are already right: where its steps converge.

Every scored ground-truth instance of a split starts at its true pose (or one disturbed as
train_refiner disturbs its samples: ``--rotation-deg`` per axis, ``--shift``, a log-normal
``--depth`` ratio) and is refined ``--steps`` times, one step at a time, in its real image. Per
object: ADD(-S) 0.1d and the median depth error |z / z_true - 1| after each step. A refiner that
converges on the truth keeps right poses right; one whose ADD(-S) falls step after step from the
truth has its fixed point beside the truth, which more steps or more starts cannot fix (only a more
precise refiner can).

    python -m training.refiner_precision --split data/val --out out/refiner_precision
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend choice)
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hrpose_ros import bop_reader, metrics  # noqa: E402
from hrpose_ros.crop_pipeline import CropPosePipeline  # noqa: E402
from hrpose_ros.refiner import PoseRefiner  # noqa: E402
from hrpose_ros.types import ObjectPose  # noqa: E402
from training.evaluate import scored_instances  # noqa: E402
from training.keypoint_precision import write_report  # noqa: E402
from training.train_refiner import RefinerTrainConfig, disturb  # noqa: E402

__all__ = ["main", "measure", "summarise"]


def _starts(gts, objects: dict, rng: np.random.Generator, disturbance: RefinerTrainConfig | None
            ) -> list[ObjectPose]:
    """Return the ground-truth instances ``gts`` as ObjectPoses, disturbed as train_refiner disturbs its
    samples when ``disturbance`` (its rot_deg, shift and depth sigmas) is given."""
    poses = []
    for n, gt in enumerate(gts):
        obj = objects[gt.obj_id]
        R, t = np.asarray(gt.R, np.float64), np.asarray(gt.t, np.float64)
        if disturbance is not None:
            R, t = disturb(R, t, obj.diameter, rng, disturbance)
        poses.append(ObjectPose(obj.name, int(gt.obj_id), n, 1.0, R, t))
    return poses


def measure(pipeline: CropPosePipeline, frames: Sequence, steps: int, rotation_deg: float = 0.0,
            shift: float = 0.0, depth: float = 0.0, seed: int = 0, progress: bool = True
            ) -> dict[int, np.ndarray]:
    """Return {obj_id: (instances, steps + 1, 2)}: per instance and step (0 = the start), whether the pose
    is within ADD(-S) 0.1d and its depth error |z / z_true - 1|."""
    if pipeline.refiner is None:
        raise ValueError("the crops file holds no refiner (give one with --refiner)")
    refiner = pipeline.refiner
    one_step = PoseRefiner(refiner.engine, refiner.size, list(refiner.objects.values()), iterations=1)
    objects = {o.obj_id: o for o in pipeline.objects}
    disturbance = None
    if rotation_deg > 0 or shift > 0 or depth > 0:
        disturbance = RefinerTrainConfig((), "", "", rot_deg=rotation_deg, shift=shift, depth=depth)
    rng = np.random.default_rng(seed)
    found: dict[int, list] = {}
    try:
        for frame in tqdm(frames, desc="frames", leave=False, disable=not progress):
            gts = scored_instances(frame, objects)
            if not gts:
                continue
            image = frame.read_rgb()
            poses = _starts(gts, objects, rng, disturbance)
            track = []
            for step in range(steps + 1):
                if step:
                    poses = one_step.refine(image, frame.camera, poses)
                track.append([(metrics.add_or_adds_error(p.R, p.t, g.R, g.t, objects[g.obj_id])
                               < metrics.ADD_THRESHOLD_DIAMETER * objects[g.obj_id].diameter,
                               abs(p.t[2] / g.t[2] - 1.0)) for p, g in zip(poses, gts)])
            for n, gt in enumerate(gts):
                found.setdefault(int(gt.obj_id), []).append([track[s][n] for s in range(steps + 1)])
    finally:
        one_step.release()
    return {o: np.asarray(v, dtype=np.float64) for o, v in sorted(found.items())}


def summarise(found: dict[int, np.ndarray], names: dict[int, str]) -> list[dict]:
    """Return one row per object and a "Mean" row (over objects): ADD(-S) % and median depth error %
    after each step."""
    rows = []
    for obj_id, v in found.items():
        row = {"object": names[obj_id], "instances": len(v)}
        for s in range(v.shape[1]):
            row[f"add_step{s}"] = 100.0 * v[:, s, 0].mean()
        for s in range(1, v.shape[1]):
            row[f"depth_error_step{s}"] = 100.0 * float(np.median(v[:, s, 1]))
        rows.append(row)
    if rows:
        mean = {"object": "Mean", "instances": sum(r["instances"] for r in rows)}
        mean.update({k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in mean})
        rows.append(mean)
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """Return ``rows`` as a markdown table."""
    keys = list(rows[0])
    header = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    body = ["| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
            for r in rows]
    return "\n".join([header, *body])


def plot(rows: Sequence[dict]):
    """Return the figure of ADD(-S) against refinement steps, one line per object (the mean bold)."""
    steps = [k for k in rows[0] if k.startswith("add_step")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        mean = r["object"] == "Mean"
        ax.plot(range(len(steps)), [r[k] for k in steps], "k-o" if mean else "-o", lw=2.5 if mean else 1,
                label=r["object"])
    ax.set_xlabel("refinement steps from the start")
    ax.set_ylabel("ADD(-S) 0.1d (%)")
    ax.set_xticks(range(len(steps)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="BOP split folder with ground truth")
    parser.add_argument("--weights", default=None, help="crops weights file (default: the shipped one)")
    parser.add_argument("--refiner", default=None, help="a refiner.pt in place of the file's")
    parser.add_argument("--refiner-models", default=None, help="BOP models folder the refiner renders")
    parser.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rotation-deg", type=float, default=0.0, help="start disturbance, deg per axis")
    parser.add_argument("--shift", type=float, default=0.0, help="start disturbance, image plane, x diameter")
    parser.add_argument("--depth", type=float, default=0.0, help="start disturbance, log depth ratio sigma")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: expected at least 1, got {args.steps}")
    if min(args.rotation_deg, args.shift, args.depth) < 0:
        parser.error("--rotation-deg/--shift/--depth: expected sigmas >= 0")
    pipeline = CropPosePipeline.from_pretrained(args.weights, backend=args.backend, refiner=args.refiner,
                                                refiner_models=args.refiner_models)
    frames = bop_reader.read_split(args.split)
    if args.max_frames:
        frames = frames[: args.max_frames]
    try:
        found = measure(pipeline, frames, args.steps, args.rotation_deg, args.shift, args.depth, args.seed)
    except ValueError as exc:
        raise SystemExit(f"--weights {args.weights or 'shipped'}: {exc}") from exc
    rows = summarise(found, {o.obj_id: o.name for o in pipeline.objects})
    if not rows:
        raise SystemExit(f"--split {args.split}: no scored instance of the file's objects")
    write_report(rows, Path(args.out), plot, format_rows)


if __name__ == "__main__":
    main()
