"""Every parameter of the ``safnet_segment`` node, in one table (the semantic map's included; no rclpy).

The node declares its parameters from :data:`PARAMETERS` and checks every value with :func:`check_value`;
``config/segment.yaml`` and the table of ``docs/ros_node.md`` are generated from it (a test fails when they
drift): ``python -m safnet_ros.ros.params --write``. Adding a parameter is one entry here.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from safnet_ros.data.labels import LABEL_SPACES
from safnet_ros.errors import ConfigError

DEFAULT_TF_TOPIC = "/safnet/transforms"
DEFAULT_TF_STATIC_TOPIC = "/safnet/transforms_static"
#: Values of the ``probabilities`` parameter (fields added to ~/labeled_cloud; docs/ros_node.md).
PROBABILITY_MODES = ("none", "top3", "all")


class ParameterError(ConfigError):
    """A node parameter has a value of the wrong type or out of its range (``main`` exits with status 2)."""


@dataclass(frozen=True)
class Param:
    """One node parameter.

    low/high: inclusive bounds of a number (``low_open``: low itself is refused);
    choices: the allowed strings; runtime: may change while the node runs
    (``ros2 param set``); the others are read-only after start-up.
    """

    name: str
    default: Any
    description: str
    runtime: bool = False
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[tuple[str, ...]] = None

    @property
    def type(self) -> type:
        return type(self.default)

    def range_text(self) -> str:
        """``(0, 10]``, ``0..16``, ``one of a | b`` or ''."""
        if self.choices:
            return " | ".join(self.choices)
        if self.low is None:
            return ""
        lo, hi = (str(int(v)) if self.type is int else f"{v:g}" for v in (self.low, self.high))
        return f"({lo}, {hi}]" if self.low_open else f"{lo}..{hi}"


P = Param
#: Every parameter of the node, in the order of config/segment.yaml.
PARAMETERS: tuple[Param, ...] = (
    P("fixed_frame", "map", "Frame the views and clouds are brought into (REP-105 'map'); camera and cloud poses "
      "are looked up in TF at each message's stamp."),
    P("cameras", [], "Names of several RGB-D cameras feeding one view buffer ([] = the one camera of rgb_topic, "
      "depth_topic and camera_info_topic). Each name N (letters, digits, _) gets its own synchroniser and the "
      "parameters cameras.N.rgb_topic, cameras.N.depth_topic and cameras.N.camera_info_topic (defaults "
      "~/N/rgb/image, ~/N/depth/image, ~/N/camera_info); see 'Several cameras' in docs/ros_node.md."),
    P("cloud_topic", "~/points", "Input sensor_msgs/PointCloud2 (any frame with a TF path to fixed_frame)."),
    P("rgb_topic", "~/rgb/image", "Input colour sensor_msgs/Image, rgb8 or bgr8 (also rgba8/bgra8/mono8)."),
    P("depth_topic", "~/depth/image", "Input depth sensor_msgs/Image registered to the colour image, 16UC1 "
      "millimetres or 32FC1 metres; its frame_id is the camera optical frame."),
    P("camera_info_topic", "~/camera_info", "sensor_msgs/CameraInfo of the depth image (K is rescaled when its "
      "width/height differ from the depth image's)."),
    P("image_transport", "raw", "How the images arrive (image_transport's names): raw = sensor_msgs/Image on "
      "rgb_topic and depth_topic; compressed = sensor_msgs/CompressedImage on <rgb_topic>/compressed (JPEG or "
      "PNG) and <depth_topic>/compressedDepth (16UC1/32FC1 PNG), decoded only for frames kept as views. For "
      "every camera of 'cameras' alike.", choices=("raw", "compressed")),
    P("model", "", "Model checkpoint file; '' = the shipped default model models/safnet_lite_synth.pt "
      "(docs/model_card.md; an untrained lite model with a loud warning where it is missing)."),
    P("device", "auto", "auto | cpu | cuda[:N]. auto = CUDA when present, else the CPU (one log line); cuda "
      "requested but absent = the CPU with a warning."),
    P("preset", "", "Expected model preset (lite | paper); '' = whatever the checkpoint holds. A checkpoint of "
      "another preset is refused."),
    P("precision", "auto", "Inference precision: auto = bf16 on a CUDA device with bf16, fp32 elsewhere (CPU "
      "timings: docs/benchmarks.md) | fp32 | bf16 (torch.autocast) | fp16 (CUDA only). The startup log names "
      "the one in use.", choices=("auto", "fp32", "bf16", "fp16")),
    P("outside_views", "3d", "Points no view covers (beyond the views plus crop_margin: a 360-degree LiDAR "
      "scan): 3d = labelled by the 3D branch alone, similarity 0 | ignore = published with label 255 (not "
      "labelled).", choices=("ignore", "3d")),
    P("batch_points", 60000, "Most points per batched model forward: all chunks of a cloud go through the "
      "model in padded batches of at most this many points (fewer = less memory, more forwards).",
      low=1, high=100000000),
    P("num_views", 3, "Views chosen per chunk by greedy coverage from the buffer (0 = 3D only).", low=0, high=16),
    P("chunk_size", 1.5, "Chunk side in x and y, metres (the paper's 1.5).", low=0.2, high=20.0),
    P("chunk_stride", 1.5, "Chunk stride, metres. Offline evaluation uses 0.5 (each point voted ~9 times); the "
      "node defaults to chunk_size (no overlap) for latency.", low=0.1, high=20.0),
    P("max_points", 100000, "Clouds with more points are voxel-downsampled (voxel grown from voxel_size) with a "
      "warning; labels are copied back to every point. 0 = no limit.", low=0, high=100000000),
    P("voxel_size", 0.02, "Starting voxel edge for the max_points downsampling, metres.", low=0.001, high=1.0),
    P("crop_margin", 0.3, "Margin around the points the views cover that is still segmented, metres; points "
      "beyond are published with label 255 (not segmented).", low=0.0, high=100.0),
    P("sync_queue_size", 10, "Queue size of the approximate time synchronizer (rgb, depth, camera_info).",
      low=1, high=1000),
    P("sync_slop", 0.05, "A (rgb, depth, camera_info) set is matched when its stamps spread less than this, "
      "seconds (message_filters: max - min < slop, so 0 would never match and is refused).",
      low=0.0001, high=10.0),
    P("keyframe_min_translation", 0.05, "A view is buffered only if the camera moved at least this far (metres) "
      "or turned keyframe_min_rotation_deg since the last kept view (0 = criterion off).", runtime=True,
      low=0.0, high=100.0),
    P("keyframe_min_rotation_deg", 5.0, "Rotation (degrees) since the last kept view that makes a keyframe "
      "(0 = criterion off).", runtime=True, low=0.0, high=180.0),
    P("keyframe_min_interval", 0.2, "Minimum time between kept views, seconds (message stamps); a frame sooner "
      "than this is dropped before it is decoded.", runtime=True, low=0.0, high=3600.0),
    P("buffer_max_views", 30, "Most views kept; the oldest is evicted first.", runtime=True, low=1, high=10000),
    P("buffer_max_mb", 256.0, "Memory bound of the buffered views' arrays, MiB (network-size views of 160x120 "
      "take ~0.13 MiB each).", runtime=True, low=0.1, high=100000.0),
    P("time_jump_tolerance", 1.0, "Time went back (bag loop) when a frame or cloud is stamped this many seconds "
      "before the newest one of the same input, or the ROS clock (/clock under use_sim_time) jumps back this "
      "far: the view buffer and pending frames are cleared (the TF buffer clears itself on a clock jump). "
      "Inputs lagging each other are not jumps.", runtime=True, low=0.0, high=3600.0),
    P("tf_timeout", 0.1, "How long the worker waits for a cloud's transform (wall clock), and how far the "
      "transforms may run past a frame's stamp (their stamps) before a frame still without its transform is "
      "skipped, seconds (callbacks never wait); a camera frame TF does not know at all is skipped after 10 x "
      "tf_timeout (at least 3 s, one Fast DDS heartbeat: a /tf sample lost in transport holds back later ones).", runtime=True, low=0.0, high=10.0),
    P("tf_fallback_topic", DEFAULT_TF_TOPIC, "Last resort without tf2_ros and tf2_msgs only: "
      "geometry_msgs/TransformStamped topic feeding the drop-in TF buffer (dynamic transforms)."),
    P("tf_fallback_static_topic", DEFAULT_TF_STATIC_TOPIC, "Last resort without tf2_ros and tf2_msgs only: "
      "transient-local TransformStamped topic of static transforms."),
    P("publish_markers", True, "Publish ~/similarity_markers (skipped anyway while nobody subscribes).",
      runtime=True),
    P("similarity_marker_source", "s", "Which similarity colours the marker points.", runtime=True,
      choices=("s", "s_geo", "s_con")),
    P("marker_stride", 4, "Every n-th segmented point becomes a marker point.", runtime=True, low=1, high=1000000),
    P("frustum_depth", 0.4, "Depth of the drawn view frustums, metres.", runtime=True, low=0.01, high=100.0),
    P("diagnostics_period", 1.0, "Seconds between /diagnostics messages (steady clock).", low=0.05, high=3600.0),
    P("threads", 0, "torch threads of the inference worker: 0 = for each cloud, the cores that other processes "
      "left idle since the previous one (1 at least, torch's default at most; Linux, elsewhere torch's default): "
      "a team of threads waits at every barrier for the one the machine does not schedule | N = always N.",
      runtime=True, low=0, high=1024),
    P("gil_switch_interval", 0.0005, "CPython's thread switch interval for this process, seconds "
      "(sys.setswitchinterval; 0 = leave Python's 0.005). Shorter lets the inference worker win the GIL back "
      "from the callback threads sooner after each torch op, which bounds a cloud's latency under load.",
      low=0.0, high=0.1),
    P("warm_up", True, "Segment a small synthetic scene once at start-up, before subscribing, so the first cloud "
      "does not pay one-time initialisation (kernel selection, lazy imports) while sensor frames queue up."),
    P("autostart", True, "Configure and activate the lifecycle node by itself at start-up (ros2 run, the launch "
      "file); false = wait in 'unconfigured' for a lifecycle manager (ros2 lifecycle set)."),
    # --- the semantic map (ros/semantic_map_component.py) and the labelled cloud's probability fields
    P("input_timeout", 5.0, "/diagnostics goes to WARN, naming the input, when no cloud, no synchronised RGB-D "
      "set or no transform has arrived for this many seconds since activation or its last arrival (0 = off).",
      low=0.0, high=3600.0),
    P("label_ids", "index", "Id space of the labels on ~/labeled_cloud and in ~/label_info: index (class "
      "indices 0..19, 255 = not labelled) | nyu40 (the classes' nyu40 ids, 0 = not labelled, as in the saved "
      "PLY files).", choices=LABEL_SPACES),
    P("map_enable", True, "Fuse every labelled cloud's per-point class probabilities into a semantic voxel map "
      "in fixed_frame, published on ~/semantic_map, with the ~/save_map and ~/clear_map services."),
    P("map_voxel_size", 0.04, "Voxel edge of the semantic map, metres.", low=0.0, high=10.0, low_open=True),
    P("map_max_voxels", 500000, "Most voxels the map keeps; beyond it the voxels farthest from the latest "
      "cloud's sensor position are evicted (down to 90 %). With its index ~200 bytes a voxel: "
      "500000 voxels ~ 97 MiB.",
      low=1, high=1000000000),
    P("map_fusion", "count", "How a voxel fuses the probabilities of its points: count (probability sums: label "
      "= argmax, confidence = mean probability of the winner) | log (log-probability sums, clamped: confidence "
      "= posterior of the winner).", choices=("count", "log")),
    P("map_smoothing", 1.0, "Weight of a voxel's neighbourhood at read-out: its label and confidence come from "
      "its own distribution blended with the mean of the voxels within about map_smoothing_cell (0 = each "
      "voxel alone).", low=0.0, high=100.0),
    P("map_smoothing_cell", 0.16, "Neighbourhood of map_smoothing: coarse-cell edge, metres (at least 2 voxels "
      "are used).", low=0.0, high=100.0, low_open=True),
    P("map_publish_rate", 1.0, "Hz at which ~/semantic_map is published when the map changed (0 = never; "
      "transient local, so a late subscriber gets the latest).", low=0.0, high=50.0),
    P("map_directory", "", "Folder of the node's map files, fixed at start ('' = $ROS_HOME/safnet_maps, else "
      "~/.ros/safnet_maps; '~' expanded, made absolute). ~/save_map and ~/load_map read and write only inside "
      "it (docs/reliability.md, Security)."),
    P("map_save_path", "safnet_map.ply", "Map file ~/save_map writes and ~/load_map reads: a .ply name inside "
      "map_directory (a path leading outside it is refused; an existing file is overwritten only when it is a "
      "safnet map; written atomically).", runtime=True),
    P("map_file", "", "A saved map PLY loaded at configure ('' = start empty; any path, '~' expanded); it must "
      "have been saved in fixed_frame with map_voxel_size."),
    P("map_save_on_shutdown", False, "Save the map to map_save_path when the node cleans up or shuts down "
      "(Ctrl-C included), when it holds any voxel."),
    P("probabilities", "none", "Per-point class probabilities added to ~/labeled_cloud: none | top3 "
      "(p_label1..3 uint16 + p1..3 float32) | all (one float32 field per class, p_wall .. p_otherfurniture). "
      "Layout in docs/ros_node.md.", choices=PROBABILITY_MODES),
)
del P

SPECS: dict[str, Param] = {spec.name: spec for spec in PARAMETERS}

_TYPE_NAMES = {bool: "a bool (true/false)", int: "an integer", float: "a double (write 2.0, not 2)",
               str: "a string", list: "a list of strings (e.g. ['front', 'back'])"}
#: A camera name of the ``cameras`` parameter: it becomes part of parameter names and topics.
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: The topic parameters each camera of ``cameras`` gets: suffix -> default topic (``{name}`` = its name).
CAMERA_TOPICS: dict[str, str] = {"rgb_topic": "~/{name}/rgb/image", "depth_topic": "~/{name}/depth/image",
                                 "camera_info_topic": "~/{name}/camera_info"}


def camera_parameters(cameras: Sequence[str]) -> dict[str, str]:
    """``cameras.N.<topic>`` parameter name -> default topic, for each camera name N of ``cameras``."""
    return {f"cameras.{name}.{suffix}": default.format(name=name)
            for name in cameras for suffix, default in CAMERA_TOPICS.items()}


def _check_camera_names(spec: Param, value: list) -> None:
    if not all(isinstance(name, str) for name in value):
        raise ParameterError(f"parameter '{spec.name}' = {value!r}: {_TYPE_NAMES[list]}")
    for name in value:
        if not CAMERA_NAME.fullmatch(name):
            raise ParameterError(f"parameter '{spec.name}': camera name {name!r} must start with a letter and hold "
                                 "only letters, digits and _")
    if len(set(value)) != len(value):
        raise ParameterError(f"parameter '{spec.name}' = {value!r} names a camera twice")


def check_value(spec: Param, value: Any) -> Any:
    """``value`` when it suits ``spec``; else ParameterError naming the parameter, its value and what is allowed."""
    if type(value) is not spec.type:  # bool is not an int here, nor an int a double
        raise ParameterError(f"parameter '{spec.name}' = {value!r} is of type {type(value).__name__}; it must be "
                             f"{_TYPE_NAMES[spec.type]}")
    if spec.type is list:
        _check_camera_names(spec, value)
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(f"parameter '{spec.name}' = {value!r} is not allowed: one of {spec.range_text()}")
    if spec.low is not None:
        below = value <= spec.low if spec.low_open else value < spec.low
        if (isinstance(value, float) and not math.isfinite(value)) or below or value > spec.high:
            raise ParameterError(f"parameter '{spec.name}' = {value!r} is out of range: allowed {spec.range_text()}")
    return value


# ------------------------------------------------------------------ generated files

YAML_HEADER = """\
# GENERATED from safnet_ros/ros/params.py by `python -m safnet_ros.ros.params --write`: edit the table there.
# Parameters of the safnet_segment node (safnet_ros). Every parameter is listed with its default.
# Load with: ros2 run safnet_ros segment_node --ros-args --params-file config/segment.yaml
#        or: ros2 launch safnet_ros segment.launch.py params_file:=...
# [runtime] parameters can be changed while the node runs (ros2 param set); the others need a restart.
# use_sim_time (built in to every node) is set by the launch file's use_sim_time argument.
# Keyed '/**' (any namespace, any node name): the file reaches the node under -r __ns:=/robot1, a launch
# namespace (PushRosNamespace) or -r __node:=other_name alike. To give two nodes of one process different
# values, key them by their full names instead (e.g. '/robot1/safnet_segment').
/**:
  ros__parameters:
"""
DOC_BEGIN, DOC_END = "<!-- params:begin -->", "<!-- params:end -->"


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def _full_description(spec: Param) -> str:
    extra = []
    if spec.choices:
        extra.append(f"One of {spec.range_text()}.")
    elif spec.low is not None:
        extra.append(f"Range {spec.range_text()}.")
    if spec.runtime:
        extra.append("[runtime]")
    return " ".join([spec.description, *extra])


def to_yaml() -> str:
    """config/segment.yaml: every parameter with its default, a comment above each."""
    out = [YAML_HEADER.rstrip("\n")]
    for spec in PARAMETERS:
        out += textwrap.wrap(" ".join(_full_description(spec).split()), 110, initial_indent="    # ",
                             subsequent_indent="    # ", break_long_words=False, break_on_hyphens=False)
        out.append(f"    {spec.name}: {_yaml_value(spec.default)}")
    return "\n".join(out) + "\n"


def to_markdown() -> str:
    """The parameter table of docs/ros_node.md (between its params markers)."""
    rows = ["| name | default | run time | range | meaning |", "|---|---|---|---|---|"]
    for spec in PARAMETERS:
        default = _yaml_value(spec.default).replace('"', "'")
        rng = spec.range_text().replace("|", "&#124;")
        rows.append(f"| `{spec.name}` | `{default}` | {'yes' if spec.runtime else 'no'} | {rng} | "
                    f"{spec.description.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def doc_with_table(doc: str) -> str:
    """``doc`` (docs/ros_node.md's text) with the table between the markers replaced by :func:`to_markdown`."""
    pattern = re.compile(re.escape(DOC_BEGIN) + r".*?" + re.escape(DOC_END), re.S)
    if not pattern.search(doc):
        raise ConfigError(f"docs/ros_node.md has no {DOC_BEGIN} ... {DOC_END} markers")
    return pattern.sub(lambda _: f"{DOC_BEGIN}\n{to_markdown()}{DOC_END}", doc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m safnet_ros.ros.params --yaml | --markdown | --write [--repo DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m safnet_ros.ros.params", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--yaml", action="store_true", help="print config/segment.yaml")
    what.add_argument("--markdown", action="store_true", help="print the table of docs/ros_node.md")
    what.add_argument("--write", action="store_true", help="rewrite config/segment.yaml and the docs table")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]), help="repository root")
    args = parser.parse_args(argv)
    if args.yaml:
        sys.stdout.write(to_yaml())
    elif args.markdown:
        sys.stdout.write(to_markdown())
    else:
        repo = Path(args.repo)
        (repo / "config" / "segment.yaml").write_text(to_yaml())
        doc = repo / "docs" / "ros_node.md"
        doc.write_text(doc_with_table(doc.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
