"""Replay evaluation: whole runs of a converted bag, in process and through the live node."""

import dataclasses
import json
import math

import cv2
import numpy as np
import pytest

from hrpose_ros import bag_io, bop_results, bop_to_bag, metrics, replay, scoring
from hrpose_ros.types import ObjectPose

N_FRAMES = 6  # frames of the rendered test bag


def _recomputed_scores(bag, out, objects):
    """Errors of every matched pair, recomputed from results.csv and the bag with the metric functions."""
    results = bop_results.read_results_csv(out / "results.csv")
    truth = {}
    try:
        for f in bag_io.read_frames(bag):
            truth[f.index] = (f.ground_truth, f.camera)
    except bag_io.BagError:
        pass  # a truncated bag: its complete frames are all the evaluator saw too
    scores = scoring.read_scores_csv(out / "scores.csv")
    used = set()
    for s in scores:
        gts, camera = truth[s.im_id]
        assert any(g.obj_id == s.obj_id and g.instance_id == s.instance_id for g in gts)
        if not s.found:
            assert s.add_error == math.inf
            continue
        ((i, est),) = [
            (i, r)
            for i, r in enumerate(results)
            if (r.im_id, r.obj_id) == (s.im_id, s.obj_id) and r.score == s.score and i not in used
        ]
        used.add(i)
        gt = next(g for g in gts if g.obj_id == s.obj_id and g.instance_id == s.instance_id)
        obj = objects[s.obj_id]
        add = (metrics.adds_error if obj.is_symmetric else metrics.add_error)(
            est.R, est.t, gt.R, gt.t, obj.points
        )
        # the symmetric twin of the ground truth closest in rotation, by brute force over the symmetries
        twins = [(gt.R @ S[:3, :3], gt.R @ S[:3, 3] + gt.t) for S in obj.symmetries]
        R_gt, t_gt = min(twins, key=lambda p: metrics.rotation_error_deg(est.R, p[0]))
        assert s.add_error == pytest.approx(add, rel=1e-6, abs=1e-9)  # t went through millimetres in the CSV
        assert s.proj2d_error == pytest.approx(
            metrics.proj2d_error(est.R, est.t, R_gt, t_gt, camera.K, obj.points), rel=1e-5, abs=1e-6
        )
        assert s.rotation_error_deg == pytest.approx(metrics.rotation_error_deg(est.R, R_gt), abs=1e-4)
        assert s.translation_error == pytest.approx(metrics.translation_error(est.t, t_gt), abs=1e-9)
    return scores, results, used


def _check_report_numbers(bag, out, objects, th=None):
    """metrics.json and the report tables hold the recalls the metric functions give at ``th``."""
    th = th or metrics.Thresholds()
    scores, results, used = _recomputed_scores(bag, out, objects)
    data = json.loads((out / "metrics.json").read_text())
    assert data["thresholds"] == pytest.approx(dataclasses.asdict(th))
    rows = {row["obj_id"]: row for row in data["objects"]}
    report_md = (out / "report.md").read_text()
    recalls = []
    for obj_id in sorted({s.obj_id for s in scores}):
        own = [s for s in scores if s.obj_id == obj_id]
        diameter = objects[obj_id].diameter
        expected = (
            metrics.recall([s.add_error for s in own], th.add_diameter_fraction * diameter),
            metrics.recall([s.proj2d_error for s in own], th.proj2d_px),
            float(
                np.mean(
                    [
                        s.rotation_error_deg < th.rotation_deg and s.translation_error < th.translation_m
                        for s in own
                    ]
                )
            ),
        )
        recalls.append(expected)
        got = rows[obj_id]
        assert (got["add_recall"], got["proj2d_recall"], got["cm_deg_recall"]) == pytest.approx(expected)
        assert got["instances"] == len(own) and got["found"] == sum(s.found for s in own)
        line = next(row for row in report_md.splitlines() if row.startswith(f"| {objects[obj_id].name}"))
        for value in expected:
            assert f"| {100 * value:.1f} % |" in line + " |"
    assert (rows[0]["add_recall"], rows[0]["proj2d_recall"], rows[0]["cm_deg_recall"]) == pytest.approx(
        np.mean(recalls, axis=0)
    )
    # every estimate is either matched or a false positive
    assert len(results) == len(used) + rows[0]["false_positives"]
    return data


@pytest.fixture(scope="module")
def pipeline():
    """The shipped default weights (torch; README command 1 runs them through ONNX Runtime)."""
    from hrpose_ros.pipeline import PosePipeline

    return PosePipeline.from_pretrained()


