"""Start hrpose_ros pose_node on a camera's image + camera_info, and optionally RViz.

    ros2 launch hrpose_ros pose.launch.py camera_namespace:=/camera image_topic:=image_raw rviz:=true

pose_node subscribes <camera_namespace>/<image_topic> and <camera_namespace>/<camera_info_topic>.
Parameters come from params_file (default config/pose_node.yaml); the arguments model,
backend, device, precision and use_sim_time override it. For rectified input (image_rect*) set
image_is_rectified: true in the params file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    camera = LaunchConfiguration("camera_namespace")
    arguments = [
        DeclareLaunchArgument("camera_namespace", default_value="/camera",
                              description="Namespace of the camera's topics"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="Image topic in the camera namespace (e.g. image_rect_color)"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info",
                              description="CameraInfo topic in the camera namespace"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("hrpose_ros"), "config",
                                                                  "pose_node.yaml"]),
                              description="pose_node parameters (YAML)"),
        DeclareLaunchArgument("model", default_value="",
                              description="Weights file (.pt or .onnx); empty = shipped default"),
        DeclareLaunchArgument("backend", default_value="onnxruntime", description="onnxruntime | torch"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="auto (a GPU if the backend can use one, else cpu) | cpu | cuda | cuda:N"),
        DeclareLaunchArgument("precision", default_value="fp32",
                              description="fp32 | bf16 (torch) | int8 (onnxruntime) | auto"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Start RViz with config/bin_picking.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="camera_color_optical_frame",
                              description="RViz fixed frame: the camera's optical frame or a parent of it"),
    ]
    pose_node = Node(
        package="hrpose_ros",
        executable="pose_node",
        name="pose_node",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "precision": ParameterValue(LaunchConfiguration("precision"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("image", [camera, "/", LaunchConfiguration("image_topic")]),
            ("camera_info", [camera, "/", LaunchConfiguration("camera_info_topic")]),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([FindPackageShare("hrpose_ros"), "config", "bin_picking.rviz"]),
                   "-f", LaunchConfiguration("fixed_frame")],
        parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, pose_node, rviz])
