"""Train the render-and-compare pose refiner (hrpose_ros.refiner) on rendered BOP splits.

    python -m training.train_refiner --train data/ctrain,data/ctrain2 --val data/val --out runs/refiner \\
        --minutes 60

Each sample: one annotated instance, its pose disturbed (rotation about a random axis, per-axis
normal angles of --rot-deg; image-plane shift of --shift x the diameter; depth ratio log-normal
--depth), the crop around the disturbed pose's projection (cut from the instance's context crop,
hrpose_ros training crops' 2.2 x box) beside the object rendered at that pose. Loss: CosyPose's
disentangled point-matching loss (Labbé et al., ECCV 2020, Eq. 3), L1 over 256 model points
divided by the diameter, against the symmetric ground truth nearest the disturbed pose. The
disturbance matches what the crop keypoint estimator leaves (median rotation error about 15
degrees, depth a few per cent) rather than CosyPose's coarse-to-fine schedule: one refiner, one
regime. The keypoint network's errors are heavy-tailed, though (a third of its ADD failures are
10-30 degrees off), so --wide-fraction of the samples get sigmas --wide-scale times wider;
validation keeps the narrow regime so runs stay comparable. --starts-fraction of the samples
instead start from the crop estimator's own pose of the instance (training/pipeline_starts.py),
jittered by --starts-jitter x the narrow sigmas: its errors are systematic (thin boxes placed too
far, rotations off in the same way for the same view), which random disturbances do not teach.
With the validation split's starts, validation also scores one and two steps from them
("pipe_*"), and the best checkpoint is chosen on one step (on two with --unroll-fraction).
--unroll-fraction of the samples are first moved by one no-grad step of the model being trained,
so that a second step at inference sees what it learned on (the iterative training of DeepIM,
Li et al., ECCV 2018, one step deep). Adam, lr 3e-4 (CosyPose) with cosine decay over the time
budget.
Writes log.csv, val.csv, loss.png, refiner.pt (best validation) and last.pt.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.crop_pipeline import CROPS_FORMAT
from hrpose_ros.data.augment import augment
from hrpose_ros.refiner import (
    REFINER_PADDING,
    REFINER_SIZE,
    RefinerNet,
    crop_intrinsics,
    disturb_pose,
    orthonormal,
    pair_tensor,
    pose_crop,
    refiner_from_dict,
    refiner_to_dict,
    sane_steps,
    translation,
    update_poses,
)
from hrpose_ros.render import Renderer
from training.crop_data import CONTEXT_PADDING, CONTEXT_SIZE, JitterConfig, load_crop_samples
from training.pipeline_starts import STARTS_FILE, load_starts
from training.plots import plot_loss_and_validation
from training.schedule import cosine_lr

__all__ = ["RefinerTrainConfig", "train", "train_step"]

LOSS_POINTS = 256


@dataclass(frozen=True)
class RefinerTrainConfig:
    """One training run; saved in the checkpoint."""

    train: tuple
    val: str
    out: str
    variant: str = "lite0"
    batch: int = 32
    lr: float = 3e-4
    steps: int = 3000
    minutes: float = 0.0  # > 0: stop after this time (the cosine schedule then follows the clock)
    threads: int = 2
    seed: int = 0
    rot_deg: float = 10.0  # per-axis sigma of the disturbance
    shift: float = 0.04  # image-plane sigma, x the diameter
    depth: float = 0.06  # log depth-ratio sigma
    wide_fraction: float = 0.0  # share of samples whose three sigmas are x wide_scale
    wide_scale: float = 2.5
    val_every: int = 250
    val_samples: int = 400
    max_frames: int | None = None
    init: str = ""
    starts_fraction: float = 0.0  # share of samples starting from the crop estimator's poses
    starts_jitter: float = 0.25  # x the narrow sigmas, added to those starts
    starts_max_error: float = 0.5  # ADD(-S) / diameter; worse starts (wrong matches, flips) unused
    unroll_fraction: float = 0.0  # share of samples first moved by one no-grad step of the model
    size: int = REFINER_SIZE  # crop side in px; a larger one may start from a 128 px refiner (--init)


class Instances:
    """Context crops of every instance plus what the refiner needs: pose, frame K, object index."""

    def __init__(self, splits, objects, max_frames=None, progress=True, starts_max_error=None,
                 size: int = REFINER_SIZE):
        """``starts_max_error`` not None: also read each split's pipeline starts (those with an
        ADD(-S) error below it, / diameter) into ``has_start``, ``start_R``, ``start_t``. ``size``: the
        refiner's crop side; the context crops are cut large enough to resample its crops from."""
        self.samples = load_crop_samples(splits, objects, max_frames=max_frames, progress=progress,
                                         context_size=context_size(size))
        per_split = [bop_reader.read_split(s) for s in splits]
        frames = [f for split in per_split for f in split]
        self.R = np.zeros((len(self.samples), 3, 3))
        self.t = np.zeros((len(self.samples), 3))
        self.K = np.zeros((len(self.samples), 3, 3))
        for n, (frame_index, gt_id) in enumerate(self.samples.sources):
            frame = frames[frame_index]
            inst = next(i for i in frame.instances if i.gt_id == gt_id)
            self.R[n], self.t[n], self.K[n] = inst.R, inst.t, frame.camera.K
        self.with_starts = starts_max_error is not None  # the splits' pipeline starts were read
        self.has_start = np.zeros(len(self.samples), bool)
        self.start_R, self.start_t = self.R.copy(), self.t.copy()
        if starts_max_error is not None:
            starts = load_starts(splits, [len(split) for split in per_split], starts_max_error)
            for n, source in enumerate(map(tuple, self.samples.sources)):
                if source in starts:
                    self.has_start[n] = True
                    self.start_R[n], self.start_t[n] = starts[source]

    def __len__(self) -> int:
        return len(self.samples)