@pytest.fixture(scope="module")
def loose_pipeline():
    """The shipped weights with permissive thresholds: many real estimates, right or wrong, to score.

    The shipped CPU-trained weights accept few poses at their default thresholds (see the
    model card); checking the report against the metric functions needs matched estimates.
    """
    from hrpose_ros.pipeline import PosePipeline

    return PosePipeline.from_pretrained(min_score=0.0, peak_threshold=0.02, max_reprojection_error=50.0)


@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory, pipeline):
    """A bag made by the converter from a rendered bin scene (the demo's pile) of the pipeline's objects."""
    from hrpose_ros.data.objects import load_default_objects
    from hrpose_ros.demo_bag import DEMO_SEED, render_bin_scene

    known = {o.obj_id for o in pipeline.objects}
    objects = [o for o in load_default_objects() if o.obj_id in known]  # with meshes, for the renderer
    root = tmp_path_factory.mktemp("replay")
    # 640x480 raw frames: two per 1 MB mcap chunk, so a truncated copy keeps whole chunks
    render_bin_scene(root / "000000", objects, n_frames=N_FRAMES, seed=DEMO_SEED)
    names = {o.obj_id: o.name for o in pipeline.objects}
    bop_to_bag.bop_scene_to_bag(root / "000000", root / "bag", names=names, progress=False)
    return root / "bag"


