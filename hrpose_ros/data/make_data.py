"""``hrpose-make-data``: a BOP split of synthetic frames (views, cut-and-paste, bin) and a contact sheet.

Frames are written to a temporary folder beside the output and moved into place at the
end, so an interrupted run leaves nothing half-written; an existing output folder with
data in it is refused. Each scene folder holds at most 1000 frames (as BOP's PBR splits).
Frame ``i`` of kind ``k`` draws from the random stream (seed, k, i): splits made with
different seeds are disjoint, and a run repeats exactly. Depth is written as a depth camera
measures it (:mod:`hrpose_ros.data.depth_noise`) unless ``--clean-depth``; its noise draws from a
stream of its own, so the RGB frames are the same with and without it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hrpose_ros import bop_models, bop_writer
from hrpose_ros.data.depth_noise import DEFAULT_DEPTH_NOISE, DepthNoise, add_depth_noise
from hrpose_ros.data.objects import default_object_set_dir, select_objects
from hrpose_ros.data.scenes import SceneFrame, SceneGenerator
from hrpose_ros.visualization import colour_for, contact_sheet, draw_pose

__all__ = ["KINDS", "MakeDataResult", "main", "make_data", "write_contact_sheet"]

logger = logging.getLogger(__name__)

KINDS = ("views", "cutpaste", "bin")
FRAMES_PER_SCENE = 1000
BIN_VIEWS_PER_PILE = 5  # camera poses per physics drop: the drop costs more than a rendering
DEPTH_NOISE_STREAM = 1  # extra seed entry of the depth noise's random stream


@dataclass(frozen=True)
class MakeDataResult:
    """What :func:`make_data` wrote: the split folder, frames and seconds per kind, the contact sheet."""

    split_dir: Path
    frames: dict
    seconds: dict
    contact_sheet: Path

    def throughput(self) -> dict:
        """Return {kind: frames per second} (generation and writing)."""
        return {k: self.frames[k] / max(self.seconds[k], 1e-9) for k in self.frames}


def _kind_counts(kinds: Sequence[str], n: int) -> dict:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kind: expected one or more of {KINDS}, got {list(kinds)}")
    if n < 1:
        raise ValueError(f"n: expected at least one frame, got {n}")
    base, extra = divmod(n, len(kinds))
    return {k: base + (1 if i < extra else 0) for i, k in enumerate(kinds)}


def _check_output(split_dir: Path) -> None:
    if split_dir.exists() and (not split_dir.is_dir() or any(split_dir.iterdir())):
        raise ValueError(f"out: {split_dir} already exists with other data; choose a new folder or remove it")


def write_contact_sheet(path, frames: Sequence[SceneFrame], objects, columns: int = 4) -> Path:
    """Return ``path`` after writing a PNG of ``frames`` with each instance's true 3D box, axes and name."""
    by_id = {o.obj_id: o for o in objects}
    tiles = []
    for frame in frames:
        image = frame.rgb.copy()
        for instance, visib in zip(frame.instances, frame.masks_visib):
            if not visib.any():
                continue
            obj = by_id[instance.obj_id]
            draw_pose(image, obj.points, instance.R, instance.t, frame.K, colour_for(obj.obj_id), obj.name)
        tiles.append(image)
    sheet = contact_sheet(tiles, columns=columns, tile_width=320)
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{path}: could not write the contact sheet")
    return path


