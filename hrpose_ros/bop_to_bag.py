"""BOP scene to replay bag: ``hrpose-bop-to-bag SCENE_DIR BAG``.

One BOP scene folder (rgb/, scene_camera.json, scene_gt.json) becomes a rosbag2 replay bag
with the topics and ground-truth message of :mod:`hrpose_ros.bag_io`, as ``hrpose-replay-eval``
reads it; the bundled demo bag is made that way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from hrpose_ros import bag_io, bop_models, bop_reader
from hrpose_ros.bag_io import DEFAULT_START_NS, BagTopics
from hrpose_ros.types import ObjectPose

__all__ = ["bop_scene_to_bag", "main"]


def bop_scene_to_bag(
    scene_dir: Path | str,
    bag: Path | str,
    names: dict[int, str] | None = None,
    storage: str = "mcap",
    image_format: str = "raw",
    zstd: bool = False,
    fps: float = 10.0,
    min_visib_fract: float = 0.1,
    jpeg_quality: int = 95,
    start_ns: int = DEFAULT_START_NS,
    frame_id: str = bag_io.CAMERA_FRAME,
    topics: BagTopics | None = None,
    progress: bool = True,
) -> int:
    """Return the number of frames written to a new replay bag from one BOP scene folder.

    Images go in ascending im_id, one every 1/``fps`` s from ``start_ns``; each with its
    camera_info (scene_camera.json K, no distortion) and its ground truth (scene_gt.json,
    metres) as an ObjectPoseArray, all three with the same stamp, and its depth image (16UC1) when
    ``topics.depth`` is set (the scene must have depth/). ``names`` maps obj_id to
    the class_name written (default ``obj_OBJID``). When the scene has scene_gt_info.json,
    instances less than ``min_visib_fract`` visible are left out, as BOP leaves them out of
    its test targets.
    """
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    frames = bop_reader.read_scene(scene_dir, scene_id=0 if not Path(scene_dir).name.isdigit() else None)
    if not frames:
        raise ValueError(f"{scene_dir}: scene_camera.json lists no images")
    names = names or {}
    period_ns = 1e9 / fps
    topics = topics or BagTopics()
    if topics.depth and any(frame.depth_path is None for frame in frames):
        raise ValueError(f"{scene_dir}: depth topic {topics.depth} asked for, but the scene has images "
                         f"without depth (depth/)")
    with bag_io.BagWriter(
        bag,
        storage=storage,
        image_format=image_format,
        zstd=zstd,
        topics=topics,
        frame_id=frame_id,
        jpeg_quality=jpeg_quality,
    ) as writer:
        for i, frame in enumerate(
            tqdm(frames, unit="frame", desc=f"bag {Path(bag).name}", disable=not progress)
        ):
            per_class: dict[int, int] = {}
            truth = []
            for inst in frame.instances:
                if inst.info is not None and inst.info.visib_fract < min_visib_fract:
                    continue
                instance_id = per_class.get(inst.obj_id, 0)
                per_class[inst.obj_id] = instance_id + 1
                truth.append(
                    ObjectPose(
                        class_name=names.get(inst.obj_id, f"obj_{inst.obj_id:06d}"),
                        obj_id=inst.obj_id,
                        instance_id=instance_id,
                        score=1.0,
                        R=inst.R,
                        t=inst.t,
                    )
                )
            depth = frame.read_depth() if topics.depth else None
            writer.write_frame(start_ns + round(i * period_ns), frame.read_rgb(), frame.camera, truth,
                               depth=depth)
    return len(frames)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hrpose-bop-to-bag``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="hrpose-bop-to-bag",
        description="Convert one BOP scene folder (rgb/, scene_camera.json, scene_gt.json) into a rosbag2 "
        f"replay bag: image, camera_info and ground truth ({bag_io.GROUND_TRUTH_TOPIC}, "
        "hrpose_ros/msg/ObjectPoseArray) per image, same stamps.",
    )
    parser.add_argument("scene_dir", type=Path)
    parser.add_argument("bag", type=Path, help="bag directory to create")
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="BOP models folder whose object_names.json names the objects "
        "(default: the shipped object set's names when present)",
    )
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument(
        "--image-format",
        default="raw",
        choices=("raw", "png", "jpeg"),
        help="raw = sensor_msgs/Image rgb8; png/jpeg = sensor_msgs/CompressedImage",
    )
    parser.add_argument("--zstd", action="store_true", help="zstd-compress mcap chunks")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument(
        "--min-visib-fract",
        type=float,
        default=0.1,
        help="leave out ground truth less visible than this (needs scene_gt_info.json)",
    )
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--frame-id", default=bag_io.CAMERA_FRAME)
    parser.add_argument("--image-topic", default=bag_io.IMAGE_TOPIC)
    parser.add_argument("--camera-info-topic", default=bag_io.CAMERA_INFO_TOPIC)
    parser.add_argument("--gt-topic", default=bag_io.GROUND_TRUTH_TOPIC)
    parser.add_argument("--depth", action="store_true",
                        help="also write the scene's depth images (16UC1 mm) on --depth-topic")
    parser.add_argument("--depth-topic", default=bag_io.DEPTH_TOPIC)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        names = _object_names(args.models)
        n = bop_scene_to_bag(
            args.scene_dir,
            args.bag,
            names=names,
            storage=args.storage,
            image_format=args.image_format,
            zstd=args.zstd,
            fps=args.fps,
            min_visib_fract=args.min_visib_fract,
            jpeg_quality=args.jpeg_quality,
            frame_id=args.frame_id,
            topics=BagTopics(args.image_topic, args.camera_info_topic, args.gt_topic,
                             args.depth_topic if args.depth else None),
            progress=not args.quiet,
        )
    except ValueError as exc:
        print(f"hrpose-bop-to-bag: error: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.bag.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {n} frames to {args.bag} ({size:.1f} MB)")
    return 0


def _object_names(models_dir: Path | None) -> dict[int, str]:
    """Return {obj_id: name} from ``models_dir``'s object_names.json, or from the shipped object set."""
    if models_dir is not None:
        if not (models_dir / "models_info.json").is_file():
            raise ValueError(f"--models {models_dir}: expected a BOP models folder with models_info.json")
        return bop_models.read_object_names(models_dir)
    from hrpose_ros.data.objects import default_object_set_dir

    default = Path(default_object_set_dir())
    return bop_models.read_object_names(default) if (default / "models_info.json").is_file() else {}
