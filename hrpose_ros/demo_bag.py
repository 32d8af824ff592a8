"""Regenerate the bundled demo bag: one bin-picking pile of the shipped objects seen by a moving camera.

``python -m hrpose_ros.demo_bag --out demo/bin_demo`` (what scripts/make_demo_bag.sh runs):

1. drops instances of the shipped objects into the tray with pybullet physics and renders
   the pile from a camera orbiting above it (:func:`orbit_camera_poses`; B's
   :func:`hrpose_ros.data.scenes.render_bin_sequence`), writing a BOP scene with the core's
   :class:`hrpose_ros.bop_writer.SceneWriter` (rgb, depth, masks, scene_gt_info);
2. converts that scene with :func:`hrpose_ros.bop_to_bag.bop_scene_to_bag`, exactly as a user's
   BOP dataset would be converted (instances less than 10 % visible are left out of the
   ground truth, as BOP does for its test targets).

The same seed gives the same pile, background, lighting and trajectory.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hrpose_ros import bag_io, bop_to_bag, bop_writer
from hrpose_ros.types import CameraModel, ObjectModel

__all__ = ["DEMO_FPS", "DEMO_FRAMES", "DEMO_SEED", "make_demo_bag", "orbit_camera_poses", "render_bin_scene"]

_log = logging.getLogger(__name__)

DEMO_FRAMES = 100
DEMO_FPS = 10.0
DEMO_SEED = 5  # a pile of 13 (with the data module of this release): 5 dominos, 4 mugs, 2 ducks, a torus


def orbit_camera_poses(
    n_frames: int,
    radius: float = 0.14,
    heights: tuple[float, float] = (0.60, 0.70),
    arc_deg: float = 160.0,
    target: Sequence[float] = (0.0, 0.0, 0.02),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``n_frames`` (R_w2c (3, 3), t_w2c (3,) m) of a camera sweeping an arc above the tray.

    World frame = the tray's (z up, floor at z = 0). The eye moves ``arc_deg`` degrees around
    the z axis at ``radius`` m while its height goes from ``heights[0]`` to ``heights[1]`` and
    back (one cosine period); it always looks at ``target``, with the image's up direction
    following the motion, so the view both translates and rotates.
    """
    from hrpose_ros.data.scenes import look_at

    if n_frames < 1:
        raise ValueError(f"n_frames: expected at least 1, got {n_frames}")
    poses = []
    for i in range(n_frames):
        s = i / max(n_frames - 1, 1)
        angle = math.radians(-arc_deg / 2 + arc_deg * s)
        height = heights[0] + (heights[1] - heights[0]) * 0.5 * (1 - math.cos(2 * math.pi * s))
        eye = (radius * math.cos(angle), radius * math.sin(angle), height)
        up = (-math.sin(angle), math.cos(angle), 0.0)  # tangent to the arc: the image turns with the camera
        poses.append(look_at(eye, target, up))
    return poses


def render_bin_scene(
    scene_dir: Path | str,
    objects: Sequence[ObjectModel],
    n_frames: int = DEMO_FRAMES,
    seed: int = DEMO_SEED,
    camera: CameraModel | None = None,
    batch: int = 10,
    progress: bool = False,
    depth_noise: bool = False,
) -> Path:
    """Return ``scene_dir`` after writing a BOP scene of one pile of ``objects`` seen along an orbit.

    ``objects`` need meshes (``mesh_path``); ``camera`` defaults to the scenes module's
    640x480 LINEMOD-like camera. Frames are rendered ``batch`` at a time (the pile is
    dropped again with the same seed each time, which gives the same pile) so memory stays small.
    ``depth_noise`` writes the depth as a depth camera measures it (its own random stream).
    """
    from hrpose_ros.data.depth_noise import add_depth_noise
    from hrpose_ros.data.scenes import DEFAULT_CAMERA, render_bin_sequence

    noise_rng = np.random.default_rng((seed, 1))
    camera = camera or DEFAULT_CAMERA
    poses = orbit_camera_poses(n_frames)
    scene_dir = Path(scene_dir)
    bar = tqdm(total=n_frames, unit="frame", desc="render bin scene", disable=not progress)
    with bop_writer.SceneWriter(scene_dir) as writer:
        for start in range(0, n_frames, batch):
            for frame in render_bin_sequence(objects, poses[start : start + batch], seed=seed, camera=camera):
                writer.add_frame(
                    frame.rgb,
                    frame.K,
                    frame.instances,
                    depth=add_depth_noise(frame.depth, noise_rng) if depth_noise else frame.depth,
                    masks_visib=frame.masks_visib,
                    masks_full=frame.masks_full,
                    R_w2c=frame.R_w2c,
                    t_w2c=frame.t_w2c,
                )
                bar.update()
    bar.close()
    return scene_dir


