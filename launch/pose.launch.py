"""Start hrpose_ros pose_node on a camera's image + camera_info, and optionally RViz.

    ros2 launch hrpose_ros pose.launch.py camera_namespace:=/camera image_topic:=image_raw rviz:=true
    ros2 launch hrpose_ros pose.launch.py estimator:=crops backend:=torch

pose_node subscribes <camera_namespace>/<image_topic> and <camera_namespace>/<camera_info_topic>,
and <camera_namespace>/<depth_topic> when the parameter use_depth is true.
Parameters come from params_file (default config/pose_node.yaml). The arguments model, estimator,
backend, device and precision override it when given; left empty (their default) they pass
nothing, so the params file's values hold and the defaults live in one place (the YAML, which
lists PoseNodeConfig's). use_sim_time is passed as given. For rectified input (image_rect*) set
image_is_rectified: true in the params file.

fastdds_profile (default: FASTDDS_DEFAULT_PROFILES_FILE if set, else the shipped
config/fastdds_profile.xml) is set for every process this launch starts, the camera driver
included when it is launched alongside: Fast DDS's default transports lose 640x480 images on
best-effort links.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# Launch argument -> the pose_node parameter it overrides when not empty.
PARAMETER_OVERRIDES = {
    "model": "model_path",
    "estimator": "estimator",
    "backend": "backend",
    "device": "device",
    "precision": "precision",
}


def pose_node(context):
    """Return pose_node with params_file, then the override arguments that were given."""
    overrides = {}
    for argument, parameter in PARAMETER_OVERRIDES.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = ParameterValue(value, value_type=str)
    overrides["use_sim_time"] = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    camera = LaunchConfiguration("camera_namespace")
    return [Node(
        package="hrpose_ros",
        executable="pose_node",
        name="pose_node",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("image", [camera, "/", LaunchConfiguration("image_topic")]),
            ("camera_info", [camera, "/", LaunchConfiguration("camera_info_topic")]),
            ("depth", [camera, "/", LaunchConfiguration("depth_topic")]),
        ],
    )]


def generate_launch_description():
    keep = " (empty = the params file's value)"
    shipped_profile = PathJoinSubstitution([FindPackageShare("hrpose_ros"), "config", "fastdds_profile.xml"])
    arguments = [
        DeclareLaunchArgument("camera_namespace", default_value="/camera",
                              description="Namespace of the camera's topics"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="Image topic in the camera namespace (e.g. image_rect_color)"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info",
                              description="CameraInfo topic in the camera namespace"),
        DeclareLaunchArgument("depth_topic", default_value="aligned_depth_to_color/image_raw",
                              description="Depth image aligned to the colour image, in the camera "
                                          "namespace (read only with the parameter use_depth: true)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("hrpose_ros"), "config",
                                                                  "pose_node.yaml"]),
                              description="pose_node parameters (YAML)"),
        DeclareLaunchArgument("model", default_value="",
                              description="Weights file (HRPose .pt/.onnx or a crops .pt)" + keep),
        DeclareLaunchArgument("estimator", default_value="",
                              description="auto (the weights file's) | hrpose | crops" + keep),
        DeclareLaunchArgument("backend", default_value="", description="onnxruntime | torch" + keep),
        DeclareLaunchArgument("device", default_value="",
                              description="auto (a GPU if the backend can use one, else cpu) | cpu | cuda | "
                                          "cuda:N" + keep),
        DeclareLaunchArgument("precision", default_value="",
                              description="fp32 | bf16 (torch) | int8 (onnxruntime) | auto" + keep),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                                                default_value=shipped_profile),
                              description="Fast DDS XML profile for the processes of this launch"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Start RViz with config/bin_picking.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="camera_color_optical_frame",
                              description="RViz fixed frame: the camera's optical frame or a parent of it"),
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([FindPackageShare("hrpose_ros"), "config", "bin_picking.rviz"]),
                   "-f", LaunchConfiguration("fixed_frame")],
        parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    # Both names: Fast DDS 3 (Kilted) reads the first, Fast DDS 2 (Jazzy) the second.
    profile = [SetEnvironmentVariable(name, LaunchConfiguration("fastdds_profile"))
               for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")]
    return LaunchDescription([*arguments, *profile, OpaqueFunction(function=pose_node), rviz])
