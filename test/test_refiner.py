"""Render-and-compare refiner: crop camera, pose update, loss, training, and the crop pipeline's stage."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hrpose_ros import bop_models
from hrpose_ros.geometry import project
from hrpose_ros.refiner import (
    DEPTH_SCALE,
    REFINER_SIZE,
    PoseRefiner,
    RefinerNet,
    TorchRefinerEngine,
    crop_intrinsics,
    load_refiner,
    pose_crop,
    refiner_from_dict,
    refiner_to_dict,
    translation,
    update_poses,
)
from hrpose_ros.render import Renderer
from hrpose_ros.types import CameraModel, ObjectPose
from training.toy_data import write_toy_split
from training.train_refiner import (
    Instances,
    RefinerTrainConfig,
    disturb,
    nearest_symmetric,
    pairs,
    point_sets,
    train_step,
    unrolled,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    write_toy_split(root / "split", n_frames=6, seed=5)
    objects = bop_models.load_object_models(root / "models")  # with their meshes
    return root / "split", objects


def _pose(deg=(20.0, -30.0, 10.0), t=(0.02, -0.01, 0.5)):
    return Rotation.from_euler("xyz", deg, degrees=True).as_matrix(), np.array(t)


def test_the_crop_camera_sees_what_the_crop_of_the_frame_shows(toy):
    _, objects = toy
    obj = objects[0]
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    R, t = _pose()
    crop = pose_crop(obj, R, t, K, 128)
    K_crop = crop_intrinsics(crop, K)
    np.testing.assert_allclose(
        project(obj.points, R, t, K_crop), crop.to_crop(project(obj.points, R, t, K)), atol=1e-9
    )
    # rendered with the crop camera = the frame's rendering cut by the crop (silhouettes agree)
    with Renderer([obj], 640, 480) as frame_renderer, Renderer([obj], 128, 128) as crop_renderer:
        whole = frame_renderer.render(K, [(obj.obj_id, R, t)]).masks_visib[0]
        direct = crop_renderer.render(K_crop, [(obj.obj_id, R, t)]).masks_visib[0]
    import cv2

    cut = cv2.warpAffine(whole.astype(np.float32), crop.matrix(), (128, 128)) > 0.5
    iou = (cut & direct).sum() / (cut | direct).sum()
    assert iou > 0.95 and direct.sum() > 500


def test_pose_update_follows_cosypose_parameterisation():
    R, t = _pose()
    K_crop = np.array([[800.0, 0, 64], [0, 800, 64], [0, 0, 1]])
    f32 = dict(dtype=torch.float32)
    args = torch.tensor(R[None], **f32), torch.tensor(t[None], **f32), torch.tensor(K_crop[None], **f32)
    identity = torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0, 0]])
    R_new, xy, z = update_poses(identity, *args)
    np.testing.assert_allclose(R_new[0].numpy(), R, atol=1e-6)
    np.testing.assert_allclose(translation(xy, z)[0].numpy(), t, atol=1e-6)
    # a 10-degree turn about z, 8 px right (0.8 x SHIFT_PX), depth x e^0.05 (0.5 x DEPTH_SCALE)
    turn = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    output = torch.tensor([[*turn[:, 0], *turn[:, 1], 0.8, 0.0, 0.5]], **f32)
    R_new, xy, z = update_poses(output, *args)
    np.testing.assert_allclose(R_new[0].numpy(), turn @ R, atol=1e-5)
    z_expected = t[2] * np.exp(0.05)
    np.testing.assert_allclose(z[0, 0].item(), z_expected, rtol=1e-5)
    np.testing.assert_allclose(xy[0].numpy(), [8.0 / 800 + t[0] / t[2], t[1] / t[2]], atol=1e-6)


def test_an_untrained_refiner_returns_its_input_and_the_file_round_trips(toy, tmp_path):
    _, objects = toy
    model = RefinerNet(pretrained=False)
    path = tmp_path / "refiner.pt"
    torch.save(refiner_to_dict(model, "lite0", [o.obj_id for o in objects]), path)
    loaded = refiner_from_dict(load_refiner(path), str(path))
    refiner = PoseRefiner(TorchRefinerEngine(loaded), loaded.size, objects, iterations=2)
    K = np.array([[500.0, 0, 160], [0, 500, 120], [0, 0, 1]])
    R, t = _pose()
    pose = ObjectPose(objects[0].name, objects[0].obj_id, 0, 0.9, R, t)
    image = np.full((240, 320, 3), 90, np.uint8)
    (out,) = refiner.refine(image, CameraModel(K, 320, 240), [pose])
    np.testing.assert_allclose(out.R, R, atol=1e-5)
    np.testing.assert_allclose(out.t, t, atol=1e-6)
    refiner.release()
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not a refiner"):
        load_refiner(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="refiner file not found"):
        load_refiner(tmp_path / "missing.pt")


def test_symmetric_targets_are_the_ground_truth_nearest_the_estimate():
    from hrpose_ros.types import ObjectModel

    rng = np.random.default_rng(0)
    points = rng.uniform(-0.03, 0.03, (200, 3)) * [1, 1, 2]
    flip = np.eye(4)
    flip[:3, :3] = Rotation.from_euler("z", 180, degrees=True).as_matrix()
    from scipy.spatial.distance import pdist

    obj = ObjectModel(1, "block", points, float(pdist(points).max()), symmetries=np.stack([np.eye(4), flip]))
    R, t = _pose()
    near_flip = R @ flip[:3, :3] @ Rotation.from_euler("x", 5, degrees=True).as_matrix()
    R_target, t_target = nearest_symmetric(obj, R, t, near_flip)
    np.testing.assert_allclose(R_target, R @ flip[:3, :3], atol=1e-9)
    np.testing.assert_allclose(nearest_symmetric(obj, R, t, R)[0], R, atol=1e-9)


def test_refiner_training_steps_lower_the_loss_on_disturbed_instances(toy):
    split, objects = toy
    torch.manual_seed(0)
    data = Instances([split], objects, progress=False)
    config = RefinerTrainConfig(train=(str(split),), val=str(split), out="")
    rng = np.random.default_rng(0)
    idx = np.arange(min(6, len(data)))
    classes = data.samples.classes[idx]
    starts = [disturb(data.R[i], data.t[i], objects[c].diameter, rng, config) for i, c in zip(idx, classes)]
    R0, t0 = np.stack([s[0] for s in starts]), np.stack([s[1] for s in starts])
    points, diameters = point_sets(objects)
    model = RefinerNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Renderer(objects, 128, 128) as renderer:
        pair, Ks = pairs(data, idx, R0, t0, objects, renderer)
    assert pair.shape == (len(idx), 6, 128, 128) and pair[:, 3:].amax() > 0.2  # the rendering is there
    losses = []
    for _ in range(12):
        loss, terms = train_step(
            model,
            optimiser,
            pair,
            Ks,
            (R0, t0),
            (data.R[idx], data.t[idx]),
            points[classes],
            diameters[classes],
        )
        losses.append(loss)
    assert set(terms) == {"rot", "xy", "z"} and losses[0] > 0.05
    assert min(losses[-3:]) < 0.7 * losses[0]


def test_the_crop_pipeline_refines_with_a_bundled_or_given_refiner(toy, tmp_path):
    from hrpose_ros import bop_reader
    from hrpose_ros.crop_pipeline import CropPosePipeline, load_crops_file, save_crops_file
    from training.toy_data import write_tiny_crops_file

    split, objects = toy
    crops = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    refiner_path = tmp_path / "refiner.pt"
    torch.save(
        refiner_to_dict(RefinerNet(pretrained=False), "lite0", [o.obj_id for o in objects]), refiner_path
    )
    models = split.parent / "models"
    frame = bop_reader.read_split(split)[0]
    image = frame.read_rgb()
    pipeline = CropPosePipeline.from_pretrained(
        crops, refiner=refiner_path, refiner_models=models, refine_iterations=1, min_score=0.0
    )
    assert pipeline.refiner is not None and pipeline.refiner.iterations == 1
    inference = pipeline.estimate_maps(image, frame.camera)
    assert inference.image is image
    poses, timings = pipeline.poses_from_maps(inference, frame.camera)
    assert "refine" in timings
    # an untrained refiner moves nothing: the refined poses are PnP's
    solved = pipeline.solve(pipeline.decode(inference), frame.camera)
    for a, b in zip(poses, solved):
        np.testing.assert_allclose(a.t, b.t, atol=1e-6)
    # bundled into the crops file, it loads with no argument; 0 iterations switches it off
    stored = load_crops_file(crops)[3]
    with_refiner = save_crops_file(
        tmp_path / "with.pt",
        stored["detector"],
        stored["keypoints"],
        {"refine_iterations": 3},
        load_refiner(refiner_path),
    )
    assert CropPosePipeline.from_pretrained(with_refiner, refiner_models=models).refiner.iterations == 3
    assert (
        CropPosePipeline.from_pretrained(with_refiner, refiner_models=models, refine_iterations=0).refiner
        is None
    )
    with pytest.raises(ValueError, match="holds no refiner"):
        CropPosePipeline.from_pretrained(crops, refine_iterations=2)
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="refiner in .*bad.pt: not a refiner"):
        CropPosePipeline.from_pretrained(crops, refiner=tmp_path / "bad.pt", refiner_models=models)
    with pytest.raises(ValueError, match="elsewhere"):
        CropPosePipeline.from_pretrained(with_refiner, refiner_models=tmp_path / "elsewhere")


def test_rebundling_swaps_the_refiner_and_keeps_the_rest_of_a_crops_file(toy, tmp_path):
    from hrpose_ros.crop_pipeline import load_crops_file, save_crops_file
    from training.bundle_crops import main as bundle_main
    from training.toy_data import write_tiny_crops_file

    _, objects = toy
    ids = [o.obj_id for o in objects]
    stored = load_crops_file(write_tiny_crops_file(tmp_path / "crops.pt", objects))[3]
    old = save_crops_file(tmp_path / "old.pt", stored["detector"], stored["keypoints"],
                          {"refine_iterations": 1, "ransac_threshold": 8.0},
                          refiner_to_dict(RefinerNet(pretrained=False), "lite0", ids))
    scored = tmp_path / "scored.pt"
    torch.save(refiner_to_dict(RefinerNet(pretrained=False, score=True), "lite0", ids), scored)
    out = tmp_path / "new.pt"
    bundle_main(["--from", str(old), "--refiner", str(scored), "--out", str(out), "--drop-keypoints", "1",
                 "--hypothesis-gate", "1"])
    new = load_crops_file(out)[3]
    assert new["refiner"]["score"] is True and new["thresholds"].pop("hypothesis_gate") == 1.0
    for part in ("detector", "keypoints"):
        assert new[part]["state_dict"].keys() == stored[part]["state_dict"].keys()
        assert all(torch.equal(v, stored[part]["state_dict"][k]) for k, v in new[part]["state_dict"].items())
    assert new["thresholds"] == {"refine_iterations": 1, "ransac_threshold": 8.0, "drop_keypoints": 1}
    # train_refiner --init takes a crops file's refiner, without the score head trained for it
    from training.train_refiner import initial_weights

    weights = initial_weights(out)
    assert weights.keys() == RefinerNet(pretrained=False).state_dict().keys()
    with pytest.raises(ValueError, match="crops.pt: a crops weights file without a refiner"):
        initial_weights(tmp_path / "crops.pt")
    with pytest.raises(SystemExit):  # one source of networks only
        bundle_main(["--from", str(old), "--detector", "d.pt", "--out", str(out)])
    with pytest.raises(SystemExit):
        bundle_main(["--out", str(out)])


def _onnx_and_torch_refiners(model, toy, tmp_path):
    """(ONNX Runtime refiner, torch refiner, crops file, from_pretrained kwargs) of a tiny crops file
    refined by ``model``."""
    from hrpose_ros.crop_pipeline import CropPosePipeline
    from training.toy_data import write_tiny_crops_file

    split, objects = toy
    refiner_path = tmp_path / "refiner.pt"
    torch.save(refiner_to_dict(model, "lite0", [o.obj_id for o in objects]), refiner_path)
    crops = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    kwargs = dict(refiner=refiner_path, refiner_models=split.parent / "models", refine_iterations=1)
    onnx = CropPosePipeline.from_pretrained(crops, backend="onnxruntime", **kwargs).refiner
    return onnx, CropPosePipeline.from_pretrained(crops, **kwargs).refiner, crops, kwargs


def test_the_refiner_runs_in_onnx_runtime_as_in_torch(toy, tmp_path):
    from hrpose_ros.crop_pipeline import CropPosePipeline
    from hrpose_ros.engines import OnnxEngine

    _, objects = toy
    torch.manual_seed(0)
    model = RefinerNet(pretrained=False, score=True)  # with a score head: its 10th output goes along
    torch.nn.init.normal_(model.head[-1].weight, std=0.01)  # not the identity update
    torch.nn.init.normal_(model.score_head[-1].weight, std=0.01)
    onnx, torch_refiner, crops, kwargs = _onnx_and_torch_refiners(model, toy, tmp_path)
    assert isinstance(onnx.engine, OnnxEngine) and onnx.scorer is onnx.engine
    batch = np.random.default_rng(0).uniform(0, 1, (3, 6, 128, 128)).astype(np.float32)
    expected = torch_refiner.engine(batch)[0]
    assert expected.shape == (3, 10)
    np.testing.assert_allclose(onnx.engine(batch)[0], expected, atol=1e-4)
    assert np.abs(expected - expected.mean(0)).max(axis=0).min() > 1e-5  # inputs tell apart, score too
    # the pose scorer goes the same way, beside the refiner
    from hrpose_ros.refiner import SCORER_FORMAT

    scorer = RefinerNet(pretrained=False, outputs=1)
    torch.nn.init.normal_(scorer.head[-1].weight, std=0.01)
    scorer_path = tmp_path / "scorer.pt"
    torch.save(refiner_to_dict(scorer, "lite0", [o.obj_id for o in objects], kind=SCORER_FORMAT), scorer_path)
    kwargs.update(scorer=scorer_path, hypotheses=2)
    onnx_scorer = CropPosePipeline.from_pretrained(crops, backend="onnxruntime", **kwargs).refiner.scorer
    torch_scores = CropPosePipeline.from_pretrained(crops, **kwargs).refiner.scorer(batch)[0]
    assert isinstance(onnx_scorer, OnnxEngine) and torch_scores.shape == (3, 1)
    assert np.ptp(torch_scores) > 1e-5  # inputs tell apart
    np.testing.assert_allclose(onnx_scorer(batch)[0], torch_scores, atol=1e-4)


def test_a_short_refiner_run_writes_its_logs_plot_and_loadable_checkpoints(toy, tmp_path):
    from training.train_refiner import train

    split, objects = toy
    config = RefinerTrainConfig(
        train=(str(split),),
        val=str(split),
        out=str(tmp_path / "r"),
        steps=4,
        batch=2,
        threads=2,  # the process default here: later tests compare poses with a 2-thread node
        val_every=2,
        val_samples=4,
    )
    best = train(config, progress=False)
    out = tmp_path / "r"
    assert (out / "loss.png").stat().st_size > 1000
    assert len((out / "val.csv").read_text().splitlines()) == 4  # header, steps 2 and 4, the end
    for path in (best, out / "last.pt"):
        d = load_refiner(path)
        assert d["object_ids"] == [o.obj_id for o in objects] and d["history"]["config"]["steps"] == 4
    train(
        RefinerTrainConfig(**{**config.__dict__, "out": str(tmp_path / "again"), "init": str(best),
                              "size": 160}),
        progress=False,
    )  # --init goes on from a saved refiner, here a 128 px one into 160 px crops
    assert load_refiner(tmp_path / "again" / "last.pt")["size"] == 160


def test_a_larger_refiner_keeps_the_128_px_head_and_runs_in_onnx_runtime_as_in_torch(toy, tmp_path):
    from training.train_refiner import Instances, context_size

    split, objects = toy
    torch.manual_seed(0)
    small = RefinerNet(pretrained=False)
    torch.nn.init.normal_(small.head[-1].weight, std=0.01)
    large = RefinerNet(pretrained=False, size=192)
    large.load_state_dict(small.state_dict())  # every weight of the 128 px refiner fits
    assert large(torch.rand(2, 6, 192, 192)).shape == (2, 9)
    onnx, torch_refiner, _, _ = _onnx_and_torch_refiners(large, toy, tmp_path)
    assert onnx.size == torch_refiner.size == 192
    batch = np.random.default_rng(0).uniform(0, 1, (3, 6, 192, 192)).astype(np.float32)
    expected = torch_refiner.engine(batch)[0]
    assert np.abs(expected - expected.mean(0)).max() > 1e-5  # inputs tell apart
    np.testing.assert_allclose(onnx.engine(batch)[0], expected, atol=1e-4)
    # its training crops are cut from context crops large enough not to upsample them
    assert context_size(128) == 192 and context_size(192) == 282
    assert Instances([split], objects, max_frames=2, progress=False, size=192).samples.images.shape[1] == 282


def test_an_unrolled_step_moves_starts_as_the_model_does_and_keeps_those_it_throws_away(toy):
    split, objects = toy
    data = Instances([split], objects, progress=False)
    renderer = Renderer(objects, REFINER_SIZE, REFINER_SIZE)
    model = RefinerNet(pretrained=False).eval()
    indices = np.arange(min(3, len(data)))
    R0, t0 = data.R[indices], data.t[indices] * np.array([1.0, 1.0, 1.05])
    for ratio, kept in ((1.2, False), (3.0, True)):  # PoseRefiner refuses a step that doubles the depth
        with torch.no_grad():
            model.head[-1].bias[8] = float(np.log(ratio) / DEPTH_SCALE)
        R1, t1 = unrolled(model, data, indices, R0, t0, objects, renderer)
        np.testing.assert_allclose(R1, R0, atol=1e-5)
        np.testing.assert_allclose(t1[:, 2], t0[:, 2] * (1.0 if kept else ratio), rtol=1e-5)
    renderer.release()


def test_scored_hypotheses_replace_a_pose_only_when_they_score_higher_by_the_margin(toy, tmp_path):
    """Untrained networks: the refiner moves nothing and the scorer gives every pose logit 0."""
    from hrpose_ros.crop_pipeline import CropPosePipeline
    from hrpose_ros.refiner import HYPOTHESIS_MARGIN, SCORER_FORMAT, disturb_pose
    from training.toy_data import write_tiny_crops_file

    _, objects = toy
    refiner = TorchRefinerEngine(RefinerNet(pretrained=False))
    scorer = TorchRefinerEngine(RefinerNet(pretrained=False, outputs=1))
    K = np.array([[500.0, 0, 160], [0, 500, 120], [0, 0, 1]])
    camera = CameraModel(K, 320, 240)
    image = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    poses = [ObjectPose(o.name, o.obj_id, n, 0.9, *_pose(t=(0.03 * n - 0.02, 0.0, 0.5)))
             for n, o in enumerate(objects)]
    plain = PoseRefiner(refiner, 128, objects).refine(image, camera, poses)
    kept = PoseRefiner(refiner, 128, objects, scorer=scorer, hypotheses=3).refine(image, camera, poses)
    for a, b in zip(kept, plain):  # 0 is not HYPOTHESIS_MARGIN above 0
        np.testing.assert_array_equal(a.R, b.R)
        np.testing.assert_array_equal(a.t, b.t)
    taken = PoseRefiner(refiner, 128, objects, scorer=scorer, hypotheses=3,
                        margin=-1.0).refine(image, camera, poses)
    rng = np.random.default_rng(0)  # every hypothesis ties: each pose's first copy wins
    for p, out in zip(poses, taken):
        diameter = next(o for o in objects if o.obj_id == p.obj_id).diameter
        first = disturb_pose(p.R, p.t, diameter, rng, scale=0.5)
        for _ in range(2):
            disturb_pose(p.R, p.t, 1.0, rng)  # the pose's other two copies
        np.testing.assert_allclose(out.R, first[0], atol=1e-6)
        np.testing.assert_allclose(out.t, first[1], atol=1e-6)
    # the gate: only poses whose refined pose scores below it get copies (here every logit is 0)
    for gate, copies in ((0.0, plain), (0.5, taken)):
        gated = PoseRefiner(refiner, 128, objects, scorer=scorer, hypotheses=3, margin=-1.0,
                            gate=gate).refine(image, camera, poses)
        for a, b in zip(gated, copies):
            np.testing.assert_array_equal(a.t, b.t)
    assert HYPOTHESIS_MARGIN > 0
    with pytest.raises(ValueError, match="hypotheses: expected 0, or > 0 with a pose scorer"):
        PoseRefiner(refiner, 128, objects, hypotheses=2)

    # through from_pretrained: a scorer file, refused without one or when it is not a scorer
    path = tmp_path / "scorer.pt"
    torch.save(refiner_to_dict(RefinerNet(pretrained=False, outputs=1), "lite0", [o.obj_id for o in objects],
                               kind=SCORER_FORMAT), path)
    refiner_path = tmp_path / "refiner.pt"
    ids = [o.obj_id for o in objects]
    torch.save(refiner_to_dict(RefinerNet(pretrained=False), "lite0", ids), refiner_path)
    crops = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    kwargs = dict(refiner=refiner_path, refiner_models=toy[0].parent / "models", refine_iterations=1)
    built = CropPosePipeline.from_pretrained(crops, scorer=path, hypotheses=4, **kwargs).refiner
    assert built.hypotheses == 4 and built.scorer is not None
    with pytest.raises(ValueError, match="hypotheses: expected a pose scorer"):
        CropPosePipeline.from_pretrained(crops, hypotheses=4, **kwargs)
    with pytest.raises(ValueError, match="scorer in .*refiner.pt: not a pose scorer"):
        CropPosePipeline.from_pretrained(crops, scorer=refiner_path, hypotheses=4, **kwargs)
    # a refiner with a score head scores its own hypotheses; a scorer file still wins
    torch.save(refiner_to_dict(RefinerNet(pretrained=False, score=True), "lite0", ids), refiner_path)
    built = CropPosePipeline.from_pretrained(crops, hypotheses=4, **kwargs).refiner
    assert built.scorer is built.engine and built.hypotheses == 4
    for a, b in zip(built.refine(image, camera, poses), plain):  # untrained: logit 0 everywhere
        np.testing.assert_array_equal(a.t, b.t)
    assert CropPosePipeline.from_pretrained(crops, scorer=path, hypotheses=4, **kwargs).refiner.scorer \
        is not built.engine
