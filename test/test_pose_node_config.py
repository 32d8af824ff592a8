"""pose_node's frozen parameter config, without ROS: defaults, YAML, validation messages."""

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from hrpose_ros.node_config import PoseNodeConfig, estimator_options, parameter_specs

YAML = Path(__file__).resolve().parents[1] / "config" / "pose_node.yaml"


def test_yaml_lists_every_parameter_with_its_default():
    values = yaml.safe_load(YAML.read_text())["/**"]["ros__parameters"]
    specs = parameter_specs()
    assert values == {name: default for name, default, *_ in specs}
    assert PoseNodeConfig(**values) == PoseNodeConfig()


def test_every_parameter_has_a_description_and_numbers_have_ranges():
    for name, default, description, low, high, _ in parameter_specs():
        assert len(description) > 15, name
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert low is not None and low <= default <= high, name


def test_config_is_frozen():
    with pytest.raises(FrozenInstanceError):
        PoseNodeConfig().backend = "onnxruntime"


def test_integers_are_accepted_for_float_parameters():
    assert PoseNodeConfig(sync_slop=0).sync_slop == 0.0
    assert isinstance(PoseNodeConfig(score_threshold=1).score_threshold, float)


def test_input_size():
    assert PoseNodeConfig().input_size is None
    assert PoseNodeConfig(input_width=640, input_height=480).input_size == (640, 480)


@pytest.mark.parametrize(
    "values, message",
    [({"backend": "tensorflow"}, "parameter 'backend': expected one of torch, onnxruntime, got 'tensorflow'"),
     ({"score_threshold": 1.5}, r"parameter 'score_threshold': expected a value in \[0.0, 1.0\], got 1.5"),
     ({"sync_queue_size": 0}, r"parameter 'sync_queue_size': expected a value in \[1, 100\]"),
     ({"device": "gpu"}, "parameter 'device': expected auto, cpu, cuda or cuda:N, got 'gpu'"),
     ({"precision": "fp16"}, "parameter 'precision': expected one of fp32, bf16, int8, auto, got 'fp16'"),
     ({"precision": "int8", "backend": "torch"},
      "parameter 'precision': int8 needs backend onnxruntime .*got backend torch"),
     ({"precision": "bf16", "backend": "onnxruntime"}, "parameter 'precision': bf16 needs backend torch"),
     ({"publish_tf": "yes"}, "parameter 'publish_tf': expected bool, got 'yes'"),
     ({"input_width": 640}, "parameters 'input_width'/'input_height': set both or neither"),
     ({"min_depth": 2.0, "max_depth": 1.0},
      "parameters 'min_depth'/'max_depth': expected min_depth < max_depth, got 2.0/1.0"),
     ({"estimator": "dope"}, "parameter 'estimator': expected one of auto, hrpose, crops, got 'dope'"),
     ({"frame_prefix": "/hrpose/"}, "parameter 'frame_prefix'"),
     ({"frame_prefix": "my prefix"}, "parameter 'frame_prefix'")],
)
def test_invalid_values_name_the_parameter(values, message):
    with pytest.raises(ValueError, match=message):
        PoseNodeConfig(**values)


def test_precision_defaults_to_fp32_and_accepts_each_backends_own_precisions():
    assert PoseNodeConfig().precision == "fp32"
    assert PoseNodeConfig(backend="onnxruntime", precision="int8").precision == "int8"
    assert PoseNodeConfig(backend="onnxruntime", precision="auto").precision == "auto"
    assert PoseNodeConfig(backend="torch", precision="bf16").precision == "bf16"
    specs = {name: choices for name, *_, choices in parameter_specs()}
    assert specs["precision"] == ("fp32", "bf16", "int8", "auto")


def test_estimator_defaults_to_auto_and_offers_both_estimators():
    assert PoseNodeConfig().estimator == "auto"
    specs = {name: choices for name, *_, choices in parameter_specs()}
    assert specs["estimator"] == ("auto", "hrpose", "crops")


def test_each_estimator_gets_only_its_own_options():
    config = PoseNodeConfig(backend="torch", device="cpu", score_threshold=0.3, min_depth=0.1, max_depth=2.0,
                            min_keypoint_spread=0.02)
    shared = {"backend": "torch", "device": "cpu", "precision": "fp32", "min_score": 0.3, "min_depth": 0.1,
              "max_depth": 2.0, "min_keypoint_spread": 0.02}
    assert estimator_options(config, "crops") == shared
    assert estimator_options(config, "hrpose") == {**shared, "input_size": None}  # 0: the model's own peak
    hrpose = PoseNodeConfig(keypoint_threshold=0.3, input_width=320, input_height=256)
    assert estimator_options(hrpose, "hrpose")["peak_threshold"] == 0.3
    assert estimator_options(hrpose, "hrpose")["input_size"] == (320, 256)


@pytest.mark.parametrize(
    "values, name",
    [({"keypoint_threshold": 0.3}, "keypoint_threshold"),
     ({"input_width": 320, "input_height": 256}, "input_width")],
)
def test_hrpose_only_parameters_set_with_the_crop_estimator_name_the_parameter(values, name):
    with pytest.raises(ValueError, match=f"parameter '{name}': HRPose only, but the estimator is crops"):
        estimator_options(PoseNodeConfig(**values), "crops")


def test_refine_iterations_reach_the_crop_estimator_only():
    assert "refine_iterations" not in estimator_options(PoseNodeConfig(), "crops")  # the file's
    assert estimator_options(PoseNodeConfig(refine_iterations=0), "crops")["refine_iterations"] == 0
    with pytest.raises(ValueError, match="'refine_iterations': crops only, but the estimator is hrpose"):
        estimator_options(PoseNodeConfig(refine_iterations=2), "hrpose")
    with pytest.raises(ValueError, match="refine_iterations"):
        PoseNodeConfig(refine_iterations=-2)


def test_recrop_reaches_the_crop_estimator_only():
    assert "recrop" not in estimator_options(PoseNodeConfig(), "crops")  # the file's
    assert estimator_options(PoseNodeConfig(recrop=0), "crops")["recrop"] is False
    assert estimator_options(PoseNodeConfig(recrop=1), "crops")["recrop"] is True
    with pytest.raises(ValueError, match="'recrop': crops only, but the estimator is hrpose"):
        estimator_options(PoseNodeConfig(recrop=1), "hrpose")
    with pytest.raises(ValueError, match="recrop"):
        PoseNodeConfig(recrop=2)


def test_pose_hypotheses_and_a_scorer_reach_the_crop_estimator():
    options = estimator_options(PoseNodeConfig(), "crops")
    assert "hypotheses" not in options and "scorer" not in options  # off: the refiner alone
    options = estimator_options(PoseNodeConfig(pose_hypotheses=10, scorer="/w/scorer.pt"), "crops")
    assert options["hypotheses"] == 10 and options["scorer"] == "/w/scorer.pt"
    # without 'scorer' the refiner's score head scores; from_pretrained refuses a refiner without one
    options = estimator_options(PoseNodeConfig(pose_hypotheses=10), "crops")
    assert options["hypotheses"] == 10 and "scorer" not in options
    for name, value in (("pose_hypotheses", 4), ("scorer", "/w/scorer.pt")):
        with pytest.raises(ValueError, match=f"'{name}': crops only, but the estimator is hrpose"):
            estimator_options(PoseNodeConfig(**{name: value}), "hrpose")
    with pytest.raises(ValueError, match="pose_hypotheses"):
        PoseNodeConfig(pose_hypotheses=-1)
