"""safnet_segment under Nav2's lifecycle manager: the node waits unconfigured, the manager brings it up.

    ros2 launch safnet_ros segment_nav2.launch.py
    ros2 launch safnet_ros segment_nav2.launch.py namespace:=robot1 cloud_topic:=/lidar/points

The node's own ``autostart`` must be false here: with both on, the node would configure and activate
itself in its constructor and the manager's configure would then be refused (a transition from the
wrong state), so Nav2 would report the bring-up as failed. The manager (``nav2_lifecycle_manager``,
``lifecycle_manager`` executable) takes config/nav2_lifecycle.yaml: ``node_names: [safnet_segment]``,
``autostart: true`` (the manager's, meaning: configure and activate the listed nodes at start) and
``bond_timeout: 0.0``, because safnet_segment does not create the bond Nav2's own servers do (0
turns bond checking off; the manager is still told at once when the node exits cleanly). To manage
safnet_segment from your existing Nav2 bring-up instead, add ``safnet_segment`` to that manager's
``node_names`` and run segment.launch.py with ``autostart:=false`` (but note that Nav2's default
``bond_timeout`` of 4 s then takes the whole stack down, as safnet_segment makes no bond: use a
manager of its own, as here). Every other argument is passed on to segment.launch.py.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "safnet_ros"
#: Arguments passed on to segment.launch.py as given.
PASSED_ON = ("params_file", "namespace", "model", "device", "use_sim_time", "rviz", "cloud_topic", "rgb_topic",
             "depth_topic", "camera_info_topic", "fixed_frame", "log_level", "respawn")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    segment = os.path.join(share, "launch", "segment.launch.py")
    passed = {name: LaunchConfiguration(name) for name in PASSED_ON}
    return LaunchDescription([
        DeclareLaunchArgument("manager_params", default_value=os.path.join(share, "config", "nav2_lifecycle.yaml"),
                              description="Parameters of the lifecycle manager (node_names, autostart, bond_timeout)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment.yaml")),
        *[DeclareLaunchArgument(name, default_value=default) for name, default in (
            ("namespace", ""), ("model", ""), ("device", ""), ("use_sim_time", "false"), ("rviz", "false"),
            ("cloud_topic", ""), ("rgb_topic", ""), ("depth_topic", ""), ("camera_info_topic", ""),
            ("fixed_frame", ""), ("log_level", "info"), ("respawn", "false"))],
        IncludeLaunchDescription(PythonLaunchDescriptionSource(segment),
                                 launch_arguments={**passed, "autostart": "false"}.items()),
        Node(
            package="nav2_lifecycle_manager",
            executable="lifecycle_manager",
            name="lifecycle_manager_safnet",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("manager_params"),
                        {"use_sim_time": LaunchConfiguration("use_sim_time")}],
        ),
    ])
