"""The package is consistent with itself and with what colcon installed.

launch_ros cannot run on machines without ROS, so the launch files are checked
statically: every executable they start is a console script of setup.cfg, and every
config file they name exists. The install space checked is the one colcon built
(found through the ament index, as `ros2 run` would).
"""

import ast
import configparser
import importlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import hrpose_ros

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=")) for line in lines)


def launch_calls(path: Path, function: str) -> list[dict[str, object]]:
    """Return the literal keyword arguments of every call to ``function`` in a launch file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        name = getattr(node, "func", None) and getattr(node.func, "id", getattr(node.func, "attr", None))
        if isinstance(node, ast.Call) and name == function:
            calls.append({k.arg: ast.literal_eval(k.value) for k in node.keywords
                          if isinstance(k.value, ast.Constant)})
    return calls


def string_literals(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_package_xml_is_format_3_with_the_python_version():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "hrpose_ros"
    assert root.findtext("version") == hrpose_ros.__version__
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"


def test_there_is_a_pose_launch_file():
    assert REPO / "launch" / "pose.launch.py" in LAUNCH_FILES


def test_launch_files_start_only_declared_executables():
    scripts = console_scripts()
    for launch_file in LAUNCH_FILES:
        ours = [n for n in launch_calls(launch_file, "Node") if n.get("package") == "hrpose_ros"]
        assert ours, f"{launch_file.name} starts no hrpose_ros node"
        for node in ours:
            executable = node.get("executable")
            assert executable in scripts, \
                f"{launch_file.name}: {executable!r} is not a console script in setup.cfg ({sorted(scripts)})"


def test_config_files_named_by_launch_files_exist():
    for launch_file in LAUNCH_FILES:
        named = [s for s in string_literals(launch_file) if s.endswith((".yaml", ".rviz"))]
        assert named, f"{launch_file.name} names no config file"
        for name in named:
            assert (REPO / "config" / Path(name).name).is_file(), f"{launch_file.name}: no config/{name}"


@pytest.mark.parametrize("name,target", sorted(console_scripts().items()))
def test_console_script_target_exists(name, target):
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function, None)), f"{name}: {target} is not a function"


def install_prefix() -> Path:
    from ament_index_python.packages import get_package_prefix
    return Path(get_package_prefix("hrpose_ros"))


def test_colcon_installed_every_console_script_as_an_executable():
    lib = install_prefix() / "lib" / "hrpose_ros"
    for name in console_scripts():
        assert os.access(lib / name, os.X_OK), f"{lib / name} missing or not executable: rerun make bootstrap"


def test_colcon_installed_launch_config_and_interfaces():
    share = install_prefix() / "share" / "hrpose_ros"
    for path in [*LAUNCH_FILES, *(REPO / "config").iterdir(), *(REPO / "msg").iterdir()]:
        installed = share / path.parent.name / path.name
        assert installed.is_file(), f"{installed} was not installed: rerun make bootstrap"
        assert installed.read_bytes() == path.read_bytes(), f"{installed} is stale: rerun make bootstrap"
    site = install_prefix() / "lib" / "python3.11" / "site-packages" / "hrpose_ros"
    assert (site / "msg" / "_object_pose_array.py").is_file()
    assert (site / "types.py").is_file(), "the Python package was not installed next to the interfaces"


def test_generated_messages_have_the_documented_fields():
    from hrpose_ros.msg import ObjectPose, ObjectPoseArray
    assert set(ObjectPose.get_fields_and_field_types()) == {
        "class_name", "class_id", "instance_id", "score", "pose", "keypoints_2d", "keypoint_ids",
        "reprojection_error", "refined", "depth_residual"}
    assert ObjectPoseArray.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "objects": "sequence<hrpose_ros/ObjectPose>"}
