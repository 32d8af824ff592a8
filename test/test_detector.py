"""Single-shot detector: codec round trip, losses, a short training run, ONNX parity, checkpoints, AP."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hrpose_ros.bop_format import GtInfo
from hrpose_ros.bop_reader import BopFrame, BopInstance
from hrpose_ros.detector import (
    BoxCodec,
    Detector,
    DetectorConfig,
    SingleShotDetector,
    export_detector_onnx,
    focal_loss,
    load_detector,
    postprocess,
    preprocess,
    save_detector,
)
from hrpose_ros.metrics import iou_2d
from hrpose_ros.types import CameraModel, Detection
from training.evaluate_detector import average_precision, class_metrics, match_class
from training.toy_data import toy_objects, write_toy_split
from training.train_detector import TrainDetectorConfig, instance_boxes, train

SMALL_INPUT = (128, 96)  # (W, H): multiples of 16, fast on 2 cores


@pytest.fixture
def one_thread():
    # Two threads on two cores shared with other jobs oversubscribe and run several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_model() -> SingleShotDetector:
    torch.manual_seed(0)
    return SingleShotDetector(DetectorConfig(num_classes=2, input_size=SMALL_INPUT)).eval()


def test_codec_encode_then_decode_recovers_boxes_and_classes():
    codec = BoxCodec(num_classes=3, score_threshold=0.5)
    boxes = np.array([[5.3, 7.9, 30.2, 20.6], [60.0, 10.5, 41.0, 70.0], [20.7, 50.2, 12.4, 33.3]])
    classes = np.array([2, 0, 1])
    targets = codec.encode(boxes, classes, height=96, width=128)

    assert targets.heatmap.shape == (3, 24, 32) and targets.size.shape == (2, 24, 32)
    assert targets.mask.sum() == 3 and (targets.heatmap == 1).sum() == 3
    decoded = codec.decode(targets.heatmap, targets.size, targets.offset)
    assert len(decoded) == 3
    for cls, score, box in decoded:
        best = max(range(3), key=lambda i: iou_2d(box, boxes[i]))
        assert cls == classes[best] and score == 1.0
        assert iou_2d(box, boxes[best]) > 0.95
        np.testing.assert_allclose(box, boxes[best], atol=1e-4)


def test_codec_skips_boxes_centred_outside_the_input():
    targets = BoxCodec(num_classes=1).encode([[120.0, 10.0, 40.0, 20.0]], [0], height=96, width=128)
    assert targets.mask.sum() == 0 and targets.heatmap.max() == 0


def test_decode_keeps_only_local_maxima_above_threshold():
    codec = BoxCodec(num_classes=1, score_threshold=0.3, max_detections=5)
    heatmap = np.zeros((1, 10, 10), np.float32)
    heatmap[0, 4, 4], heatmap[0, 4, 5] = 0.9, 0.8  # neighbours: only the stronger survives 3x3 NMS
    heatmap[0, 8, 1] = 0.2  # below threshold
    size = np.full((2, 10, 10), 2.0, np.float32)
    decoded = codec.decode(heatmap, size, np.zeros((2, 10, 10), np.float32))
    assert [(c, round(s, 3)) for c, s, _ in decoded] == [(0, 0.9)]
    np.testing.assert_allclose(decoded[0][2], [12.0, 12.0, 8.0, 8.0])  # centre cell 4 -> 16 px, size 2 cells


def test_focal_loss_matches_hand_computed_value_and_stays_finite_when_saturated():
    # One positive and one negative cell, both at p = 0.5: (0.5^2 ln 0.5 + 1 * 0.5^2 ln 0.5) / 1 positive.
    loss = focal_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]))
    assert float(loss) == pytest.approx(-0.5 * math.log(0.5), rel=1e-6)
    logits = torch.tensor([[[[-200.0, 200.0]]]], requires_grad=True)
    saturated = focal_loss(logits, torch.tensor([[[[1.0, 0.0]]]]))
    saturated.backward()
    # Each wrong cell costs about |logit| = 200 (log-sigmoid is linear there), never inf.
    assert float(saturated.detach()) == pytest.approx(400.0, rel=1e-3)
    assert torch.isfinite(logits.grad).all()


def test_postprocess_maps_boxes_back_through_the_letterbox():
    image = np.zeros((240, 320, 3), np.uint8)  # letterboxed into 128x96: scale 0.4
    batch, scale = preprocess(image, SMALL_INPUT)
    assert batch.shape == (1, 3, 96, 128) and batch.dtype == np.float32 and scale == pytest.approx(0.4)
    original = np.array([40.0, 60.0, 100.0, 80.0])
    codec = BoxCodec(num_classes=2)
    targets = codec.encode(original[None] * scale, [1], height=96, width=128)
    objects = toy_objects()
    detections = postprocess(
        targets.heatmap[None], targets.size[None], targets.offset[None], scale, objects, codec
    )
    assert len(detections) == 1 and isinstance(detections[0], Detection)
    assert (detections[0].obj_id, detections[0].class_name) == (2, "box2")
    assert iou_2d(detections[0].box_xywh, original) > 0.99
    # A box of zero size (an untrained size head) gives no detection: no crop can be cut around it.
    zero = 0 * targets.size[None]
    assert postprocess(targets.heatmap[None], zero, targets.offset[None], scale, objects, codec) == []


def test_short_training_run_on_toy_split_lowers_the_loss(tmp_path, one_thread):
    objects = write_toy_split(tmp_path / "train", n_frames=8, seed=3)
    config = TrainDetectorConfig(
        train_dirs=str(tmp_path / "train"),
        out_dir=str(tmp_path / "run"),
        max_steps=14,
        batch_size=4,
        input_size=SMALL_INPUT,
        warmup_steps=1,
        seed=0,
    )
    history = train(config, objects)
    losses = history["train_loss"]
    assert history["steps"] == 14 and len(losses) == 14
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:2]), losses
    assert (tmp_path / "run" / "detector.pt").is_file() and (tmp_path / "run" / "loss.png").is_file()
    model, loaded = load_detector(tmp_path / "run" / "detector.pt")
    assert model.config.input_size == SMALL_INPUT and [o.obj_id for o in loaded] == [1, 2]
    # --init goes on from the saved detector: its first steps start near where the run ended
    resumed = train(dataclasses.replace(config, out_dir=str(tmp_path / "again"), max_steps=2,
                                        init=str(tmp_path / "run" / "detector.pt")), objects)
    assert np.mean(resumed["train_loss"]) < 0.7 * np.mean(losses[:2])
    # and at another input size: the convolutional weights carry over, the file records the new size
    larger = (SMALL_INPUT[0] + 32, SMALL_INPUT[1] + 32)
    train(dataclasses.replace(config, out_dir=str(tmp_path / "larger"), max_steps=1, input_size=larger,
                              init=str(tmp_path / "run" / "detector.pt")), objects)
    assert load_detector(tmp_path / "larger" / "detector.pt")[0].config.input_size == larger


def test_onnx_export_matches_torch_outputs(small_model, tmp_path):
    import onnxruntime as ort

    path = export_detector_onnx(small_model, tmp_path / "detector.onnx")
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = [o.numpy() for o in small_model(image)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmap", "size", "offset"]
    got = session.run(None, {"image": image.numpy()})
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.max(np.abs(e - g)) < 1e-4


def test_checkpoint_round_trip_keeps_config_objects_and_outputs(small_model, tmp_path):
    objects = toy_objects()
    path = save_detector(tmp_path / "det.pt", small_model, objects, history={"steps": 3})
    model, loaded = load_detector(path)
    assert model.config == small_model.config and not model.training
    assert [(o.obj_id, o.name) for o in loaded] == [(1, "box1"), (2, "box2")]
    np.testing.assert_allclose(loaded[0].diameter, objects[0].diameter)
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        before, after = small_model(image), model(image)
    # float16 storage: heatmap probabilities move by well under 1e-2.
    assert float((before[0] - after[0]).abs().max()) < 1e-2
    detections = Detector(model, loaded)(np.zeros((240, 320, 3), np.uint8), score_threshold=0.0)
    assert len(detections) <= model.config.max_detections  # untrained: sizes <= 0 are dropped
    assert all(d.box_xywh[2] > 0 and d.box_xywh[3] > 0 for d in detections)
    assert all(isinstance(d, Detection) and d.obj_id in (1, 2) for d in detections)
    # a crops weights file yields its detector part (what --init fine-tunes)
    bundle = tmp_path / "crops.pt"
    torch.save({"estimator": "crops", "detector": torch.load(path, weights_only=True)}, bundle)
    from_bundle, _ = load_detector(bundle)
    assert from_bundle.config == model.config
    pairs = zip(from_bundle.state_dict().values(), model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)


def test_load_detector_raises_value_error_naming_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="missing.pt"):
        load_detector(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_detector(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else"}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*not a detector checkpoint"):
        load_detector(foreign)


def test_average_precision_and_matching_follow_voc_rules():
    # Precision envelope: recall 0.5 at precision 1, then recall 1 at precision 2/3 -> 0.5 + 0.5 * 2/3.
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    ground_truth = {
        0: (np.array([[0.0, 0, 10, 10], [50, 50, 10, 10]]), np.array([False, True])),
        1: (np.array([[20.0, 20, 10, 10]]), np.array([False])),
    }
    detections = [
        (0, 0.9, np.array([0.0, 0, 10, 10])),  # true positive
        (0, 0.8, np.array([0.0, 0, 10, 11])),  # duplicate: false positive
        (0, 0.7, np.array([50.0, 50, 10, 10])),  # the difficult box: ignored
        (1, 0.2, np.array([20.0, 20, 10, 10])),  # true positive below the recall threshold
    ]
    scores, outcome, n_positive = match_class(detections, ground_truth)
    assert outcome.tolist() == [1, 0, -1, 1] and n_positive == 2
    metrics = class_metrics(scores, outcome, n_positive, score_threshold=0.3)
    assert metrics["recall"] == 0.5 and metrics["precision"] == 0.5
    assert metrics["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_instance_boxes_leave_out_instances_outside_the_image():
    objects = toy_objects()
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])

    def instance(gt_id, box, fract):
        info = GtInfo(bbox_obj=box, bbox_visib=box, px_count_all=100, px_count_valid=100,
                      px_count_visib=int(100 * fract), visib_fract=fract)
        return BopInstance(gt_id=gt_id, obj_id=objects[gt_id].obj_id, R=np.eye(3),
                           t=np.array([0.0, 0.0, 0.5]), info=info)

    # BOP marks an empty silhouette with the box (-1, -1, -1, -1): no ground truth to match.
    frame = BopFrame(scene_id=0, im_id=0, camera=CameraModel(K=K, width=640, height=480), depth_scale=1.0,
                     rgb_path=Path("unused.png"),
                     instances=(instance(0, (10, 20, 30, 40), 0.8), instance(1, (-1, -1, -1, -1), 0.0)))
    boxes, classes, visib = instance_boxes(frame, objects)
    assert boxes.tolist() == [[10, 20, 30, 40]] and classes.tolist() == [0] and visib.tolist() == [0.8]
