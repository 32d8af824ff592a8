"""Train the crop keypoint network: teacher (Lite2), student (Lite0), or student + KD (HRPose Eq. 7 on crops).

    python -m training.train_crops --train data/ctrain,data/ctrain2 --val data/test --out runs/crops_s \\
        --variant lite0 --minutes 60
    python -m training.train_crops ... --variant lite2 --out runs/crops_t             # teacher
    python -m training.train_crops ... --variant lite0 --teacher runs/crops_t/keypoints.pt --out runs/crops_kd

Loss: the integral-regression keypoint loss (L1 of soft-argmax keypoints + distribution CE, see
hrpose_ros.crop_keypoints) in place of Eq. 3's belief-map MSE; with a teacher, Eq. 7's
distillation terms are added with the paper's lambda_1 = 0.5 and lambda_2 = 5e-5: L_od (Eq. 4) is
the MSE between student and teacher heatmap probabilities (x map cells, so it is O(1) like Eq. 3's
per-pixel sum), L_fs (Eq. 5-6) compares the similarity matrices of the FPN features.
Optimiser: Adam as in the paper, but lr 1e-3 with cosine decay over the step budget instead of
1e-4 halved every 20 epochs: the backbone starts from ImageNet and the budget is hours, not
120 epochs. Writes log.csv, val.csv, loss.png, keypoints.pt (the best validation checkpoint) and last.pt.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_models
from hrpose_ros.crop_keypoints import HEAD_OUTPUTS, CropKeypointConfig, CropKeypointNet, soft_argmax, vote
from hrpose_ros.crop_pipeline import CROPS_FORMAT, keypoints_from_dict, keypoints_to_dict
from hrpose_ros.geometry import model_keypoints
from training.config import class_weight_array
from training.crop_data import JitterConfig, crop_batch, load_crop_samples
from training.crop_losses import coordinate_loss, keypoint_loss, voting_loss
from training.losses import feature_similarity_loss
from training.plots import plot_loss_and_validation
from training.schedule import cosine_lr

__all__ = ["CropTrainConfig", "load_teacher", "train"]


@dataclass(frozen=True)
class CropTrainConfig:
    """One training run; saved in the checkpoint's history."""

    train: tuple
    val: str
    out: str
    variant: str = "lite0"
    teacher: str = ""
    lambda_od: float = 0.5  # HRPose Eq. 7
    lambda_fs: float = 5e-5
    crop_size: int = 128
    batch: int = 32
    lr: float = 1e-3
    steps: int = 4000
    minutes: float = 0.0  # > 0: stop after this time (the cosine schedule then follows the clock)
    threads: int = 2
    seed: int = 0
    val_crops: int = 512
    val_every: int = 250
    max_frames: int | None = None
    pretrained: bool = True
    head: str = "heatmap"  # crop_keypoints.CropKeypointConfig.head (voting: no faster here, see README)
    init: str = ""  # a keypoints.pt to go on training from (same objects, variant and head)
    keypoints: str = "box"  # crop_keypoints.CropKeypointConfig.keypoints
    class_weights: str = ""  # "prism=3,domino=2": those objects' crops drawn that many times as often
    coordinates: bool = False  # crop_keypoints.CropKeypointConfig.coordinates (dense correspondences)
    freeze_keypoints: bool = False  # train only the coordinate head (trunk and keypoint head as in --init)
    extremes: bool = False  # crop_keypoints.CropKeypointConfig.extremes (the silhouette's extreme points)


def _split_objects(split: str):
    return bop_models.load_object_models(Path(split).parent / "models")


def _validate(model, samples, config, indices) -> tuple[float, float]:
    """Return (mean keypoint error (crop px), mean coordinate L1 where seen (normalised), mean extreme
    point error along its axis (crop px); NaN without those heads) of un-jittered ground-truth-box crops."""
    model.eval()
    errors, coord_errors, counts, extreme_errors = [], 0.0, 0.0, []
    coordinates = model.config.coordinates
    with torch.inference_mode():
        for start in range(0, len(indices), 64):
            batch = crop_batch(
                samples, indices[start : start + 64], config.crop_size, model.config.padding, None,
                coordinates=coordinates,
            )
            crops, kps, classes = batch[:3]
            output = model(crops)
            predicted = _keypoints(model, model.class_heatmaps(output.heatmaps, classes))
            errors.append((predicted - kps[:, : model.config.num_keypoints]).norm(dim=-1).mean(-1))
            if model.config.extremes:
                found, _ = soft_argmax(model.class_coordinates(output.extremes, classes))
                extreme_errors.append((found - kps[:, model.config.num_keypoints :]).abs().mean((1, 2)))
            if coordinates:
                xyz, seen = batch[3:]
                outputs = model.class_coordinates(output.coordinates, classes)
                coord_errors += float(((outputs[:, :3] - xyz).abs().mean(1) * seen).sum())
                counts += float(seen.sum())
    _train_mode(model, config.freeze_keypoints)
    extreme = float(torch.cat(extreme_errors).mean()) if extreme_errors else math.nan
    return float(torch.cat(errors).mean()), coord_errors / counts if counts else math.nan, extreme