def test_bag_round_trips_through_the_evaluator_with_the_report_numbers_of_the_metric_functions(
    tmp_path, scene_bag, loose_pipeline
):
    out = tmp_path / "out"
    result = replay.evaluate_bag(scene_bag, out, loose_pipeline, progress=False)
    assert result.complete and len(result.frames) == N_FRAMES
    objects = {o.obj_id: o for o in loose_pipeline.objects}
    data = _check_report_numbers(scene_bag, out, objects)
    assert data["complete"] and data["frames"] == N_FRAMES
    assert data["objects"][-1]["found"] > 0  # the comparison covered matched estimates, not only misses
    assert data["fps"] == pytest.approx(1000.0 / data["latency_ms"]["total"]["mean_ms"])
    assert set(data["latency_ms"]) >= {"preprocess", "inference", "decode", "pnp", "total"}
    for name in (
        "results.csv",
        "scores.csv",
        "recall_curves.png",
        "latency.png",
        "overlay.mp4",
        "overlay_strip.png",
        "report.md",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert cv2.VideoCapture(str(out / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == N_FRAMES
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # recall curves, latency, strip: one self-contained file


def test_truncated_bag_names_bag_and_topic_and_keeps_partial_results(tmp_path, scene_bag, pipeline, capsys):
    bag = tmp_path / "bag"
    bag.mkdir()
    for path in scene_bag.iterdir():
        data = path.read_bytes()
        (bag / path.name).write_bytes(data[: int(0.6 * len(data))] if path.suffix == ".mcap" else data)
    out = tmp_path / "out"
    argv = [str(bag), "--out", str(out), "--quiet", "--no-video", "--estimator", "hrpose"]  # the fixture's
    code = replay.main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert f"bag {bag}, topic {bag_io.IMAGE_TOPIC}: truncated" in captured.err
    assert "INCOMPLETE" in captured.out and str(out / "report.html") in captured.out
    data = json.loads((out / "metrics.json").read_text())
    total = bag_io.bag_topics(scene_bag)[bag_io.IMAGE_TOPIC][1]
    assert not data["complete"] and 1 <= data["frames"] < total and "truncated" in data["error"]
    assert {r.im_id for r in bop_results.read_results_csv(out / "results.csv")} <= set(range(data["frames"]))
    assert "**incomplete**" in (out / "report.md").read_text()
    _check_report_numbers(bag, out, {o.obj_id: o for o in pipeline.objects})


def test_cm_deg_bounds_of_the_command_line_reach_metrics_and_report(tmp_path, scene_bag, pipeline, capsys):
    """--max-translation-cm / --max-rotation-deg: issue 6 measures well-visible objects at 1 cm 5 deg."""
    out = tmp_path / "out"
    argv = [str(scene_bag), "--out", str(out), "--quiet", "--no-video", "--max-frames", "2"]
    argv += ["--estimator", "hrpose"]  # the pipeline fixture's
    assert replay.main([*argv, "--max-translation-cm", "1000", "--max-rotation-deg", "180"]) == 0
    assert "1000 cm 180 deg" in capsys.readouterr().out
    objects = {o.obj_id: o for o in pipeline.objects}
    wide = metrics.Thresholds(translation_m=10.0, rotation_deg=180.0)
    data = _check_report_numbers(scene_bag, out, objects, wide)
    assert "1000 cm 180 deg" in (out / "report.md").read_text()
    # bounds this wide (poses lie within max_depth, 5 m) accept every pose found: recall = share found
    rows = [row for row in data["objects"] if row["obj_id"] != 0]
    assert sum(row["found"] for row in rows) > 0
    for row in rows:
        assert row["cm_deg_recall"] == pytest.approx(row["found"] / row["instances"])
    with pytest.raises(SystemExit) as exc:
        replay.main([*argv, "--max-translation-cm", "0"])
    assert exc.value.code == 2
    assert "--max-translation-cm: expected a number > 0, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        replay.main([*argv, "--depth-hypotheses", "3"])
    assert "--depth-hypotheses: needs --depth-topic" in capsys.readouterr().err


def test_ground_truth_of_an_unknown_object_is_named_with_partial_results(tmp_path, scene_bag, pipeline):
    bag = tmp_path / "bag"
    with bag_io.BagWriter(bag) as writer:
        for frame in bag_io.read_frames(scene_bag):
            truth = list(frame.ground_truth)
            if frame.index == 2:
                truth.append(ObjectPose("teapot", 99, 0, 1.0, np.eye(3), np.array([0.0, 0.0, 0.7])))
            writer.write_frame(frame.stamp_ns, frame.image, frame.camera, truth)
    result = replay.evaluate_bag(bag, tmp_path / "out", pipeline, progress=False, video=False)
    assert result.error.startswith(f"bag {bag}, topic {bag_io.GROUND_TRUTH_TOPIC}: image 2: ")
    assert "unknown object 99 ('teapot')" in result.error
    assert len(result.frames) == 2
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["frames"] == 2 and not data["complete"]


@pytest.mark.ros
def test_live_node_path_gives_the_in_process_poses(tmp_path, scene_bag, pipeline):
    """--live-node: pose_node started as a subprocess over DDS, one image at a time, none dropped."""
    inline = replay.evaluate_bag(scene_bag, tmp_path / "inline", pipeline, progress=False, video=False)
    code = replay.main(
        [
            str(scene_bag),
            "--out",
            str(tmp_path / "live"),
            "--live-node",
            "--estimator",
            "hrpose",  # the in-process pipeline's (the default, auto, takes the crop estimator when shipped)
            "--backend",
            "torch",  # the in-process pipeline's (ONNX Runtime's float differences can flip a RANSAC choice)
            "--quiet",
            "--no-video",
            "--node-timeout",
            "120",
        ]
    )
    assert code == 0
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert live["complete"] and live["frames"] == N_FRAMES and live["mode"].startswith("live pose_node")
    assert "round_trip" in live["latency_ms"]
    ours = bop_results.read_results_csv(tmp_path / "inline" / "results.csv")
    theirs = bop_results.read_results_csv(tmp_path / "live" / "results.csv")
    assert [(r.im_id, r.obj_id) for r in theirs] == [(r.im_id, r.obj_id) for r in ours]
    for a, b in zip(ours, theirs):
        assert b.score == pytest.approx(a.score, abs=1e-6)  # float32 in the message
        np.testing.assert_allclose(b.R, a.R, atol=1e-5)
        np.testing.assert_allclose(b.t, a.t, atol=1e-6)
    assert [row["add_recall"] for row in live["objects"]] == pytest.approx(
        [s.add_recall for s in inline.summary]
    )


@pytest.mark.parametrize("live", [False, True], ids=["in-process", "live-node"])
def test_estimator_of_the_command_line_must_match_the_weights(tmp_path, scene_bag, capsys, live):
    """--estimator reaches the loader of both paths: crops asked for with an HRPose checkpoint stops both."""
    from hrpose_ros.pipeline import DEFAULT_WEIGHTS

    argv = [str(scene_bag), "--out", str(tmp_path / "out"), "--quiet", "--no-video", "--estimator", "crops",
            "--weights", str(DEFAULT_WEIGHTS), *(["--live-node"] if live else [])]
    assert replay.main(argv) == 1
    expected = f"estimator: 'crops' asked for, but {DEFAULT_WEIGHTS} holds 'hrpose' weights"
    assert expected in capsys.readouterr().err


@pytest.fixture(scope="module")
def crops_bag_runs(tmp_path_factory, scene_bag):
    """Return the metrics.json of --estimator crops in-process and through --live-node, 2 frames each."""
    from hrpose_ros.crop_pipeline import DEFAULT_CROPS_WEIGHTS

    assert DEFAULT_CROPS_WEIGHTS.is_file(), f"{DEFAULT_CROPS_WEIGHTS}: the shipped crop estimator is missing"
    root = tmp_path_factory.mktemp("crops_runs")
    runs = {}
    for mode, extra in (("inline", []), ("live", ["--live-node", "--node-timeout", "120"])):
        argv = [str(scene_bag), "--out", str(root / mode), "--quiet", "--no-video", "--max-frames", "2",
                "--estimator", "crops", "--backend", "torch", *extra]
        assert replay.main(argv) == 0, mode
        runs[mode] = root / mode
    return runs


def test_crop_estimator_runs_in_process(crops_bag_runs):
    data = json.loads((crops_bag_runs["inline"] / "metrics.json").read_text())
    assert data["complete"] and data["frames"] == 2 and data["mode"].startswith("pipeline (crops, torch")
    assert set(data["latency_ms"]) >= {"detection", "crops", "inference", "decode", "pnp", "total"}


@pytest.mark.ros
def test_crop_estimator_through_the_live_node_gives_the_in_process_poses(crops_bag_runs):
    live = json.loads((crops_bag_runs["live"] / "metrics.json").read_text())
    assert live["complete"] and live["mode"].startswith("live pose_node (crops, torch")
    ours = bop_results.read_results_csv(crops_bag_runs["inline"] / "results.csv")
    theirs = bop_results.read_results_csv(crops_bag_runs["live"] / "results.csv")
    assert [(r.im_id, r.obj_id) for r in theirs] == [(r.im_id, r.obj_id) for r in ours]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(b.t, a.t, atol=1e-6)


@pytest.mark.ros
def test_rgbd_replay_reports_the_rgb_only_recalls_of_the_same_run_beside_it(tmp_path, scene_bag,
                                                                            crops_bag_runs, capsys):
    """The scene of scene_bag with its depth images: RGB-only numbers equal an RGB replay's."""
    bag = tmp_path / "rgbd_bag"
    topics = bag_io.BagTopics(depth=bag_io.DEPTH_TOPIC)
    bop_to_bag.bop_scene_to_bag(scene_bag.parent / "000000", bag, topics=topics, progress=False)
    out = tmp_path / "rgbd"
    argv = [str(bag), "--out", str(out), "--quiet", "--no-video", "--max-frames", "2", "--estimator", "crops",
            "--backend", "torch", "--depth-topic", bag_io.DEPTH_TOPIC, "--depth-hypotheses", "2"]
    assert replay.main(argv) == 0
    assert "RGB-only vs RGB-D:" in capsys.readouterr().out
    rgbd = json.loads((out / "metrics.json").read_text())
    rgb = json.loads((crops_bag_runs["inline"] / "metrics.json").read_text())
    assert rgbd["mode"].endswith("+ depth refinement") and "depth refinement" in rgbd["latency_ms"]
    assert rgbd["objects_rgb_only"] == rgb["objects"]
    assert [o["instances"] for o in rgbd["objects"]] == [o["instances"] for o in rgb["objects"]]
    assert "## RGB-only vs RGB-D" in (out / "report.md").read_text()
    assert "<h2>RGB-only vs RGB-D</h2>" in (out / "report.html").read_text()
    # through the live node (use_depth, depth_hypotheses, depth over DDS as 32FC1): the same refined poses
    live = tmp_path / "rgbd_live"
    assert replay.main([*argv[:2], str(live), *argv[3:], "--live-node", "--node-timeout", "120"]) == 0
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["complete"] and metrics["mode"].endswith("+ use_depth")
    ours = bop_results.read_results_csv(out / "results.csv")
    theirs = bop_results.read_results_csv(live / "results.csv")
    colour_only = bop_results.read_results_csv(crops_bag_runs["inline"] / "results.csv")
    assert any(np.abs(a.t - c.t).max() > 1e-3 for a, c in zip(ours, colour_only)), "nothing was refined"
    assert [(r.im_id, r.obj_id) for r in theirs] == [(r.im_id, r.obj_id) for r in ours]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(b.t, a.t, atol=1e-6)
