"""Train the pose scorer: is a refined pose hypothesis within 0.1 d of the truth?

    python -m training.train_scorer --train data/ctrain,data/ctrain2 --val data/val --out runs/scorer \
        --minutes 45

The refiner only corrects poses near the truth; the estimator's wrong poses are mostly turned tens
of degrees. Refining several turned copies of a pose contains a right one far more often than the
first start alone, but hand-made scores (edge chamfer, grey correlation, fit of the last step) do
not find it. MegaPose (Labbe et al., CoRL 2022) trains a classifier for this on (image crop,
rendering) pairs; this is that idea on the refiner's own input and network:

- input: the refiner's pair (128 px crop around the hypothesis' projected box, 1.5 x, beside the
  object rendered there), so it scores exactly what the refiner converged to;
- network: the shipped refiner's Lite0 with its last layer replaced by one logit (the refiner's
  features already compare crop and rendering);
- hypotheses, as multi-start inference makes them: the estimator's own poses
  (training/pipeline_starts.py, right and wrong), ground truth turned by 30-180 deg about a model
  axis, and narrowly to widely disturbed ground truth, each then refined 1-3 steps by the frozen
  shipped refiner;
- label: ADD(-S) < 0.1 d of the refined hypothesis (BCE). MegaPose labels coarse hypotheses by the
  nearest rotation in a grid; here the label is the goal's own verdict.

With ``--head`` only a small score head on the frozen refiner's stride-32 map is trained
(``RefinerNet(score=True)``), and the result is a refiner file with a 10th output: the refiner's
poses stay bit for bit those of the refiner it starts from, the score needs no second network and
fits in the shipped file (a separate scorer adds 6.6 MB).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import rankdata
from torch import nn
from tqdm import tqdm

from hrpose_ros.crop_pipeline import DEFAULT_CROPS_WEIGHTS, load_crops_file
from hrpose_ros.refiner import (
    REFINER_FORMAT,
    SCORER_FORMAT,
    RefinerNet,
    disturb_pose,
    load_refiner,
    refiner_from_dict,
    refiner_to_dict,
)
from hrpose_ros.render import Renderer
from training.pipeline_starts import STARTS_FILE
from training.plots import plot_loss_and_validation
from training.schedule import cosine_lr
from training.train_refiner import (
    Instances,
    add_errors,
    pairs,
    start_run,
    unrolled,
)

__all__ = ["ScorerTrainConfig", "hypotheses", "scored_refiner", "scorer_net", "train", "turn"]

TURN_DEGREES = (30.0, 60.0, 90.0, 180.0)


@dataclass(frozen=True)
class ScorerTrainConfig:
    """One training run; saved in the checkpoint."""

    train: tuple
    val: str
    out: str
    refiner: str = ""  # a refiner.pt; "" = the shipped crops file's refiner
    batch: int = 32
    lr: float = 1e-4
    steps: int = 3000
    minutes: float = 0.0
    threads: int = 2
    seed: int = 0
    starts_fraction: float = 0.4  # hypotheses from the estimator's own poses (right and wrong)
    turn_fraction: float = 0.35  # ground truth turned by TURN_DEGREES about a model axis
    max_steps: int = 3  # each batch is refined 1..max_steps steps before it is scored
    val_every: int = 250
    val_samples: int = 600
    max_frames: int | None = None
    init: str = ""
    head: bool = False  # train only a score head on the frozen refiner (module docstring)


def turn(R, rng) -> np.ndarray:
    """Return R turned by one of TURN_DEGREES (either sign) about a random model axis."""
    axis = np.eye(3)[rng.integers(3)]
    angle = np.deg2rad(TURN_DEGREES[rng.integers(len(TURN_DEGREES))]) * rng.choice((-1.0, 1.0))
    return R @ Rotation.from_rotvec(axis * angle).as_matrix()


def hypotheses(data: Instances, indices, objects, rng, config: ScorerTrainConfig):
    """Return starts (R (B, 3, 3), t (B, 3)) of the samples ``indices`` (module docstring)."""
    R0, t0 = [], []
    for i in indices:
        diameter = objects[data.samples.classes[i]].diameter
        u = rng.random()
        if data.has_start[i] and u < config.starts_fraction:
            R, t = disturb_pose(data.start_R[i], data.start_t[i], diameter, rng, scale=0.25)
        elif u < config.starts_fraction + config.turn_fraction:
            R, t = disturb_pose(turn(data.R[i], rng), data.t[i], diameter, rng, scale=0.5)
        else:
            R, t = disturb_pose(data.R[i], data.t[i], diameter, rng, scale=rng.choice((0.5, 1.0, 2.0)))
        R0.append(R), t0.append(t)
    return np.stack(R0), np.stack(t0)


def refined(refiner, data, indices, R, t, objects, renderer, steps: int):
    """Poses after ``steps`` refiner steps, a step PoseRefiner refuses keeping its start."""
    for _ in range(steps):
        R, t = unrolled(refiner, data, indices, R, t, objects, renderer)
    return R, t


def scored_refiner(refiner_dict: dict, refiner: RefinerNet | None = None) -> RefinerNet:
    """The refiner with a score head (starting at logit 0); everything else frozen, in eval mode.
    ``refiner``: ``refiner_dict``'s network when already built."""
    refiner = refiner if refiner is not None else refiner_from_dict(refiner_dict)
    model = RefinerNet(refiner_dict["variant"], pretrained=False, size=refiner.size, score=True)
    missing, unexpected = model.load_state_dict(refiner.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("score_head.") for k in missing), (missing, unexpected)
    for p in model.pose_parameters():
        p.requires_grad_(False)
    return model.eval()


