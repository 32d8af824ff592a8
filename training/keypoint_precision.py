"""How precise a crops file's keypoints are, and how precise they must be for ADD(-S) 0.1d.

On ground-truth boxes (the detector left out), per object: the keypoint network's error (median and
90th percentile, crop px, against the labels training uses), ADD(-S) of its poses, and ADD(-S) of
poses from the ground-truth keypoints moved by Gaussian noise of ``sigma`` crop px per axis (same
PnP, same limits). Where the network's median error meets that curve says whether keypoint
precision, rather than detection or PnP, is what the file lacks, and by how much.

    python -m training.keypoint_precision --split data/val --out out/precision
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend choice)
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hrpose_ros import bop_reader  # noqa: E402
from hrpose_ros.codec import DecodedInstance  # noqa: E402
from hrpose_ros.crop_pipeline import CropPosePipeline  # noqa: E402
from hrpose_ros.geometry import project  # noqa: E402
from training.data import canonical_pose  # noqa: E402
from training.evaluate import ground_truth_crops, match_poses, scored_instances  # noqa: E402

__all__ = ["SIGMAS", "main", "measure", "summarise", "write_report"]

SIGMAS = (0.5, 1.0, 2.0, 3.0, 4.0)  # crop px of Gaussian noise per axis
MEDIAN_PER_SIGMA = float(np.sqrt(2.0 * np.log(2.0)))  # median length of a 2D Gaussian error / sigma


@dataclasses.dataclass
class InstancePrecision:
    """One ground-truth instance: its object, the network's keypoint errors (K,) crop px and the
    ADD(-S) verdicts of the network's pose and of the noisy ground-truth keypoints' poses."""

    name: str
    errors: np.ndarray
    network: bool
    noisy: dict[float, bool]


def _labels(pipeline: CropPosePipeline, c: int, gt, camera) -> np.ndarray:
    """Return the instance's keypoints (object ``c``) in image px as training labels them (canonical pose)."""
    R, t = canonical_pose(gt.R, gt.t, pipeline.objects[c].symmetries)
    return project(pipeline.keypoints_3d[c], R, t, camera.K, camera.dist)


def _verdicts(pipeline, instances, frame, objects, rows) -> list[bool]:
    """Return the ADD(-S) verdicts, at positions ``rows`` of the frame's scored instances, of the poses
    PnP gives ``instances``."""
    results = match_poses(pipeline.solve(instances, frame.camera), frame, objects)
    return [results[r].correct["add"] for r in rows]


def measure(
    pipeline: CropPosePipeline,
    frames: Sequence[bop_reader.BopFrame],
    sigmas: Sequence[float] = SIGMAS,
    seed: int = 0,
    progress: bool = True,
) -> list[InstancePrecision]:
    """Return one :class:`InstancePrecision` per scored instance of ``frames`` that has a box."""
    objects = {o.obj_id: o for o in pipeline.objects}
    rng = np.random.default_rng(seed)
    out = []
    for frame in tqdm(frames, desc="keypoint precision", unit="frame", disable=not progress):
        pairs = ground_truth_crops(frame, objects)
        if not pairs:
            continue
        # match_poses gives one verdict per scored instance; those with a crop are at these positions
        position = {id(g): i for i, g in enumerate(scored_instances(frame, objects))}
        rows = [position[id(gt)] for gt, _ in pairs]
        inference = pipeline.estimate_maps(frame.read_rgb(), frame.camera, detections=[d for _, d in pairs])
        decoded = pipeline.decode(inference)
        labels = [_labels(pipeline, d.class_index, gt, frame.camera) for (gt, _), d in zip(pairs, decoded)]

        network = _verdicts(pipeline, decoded, frame, objects, rows)
        noisy = {}
        for sigma in sigmas:
            moved = [
                DecodedInstance(d.class_index, 1.0, k + rng.normal(0.0, sigma / crop.scale, k.shape),
                                np.ones(len(k), bool))
                for d, crop, k in zip(decoded, inference.crops, labels)
            ]
            noisy[sigma] = _verdicts(pipeline, moved, frame, objects, rows)
        for i, ((gt, _), d, crop, k) in enumerate(zip(pairs, decoded, inference.crops, labels)):
            out.append(InstancePrecision(
                objects[gt.obj_id].name,
                np.linalg.norm(d.keypoints - k, axis=1) * crop.scale,
                network[i],
                {s: v[i] for s, v in noisy.items()},
            ))
    return out


