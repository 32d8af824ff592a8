"""BOP format: write -> read round trips, with millimetres on disk and metres in memory, converted once."""

import json
import math

import cv2
import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from hrpose_ros import bop_format, bop_models, bop_reader, bop_results, bop_writer
from hrpose_ros.types import CameraModel

K = np.array([[500.0, 0.0, 31.5], [0.0, 500.0, 23.5], [0.0, 0.0, 1.0]])
W, H = 64, 48


def test_models_round_trip_in_millimetres(tmp_path):
    mesh = trimesh.creation.box(extents=(0.1, 0.06, 0.04))  # metres
    mesh.apply_translation((0.01, 0.0, 0.0))
    models = tmp_path / "models"
    bop_models.write_ply_model(bop_models.model_path(models, 3), mesh)
    assert bop_models.model_path(models, 3).name == "obj_000003.ply"

    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = (0.02, 0.0, 0.0)  # half-turn about z through x = 0.01 m
    info = bop_models.model_info_from_points(
        3, mesh.vertices, symmetries_discrete=[flip],
        symmetries_continuous=[bop_models.ContinuousSymmetry(axis=np.array([0.0, 0.0, 1.0]),
                                                             offset=np.array([0.01, 0.0, 0.0]))],
    )
    diagonal = math.sqrt(0.1**2 + 0.06**2 + 0.04**2)
    assert info.diameter == pytest.approx(diagonal, abs=1e-12)
    bop_models.write_models_info(models / "models_info.json", [info])
    bop_models.write_object_names(models, {3: "brick"})

    raw = json.loads((models / "models_info.json").read_text())["3"]
    assert raw["diameter"] == pytest.approx(1000 * diagonal)
    assert (raw["min_x"], raw["size_x"], raw["size_z"]) == pytest.approx((-40.0, 100.0, 40.0))
    assert raw["symmetries_discrete"][0][3] == pytest.approx(20.0)  # mm on disk
    assert raw["symmetries_continuous"][0]["offset"] == pytest.approx([10.0, 0.0, 0.0])
    ply_vertices = trimesh.load(bop_models.model_path(models, 3), process=False).vertices
    assert np.abs(ply_vertices).max() == pytest.approx(60.0)  # mm on disk

    read = bop_models.read_models_info(models / "models_info.json")[3]
    assert read.diameter == pytest.approx(diagonal, abs=1e-12)
    np.testing.assert_allclose(read.min, [-0.04, -0.03, -0.02], atol=1e-12)
    np.testing.assert_allclose(read.size, [0.1, 0.06, 0.04], atol=1e-12)
    np.testing.assert_allclose(read.symmetries_discrete[0], flip, atol=1e-12)
    np.testing.assert_allclose(read.symmetries_continuous[0].offset, [0.01, 0.0, 0.0], atol=1e-12)

    (model,) = bop_models.load_object_models(models, max_sym_disc_step=0.1)
    assert (model.obj_id, model.name) == (3, "brick")
    np.testing.assert_allclose(np.sort(model.points, axis=0), np.sort(mesh.vertices, axis=0), atol=1e-9)
    assert model.diameter == pytest.approx(diagonal)
    assert model.symmetries.shape == (2 * math.ceil(math.pi / 0.1), 4, 4)
    np.testing.assert_allclose(model.symmetries[0], np.eye(4), atol=1e-12)
    loaded_mesh = bop_models.read_ply_model(model.mesh_path)
    np.testing.assert_allclose(loaded_mesh.bounds, mesh.bounds, atol=1e-9)


def make_frame(rng, n_objects):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = np.round(rng.uniform(0.4, 0.6, (H, W)) * 1e4) / 1e4  # whole multiples of 0.1 mm
    depth[:5] = 0.0  # no measurement
    instances, full, visib = [], [], []
    for i in range(n_objects):
        R = Rotation.random(random_state=int(rng.integers(1000))).as_matrix()
        t = np.array([0.01 * i, -0.02, 0.5 + 0.1 * i])
        instances.append(bop_format.GtInstance(obj_id=i + 1, R=R, t=t))
        mask = np.zeros((H, W), bool)
        mask[2 + 10 * i: 12 + 10 * i, 5:15] = True  # rows 2..11 (+10 i), cols 5..14
        full.append(mask)
        visible = mask.copy()
        visible[:, 10:] = False
        visib.append(visible)
    return rgb, depth, instances, full, visib