def _train_mode(model: CropKeypointNet, freeze_keypoints: bool) -> None:
    """Training mode; with frozen keypoints the trunk and keypoint head keep their batch-norm statistics."""
    model.train()
    if freeze_keypoints:
        model.trunk.eval()
        model.head.eval()


def _keypoints(model: CropKeypointNet, outputs: torch.Tensor) -> torch.Tensor:
    """Return (B, K, 2) crop px from each crop's own class's outputs, per the model's head."""
    return vote(outputs)[0] if model.config.head == "voting" else soft_argmax(outputs)[0]


def output_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, head: str) -> torch.Tensor:
    """Return L_od (HRPose Eq. 4) on crops: the MSE between student and (detached) teacher outputs.

    Heatmaps are compared as softmax probabilities (x map cells, so the term is O(1) like the
    keypoint loss); voting outputs as weight probabilities likewise plus the offsets (map cells).
    """
    teacher = teacher.detach()
    k = student.shape[1] // HEAD_OUTPUTS[head]
    cells = student.shape[-1] * student.shape[-2]
    probs = (student[:, :k].flatten(-2).softmax(-1) - teacher[:, :k].flatten(-2).softmax(-1)).pow(2)
    loss = probs.sum(-1).mean() * cells
    if head == "voting":
        loss = loss + (student[:, k:] - teacher[:, k:]).pow(2).mean()
    return loss


def _plot(log_path: Path, val_path: Path, out: Path) -> None:
    terms = ("total", "l1_cells", "aux", "od", "fs", "coord_l1", "mask_bce", "extreme_l1_cells")
    plot_loss_and_validation(
        log_path, val_path, out, terms, {"val_px": "val_px"},
        "mean keypoint error (crop px)", "validation, ground-truth boxes",
    )


