"""Dense object coordinates on crops: labels from rendered splits, decoding, PnP, training, engines."""

import numpy as np
import pytest
import torch

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.crop_keypoints import COORDINATE_OUTPUTS, decode_coordinates, heatmap_targets
from hrpose_ros.crop_pipeline import CropInference, CropPosePipeline
from hrpose_ros.crops import Crop
from hrpose_ros.data import make_data as make_data_module
from hrpose_ros.metrics import add_or_adds_error
from hrpose_ros.types import Detection
from training.crop_data import crop_batch, load_crop_samples
from training.toy_data import write_tiny_crops_file

CROP = 64


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Four rendered frames (cut-and-paste and bin) with masks, and their objects."""
    root = tmp_path_factory.mktemp("coords")
    split = make_data_module.make_data(
        root / "split", ["cutpaste", "bin"], n=4, seed=5, depth=False, progress=False
    ).split_dir
    return split, bop_models.load_object_models(root / "models")


def _image_crop(context: Crop, crop: Crop) -> Crop:
    """The crop ``crop`` (in ``context``'s pixels) as a crop of the frame."""
    corner = context.to_image(np.array([crop.x0 - 0.5, crop.y0 - 0.5])) + 0.5
    return Crop(float(corner[0]), float(corner[1]), crop.side / context.scale, crop.size)


def test_decoding_keeps_the_cells_seen_with_their_coordinates():
    outputs = np.zeros((2, COORDINATE_OUTPUTS, 4, 4), np.float32)
    outputs[:, 3] = -5.0
    outputs[0, 3, 1, 2] = 5.0
    outputs[0, :3, 1, 2] = [0.1, -0.2, 0.3]
    (points_2d, xyz), (none_2d, none_xyz) = decode_coordinates(outputs)
    assert np.allclose(points_2d, [[2 * 4 + 1.5, 1 * 4 + 1.5]]) and np.allclose(xyz, [[0.1, -0.2, 0.3]])
    assert none_2d.shape == (0, 2) and none_xyz.shape == (0, 3)


@pytest.mark.parametrize("correspondences", ["coordinates", "both"])
def test_ground_truth_coordinates_through_the_pipeline_and_pnp_give_98_percent_add(
    rendered, tmp_path, correspondences
):
    split, objects = rendered
    samples = load_crop_samples([split], objects, progress=False, coordinates=True)
    assert samples.coord_masks.any(axis=(1, 2)).all()  # every labelled instance has seen cells
    crops, keypoints, classes, xyz, seen = crop_batch(
        samples, np.arange(len(samples)), CROP, 1.5, None, coordinates=True
    )
    weights = write_tiny_crops_file(tmp_path / "crops.pt", objects, crop_size=CROP, coordinates=True)
    pipeline = CropPosePipeline.from_pretrained(
        weights, device="cpu", min_score=0.0, correspondences=correspondences
    )
    frames = bop_reader.read_split(split)
    good = 0
    for n, (frame_index, gt_id) in enumerate(samples.sources):
        frame = frames[frame_index]
        inst = next(i for i in frame.instances if i.gt_id == gt_id)
        c = int(classes[n])
        crop = _image_crop(samples.contexts[n], samples.crop_in_context(n, CROP, 1.5))
        heatmaps = torch.log(heatmap_targets(keypoints[n : n + 1].double(), CROP // 4).clamp_min(1e-30))
        coordinates = np.concatenate([xyz[n : n + 1].numpy(), np.where(seen[n : n + 1, None], 9.0, -9.0)], 1)
        box = np.array([0.0, 0.0, 1.0, 1.0])
        inference = CropInference(
            [Detection(objects[c].obj_id, objects[c].name, 1.0, box)], [crop], np.array([c]),
            heatmaps.numpy(), {}, coordinates,
        )
        (instance,) = pipeline.decode(inference)
        assert (instance.found.sum() > 9) and (instance.points_3d is not None)
        poses = pipeline.solve([instance], frame.camera)
        good += bool(poses) and add_or_adds_error(
            poses[0].R, poses[0].t, inst.R, inst.t, objects[c]
        ) < 0.1 * objects[c].diameter
    assert len(samples) >= 8
    assert good / len(samples) >= 0.98


def test_coordinate_training_lowers_its_loss_and_frozen_keypoints_stay_as_they_were(rendered, tmp_path):
    import csv

    from hrpose_ros.crop_pipeline import keypoints_from_dict
    from training.train_crops import CropTrainConfig, train

    split, _ = rendered
    config = CropTrainConfig(
        train=(str(split),), val=str(split), out=str(tmp_path / "c"), crop_size=CROP, batch=8, steps=30,
        threads=2, val_every=15, lr=2e-3, pretrained=False, coordinates=True,
    )
    path = train(config, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "c" / "log.csv")))
    coord = [10 * float(r["coord_l1"]) + float(r["mask_bce"]) for r in rows]
    assert np.mean(coord[-5:]) < 0.8 * np.mean(coord[:5])
    assert all(r["val_coord_l1"] != "nan" for r in csv.DictReader(open(tmp_path / "c" / "val.csv")))
    start, _, _ = keypoints_from_dict(torch.load(path, weights_only=False))
    frozen = CropTrainConfig(**{**config.__dict__, "out": str(tmp_path / "f"), "steps": 6, "init": str(path),
                                "freeze_keypoints": True})
    after, _, _ = keypoints_from_dict(torch.load(train(frozen, progress=False), weights_only=False))
    before_state, after_state = start.state_dict(), after.state_dict()
    changed = {k for k in before_state if not torch.equal(before_state[k], after_state[k])}
    assert changed and all(k.startswith("coordinate_head.") for k in changed)


def test_a_coordinate_head_without_init_cannot_be_frozen(rendered, tmp_path):
    from training.train_crops import CropTrainConfig, train

    split, _ = rendered
    config = CropTrainConfig(train=(str(split),), val=str(split), out=str(tmp_path / "x"), crop_size=CROP,
                             pretrained=False, coordinates=True, freeze_keypoints=True)
    with pytest.raises(ValueError, match="--freeze-keypoints: needs --coordinates and an --init"):
        train(config, progress=False)


def test_torch_and_onnxruntime_give_the_same_coordinates(rendered, tmp_path):
    split, objects = rendered
    weights = write_tiny_crops_file(tmp_path / "crops.pt", objects, crop_size=CROP, coordinates=True)
    frame = bop_reader.read_split(split)[0]
    rgb = frame.read_rgb()
    detections = [Detection(o.obj_id, o.name, 1.0, np.array([40.0 + 60 * i, 50.0, 80.0, 70.0]))
                  for i, o in enumerate(objects[:3])]
    maps = {}
    for backend in ("torch", "onnxruntime"):
        pipeline = CropPosePipeline.from_pretrained(weights, backend=backend, device="cpu")
        maps[backend] = pipeline.estimate_maps(rgb, frame.camera, detections)
        assert pipeline.correspondences == "both"
    assert maps["torch"].coordinates.shape == (3, COORDINATE_OUTPUTS, CROP // 4, CROP // 4)
    assert np.abs(maps["torch"].coordinates - maps["onnxruntime"].coordinates).max() < 1e-3
    assert np.abs(maps["torch"].heatmaps - maps["onnxruntime"].heatmaps).max() < 1e-3


def test_correspondences_other_than_keypoints_need_a_coordinate_head(rendered, tmp_path):
    _, objects = rendered
    weights = write_tiny_crops_file(tmp_path / "plain.pt", objects, crop_size=CROP)
    assert CropPosePipeline.from_pretrained(weights, device="cpu").correspondences == "keypoints"
    with pytest.raises(ValueError, match="correspondences: expected one of"):
        CropPosePipeline.from_pretrained(weights, device="cpu", correspondences="coordinates")
