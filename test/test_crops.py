"""The crop estimator's geometry and decoding: crops <-> image, heatmaps -> keypoints -> PnP."""

import numpy as np
import pytest
import torch

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.codec import DecodedInstance
from hrpose_ros.crop_keypoints import CropKeypointConfig, CropKeypointNet, decode_heatmaps, heatmap_targets
from hrpose_ros.crops import crop_around_box, crop_images
from hrpose_ros.geometry import model_keypoints
from hrpose_ros.metrics import add_or_adds_error
from hrpose_ros.pose_solver import PoseSolver
from training.crop_data import crop_batch, load_crop_samples
from training.toy_data import write_toy_split


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    objects = write_toy_split(root / "split", n_frames=12, seed=3)
    return root / "split", objects


def test_crop_to_image_and_back_is_exact_to_a_hundredth_of_a_pixel():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = (*rng.uniform(-50, 600, 2), *rng.uniform(5, 300, 2))
        crop = crop_around_box(box, 128, rng.uniform(1.0, 2.0))
        points = rng.uniform(-100, 700, size=(9, 2))
        assert np.abs(crop.to_image(crop.to_crop(points)) - points).max() < 0.01
        centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
        assert np.allclose(crop.to_crop(centre), [63.5, 63.5])  # the box centre is the crop's centre


def test_crop_pixels_follow_the_point_mapping():
    image = np.zeros((240, 320, 3), np.uint8)
    image[100:104, 200:204] = 255  # a 4x4 white square centred on (201.5, 101.5)
    crop = crop_around_box((170, 70, 64, 64), 128, 1.0)  # 2 crop px per image px, no pyrDown
    (patch,) = crop_images(image, [crop])
    ys, xs = np.nonzero(patch[..., 0] > 127)
    expected = crop.to_crop([201.5, 101.5])
    assert abs(xs.mean() - expected[0]) < 0.6 and abs(ys.mean() - expected[1]) < 0.6


def test_ground_truth_heatmaps_decode_to_the_keypoints():
    rng = np.random.default_rng(1)
    keypoints = torch.tensor(rng.uniform(16, 112, size=(4, 9, 2)))  # the map edge truncates blobs nearer
    logits = torch.log(heatmap_targets(keypoints, 32).clamp_min(1e-30)).numpy()
    decoded, confidence = decode_heatmaps(logits)
    assert np.abs(decoded - keypoints.numpy()).max() < 0.05  # crop px: the 7x7 window truncates little
    assert confidence.min() > 0.95


@pytest.mark.parametrize("kind", ["box", "surface"])
def test_ground_truth_keypoints_through_crops_and_pnp_give_98_percent_add(toy, kind):
    split, objects = toy
    keypoints_3d = [model_keypoints(o.points, kind) for o in objects]
    samples = load_crop_samples([split], objects, progress=False, keypoints_3d=keypoints_3d)
    crops, keypoints, classes = crop_batch(samples, np.arange(len(samples)), 128, 1.5, None)
    logits = torch.log(heatmap_targets(keypoints.double(), 32).clamp_min(1e-30)).numpy()
    decoded, _ = decode_heatmaps(logits)
    # back to image pixels of each frame, then the shared PnP
    frames = bop_reader.read_split(split)
    solver = PoseSolver(objects, keypoints_3d=keypoints_3d)
    good = 0
    for n, (frame_index, gt_id) in enumerate(samples.sources):
        frame = frames[frame_index]
        inst = next(i for i in frame.instances if i.gt_id == gt_id)
        c = int(classes[n])
        crop = samples.crop_in_context(n, 128, 1.5)
        in_image = samples.contexts[n].to_image(crop.to_image(decoded[n]))
        (pose,) = solver.solve([DecodedInstance(c, 1.0, in_image, np.ones(9, bool))], frame.camera)
        good += add_or_adds_error(pose.R, pose.t, inst.R, inst.t, objects[c]) < 0.1 * objects[c].diameter
    assert len(samples) >= 12
    assert good / len(samples) >= 0.98


