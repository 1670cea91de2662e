"""The chain of ``safnet demo``: synthetic scene -> rosbag2 -> the ROS 2 node -> votes, map, PLY, PNG, mIoU.

The command, its options and the design of the chain: :mod:`safnet_ros.tools.demo_command`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from safnet_ros.data.labels import NUM_CLASSES, class_colors, class_to_nyu40, nyu40_to_class
from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.data.synth import generate
from safnet_ros.engine.batching import prepare_view
from safnet_ros.engine.inference import Segmenter
from safnet_ros.errors import ConfigError
from safnet_ros.json_out import json_safe
from safnet_ros.mapping.map_ply import load_map
from safnet_ros.mapping.score import score_labels, transfer_labels
from safnet_ros.model.safnet import read_checkpoint_payload
from safnet_ros.ros.params import SPECS  # the node's parameter table: plain data, no rclpy
from safnet_ros.tools import bag_io as bio
from safnet_ros.tools.bag_convert import convert_scene
from safnet_ros.tools.render import render_cloud_png
from safnet_ros.tools.vertex_votes import VertexVotes
from safnet_ros.validation import check_output_dir

#: Scene settings of ``--fast`` (the CI test): few frames, small images, a coarse mesh.
FAST = {"frames": 24, "color_size": (80, 60), "depth_size": (80, 60), "vertex_spacing": 0.15}
STAGES = 6
#: The Segmenter settings of the node's defaults (ros/params.py, config/segment.yaml): no chunk overlap, for
#: latency; the node's precision (auto: bf16 on a CUDA device with bf16, else fp32).
NODE_SEGMENTER_SETTINGS = {name: SPECS[name].default for name in (
    "num_views", "chunk_size", "chunk_stride", "max_points", "voxel_size", "crop_margin", "precision",
    "outside_views", "batch_points")}
#: The node's ``tf_timeout`` in the demo (seconds; the node's default is 0.1 s for live sensors).
TF_TIMEOUT_S = 1.0
UNTRAINED_NOTE = "UNTRAINED model (none shipped): labels and mIoU are meaningless until one is trained (safnet train)"


def _stage(k: int, text: str) -> None:
    """Print the ``[demo] k/6`` progress line of stage ``k``."""
    print(f"[demo] {k}/{STAGES} {text}", flush=True)


# ----------------------------------------------------------------------------- the scene


@dataclass
class DemoScene:
    """The synthetic scene as the demo scores it: vertices in map (N, 3) m, faces, truth (N,) class ids."""

    name: str
    path: Path
    xyz: np.ndarray
    faces: np.ndarray
    truth: np.ndarray
    frames: int
    invalid_frames: int
    generated_s: float


def make_scene(out: Path, seed: int, frames: int, fast: bool, progress: bool) -> DemoScene:
    """Generate (or reuse, when the same settings made it) the synthetic scene under ``out/data``."""
    settings = {"seed": seed, "frames": frames, **(FAST if fast else {})}
    cfg = generate.SynthConfig(progress=progress, **{k: v for k, v in settings.items() if k != "seed"})
    data_root = out / "data"
    name = generate.scene_name(seed, 0)
    scene_dir = data_root / name
    stamp = data_root / "demo_settings.json"
    t0 = time.perf_counter()
    wanted = json.dumps(settings, sort_keys=True, default=list)
    # bytes, not text: a stamp that is not ours (binary, another encoding) just does not match
    if (scene_dir / f"{name}.sens").is_file() and stamp.is_file() and stamp.read_bytes() == wanted.encode():
        _stage(1, f"reusing synthetic scene {scene_dir}")
    else:
        _stage(1, f"generating synthetic scene {name} ({frames} frames, {cfg.color_size[0]}x{cfg.color_size[1]}) "
                  f"in {data_root}")
        generate.generate_dataset(data_root, 1, seed, cfg, overwrite=True)
        stamp.write_text(wanted)
    with ScanNetScene(scene_dir) as scene:
        xyz, _rgb = scene.load_points(aligned=True)
        _xyz, _rgb2, faces = scene.load_mesh()
        truth = nyu40_to_class(scene.load_nyu40()).astype(np.int64)
        n_frames, n_invalid = len(scene.frames), scene.frames.num_invalid
    return DemoScene(name, scene_dir, np.asarray(xyz, dtype=np.float64), faces, truth, n_frames, n_invalid,
                     time.perf_counter() - t0)


# ----------------------------------------------------------------------------- replay through the node


@dataclass
class ReplayResult:
    """What came back from the node: the labelled clouds' arrays and the counts that explain them."""

    clouds: list = field(default_factory=list)  # (stamp ns, frame_id, structured array)
    latencies_s: list = field(default_factory=list)
    node_counters: dict = field(default_factory=dict)
    node_latency_mean_s: float = float("nan")
    node_last_timings: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    play_s: float = 0.0
    backends: str = ""
    map_ply: Optional[str] = None
    map_saved_via: str = ""
    map_voxels: int = 0
    map_update_ms_mean: float = float("nan")


