"""``safnet segment-bag``: the node's pipeline run offline over a whole rosbag2 (batch evaluation, CI).

The node's own parts (TF tree, codecs, :class:`~safnet_ros.engine.pipeline.SegmentationPipeline`,
semantic map) without rclpy or DDS, deterministic; what it reads, does and
writes: docs/bags.md, ``safnet segment-bag``.  Frames and clouds that cannot be
used (no pose at their stamp, no matching image) are counted, never dropped
silently.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
from rosbags.rosbag2 import Writer
from tqdm import tqdm

from safnet_ros import output_dir as od
from safnet_ros.engine.inference import Segmenter
from safnet_ros.engine.pipeline import KEPT, SegmentationPipeline
from safnet_ros.engine.view_buffer import KeyframePolicy, ViewBuffer
from safnet_ros.errors import ConfigError, DataFormatError, MessageDecodeError, MissingDataError, SafnetError
from safnet_ros.mapping import SemanticVoxelMap
from safnet_ros.mapping.map_ply import save_map
from safnet_ros.ros import codecs
from safnet_ros.ros.compressed import compressed_topics
from safnet_ros.ros.markers import similarity_markers_cdr
from safnet_ros.ros.params import SPECS  # the node's parameter table: plain data, no rclpy
from safnet_ros.ros.tf_tree import FallbackTransformException, TfTree
from safnet_ros.tools import bag_io as bio


@dataclass
class BagTopics:
    """Input topics of :func:`segment_bag` (the converter's defaults; ``--cloud-topic`` etc. override them)."""

    color: str = bio.COLOR_TOPIC
    depth: str = bio.DEPTH_TOPIC
    camera_info: str = bio.CAMERA_INFO_TOPIC
    points: str = bio.POINTS_TOPIC
    tf: str = bio.TF_TOPIC
    tf_static: str = bio.TF_STATIC_TOPIC


@dataclass
class SegmentBagSummary:
    """What :func:`segment_bag` did."""

    out: str
    clouds: int = 0
    clouds_no_pose: int = 0
    clouds_3d_only: int = 0
    points: int = 0
    frames_paired: int = 0
    frames_no_pose: int = 0
    frames_unpaired: int = 0
    frames_no_camera_info: int = 0
    views_kept: int = 0
    decode_errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    untrained_model: bool = False
    map_path: Optional[str] = None
    map_voxels: int = 0
    map_update_s: list[float] = field(default_factory=list)

    @property
    def mean_latency_s(self) -> float:
        return float(np.mean(self.latencies_s)) if self.latencies_s else 0.0

    def lines(self) -> list[str]:
        out = [
            f"wrote {self.out}: {self.clouds} labelled clouds ({self.points} points) in {self.elapsed_s:.1f} s; "
            f"mean latency {self.mean_latency_s * 1000:.0f} ms per cloud",
            f"  frames: {self.frames_paired} paired, {self.views_kept} kept as views, {self.frames_no_pose} without "
            f"a pose, {self.frames_unpaired} unpaired, {self.frames_no_camera_info} before any camera_info",
            f"  clouds: {self.clouds_no_pose} skipped without a pose, {self.clouds_3d_only} segmented 3D-only; "
            f"{self.decode_errors} undecodable messages",
        ]
        if self.map_path:
            mean_ms = 1000 * float(np.mean(self.map_update_s)) if self.map_update_s else 0.0
            out.append(f"  map: {self.map_path}: {self.map_voxels} voxels, {mean_ms:.1f} ms per map update")
        if self.untrained_model:
            out.append("  WARNING: an UNTRAINED model was used (no model given or shipped): labels are meaningless")
        return out


def with_compressed_images(connections: list[Any], topics: BagTopics) -> BagTopics:
    """``topics`` with the colour / depth topic replaced by image_transport's ``<colour>/compressed`` /
    ``<depth>/compressedDepth`` (sensor_msgs/CompressedImage) where the bag has that and not the raw one
    (a ``safnet bag convert --compressed`` bag, or a robot's recording of its compressed topics)."""
    have = {c.topic: c.msgtype for c in connections}
    color, depth = compressed_topics(topics.color, topics.depth)
    return replace(topics,
                   color=color if topics.color not in have and have.get(color) == bio.COMPRESSED_IMAGE else topics.color,
                   depth=depth if topics.depth not in have and have.get(depth) == bio.COMPRESSED_IMAGE else topics.depth)


def check_topics(connections: list[Any], topics: BagTopics, bag: str | os.PathLike) -> None:
    """Refuse a bag whose topics cannot be used, in one error line (docs/bags.md, "Bad input").

    DataFormatError for a topic recorded with another message type (``tf_static`` included: it is
    optional, but skipping it would leave the poses silently incomplete), MissingDataError listing
    every required topic the bag lacks.
    """
    types: dict[str, set[str]] = {}
    for c in connections:
        types.setdefault(c.topic, set()).add(c.msgtype)
    have = {topic: " and ".join(sorted(names)) for topic, names in types.items()}  # one topic, two types: both
    image = {t: bio.COMPRESSED_IMAGE if t.endswith(("/compressed", "/compressedDepth")) else bio.IMAGE
             for t in (topics.color, topics.depth)}
    need = {topics.color: image[topics.color], topics.depth: image[topics.depth], topics.camera_info: bio.CAMERA_INFO,
            topics.points: bio.POINTCLOUD2, topics.tf: bio.TF_MESSAGE}
    if topics.tf_static in have:
        need[topics.tf_static] = bio.TF_MESSAGE
    wrong = [f"topic {t} is {have[t]}, expected {m}" for t, m in need.items() if t in have and have[t] != m]
    if wrong:
        raise DataFormatError(bag, "; ".join(wrong))
    missing = [f"{t} ({m})" for t, m in need.items() if t not in have]
    if missing:
        raise MissingDataError(bag, f"topics {', '.join(missing)} (the bag has: {', '.join(sorted(have)) or 'none'})")


class _FramePairer:
    """Pairs colour and depth messages by nearest stamp within ``slop`` ns (like the node's synchroniser)."""

    def __init__(self, slop_ns: int, queue: int = 30):
        self.slop_ns = slop_ns
        self.color: deque[tuple[int, Any]] = deque(maxlen=queue)
        self.depth: deque[tuple[int, Any]] = deque(maxlen=queue)
        self.dropped = 0

    def add(self, kind: str, ns: int, msg: Any) -> Optional[tuple[int, Any, Any]]:
        """Queue a message; return (depth stamp, colour msg, depth msg) when a pair completes."""
        q = self.color if kind == "color" else self.depth
        if len(q) == q.maxlen:
            self.dropped += 1
        q.append((ns, msg))
        for di, (dns, dmsg) in enumerate(self.depth):
            best = min(range(len(self.color)), key=lambda k: abs(self.color[k][0] - dns), default=None)
            if best is not None and abs(self.color[best][0] - dns) <= self.slop_ns:
                cmsg = self.color[best][1]
                self.dropped += di + best  # everything older than the pair is never matched
                for _ in range(di + 1):
                    self.depth.popleft()
                for _ in range(best + 1):
                    self.color.popleft()
                return dns, cmsg, dmsg
        return None

    @property
    def unpaired(self) -> int:
        return self.dropped + len(self.color) + len(self.depth)


def segment_bag(
    bag: str | os.PathLike,
    out_bag: str | os.PathLike,
    *,
    model: Optional[str] = None,
    device: str = "auto",
    num_views: int = 3,
    max_views: int = 30,
    segmenter: Any = None,
    topics: Optional[BagTopics] = None,
    precision: str = "auto",
    outside_views: str = "3d",
    storage: str = "mcap",
    overwrite: bool = False,
    progress: bool = True,
    map_path: Optional[str | os.PathLike] = None,
    map_voxel_size: float = 0.04,
    map_max_voxels: int = 500_000,
    map_fusion: str = "count",
    map_smoothing: float = 1.0,
    map_smoothing_cell: float = 0.16,
) -> SegmentBagSummary:
    """Segment every cloud of ``bag`` with the views seen so far; write the results into ``out_bag``.

    The keywords are ``safnet segment-bag``'s options (docs/bags.md; ``map_path`` is ``--map``); the
    chunk stride, max_points, sync_slop and fixed frame are the node's defaults. segmenter: an already
    built Segmenter (overrides model, device, num_views, precision and outside_views).  A bag without
    the required topics raises one MissingDataError listing them; an existing ``out_bag`` raises
    ConfigError unless ``overwrite``.
    """
    topics = topics if topics is not None else BagTopics()
    started = time.perf_counter()
    plugin = bio.bag_storage_plugin(storage)
    bio.require_bag(bag)
    # OUT_BAG: separate from BAG, replaced only with overwrite and only when safnet wrote it (docs/reliability.md)
    out_bag = od.claim(out_bag, "segment-bag", overwrite=overwrite, inputs=[bag], what="output bag")
    summary = SegmentBagSummary(out=str(out_bag))
    vmap = None
    if map_path is not None:
        vmap = SemanticVoxelMap(voxel_size=map_voxel_size, max_voxels=map_max_voxels, fusion=map_fusion,
                                smoothing=map_smoothing, smoothing_cell=map_smoothing_cell)
        if os.path.isdir(map_path):
            raise ConfigError(f"--map {map_path}: is a folder; give a .ply file name")
    with bio.bag_reader(bag) as reader:
        topics = with_compressed_images(reader.connections, topics)
        check_topics(reader.connections, topics, bag)
        if segmenter is None:
            segmenter = Segmenter.from_checkpoint(model, device=device, num_views=num_views,
                                                  chunk_stride=SPECS["chunk_stride"].default,
                                                  max_points=SPECS["max_points"].default,
                                                  precision=precision, outside_views=outside_views)
        summary.untrained_model = bool(segmenter.untrained)
        tf = read_tf(reader, topics, bag)
        pipeline = SegmentationPipeline(segmenter, ViewBuffer(max_views=max_views, policy=KeyframePolicy()), vmap)
        pairer = _FramePairer(int(SPECS["sync_slop"].default * 1e9))
        by_topic = {c.topic: c for c in reader.connections}
        wanted = [by_topic[t] for t in (topics.color, topics.depth, topics.camera_info, topics.points)]
        info: Any = None
        waiting_for_info: deque[tuple[int, Any, Any]] = deque(maxlen=10)
        total = sum(c.msgcount for c in wanted)
        settings = {"bag": os.path.abspath(bag), "model": model, "num_views": num_views, "max_views": max_views,
                    "storage": storage, "map": None if map_path is None else str(map_path)}
        with od.staged_folder(out_bag, "segment-bag", settings, create=False, overwrite=overwrite) as tmp, \
                Writer(tmp, version=bio.BAG_VERSION, storage_plugin=plugin) as writer:
            conn_cloud = writer.add_connection(bio.LABELED_CLOUD_TOPIC, bio.POINTCLOUD2, typestore=bio.TYPESTORE,
                                               offered_qos_profiles=[bio.DEFAULT_QOS])
            conn_markers = writer.add_connection(bio.MARKERS_TOPIC, bio.MARKER_ARRAY, typestore=bio.TYPESTORE,
                                                 offered_qos_profiles=[bio.DEFAULT_QOS])
            for conn, ns, raw in tqdm(bio.bag_messages(reader, bag, wanted), total=total, desc="segmenting",
                                      unit="msg", disable=not progress, leave=False):
                try:
                    msg = bio.deserialize(raw, conn.msgtype, what=f"{bag}:{conn.topic}")
                except MessageDecodeError:
                    summary.decode_errors += 1
                    continue
                if conn.topic == topics.camera_info:
                    info = msg
                    while waiting_for_info:  # pairs that came before the first camera_info
                        _add_frame(waiting_for_info.popleft(), info, tf, pipeline, summary)
                elif conn.topic in (topics.color, topics.depth):
                    pair = pairer.add("color" if conn.topic == topics.color else "depth",
                                      codecs.stamp_to_ns(msg.header.stamp), msg)
                    if pair is not None and info is None:
                        if len(waiting_for_info) == waiting_for_info.maxlen:
                            summary.frames_no_camera_info += 1
                        waiting_for_info.append(pair)
                    elif pair is not None:
                        _add_frame(pair, info, tf, pipeline, summary)
                else:
                    _segment_cloud(msg, ns, tf, pipeline, writer, (conn_cloud, conn_markers), summary)
    if vmap is not None:
        summary.map_path = str(save_map(map_path, vmap.snapshot(with_scores=True), frame_id=bio.MAP_FRAME))
        summary.map_voxels = len(vmap)
    summary.frames_unpaired = pairer.unpaired
    summary.frames_no_camera_info += len(waiting_for_info)
    summary.views_kept = pipeline.buffer.stats.kept
    summary.elapsed_s = time.perf_counter() - started
    return summary


def read_tf(reader: Any, topics: BagTopics, bag: str | os.PathLike) -> TfTree:
    """Every transform of the bag's TF topics in a :class:`~safnet_ros.ros.tf_tree.TfTree` (the whole span kept)."""
    tf = TfTree(cache_ns=None)
    conns = [c for c in reader.connections if c.topic in (topics.tf, topics.tf_static)]
    for conn, _, raw in bio.bag_messages(reader, bag, conns):
        static = conn.topic == topics.tf_static or bio.is_transient_local(conn.ext.offered_qos_profiles)
        for t in bio.deserialize(raw, conn.msgtype, what=f"{bag}:{conn.topic}").transforms:
            tf.add(t, static)
    return tf


def _add_frame(pair: tuple[int, Any, Any], info: Any, tf: TfTree, pipeline: SegmentationPipeline,
               summary: SegmentBagSummary) -> None:
    """A paired colour/depth set through the node's frame path: stamp interval, pose, then decode if kept."""
    ns, cmsg, dmsg = pair
    summary.frames_paired += 1
    stamp_s = ns / 1e9
    if not pipeline.frame_due(stamp_s):
        pipeline.buffer.stats.not_keyframe += 1
        return
    try:
        pose = tf.lookup_matrix(bio.MAP_FRAME, codecs.camera_frame_id(dmsg, info), ns)
    except MessageDecodeError:
        summary.decode_errors += 1
        return
    except FallbackTransformException:
        summary.frames_no_pose += 1
        return
    try:
        if pipeline.offer_frame(stamp_s, pose, lambda: codecs.decode_rgbd(cmsg, dmsg, info)) != KEPT:
            pipeline.buffer.stats.not_keyframe += 1
    except SafnetError:  # undecodable messages, unusable K or image shapes (as the node counts them)
        summary.decode_errors += 1


def _segment_cloud(msg: Any, ns: int, tf: TfTree, pipeline: SegmentationPipeline, writer: Any,
                   conns: tuple[Any, Any], summary: SegmentBagSummary) -> None:
    """One cloud through the node's cloud path; its labelled cloud and markers written at ``ns``."""
    t0 = time.perf_counter()
    try:
        xyz = codecs.pointcloud2_to_xyz(msg).xyz
    except MessageDecodeError:
        summary.decode_errors += 1
        return
    try:
        T = tf.lookup_matrix(bio.MAP_FRAME, msg.header.frame_id, codecs.stamp_to_ns(msg.header.stamp))
    except FallbackTransformException:
        summary.clouds_no_pose += 1
        return
    out = pipeline.segment_cloud(xyz, T)
    summary.clouds_3d_only += int(out.three_d_only)
    writer.write(conns[0], ns, bio.serialize_message(codecs.labeled_cloud(out.xyz, out.result, msg.header)))
    summary.latencies_s.append(time.perf_counter() - t0)
    header = codecs.make_header(frame_id=bio.MAP_FRAME, stamp=msg.header.stamp)
    # serialised from arrays, as the node publishes them (building the message field by field is slow)
    writer.write(conns[1], ns, similarity_markers_cdr(bio.serialize_message, header, out.world, out.result.s,
                                                      views=out.used_views))
    summary.clouds += 1
    summary.points += int(xyz.shape[0])
    stats = pipeline.update_map(out)
    if stats is not None:
        summary.map_update_s.append(stats.seconds)
