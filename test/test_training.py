"""Training: a short run lowers the loss; distillation trains the student against a frozen teacher."""

import csv

import numpy as np
import pytest
import torch

from hrpose_ros.runtime import load_checkpoint
from training.config import recipe
from training.data import KeypointDataset, frame_keypoints
from training.toy_data import write_toy_split
from training.train_hrpose import _load_teacher, train


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    objects = write_toy_split(root / "train", n_frames=4, seed=0)
    return root, objects


def _losses(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_dataset_targets_peak_at_projected_keypoints(toy_split):
    from hrpose_ros import bop
    from hrpose_ros.codec import CodecConfig, KeypointCodec

    root, objects = toy_split
    frames = bop.read_split(root / "train")
    codec = KeypointCodec(CodecConfig(num_classes=2))
    dataset = KeypointDataset(frames, objects, codec, image_scale=0.5, input_size=(160, 128))
    image, belief, vectors = dataset[0]
    assert image.shape == (3, 128, 160) and belief.shape == (18, 32, 40) and vectors.shape == (32, 32, 40)
    keypoints, classes = frame_keypoints(frames[0], objects)
    centroid = (keypoints[0, 8] + 0.5) * 0.5 - 0.5  # half-size image, in input pixels
    u, v = np.round(centroid / 4).astype(int)
    assert belief[classes[0] * 9 + 8, v, u] > 0.8


def test_short_training_run_lowers_the_loss(toy_split, tmp_path):
    torch.manual_seed(0)
    root, objects = toy_split
    config = recipe(
        "quick",
        stage="student",
        network="tiny",
        train_dir=str(root / "train"),
        out_dir=str(tmp_path),
        epochs=6,
        max_steps=0,
        batch_size=4,
        crop_size=0,
        input_width=160,
        input_height=128,
        lr=3e-3,
    )
    path = train(config, objects=objects)
    rows = _losses(tmp_path / "log.csv")
    assert len(rows) == 6
    assert rows[-1]["total"] < 0.5 * rows[0]["total"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    checkpoint = load_checkpoint(path)
    assert checkpoint.train_config["stage"] == "student" and checkpoint.history["steps"] == 6
    assert [o.name for o in checkpoint.objects] == ["box1", "box2"]


def test_distillation_uses_a_frozen_teacher(toy_split, tmp_path):
    root, objects = toy_split
    common = dict(network="tiny", train_dir=str(root / "train"), batch_size=2, max_steps=2, crop_size=64)
    teacher_path = train(
        recipe("quick", stage="teacher", out_dir=str(tmp_path / "t"), **common), objects=objects
    )
    before = {k: v.clone() for k, v in load_checkpoint(teacher_path).state_dict.items()}
    train(
        recipe(
            "quick",
            stage="student_kd",
            teacher_checkpoint=str(teacher_path),
            out_dir=str(tmp_path / "s"),
            **common,
        ),
        objects=objects,
    )
    rows = _losses(tmp_path / "s" / "log.csv")
    assert all(r["od"] > 0 and r["fs"] > 0 for r in rows)
    assert all(r["total"] == pytest.approx(r["mse"] + 0.5 * r["od"] + 5e-5 * r["fs"], rel=1e-5) for r in rows)
    after = load_checkpoint(teacher_path).state_dict
    assert all(torch.equal(before[k], after[k]) for k in before)
    teacher = _load_teacher(
        recipe("quick", stage="student_kd", teacher_checkpoint=str(teacher_path), **common),
        load_checkpoint(teacher_path).model_config,
        torch.device("cpu"),
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_student_kd_without_teacher_raises_value_error(toy_split, tmp_path):
    root, objects = toy_split
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        train(
            recipe(
                "quick",
                stage="student_kd",
                network="tiny",
                train_dir=str(root / "train"),
                out_dir=str(tmp_path),
            ),
            objects=objects,
        )
