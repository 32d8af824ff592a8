"""PosePipeline: letterbox geometry, PnP stage, a whole call with timings, file errors."""

import numpy as np
import pytest
import torch

from hrpose_ros.checkpoints import Checkpoint, save_checkpoint
from hrpose_ros.codec import CodecConfig, DecodedInstance, KeypointCodec
from hrpose_ros.engines import TorchEngine
from hrpose_ros.geometry import keypoints_3d, project
from hrpose_ros.letterbox import letterbox, scale_points
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.pipeline import PosePipeline
from hrpose_ros.types import CameraModel
from training.toy_data import TOY_CAMERA, toy_objects


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    torch.manual_seed(0)
    config = HRPoseConfig(variant="tiny", num_classes=2)
    checkpoint = Checkpoint(
        model_config=config,
        codec_config=CodecConfig(num_classes=2),
        input_size=(160, 128),
        objects=toy_objects(),
        state_dict=HRPose(config).state_dict(),
    )
    return save_checkpoint(tmp_path_factory.mktemp("pipe") / "tiny.pt", checkpoint)


def test_letterbox_maps_points_and_back():
    image = np.zeros((480, 640, 3), np.uint8)
    image[100, 200] = 255
    boxed, box = letterbox(image, 320, 256)
    assert boxed.shape == (256, 320, 3) and box.scale == 0.5
    assert np.all(boxed[240:] == 0)  # padding below the 240 content rows
    point = np.array([[200.0, 100.0]])
    assert np.allclose(scale_points(scale_points(point, box.scale), 1 / box.scale), point)
    assert np.allclose(scale_points(point, 0.5), [[99.75, 49.75]])


def test_solve_recovers_the_pose_from_keypoints_with_distortion():
    camera = CameraModel(
        K=np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]),
        width=640,
        height=480,
        dist=np.array([0.05, -0.02, 0.0, 0.0, 0.0]),
    )
    objects = toy_objects()
    R = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
    t = np.array([0.03, -0.02, 0.5])
    uv = project(keypoints_3d(objects[1].points), R, t, camera.K, camera.dist)
    found = np.ones(9, bool)
    found[2] = False  # one keypoint missing
    instance = DecodedInstance(
        class_index=1, score=0.9, keypoints=np.where(found[:, None], uv, np.nan), found=found
    )
    pipeline = PosePipeline(
        engine=None, codec=KeypointCodec(CodecConfig(num_classes=2)), objects=objects, input_size=(320, 256)
    )
    (pose,) = pipeline.solve([instance], camera)
    assert pose.class_name == "box2" and pose.obj_id == 2 and pose.score == 0.9
    assert np.allclose(pose.R, R, atol=1e-6) and np.allclose(pose.t, t, atol=1e-7)
    assert pose.reprojection_error < 1e-4 and 2 not in pose.keypoint_ids and len(pose.keypoint_ids) == 8


def test_instances_are_numbered_within_their_class_best_score_first():
    camera = CameraModel(K=np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]), width=640, height=480)
    objects = toy_objects()
    instances = []
    for class_index, score, x in ((0, 0.5, -0.1), (1, 0.9, 0.0), (0, 0.7, 0.1)):
        uv = project(keypoints_3d(objects[class_index].points), np.eye(3), np.array([x, 0.0, 0.6]), camera.K)
        instances.append(
            DecodedInstance(class_index=class_index, score=score, keypoints=uv, found=np.ones(9, bool))
        )
    pipeline = PosePipeline(
        engine=None, codec=KeypointCodec(CodecConfig(num_classes=2)), objects=objects, input_size=(320, 256)
    )
    poses = pipeline.solve(instances, camera)
    assert [(p.class_name, p.instance_id, p.score) for p in poses] == [
        ("box2", 0, 0.9), ("box1", 0, 0.7), ("box1", 1, 0.5)]
    assert [round(float(p.t[0]), 6) for p in poses] == [0.0, 0.1, -0.1]


def test_decode_stage_undoes_the_letterbox():
    objects = toy_objects()
    codec = KeypointCodec(CodecConfig(num_classes=2))
    pipeline = PosePipeline(engine=None, codec=codec, objects=objects, input_size=(160, 128))
    R, t = np.eye(3), np.array([0.0, 0.0, 0.5])
    uv = project(keypoints_3d(objects[0].points), R, t, TOY_CAMERA.K)  # in the 320x240 image
    _, box = letterbox(np.zeros((240, 320, 3), np.uint8), 160, 128)
    belief, vectors = codec.encode(scale_points(uv, box.scale)[None], np.array([0]), 128, 160)
    (instance,) = pipeline.decode(belief, vectors, box)
    assert np.max(np.abs(instance.keypoints - uv)) < 1.0  # 0.5 px at input resolution, x2 scale


