"""Launch the safnet_segment node (and optionally RViz) with the package's parameter file.

    ros2 launch safnet_ros segment.launch.py
    ros2 launch safnet_ros segment.launch.py model:=/path/to/model.pt device:=cuda use_sim_time:=true rviz:=true
    ros2 launch safnet_ros segment.launch.py params_file:=/path/to/my_segment.yaml

Arguments given here override the same keys of ``params_file`` (model and
device are only applied when not empty). Remap the inputs at the node's
``~/points``, ``~/rgb/image``, ``~/depth/image`` and ``~/camera_info`` (or set the
*_topic parameters in the YAML file).
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "safnet_ros"


def _segment_node(context, *args, **kwargs):
    """The node with params_file plus the non-empty overrides (evaluated at launch time)."""
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")}
    for name in ("model", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    return [
        Node(
            package=PACKAGE,
            executable="segment_node",
            name="safnet_segment",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "segment.yaml"),
            description="YAML file with 'safnet_segment: ros__parameters:'",
        ),
        DeclareLaunchArgument(
            "model", default_value="",
            description="Model checkpoint file; empty = the value in params_file (there '' = the shipped model)",
        ),
        DeclareLaunchArgument(
            "device", default_value="",
            description="auto | cpu | cuda[:N]; empty = the value in params_file",
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (bag replay with --clock)",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start RViz with config/safnet.rviz"),
        OpaqueFunction(function=_segment_node),
        Node(
            package="rviz2",
            executable="rviz2",
            name="safnet_rviz",
            arguments=["-d", os.path.join(share, "config", "safnet.rviz")],
            parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
            condition=IfCondition(LaunchConfiguration("rviz")),
            output="log",
        ),
    ])