def test_class_heatmaps_pick_each_crops_own_class():
    model = CropKeypointNet(CropKeypointConfig(num_classes=3, pretrained=False, crop_size=64))
    heatmaps = torch.arange(2 * 27 * 4).float().view(2, 27, 2, 2)
    picked = model.class_heatmaps(heatmaps, torch.tensor([2, 0]))
    assert torch.equal(picked[0], heatmaps[0, 18:27]) and torch.equal(picked[1], heatmaps[1, 0:9])


def _rows(path):
    import csv

    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(path))]


def test_short_crop_training_lowers_the_loss_and_saves_a_loadable_network(toy, tmp_path):
    from hrpose_ros.crop_pipeline import keypoints_from_dict
    from training.train_crops import CropTrainConfig, train

    split, objects = toy
    config = CropTrainConfig(
        train=(str(split),),
        val=str(split),
        out=str(tmp_path / "s"),
        crop_size=64,
        batch=8,
        steps=30,
        threads=2,
        val_every=15,
        lr=2e-3,
    )
    path = train(config, progress=False)
    rows = _rows(tmp_path / "s" / "log.csv")
    assert len(rows) == 30
    first, last = np.mean([r["total"] for r in rows[:5]]), np.mean([r["total"] for r in rows[-5:]])
    assert last < 0.8 * first
    model, loaded_objects, history = keypoints_from_dict(torch.load(path, weights_only=False))
    assert [o.obj_id for o in loaded_objects] == [o.obj_id for o in objects]
    assert history["steps"] in (15, 30) and (tmp_path / "s" / "loss.png").stat().st_size > 1000
    assert keypoints_from_dict(torch.load(tmp_path / "s" / "last.pt", weights_only=False))[2]["steps"] == 30
    # --init goes on from the saved network: its first steps start near where the run ended
    again = CropTrainConfig(
        **{**config.__dict__, "out": str(tmp_path / "again"), "steps": 5, "init": str(path)}
    )
    train(again, progress=False)
    resumed = np.mean([r["total"] for r in _rows(tmp_path / "again" / "log.csv")])
    assert resumed < 0.9 * first
    # ... and from the keypoint part of a crops weights file (fine-tuning shipped weights)
    from hrpose_ros.crop_pipeline import save_crops_file
    from hrpose_ros.detector import DetectorConfig, SingleShotDetector, detector_to_dict

    config_d = DetectorConfig(num_classes=len(objects), input_size=(128, 96), pretrained=False)
    detector = SingleShotDetector(config_d)
    bundle = save_crops_file(tmp_path / "bundle.pt", detector_to_dict(detector, objects),
                             torch.load(path, weights_only=False))
    train(CropTrainConfig(**{**again.__dict__, "out": str(tmp_path / "bundled"), "init": str(bundle)}),
          progress=False)
    from_bundle = np.mean([r["total"] for r in _rows(tmp_path / "bundled" / "log.csv")])
    assert from_bundle < 0.9 * first


