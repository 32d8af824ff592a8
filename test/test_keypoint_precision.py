"""training/keypoint_precision.py on a toy split: the noise curve and the network's errors."""

import csv

import numpy as np

from hrpose_ros import bop_reader
from hrpose_ros.crop_pipeline import CropPosePipeline
from training import keypoint_precision
from training.evaluate import ground_truth_crops
from training.toy_data import write_tiny_crops_file, write_toy_split


def test_noise_curve_falls_from_exact_keypoints_and_an_untrained_network_is_far_off(tmp_path, capsys):
    objects = write_toy_split(tmp_path / "split", n_frames=4, seed=7)
    weights = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    out = tmp_path / "out"
    keypoint_precision.main(["--split", str(tmp_path / "split"), "--weights", str(weights), "--backend",
                             "torch", "--sigmas", "0.05,30", "--out", str(out)])

    rows = list(csv.DictReader((out / "precision.csv").open()))
    assert rows[-1]["object"] == "Mean" and len(rows) >= 2
    mean = {k: float(v) for k, v in rows[-1].items() if k != "object"}
    assert mean["sigma_0.05"] >= 95.0  # labels + PnP are right when the keypoints are
    assert mean["sigma_30"] < mean["sigma_0.05"] - 30.0
    assert mean["median_px"] > 3.0  # an untrained network's keypoints land anywhere in the crop
    assert (out / "precision.png").stat().st_size > 5000
    assert "| Mean |" in capsys.readouterr().out

    # the measured errors are the network's keypoints against the training labels, in crop px
    pipeline = CropPosePipeline.from_pretrained(weights, backend="torch")
    frames = bop_reader.read_split(tmp_path / "split")
    measured = keypoint_precision.measure(pipeline, frames, (1.0,), progress=False)
    by_id = {o.obj_id: o for o in pipeline.objects}
    assert [r.name for r in measured] == [
        by_id[gt.obj_id].name for f in frames for gt, _ in ground_truth_crops(f, by_id)
    ]
    assert all(r.errors.shape == (9,) and np.isfinite(r.errors).all() for r in measured)
