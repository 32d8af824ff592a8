"""Train the single-shot detector (class + amodal box, CenterNet heads on a pretrained Lite0) on BOP splits.

Recipe, top to bottom: read the splits once into RAM at the input size (letterboxed) -> per step,
sample a batch, jitter scale/translation (boxes moved alike, clipped to the image) and colour
-> CenterNet targets (:class:`~hrpose_ros.detector.BoxCodec`) -> focal + L1 losses -> Adam with
warm-up and cosine decay over the time budget -> CSV log, loss plot, checkpoint every few
minutes and at the end.

    python -m training.train_detector --train data/ctrain --val data/test --out runs/det --minutes 40
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.data.augment import AugmentConfig, augment
from hrpose_ros.detector import (
    BoxCodec,
    DetectorConfig,
    SingleShotDetector,
    detection_losses,
    load_detector,
    save_detector,
)
from hrpose_ros.geometry import project
from hrpose_ros.letterbox import letterbox
from hrpose_ros.types import ObjectModel
from training.plots import plot_losses

LOG_FIELDS = ["step", "total", "heatmap", "size", "offset", "lr", "seconds"]
VAL_FIELDS = ["step", "total", "heatmap", "size", "offset", "frames"]
# Colour only: an in-plane rotation would turn the amodal boxes into looser ones.
COLOUR_AUGMENT = AugmentConfig(rotation_prob=0.0)


@dataclass(frozen=True)
class TrainDetectorConfig:
    """Training settings; saved into the checkpoint's history. Loss weights are CenterNet's."""

    train_dirs: str
    val_dirs: str = ""
    out_dir: str = "runs/det"
    minutes: float = 40.0
    max_steps: int = 0  # 0: until the time budget is spent
    batch_size: int = 16
    lr: float = 1e-3  # heads and FPN
    backbone_lr_scale: float = 0.5  # the ImageNet trunk moves slower than the new layers
    warmup_steps: int = 50
    input_size: tuple = (320, 240)
    scale_range: tuple = (0.7, 1.3)
    translate: float = 0.15  # fraction of the input size
    min_visib_fract: float = 0.1
    min_kept_fract: float = 0.3  # of a box after clipping: below this it stops being a positive
    size_weight: float = 0.1
    offset_weight: float = 1.0
    checkpoint_minutes: float = 5.0
    val_frames: int = 48
    max_frames: int = 0  # 0: every frame
    seed: int = 0
    pretrained: bool = True
    init: str = ""  # a detector checkpoint to go on training from (same objects and input size)
    channels_last: bool = True  # ~1.7x faster convolutions on these CPUs


@dataclass(frozen=True)
class Sample:
    """A frame in RAM at the input size: image (H, W, 3) uint8, boxes (N, 4) px, classes (N,), visib (N,)."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    visib: np.ndarray


