"""The benchmark's own helpers (benchmarks/ is not installed; these pin down what it measures).

Decode and PnP are timed on maps the codec encodes from synthetic ground truth: these tests
check that those maps decode back into every instance at its true pose, so the timed work is
the real work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.frames import CAMERA, encode_maps, paint_scene, scene_instances
from benchmarks.goals import Goals, evaluate_goals, load_goals
from benchmarks.machine import cpu_summary
from benchmarks.timing import Stats
from hrpose_ros.codec import CodecConfig, KeypointCodec
from hrpose_ros.letterbox import letterbox
from hrpose_ros.pipeline import PosePipeline
from training.toy_data import toy_objects

# The targets benchmarks/README.md states (and goals.yaml ships).
README_GOALS = Goals(
    end_to_end_fps=20.0, ort_speedup=1.5, decode_pnp_ms=3.0, decode_pnp_instances=10, ros_share=0.05
)


@pytest.mark.parametrize(("count", "input_size"), [(1, (640, 480)), (10, (640, 480)), (20, (320, 256))])
def test_encoded_ground_truth_decodes_to_every_instance_at_its_pose(count, input_size):
    objects = toy_objects()
    codec = KeypointCodec(CodecConfig(num_classes=len(objects)))
    instances = scene_instances(objects, count, CAMERA, np.random.default_rng(count))
    belief, vectors = encode_maps(codec, objects, instances, CAMERA, input_size)
    assert belief.shape == (1, 9 * len(objects), input_size[1] // 4, input_size[0] // 4)

    pipeline = PosePipeline(None, codec, objects, input_size)
    box = letterbox(np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8), *input_size)[1]
    poses = pipeline.solve(pipeline.decode(belief[0], vectors[0], box), CAMERA)
    assert len(poses) == count
    for c, R, t in instances:
        pose = min(poses, key=lambda p: np.linalg.norm(p.t - t))
        assert pose.obj_id == objects[c].obj_id
        # Map pixels are 4 (640x480) or 8 (320x256) image pixels: depth error grows with that.
        assert np.linalg.norm(pose.t - t) < 0.02 * t[2]
        assert np.degrees(np.arccos(np.clip((np.trace(pose.R.T @ R) - 1) / 2, -1, 1))) < 5


def test_scene_instances_do_not_overlap_and_stay_in_view():
    objects = toy_objects()
    instances = scene_instances(objects, 20, CAMERA, np.random.default_rng(0))
    centres = np.array([(CAMERA.K @ t)[:2] / t[2] for _, _, t in instances])
    assert np.all((centres > 0) & (centres < (CAMERA.width, CAMERA.height)))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(20) * 1e9
    assert gaps.min() > 100  # 6 x 4 grid of ~107 x 120 px cells
    image = paint_scene(objects, instances, CAMERA, np.random.default_rng(0))
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8


def test_stats_are_median_and_p90_in_milliseconds():
    stats = Stats.of(np.arange(1, 11) * 1e-3)
    assert (stats.median_ms, stats.n) == (pytest.approx(5.5), 10)
    assert stats.p90_ms == pytest.approx(9.1)
    assert str(stats) == "5.50 / 9.10"
    assert Stats.of([]).n == 0 and str(Stats.of([])) == "-"


def test_cpu_summary_is_consistent_with_cpuinfo():
    cpu = cpu_summary()
    assert set(cpu["flags"]) >= {"avx2", "avx512_bf16", "amx_bf16", "amx_int8"}
    assert cpu["amx"] == (cpu["flags"]["amx_bf16"] and cpu["flags"]["amx_int8"])
    assert cpu["bf16_hardware"] == (cpu["flags"]["avx512_bf16"] or cpu["flags"]["amx_bf16"])


def test_fps_goal_names_the_best_node_and_the_default_one():
    ms = lambda value: Stats(value, value, 100)  # noqa: E731
    frame = {"frame": ms(50.0), "message → image": ms(1.0), "message build + publish": ms(1.0)}
    summary = {
        "stages": {"ORT int8": frame},
        "inference_s": {"torch fp32": 0.08, "ORT fp32": 0.04, "ORT int8": 0.03},
        "instances": {"10": {"decode": ms(1.0), "pnp": ms(1.0), "total": ms(2.0)}},
        "nodes": [
            {"backend": "torch fp32", "closed_loop": ms(200.0), "open_loop": {"output_hz": 5.0}},
            {"backend": "ORT fp32", "closed_loop": ms(70.0), "open_loop": {"output_hz": 16.0}},
            {"backend": "ORT int8", "closed_loop": ms(45.0), "open_loop": {"output_hz": 24.0}},
        ],
    }
    (met, text), *others = evaluate_goals(summary, README_GOALS, random_weights=False)
    assert met is True
    assert text.startswith("end to end >= 20 fps: 24.0 fps (ORT int8 node, output rate at 30 Hz input)")
    assert text.endswith("; the node's default backend (ORT fp32): 16.0 fps")  # PoseNodeConfig's
    assert [m for m, _ in others] == [True, True, True]  # ORT 2x torch, 2 ms decode + PnP, 4 % ROS
    summary["nodes"] = summary["nodes"][:1]
    (met, text), *_ = evaluate_goals(summary, README_GOALS, random_weights=False)
    assert met is False and "default backend" not in text


def test_crops_estimator_option_measures_the_crop_stages(tmp_path):
    """--estimator crops: the crop estimator's own stages, torch and ORT (untrained weights, no node)."""
    import json

    import torch

    from benchmarks.benchmark import main, parse_args
    from hrpose_ros.crop_keypoints import CropKeypointConfig, CropKeypointNet
    from hrpose_ros.crop_pipeline import keypoints_to_dict, save_crops_file
    from hrpose_ros.detector import DetectorConfig, SingleShotDetector, detector_to_dict

    assert parse_args([]).estimator == "hrpose"
    torch.manual_seed(0)
    objects = toy_objects()
    detector = SingleShotDetector(DetectorConfig(num_classes=2, input_size=(160, 128), pretrained=False))
    keypoints = CropKeypointNet(CropKeypointConfig(num_classes=2, crop_size=64, pretrained=False))
    weights = save_crops_file(
        tmp_path / "crops.pt", detector_to_dict(detector, objects), keypoints_to_dict(keypoints, objects)
    )
    out = tmp_path / "bench"
    argv = ["--estimator", "crops", "--checkpoint", str(weights), "--quick", "--frames", "2", "--no-node"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "benchmark.json").read_text())
    assert results["estimator"] == "crops" and results["weights"] == str(weights)
    assert set(results["stages"]) == {"torch fp32", "ORT fp32"}
    for stages in results["stages"].values():
        assert list(stages) == ["message → image", "detection", "crops", "inference", "decode", "PnP",
                                "recrop", "refine", "message build + publish", "frame"]
        assert stages["frame"]["n"] == 2
    # --split with --instances: only the split's frames with that many objects
    from hrpose_ros import bop_reader
    from training.toy_data import write_toy_split

    write_toy_split(tmp_path / "split", n_frames=6, seed=3)
    counts = [len(f.instances) for f in bop_reader.read_split(tmp_path / "split")]
    n = max(set(counts), key=counts.count)
    split_argv = [*argv, "--no-int8", "--split", str(tmp_path / "split"), "--threads", "1"]
    assert main([*split_argv, "--instances", str(n), "--out", str(tmp_path / "b2")]) == 0
    note = json.loads((tmp_path / "b2" / "benchmark.json").read_text())["frames_note"]
    assert note.endswith(f"its {counts.count(n)} frames with {n} objects")
    with pytest.raises(SystemExit, match="no frame has 7 annotated objects"):
        main([*split_argv, "--instances", "7", "--out", str(tmp_path / "b3")])
    with pytest.raises(SystemExit, match="--depth: the frames of --split .* have no depth images"):
        main([*split_argv, "--depth", "--out", str(tmp_path / "b4")])


