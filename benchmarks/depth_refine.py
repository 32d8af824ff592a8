"""Depth refinement alone: how far it brings a pose offset by 1 cm / 5 deg, and what it costs.

Two measurements on depth the package's renderer makes (with the depth camera noise of
hrpose-make-data unless ``--clean``):

- per object: ``--n`` random in-view poses at 0.45-0.8 m, each offset by 1 cm along a random
  direction and 5 deg about a random axis, refined; the share back within 1 mm / 0.5 deg
  (rotation modulo the object's symmetries), the median errors after, and ms per instance;
- per frame: cut-and-paste frames of 5 objects, every instance offset likewise and refined in one
  call (the node's per-frame cost with 5 instances).

    python -m benchmarks.depth_refine --n 20 --out out/bench/depth

Prints the tables, writes ``report.md`` and ``depth_refine.json`` to ``--out``. The issue's
goals: <= 5 ms per instance, <= 30 ms per frame with 5 instances, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from hrpose_ros.data.depth_noise import add_depth_noise
from hrpose_ros.data.objects import load_default_objects
from hrpose_ros.data.scenes import DEFAULT_CAMERA, SceneGenerator
from hrpose_ros.depth_refine import (
    ASSOCIATIONS,
    DepthRefiner,
    RefineConfig,
    pose_change,
    refine_pose,
    surface_model,
)
from hrpose_ros.render import Renderer
from hrpose_ros.types import ObjectPose


def offset(rng: np.random.Generator, R, t, metres: float = 0.01, degrees: float = 5.0):
    """Return (R, t) moved by ``metres`` and turned by ``degrees`` about random directions."""
    axis, direction = rng.normal(size=3), rng.normal(size=3)
    turn = Rotation.from_rotvec(np.deg2rad(degrees) * axis / np.linalg.norm(axis)).as_matrix()
    return turn @ R, t + metres * direction / np.linalg.norm(direction)


def random_pose(rng: np.random.Generator):
    """Return (R, t): a random rotation at 0.45-0.8 m, within the central half of the image."""
    z = rng.uniform(0.45, 0.8)
    K = DEFAULT_CAMERA.K
    u, v = rng.uniform(160, 480), rng.uniform(120, 360)
    return Rotation.random(random_state=rng).as_matrix(), np.array([(u - K[0, 2]) / K[0, 0] * z,
                                                                    (v - K[1, 2]) / K[1, 1] * z, z])


def per_object(objects, n: int, clean: bool, seed: int, association: str = RefineConfig.association) -> dict:
    rng = np.random.default_rng(seed)
    config = RefineConfig(association=association)
    rows = {}
    with Renderer(objects, DEFAULT_CAMERA.width, DEFAULT_CAMERA.height) as renderer:
        for obj in objects:
            surface = surface_model(obj)
            moved, turned, seconds, refined = [], [], [], []
            for _ in range(n):
                R, t = random_pose(rng)
                depth = renderer.render_depth(obj.obj_id, R, t, DEFAULT_CAMERA.K)
                if not clean:
                    depth = add_depth_noise(depth, rng)
                R0, t0 = offset(rng, R, t)
                result = refine_pose(surface, R0, t0, depth, DEFAULT_CAMERA, config)
                m, a = pose_change(R, t, result.R, result.t, surface.symmetries)
                moved.append(m)
                turned.append(np.rad2deg(a))
                seconds.append(result.seconds)
                refined.append(result.refined)
            moved, turned = np.array(moved), np.array(turned)
            rows[obj.name] = {
                "recovered_pct": 100.0 * float(np.mean((moved < 0.001) & (turned < 0.5))),
                "refined_pct": 100.0 * float(np.mean(refined)),
                "translation_mm_median": 1e3 * float(np.median(moved)),
                "rotation_deg_median": float(np.median(turned)),
                "ms_median": 1e3 * float(np.median(seconds)),
                "ms_p90": 1e3 * float(np.percentile(seconds, 90)),
            }
    return rows


def per_frame(objects, frames: int, clean: bool, seed: int, threads: int,
              association: str = RefineConfig.association) -> dict:
    """Wall time of one refine call per frame (instances side by side on ``threads``)."""
    rng = np.random.default_rng(seed)
    refiner = DepthRefiner(objects, RefineConfig(frame_budget=1.0, threads=threads, association=association))
    by_id = {o.obj_id: o for o in objects}
    seconds = []
    with SceneGenerator(objects) as generator:
        for _ in range(frames):
            frame = generator.cutpaste(rng, count=(5, 5))
            depth = frame.depth if clean else add_depth_noise(frame.depth, rng)
            poses = [ObjectPose(by_id[g.obj_id].name, g.obj_id, i, 1.0, *offset(rng, g.R, g.t))
                     for i, g in enumerate(frame.instances)]
            started = time.perf_counter()
            refiner.refine(poses, depth, generator.camera)
            seconds.append(time.perf_counter() - started)
    refiner.close()
    return {"instances": 5, "frames": frames, "threads": threads,
            "ms_median": 1e3 * float(np.median(seconds)),
            "ms_max": 1e3 * float(np.max(seconds))}


def markdown(rows: dict, frame: dict, clean: bool, association: str = RefineConfig.association) -> str:
    lines = [f"Depth refinement from a 1 cm / 5 deg offset ({'clean' if clean else 'noisy'} rendered depth, "
             f"{association} pairs; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores)", "",
             "| object | within 1 mm / 0.5 deg | refined | translation after (median) | rotation after "
             "(median) | ms / instance (median, p90) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['recovered_pct']:.0f} % | {r['refined_pct']:.0f} % | "
                     f"{r['translation_mm_median']:.2f} mm | {r['rotation_deg_median']:.2f} deg | "
                     f"{r['ms_median']:.2f}, {r['ms_p90']:.2f} |")
    lines += ["", f"Per frame with {frame['instances']} instances ({frame['frames']} frames, "
                  f"{frame['threads']} side by side): median "
                  f"{frame['ms_median']:.1f} ms, max {frame['ms_max']:.1f} ms (goal <= 30 ms); per instance "
                  "goal <= 5 ms."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="poses per object")
    parser.add_argument("--frames", type=int, default=20, help="frames of 5 instances")
    parser.add_argument("--clean", action="store_true", help="rendered depth without camera noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=RefineConfig.threads,
                        help="instances refined at once in the per-frame measurement")
    parser.add_argument("--association", choices=ASSOCIATIONS, default=RefineConfig.association,
                        help="ICP pairs: each model point with the depth at its pixel, or Open3D's nearest")
    parser.add_argument("--out", type=Path, default=Path("out/bench/depth"))
    args = parser.parse_args(argv)
    objects = load_default_objects()
    rows = per_object(objects, args.n, args.clean, args.seed, args.association)
    frame = per_frame(objects, args.frames, args.clean, args.seed + 1, args.threads, args.association)
    report = markdown(rows, frame, args.clean, args.association)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report + "\n")
    summary = {"objects": rows, "frame": frame, "clean": args.clean, "association": args.association}
    (args.out / "depth_refine.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