def make_demo_bag(
    bag: Path | str,
    objects: Sequence[ObjectModel] | None = None,
    n_frames: int = DEMO_FRAMES,
    seed: int = DEMO_SEED,
    image_format: str = "raw",
    zstd: bool = True,
    jpeg_quality: int = 95,
    storage: str = "mcap",
    keep_scene: Path | None = None,
    progress: bool = True,
    depth: bool = False,
) -> int:
    """Return the number of frames of a new demo bag at ``bag`` (rendered scene -> converter).

    ``objects`` default to the shipped object set. ``keep_scene`` keeps the intermediate
    BOP scene folder there (else it goes to a temporary folder and is deleted). ``depth`` adds
    the aligned depth images, with the depth camera's noise, on ``bag_io.DEPTH_TOPIC`` (about
    0.12 MB per frame with zstd); the colour frames are the same with or without.
    """
    from hrpose_ros.data.objects import load_default_objects

    for path, what in ((bag, "bag"), (keep_scene, "keep_scene")):
        if path is not None and Path(path).exists():
            raise ValueError(f"{what} {path}: already exists; choose a new path")
    objects = list(objects) if objects is not None else load_default_objects()
    names = {o.obj_id: o.name for o in objects}
    with tempfile.TemporaryDirectory(prefix="hrpose-demo-") as tmp:
        scene_dir = Path(keep_scene) if keep_scene is not None else Path(tmp) / "000000"
        render_bin_scene(scene_dir, objects, n_frames=n_frames, seed=seed, progress=progress,
                         depth_noise=depth)
        return bop_to_bag.bop_scene_to_bag(
            scene_dir,
            bag,
            names=names,
            storage=storage,
            image_format=image_format,
            zstd=zstd,
            jpeg_quality=jpeg_quality,
            fps=DEMO_FPS,
            topics=bag_io.BagTopics(depth=bag_io.DEPTH_TOPIC if depth else None),
            progress=progress,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hrpose_ros.demo_bag``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m hrpose_ros.demo_bag", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="bag directory to create")
    parser.add_argument("--frames", type=int, default=DEMO_FRAMES)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--image-format", default="raw", choices=("raw", "png", "jpeg"))
    parser.add_argument("--no-zstd", action="store_true", help="do not compress the mcap chunks")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--keep-scene", type=Path, default=None, help="also keep the rendered BOP scene here")
    parser.add_argument("--depth", action="store_true",
                        help=f"add noisy aligned depth images on {bag_io.DEPTH_TOPIC} (RGB-D replay)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        n = make_demo_bag(
            args.out,
            n_frames=args.frames,
            seed=args.seed,
            image_format=args.image_format,
            zstd=not args.no_zstd and args.storage == "mcap",
            jpeg_quality=args.jpeg_quality,
            storage=args.storage,
            keep_scene=args.keep_scene,
            depth=args.depth,
        )
    except ValueError as exc:
        print(f"demo_bag: error: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {n} frames to {args.out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