def make_data(
    out,
    kinds: Sequence[str],
    n: int,
    seed: int = 0,
    object_names: Sequence[str] | None = None,
    models_dir=None,
    depth: bool = True,
    depth_noise: DepthNoise | None = DEFAULT_DEPTH_NOISE,
    rgb_ext: str = "jpg",
    sheet_frames: int = 12,
    progress: bool = True,
) -> MakeDataResult:
    """Return what was written after making ``n`` frames of ``kinds`` (split evenly) in the BOP split ``out``.

    ``object_names`` picks objects by name (default all) from ``models_dir`` (default: the
    shipped set); ``depth`` writes depth PNGs, with ``depth_noise`` (None: the rendered depth as
    it is); the contact sheet (``out``/contact_sheet.png)
    shows the first ``sheet_frames`` frames, spread over the kinds, with their ground truth.
    """
    split_dir = Path(out)
    counts = _kind_counts(list(kinds), int(n))
    if rgb_ext not in ("jpg", "png"):
        raise ValueError(f"rgb_ext: expected 'jpg' or 'png', got {rgb_ext!r}")
    models_dir = Path(models_dir) if models_dir is not None else default_object_set_dir()
    objects = select_objects(bop_models.load_object_models(models_dir), object_names)
    _check_output(split_dir)
    split_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split_dir.name}-", dir=split_dir.parent))
    frames_done, seconds, sheet = {}, {}, []
    per_kind_sheet = max(1, sheet_frames // len(counts))
    try:
        with SceneGenerator(objects) as generator:
            scene_id, writer = 0, None
            for kind_index, (kind, count) in enumerate(counts.items()):
                start, written = time.perf_counter(), 0
                bar = tqdm(total=count, desc=kind, unit="frame", disable=not progress)
                batch_index = 0
                while written < count:
                    rng = np.random.default_rng((seed, KINDS.index(kind), batch_index))
                    noise_rng = np.random.default_rng((seed, KINDS.index(kind), batch_index,
                                                       DEPTH_NOISE_STREAM))
                    batch_index += 1
                    if kind == "views":
                        batch = [generator.views(rng)]
                    elif kind == "cutpaste":
                        batch = [generator.cutpaste(rng)]
                    else:
                        batch = generator.bin(rng, views=min(BIN_VIEWS_PER_PILE, count - written))
                    for frame in batch:
                        if writer is None or writer.next_im_id >= FRAMES_PER_SCENE:
                            if writer is not None:
                                writer.close()
                                scene_id += 1
                            writer = bop_writer.SceneWriter(tmp / f"{scene_id:06d}", rgb_ext=rgb_ext)
                        frame_depth = None
                        if depth:
                            frame_depth = (frame.depth if depth_noise is None
                                           else add_depth_noise(frame.depth, noise_rng, depth_noise))
                        writer.add_frame(frame.rgb, frame.K, frame.instances, depth=frame_depth,
                                         masks_visib=frame.masks_visib, masks_full=frame.masks_full,
                                         R_w2c=frame.R_w2c, t_w2c=frame.t_w2c)
                        if written < per_kind_sheet:
                            sheet.append(frame)
                        written += 1
                    bar.update(len(batch))
                bar.close()
                if writer is not None and kind_index < len(counts) - 1:
                    writer.close()  # each kind starts its own scene folder
                    writer, scene_id = None, scene_id + 1
                frames_done[kind], seconds[kind] = written, time.perf_counter() - start
                logger.info("%s: %d frames in %.1f s (%.1f frames/s)", kind, written, seconds[kind],
                            written / max(seconds[kind], 1e-9))
            if writer is not None:
                writer.close()
        sheet_path = write_contact_sheet(tmp / "contact_sheet.png", sheet, objects)
        _check_output(split_dir)  # nobody wrote there meanwhile
        if split_dir.exists():
            split_dir.rmdir()
        tmp.rename(split_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    models_copy = split_dir.parent / "models"
    if not models_copy.exists():  # BOP layout: DATASET/models beside DATASET/SPLIT
        shutil.copytree(models_dir, models_copy)
    return MakeDataResult(split_dir=split_dir, frames=frames_done, seconds=seconds,
                          contact_sheet=split_dir / sheet_path.name)


def main(argv: Sequence[str] | None = None) -> int:
    """``hrpose-make-data --kind views|cutpaste|bin[,...] --n N --out DIR [--split S] --seed S``."""
    parser = argparse.ArgumentParser(description="Write a BOP split of synthetic frames and a contact sheet.")
    parser.add_argument("--kind", required=True,
                        help=f"one of {', '.join(KINDS)}, or several joined by commas (frames split evenly)")
    parser.add_argument("--n", type=int, required=True, help="number of frames")
    parser.add_argument("--out", required=True,
                        help="output folder: the BOP split (or the dataset with --split)")
    parser.add_argument("--split", default="", help="write the split to OUT/SPLIT (e.g. train, test)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (use different seeds for train/test)")
    parser.add_argument("--objects", default="", help="comma-separated object names (default: all)")
    parser.add_argument("--models-dir", default=None, help="BOP models dir (default: the shipped object set)")
    parser.add_argument("--no-depth", action="store_true", help="skip the depth PNGs (smaller, faster)")
    parser.add_argument("--clean-depth", action="store_true",
                        help="write the rendered depth without the depth camera's noise and holes")
    parser.add_argument("--rgb-ext", default="jpg", choices=("jpg", "png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A plain kill should clean up the temporary folder too: turn SIGTERM into SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    out = Path(args.out) / args.split if args.split else Path(args.out)
    try:
        result = make_data(out, [k.strip() for k in args.kind.split(",") if k.strip()], args.n, args.seed,
                           [n.strip() for n in args.objects.split(",") if n.strip()] or None,
                           args.models_dir, depth=not args.no_depth,
                           depth_noise=None if args.clean_depth else DEFAULT_DEPTH_NOISE,
                           rgb_ext=args.rgb_ext)
    except ValueError as exc:
        logger.error("error: %s", exc)
        return 2
    for kind, rate in result.throughput().items():
        print(f"{kind}: {result.frames[kind]} frames, {rate:.1f} frames/s")
    print(f"wrote {result.split_dir} (contact sheet: {result.contact_sheet})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