def test_surface_keypoints_travel_with_the_network_and_box_files_without_them_still_load(toy, tmp_path):
    from hrpose_ros.crop_pipeline import keypoints_from_dict, keypoints_to_dict
    from training.train_crops import CropTrainConfig, load_teacher, train

    split, objects = toy
    base = dict(train=(str(split),), val=str(split), crop_size=64, batch=4, steps=2, threads=2, val_every=2)
    box_path = train(CropTrainConfig(out=str(tmp_path / "box"), **base), progress=False)
    # --init from a box-keypoint network is allowed: only the targets change
    path = train(CropTrainConfig(out=str(tmp_path / "s"), keypoints="surface", init=str(box_path), **base),
                 progress=False)
    stored = torch.load(path, weights_only=False)
    model, loaded_objects, _ = keypoints_from_dict(stored)
    # ... and at another crop size (the network is fully convolutional)
    larger = train(CropTrainConfig(out=str(tmp_path / "96"), keypoints="surface", init=str(path),
                                   **{**base, "crop_size": 96}), progress=False)
    assert keypoints_from_dict(torch.load(larger, weights_only=False))[0].config.crop_size == 96
    models = bop_models.load_object_models(split.parent / "models")  # what training reads: the split's models
    expected = np.stack([model_keypoints(o.points, "surface") for o in models])
    assert model.config.keypoints == "surface" and np.allclose(model.keypoints_3d, expected)
    # saved again from the compact points the file keeps, the keypoints stay the full models'
    again, _, _ = keypoints_from_dict(keypoints_to_dict(model, loaded_objects))
    assert np.allclose(again.keypoints_3d, expected)
    with pytest.raises(ValueError, match="keypoints_3d"):
        keypoints_from_dict({k: v for k, v in stored.items() if k != "keypoints_3d"}, "old.pt")
    shapes = rf"keypoints_3d has shape \({len(objects)}, 9, 3\), expected \(1, 9, 3\)"
    with pytest.raises(ValueError, match=shapes):
        keypoints_from_dict({**stored, "objects": stored["objects"][:1], "state_dict": stored["state_dict"]})
    old_box = torch.load(box_path, weights_only=False)
    del old_box["keypoints_3d"]  # files written before the keypoints were stored
    box, box_objects, _ = keypoints_from_dict(old_box)
    assert np.allclose(box.keypoints_3d, [model_keypoints(o.points, "box") for o in objects])
    with pytest.raises(ValueError, match="locates 'box' keypoints, the student 'surface'"):
        load_teacher(box_path, objects, "surface")


def test_distillation_adds_both_terms_from_a_frozen_teacher(toy, tmp_path):
    from training.train_crops import CropTrainConfig, load_teacher, train

    split, objects = toy
    base = dict(train=(str(split),), val=str(split), crop_size=64, batch=4, steps=3, threads=2, val_every=3)
    teacher_path = train(CropTrainConfig(out=str(tmp_path / "t"), **base), progress=False)
    teacher = load_teacher(teacher_path, objects)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    train(CropTrainConfig(out=str(tmp_path / "kd"), teacher=str(teacher_path), **base), progress=False)
    rows = _rows(tmp_path / "kd" / "log.csv")
    assert all(r["od"] > 0 and r["fs"] > 0 for r in rows)
    assert all(r["total"] > r["l1_cells"] + r["aux"] for r in rows)  # Eq. 7: both terms are added
    with pytest.raises(ValueError, match="trained on other objects"):
        load_teacher(teacher_path, objects[:1])


def test_votes_of_exact_offsets_give_the_keypoints_in_torch_and_numpy():
    from hrpose_ros.crop_keypoints import decode_votes, vote
    from training.crop_losses import voting_loss

    keypoints = torch.tensor(np.random.default_rng(2).uniform(-20, 150, size=(2, 9, 2)))  # some off the crop
    ys, xs = torch.meshgrid(
        torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64), indexing="ij"
    )
    offsets = ((keypoints - 1.5) / 4)[..., None, None] - torch.stack([xs, ys])
    outputs = torch.cat([torch.randn(2, 9, 32, 32, dtype=torch.float64), offsets.reshape(2, 18, 32, 32)], 1)
    voted, _ = vote(outputs)
    decoded, _ = decode_votes(outputs.numpy())
    assert (voted - keypoints).abs().max() < 1e-6 and np.abs(decoded - keypoints.numpy()).max() < 1e-3
    loss, terms = voting_loss(outputs, keypoints, torch.ones(2, 9, dtype=torch.bool))
    assert float(loss) < 1e-6 and float(terms["aux"]) < 1e-9