def load_teacher(path, objects, keypoints: str = "box") -> CropKeypointNet:
    """Return the teacher at ``path``, frozen (eval, no gradients: paper Fig. 1), knowing ``objects``
    and locating the same ``keypoints`` kind as the student."""
    teacher, teacher_objects, _ = keypoints_from_dict(
        torch.load(path, map_location="cpu", weights_only=False), str(path)
    )
    if [o.obj_id for o in teacher_objects] != [o.obj_id for o in objects]:
        raise ValueError(f"--teacher {path}: trained on other objects than the training split's")
    if teacher.config.keypoints != keypoints:
        raise ValueError(
            f"--teacher {path}: locates {teacher.config.keypoints!r} keypoints, the student {keypoints!r}"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def sample_probabilities(classes: np.ndarray, names: list[str], class_weights: str) -> np.ndarray | None:
    """Return each crop's probability of being drawn, from ``class_weights`` ("mug=2,prism=3"; None: uniform).

    The mean ADD(-S) weighs every object alike, so a weak object's crops are drawn more often.
    """
    if not class_weights:
        return None
    per_sample = class_weight_array(class_weights, names)[classes]
    return per_sample / per_sample.sum()


def train(config: CropTrainConfig, progress: bool = True) -> Path:
    """Train per ``config``; return the path of the saved checkpoint (best validation error)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    objects = _split_objects(config.train[0])
    keypoints_3d = np.stack([model_keypoints(o.points, config.keypoints) for o in objects])
    samples = load_crop_samples(
        config.train, objects, max_frames=config.max_frames, progress=progress, keypoints_3d=keypoints_3d,
        coordinates=config.coordinates, extremes=config.extremes,
    )
    val_samples = load_crop_samples(
        [config.val], objects, progress=progress, keypoints_3d=keypoints_3d, coordinates=config.coordinates,
        extremes=config.extremes,
    )
    rng = np.random.default_rng(config.seed)
    val_indices = rng.permutation(len(val_samples))[: config.val_crops]
    draw = sample_probabilities(samples.classes, [o.name for o in objects], config.class_weights)
    model_config = CropKeypointConfig(
        variant=config.variant,
        num_classes=len(objects),
        crop_size=config.crop_size,
        pretrained=config.pretrained,
        head=config.head,
        keypoints=config.keypoints,
        coordinates=config.coordinates,
        extremes=config.extremes,
    )
    if config.freeze_keypoints and not (config.coordinates and config.init):
        raise ValueError("--freeze-keypoints: needs --coordinates and an --init network to keep")
    model = CropKeypointNet(model_config).train()
    model.keypoints_3d = keypoints_3d
    if config.init:
        stored = torch.load(config.init, map_location="cpu", weights_only=False)
        if isinstance(stored, dict) and stored.get("format") == CROPS_FORMAT:
            stored = stored["keypoints"]  # the keypoint part of a crops weights file
        start, start_objects, _ = keypoints_from_dict(stored, config.init)
        # Another keypoint set is allowed: the heads then start from related maps. Another crop size
        # too: the network is fully convolutional, and the same object parts only look larger.
        # A coordinate head may be added to a network without one: it starts from scratch.
        same = replace(start.config, keypoints=model_config.keypoints, pretrained=model_config.pretrained,
                       crop_size=model_config.crop_size,
                       coordinates=start.config.coordinates or model_config.coordinates,
                       extremes=start.config.extremes or model_config.extremes)
        if [o.obj_id for o in start_objects] != [o.obj_id for o in objects] or same != model_config:
            raise ValueError(f"--init {config.init}: another network ({start.config}) or other objects")
        missing, _ = model.load_state_dict(start.state_dict(), strict=False)
        if any(not k.startswith(("coordinate_head.", "extreme_head.")) for k in missing):
            raise ValueError(f"--init {config.init}: weights missing for {missing[:3]}")
    trained = model.parameters()
    if config.freeze_keypoints:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.coordinate_head.parameters():
            p.requires_grad_(True)
        trained = model.coordinate_head.parameters()
    _train_mode(model, config.freeze_keypoints)
    teacher = load_teacher(config.teacher, objects, config.keypoints) if config.teacher else None
    optimiser = torch.optim.Adam(trained, lr=config.lr)
    log_path, val_path = out / "log.csv", out / "val.csv"
    log_file, val_file = (
        log_path.open("w", newline="", buffering=1),
        val_path.open("w", newline="", buffering=1),
    )
    log = csv.writer(log_file)
    log.writerow(["step", "seconds", "total", "l1_cells", "aux", "od", "fs", "coord_l1", "mask_bce",
                  "extreme_l1_cells", "lr"])
    val_log = csv.writer(val_file)
    val_log.writerow(["step", "seconds", "val_px", "val_coord_l1", "val_extreme_px"])
    start, best, best_path = time.perf_counter(), math.inf, out / "keypoints.pt"
    budget = config.minutes * 60
    bar = tqdm(
        total=config.steps if budget <= 0 else int(budget),
        disable=not progress,
        unit="step" if budget <= 0 else "s",
        desc=f"{config.variant}{' + KD' if teacher else ''}",
    )
    step = 0
    history = {"config": asdict(config), "val_px": []}
    jitter = JitterConfig()
    while True:
        _, lr = cosine_lr(optimiser, config.lr, start, budget, step, config.steps)
        if lr is None:
            break
        if draw is None:
            indices = rng.integers(0, len(samples), config.batch)
        else:
            indices = rng.choice(len(samples), config.batch, p=draw)
        batch = crop_batch(
            samples, indices, config.crop_size, model_config.padding, rng, jitter,
            coordinates=config.coordinates,
        )
        crops, kps, classes = batch[:3]
        output = model(crops)
        logits = model.class_heatmaps(output.heatmaps, classes)
        valid = ((kps > -0.25 * config.crop_size) & (kps < 1.25 * config.crop_size)).all(-1)
        head_loss = voting_loss if model_config.head == "voting" else keypoint_loss
        k = model_config.num_keypoints
        loss, terms = head_loss(logits, kps[:, :k], valid[:, :k])
        extreme_l1 = torch.full((), math.nan)
        if config.extremes:
            extreme, extreme_terms = keypoint_loss(
                model.class_coordinates(output.extremes, classes), kps[:, k:], valid[:, k:]
            )
            loss, extreme_l1 = loss + extreme, extreme_terms["l1_cells"]
        if config.freeze_keypoints:
            loss = torch.zeros(())
        coord_terms = {"coord_l1": torch.full((), math.nan), "mask_bce": torch.full((), math.nan)}
        if config.coordinates:
            outputs = model.class_coordinates(output.coordinates, classes)
            coord, coord_terms = coordinate_loss(outputs, *batch[3:])
            loss = loss + coord
        od = fs = torch.zeros(())
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(crops)
            t_logits = teacher.class_heatmaps(t_out.heatmaps, classes)
            od = output_distillation_loss(logits, t_logits, model_config.head)
            fs = feature_similarity_loss(output.features, t_out.features)
            loss = loss + config.lambda_od * od + config.lambda_fs * fs
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        seconds = time.perf_counter() - start
        log.writerow(
            [
                step,
                f"{seconds:.1f}",
                f"{loss.item():.5f}",
                f"{terms['l1_cells'].item():.5f}",
                f"{terms['aux'].item():.5f}",
                f"{od.item():.5f}",
                f"{fs.item():.5f}",
                f"{coord_terms['coord_l1'].item():.5f}",
                f"{coord_terms['mask_bce'].item():.5f}",
                f"{extreme_l1.item():.5f}",
                f"{lr:.2e}",
            ]
        )
        bar.set_postfix(loss=f"{loss.item():.3f}", l1=f"{terms['l1_cells'].item():.3f}", refresh=False)
        bar.update(1 if budget <= 0 else int(seconds) - bar.n)
        if step % config.val_every == 0:
            val_px, val_coord, val_extreme = _validate(model, val_samples, config, val_indices)
            val_log.writerow(
                [step, f"{seconds:.1f}", f"{val_px:.4f}", f"{val_coord:.5f}", f"{val_extreme:.4f}"]
            )
            history["val_px"].append((step, val_px))
            tqdm.write(f"step {step}: validation keypoint error {val_px:.3f} crop px, "
                       f"coordinates {val_coord:.4f}, extreme points {val_extreme:.3f} px")
            score = val_coord if config.freeze_keypoints else val_px
            if score < best:
                best = score
                torch.save(
                    keypoints_to_dict(model, objects, {**history, "steps": step, "best_val_px": best}),
                    best_path,
                )
            _plot(log_path, val_path, out / "loss.png")
    bar.close()
    val_px, val_coord, val_extreme = _validate(model, val_samples, config, val_indices)
    val_log.writerow([step, f"{time.perf_counter() - start:.1f}", f"{val_px:.4f}", f"{val_coord:.5f}",
                      f"{val_extreme:.4f}"])
    history["val_px"].append((step, val_px))
    score = val_coord if config.freeze_keypoints else val_px
    if score < best:
        best = score
        torch.save(
            keypoints_to_dict(model, objects, {**history, "steps": step, "best_val_px": best}), best_path
        )
    # The last network too: with extra heads the keypoint error alone may not pick the best of them.
    last = keypoints_to_dict(model, objects, {**history, "steps": step, "best_val_px": best})
    torch.save(last, out / "last.pt")
    log_file.close()
    val_file.close()
    _plot(log_path, val_path, out / "loss.png")
    print(
        f"{step} steps in {(time.perf_counter() - start) / 60:.1f} min; best validation keypoint error "
        f"{best:.3f} crop px -> {best_path}"
    )
    return best_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="BOP split folders, comma-separated")
    parser.add_argument("--val", required=True, help="BOP split folder for validation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", default="lite0", choices=("lite0", "lite1", "lite2"))
    parser.add_argument("--teacher", default="", help="teacher keypoints.pt: train with Eq. 7's distillation")
    parser.add_argument("--lambda-od", type=float, default=0.5)
    parser.add_argument("--lambda-fs", type=float, default=5e-5)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget (overrides --steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--random-init", action="store_true", help="no ImageNet weights (for comparison)")
    parser.add_argument(
        "--head",
        default="heatmap",
        choices=("voting", "heatmap"),
        help="keypoint head (hrpose_ros.crop_keypoints)",
    )
    parser.add_argument("--init", default="",
                        help="go on training from this keypoints.pt or crops weights file")
    parser.add_argument(
        "--keypoints",
        default="box",
        choices=("box", "surface"),
        help="3D keypoints: HRPose's box corners or surface points (hrpose_ros.crop_keypoints)",
    )
    parser.add_argument("--class-weights", default="",
                        help="draw some objects' crops more often, e.g. 'prism=3,domino=2'")
    parser.add_argument("--coordinates", action="store_true",
                        help="add the dense object-coordinate head (hrpose_ros.crop_keypoints)")
    parser.add_argument("--extremes", action="store_true",
                        help="add the extreme-point head (the silhouette's box, for the distance)")
    parser.add_argument("--freeze-keypoints", action="store_true",
                        help="train only the coordinate head of the --init network")
    args = parser.parse_args(argv)
    train(
        CropTrainConfig(
            train=tuple(s for s in args.train.split(",") if s),
            val=args.val,
            out=args.out,
            variant=args.variant,
            teacher=args.teacher,
            lambda_od=args.lambda_od,
            lambda_fs=args.lambda_fs,
            crop_size=args.crop_size,
            batch=args.batch,
            lr=args.lr,
            steps=args.steps,
            minutes=args.minutes,
            threads=args.threads,
            seed=args.seed,
            val_every=args.val_every,
            max_frames=args.max_frames,
            pretrained=not args.random_init,
            head=args.head,
            init=args.init,
            keypoints=args.keypoints,
            class_weights=args.class_weights,
            coordinates=args.coordinates,
            freeze_keypoints=args.freeze_keypoints,
            extremes=args.extremes,
        )
    )


if __name__ == "__main__":
    main()
