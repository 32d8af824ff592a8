"""RGB-only beside RGB-D evaluation and the depth benchmark: the numbers they print are the right ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.depth_refine import offset, random_pose
from hrpose_ros.data import make_data as make_data_module
from hrpose_ros.data.scenes import DEFAULT_CAMERA
from hrpose_ros.depth_refine import RefineConfig, pose_change
from training import evaluate_depth
from training.evaluate import CM_DEG, InstanceResult


def _result(obj_id: int, add: bool, grasp: bool) -> InstanceResult:
    return InstanceResult(obj_id=obj_id, correct={"add": add, "proj2d": add, "5cm5deg": add, CM_DEG: grasp})


def test_report_gives_recalls_per_object_and_their_mean():
    result = {
        "rgb": [_result(1, True, False), _result(1, False, False), _result(2, True, False)],
        "rgbd": [_result(1, True, True), _result(1, True, False), _result(2, True, True)],
        "instance_seconds": [0.002, 0.004, 0.006],
        "frame_seconds": [0.006, 0.006],
        "refined": {1: [True, False], 2: [True]},
    }
    report, numbers = evaluate_depth.format_report(result, {1: "duck", 2: "mug", 3: "can"})
    assert numbers["objects"]["duck"] == {"instances": 2, "add_rgb": 50.0, "add_rgbd": 100.0,
                                          "grasp_rgb": 0.0, "grasp_rgbd": 50.0, "refined": 50.0}
    assert "can" not in numbers["objects"]  # no instance: no row
    assert numbers["mean"] == {"add_rgb": 75.0, "add_rgbd": 100.0, "grasp_rgb": 0.0, "grasp_rgbd": 75.0}
    assert numbers["timing"]["instance_ms_median"] == pytest.approx(4.0)
    assert "| duck | 2 | 50.0 | 100.0 | 0.0 | 50.0 | 50 % |" in report


def test_evaluation_runs_on_rendered_bin_frames_with_noisy_depth(tmp_path):
    split = make_data_module.make_data(tmp_path / "test", ["bin"], n=2, seed=11, progress=False).split_dir
    out = tmp_path / "eval"
    arguments = ["--split", str(split / "000000"), "--backend", "torch", "--out", str(out),
                 "--hypotheses", "1", "--compare", "association=nearest,iterations=2"]
    assert evaluate_depth.main(arguments) == 0
    numbers = json.loads((out / "metrics.json").read_text())
    assert numbers["hypotheses"] == 1
    # the other setting refined the same RGB poses: same instances, same RGB recall
    other = numbers["compared"]["association=nearest,iterations=2"]
    assert other["mean"]["add_rgb"] == numbers["mean"]["add_rgb"]
    assert other["timing"]["frames"] == 2 and other["timing"]["frame_wall_ms_median"] > 0
    instances = sum(v["instances"] for v in numbers["objects"].values())
    assert instances > 0 and numbers["timing"]["frames"] == 2
    assert all(0 <= v[k] <= 100 for v in numbers["objects"].values() for k in ("add_rgb", "add_rgbd"))
    report = (out / "report.md").read_text()
    assert "ADD(-S) RGB-D" in report and "| association=nearest,iterations=2 |" in report


def test_compared_settings_are_parsed_into_the_refine_config():
    base = RefineConfig()
    text = "association=nearest, iterations=6,stages=0.02:0.005,model_pixels=false"
    config = evaluate_depth.parse_overrides(text, base)
    assert (config.association, config.iterations, config.stages, config.model_pixels) == (
        "nearest", 6, (0.02, 0.005), False)
    assert config.max_translation == base.max_translation
    for text, message in (("iterations", "expected key=value"), ("colour=red", "key one of"),
                          ("iterations=many", "expects a int"), ("model_pixels=maybe", "expects a bool"),
                          ("association=telepathy", "association: expected one of"), ("", "no key=value")):
        with pytest.raises(ValueError, match=message):
            evaluate_depth.parse_overrides(text, base)


def test_benchmark_offsets_are_exactly_1cm_and_5deg():
    rng = np.random.default_rng(0)
    for _ in range(5):
        R, t = random_pose(rng)
        u, v = (DEFAULT_CAMERA.K @ t)[:2] / t[2]
        assert 160 <= u <= 480 and 120 <= v <= 360 and 0.45 <= t[2] <= 0.8
        moved, turned = pose_change(R, t, *offset(rng, R, t))
        assert moved == pytest.approx(0.01) and np.rad2deg(turned) == pytest.approx(5.0)