def ros_environment() -> dict[str, str]:
    """Keep DDS on loopback with a private domain (set only when unset); returns what is in effect."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}


def replay_through_node(bag: Path, segmenter: Any, rate: float, expected_clouds: int, progress: bool,
                        map_path: Optional[Path] = None, parameters: Optional[dict[str, Any]] = None,
                        topics: Optional[list[str]] = None) -> ReplayResult:
    """Play ``bag`` into a :class:`SegmentNode` over rclpy/DDS and collect its ``~/labeled_cloud``.

    Returns once every published cloud is accounted for (segmented or dropped)
    and received, or nothing changed for a while after the bag ended (:func:`_wait_until_settled`).
    map_path: save the node's semantic map there (its ``~/save_map`` service).
    parameters: more node parameters (e.g. ``cameras``); topics: play only
    these bag topics (default all).
    The node, the listener and the player live in a
    :class:`~safnet_ros.ros.bag_session.BagSession` (only ``ros/`` imports rclpy).
    """
    ros_environment()  # before rclpy starts
    # ROS 2 (rclpy, message packages) only for this mode: --offline runs where it is not installed
    from safnet_ros.ros import codecs, compat  # noqa: PLC0415
    from safnet_ros.ros.bag_player import BagPlayer  # noqa: PLC0415
    from safnet_ros.ros.bag_session import BagSession  # noqa: PLC0415

    result = ReplayResult(backends=compat.backends())
    lock = threading.Lock()
    points_seen: dict[int, float] = {}

    def on_points(msg: Any) -> None:
        with lock:
            points_seen.setdefault(codecs.stamp_to_ns(msg.header.stamp), time.monotonic())

    def on_labeled(msg: Any) -> None:
        now = time.monotonic()
        stamp = codecs.stamp_to_ns(msg.header.stamp)
        arr = np.array(codecs.pointcloud2_to_array(msg))  # a copy: the message buffer is not ours
        with lock:
            result.clouds.append((stamp, msg.header.frame_id, arr))
            if stamp in points_seen:
                result.latencies_s.append(now - points_seen[stamp])
        bar.update(1)

    # DDS on a loaded 2-core machine can deliver a transform after its cloud: wait longer than live
    parameters = {"tf_timeout": TF_TIMEOUT_S, "warm_up": False, **(parameters or {})}
    if map_path is not None:  # the node writes maps only inside its map_directory, fixed at start
        parameters["map_directory"] = str(Path(map_path).resolve().parent)
    with tqdm(total=expected_clouds, desc="labelled clouds", unit="cloud", disable=not progress, leave=False) as bar, \
            BagSession(segmenter, parameters, executor_threads=4, name="safnet_demo") as session:
        node = session.node
        listener = session.helper_node("listener")
        session.subscribe_clouds(listener, f"/{node.get_name()}/labeled_cloud", on_labeled)
        session.subscribe_clouds(listener, bio.POINTS_TOPIC, on_points)
        player = (session.player(bag, rate=rate, wait_for_subscribers=10.0) if topics is None else
                  BagPlayer(session.helper_node("player"), bag, rate=rate, wait_for_subscribers=10.0,
                            topics=topics))
        t0 = time.monotonic()
        summary = player.run()
        result.play_s = time.monotonic() - t0
        result.published = dict(summary.published)
        _wait_until_settled(node, result, lock, summary.published.get(bio.POINTS_TOPIC, 0))
        snap = node.stats.snapshot(len(node.buffer), node.buffer.nbytes, node.device)
        result.node_counters = dict(snap.counters)
        result.node_latency_mean_s = float(snap.latency_mean)
        result.node_last_timings = dict(node.last_timings)
        if map_path is not None:
            result.map_saved_via = session.save_map(Path(map_path))
            sm = node.semantic_map
            result.map_ply = str(map_path)
            result.map_voxels = len(sm)
            result.map_update_ms_mean = sm.update_ms_mean()
    return result


#: The node parameters of the two-camera replay: the bag's two cameras (bag convert --second-camera).
TWO_CAMERAS = {
    "cameras": ["camera", "camera2"],
    "cameras.camera.rgb_topic": bio.COLOR_TOPIC, "cameras.camera.depth_topic": bio.DEPTH_TOPIC,
    "cameras.camera.camera_info_topic": bio.CAMERA_INFO_TOPIC,
    "cameras.camera2.rgb_topic": bio.CAMERA2_COLOR_TOPIC, "cameras.camera2.depth_topic": bio.CAMERA2_DEPTH_TOPIC,
    "cameras.camera2.camera_info_topic": bio.CAMERA2_INFO_TOPIC,
}
CAMERA2_TOPICS = (bio.CAMERA2_COLOR_TOPIC, bio.CAMERA2_DEPTH_TOPIC, bio.CAMERA2_INFO_TOPIC)


def image_evidence(replay: ReplayResult) -> dict:
    """Of the labelled points (label < NUM_CLASSES) of every labelled cloud, those with image evidence.

    Evidence = a non-zero, finite ``similarity`` (the node writes 0 where no
    view saw the point). Also the node's views kept (in all and per camera)
    and clouds segmented, which explain the share.
    """
    labelled = with_evidence = 0
    for _stamp, _frame_id, arr in replay.clouds:
        ok = arr["label"] < NUM_CLASSES
        labelled += int(ok.sum())
        if "similarity" in arr.dtype.names:
            with_evidence += int((ok & (np.nan_to_num(arr["similarity"].astype(np.float64)) != 0)).sum())
    c = replay.node_counters
    return {"labelled_points": labelled, "points_with_evidence": with_evidence,
            "evidence_share": with_evidence / labelled if labelled else float("nan"),
            "labeled_clouds": len(replay.clouds), "clouds_segmented": int(c.get("clouds_segmented", 0)),
            "views_kept": int(c.get("views_kept", 0)),
            "views_kept_per_camera": {k.split(".", 1)[1]: int(v) for k, v in c.items()
                                      if k.startswith("views_kept.")}}


def second_camera_block(one: ReplayResult, two: ReplayResult, offset_s: float, offset_frames: int) -> dict:
    """The ``"second_camera"`` block of the summary: image evidence with one camera, with two, and the gain."""
    a, b = image_evidence(one), image_evidence(two)
    return {"offset_s": offset_s, "offset_frames": offset_frames, "one_camera": a, "two_cameras": b,
            "gain_points": b["points_with_evidence"] - a["points_with_evidence"],
            "gain_share": b["evidence_share"] - a["evidence_share"]}


def _clouds_in_map(replay: ReplayResult) -> list[tuple[np.ndarray, np.ndarray]]:
    """(xyz (M, 3) metres, structured array) of every labelled cloud in ``map``, in stamp order.

    The listener has no TF: a cloud in another frame cannot be placed in the scene.
    """
    return [(np.stack([arr["x"], arr["y"], arr["z"]], axis=1), arr)
            for _stamp, frame_id, arr in sorted(replay.clouds, key=lambda c: c[0])
            if frame_id.lstrip("/") == bio.MAP_FRAME]


def single_cloud_vertex_labels(votes: VertexVotes, replay: ReplayResult) -> list[np.ndarray]:
    """Per labelled cloud (in stamp order), the label it gave each scene vertex: (V,) int64, -1 where none;
    points are matched to vertices by ``votes`` (:func:`accumulate`'s: one KD-tree for both)."""
    out = []
    for xyz, arr in _clouds_in_map(replay):
        labels = arr["label"].astype(np.int64)
        position = votes.positions_of(xyz)
        ok = (position >= 0) & (labels < NUM_CLASSES)
        per_position = np.full(votes.num_positions, -1, np.int64)
        per_position[position[ok]] = labels[ok]
        vertex_labels = votes.per_vertex(per_position)
        if (vertex_labels >= 0).any():
            out.append(vertex_labels)
    return out


def score_map(scene: DemoScene, replay: ReplayResult, clouds: list[np.ndarray]) -> tuple[dict, np.ndarray]:
    """The ``"map"`` block of the summary and the map's label per scene vertex (-1: no voxel near).

    ``clouds``: :func:`single_cloud_vertex_labels`. Two per-cloud figures sit
    beside the map's whole-scene mIoU: ``single_cloud_miou_mean``, each cloud
    scored alone on the vertices it labelled, and ``map_on_cloud_vertices_miou_mean``,
    the map scored on exactly those vertices with the same metric. A cloud
    covers a few square metres with few classes, so a per-cloud mIoU averages
    fewer (and larger) classes than a whole-scene one; the second figure is the
    like-for-like comparison of the map with the clouds it fused.
    """
    loaded = load_map(replay.map_ply)
    snap = loaded.snapshot()
    labels = transfer_labels(snap, scene.xyz)
    s = score_labels(scene.truth, labels)
    loaded.smoothing = 0.0  # the same voxels read one by one: what the read-out smoothing adds
    unsmoothed = score_labels(scene.truth, transfer_labels(loaded.snapshot(), scene.xyz))
    single, map_same = [], []
    for cloud_labels in clouds:
        single.append(float(score_labels(scene.truth, cloud_labels)["miou"]))
        same = np.where(cloud_labels >= 0, labels, -1)  # the map, on the vertices this cloud labelled
        map_same.append(float(score_labels(scene.truth, same)["miou"]) if (same >= 0).any() else float("nan"))
    block = {
        "miou": s["miou"], "oa": s["oa"], "coverage": s["coverage"], "voxels": len(snap),
        "update_ms_mean": replay.map_update_ms_mean, "miou_all_vertices": s["miou_all_vertices"],
        "labelled_vertices": s["labelled_vertices"], "per_class": s["per_class"], "fusion": snap.fusion,
        "voxel_size": snap.voxel_size, "ply": replay.map_ply, "saved_via": replay.map_saved_via,
        "smoothing": snap.smoothing, "smoothing_cell": snap.smoothing_cell,
        "miou_unsmoothed": unsmoothed["miou"], "oa_unsmoothed": unsmoothed["oa"],
        "single_cloud_miou_mean": float(np.mean(single)) if single else float("nan"),
        "map_on_cloud_vertices_miou_mean": float(np.nanmean(map_same)) if map_same else float("nan"),
        "single_clouds_scored": len(single),
    }
    return block, labels


def _wait_until_settled(node: Any, result: ReplayResult, lock: threading.Lock, published: int,
                        settle_s: float = 5.0, timeout_s: float = 300.0) -> None:
    """Block until every published cloud is segmented or dropped and every labelled cloud received.

    A cloud the node took but has not finished keeps the wait going (up to
    ``timeout_s``); otherwise ``settle_s`` without any change ends it (clouds
    lost on the way, or skipped for a missing transform, are then counted).
    """
    deadline = time.monotonic() + timeout_s
    last_change, last_state = time.monotonic(), None
    while time.monotonic() < deadline:
        c = node.stats.snapshot(0, 0, "").counters
        with lock:
            got = len(result.clouds)
        received, segmented = c.get("clouds_received", 0), c.get("clouds_segmented", 0)
        handled = segmented + c.get("clouds_dropped", 0) + c.get("worker_errors", 0) + c.get("decode_errors", 0)
        if received >= published and handled >= published and got >= segmented:
            return
        state = (received, handled, c.get("tf_failures", 0), got)
        in_progress = received - handled - c.get("tf_failures", 0) > 0 or got < segmented
        if state != last_state or in_progress:
            last_state, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > settle_s:
            return
        time.sleep(0.05)


def accumulate(scene: DemoScene, replay: ReplayResult) -> tuple[VertexVotes, int]:
    """Votes per scene vertex from the labelled clouds; returns (votes, clouds left out for their frame)."""
    votes = VertexVotes(scene.xyz, NUM_CLASSES)
    clouds = _clouds_in_map(replay)
    for xyz, arr in clouds:
        votes.add(xyz, arr["label"], arr["similarity"] if "similarity" in arr.dtype.names else None)
    return votes, len(replay.clouds) - len(clouds)


# ----------------------------------------------------------------------------- scoring and outputs


def write_outputs(out: Path, scene: DemoScene, labels: np.ndarray, similarity: np.ndarray,
                  title: str, map_labels: Optional[np.ndarray] = None) -> tuple[Path, Path]:
    """The labelled PLY (unlabelled vertices grey, nyu40 0) and the PNG renders; returns their paths.

    labels (V,) class indices (-1: none), similarity (V,) S per vertex (NaN: none), map_labels (V,) or None.
    """
    out.mkdir(parents=True, exist_ok=True)
    ply_path = out / f"{scene.name}_labeled.ply"
    write_scannet_mesh(ply_path, scene.xyz.astype(np.float32), class_colors(labels), scene.faces,
                       labels=class_to_nyu40(labels))
    png_path = render_cloud_png(out / f"{scene.name}_labeled.png", scene.xyz, labels, similarity=similarity,
                                truth=scene.truth, title=title,
                                extra_labels=[("semantic map", map_labels)] if map_labels is not None else None)
    return ply_path, png_path


def _title(scene: DemoScene, summary: dict, untrained: bool, how: str) -> str:
    """The PNG's title: scene, mode, mIoU and coverage."""
    return (f"{scene.name} via {how}: mIoU {100 * summary['miou']:.1f}% over "
            f"{100 * summary['coverage']:.0f}% of the vertices" + ("  (UNTRAINED model)" if untrained else ""))


def run(args: argparse.Namespace) -> int:
    """``safnet demo``: make the scene, run it through the node (or ``--offline``), score, write, summarise."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    frames = args.frames if args.frames is not None else (FAST["frames"] if args.fast else 300)
    if args.rate is None:
        args.rate = 0.5 if args.fast else 0.25
    if args.cloud_rate is None:
        args.cloud_rate = 4.0 if args.fast else 2.0
    check_arguments(frames, args.rate, args.cloud_rate)
    if args.offline and args.second_camera is not None:
        raise ConfigError("--second-camera needs the bag and the node: it cannot be combined with --offline")
    progress = not args.no_progress
    out = check_output_dir(args.out, "demo output folder")  # a regular file there: refused before any work
    check_output_dir(out / "data", "demo data folder")
    if args.model:  # loaded after the scene is generated: the file is checked now
        read_checkpoint_payload(args.model)
    started = time.perf_counter()
    scene = make_scene(out, args.seed, frames, args.fast, progress)
    report = run_offline(args, out, scene) if args.offline else run_with_node(args, out, scene, progress)
    report["total_s"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(json_safe(report), indent=2))
    if args.json:
        print(json.dumps(json_safe(report)))
    else:
        print_summary(report)
    return 0


def check_arguments(frames: int, rate: float, cloud_rate: float) -> None:
    """ConfigError before any work for a frame count < 1 or rates that are not positive."""
    if frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    if not (np.isfinite(rate) and rate > 0):
        raise ConfigError(f"--rate must be a positive speed factor, got {rate}")
    if not (np.isfinite(cloud_rate) and cloud_rate > 0):
        raise ConfigError(f"--cloud-rate must be positive (the demo needs /points), got {cloud_rate}")


def _load_segmenter(args: argparse.Namespace, stage: int) -> Segmenter:
    """The Segmenter of ``--model`` (or the shipped one) with the node's settings; says so when untrained."""
    _stage(stage, f"loading the model ({args.model or 'shipped default'})")
    seg = Segmenter.from_checkpoint(args.model, device=args.device, **NODE_SEGMENTER_SETTINGS)
    if seg.untrained:
        print(f"[demo]     !! {UNTRAINED_NOTE}", flush=True)
    return seg


def run_with_node(args: argparse.Namespace, out: Path, scene: DemoScene, progress: bool) -> dict:
    """Stages 2-6 of the default chain (README.md, "What `make demo` does"); returns the summary."""
    bag = out / f"{scene.name}.mcap_bag"
    _stage(2, f"converting it to a rosbag2 (mcap, /points at {args.cloud_rate} Hz): {bag}")
    second = args.second_camera
    conv = convert_scene(scene.path, bag, storage="mcap", cloud_rate=args.cloud_rate, overwrite=True,
                         progress=progress, second_camera=second)
    seg = _load_segmenter(args, 3)
    warmup_s = seg.warm_up()  # the node is told not to repeat it (warm_up False below)
    print(f"[demo]     model warmed up in {warmup_s:.1f} s (first-call overhead kept out of the latency)", flush=True)
    env = ros_environment()
    _stage(4, f"replaying {conv.clouds_written} clouds, {conv.frames_written} frames at {args.rate}x through "
              f"the safnet_segment node over rclpy/DDS (domain {env['ROS_DOMAIN_ID']}, loopback)")
    first_only = None
    if second is not None:  # the first camera alone, as without a second one: its topics only
        with bio.bag_reader(bag) as reader:
            first_only = sorted({c.topic for c in reader.connections} - set(CAMERA2_TOPICS))
    replay = replay_through_node(bag, seg, args.rate, conv.clouds_written, progress,
                                 map_path=(out / f"{scene.name}_map.ply").resolve(), topics=first_only)
    two_cameras = None
    if second is not None:
        print(f"[demo]     replaying the bag again with both cameras (second camera {second:g} s = "
              f"{conv.camera2_offset_frames} frames ahead, node parameter cameras: {TWO_CAMERAS['cameras']})",
              flush=True)
        replay2 = replay_through_node(bag, seg, args.rate, conv.clouds_written, progress, parameters=TWO_CAMERAS)
        two_cameras = second_camera_block(replay, replay2, second, conv.camera2_offset_frames)
    _stage(5, f"accumulating {len(replay.clouds)} labelled clouds on {len(scene.xyz)} scene vertices and scoring "
              f"them and the node's semantic map ({replay.map_voxels} voxels)")
    votes, wrong_frame = accumulate(scene, replay)
    labels = votes.labels()
    summary = score_labels(scene.truth, labels)
    # the vote's ties go to the lower class index (wall, floor, cabinet, bed, chair ...): how much that decides
    random_ties = [score_labels(scene.truth, votes.labels(ties="random", seed=s))["miou"] for s in range(5)]
    map_block, map_labels = score_map(scene, replay, single_cloud_vertex_labels(votes, replay))
    _stage(6, "writing the labelled PLY and rendering the PNG")
    ply_path, png_path = write_outputs(out, scene, labels, votes.similarity(),
                                       _title(scene, summary, seg.untrained, "bag + ROS 2 node")
                                       + f"; semantic map {100 * map_block['miou']:.1f}%",
                                       map_labels=map_labels)
    lat = np.asarray(replay.latencies_s, dtype=np.float64)
    return {
        **_scene_fields("bag+node", scene),
        "bag": str(bag),
        "bag_frames": conv.frames_written,
        "bag_clouds": conv.clouds_written,
        "bag_duration_s": conv.duration_s,
        "playback_rate": args.rate,
        "play_s": replay.play_s,
        "published": replay.published,
        "transport": f"rclpy over DDS ({os.environ.get('RMW_IMPLEMENTATION', 'default rmw')}, "
                     f"{os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}, domain {os.environ['ROS_DOMAIN_ID']})",
        "tf_backend": replay.backends,
        "labeled_clouds_received": len(replay.clouds),
        "clouds_not_in_map": wrong_frame,
        "node_counters": replay.node_counters,
        "points_matched": votes.points_matched,
        "points_unmatched": votes.points_unmatched,
        "points_not_segmented": votes.points_not_segmented,
        **_result_fields(seg, summary),
        "vote_tied_vertices": int(votes.tied().sum()),
        "miou_random_ties": float(np.mean(random_ties)),
        "single_cloud_miou_mean": map_block["single_cloud_miou_mean"],
        "map": map_block,
        "latency_mean_s": float(lat.mean()) if lat.size else float("nan"),
        "latency_max_s": float(lat.max()) if lat.size else float("nan"),
        "latency_clouds": int(lat.size),
        "latency_median_s": float(np.median(lat)) if lat.size else float("nan"),
        "latencies_s": [round(float(v), 4) for v in lat],  # per labelled cloud, in arrival order
        "node_latency_window_mean_s": replay.node_latency_mean_s,
        "node_last_timings_s": replay.node_last_timings,
        "synth_s": scene.generated_s,
        "convert_s": conv.elapsed_s,
        "warmup_s": warmup_s,
        "ply": str(ply_path),
        "png": str(png_path),
        **({"second_camera": two_cameras} if two_cameras is not None else {}),
    }


def _scene_fields(mode: str, scene: DemoScene) -> dict:
    """Summary keys both modes share about the scene."""
    return {"mode": mode, "scene": scene.name, "vertices": int(len(scene.xyz)),
            "frames": scene.frames, "invalid_frames": scene.invalid_frames}


def _result_fields(seg: Segmenter, summary: dict) -> dict:
    """Summary keys both modes share about the model and the score."""
    keys = ("miou", "oa", "per_class", "labelled_vertices", "coverage")
    return {"device": str(seg.device), "untrained_model": bool(seg.untrained), **{k: summary[k] for k in keys}}


def run_offline(args: argparse.Namespace, out: Path, scene: DemoScene) -> dict:
    """``--offline``: the Segmenter over the whole mesh, every 5th valid frame a candidate view; the summary."""
    _stage(2, "no bag, no node (--offline): reading the frames back with the ScanNet readers")
    views = []
    with ScanNetScene(scene.path) as s:
        align = s.axis_alignment
        frames = s.frames
        for i in frames.valid_indices[::5]:
            f = frames.get(i)
            views.append(prepare_view(f.color, f.depth, frames.intrinsic_depth, align @ f.camera_to_world,
                                      stamp=f.timestamp_us * 1e-6))
    seg = _load_segmenter(args, 3)
    _stage(4, f"segmenting {len(scene.xyz)} vertices with {len(views)} candidate views on {seg.device}")
    result = seg.segment(scene.xyz, views)
    _stage(5, "scoring")
    labels = np.asarray(result.labels).astype(np.int64)
    summary = score_labels(scene.truth, labels)
    _stage(6, "writing the labelled PLY and rendering the PNG")
    ply_path, png_path = write_outputs(out, scene, labels, result.s,
                                       _title(scene, summary, seg.untrained, "offline Segmenter"))
    return {
        **_scene_fields("offline", scene),
        "candidate_views": len(views),
        "views_used": len(result.views_used),
        "chunks": result.num_chunks,
        **_result_fields(seg, summary),
        "latency_mean_s": float(result.timings["total"]),
        "segment_timings_s": result.timings,
        "synth_s": scene.generated_s,
        "ply": str(ply_path),
        "png": str(png_path),
        "warnings": list(result.warnings),
    }


def print_summary(r: dict) -> None:
    """The final summary block."""
    w = sys.stdout.write
    w("\n== safnet demo " + "=" * 60 + "\n")
    w(f"  scene            {r['scene']}: {r['vertices']} vertices, {r['frames']} frames "
      f"({r['invalid_frames']} invalid)\n")
    if r["mode"] == "bag+node":
        c = r["node_counters"]
        w(f"  bag              {r['bag']}: {r['bag_frames']} frames, {r['bag_clouds']} clouds, "
          f"{r['bag_duration_s']:.1f} s, played at {r['playback_rate']}x in {r['play_s']:.1f} s\n")
        w(f"  transport        {r['transport']}\n")
        w(f"  ROS shims        {r['tf_backend']}\n")
        w(f"  node             {c.get('frames_synced', 0)} frames synced, {c.get('views_kept', 0)} views kept, "
          f"{c.get('clouds_received', 0)} clouds in, {c.get('clouds_segmented', 0)} segmented, "
          f"{c.get('clouds_dropped', 0)} dropped, {c.get('tf_failures', 0)} TF failures\n")
        w(f"  labelled clouds  {r['labeled_clouds_received']} received on ~/labeled_cloud"
          + (f", {r['clouds_not_in_map']} not in map (left out)" if r["clouds_not_in_map"] else "") + "\n")
        w(f"  points           {r['points_matched']} matched to scene vertices, {r['points_unmatched']} unmatched, "
          f"{r['points_not_segmented']} not segmented (label 255)\n")
    else:
        w(f"  offline          {r['candidate_views']} candidate views, {r['views_used']} used by "
          f"{r['chunks']} chunks (no bag, no node)\n")
    w(f"  device           {r['device']}\n")
    w(f"  coverage         {r['labelled_vertices']} / {r['vertices']} vertices labelled "
      f"({100 * r['coverage']:.1f} %)\n")
    w(f"  mIoU / OA        {100 * r['miou']:.1f} % / {100 * r['oa']:.1f} % over the labelled vertices"
      + (" (majority vote per vertex)" if "map" in r else "") + "\n")
    if "vote_tied_vertices" in r:
        w(f"  vote ties        {r['vote_tied_vertices']} vertices tied (they go to the lower class index); "
          f"with ties broken at random the vote is {100 * r['miou_random_ties']:.1f} % mIoU\n")
    if "map" in r:
        m = r["map"]
        w(f"  semantic map     {m['voxels']} voxels of {m['voxel_size']} m ({m['fusion']}, smoothing "
          f"{m['smoothing']:g}): mIoU {100 * m['miou']:.1f} % ({100 * m['miou_unsmoothed']:.1f} % voxel by voxel), "
          f"OA {100 * m['oa']:.1f} %, coverage {100 * m['coverage']:.1f} %, {m['update_ms_mean']:.1f} ms per update; "
          f"single clouds: mean mIoU {100 * m['single_cloud_miou_mean']:.1f} % over {m['single_clouds_scored']}, "
          f"the map on the same vertices {100 * m['map_on_cloud_vertices_miou_mean']:.1f} %\n")
        w(f"  map PLY          {m['ply']} (saved via {m['saved_via']})\n")
    if r["untrained_model"]:
        w(f"  !! model         {UNTRAINED_NOTE}\n")
    if r["mode"] == "bag+node":
        w(f"  latency          {1000 * r['latency_mean_s']:.0f} ms mean, "
          f"{1000 * r['latency_median_s']:.0f} ms median, {1000 * r['latency_max_s']:.0f} ms max "
          f"(cloud in -> labelled cloud out, over DDS, {r['latency_clouds']} clouds); node diagnostics window "
          f"mean {1000 * r['node_latency_window_mean_s']:.0f} ms\n")
    else:
        w(f"  latency          {r['latency_mean_s']:.2f} s for the whole scene\n")
    if "second_camera" in r:
        sc = r["second_camera"]
        a, b = sc["one_camera"], sc["two_cameras"]
        w(f"  second camera    {sc['offset_s']:g} s ({sc['offset_frames']} frames) ahead: image evidence on "
          f"{100 * a['evidence_share']:.1f} % of the labelled points with one camera, "
          f"{100 * b['evidence_share']:.1f} % with two ({sc['gain_points']:+d} points); views kept "
          f"{a['views_kept']} / {b['views_kept']} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(b['views_kept_per_camera'].items()))}); labelled points "
          f"{a['labelled_points']} / {b['labelled_points']} in {a['labeled_clouds']} / {b['labeled_clouds']} clouds\n")
    w(f"  labelled PLY     {r['ply']}\n")
    w(f"  rendering        {r['png']}\n")
    w(f"  summary          {Path(r['ply']).parent / 'summary.json'}   ({r['total_s']:.0f} s in all)\n")
    sys.stdout.flush()