def test_pnp_leaves_out_the_least_confident_keypoints_when_the_file_says_so(toy, tmp_path):
    from hrpose_ros.crop_pipeline import CropInference, CropPosePipeline, keypoints_to_dict, save_crops_file
    from hrpose_ros.detector import DetectorConfig, SingleShotDetector, detector_to_dict
    from hrpose_ros.geometry import project
    from hrpose_ros.types import Detection
    from training.crop_data import amodal_box

    split, objects = toy
    keypoints_3d = [model_keypoints(o.points, "box") for o in objects]
    frame = bop_reader.read_split(split)[0]
    inst = frame.instances[0]
    c = next(k for k, o in enumerate(objects) if o.obj_id == inst.obj_id)
    # one crop around the instance, ground-truth heatmaps but for two flat (least confident) ones
    crop = crop_around_box(amodal_box(objects[c], inst.R, inst.t, frame.camera), 128, 1.5)
    in_crop = crop.to_crop(project(keypoints_3d[c], inst.R, inst.t, frame.camera.K, frame.camera.dist))
    logits = torch.log(heatmap_targets(torch.tensor(in_crop)[None], 32).clamp_min(1e-30)).numpy()
    logits[0, [2, 6]] = 0.0
    detector_config = DetectorConfig(num_classes=len(objects), input_size=(128, 96), pretrained=False)
    keypoint_config = CropKeypointConfig(num_classes=len(objects), pretrained=False, crop_size=128)
    inference = CropInference([Detection(inst.obj_id, objects[c].name, 0.9, np.zeros(4))], [crop],
                              np.array([c]), logits.astype(np.float32))
    kept = [True, True, False, True, True, True, False, True, True]
    for drop, found in ((0, [True] * 9), (2, kept)):
        pipeline = CropPosePipeline(None, None, detector_config, keypoint_config, objects,
                                    keypoints_3d=keypoints_3d, drop_keypoints=drop)
        (decoded,) = pipeline.decode(inference)
        assert decoded.found.tolist() == found
    (pose,) = pipeline.solve([decoded], frame.camera)
    assert not {2, 6} & set(pose.keypoint_ids.tolist())
    assert add_or_adds_error(pose.R, pose.t, inst.R, inst.t, objects[c]) < 0.02 * objects[c].diameter
    with pytest.raises(ValueError, match="drop_keypoints: expected an integer from 0 to 3"):
        CropPosePipeline(None, None, detector_config, keypoint_config, objects, drop_keypoints=4)
    with pytest.raises(ValueError, match="drop_keypoints"):
        save_crops_file(tmp_path / "f.pt", detector_to_dict(SingleShotDetector(detector_config), objects),
                        keypoints_to_dict(CropKeypointNet(keypoint_config), objects), {"drop_keypoints": 9})


def test_class_weights_draw_a_weak_objects_crops_that_many_times_as_often(toy):
    from training.train_crops import sample_probabilities

    split, objects = toy
    samples = load_crop_samples([split], objects, progress=False)
    names = [o.name for o in objects]
    assert sample_probabilities(samples.classes, names, "") is None
    weak = names[int(samples.classes[0])]
    draw = sample_probabilities(samples.classes, names, f"{weak}=3")
    picked = samples.classes[np.random.default_rng(0).choice(len(samples), 20000, p=draw)]
    share = np.mean(picked == samples.classes[0])
    own = np.mean(samples.classes == samples.classes[0])
    assert share == pytest.approx(3 * own / (3 * own + 1 - own), abs=0.02)
    with pytest.raises(ValueError, match="unknown object"):
        sample_probabilities(samples.classes, names, "teapot=2")


