"""ONNX export: same network outputs from torch and ONNX Runtime, same decoded poses, metadata round trip."""

import numpy as np
import pytest
import torch

from hrpose_ros.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from hrpose_ros.codec import CodecConfig
from hrpose_ros.engines import OnnxEngine, TorchEngine
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.onnx_export import export_onnx, load_onnx_metadata
from hrpose_ros.pipeline import PosePipeline
from training.export_onnx import output_parity
from training.toy_data import TOY_CAMERA, toy_objects


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export")
    config = HRPoseConfig(variant="tiny", num_classes=2)
    model = HRPose(config)
    # Random BN statistics so the parity test exercises non-trivial normalisation.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint = Checkpoint(
        model_config=config,
        codec_config=CodecConfig(num_classes=2),
        input_size=(160, 128),
        objects=toy_objects(),
        state_dict=model.state_dict(),
    )
    pt = save_checkpoint(root / "tiny.pt", checkpoint)
    onnx_path = export_onnx(load_checkpoint(pt), root / "tiny.onnx")
    return pt, onnx_path


def test_onnx_outputs_match_torch(tiny_checkpoint):
    pt, onnx_path = tiny_checkpoint
    images = np.random.default_rng(0).random((2, 3, 128, 160), dtype=np.float32)
    parity = output_parity(pt, onnx_path, images)
    assert parity["belief_max_abs"] < 1e-4 and parity["vector_max_abs"] < 1e-4
    # Batch is dynamic: one image gives the same maps as within the batch.
    single = OnnxEngine(onnx_path)(images[:1])[0]
    assert np.abs(single - TorchEngine(load_checkpoint(pt).build_model())(images[:1])[0]).max() < 1e-4


def test_onnx_metadata_round_trips(tiny_checkpoint):
    pt, onnx_path = tiny_checkpoint
    meta, original = load_onnx_metadata(onnx_path), load_checkpoint(pt)
    assert meta.model_config == original.model_config and meta.codec_config == original.codec_config
    assert meta.input_size == (160, 128)
    assert [o.name for o in meta.objects] == ["box1", "box2"]
    assert np.allclose(meta.objects[0].points, original.objects[0].points, atol=1e-7)


def test_torch_and_onnx_pipelines_give_the_same_result(tiny_checkpoint):
    pt, onnx_path = tiny_checkpoint
    image = np.random.default_rng(1).integers(
        0, 255, (TOY_CAMERA.height, TOY_CAMERA.width, 3), dtype=np.uint8
    )
    # A low peak threshold so the random network's maps produce candidate keypoints to decode.
    a = PosePipeline.from_pretrained(pt, backend="torch", peak_threshold=0.0)
    b = PosePipeline.from_pretrained(onnx_path, backend="onnxruntime", peak_threshold=0.0)
    belief_a, vectors_a = a.estimate(a.preprocess(image)[0])
    belief_b, vectors_b = b.estimate(b.preprocess(image)[0])
    box = a.preprocess(image)[1]
    decoded_a, decoded_b = a.decode(belief_a[0], vectors_a[0], box), b.decode(belief_b[0], vectors_b[0], box)
    assert len(decoded_a) == len(decoded_b)
    for x, y in zip(decoded_a, decoded_b):
        assert np.array_equal(x.found, y.found)
        assert np.allclose(x.keypoints[x.found], y.keypoints[y.found], atol=1e-2)


def test_shipped_student_gives_the_same_keypoints_and_poses_in_torch_and_onnx(tmp_path):
    from hrpose_ros.data.objects import load_default_objects
    from hrpose_ros.data.scenes import SceneGenerator
    from hrpose_ros.pipeline import DEFAULT_WEIGHTS

    onnx_path = export_onnx(load_checkpoint(DEFAULT_WEIGHTS), tmp_path / "student_kd.onnx")
    # PnP without RANSAC is a continuous function of the keypoints; RANSAC's inlier choice can
    # flip on 1e-5 px differences when an instance fits badly, which says nothing about the export.
    # Likewise a peak within ~1e-5 of the peak threshold, or a vector at the edge of the grouping
    # cone, decides alike only by chance: the under-trained shipped maps hold ~80 instances at the
    # default 0.1 on this frame, and one flipped. At 0.2 the 15 stronger ones (2 poses) are compared.
    kwargs = dict(ransac=False, peak_threshold=0.2)
    torch_pipe = PosePipeline.from_pretrained(DEFAULT_WEIGHTS, backend="torch", **kwargs)
    onnx_pipe = PosePipeline.from_pretrained(onnx_path, backend="onnxruntime", **kwargs)
    with SceneGenerator(load_default_objects()) as generator:
        frame = generator.cutpaste(np.random.default_rng(3))
    camera = generator.camera
    images, box = torch_pipe.preprocess(frame.rgb)
    maps_torch, maps_onnx = torch_pipe.estimate(images), onnx_pipe.estimate(images)
    assert max(np.abs(a - b).max() for a, b in zip(maps_torch, maps_onnx)) < 1e-3
    decoded_torch = torch_pipe.decode(maps_torch[0][0], maps_torch[1][0], box)
    decoded_onnx = onnx_pipe.decode(maps_onnx[0][0], maps_onnx[1][0], box)
    assert len(decoded_torch) == len(decoded_onnx) > 0
    for x, y in zip(decoded_torch, decoded_onnx):
        assert x.class_index == y.class_index and np.array_equal(x.found, y.found)
        assert np.abs(x.keypoints[x.found] - y.keypoints[y.found]).max() < 0.05
    a, b = torch_pipe(frame.rgb, camera), onnx_pipe(frame.rgb, camera)
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        assert pa.class_name == pb.class_name
        assert np.allclose(pa.t, pb.t, atol=1e-3) and np.allclose(pa.R, pb.R, atol=1e-3)
