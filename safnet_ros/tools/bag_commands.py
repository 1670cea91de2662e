"""``safnet bag convert|play`` and ``safnet segment-bag``: the rosbag2 tools (docs/bags.md).

Only argparse here; rosbags, rclpy and torch are imported inside the handlers so
``safnet --help`` stays instant.
"""
from __future__ import annotations

import argparse
import sys

from safnet_ros.validation import MAX_COUNT, device_name, float_range, int_range, size_wh

#: Smallest map voxel of ``segment-bag --map-voxel-size``: 2^20 voxels of 1 mm reach +-1 km.
MIN_MAP_VOXEL_M = 0.001


def register(sub: argparse._SubParsersAction) -> None:
    bag = sub.add_parser("bag", help="rosbag2 tools: convert a ScanNet scene, replay a bag without ROS tools")
    bsub = bag.add_subparsers(dest="bag_command", metavar="BAG_COMMAND")
    bsub.required = True

    conv = bsub.add_parser(
        "convert", help="ScanNet scene folder -> rosbag2 (images, depth, camera_info, tf, LiDAR-like /points)",
        description="Convert a ScanNet-format scene folder into a rosbag2 with rosbags (no ROS install needed). "
                    "Frame 'map' is the scene's axis-aligned frame; see docs/bags.md.",
    )
    conv.add_argument("scene_dir", help="scene folder (sceneXXXX_YY/ with .sens or exported frames, and the mesh)")
    conv.add_argument("out", help="output bag folder (must not exist unless --overwrite)")
    conv.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage plugin (default mcap)")
    conv.add_argument("--rate", type=float_range(0.01, 10_000.0), default=None, metavar="HZ",
                      help="synthesise stamps at this frame rate instead of the recorded timestamps")
    conv.add_argument("--skip", type=int_range(1, MAX_COUNT), default=1, metavar="N",
                      help="keep every N-th frame (default 1: all)")
    conv.add_argument("--resize", type=size_wh, default=None, metavar="WxH",
                      help="image size in the bag (default: colour size)")
    conv.add_argument("--cloud-rate", type=float_range(0.0, 1000.0), default=2.0, metavar="HZ",
                      help="rate of the /points cloud (default 2; 0 writes no cloud and needs no mesh)")
    conv.add_argument("--max-range", type=float_range(0.1, 1000.0, lo_open=True), default=5.0, metavar="M",
                      help="farthest camera depth of a /points vertex (default 5 m)")
    conv.add_argument("--second-camera", type=float_range(0.01, 3600.0), nargs="?", const=3.0, default=None,
                      metavar="SEC",
                      help="also write a second camera of the same scene on /camera2/... (frames camera2_link, "
                           "camera2_color_optical_frame): at each stamp the frame SEC seconds later (default 3, "
                           "wrapping); /points then covers both cameras' frustums")
    conv.add_argument("--compressed", action="store_true",
                      help="write image_transport's compressed topics instead of raw images: <colour>/compressed "
                           "(the scene's JPEG as it is) and <depth>/compressedDepth (16-bit PNG), for "
                           "image_transport:=compressed; full-size frames at 30 Hz need them over DDS")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    conv.add_argument("--quiet", action="store_true", help="no progress bar")
    conv.set_defaults(func=run_convert)

    play = bsub.add_parser(
        "play", help="publish a bag through rclpy with its timing and /clock (/tf as recorded)",
        description="Replay a rosbag2 through rclpy. /tf and /tf_static go out as recorded "
                    "(tf2_msgs/TFMessage; make venv generates that type where no ROS 2 install has it). "
                    "Only where TFMessage is missing they go out as geometry_msgs/TransformStamped on "
                    "/safnet/transforms and /safnet/transforms_static (transient local), the node's last "
                    "resort. On a ROS 2 install `ros2 bag play --clock` does the same job.",
    )
    play.add_argument("bag", help="bag folder")
    play.add_argument("--rate", type=float_range(0.001, 1000.0), default=1.0,
                      help="playback speed factor, 0.001..1000 (default 1.0)")
    play.add_argument("--loop", action="store_true", help="start again at the end")
    play.add_argument("--topics", nargs="+", default=None, help="publish only these topics")
    play.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    play.add_argument("--wait-subscribers", type=float_range(0.0, 3600.0), default=2.0, metavar="SEC",
                      help="wait up to SEC seconds for subscribers before the first message (default 2)")
    play.set_defaults(func=run_play)

    seg = sub.add_parser(
        "segment-bag", help="run the node's pipeline offline over a bag and write labelled clouds into a new bag",
        description="Read colour, depth, camera_info, /tf and the clouds from BAG, segment every cloud with the "
                    "posed views seen so far (the node's pipeline), and write the node's outputs "
                    "/safnet_segment/labeled_cloud and /safnet_segment/similarity_markers into OUT_BAG "
                    "(config/safnet.rviz shows them when OUT_BAG is played).",
    )
    seg.add_argument("bag", help="input bag folder (e.g. from `safnet bag convert`)")
    seg.add_argument("out_bag", help="output bag folder (must not exist unless --overwrite)")
    seg.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    seg.add_argument("--device", type=device_name, default="auto", help="torch device (default auto)")
    seg.add_argument("--num-views", type=int_range(0, 64), default=3, help="views per chunk (default 3)")
    seg.add_argument("--max-views", type=int_range(1, 100_000), default=30,
                     help="keyframes kept in the view buffer (default 30, as the node)")
    seg.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="inference precision, as the node's 'precision' (default auto: bf16 on a CUDA device "
                          "with it, else fp32; fp16 on CUDA only)")
    seg.add_argument("--outside-views", choices=("3d", "ignore"), default="3d",
                     help="points no view covers: labelled by the 3D branch (3d, default, as the node) or left "
                          "unlabelled (ignore)")
    seg.add_argument("--cloud-topic", default=None, metavar="TOPIC",
                     help="input sensor_msgs/PointCloud2 (default /points, as `safnet bag convert` writes)")
    seg.add_argument("--rgb-topic", default=None, metavar="TOPIC",
                     help="input colour sensor_msgs/Image (default /camera/color/image_raw, as `safnet bag convert` writes)")
    seg.add_argument("--depth-topic", default=None, metavar="TOPIC",
                     help="input depth sensor_msgs/Image (default /camera/depth/image_rect_raw, as `safnet bag convert` writes)")
    seg.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                     help="input sensor_msgs/CameraInfo (default /camera/color/camera_info, as `safnet bag convert` writes)")
    seg.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output storage plugin")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    seg.add_argument("--map", default=None, metavar="MAP.ply",
                     help="also fuse every labelled cloud into a semantic voxel map and save it as this PLY "
                          "(`safnet map score MAP.ply SCENE_DIR` scores it)")
    seg.add_argument("--map-voxel-size", type=float_range(MIN_MAP_VOXEL_M, 10.0), default=0.04, metavar="M",
                     help=f"map voxel edge, metres, {MIN_MAP_VOXEL_M:g}..10 (default 0.04, as the node's "
                          "map_voxel_size; below it the map's key range would be under +-1 km)")
    seg.add_argument("--map-max-voxels", type=int_range(1, MAX_COUNT), default=500_000, metavar="N",
                     help="most voxels kept; the farthest from the sensor are evicted (default 500000)")
    seg.add_argument("--map-fusion", choices=("count", "log"), default="count",
                     help="how voxels fuse class probabilities: count (sums, default) or log (log-probability sums)")
    seg.add_argument("--map-smoothing", type=float, default=1.0, metavar="W",
                     help="read-out weight of a voxel's neighbourhood (default 1.0, as the node's map_smoothing; "
                          "0 = each voxel alone)")
    seg.add_argument("--map-smoothing-cell", type=float, default=0.16, metavar="M",
                     help="the neighbourhood's coarse-cell edge, metres (default 0.16, as map_smoothing_cell)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=run_segment_bag)


def run_convert(args: argparse.Namespace) -> int:
    from safnet_ros.tools.bag_convert import convert_scene

    summary = convert_scene(
        args.scene_dir, args.out, storage=args.storage, rate=args.rate, skip=args.skip,
        resize=args.resize, cloud_rate=args.cloud_rate,
        max_range=args.max_range, overwrite=args.overwrite, progress=not args.quiet and sys.stderr.isatty(),
        second_camera=args.second_camera,
        compressed=args.compressed,
    )
    print("\n".join(summary.lines()))
    return 0


def run_play(args: argparse.Namespace) -> int:
    from safnet_ros.ros.bag_player import play_main

    return play_main(args.bag, rate=args.rate, loop=args.loop, topics=args.topics, clock=not args.no_clock,
                     wait_for_subscribers=args.wait_subscribers)


def run_segment_bag(args: argparse.Namespace) -> int:
    from safnet_ros import output_dir as od
    from safnet_ros.tools.bag_io import require_bag
    from safnet_ros.tools.segment_bag import BagTopics, segment_bag

    require_bag(args.bag)
    given = {"color": args.rgb_topic, "depth": args.depth_topic, "camera_info": args.camera_info_topic,
             "points": args.cloud_topic}
    topics = BagTopics(**{field: topic for field, topic in given.items() if topic is not None})
    if args.map is not None:  # checked before the run, not after it
        from safnet_ros.mapping.map_store import check_overwritable
        from safnet_ros.validation import check_output_file

        check_output_file(args.map, "--map file")
        od.check_separate(args.map, [args.bag], "--map file")
        check_overwritable(args.map, "--map file")  # never over a file that is not a safnet map
    with od.output_lock(args.out_bag, "output bag"):  # segment_bag keeps to docs/reliability.md's output rules
        summary = segment_bag(
            args.bag, args.out_bag, model=args.model, device=args.device, num_views=args.num_views, topics=topics,
            max_views=args.max_views, storage=args.storage, overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(), map_path=args.map, map_voxel_size=args.map_voxel_size,
            map_max_voxels=args.map_max_voxels, map_fusion=args.map_fusion, map_smoothing=args.map_smoothing,
            map_smoothing_cell=args.map_smoothing_cell, precision=args.precision, outside_views=args.outside_views,
        )
        print("\n".join(summary.lines()))
    return 0