def test_crops_depth_option_times_the_refinement_of_the_shipped_poses(tmp_path):
    """--depth: the depth refinement's time per instance and frame on a rendered bin frame's depth."""
    import json

    from benchmarks.benchmark import main
    from hrpose_ros.data.objects import load_default_objects
    from hrpose_ros.demo_bag import DEMO_SEED, render_bin_scene

    render_bin_scene(tmp_path / "000000", load_default_objects(), n_frames=1, seed=DEMO_SEED)
    argv = ["--estimator", "crops", "--quick", "--frames", "1", "--no-node", "--threads", "1",
            "--split", str(tmp_path / "000000"), "--depth", "--out", str(tmp_path / "bench")]
    assert main(argv) == 0
    depth = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["depth_refinement"]
    assert depth["attempted"] >= 1 and depth["instance"]["n"] >= 1 and depth["frame"]["n"] >= 1
    assert depth["instance"]["median_ms"] > 0
    assert "depth refinement" in (tmp_path / "bench" / "report.txt").read_text()


def test_hrpose_quick_run_writes_report_json_csv_and_figure(tmp_path):
    """The HRPose path end to end without the live node: every output file, the goals in the report."""
    import json

    from benchmarks import benchmark
    from benchmarks.backends import random_checkpoint

    weights = random_checkpoint(tmp_path / "tiny.pt", "tiny", (320, 256))
    out = tmp_path / "bench"
    argv = ["--checkpoint", str(weights), "--quick", "--frames", "2", "--no-node", "--no-int8"]
    argv += ["--threads", "1"]
    assert benchmark.main([*argv, "--out", str(out)]) == 0
    assert {"benchmark.json", "report.txt", "stages.csv", "benchmark.png", "model.onnx"} <= {
        p.name for p in out.iterdir()
    }
    results = json.loads((out / "benchmark.json").read_text())
    assert results["random_weights"] is True and results["checkpoint"] == str(weights)
    assert {"torch fp32", "ORT fp32"} <= set(results["stages"])
    assert list(results["instances"]) == ["1", "5", "10", "20"]
    assert list(results["input_sizes"]) == ["320x256", "640x480"]
    texts = [goal["text"] for goal in results["goals"]]
    goals = load_goals()
    assert texts[0].startswith(f"end to end >= {goals.end_to_end_fps:g} fps: live node not measured")
    assert texts[1].startswith(f"ONNX Runtime >= {goals.ort_speedup:g}x torch eager")
    assert texts[2].startswith(
        f"peaks + grouping + PnP < {goals.decode_pnp_ms:g} ms with {goals.decode_pnp_instances} instances"
    )
    assert texts[3].startswith(f"ROS conversion + publishing < {100 * goals.ros_share:g} % of the frame")
    report = (out / "report.txt").read_text()
    assert "Goals (benchmarks/goals.yaml):" in report and all(text in report for text in texts)
    assert (out / "stages.csv").read_text().startswith("backend,stage,median_ms,p90_ms,n")


def test_script_runs_from_the_repository_as_make_bench_calls_it():
    """`python benchmarks/benchmark.py` finds its sibling modules as the benchmarks package."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/benchmark.py", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines to the terminal
    assert "where the time of one 640x480 frame goes, per backend" in text
    assert "--estimator {hrpose,crops}" in text