def test_extreme_points_span_the_amodal_box_and_decode_back_to_it(toy, tmp_path):
    from hrpose_ros.checkpoints import compact_points
    from hrpose_ros.crop_pipeline import CropInference, CropPosePipeline
    from hrpose_ros.types import Detection
    from training.crop_data import amodal_box, extreme_points
    from training.toy_data import write_tiny_crops_file

    split, objects = toy
    samples = load_crop_samples([split], objects, progress=False, extremes=True)
    assert samples.keypoints.shape[1] == 13
    frames = bop_reader.read_split(split)
    pipeline = CropPosePipeline.from_pretrained(
        write_tiny_crops_file(tmp_path / "e.pt", objects, crop_size=128, extremes=True), device="cpu",
        box_depth_weight=1.0,
    )
    for n in range(4):
        frame_index, gt_id = samples.sources[n]
        frame = frames[frame_index]
        inst = next(i for i in frame.instances if i.gt_id == gt_id)
        obj = objects[int(samples.classes[n])]
        x, y, w, h = amodal_box(obj, inst.R, inst.t, frame.camera)
        box = extreme_points(compact_points(obj.points), inst.R, inst.t, frame.camera)
        assert np.allclose([box[0, 0], box[2, 1], box[1, 0], box[3, 1]], [x, y, x + w, y + h], atol=1.0)
        # the extreme points' heatmaps through the pipeline's decoding give that box in the frame
        crop = samples.crop_in_context(n, 128, 1.5)
        context = samples.contexts[n]
        corner = context.to_image(np.array([crop.x0 - 0.5, crop.y0 - 0.5])) + 0.5
        image_crop = type(crop)(float(corner[0]), float(corner[1]), crop.side / context.scale, 128)
        in_crop = torch.tensor(image_crop.to_crop(box))[None]
        logits = torch.log(heatmap_targets(in_crop, 32).clamp_min(1e-30)).numpy()
        keypoints = torch.log(heatmap_targets(torch.tensor(image_crop.to_crop(
            samples.contexts[n].to_image(samples.keypoints[n, :9])))[None], 32).clamp_min(1e-30)).numpy()
        inference = CropInference([Detection(obj.obj_id, obj.name, 1.0, np.zeros(4))], [image_crop],
                                  np.array([int(samples.classes[n])]), keypoints, {}, None, logits)
        (decoded,) = pipeline.decode(inference)
        assert np.abs(decoded.box - [box[0, 0], box[2, 1], box[1, 0], box[3, 1]]).max() < 0.05


def test_the_box_of_the_extreme_points_corrects_the_distance_of_shrunken_keypoints(toy):
    from training.crop_data import extreme_points

    _, objects = toy
    obj = objects[0]
    R, t = np.eye(3), np.array([0.02, -0.01, 0.5])
    keypoints_3d = [model_keypoints(o.points, "box") for o in objects]
    from hrpose_ros.data.scenes import DEFAULT_CAMERA
    from hrpose_ros.geometry import project

    camera = DEFAULT_CAMERA

    true = project(keypoints_3d[0], R, t, camera.K, None)
    shrunk = true.mean(0) + 0.95 * (true - true.mean(0))  # the keypoints' spread says "farther"
    e = extreme_points(obj.points, R, t, camera)
    box = np.array([e[0, 0], e[2, 1], e[1, 0], e[3, 1]])
    z = {}
    for weight in (0.0, 1.0):
        solver = PoseSolver(objects, keypoints_3d=keypoints_3d, box_depth_weight=weight)
        (pose,) = solver.solve([DecodedInstance(0, 1.0, shrunk, np.ones(9, bool), box=box)], camera)
        z[weight] = pose.t[2]
    assert z[0.0] > 1.03 * t[2] and abs(z[1.0] - t[2]) < 0.005 * t[2]
    with pytest.raises(ValueError, match="box_depth_weight: expected a number in"):
        PoseSolver(objects, box_depth_weight=1.5)


def test_extreme_point_training_lowers_its_loss_and_the_file_serves_a_box(toy, tmp_path):
    from hrpose_ros.crop_pipeline import keypoints_from_dict
    from training.train_crops import CropTrainConfig, train

    split, objects = toy
    config = CropTrainConfig(train=(str(split),), val=str(split), out=str(tmp_path / "e"), crop_size=64,
                             batch=8, steps=30, threads=2, val_every=15, lr=2e-3, pretrained=False,
                             extremes=True)
    path = train(config, progress=False)
    rows = _rows(tmp_path / "e" / "log.csv")
    first = np.mean([r["extreme_l1_cells"] for r in rows[:5]])
    assert np.mean([r["extreme_l1_cells"] for r in rows[-5:]]) < 0.8 * first
    assert all(np.isfinite(r["val_extreme_px"]) for r in _rows(tmp_path / "e" / "val.csv"))
    model, _, _ = keypoints_from_dict(torch.load(path, weights_only=False))
    assert model.config.extremes and model(torch.zeros(1, 3, 64, 64)).extremes.shape == (1, 8, 16, 16)