def scorer_net(refiner_dict: dict, refiner: RefinerNet | None = None) -> RefinerNet:
    """The refiner's network with one logit (starting at 0) in place of its 9 pose outputs.
    ``refiner``: ``refiner_dict``'s network when already built."""
    refiner = refiner if refiner is not None else refiner_from_dict(refiner_dict)
    model = RefinerNet(refiner_dict["variant"], pretrained=False, size=refiner.size, outputs=1)
    last = f"head.{len(model.head) - 1}."  # the output layer: 9 pose outputs there, 1 logit here
    state = {k: v for k, v in refiner.state_dict().items() if not k.startswith(last)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(last) for k in missing), (missing, unexpected)
    return model


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U from ranks; NaN with one class only)."""
    pos = labels.astype(bool)
    if pos.all() or not pos.any():
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def fixed_val(val: Instances, objects, refiner, renderer, config: ScorerTrainConfig):
    """The validation hypotheses, drawn and refined once: (indices, R, t, labels)."""
    rng = np.random.default_rng(123)
    indices = rng.choice(len(val), min(config.val_samples, len(val)), replace=False)
    R, t = hypotheses(val, indices, objects, rng, config)
    chunks = np.array_split(np.arange(len(indices)), max(1, len(indices) // 32))
    for chunk in chunks:
        steps = int(rng.integers(1, config.max_steps + 1))
        R[chunk], t[chunk] = refined(refiner, val, indices[chunk], R[chunk], t[chunk], objects, renderer,
                                     steps)
    classes = val.samples.classes[indices]
    labels = add_errors(objects, classes, R, t, val.R[indices], val.t[indices]) < 0.1
    return indices, R, t, labels


@torch.no_grad()
def scores(model, data, indices, R, t, objects, renderer) -> np.ndarray:
    out = []
    for chunk in np.array_split(np.arange(len(indices)), max(1, len(indices) // 32)):
        pair, _ = pairs(data, indices[chunk], R[chunk], t[chunk], objects, renderer)
        out.append(model(pair)[:, -1].numpy())  # a scorer's one logit or a scored refiner's 10th
    return np.concatenate(out)


def save(model, config, path: Path, objects, refiner_history: dict | None = None) -> None:
    # a score head's file is the refiner's: it keeps the refiner's own history beside the head's
    history = {**(refiner_history or {}), "score_head": {"config": asdict(config)}} if config.head else \
        {"config": asdict(config)}
    kind = REFINER_FORMAT if config.head else SCORER_FORMAT
    torch.save(refiner_to_dict(model, "lite0", [o.obj_id for o in objects], history, kind), path)


def train_mode(model, config: ScorerTrainConfig) -> None:
    """The whole scorer trains; a score head trains on the frozen refiner, kept in eval mode."""
    if not config.head:
        model.train()


def train(config: ScorerTrainConfig, progress: bool = True) -> Path:
    """Train per ``config``; return the best checkpoint's path (best validation AUC)."""
    if config.refiner:
        refiner_dict = load_refiner(config.refiner, check=False)
    else:
        refiner_dict = load_crops_file(DEFAULT_CROPS_WEIGHTS)[3]["refiner"]
    refiner = refiner_from_dict(refiner_dict).eval()
    rng, out, objects, val = start_run(config, progress, refiner.size)  # crops at the refiner's size
    starts = all((Path(s) / STARTS_FILE).is_file() for s in config.train)
    data = Instances(config.train, objects, config.max_frames, progress, math.inf if starts else None,
                     refiner.size)
    model = (scored_refiner if config.head else scorer_net)(refiner_dict, refiner)
    if config.init:
        kind = REFINER_FORMAT if config.head else SCORER_FORMAT
        init = load_refiner(config.init, check=False, kind=kind)
        model.load_state_dict(refiner_from_dict(init, config.init, kind).state_dict())
    renderer = Renderer(objects, refiner.size, refiner.size)
    val_set = fixed_val(val, objects, refiner, renderer, config)
    print(f"validation: {len(val_set[0])} hypotheses, {100 * val_set[3].mean():.1f} % right")
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    log_path, val_path = out / "log.csv", out / "val.csv"
    log_file = log_path.open("w", newline="", buffering=1)
    val_file = val_path.open("w", newline="", buffering=1)
    log, val_log = csv.writer(log_file), csv.writer(val_file)
    log.writerow(["step", "seconds", "total", "right", "lr"])
    val_log.writerow(["step", "seconds", "auc", "accuracy"])
    start, best = time.perf_counter(), -math.inf
    best_path = out / ("refiner.pt" if config.head else "scorer.pt")
    budget = config.minutes * 60
    bar = tqdm(total=config.steps if budget <= 0 else int(budget), disable=not progress,
               unit="step" if budget <= 0 else "s", desc="scorer")
    step = 0

    def validate() -> None:
        nonlocal best
        model.eval()
        s = scores(model, val, val_set[0], val_set[1], val_set[2], objects, renderer)
        train_mode(model, config)
        area, accuracy = auc(s, val_set[3]), float(np.mean((s > 0) == val_set[3]))
        val_log.writerow([step, round(time.perf_counter() - start, 1), round(area, 4), round(accuracy, 4)])
        if (area if np.isfinite(area) else -1.0) > best:  # NaN: validation holds one class only
            best = area if np.isfinite(area) else -1.0
            save(model, config, best_path, objects, refiner_dict.get("history", {}))
        plot_loss_and_validation(log_path, val_path, out / "loss.png", ("total",),
                                 {"auc": "AUC", "accuracy": "accuracy at 0"}, "validation",
                                 "fixed refined hypotheses of the validation split", "BCE")

    train_mode(model, config)
    while True:
        elapsed, lr = cosine_lr(optimiser, config.lr, start, budget, step, config.steps)
        if lr is None:
            break
        indices = rng.integers(0, len(data), config.batch)
        R, t = hypotheses(data, indices, objects, rng, config)
        steps = int(rng.integers(1, config.max_steps + 1))
        R, t = refined(refiner, data, indices, R, t, objects, renderer, steps)
        classes = data.samples.classes[indices]
        labels = add_errors(objects, classes, R, t, data.R[indices], data.t[indices]) < 0.1
        pair, _ = pairs(data, indices, R, t, objects, renderer, rng)
        loss = loss_fn(model(pair)[:, -1], torch.tensor(labels, dtype=torch.float32))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % 10 == 0:
            log.writerow([step, round(elapsed, 1), loss.item(), float(labels.mean()), lr])
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.n = step if budget <= 0 else int(min(elapsed, budget))
        bar.refresh()
        if step % config.val_every == 0:
            validate()
    bar.close()
    save(model, config, out / "last.pt", objects, refiner_dict.get("history", {}))
    validate()
    log_file.close(), val_file.close()
    renderer.release()
    return best_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="BOP split folders, comma-separated")
    parser.add_argument("--val", required=True)
    parser.add_argument("--out", required=True)
    for field in ("refiner", "init"):
        parser.add_argument(f"--{field}", default="")
    parser.add_argument("--head", action="store_true", help="a score head on the frozen refiner")
    for field, kind in (("batch", int), ("lr", float), ("steps", int), ("minutes", float), ("threads", int),
                        ("seed", int), ("starts_fraction", float), ("turn_fraction", float),
                        ("max_steps", int), ("val_every", int), ("val_samples", int), ("max_frames", int)):
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind,
                            default=getattr(ScorerTrainConfig, field, None))
    args = vars(parser.parse_args(argv))
    args["train"] = tuple(s for s in args["train"].split(",") if s)
    print(train(ScorerTrainConfig(**args)))


if __name__ == "__main__":
    main()