def instance_boxes(
    frame: bop_reader.BopFrame, objects: list[ObjectModel]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (boxes (N, 4) image px, class indices (N,), visib_fract (N,)) of a frame's instances.

    Boxes are scene_gt_info's ``bbox_obj``; a split without it (training/toy_data.py) gets the
    box of the projected model points, fully visible. An instance whose silhouette misses the
    image (BOP's box -1, -1, -1, -1) is left out: there is nothing to detect.
    """
    index = {o.obj_id: i for i, o in enumerate(objects)}
    boxes, classes, visib = [], [], []
    for inst in frame.instances:
        if inst.obj_id not in index:
            continue
        if inst.info is not None:
            box, fract = np.asarray(inst.info.bbox_obj, np.float64), float(inst.info.visib_fract)
            if box[2] < 0 or box[3] < 0:
                continue
        else:
            uv = project(objects[index[inst.obj_id]].points, inst.R, inst.t, frame.camera.K)
            low, high = uv.min(axis=0), uv.max(axis=0)
            box, fract = np.concatenate([low, high - low]), 1.0
        boxes.append(box)
        classes.append(index[inst.obj_id])
        visib.append(fract)
    return (
        np.asarray(boxes, np.float64).reshape(-1, 4),
        np.asarray(classes, np.int64),
        np.asarray(visib, np.float64),
    )


def load_samples(
    split_dirs: str, objects: list[ObjectModel], input_size, max_frames: int = 0, desc: str = "load"
) -> list[Sample]:
    """Return every frame of the comma-separated BOP ``split_dirs`` letterboxed to ``input_size`` (W, H)."""
    frames = [f for d in split_dirs.split(",") if d for f in bop_reader.read_split(d)]
    if max_frames:
        frames = frames[:max_frames]
    samples = []
    for frame in tqdm(frames, desc=desc, leave=False):
        image, box = letterbox(frame.read_rgb(), int(input_size[0]), int(input_size[1]))
        boxes, classes, visib = instance_boxes(frame, objects)
        samples.append(Sample(image=image, boxes=boxes * box.scale, classes=classes, visib=visib))
    return samples


def jitter_geometry(sample: Sample, rng: np.random.Generator, config: TrainDetectorConfig) -> Sample:
    """Return ``sample`` scaled about the image centre and shifted at random, boxes moved and clipped alike.

    A box clipped to under ``min_kept_fract`` of its area has its visib_fract set to 0, so it
    stops being a positive (the labels' boxes are themselves clipped to the image).
    """
    height, width = sample.image.shape[:2]
    s = rng.uniform(*config.scale_range)
    shift = rng.uniform(-config.translate, config.translate, size=2) * (width, height)
    tx, ty = (1 - s) * (width - 1) / 2 + shift[0], (1 - s) * (height - 1) / 2 + shift[1]
    matrix = np.array([[s, 0, tx], [0, s, ty]])
    image = cv2.warpAffine(
        sample.image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    # warpAffine maps pixel centres; box edges sit half a pixel off them.
    x0 = sample.boxes[:, :2] * s + (tx, ty) + 0.5 * (1 - s)
    x1 = x0 + sample.boxes[:, 2:] * s
    c0, c1 = np.clip(x0, 0, (width, height)), np.clip(x1, 0, (width, height))
    area = np.prod(np.maximum(x1 - x0, 1e-6), axis=1)
    kept = np.prod(np.maximum(c1 - c0, 0), axis=1) / area
    visib = np.where(kept >= config.min_kept_fract, sample.visib, 0.0)
    return Sample(
        image=image, boxes=np.concatenate([c0, c1 - c0], axis=1), classes=sample.classes, visib=visib
    )


def make_batch(
    samples: list[Sample], codec: BoxCodec, config: TrainDetectorConfig, rng: np.random.Generator | None
) -> dict[str, torch.Tensor]:
    """Return {"image" (B, 3, H, W) in [0, 1], "heatmap", "size", "offset", "mask"} as tensors.

    ``rng`` None: no augmentation (validation).
    """
    images, targets = [], []
    for sample in samples:
        if rng is not None:
            sample = jitter_geometry(sample, rng, config)
            sample = replace(sample, image=augment(sample.image, np.zeros((0, 2)), rng, COLOUR_AUGMENT)[0])
        positive = sample.visib >= config.min_visib_fract
        height, width = sample.image.shape[:2]
        targets.append(codec.encode(sample.boxes[positive], sample.classes[positive], height, width))
        images.append(sample.image)
    batch = {"image": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0}
    for name in ("heatmap", "size", "offset", "mask"):
        batch[name] = torch.from_numpy(np.stack([getattr(t, name) for t in targets]))
    return batch


def batch_losses(model: SingleShotDetector, batch: dict, config: TrainDetectorConfig) -> dict:
    """Return the detection loss terms (CenterNet's weights from ``config``) of one prepared batch."""
    image = batch["image"]
    if config.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return detection_losses(model.forward_logits(image), batch["heatmap"], batch["size"], batch["offset"],
                            batch["mask"], config.size_weight, config.offset_weight)


def _set_lr(optimizer, config: TrainDetectorConfig, step: int, fraction: float) -> float:
    """Set linear warm-up then cosine decay (over the budget's ``fraction`` spent); return the head lr."""
    factor = min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return config.lr * factor


def validation_loss(model, samples: list[Sample], codec: BoxCodec, config: TrainDetectorConfig) -> dict:
    """Return the mean loss terms over ``samples`` (no augmentation), model left in train mode."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(samples), config.batch_size):
            batch = make_batch(samples[start : start + config.batch_size], codec, config, None)
            losses = batch_losses(model, batch, config)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch["image"])
    model.train()
    return {k: v / max(len(samples), 1) for k, v in sums.items()}


def train(config: TrainDetectorConfig, objects: list[ObjectModel] | None = None) -> dict:
    """Train, write log.csv, val.csv, loss.png and detector.pt into ``out_dir``; return the history dict."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_split = config.train_dirs.split(",")[0]
    if objects is None:
        objects = bop_models.load_object_models(Path(first_split).parent / "models")
    objects = sorted(objects, key=lambda o: o.obj_id)
    model_config = DetectorConfig(
        num_classes=len(objects), input_size=tuple(config.input_size), pretrained=config.pretrained
    )
    codec = BoxCodec.from_config(model_config)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    train_samples = load_samples(config.train_dirs, objects, config.input_size, config.max_frames, "train")
    val_samples = []
    if config.val_dirs:
        val_samples = load_samples(config.val_dirs, objects, config.input_size, 0, "val")
        pick = np.random.default_rng(1).permutation(len(val_samples))[: config.val_frames]
        val_samples = [val_samples[i] for i in sorted(pick)]

    model = SingleShotDetector(model_config)
    if config.init:
        start, start_objects = load_detector(config.init)
        if [o.obj_id for o in start_objects] != [o.obj_id for o in objects]:
            raise ValueError(f"--init {config.init}: trained on other objects than {config.train_dirs}")
        if tuple(start.config.input_size) != tuple(model_config.input_size):
            # The network is fully convolutional: the weights carry over; its box sizes relearn the scale.
            print(f"--init {config.init}: trained at {tuple(start.config.input_size)}, going on at "
                  f"{tuple(model_config.input_size)}")
        model.load_state_dict(start.state_dict())
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    backbone = list(model.trunk.backbone.parameters())
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.Adam(
        [
            {"params": backbone, "base_lr": config.lr * config.backbone_lr_scale},
            {"params": rest, "base_lr": config.lr},
        ]
    )

    csv_path, val_path = out_dir / "log.csv", out_dir / "val.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerow(LOG_FIELDS)
    with open(val_path, "w", newline="") as f:
        csv.writer(f).writerow(VAL_FIELDS)
    history = {
        "train_config": _plain(asdict(config)),
        "steps": 0,
        "seconds": 0.0,
        "val": [],
        "train_frames": len(train_samples),
    }
    budget = config.minutes * 60.0
    start = last_checkpoint = time.time()
    losses_seen = []
    step = 0
    bar = tqdm(total=config.max_steps or None, desc="detector", unit="step")
    while True:
        elapsed = time.time() - start
        if (config.max_steps and step >= config.max_steps) or (not config.max_steps and elapsed >= budget):
            break
        fraction = step / config.max_steps if config.max_steps else elapsed / budget
        lr = _set_lr(optimizer, config, step, fraction)
        picks = rng.integers(len(train_samples), size=config.batch_size)
        batch = make_batch([train_samples[i] for i in picks], codec, config, rng)
        losses = batch_losses(model, batch, config)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        losses_seen.append(values["total"])
        with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [step]
                + [round(values[k], 5) for k in LOG_FIELDS[1:5]]
                + [f"{lr:.2e}", round(time.time() - start, 1)]
            )
        bar.update(1)
        bar.set_postfix(loss=f"{values['total']:.3f}", hm=f"{values['heatmap']:.3f}", lr=f"{lr:.1e}")
        if time.time() - last_checkpoint >= config.checkpoint_minutes * 60:
            _checkpoint(
                model, objects, history, step, start, val_samples, codec, config, val_path, losses_seen
            )
            last_checkpoint = time.time()
    bar.close()
    _checkpoint(model, objects, history, step, start, val_samples, codec, config, val_path, losses_seen)
    plot_losses(csv_path, out_dir / "loss.png", ("total", "heatmap", "size", "offset"), "total", "total")
    return history


def _checkpoint(
    model, objects, history, step, start, val_samples, codec, config, val_path, losses_seen
) -> None:
    """Log validation losses, update ``history`` and write detector.pt."""
    history["steps"] = step
    history["seconds"] = round(time.time() - start, 1)
    history["train_loss"] = losses_seen
    if val_samples:
        val = validation_loss(model, val_samples, codec, config)
        history["val"].append({"step": step, **{k: round(v, 5) for k, v in val.items()}})
        with open(val_path, "a", newline="") as f:
            csv.writer(f).writerow([step] + [round(val[k], 5) for k in VAL_FIELDS[1:5]] + [len(val_samples)])
        tqdm.write(f"step {step}: val loss {val['total']:.4f} (heatmap {val['heatmap']:.4f})")
    save_detector(Path(config.out_dir) / "detector.pt", model, objects, history)


def _plain(value):
    """Return ``value`` with tuples as lists (JSON types only)."""
    return json.loads(json.dumps(value))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train", required=True, help="BOP split(s), comma separated; models in <split>/../models"
    )
    parser.add_argument("--val", default="", help="BOP split(s) for the validation loss at each checkpoint")
    parser.add_argument("--out", default="runs/det")
    parser.add_argument("--minutes", type=float, default=40.0, help="time budget (the cosine decay spans it)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps instead")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--input-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 128x96 input, 16 frames, 5 steps")
    parser.add_argument("--init", default="",
                        help="go on training from this detector checkpoint or crops weights file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainDetectorConfig(
        train_dirs=args.train,
        val_dirs=args.val,
        out_dir=args.out,
        minutes=args.minutes,
        max_steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        input_size=tuple(args.input_size),
        seed=args.seed,
        init=args.init,
    )
    if args.quick:
        config = replace(
            config,
            input_size=(128, 96),
            max_frames=16,
            max_steps=5,
            batch_size=4,
            val_frames=8,
            warmup_steps=1,
        )
    history = train(config)
    print(f"{history['steps']} steps in {history['seconds']:.0f} s -> {Path(config.out_dir) / 'detector.pt'}")


if __name__ == "__main__":
    main()
