"""Launch the safnet_segment node (and optionally RViz) with the package's parameter file.

    ros2 launch safnet_ros segment.launch.py
    ros2 launch safnet_ros segment.launch.py namespace:=robot1 model:=/path/to/model.pt device:=cuda \
        use_sim_time:=true rviz:=true
    ros2 launch safnet_ros segment.launch.py cloud_topic:=/lidar/points rgb_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/aligned_depth_to_color/camera_info \
        fixed_frame:=odom log_level:=debug respawn:=true
    ros2 launch safnet_ros segment.launch.py params_file:=/path/to/my_segment.yaml

Arguments given here override the same keys of ``params_file`` (model, device, the four topics and
fixed_frame only when not empty; ``params_file`` is keyed ``/**``, so it reaches the node under any
namespace). ``namespace`` puts the node (and RViz, whose display topics are rewritten to follow) under that
namespace; an including launch file's ``PushRosNamespace`` works the same way. The input topics are the
node's ``cloud_topic``, ``rgb_topic``, ``depth_topic`` and ``camera_info_topic`` parameters (absolute
names, or relative to the namespace). ``log_level`` is the node's (debug, info, warn, error, fatal);
``respawn:=true`` restarts the node when it dies (``respawn_delay`` seconds later). The node is a
lifecycle node; ``autostart:=false`` leaves it unconfigured for a lifecycle manager
(launch/segment_nav2.launch.py runs it under Nav2's lifecycle manager). The RViz configuration rewritten
for a namespace is a temporary file, removed when the launch shuts down.
"""
from __future__ import annotations

import atexit
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "safnet_ros"
#: Launch arguments that override the parameter of the same name when not empty.
TOPIC_ARGUMENTS = ("cloud_topic", "rgb_topic", "depth_topic", "camera_info_topic", "fixed_frame")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def _namespace(context) -> str:
    """The ``namespace`` argument, relative ('' for none); launch_ros puts it under a pushed namespace."""
    return LaunchConfiguration("namespace").perform(context).strip().strip("/")


def _full_namespace(context) -> str:
    """The namespace the nodes end up in: an including file's PushRosNamespace, then ``namespace`` ('/a/b')."""
    pushed = str(context.launch_configurations.get("ros_namespace", "") or "").strip("/")
    parts = [part for part in (pushed, _namespace(context)) if part]
    return "/" + "/".join(parts) if parts else ""


def _log_level_arguments(context, level: str) -> list[str]:
    """``--log-level`` for the node's logger, which rcl names after the node's full namespace
    ('robot1.safnet_segment' under /robot1: 'safnet_segment:=' alone does not reach it), and for
    'safnet_segment' (the node program's own start-up lines)."""
    namespace = _full_namespace(context).strip("/").replace("/", ".")
    names = dict.fromkeys([f"{namespace}.safnet_segment" if namespace else "safnet_segment", "safnet_segment"])
    return ["--ros-args", *[arg for name in names for arg in ("--log-level", f"{name}:={level}")]]


def _segment_node(context, *args, **kwargs):
    """The node with params_file plus the non-empty overrides (evaluated at launch time)."""
    overrides = {
        "use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1"),
        "autostart": LaunchConfiguration("autostart").perform(context).lower() in ("true", "1"),
    }
    for name in ("model", "device") + TOPIC_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    level = LaunchConfiguration("log_level").perform(context).strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return [
        Node(
            package=PACKAGE,
            executable="segment_node",
            name="safnet_segment",
            namespace=_namespace(context),
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
            arguments=_log_level_arguments(context, level),
            respawn=_flag(context, "respawn"),
            respawn_delay=float(LaunchConfiguration("respawn_delay").perform(context)),
        )
    ]


def _flag(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1")


def remove_file(path: str) -> None:
    """Delete a temporary file of this launch (gone already is fine)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def rviz_config_for_namespace(text: str, namespace: str) -> str:
    """config/safnet.rviz with its /safnet_segment/... display topics moved under ``namespace`` ('/robot1')."""
    if not namespace:
        return text
    return text.replace("Value: /safnet_segment/", f"Value: {namespace}/safnet_segment/")


def _rviz(context, *args, **kwargs):
    """RViz with config/safnet.rviz, its topics following ``namespace`` (a rewritten copy in a temp file)."""
    share = get_package_share_directory(PACKAGE)
    config = os.path.join(share, "config", "safnet.rviz")
    namespace = _full_namespace(context)
    if namespace:
        with open(config, encoding="utf-8") as fh:
            text = rviz_config_for_namespace(fh.read(), namespace)
        fd, config = tempfile.mkstemp(prefix="safnet_", suffix=".rviz")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        temp = config
        atexit.register(remove_file, temp)  # also when the launch process ends without a shutdown event
        cleanup = [RegisterEventHandler(OnShutdown(on_shutdown=lambda event, ctx: remove_file(temp)))]
    else:
        cleanup = []
    sim = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")
    return cleanup + [
        Node(
            package="rviz2",
            executable="rviz2",
            name="safnet_rviz",
            namespace=_namespace(context),
            arguments=["-d", config],
            parameters=[{"use_sim_time": sim}],
            output="log",
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "segment.yaml"),
            description="YAML file with '/**: ros__parameters:' (or keyed by the node's full name)",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the node and RViz (e.g. robot1); empty = none (or the including file's)",
        ),
        DeclareLaunchArgument(
            "autostart", default_value="true",
            description="Configure and activate the lifecycle node by itself; false = wait for a lifecycle manager",
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
        *[DeclareLaunchArgument(name, default_value="", description=f"The node's {name} parameter; empty = the "
                                "value in params_file") for name in TOPIC_ARGUMENTS],
        DeclareLaunchArgument("log_level", default_value="info", description="The node's log level: "
                              + " | ".join(LOG_LEVELS)),
        DeclareLaunchArgument("respawn", default_value="false", description="Restart the node when it exits"),
        DeclareLaunchArgument("respawn_delay", default_value="2.0", description="Seconds before a respawn"),
        OpaqueFunction(function=_segment_node),
        OpaqueFunction(function=_rviz, condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
