"""Training loss of checkpoints on frames they trained on and on fresh ones: learning objects, or frames?

A falling training loss says little once a run has seen its frames many times; the same loss on
frames it never saw says whether it generalises. Each model is scored with its own training
recipe (image scale, input size, crops, positive weight), without augmentation, on the same
fixed sample of every split (``train_hrpose.split_loss``):

    python -m training.loss_gap --split seen=data/train --split fresh=data/val2 \\
        --model Shipped=hrpose_ros/assets/weights/hrpose_student_kd.pt --frames 160
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from hrpose_ros import bop
from hrpose_ros.codec import KeypointCodec
from hrpose_ros.runtime import load_checkpoint
from training.config import TrainConfig
from training.evaluate import _named
from training.train_hrpose import split_loss

__all__ = ["format_loss_table", "loss_table", "main"]

logger = logging.getLogger(__name__)


def loss_table(models: dict[str, str], splits: dict[str, str], n_frames: int) -> dict[str, dict[str, float]]:
    """Return {model name: {split name: weighted L_mse}} for checkpoint paths and BOP split dirs."""
    frames = {name: bop.read_split(path) for name, path in splits.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}  # older checkpoints may lack new fields
    table = {}
    for name, path in models.items():
        checkpoint = load_checkpoint(path)
        config = TrainConfig(**{k: v for k, v in checkpoint.train_config.items() if k in known})
        model = checkpoint.build_model()
        codec = KeypointCodec(checkpoint.codec_config)
        table[name] = {}
        for split, split_frames in frames.items():
            table[name][split] = split_loss(model, split_frames, checkpoint.objects, codec, config, n_frames)
            logger.info("%s on %s: L_mse %.2f", name, split, table[name][split])
    return table


def format_loss_table(table: dict[str, dict[str, float]], n_frames: int) -> str:
    """Return the table as Markdown, one row per model, one column per split."""
    splits = list(next(iter(table.values())))
    lines = [
        f"| weighted L_mse, {n_frames} frames per split | " + " | ".join(splits) + " |",
        "|---" * (len(splits) + 1) + "|",
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]:.2f}" for s in splits) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Command line: print the table (and write it as JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=checkpoint.pt (repeatable)")
    parser.add_argument("--split", action="append", required=True, help="NAME=BOP split dir (repeatable)")
    parser.add_argument("--frames", type=int, default=160, help="frames sampled per split")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    table = loss_table(_named(args.model, "--model"), _named(args.split, "--split"), args.frames)
    print(format_loss_table(table, args.frames))
    if args.out:
        Path(args.out).write_text(json.dumps({"frames": args.frames, "mse": table}, indent=2))


if __name__ == "__main__":
    main()