def summarise(instances: Sequence[InstancePrecision], names: Sequence[str]) -> list[dict]:
    """Return one row per object with instances, then "Mean" (over objects): n, median_px, p90_px,
    network % and one "sigma_<s>" % per noise level."""
    rows = []
    for name in names:
        own = [r for r in instances if r.name == name]
        if not own:
            continue
        errors = np.concatenate([r.errors for r in own])
        row = {"object": name, "n": len(own), "median_px": float(np.median(errors)),
               "p90_px": float(np.percentile(errors, 90)),
               "network": 100.0 * float(np.mean([r.network for r in own]))}
        for sigma in own[0].noisy:
            row[f"sigma_{sigma:g}"] = 100.0 * float(np.mean([r.noisy[sigma] for r in own]))
        rows.append(row)
    if rows:
        mean = {"object": "Mean", "n": sum(r["n"] for r in rows)}
        for key in rows[0]:
            if key not in mean:
                mean[key] = float(np.mean([r[key] for r in rows]))
        rows.append(mean)
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """Return ``rows`` as a Markdown table."""
    sigmas = [k for k in rows[0] if k.startswith("sigma_")]
    head = ["object", "n", "median px", "p90 px", "ADD(-S) network"] + [
        f"GT + {k[6:]} px noise" for k in sigmas
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["object"], str(r["n"]), f"{r['median_px']:.2f}", f"{r['p90_px']:.2f}",
                 f"{r['network']:.1f}"] + [f"{r[k]:.1f}" for k in sigmas]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict]):
    """Return the figure of ADD(-S) of noisy ground-truth keypoints against the noise, with the
    network marked at its median error, per object and for the mean."""
    sigmas = [k for k in rows[0] if k.startswith("sigma_")]
    x = [0.0] + [float(k[6:]) for k in sigmas]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        bold = r["object"] == "Mean"
        line, = ax.plot(x, [100.0] + [r[k] for k in sigmas], lw=2.5 if bold else 1, alpha=1 if bold else 0.6,
                        label=r["object"], color="k" if bold else None)
        # the network at the sigma whose median error equals its own
        ax.plot(r["median_px"] / MEDIAN_PER_SIGMA, r["network"], "o", color=line.get_color(),
                ms=8 if bold else 5)
    ax.set_xlabel("keypoint noise sigma (crop px per axis); dots: the network at its median error")
    ax.set_ylabel("ADD(-S) 0.1d %")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="BOP split folder with ground truth")
    parser.add_argument("--weights", default=None, help="crops weights file (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS),
                        help="noise levels in crop px, comma-separated")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--sigmas: expected numbers joined by commas, got {args.sigmas!r}")
    if not sigmas or min(sigmas) <= 0:
        parser.error(f"--sigmas: expected positive numbers, got {args.sigmas!r}")
    pipeline = CropPosePipeline.from_pretrained(args.weights, backend=args.backend)
    frames = bop_reader.read_split(args.split)
    if args.max_frames:
        frames = frames[: args.max_frames]
    rows = summarise(measure(pipeline, frames, sigmas), [o.name for o in pipeline.objects])
    if not rows:
        raise SystemExit(f"--split {args.split}: no instance of the file's objects with a box")
    write_report(rows, Path(args.out), plot, format_rows)


def write_report(rows: Sequence[dict], out: Path, plot_rows, format_table) -> None:
    """Write ``rows`` to ``out``/precision.csv and the figure ``plot_rows(rows)`` returns to
    precision.png, then print ``format_table``'s table of them."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "precision.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = plot_rows(rows)
    fig.tight_layout()
    fig.savefig(out / "precision.png", dpi=110)
    plt.close(fig)
    print(format_table(rows))
    print(f"wrote {out / 'precision.csv'} and {out / 'precision.png'}")


if __name__ == "__main__":
    main()
