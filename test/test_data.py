"""The default object set, adding users' meshes, synthetic scenes and the make-data command."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import trimesh

from hrpose_ros import bop
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
    infos = bop.read_models_info(objects.default_object_set_dir() / "models_info.json")
    for obj in default_objects:
        mesh = bop.read_ply_model(obj.mesh_path)
        assert objects.symmetry_error(mesh, infos[obj.obj_id], samples=100) < 0.01 * obj.diameter, obj.name


def test_textured_model_reads_back_with_its_texture(default_objects):
    duck = bop.read_ply_model(default_objects[0].mesh_path)
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
    reloaded = bop.load_object_models(models_dir)
    assert [o.name for o in reloaded][-1] == "block"
    assert np.allclose(reloaded[-1].points.max(axis=0), [0.02, 0.015, 0.01])
    assert objects.main([str(_box_file(tmp_path, name="b2.stl")), "--unit", "cm", "--name", "block2",
                         "--models-dir", str(models_dir)]) == 0
    assert bop.load_object_models(models_dir)[-1].diameter == pytest.approx(10 * added.diameter)


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
