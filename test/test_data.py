"""The default object set, adding users' meshes, synthetic scenes and the make-data command."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import trimesh

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.data import objects


@pytest.fixture(scope="module")
def default_objects():
    return objects.load_default_objects()


def test_default_set_has_eight_realistic_objects_with_symmetries(default_objects):
    assert [o.obj_id for o in default_objects] == list(range(1, 9))
    assert len({o.name for o in default_objects}) == 8
    for obj in default_objects:
        extents = obj.points.max(axis=0) - obj.points.min(axis=0)
        assert 0.05 <= extents.max() <= 0.20, (obj.name, extents)
        assert np.allclose((obj.points.max(axis=0) + obj.points.min(axis=0)) / 2, 0.0, atol=1e-6)
    symmetric = {o.name: len(o.symmetries) for o in default_objects if o.is_symmetric}
    assert symmetric == {"lego": 4, "jenga": 4, "torus": 630, "can": 630, "prism": 2}
    textured = [o.name for o in default_objects if objects.texture_path(o.mesh_path)]
    assert textured == ["duck", "domino"]


def test_declared_symmetries_map_each_shape_onto_itself(default_objects):
    infos = bop_models.read_models_info(objects.default_object_set_dir() / "models_info.json")
    for obj in default_objects:
        mesh = bop_models.read_ply_model(obj.mesh_path)
        assert objects.symmetry_error(mesh, infos[obj.obj_id], samples=100) < 0.01 * obj.diameter, obj.name


def test_textured_model_reads_back_with_its_texture(default_objects):
    duck = bop_models.read_ply_model(default_objects[0].mesh_path)
    assert duck.visual.kind == "texture"
    assert duck.visual.material.image.size == (256, 256)
    assert duck.visual.uv.shape == (len(duck.vertices), 2)


def test_select_objects_by_name_and_unknown_name(default_objects):
    assert [o.obj_id for o in objects.select_objects(default_objects, ["can", "duck"])] == [7, 1]
    with pytest.raises(ValueError, match=r"objects: \['teapot'\] not in the object set"):
        objects.select_objects(default_objects, ["duck", "teapot"])


@pytest.fixture
def models_dir(tmp_path):
    target = tmp_path / "models"
    shutil.copytree(objects.default_object_set_dir(), target)
    return target


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _box_file(tmp_path, size_mm=(40.0, 30.0, 20.0), name="box.stl"):
    path = tmp_path / name
    trimesh.creation.box(extents=size_mm).export(path)
    return path


def test_add_object_in_millimetres_round_trips(tmp_path, models_dir):
    mesh = _box_file(tmp_path)
    added = objects.add_object(mesh, "mm", "block", models_dir, symmetry="box", colour=(10, 20, 30))
    assert added.obj_id == 9 and added.name == "block"
    assert added.diameter == pytest.approx(np.sqrt(0.04**2 + 0.03**2 + 0.02**2))
    assert len(added.symmetries) == 4
    reloaded = bop_models.load_object_models(models_dir)
    assert [o.name for o in reloaded][-1] == "block"
    assert np.allclose(reloaded[-1].points.max(axis=0), [0.02, 0.015, 0.01])
    assert objects.main([str(_box_file(tmp_path, name="b2.stl")), "--unit", "cm", "--name", "block2",
                         "--models-dir", str(models_dir)]) == 0
    assert bop_models.load_object_models(models_dir)[-1].diameter == pytest.approx(10 * added.diameter)


@pytest.mark.parametrize(
    "make, unit, name, symmetry, message",
    [
        (lambda d: d / "missing.obj", "mm", "x", "none", "mesh file not found"),
        (lambda d: _write(d / "junk.obj", b"v 1 2\nf a b c\n"), "mm", "x", "none",
         "no vertices|not a readable mesh"),
        (lambda d: _write(d / "pts.ply", trimesh.PointCloud(np.random.rand(20, 3)).export(file_type="ply")),
         "mm", "x", "none", "no faces"),
        (lambda d: _box_file(d), "m", "x", "none", r"outside 0.005-5.0 m.*smaller unit"),
        (lambda d: _box_file(d), "mm", "duck", "none", "'duck' is already in"),
        (lambda d: _box_file(d), "mm", "x", "z-continuous", "symmetry 'z-continuous' moves the surface"),
        (lambda d: _box_file(d), "inch", "x", "none", "unit: expected one of"),
    ],
)
def test_add_object_bad_input_writes_nothing(tmp_path, models_dir, make, unit, name, symmetry, message):
    before = sorted(p.name for p in models_dir.iterdir())
    info_before = (models_dir / "models_info.json").read_text()
    with pytest.raises(ValueError, match=message):
        objects.add_object(make(tmp_path), unit, name, models_dir, symmetry=symmetry)
    assert sorted(p.name for p in models_dir.iterdir()) == before
    assert (models_dir / "models_info.json").read_text() == info_before


# ----------------------------------------------------------------------------- scenes and make-data

from hrpose_ros.data import make_data as make_data_module  # noqa: E402
from hrpose_ros.data.scenes import BinScene, look_at, render_bin_sequence  # noqa: E402
from hrpose_ros.geometry import project  # noqa: E402


def test_look_at_points_the_optical_axis_at_the_target():
    R, t = look_at([0.1, -0.2, 0.6], [0.0, 0.05, 0.0], [0.0, 1.0, 0.0])
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    target_cam = R @ np.array([0.0, 0.05, 0.0]) + t
    assert np.allclose(target_cam[:2], 0.0, atol=1e-12) and target_cam[2] > 0
    above = R @ np.array([0.0, 0.3, 0.0]) + t  # further along world +y: higher in the image
    assert above[1] / above[2] < 0


def test_bin_pile_repeats_an_object_and_stays_in_the_tray(default_objects):
    scene = BinScene(default_objects, np.random.default_rng(5))
    ids = [obj_id for obj_id, _, _ in scene.poses]
    assert len(ids) >= 5 and max(np.bincount(ids)) >= 2
    for _, R, t in scene.poses:
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert abs(t[0]) < 0.2 and abs(t[1]) < 0.15 and 0.0 < t[2] < 0.3  # resting in the tray


def test_bin_sequence_keeps_the_world_poses(default_objects):
    cameras = [look_at([x, 0.0, 0.6], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]) for x in (-0.1, 0.0, 0.1)]
    frames = render_bin_sequence(default_objects[:3], cameras, seed=2)
    assert len(frames) == 3
    for frame, (R_w2c, t_w2c) in zip(frames, cameras):
        assert np.array_equal(frame.R_w2c, R_w2c)
        world = [(R_w2c.T @ g.R, R_w2c.T @ (g.t - t_w2c)) for g in frame.instances]
        R0_w2c, t0_w2c = cameras[0]
        reference = [(R0_w2c.T @ g.R, R0_w2c.T @ (g.t - t0_w2c)) for g in frames[0].instances]
        for (R, t), (R0, t0) in zip(world, reference):
            assert np.allclose(R, R0, atol=1e-9) and np.allclose(t, t0, atol=1e-9)
        assert any(m.any() for m in frame.masks_visib)


def test_make_data_writes_a_bop_split_that_reads_back(tmp_path, default_objects):
    out = tmp_path / "ds" / "train"
    result = make_data_module.make_data(out, ["views", "cutpaste", "bin"], n=9, seed=3, progress=False)
    assert result.frames == {"views": 3, "cutpaste": 3, "bin": 3}
    assert result.contact_sheet.exists() and (tmp_path / "ds" / "models" / "models_info.json").exists()
    assert [p.name for p in tmp_path.joinpath("ds").iterdir() if p.name.startswith(".")] == []
    frames = bop_reader.read_split(out)
    assert len(frames) == 9 and {f.scene_id for f in frames} == {0, 1, 2}
    by_id = {o.obj_id: o for o in default_objects}
    bin_frames = [f for f in frames if f.scene_id == 2]
    assert all(f.R_w2c is not None for f in bin_frames)
    counts = np.bincount([i.obj_id for i in bin_frames[0].instances])
    assert counts.max() >= 2  # several instances of one object
    assert any(i.info.visib_fract < 1.0 for f in bin_frames for i in f.instances)  # occlusion
    for frame in frames:
        assert frame.camera.width == 640 and frame.camera.height == 480
        assert frame.read_rgb().shape == (480, 640, 3)
        depth = frame.read_depth()
        for inst in frame.instances:
            assert inst.info is not None and inst.mask_visib_path is not None
            visib = inst.read_mask_visib()
            assert visib.sum() == inst.info.px_count_visib
            if inst.info.visib_fract > 0.5:  # depth under the visible mask is the instance's own
                z = np.median(depth[visib])
                assert abs(z - inst.t[2]) < by_id[inst.obj_id].diameter
            if inst.info.visib_fract == 1.0:  # the projected model spans the mask's box
                uv = project(by_id[inst.obj_id].points, inst.R, inst.t, frame.camera.K)
                uv = np.clip(uv, 0, (639, 479))  # a box may run off the image edge
                x, y, w, h = inst.info.bbox_obj
                assert np.allclose(uv.min(axis=0), (x, y), atol=2.0)
                assert np.allclose(uv.max(axis=0), (x + w, y + h), atol=2.0)


def test_make_data_refuses_a_folder_with_data_and_unknown_objects(tmp_path):
    out = tmp_path / "train"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists with other data"):
        make_data_module.make_data(out, ["views"], n=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    with pytest.raises(ValueError, match=r"objects: \['teapot'\] not in the object set"):
        make_data_module.make_data(tmp_path / "new", ["views"], n=1, object_names=["teapot"], progress=False)
    with pytest.raises(ValueError, match="kind: expected one or more of"):
        make_data_module.make_data(tmp_path / "new", ["photos"], n=1, progress=False)
    assert make_data_module.main(["--kind", "views", "--n", "1", "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def test_same_seed_repeats_and_seeds_differ(tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_data_module.make_data(tmp_path / name, ["views"], n=2, seed=seed, depth=False, progress=False)
        runs[name] = (tmp_path / name / "000000" / "scene_gt.json").read_text()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
