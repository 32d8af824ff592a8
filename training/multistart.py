"""Multi-start refinement with a learned scorer, measured on a split's estimator poses.

    python -m training.multistart --split data/val --scorer runs/scorer/scorer.pt --out out/multistart

Per instance the estimator found (``<split>/pipeline_starts.npz``, training/pipeline_starts.py):
its pose and copies turned about each model axis, each refined ``--steps`` steps by the refiner,
then scored by the scorer (training/train_scorer.py). Prints mean ADD(-S) over objects (share of
every annotated instance within 0.1 d) for: the first start after one and after all steps, the
scorer's best hypothesis, the first start unless another scores ``margin`` logits higher, and the
oracle (a right hypothesis exists). Writes per-instance rows to ``<out>/multistart.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from hrpose_ros import bop_models
from hrpose_ros.crop_pipeline import DEFAULT_CROPS_WEIGHTS, load_crops_file
from hrpose_ros.refiner import REFINER_SIZE, SCORER_FORMAT, disturb_pose, load_refiner, refiner_from_dict
from hrpose_ros.render import Renderer
from training.train_refiner import Instances, add_errors
from training.train_scorer import refined, scores

__all__ = ["turned_starts"]


def turned_starts(R, degrees=(30.0, 60.0, 90.0)) -> np.ndarray:
    """(T, 3, 3): R first, then R turned by +-each of ``degrees`` and by 180 deg about each model axis."""
    turns = [np.eye(3)]
    for axis in np.eye(3):
        turns += [Rotation.from_rotvec(axis * np.deg2rad(sign * d)).as_matrix()
                  for d in degrees for sign in (1, -1)]
        turns.append(Rotation.from_rotvec(axis * np.pi).as_matrix())
    return np.stack([R @ T for T in turns])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", required=True)
    parser.add_argument("--scorer", required=True)
    parser.add_argument("--refiner", default="", help="refiner.pt (default: the shipped file's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--degrees", default="30,60,90")
    parser.add_argument("--jitter", type=int, default=0,
                        help="N > 0: the pose and N copies disturbed at --jitter-scale x the refiner's "
                             "training sigmas (10 deg, 0.03 d, 4 %%) instead of turned copies")
    parser.add_argument("--jitter-scale", type=float, default=0.5)
    parser.add_argument("--margin", type=float, default=0.5, help="logits over the 1-step pose, gated rows")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/multistart")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: expected at least 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    objects = bop_models.load_object_models(Path(args.split).parent / "models")
    data = Instances([args.split], objects, args.max_frames, True, math.inf)
    refiner_dict = (load_refiner(args.refiner, check=False) if args.refiner
                    else load_crops_file(DEFAULT_CROPS_WEIGHTS)[3]["refiner"])
    refiner = refiner_from_dict(refiner_dict).eval()
    scorer = refiner_from_dict(load_refiner(args.scorer, check=False, kind=SCORER_FORMAT), args.scorer,
                               SCORER_FORMAT)
    renderer = Renderer(objects, REFINER_SIZE, REFINER_SIZE)
    degrees = tuple(float(d) for d in args.degrees.split(","))
    rows = []
    rng = np.random.default_rng(0)
    for i in tqdm(np.flatnonzero(data.has_start), desc="instances", unit="inst"):
        if args.jitter:
            diameter = objects[int(data.samples.classes[i])].diameter
            moved = [disturb_pose(data.start_R[i], data.start_t[i], diameter, rng, scale=args.jitter_scale)
                     for _ in range(args.jitter)]
            R0 = np.stack([data.start_R[i]] + [m[0] for m in moved])
            t0 = np.stack([data.start_t[i]] + [m[1] for m in moved])
        else:
            R0 = turned_starts(data.start_R[i], degrees)
            t0 = np.repeat(data.start_t[i][None], len(R0), axis=0)
        idx = np.full(len(R0), i)
        R, t = refined(refiner, data, idx, R0, t0, objects, renderer, 1)
        R1, t1 = R[:1].copy(), t[:1].copy()  # the first start after one step: the shipped pipeline's pose
        R, t = refined(refiner, data, idx, R, t, objects, renderer, args.steps - 1)
        s = scores(scorer, data, idx, R, t, objects, renderer)
        s1 = scores(scorer, data, idx[:1], R1, t1, objects, renderer)[0]
        c = int(data.samples.classes[i])
        errors = add_errors(objects, [c] * len(R), R, t, data.R[idx], data.t[idx])
        one = add_errors(objects, [c], R1, t1, data.R[idx[:1]], data.t[idx[:1]])[0]
        rows.append({"instance": int(i), "obj_id": objects[c].obj_id, "first_1": one,
                     "first_n": errors[0], "scores": s, "errors": errors,
                     "score_1": float(s1)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "multistart.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instance", "obj_id", "first_1", "first_n", "best_score", "best_error", "oracle",
                         "first_score", "score_1"])
        for r in rows:
            b = int(np.argmax(r["scores"]))
            writer.writerow([r["instance"], r["obj_id"], round(r["first_1"], 4), round(r["first_n"], 4),
                             round(float(r["scores"][b]), 3), round(float(r["errors"][b]), 4),
                             round(float(r["errors"].min()), 4), round(float(r["scores"][0]), 3),
                             round(r["score_1"], 3)])
    classes = data.samples.classes
    totals = {objects[c].obj_id: int(np.sum(classes == c)) for c in np.unique(classes)}

    def mean_recall(right) -> float:
        hits = {k: 0 for k in totals}
        for r, ok in zip(rows, right):
            hits[r["obj_id"]] += bool(ok)
        return 100 * float(np.mean([hits[k] / totals[k] for k in totals]))

    print(f"{len(rows)} of {len(data)} instances have a start; {len(R0)} hypotheses each, {args.steps} steps")
    print(f"first start, 1 step:        {mean_recall([r['first_1'] < 0.1 for r in rows]):.1f} %")
    print(f"first start, {args.steps} steps:       {mean_recall([r['first_n'] < 0.1 for r in rows]):.1f} %")
    for margin in (0.0, 0.5, 1.0, 2.0, 3.0):
        pick = [r["errors"][int(np.argmax(r["scores"]))] if r["scores"].max() > r["scores"][0] + margin
                else r["errors"][0] for r in rows]
        print(f"scorer, margin {margin:.1f} logit:   {mean_recall([p < 0.1 for p in pick]):.1f} %")
        pick = [r["errors"][int(np.argmax(r["scores"]))] if r["scores"].max() > r["score_1"] + margin
                else r["first_1"] for r in rows]
        print(f"  over the 1-step pose:     {mean_recall([p < 0.1 for p in pick]):.1f} %")
    print(f"oracle:                     {mean_recall([r['errors'].min() < 0.1 for r in rows]):.1f} %")
    for gate in (0.0, 1.0, 2.0, 3.0):  # hypotheses only for poses the scorer doubts (cost)
        doubted = [r["score_1"] < gate for r in rows]
        pick = [r["errors"][int(np.argmax(r["scores"]))]
                if d and r["scores"].max() > r["score_1"] + args.margin else r["first_1"]
                for r, d in zip(rows, doubted)]
        print(f"hypotheses where the 1-step score < {gate:.0f} ({100 * np.mean(doubted):.0f} % of poses), "
              f"margin {args.margin}: {mean_recall([p < 0.1 for p in pick]):.1f} %")
    renderer.release()


if __name__ == "__main__":
    main()