def test_scene_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    split = tmp_path / "train"
    frames_in = [make_frame(rng, n) for n in (2, 1)]
    with bop_writer.SceneWriter(split / "000000", depth_scale=0.1) as writer:
        for rgb, depth, instances, full, visib in frames_in:
            writer.add_frame(rgb, CameraModel(K=K, width=W, height=H), instances, depth=depth,
                             masks_visib=visib, masks_full=full)

    scene = split / "000000"
    assert sorted(p.name for p in (scene / "rgb").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(p.name for p in (scene / "mask_visib").iterdir()) == [
        "000000_000000.png", "000000_000001.png", "000001_000000.png"]
    raw_gt = json.loads((scene / "scene_gt.json").read_text())
    assert raw_gt["0"][1]["cam_t_m2c"] == pytest.approx([10.0, -20.0, 600.0])  # mm on disk
    assert raw_gt["0"][0]["cam_R_m2c"] == pytest.approx(frames_in[0][2][0].R.ravel().tolist())  # row-major
    raw_camera = json.loads((scene / "scene_camera.json").read_text())["1"]
    assert raw_camera == {"cam_K": K.ravel().tolist(), "depth_scale": 0.1}
    raw_info = json.loads((scene / "scene_gt_info.json").read_text())["0"][1]
    # BOP boxes: x, y of the first pixel, w = x_max - x_min; visible part is cols 5..9.
    assert raw_info == {"bbox_obj": [5, 12, 9, 9], "bbox_visib": [5, 12, 4, 9], "px_count_all": 100,
                        "px_count_valid": 100, "px_count_visib": 50, "visib_fract": 0.5}
    # rows 2..4 of the first instance have no depth: 30 of its 100 pixels are invalid.
    assert json.loads((scene / "scene_gt_info.json").read_text())["0"][0]["px_count_valid"] == 70

    frames = bop_reader.read_split(split)
    assert [(f.scene_id, f.im_id, len(f.instances)) for f in frames] == [(0, 0, 2), (0, 1, 1)]
    for frame, (rgb, depth, instances, full, visib) in zip(frames, frames_in):
        assert (frame.camera.width, frame.camera.height) == (W, H)
        np.testing.assert_array_equal(frame.camera.K, K)
        assert frame.depth_scale == 0.1
        np.testing.assert_array_equal(frame.read_rgb(), rgb)
        np.testing.assert_allclose(frame.read_depth(), depth, atol=1e-6)  # float32 metres
        for inst, gt, mask_full, mask_visib in zip(frame.instances, instances, full, visib):
            assert inst.obj_id == gt.obj_id
            np.testing.assert_allclose(inst.R, gt.R, atol=1e-15)
            np.testing.assert_allclose(inst.t, gt.t, rtol=1e-15, atol=1e-15)  # metres again, not mm
            np.testing.assert_array_equal(inst.read_mask(), mask_full)
            np.testing.assert_array_equal(inst.read_mask_visib(), mask_visib)
            assert inst.info.visib_fract == 0.5

    # A second writer on the same scene resumes after the last frame.
    rgb, depth, instances, full, visib = make_frame(rng, 1)
    with bop_writer.SceneWriter(split / "000000", rgb_ext="jpg") as writer:
        assert writer.add_frame(rgb, K, instances) == 2
    frames = bop_reader.read_scene(scene)
    assert [f.im_id for f in frames] == [0, 1, 2]
    assert frames[2].rgb_path.name == "000002.jpg" and frames[2].depth_path is None
    assert frames[2].instances[0].info is None and frames[2].instances[0].mask_visib_path is None
    assert frames[0].instances[1].info.bbox_obj == (5, 12, 9, 9)


def test_depth_png_units_and_range(tmp_path):
    depth = np.array([[0.0, 0.5, 1.23456], [6.5535, 0.0001, 2.0]])
    bop_writer.write_depth(tmp_path / "d.png", depth, depth_scale=0.1)
    raw = cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, [[0, 5000, 12346], [65535, 1, 20000]])  # units of 0.1 mm
    expected = [[0, 0.5, 1.2346], [6.5535, 1e-4, 2.0]]
    np.testing.assert_allclose(bop_reader.read_depth(tmp_path / "d.png", 0.1), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds 6.553 m"):
        bop_writer.write_depth(tmp_path / "e.png", np.full((2, 2), 7.0), depth_scale=0.1)


def test_results_csv_round_trip(tmp_path):
    R = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    results = [
        bop_results.BopResult(1, 5, 2, score=0.9, R=R, t=np.array([0.1, -0.05, 0.75]), time=0.03),
        bop_results.BopResult(1, 5, 7, score=0.4, R=np.eye(3), t=np.array([0, 0, 1.0]), time=0.03),
        bop_results.BopResult(scene_id=2, im_id=0, obj_id=2, score=1.0, R=R.T, t=np.array([0, 0, 0.5])),
    ]
    path = tmp_path / "method_lmo-test.csv"
    bop_results.write_results_csv(path, results)
    lines = path.read_text().splitlines()
    assert lines[0] == "scene_id,im_id,obj_id,score,R,t,time"
    assert lines[2] == "1,5,7,0.4,1.0 0.0 0.0 0.0 1.0 0.0 0.0 0.0 1.0,0.0 0.0 1000.0,0.03"  # t in mm
    assert lines[3].endswith(",0.0 0.0 500.0,-1.0")
    back = bop_results.read_results_csv(path)
    assert len(back) == 3
    for a, b in zip(results, back):
        assert (a.scene_id, a.im_id, a.obj_id) == (b.scene_id, b.im_id, b.obj_id)
        assert (a.score, a.time) == (b.score, b.time)
        np.testing.assert_allclose(b.R, a.R, atol=1e-15)
        np.testing.assert_allclose(b.t, a.t, rtol=1e-15)

    conflicting = bop_results.BopResult(1, 5, 3, 0.5, R, np.ones(3), time=0.5)
    with pytest.raises(ValueError, match="one time per image"):
        bop_results.write_results_csv(path, [results[0], conflicting])
    path.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,2,3,0.5,1 0 0 0 1 0 0 0 1,1 2,0.1\n")
    with pytest.raises(ValueError, match=r"csv:2 t: expected 3 numbers"):
        bop_results.read_results_csv(path)


def test_malformed_files_name_the_file_and_field(tmp_path):
    path = tmp_path / "scene_gt.json"
    path.write_text(json.dumps({"0": [{"obj_id": 1, "cam_R_m2c": np.eye(3).ravel().tolist()}]}))
    with pytest.raises(ValueError, match=r"scene_gt.json \[0\]\[0\]: missing field 'cam_t_m2c'"):
        bop_reader.read_scene_gt(path)
    path.write_text(json.dumps({"0": [{"obj_id": 1, "cam_R_m2c": [2, 0, 0, 0, 1, 0, 0, 0, 1],
                                       "cam_t_m2c": [0, 0, 500]}]}))
    with pytest.raises(ValueError, match=r"cam_R_m2c: expected a rotation"):
        bop_reader.read_scene_gt(path)
    info = tmp_path / "models_info.json"
    info.write_text(json.dumps({"1": {"min_x": 0}}))
    with pytest.raises(ValueError, match=r"models_info.json \[1\]: missing field 'diameter'"):
        bop_models.read_models_info(info)
    info.write_text("{not json")
    with pytest.raises(ValueError, match="models_info.json: not valid JSON"):
        bop_models.read_models_info(info)
    camera = tmp_path / "scene_camera.json"
    camera.write_text(json.dumps({"0": {"cam_K": [0, 0, 10, 0, 500, 10, 0, 0, 1], "depth_scale": 1.0}}))
    with pytest.raises(ValueError, match=r"cam_K: focal lengths must be positive"):
        bop_reader.read_scene_camera(camera)
    with pytest.raises(ValueError, match=f"{tmp_path}: a scene, not a split; give the directory that"):
        bop_reader.read_split(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no scene directories"):
        bop_reader.read_split(tmp_path / "empty")
    with pytest.raises(ValueError, match="obj_000009.ply: model file not found"):
        bop_models.read_ply_model(bop_models.model_path(tmp_path, 9))
