"""Train HRPose: the teacher, the student, or the student distilled from the teacher (Eq. 7).

Reads top to bottom: config -> data -> model (+ frozen teacher) -> Adam with the lr halved
every ``lr_step_epochs`` -> epochs of steps (tqdm) -> CSV log, loss plot and checkpoint
(config inside) after every epoch.

    python -m training.train_hrpose --stage teacher --recipe cpu --out runs/teacher
    python -m training.train_hrpose --stage student --recipe cpu --out runs/student
    python -m training.train_hrpose --stage student_kd --recipe cpu --teacher runs/teacher/last.pt \
        --out runs/student_kd
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.checkpoints import Checkpoint, compact_points, load_checkpoint, save_checkpoint
from hrpose_ros.codec import CodecConfig, KeypointCodec
from hrpose_ros.devices import has_native_bf16, resolve_device
from hrpose_ros.networks import BACKBONES, HRPose, HRPoseConfig
from hrpose_ros.types import ObjectModel
from training.config import RECIPES, STAGES, TrainConfig, parse_scale_range, recipe
from training.data import KeypointDataset
from training.losses import LossTerms, total_loss
from training.plots import plot_losses

__all__ = [
    "accumulate_gradients",
    "load_backbone_weights",
    "load_objects",
    "main",
    "read_splits",
    "split_loss",
    "train",
]

logger = logging.getLogger(__name__)

LOG_FIELDS = ("epoch", "step", "lr", "total", "mse", "od", "fs", "seconds")
VAL_FIELDS = ("epoch", "step", "val_mse", "frames")


def load_objects(objects_dir: str = "") -> list[ObjectModel]:
    """Return the objects to train on, sorted by obj_id: a BOP models dir, or "" = the shipped default set."""
    if objects_dir:
        return bop_models.load_object_models(objects_dir)
    from hrpose_ros.data.objects import load_default_objects

    return sorted(load_default_objects(), key=lambda o: o.obj_id)


def _compact(objects: Sequence[ObjectModel]) -> list[ObjectModel]:
    """Return the objects with at most 1000 points each (same bounding box), for small checkpoints."""
    return [
        ObjectModel(
            obj_id=o.obj_id,
            name=o.name,
            points=compact_points(o.points),
            diameter=o.diameter,
            symmetries=o.symmetries,
            mesh_path=o.mesh_path,
        )
        for o in objects
    ]


def _load_teacher(config: TrainConfig, model_config: HRPoseConfig, device) -> HRPose:
    """Return the frozen teacher: eval mode, no gradients (paper Fig. 1: 'we keep the teacher fixed')."""
    if not config.teacher_checkpoint:
        raise ValueError("teacher_checkpoint: the student_kd stage needs a trained teacher checkpoint")
    checkpoint = load_checkpoint(config.teacher_checkpoint)
    if checkpoint.model_config.num_classes != model_config.num_classes:
        raise ValueError(
            f"teacher_checkpoint: {config.teacher_checkpoint} has "
            f"{checkpoint.model_config.num_classes} classes, the student {model_config.num_classes}"
        )
    teacher = checkpoint.build_model().to(device)
    teacher.requires_grad_(False)
    return teacher.eval()


def _warm_start(model: HRPose, config: TrainConfig, objects: Sequence[ObjectModel]) -> dict:
    """Load ``config.init_checkpoint``'s weights into ``model``; return that checkpoint's history.

    The checkpoint must hold the same network variant and the same objects (names, in order):
    anything else raises ValueError naming the file and what differs.
    """
    checkpoint = load_checkpoint(config.init_checkpoint)
    where = f"init_checkpoint {config.init_checkpoint}"
    if checkpoint.model_config != model.config:
        raise ValueError(f"{where}: network {checkpoint.model_config} differs from this run's {model.config}")
    names, ours = [o.name for o in checkpoint.objects], [o.name for o in objects]
    if names != ours:
        raise ValueError(f"{where}: objects {names} differ from this run's {ours}")
    model.load_state_dict({k: v.float() for k, v in checkpoint.state_dict.items()})
    logger.info("warm start from %s (%s steps before)", config.init_checkpoint,
                checkpoint.history.get("steps"))
    return dict(checkpoint.history)


def load_backbone_weights(model: HRPose, source: str) -> None:
    """Load ImageNet (``source`` "imagenet") or file weights into ``model.backbone`` (timm names).

    A file is read with timm's loader (plain, "state_dict"- or "model"-wrapped, or safetensors);
    the classification layers HRPose does not use (incre/downsamp modules, final layer,
    classifier) are dropped. Every backbone tensor must be in it with the same shape, else
    ValueError names the file and the first missing or mismatched names (e.g. the teacher's
    hrnet_w18 weights given to the student).
    """
    import timm

    name = BACKBONES[model.config.variant]
    if source == "imagenet":
        weights = timm.create_model(name, pretrained=True).state_dict()
    else:
        if not Path(source).is_file():
            raise ValueError(f"backbone_weights: file {source} not found (expected a timm {name} checkpoint)")
        try:
            weights = timm.models.load_state_dict(source)
        except Exception as exc:  # torch.load / safetensors errors: unreadable or not a checkpoint
            raise ValueError(f"backbone_weights: cannot read {source}: {exc}") from exc
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in weights]
    mismatched = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or mismatched:
        raise ValueError(
            f"backbone_weights {source}: not timm {name} weights: {len(missing)} tensors missing "
            f"{missing[:3]}, {len(mismatched)} of another shape {mismatched[:3]}"
        )
    model.backbone.load_state_dict({k: weights[k] for k in own})
    logger.info("backbone %s initialised from %s", name, source)


def bf16_is_native(device: torch.device) -> bool:
    """Return True unless ``device`` is a CPU without native bf16 (AMX or AVX-512 BF16).

    The cpu recipe's bf16 autocast pays off only there. Without, oneDNN emulates it: a student step
    took 5.5 s instead of 0.77 s in fp32 (AMD EPYC with AVX2 only, 2 threads, 2026-12-01). Both
    :func:`train` and :func:`split_loss` ask.
    """
    return device.type != "cpu" or has_native_bf16()


def split_loss(
    model: HRPose,
    frames: Sequence[bop_reader.BopFrame],
    objects: Sequence[ObjectModel],
    codec: KeypointCodec,
    config: TrainConfig,
    n_frames: int = 64,
) -> float:
    """Return the weighted L_mse (Eq. 3, ``config.positive_weight``) of ``model`` on a sample of ``frames``.

    The sample (the first ``n_frames`` of a permutation seeded by ``config.seed``) and its crops
    are the same at every call, without augmentation, in eval mode (the network as the pipeline
    runs it), so the value of one run compares across epochs, and a split the model trained on
    compares with fresh frames: a gap says it memorises frames rather than learns the objects.
    """
    order = np.random.default_rng(config.seed).permutation(len(frames))[:n_frames]
    dataset = KeypointDataset(
        [frames[i] for i in order],
        objects,
        codec,
        config.image_scale,
        (config.input_width, config.input_height),
        config.crop_size,
        augment=False,
        seed=config.seed,
    )
    device = next(model.parameters()).device
    bf16 = config.bf16 and bf16_is_native(device)  # once: it reads /proc/cpuinfo
    was_training = model.training
    model.eval()
    losses, weights = [], []
    with torch.inference_mode():
        for images, belief, vectors in torch.utils.data.DataLoader(dataset, batch_size=config.batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(images.to(device))
            output = type(output)(*(t.float() for t in output))
            terms = total_loss(
                output, belief.to(device), vectors.to(device), positive_weight=config.positive_weight
            )
            losses.append(float(terms.mse))
            weights.append(len(images))
    model.train(was_training)
    return float(np.average(losses, weights=weights))


def read_splits(split_dirs: str) -> list[bop_reader.BopFrame]:
    """Return the frames of a BOP split, or of several joined by commas (``data/train,data/new``), in order.

    Several splits let a run add freshly generated frames to the ones it has already seen
    without copying or renumbering scenes (``train_dir``; ``val_dir`` reads the same way).
    """
    splits = [split.strip() for split in split_dirs.split(",") if split.strip()]
    if not splits:
        raise ValueError(
            f"{split_dirs!r}: no BOP split given (expected a split dir, or several joined by commas)"
        )
    return [frame for split in splits for frame in bop_reader.read_split(split)]


def train(
    config: TrainConfig,
    frames: Sequence[bop_reader.BopFrame] | None = None,
    objects: Sequence[ObjectModel] | None = None,
) -> Path:
    """Train one stage and return the path of its last checkpoint (``out_dir``/last.pt).

    ``frames``/``objects`` default to ``config.train_dir`` and ``config.objects_dir``.
    """
    torch.manual_seed(config.seed)
    config = dataclasses.replace(config, device=resolve_device(config.device))  # stored as used
    device = torch.device(config.device)
    if config.bf16 and not bf16_is_native(device):
        logger.warning("bf16 autocast asked for, but this CPU has no native bf16: training in fp32")
        config = dataclasses.replace(config, bf16=False)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = _compact(objects if objects is not None else load_objects(config.objects_dir))
    frames = list(frames) if frames is not None else read_splits(config.train_dir)
    if config.max_frames:
        frames = frames[: config.max_frames]
    val_frames = read_splits(config.val_dir) if config.val_dir else []

    model_config = HRPoseConfig(variant=config.variant, num_classes=len(objects))
    codec = KeypointCodec(CodecConfig(num_classes=len(objects), sigma=config.sigma, stride=HRPose.stride))
    dataset = KeypointDataset(
        frames,
        objects,
        codec,
        config.image_scale,
        (config.input_width, config.input_height),
        config.crop_size,
        config.augment,
        config.seed,
        config.class_weights([o.name for o in objects]) if config.crop_class_weights else None,
        parse_scale_range(config.crop_scale_range),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )

    model = HRPose(model_config).to(device)
    previous = _warm_start(model, config, objects) if config.init_checkpoint else {}
    if config.backbone_weights:
        load_backbone_weights(model, config.backbone_weights)
    teacher = _load_teacher(config, model_config, device) if config.uses_teacher else None
    # channels_last for bf16, and for fp32 on a CPU too: on a 2-core AVX2 EPYC, 120-step cpu-recipe
    # student runs took 0.87 s a step instead of 1.01 s (two alternated runs each; TRAINING_HISTORY.md,
    # 2026-12-01). On a GPU without bf16 it stays NCHW (unmeasured).
    channels_last = config.bf16 or device.type == "cpu"
    if channels_last:
        # Convert before any inference_mode: converted parameters must stay trainable tensors.
        model = model.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
    ) if config.lr_schedule == "step" else None
    total_steps = config.epochs * len(loader)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    csv_path = out_dir / "log.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerow(LOG_FIELDS)
    val_path = out_dir / "val.csv"
    val_path.unlink(missing_ok=True)
    if val_frames:
        with open(val_path, "w", newline="") as f:
            csv.writer(f).writerow(VAL_FIELDS)
    logger.info(
        "stage %s: %d frames, %d objects, %d parameters",
        config.stage,
        len(frames),
        len(objects),
        sum(p.numel() for p in model.parameters()),
    )

    start = time.perf_counter()
    step = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for epoch in range(config.epochs):
        model.train()
        bar = tqdm(loader, desc=f"{config.stage} epoch {epoch + 1}/{config.epochs}", leave=False)
        for images, belief, vectors in bar:
            if scheduler is None:
                _set_cosine_lr(optimizer, config, step / total_steps, start)
            optimizer.zero_grad(set_to_none=True)
            values = accumulate_gradients(model, teacher, config, images, belief, vectors, memory_format)
            optimizer.step()
            step += 1
            with open(csv_path, "a", newline="") as f:
                csv.writer(f).writerow(
                    [
                        epoch + 1,
                        step,
                        optimizer.param_groups[0]["lr"],
                        *values,
                        round(time.perf_counter() - start, 2),
                    ]
                )
            bar.set_postfix(loss=f"{values[0]:.3f}", mse=f"{values[1]:.3f}")
            if _budget_spent(config, step, start):
                break
        if scheduler is not None:
            scheduler.step()
        wall = time.perf_counter() - start  # training time; the validation pass is not counted
        val_mse = None
        if val_frames:
            n_val = min(config.val_frames, len(val_frames))
            val_mse = split_loss(model, val_frames, objects, codec, config, n_val)
            with open(val_path, "a", newline="") as f:
                csv.writer(f).writerow([epoch + 1, step, round(val_mse, 4), n_val])
            logger.info("epoch %d: L_mse %.3f on %d frames of %s", epoch + 1, val_mse, n_val, config.val_dir)
        checkpoint = Checkpoint(
            model_config=model_config,
            codec_config=codec.config,
            input_size=(config.input_width, config.input_height),
            objects=objects,
            state_dict=model.state_dict(),
            train_config=config.to_dict(),
            history={
                "epochs": epoch + 1,
                "steps": step,
                "wall_time_s": round(wall, 1),
                "frames": len(frames),
                "val_mse": val_mse,
                # Warm-started runs carry the earlier runs' totals: the model card reports all of it.
                "total_steps": step + previous.get("total_steps", previous.get("steps", 0)),
                "total_wall_time_s": round(
                    wall + previous.get("total_wall_time_s", previous.get("wall_time_s", 0.0)), 1
                ),
                "init_checkpoint": config.init_checkpoint,
            },
        )
        save_checkpoint(out_dir / "last.pt", checkpoint)
        plot_losses(csv_path, out_dir / "loss.png")
        logger.info("epoch %d/%d done: step %d, %.0f s", epoch + 1, config.epochs, step, wall)
        if _budget_spent(config, step, start):
            logger.info("step/time budget reached after %d steps", step)
            break
    return out_dir / "last.pt"


def _set_cosine_lr(optimizer, config: TrainConfig, step_fraction: float, start: float) -> None:
    """Set lr = lr0 * (1 + cos(pi * progress)) / 2, progress = the larger of the step and wall-time fractions.

    torch's CosineAnnealingLR counts steps only; a run bounded by ``max_minutes`` must anneal
    by the clock, so the few lines are written here.
    """
    progress = step_fraction
    if config.max_minutes:
        progress = max(progress, (time.perf_counter() - start) / (60.0 * config.max_minutes))
    lr = config.lr * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def accumulate_gradients(
    model: HRPose,
    teacher: HRPose | None,
    config: TrainConfig,
    images: torch.Tensor,
    belief: torch.Tensor,
    vectors: torch.Tensor,
    memory_format=torch.contiguous_format,
) -> list[float]:
    """Add the gradients of one batch's Eq. 7 loss to ``model``'s; return [total, mse, od, fs] of the batch.

    The batch goes through in ``config.micro_batches`` parts (torch.chunk), each loss weighted by its
    part's share of the batch: every loss term is a mean over images, so the gradients add up to
    the whole batch's (BatchNorm in train mode aside, which normalises over each part).
    """
    device = next(model.parameters()).device
    values = np.zeros(len(LossTerms._fields))
    for part in zip(*(t.chunk(config.micro_batches) for t in (images, belief, vectors))):
        share = len(part[0]) / len(images)
        terms = _forward_loss(model, teacher, config, device, memory_format, *part)
        (terms.total * share).backward()
        values += share * np.array([float(t.detach()) for t in terms])
    return values.tolist()


def _forward_loss(model, teacher, config: TrainConfig, device, memory_format, images, belief, vectors):
    """Return the LossTerms (Eq. 7) of one (micro-)batch, with the teacher's outputs if distilling."""
    images = images.to(device).contiguous(memory_format=memory_format)
    belief, vectors = belief.to(device), vectors.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
        output = model(images)
        teacher_output = None
        if teacher is not None:
            with torch.no_grad():
                teacher_output = teacher(images)
    output = type(output)(*(t.float() for t in output))
    if teacher_output is not None:
        teacher_output = type(teacher_output)(*(t.float() for t in teacher_output))
    return total_loss(
        output,
        belief,
        vectors,
        teacher_output,
        config.lambda_od,
        config.lambda_fs,
        positive_weight=config.positive_weight,
    )