def test_two_halves_give_the_whole_calls_poses():
    # pose_node runs estimate_maps and poses_from_maps in two threads; together they are __call__.
    objects = toy_objects()
    codec = KeypointCodec(CodecConfig(num_classes=2))
    R, t = np.eye(3), np.array([0.02, -0.01, 0.5])
    uv = project(keypoints_3d(objects[1].points), R, t, TOY_CAMERA.K)
    _, box = letterbox(np.zeros((240, 320, 3), np.uint8), 160, 128)
    belief, vectors = codec.encode(scale_points(uv, box.scale)[None], np.array([1]), 128, 160)

    def ground_truth_maps(batch):  # the network's place: the maps of the known pose
        assert batch.shape == (1, 3, 128, 160)
        return belief[None], vectors[None]

    pipeline = PosePipeline(ground_truth_maps, codec, objects, (160, 128))
    image = np.zeros((TOY_CAMERA.height, TOY_CAMERA.width, 3), np.uint8)
    maps = pipeline.estimate_maps(image, TOY_CAMERA)
    assert set(maps.timings) == {"preprocess", "inference"} and maps.box == box
    poses, timings = pipeline.poses_from_maps(maps, TOY_CAMERA)
    assert set(timings) == {"decode", "pnp"}
    (whole,) = pipeline(image, TOY_CAMERA)
    (pose,) = poses
    assert pose.class_name == whole.class_name == objects[1].name
    np.testing.assert_allclose(pose.t, whole.t)
    np.testing.assert_allclose(pose.t, t, atol=2e-3)
    with pytest.raises(ValueError, match="camera: size 320x240 differs from the image's 160x120"):
        pipeline.estimate_maps(image[:120, :160], TOY_CAMERA)


def test_whole_call_returns_poses_and_stage_timings(tiny_pt):
    pipeline = PosePipeline.from_pretrained(tiny_pt, backend="torch")
    assert isinstance(pipeline.engine, TorchEngine)
    assert [o.name for o in pipeline.objects] == ["box1", "box2"]
    image = np.zeros((TOY_CAMERA.height, TOY_CAMERA.width, 3), np.uint8)
    poses = pipeline(image, TOY_CAMERA)
    assert isinstance(poses, list)
    assert set(pipeline.last_timings) == {"preprocess", "inference", "decode", "pnp"}
    assert all(v >= 0 for v in pipeline.last_timings.values())


def test_bad_files_and_arguments_raise_value_error(tiny_pt, tmp_path):
    with pytest.raises(ValueError, match="missing.pt"):
        PosePipeline.from_pretrained(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        PosePipeline.from_pretrained(corrupt)
    with pytest.raises(ValueError, match="thresholds"):
        PosePipeline.from_pretrained(tiny_pt, min_scroe=0.3)
    with pytest.raises(ValueError, match="backend"):
        PosePipeline.from_pretrained(tiny_pt, backend="tensorflow")
    pipeline = PosePipeline.from_pretrained(tiny_pt)
    with pytest.raises(ValueError, match="camera"):
        pipeline(np.zeros((100, 100, 3), np.uint8), TOY_CAMERA)


def test_degenerate_keypoints_give_no_pose_instead_of_an_opencv_error():
    # All keypoints within 1e-4 px: OpenCV's SQPnP asserts on such point sets (cv2.error).
    objects = toy_objects()
    keypoints = np.array([100.0, 80.0]) + np.random.default_rng(0).normal(scale=1e-4, size=(9, 2))
    instance = DecodedInstance(class_index=0, score=0.9, keypoints=keypoints, found=np.ones(9, bool))
    pipeline = PosePipeline(
        engine=None, codec=KeypointCodec(CodecConfig(num_classes=2)), objects=objects, input_size=(320, 256)
    )
    assert pipeline.solve([instance], TOY_CAMERA) == []


def test_shipped_default_loads_with_the_default_objects():
    from hrpose_ros.data.objects import load_default_objects

    pipeline = PosePipeline.from_pretrained()
    assert [o.name for o in pipeline.objects] == [
        o.name for o in sorted(load_default_objects(), key=lambda o: o.obj_id)
    ]
    assert pipeline.input_size == (320, 256)
    camera = CameraModel(K=np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]]), width=640, height=480)
    poses = pipeline(np.zeros((480, 640, 3), np.uint8), camera)
    assert all(p.obj_id in {o.obj_id for o in pipeline.objects} for p in poses)
    assert set(pipeline.last_timings) == {"preprocess", "inference", "decode", "pnp"}
