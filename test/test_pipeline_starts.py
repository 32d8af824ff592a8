"""The crop estimator's own poses as refiner training starts (training/pipeline_starts.py)."""

import csv

import numpy as np
import pytest

from hrpose_ros import bop_models, bop_reader, metrics
from hrpose_ros.crop_pipeline import CropPosePipeline
from hrpose_ros.data import make_data as make_data_module
from training.pipeline_starts import STARTS_FILE, load_starts, record_starts
from training.train_refiner import Instances, RefinerTrainConfig, add_errors, train


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """(split, its objects, the arrays record_starts wrote for it with the shipped weights, the
    weights file's objects: the points it scores with)."""
    root = tmp_path_factory.mktemp("starts")
    split = make_data_module.make_data(
        root / "split", ["cutpaste"], n=3, seed=5, depth=False, progress=False
    ).split_dir
    pipeline = CropPosePipeline.from_pretrained(backend="torch", refine_iterations=0)
    arrays = record_starts(pipeline, split, progress=False)
    np.savez(split / STARTS_FILE, **arrays)
    return split, bop_models.load_object_models(root / "models"), arrays, pipeline.objects


def test_starts_are_the_shipped_estimators_poses_matched_to_their_instances(starts):
    split, _, arrays, scored_with = starts
    frames = bop_reader.read_split(split)
    by_id = {o.obj_id: o for o in scored_with}
    assert len(arrays["error"]) >= 6
    for frame, gt_id, R, t, error in zip(*(arrays[k] for k in ("frame", "gt_id", "R", "t", "error"))):
        gt = next(i for i in frames[frame].instances if i.gt_id == gt_id)
        obj = by_id[gt.obj_id]
        assert error == pytest.approx(metrics.add_or_adds_error(R, t, gt.R, gt.t, obj) / obj.diameter)
    assert np.median(arrays["error"]) < 0.3  # the estimator's poses, not noise


def test_loaded_starts_are_offset_per_split_and_filtered_by_error(starts):
    split, _, arrays, _ = starts
    n = len(bop_reader.read_split(split))
    both = load_starts([split, split], [n, n])
    assert len(both) == 2 * len(arrays["error"])
    first = (int(arrays["frame"][0]), int(arrays["gt_id"][0]))
    np.testing.assert_array_equal(both[(first[0] + n, first[1])][0], arrays["R"][0])
    cap = float(np.median(arrays["error"]))
    assert len(load_starts([split], [n], cap)) == int(np.sum(arrays["error"] < cap))
    with pytest.raises(FileNotFoundError, match="training.pipeline_starts"):
        load_starts([split.parent / "elsewhere"], [n])


def test_refiner_training_starts_from_them_and_validates_on_them(starts, tmp_path):
    split, objects, arrays, _ = starts
    data = Instances([split], objects, progress=False, starts_max_error=np.inf)
    have = np.flatnonzero(data.has_start)
    assert len(have) >= len(arrays["error"]) - 1  # instances under 10 % visible have no context crop
    errors = add_errors(objects, data.samples.classes[have], data.start_R[have], data.start_t[have],
                        data.R[have], data.t[have])
    assert np.median(errors) > 0.0
    config = RefinerTrainConfig(
        train=(str(split),), val=str(split), out=str(tmp_path / "r"), steps=2, batch=2, threads=2,
        val_every=2, val_samples=100, starts_fraction=1.0,
    )
    train(config, progress=False)
    rows = list(csv.DictReader((tmp_path / "r" / "val.csv").open()))
    assert float(rows[0]["pipe_start_pct"]) == pytest.approx(np.mean(errors < 0.1) * 100, abs=0.01)
    assert 0 <= float(rows[-1]["pipe_iter1_pct"]) <= 100
    assert 0 <= float(rows[-1]["pipe_iter2_pct"]) <= 100