def context_size(size: int) -> int:
    """The context crop side (px) from which ``size`` px refiner crops are cut without upsampling."""
    return max(CONTEXT_SIZE, math.ceil(size * CONTEXT_PADDING / REFINER_PADDING))


def disturb(R, t, diameter, rng, config: RefinerTrainConfig, scale: float = 1.0):
    """Return a disturbed copy of pose R, t (module docstring); ``scale`` multiplies the sigmas."""
    return disturb_pose(R, t, diameter, rng, config.rot_deg, config.shift, config.depth, scale)


def nearest_symmetric(obj, R_gt, t_gt, R_est):
    """Return the ground-truth pose among ``obj``'s symmetries closest (mean point distance) to R_est."""
    syms = obj.symmetries
    if len(syms) == 1:
        return R_gt, t_gt
    points = obj.points[:: max(1, len(obj.points) // 64)]
    R_all = R_gt @ syms[:, :3, :3]  # (S, 3, 3)
    t_all = syms[:, :3, 3] @ R_gt.T + t_gt  # (S, 3)
    est = points @ R_est.T
    gaps = np.linalg.norm(np.einsum("sij,pj->spi", R_all, points) + t_all[:, None] - t_gt - est, axis=2)
    best = int(np.argmin(gaps.mean(axis=1)))
    return R_all[best], t_all[best]


def pairs(data: Instances, indices, R_est, t_est, objects, renderer, rng=None):
    """Return (pairs (B, 6, S, S) in [0, 1], crop intrinsics (B, 3, 3)): the crop around each estimate
    cut from its instance's context crop, beside the rendering of the estimate."""
    size = renderer.width
    real = np.zeros((len(indices), size, size, 3), np.uint8)
    Ks, poses = [], []
    for n, i in enumerate(indices):
        c = int(data.samples.classes[i])
        crop = pose_crop(objects[c], R_est[n], t_est[n], data.K[i], size)
        context = np.vstack([data.samples.contexts[i].matrix(), [0.0, 0.0, 1.0]])
        to_crop = np.vstack([crop.matrix(), [0.0, 0.0, 1.0]]) @ np.linalg.inv(context)
        real[n] = cv2.warpAffine(data.samples.images[i], to_crop[:2], (size, size), flags=cv2.INTER_LINEAR)
        if rng is not None:
            real[n], _ = augment(real[n], np.zeros((0, 2)), rng, JitterConfig().augment)
        Ks.append(crop_intrinsics(crop, data.K[i]))
        poses.append((objects[c].obj_id, R_est[n], t_est[n]))
    return pair_tensor(real, renderer, poses, Ks), np.stack(Ks)


def point_sets(objects) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, LOSS_POINTS, 3) model points per object (fixed subsample) and (C,) diameters."""
    rng = np.random.default_rng(0)
    sets = [
        o.points[rng.choice(len(o.points), LOSS_POINTS, replace=len(o.points) < LOSS_POINTS)] for o in objects
    ]
    return (
        torch.tensor(np.stack(sets), dtype=torch.float32),
        torch.tensor([o.diameter for o in objects], dtype=torch.float32),
    )


def disentangled_loss(output, R, t, R_gt, t_gt, K_crop, points, diameters):
    """CosyPose's disentangled L1 point-matching loss, per sample divided by the diameter; returns
    (loss, dict of the rotation / image-plane / depth terms)."""
    R_new, xy_over_z, z_new = update_poses(output, R, t, K_crop)
    gt_points = points @ R_gt.transpose(1, 2)
    rot = (points @ R_new.transpose(1, 2) - gt_points).abs().sum(-1).mean(-1)
    t_xy = translation(xy_over_z, t_gt[:, 2:3])
    t_z = translation(t_gt[:, :2] / t_gt[:, 2:3], z_new)
    xy = (t_xy - t_gt).abs().sum(-1)
    z = (t_z - t_gt).abs().sum(-1)
    terms = {"rot": (rot / diameters).mean(), "xy": (xy / diameters).mean(), "z": (z / diameters).mean()}
    return terms["rot"] + terms["xy"] + terms["z"], terms


def train_step(model, optimiser, pair, Ks, start, target, points, diameters) -> tuple[float, dict]:
    """One optimiser step on ``pair`` (B, 6, S, S) from poses ``start`` (R, t arrays) towards
    ``target``; returns (loss, terms) as floats."""
    f32 = dict(dtype=torch.float32)
    loss, terms = disentangled_loss(
        model(pair),
        *(torch.tensor(a, **f32) for a in (*start, *target, Ks)),
        points,
        diameters,
    )
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}


def add_errors(objects, classes, R_est, t_est, R_gt, t_gt) -> np.ndarray:
    """ADD (ADD-S for symmetric objects) / diameter of each estimate."""
    from hrpose_ros.metrics import add_or_adds_error

    return np.array(
        [
            add_or_adds_error(R_est[n], t_est[n], R_gt[n], t_gt[n], objects[c]) / objects[c].diameter
            for n, c in enumerate(classes)
        ]
    )


@torch.no_grad()
def refine_samples(model, data, indices, R_est, t_est, objects, renderer, iterations: int):
    """Return poses after ``iterations`` refiner steps from R_est, t_est (validation)."""
    R_est, t_est = R_est.copy(), t_est.copy()
    for _ in range(iterations):
        pair, Ks = pairs(data, indices, R_est, t_est, objects, renderer)
        R_new, xy_over_z, z_new = update_poses(
            model(pair),
            torch.tensor(R_est, dtype=torch.float32),
            torch.tensor(t_est, dtype=torch.float32),
            torch.tensor(Ks, dtype=torch.float32),
        )
        R_est = R_new.double().numpy()
        t_est = translation(xy_over_z, z_new).double().numpy()
        R_est = orthonormal(R_est)
    return R_est, t_est


def validate(model, data, objects, renderer, config) -> dict:
    """Fixed disturbances of validation instances; ADD(-S)/d before and after 1 and 3 steps (and
    from the estimator's poses, when the split has them, before and after 1 and 2 steps)."""

    def scored(prefix: str, indices, R0, t0, steps) -> dict:
        """{prefix + "start" / "iter<n>": errors after n steps from R0, t0, for n in ``steps``}."""
        classes, R_gt, t_gt = data.samples.classes[indices], data.R[indices], data.t[indices]
        out = {f"{prefix}start": add_errors(objects, classes, R0, t0, R_gt, t_gt)}
        R_est, t_est, done = R0, t0, 0
        for n in steps:
            R_est, t_est = refine_samples(model, data, indices, R_est, t_est, objects, renderer, n - done)
            out[f"{prefix}iter{n}"], done = add_errors(objects, classes, R_est, t_est, R_gt, t_gt), n
        return out

    rng = np.random.default_rng(123)
    indices = rng.choice(len(data), min(config.val_samples, len(data)), replace=False)
    starts = [
        disturb(data.R[i], data.t[i], objects[c].diameter, rng, config)
        for i, c in zip(indices, data.samples.classes[indices])
    ]
    model.eval()
    out = scored("", indices, np.stack([s[0] for s in starts]), np.stack([s[1] for s in starts]), (1, 3))
    if data.has_start.any():
        have = np.flatnonzero(data.has_start)
        indices = rng.choice(have, min(config.val_samples, len(have)), replace=False)
        out.update(scored("pipe_", indices, data.start_R[indices], data.start_t[indices], (1, 2)))
    model.train()
    return {k: (float(np.median(v)), float(np.mean(v < 0.1) * 100)) for k, v in out.items()}


def training_starts(data: Instances, indices, objects, rng, config: RefinerTrainConfig):
    """Return the (B, 3, 3), (B, 3) poses the samples ``indices`` start from (module docstring)."""
    R0, t0 = [], []
    for i in indices:
        diameter = objects[data.samples.classes[i]].diameter
        if data.has_start[i] and rng.random() < config.starts_fraction:
            R, t = disturb(data.start_R[i], data.start_t[i], diameter, rng, config, config.starts_jitter)
        else:
            wide = config.wide_fraction > 0 and rng.random() < config.wide_fraction
            R, t = disturb(data.R[i], data.t[i], diameter, rng, config, config.wide_scale if wide else 1.0)
        R0.append(R), t0.append(t)
    return np.stack(R0), np.stack(t0)


def unrolled(model, data: Instances, indices, R0, t0, objects, renderer):
    """Return the poses after one step of the current ``model`` from R0, t0 (a second step's
    input, as inference's second iteration sees it); a step PoseRefiner would refuse
    (:func:`hrpose_ros.refiner.sane_steps`) keeps its start."""
    R1, t1 = refine_samples(model, data, indices, R0, t0, objects, renderer, 1)
    sane = sane_steps(t0, t1)
    return np.where(sane[:, None, None], R1, R0), np.where(sane[:, None], t1, t0)


def _plot(log_path: Path, val_path: Path, out: Path, keys) -> None:
    plot_loss_and_validation(
        log_path, val_path, out, ("total", "rot", "xy", "z"),
        {f"{key}_pct": key for key in keys},
        "ADD(-S) < 0.1 d (%)", "validation: disturbed ground truth; pipe_*: the estimator's poses",
        "training loss (/ diameter)",
    )


def initial_weights(path) -> dict:
    """The pose-update weights of the refiner in ``path``: a refiner.pt, or a crops weights file's
    refiner (a score head, trained for that refiner's features, is left out)."""
    d = torch.load(path, weights_only=False)
    if isinstance(d, dict) and d.get("format") == CROPS_FORMAT:
        if d.get("refiner") is None:
            raise ValueError(f"{path}: a crops weights file without a refiner")
        d = d["refiner"]
    state = refiner_from_dict(d, str(path)).state_dict()
    return {k: v for k, v in state.items() if not k.startswith("score_head.")}


def save(model, config, path: Path, objects) -> None:
    torch.save(
        refiner_to_dict(model, config.variant, [o.obj_id for o in objects], {"config": asdict(config)}), path
    )


def start_run(config, progress: bool, size: int = REFINER_SIZE) -> tuple:
    """Threads and seeds of a run (train_refiner's or train_scorer's ``config``), its out folder, the
    objects of its training split and its validation instances (with their starts when stored):
    (rng, out, objects, val)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    objects = bop_models.load_object_models(Path(config.train[0]).parent / "models")
    val_starts = (Path(config.val) / STARTS_FILE).is_file()
    val = Instances([config.val], objects, config.max_frames, progress, math.inf if val_starts else None,
                    size)
    return rng, out, objects, val


def train(config: RefinerTrainConfig, progress: bool = True) -> Path:
    """Train per ``config``; return the best checkpoint's path."""
    rng, out, objects, val = start_run(config, progress, config.size)
    val_starts = val.with_starts  # validation scores the pipeline starts too
    data = Instances(config.train, objects, config.max_frames, progress,
                     config.starts_max_error if config.starts_fraction > 0 else None, config.size)
    points, diameters = point_sets(objects)
    model = RefinerNet(config.variant, size=config.size)
    if config.init:
        model.load_state_dict(initial_weights(config.init))
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    renderer = Renderer(objects, config.size, config.size)
    log_path, val_path = out / "log.csv", out / "val.csv"
    log_file, val_file = (
        log_path.open("w", newline="", buffering=1),
        val_path.open("w", newline="", buffering=1),
    )
    log, val_log = csv.writer(log_file), csv.writer(val_file)
    log.writerow(["step", "seconds", "total", "rot", "xy", "z", "lr"])
    keys = ("start", "iter1", "iter3") + (("pipe_start", "pipe_iter1", "pipe_iter2") if val_starts else ())
    chosen_by = "iter3"
    if val_starts:  # a model trained for a second step (unrolled samples): on what two steps give
        chosen_by = "pipe_iter2" if config.unroll_fraction > 0 else "pipe_iter1"
    val_log.writerow(["step", "seconds"] + [f"{k}_{m}" for k in keys for m in ("median", "pct")])
    start, best, best_path = time.perf_counter(), -1.0, out / "refiner.pt"
    budget = config.minutes * 60
    bar = tqdm(
        total=config.steps if budget <= 0 else int(budget),
        disable=not progress,
        unit="step" if budget <= 0 else "s",
        desc="refiner",
    )
    step = 0
    while True:
        elapsed, lr = cosine_lr(optimiser, config.lr, start, budget, step, config.steps)
        if lr is None:
            break
        indices = rng.integers(0, len(data), config.batch)
        classes = data.samples.classes[indices]
        R0, t0 = training_starts(data, indices, objects, rng, config)
        again = rng.random(len(indices)) < config.unroll_fraction
        if again.any():
            model.eval()  # batch statistics of a no-grad pass must not move the running ones
            R0[again], t0[again] = unrolled(model, data, indices[again], R0[again], t0[again], objects,
                                            renderer)
            model.train()
        targets = [nearest_symmetric(objects[c], data.R[i], data.t[i], R)
                   for i, c, R in zip(indices, classes, R0)]
        R_gt, t_gt = [g[0] for g in targets], [g[1] for g in targets]
        pair, Ks = pairs(data, indices, R0, t0, objects, renderer, rng)
        loss, terms = train_step(
            model,
            optimiser,
            pair,
            Ks,
            (R0, t0),
            (np.stack(R_gt), np.stack(t_gt)),
            points[classes],
            diameters[classes],
        )
        step += 1
        if step % 10 == 0:
            log.writerow(
                [step, round(elapsed, 1), float(loss)] + [float(terms[k]) for k in ("rot", "xy", "z")] + [lr]
            )
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        bar.n = step if budget <= 0 else int(min(elapsed, budget))
        bar.refresh()
        if step % config.val_every == 0:
            scores = validate(model, val, objects, renderer, config)
            val_log.writerow(
                [step, round(time.perf_counter() - start, 1)] + [round(v, 4) for k in keys for v in scores[k]]
            )
            if scores[chosen_by][1] > best:
                best = scores[chosen_by][1]
                save(model, config, best_path, objects)
            _plot(log_path, val_path, out / "loss.png", keys)
    bar.close()
    save(model, config, out / "last.pt", objects)
    scores = validate(model, val, objects, renderer, config)
    val_log.writerow(
        [step, round(time.perf_counter() - start, 1)] + [round(v, 4) for k in keys for v in scores[k]]
    )
    if scores[chosen_by][1] > best:
        save(model, config, best_path, objects)
    log_file.close(), val_file.close()
    _plot(log_path, val_path, out / "loss.png", keys)
    renderer.release()
    return best_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", required=True, help="BOP split folders, comma-separated")
    parser.add_argument("--val", required=True, help="BOP split folder for validation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", default="lite0", choices=("lite0", "lite1", "lite2"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget (overrides --steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rot-deg", type=float, default=10.0)
    parser.add_argument("--shift", type=float, default=0.04)
    parser.add_argument("--depth", type=float, default=0.06)
    parser.add_argument(
        "--wide-fraction", type=float, default=0.0, help="share of samples disturbed --wide-scale x wider"
    )
    parser.add_argument("--wide-scale", type=float, default=2.5)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-samples", type=int, default=400)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--init", default="",
                        help="a refiner.pt, or a crops weights file (its refiner), to go on training from")
    parser.add_argument(
        "--starts-fraction", type=float, default=0.0,
        help="share of samples starting from the crop estimator's poses (training/pipeline_starts.py)",
    )
    parser.add_argument(
        "--unroll-fraction", type=float, default=0.0,
        help="share of samples first moved by one step of the current model (trains the second step)",
    )
    parser.add_argument("--size", type=int, default=REFINER_SIZE,
                        help="crop side in px (a multiple of 32; --init may be a 128 px refiner)")
    parser.add_argument("--starts-jitter", type=float, default=0.25, help="x the sigmas, on those starts")
    parser.add_argument(
        "--starts-max-error", type=float, default=0.5, help="ADD(-S) / d; worse starts unused"
    )
    args = parser.parse_args(argv)
    config = RefinerTrainConfig(**{**vars(args), "train": tuple(args.train.split(","))})
    print(train(config))


if __name__ == "__main__":
    main()