def _budget_spent(config: TrainConfig, step: int, start: float) -> bool:
    """True once ``max_steps`` or ``max_minutes`` (when set) is reached."""
    if config.max_steps and step >= config.max_steps:
        return True
    return bool(config.max_minutes) and time.perf_counter() - start >= 60.0 * config.max_minutes


def main(argv=None) -> None:
    """Command line: train one stage with a recipe and overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--network", help="override the stage's network (teacher, student, tiny)")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="paper",
        help="paper = the paper's settings (GPU); cpu = what fits on 2 CPU cores",
    )
    parser.add_argument(
        "--train-dir",
        help="BOP split with the training frames, or several joined by commas (default data/train)",
    )
    parser.add_argument(
        "--val-dir", help="BOP split never trained on: L_mse on a sample of it after every epoch (val.csv)"
    )
    parser.add_argument("--val-frames", type=int, help="frames of --val-dir per check (default 64)")
    parser.add_argument("--objects-dir", help="BOP models dir (default: the shipped object set)")
    parser.add_argument("--teacher", dest="teacher_checkpoint", help="teacher checkpoint (student_kd)")
    parser.add_argument(
        "--init",
        dest="init_checkpoint",
        help="start from this checkpoint's weights (same network and objects) instead of random ones",
    )
    parser.add_argument(
        "--backbone-weights",
        help="backbone init without --init: 'imagenet' (timm download) or a timm checkpoint file; "
             "default random",
    )
    parser.add_argument("--out", dest="out_dir", required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--micro-batches", type=int,
        help="run each batch in this many parts, gradients added up (less memory; default 1)",
    )
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-step-epochs", type=int)
    parser.add_argument("--lr-schedule", choices=("step", "cosine"), help="paper: step; cpu recipe: cosine")
    parser.add_argument("--lambda-od", type=float)
    parser.add_argument("--lambda-fs", type=float)
    parser.add_argument("--crop-size", type=int)
    parser.add_argument(
        "--crop-class-weights",
        help="NAME=WEIGHT,... : crops centre on these objects' instances WEIGHT times as often "
        "(others 1; e.g. duck=3,mug=3); default: every instance alike",
    )
    parser.add_argument(
        "--crop-scale-range",
        metavar="LOW,HIGH",
        help="resize each frame by --image-scale times a factor drawn log-uniformly from [LOW, HIGH] "
        "before cropping (e.g. 0.6,1.2); default: --image-scale alone",
    )
    parser.add_argument("--positive-weight", type=float, help="0 = the paper's Eq. 3 (cpu recipe: 20)")
    parser.add_argument("--image-scale", type=float, help="scale applied to the frames (cpu recipe: 0.5)")
    parser.add_argument("--input-width", type=int)
    parser.add_argument("--input-height", type=int)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None,
        help="bf16 autocast (cpu recipe: on; off, with a warning, where the CPU has no native bf16)",
    )
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-minutes", type=float, help="stop and save once this wall time is spent")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--device", help="auto (default: cuda where torch sees a GPU, else cpu), cpu, cuda or cuda:N"
    )
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.pop("threads"))
    config = recipe(args.pop("recipe"), **args)
    path = train(config)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
