"""training/refiner_precision.py on a toy split: right poses stay right under a refiner that keeps them,
and drift step by step under one whose fixed point is beside the truth."""

import csv
import math

import numpy as np
import torch

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.crop_pipeline import CropPosePipeline
from hrpose_ros.refiner import DEPTH_SCALE, RefinerNet, refiner_to_dict
from training import refiner_precision
from training.toy_data import write_tiny_crops_file, write_toy_split


def _refiner(path, objects, depth_ratio=None):
    model = RefinerNet(pretrained=False)
    if depth_ratio is not None:  # every step moves the pose this much further away
        with torch.no_grad():
            model.head[-1].bias[8] = math.log(depth_ratio) / DEPTH_SCALE
    torch.save(refiner_to_dict(model, "lite0", [o.obj_id for o in objects]), path)
    return path


def test_true_poses_stay_under_an_identity_refiner_and_drift_under_a_biased_one(tmp_path, capsys):
    write_toy_split(tmp_path / "split", n_frames=3, seed=11)
    models = tmp_path / "models"
    objects = bop_models.load_object_models(models)
    weights = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    out = tmp_path / "out"
    refiner_precision.main(["--split", str(tmp_path / "split"), "--weights", str(weights),
                            "--backend", "torch", "--refiner", str(_refiner(tmp_path / "same.pt", objects)),
                            "--refiner-models", str(models), "--steps", "2", "--out", str(out)])
    rows = list(csv.DictReader((out / "precision.csv").open()))
    mean = {k: float(v) for k, v in rows[-1].items() if k != "object"}
    assert rows[-1]["object"] == "Mean" and len(rows) >= 2
    assert mean["add_step0"] == mean["add_step2"] == 100.0  # an untrained refiner returns its input
    assert mean["depth_error_step2"] < 1e-3
    assert (out / "precision.png").stat().st_size > 5000
    assert "| Mean |" in capsys.readouterr().out

    frames = bop_reader.read_split(tmp_path / "split")
    # disturbed starts: an untrained refiner keeps them where they were put
    same = CropPosePipeline.from_pretrained(weights, backend="torch", refiner_models=models,
                                            refiner=tmp_path / "same.pt")
    found = refiner_precision.measure(same, frames, 1, rotation_deg=2.0, depth=0.05, progress=False)
    for v in found.values():
        assert (v[:, 0, 1] > 0).all() and np.allclose(v[:, 1], v[:, 0], atol=1e-6)

    pipeline = CropPosePipeline.from_pretrained(weights, backend="torch", refiner_models=models,
                                                refiner=_refiner(tmp_path / "far.pt", objects, 1.05))
    found = refiner_precision.measure(pipeline, frames, 2, progress=False)
    for v in found.values():
        assert (v[:, 0, 0] == 1).all() and abs(v[:, 1, 1].mean() - 0.05) < 1e-3
        assert abs(v[:, 2, 1].mean() - 0.1025) < 2e-3  # 5 % per step, compounded
    rows = refiner_precision.summarise(found, {o.obj_id: o.name for o in objects})
    assert rows[-1]["add_step2"] < rows[-1]["add_step0"] - 50.0
