"""``safnet segment-bag``: the node's pipeline run offline over a whole rosbag2 (batch evaluation, CI).

The same steps as :class:`safnet_ros.ros.segment_node.SegmentNode`, without
rclpy or DDS, deterministic and as fast as the model allows:

1. ``/tf`` and ``/tf_static`` are read first into a :class:`TfTimeline`
   (per link: the recorded stamps; a lookup interpolates between the two
   bracketing samples — linear translation, quaternion slerp — and chains
   links up to a common root, e.g. map -> camera_link -> optical frame);
2. colour, depth and camera_info are read in time order and paired by stamp
   (nearest within ``slop``); each pair's camera pose is looked up at the depth
   stamp, the keyframe policy of the node's :class:`~safnet_ros.engine.view_buffer.ViewBuffer`
   decides whether to keep it, and kept frames become network-size
   :class:`~safnet_ros.engine.batching.PosedView` s;
3. every ``/points`` cloud is brought into the fixed frame and segmented by a
   :class:`~safnet_ros.engine.inference.Segmenter` with the buffered views seen
   so far; ``/safnet/labeled_cloud`` (the node's layout: x, y, z, rgb = class
   colour, label uint16 (255 = not segmented), confidence, similarity S; in the
   cloud's own frame and stamp) and ``/safnet/similarity_markers`` (in the
   fixed frame) are written into the output bag at the cloud's stamp;
4. with ``map_path`` (``--map MAP.ply``) every segmented cloud's per-point
   class probabilities are fused into a
   :class:`~safnet_ros.mapping.SemanticVoxelMap` (the node's map, same rule
   and settings), saved to the PLY at the end (docs/ros_node.md).

Latency per cloud is the wall time from the decoded cloud to its encoded
output (mostly the model).  Frames and clouds that cannot be used (no pose at
their stamp, no matching image) are counted, never dropped silently.
"""
from __future__ import annotations

import bisect
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from safnet_ros.errors import ConfigError, MessageDecodeError, MissingDataError, SafnetError
from safnet_ros.geometry.transforms import matrix_to_quat, quat_to_matrix
from safnet_ros.tools import bag_io as bio

#: Largest extrapolation past a link's first/last sample that a lookup accepts (clamped), nanoseconds.
DEFAULT_TF_TOLERANCE_NS = 50_000_000


class TransformLookupError(SafnetError, LookupError):
    """No transform between two frames at a time (unknown frame, two trees, or outside the recorded span)."""


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (x, y, z, w) along the shorter arc, t in [0, 1]."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


class _Link:
    """Samples of one parent -> child link: stamps (T,) ns, translations (T, 3), quaternions (T, 4)."""

    def __init__(self, parent: str, static: bool):
        self.parent = parent
        self.static = static
        self.stamps: list[int] = []
        self.t: list[np.ndarray] = []
        self.q: list[np.ndarray] = []

    def add(self, ns: int, matrix: np.ndarray) -> None:
        t, q = matrix[:3, 3].copy(), matrix_to_quat(matrix[:3, :3])
        if self.static:
            self.stamps, self.t, self.q = [ns], [t], [q]
            return
        i = bisect.bisect_left(self.stamps, ns)
        if i < len(self.stamps) and self.stamps[i] == ns:
            self.t[i], self.q[i] = t, q
            return
        self.stamps.insert(i, ns)
        self.t.insert(i, t)
        self.q.insert(i, q)

    def at(self, ns: int, tolerance_ns: int, child: str) -> np.ndarray:
        """4x4 T_parent_child at ``ns`` (interpolated; clamped within ``tolerance_ns`` of the ends)."""
        if self.static:
            i0 = i1 = 0
            w = 0.0
        else:
            st = self.stamps
            if ns < st[0] - tolerance_ns or ns > st[-1] + tolerance_ns:
                raise TransformLookupError(
                    f"{self.parent} -> {child}: no data at {ns / 1e9:.3f} s "
                    f"(recorded {st[0] / 1e9:.3f} .. {st[-1] / 1e9:.3f} s)"
                )
            i1 = min(max(bisect.bisect_left(st, ns), 0), len(st) - 1)
            if st[i1] == ns or ns <= st[0]:
                i0, w = i1, 0.0
            elif ns > st[-1]:
                i0 = i1 = len(st) - 1
                w = 0.0
            else:
                i0 = i1 - 1
                w = (ns - st[i0]) / (st[i1] - st[i0])
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(slerp(self.q[i0], self.q[i1], w) if w else self.q[i0])
        m[:3, 3] = (1 - w) * self.t[i0] + w * self.t[i1]
        return m


class TfTimeline:
    """The recorded TF tree of a bag, looked up at any stamp (numpy only).

    Each child frame has one parent (a later message with another parent
    replaces the link, as tf2 does).  ``lookup(target, source, ns)`` returns
    T_target_source (maps points in ``source`` into ``target``).
    """

    def __init__(self, tolerance_ns: int = DEFAULT_TF_TOLERANCE_NS):
        self.tolerance_ns = int(tolerance_ns)
        self.links: dict[str, _Link] = {}
        self.num_rejected = 0

    def add(self, tf: Any, static: bool) -> bool:
        """Store one geometry_msgs/TransformStamped; False (counted) for a malformed or self-parented one."""
        parent = str(tf.header.frame_id).lstrip("/")
        child = str(tf.child_frame_id).lstrip("/")
        try:
            matrix = bio.transform_to_matrix(tf)
        except MessageDecodeError:
            self.num_rejected += 1
            return False
        if not parent or not child or parent == child or not np.isfinite(matrix).all():
            self.num_rejected += 1
            return False
        link = self.links.get(child)
        if link is None or link.parent != parent or link.static != static:
            link = self.links[child] = _Link(parent, static)
        link.add(bio.stamp_ns(tf.header.stamp), matrix)
        return True

    def _to_root(self, frame: str, ns: int) -> tuple[str, np.ndarray]:
        """(root frame, T_root_frame) following parents from ``frame``."""
        T = np.eye(4)
        seen = set()
        while frame in self.links:
            if frame in seen:
                raise TransformLookupError(f"TF has a loop through {frame!r}")
            seen.add(frame)
            link = self.links[frame]
            T = link.at(ns, self.tolerance_ns, frame) @ T
            frame = link.parent
        return frame, T

    def lookup(self, target: str, source: str, ns: int) -> np.ndarray:
        """4x4 T_target_source at ``ns`` nanoseconds; TransformLookupError when there is none."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        for f in (target, source):
            if f not in self.links and not any(link.parent == f for link in self.links.values()):
                raise TransformLookupError(f"frame {f!r} is not in the recorded TF tree")
        root_t, T_rt = self._to_root(target, ns)
        root_s, T_rs = self._to_root(source, ns)
        if root_t != root_s:
            raise TransformLookupError(f"{target!r} and {source!r} are in two unconnected TF trees")
        return np.linalg.inv(T_rt) @ T_rs


@dataclass
class BagTopics:
    """Input topics of :func:`segment_bag` (the converter's defaults)."""

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


def check_topics(connections: list[Any], topics: BagTopics, bag: str | os.PathLike) -> None:
    """One MissingDataError listing every required topic the bag lacks (tf_static is optional)."""
    have = {c.topic: c.msgtype for c in connections}
    need = {topics.color: bio.IMAGE, topics.depth: bio.IMAGE, topics.camera_info: bio.CAMERA_INFO,
            topics.points: bio.POINTCLOUD2, topics.tf: bio.TF_MESSAGE}
    problems = []
    for topic, msgtype in need.items():
        if topic not in have:
            problems.append(f"{topic} ({msgtype})")
        elif have[topic] != msgtype:
            problems.append(f"{topic} is {have[topic]}, expected {msgtype}")
    if problems:
        raise MissingDataError(bag, f"topics {', '.join(problems)} (the bag has: {', '.join(sorted(have)) or 'none'})")


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
    fixed_frame: str = bio.MAP_FRAME,
    chunk_stride: float = 1.5,
    max_points: Optional[int] = 100_000,
    slop: float = 0.05,
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

    model: checkpoint (None = the shipped default, or an untrained lite model
    with a warning); segmenter: an already built Segmenter (overrides model,
    device, num_views); max_views: keyframes kept (the node's
    buffer_max_views); chunk_stride, max_points: as the node's parameters;
    slop: seconds between a paired colour and depth stamp.  A bag without the
    required topics raises one MissingDataError listing them; an existing
    ``out_bag`` raises ConfigError unless ``overwrite``.  map_path: also fuse
    every cloud into a semantic voxel map (``map_voxel_size`` m,
    ``map_max_voxels``, ``map_fusion``, read with ``map_smoothing`` over
    ``map_smoothing_cell`` m) saved there at the end.
    """
    topics = topics if topics is not None else BagTopics()
    from rosbags.rosbag2 import Writer

    from safnet_ros.data.labels import class_colors
    from safnet_ros.engine.batching import prepare_view
    from safnet_ros.engine.view_buffer import KeyframePolicy, ViewBuffer

    started = time.perf_counter()
    plugin = bio.bag_storage_plugin(storage)
    bio.require_bag(bag)
    out_bag = bio.check_output(out_bag, overwrite)
    if os.path.abspath(out_bag) == os.path.abspath(bag):
        raise ConfigError("the output bag must differ from the input bag")
    summary = SegmentBagSummary(out=str(out_bag))
    vmap = None
    if map_path is not None:
        from safnet_ros.mapping import SemanticVoxelMap

        vmap = SemanticVoxelMap(voxel_size=map_voxel_size, max_voxels=map_max_voxels, fusion=map_fusion,
                                smoothing=map_smoothing, smoothing_cell=map_smoothing_cell)
        if os.path.isdir(map_path):
            raise ConfigError(f"--map {map_path}: is a folder; give a .ply file name")
    with bio.bag_reader(bag) as reader:
        check_topics(reader.connections, topics, bag)
        if segmenter is None:
            from safnet_ros.engine.inference import Segmenter

            segmenter = Segmenter.from_checkpoint(model, device=device, num_views=num_views,
                                                  chunk_stride=chunk_stride, max_points=max_points)
        summary.untrained_model = bool(getattr(segmenter, "untrained", False))
        tf = read_tf(reader, topics, bag)
        buffer = ViewBuffer(max_views=max_views, policy=KeyframePolicy())
        pairer = _FramePairer(int(slop * 1e9))
        by_topic = {c.topic: c for c in reader.connections}
        wanted = [by_topic[t] for t in (topics.color, topics.depth, topics.camera_info, topics.points)]
        K_info: Optional[tuple[np.ndarray, tuple[int, int]]] = None
        waiting_for_info: deque[tuple[int, Any, Any]] = deque(maxlen=10)
        from tqdm import tqdm

        total = sum(c.msgcount for c in wanted)
        with bio.staged_output(out_bag, overwrite) as tmp, Writer(tmp, version=9, storage_plugin=plugin) as writer:
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
                    try:
                        K_info = (bio.camera_info_to_K(msg), (int(msg.width), int(msg.height)))
                    except MessageDecodeError:
                        summary.decode_errors += 1
                        continue
                    while waiting_for_info:  # pairs that came before the first camera_info
                        _add_view(waiting_for_info.popleft(), K_info, tf, fixed_frame, buffer, prepare_view, summary)
                    continue
                if conn.topic in (topics.color, topics.depth):
                    pair = pairer.add("color" if conn.topic == topics.color else "depth",
                                      bio.stamp_ns(msg.header.stamp), msg)
                    if pair is not None and K_info is None:
                        if len(waiting_for_info) == waiting_for_info.maxlen:
                            summary.frames_no_camera_info += 1
                        waiting_for_info.append(pair)
                    elif pair is not None:
                        _add_view(pair, K_info, tf, fixed_frame, buffer, prepare_view, summary)
                    continue
                # a cloud
                t0 = time.perf_counter()
                try:
                    xyz = bio.pointcloud_to_xyz(msg, what=f"{bag}:{conn.topic}")
                except MessageDecodeError:
                    summary.decode_errors += 1
                    continue
                cloud_ns = bio.stamp_ns(msg.header.stamp)
                try:
                    T = tf.lookup(fixed_frame, msg.header.frame_id, cloud_ns)
                except TransformLookupError:
                    summary.clouds_no_pose += 1
                    continue
                world = (xyz.astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
                views = buffer.views()
                result = segmenter.segment(world, views)
                if not views or not result.views_used:
                    summary.clouds_3d_only += 1
                labels = result.labels
                arr = bio.labeled_cloud_array(xyz, labels, class_colors(labels), result.confidence,
                                              np.nan_to_num(result.s, nan=0.0))
                writer.write(conn_cloud, ns, bio.serialize(bio.pointcloud_message(arr, cloud_ns, msg.header.frame_id)))
                summary.latencies_s.append(time.perf_counter() - t0)
                used = [views[i] for i in result.views_used if 0 <= i < len(views)]
                writer.write(conn_markers, ns, bio.serialize(
                    bio.similarity_markers(cloud_ns, fixed_frame, world, result.s, views=used)))
                summary.clouds += 1
                summary.points += int(xyz.shape[0])
                if vmap is not None and result.probs is not None:
                    seg = result.segmented
                    summary.map_update_s.append(
                        vmap.integrate(world[seg], result.probs[seg], sensor_origin=T[:3, 3]).seconds)
    if vmap is not None:
        from safnet_ros.mapping.map_ply import save_map

        summary.map_path = str(save_map(map_path, vmap.snapshot(with_scores=True), frame_id=fixed_frame))
        summary.map_voxels = len(vmap)
    summary.frames_unpaired = pairer.unpaired
    summary.frames_no_camera_info += len(waiting_for_info)
    summary.views_kept = buffer.stats.kept
    summary.elapsed_s = time.perf_counter() - started
    return summary


def read_tf(reader: Any, topics: BagTopics, bag: str | os.PathLike) -> TfTimeline:
    """Every transform of the bag's TF topics in a :class:`TfTimeline`."""
    tf = TfTimeline()
    conns = [c for c in reader.connections if c.topic in (topics.tf, topics.tf_static)]
    for conn, _, raw in bio.bag_messages(reader, bag, conns):
        static = conn.topic == topics.tf_static or bio.is_transient_local(conn.ext.offered_qos_profiles)
        for t in bio.deserialize(raw, conn.msgtype, what=f"{bag}:{conn.topic}").transforms:
            tf.add(t, static)
    return tf


def _add_view(pair, K_info, tf: TfTimeline, fixed_frame: str, buffer, prepare_view, summary) -> None:
    """Decode a paired colour/depth set, find its pose, and offer it to the view buffer as a keyframe."""
    ns, cmsg, dmsg = pair
    summary.frames_paired += 1
    try:
        frame_id = dmsg.header.frame_id or cmsg.header.frame_id
        pose = tf.lookup(fixed_frame, frame_id, ns)
    except TransformLookupError:
        summary.frames_no_pose += 1
        return
    stamp_s = ns / 1e9
    if not buffer.decide(stamp_s, pose).keep:
        buffer.stats.not_keyframe += 1
        return
    try:
        color = bio.image_to_array(cmsg, "colour Image")
        if cmsg.encoding in ("bgr8", "bgra8"):
            color = color[:, :, 2::-1]
        elif cmsg.encoding in ("mono8", "8UC1"):
            color = np.repeat(color[:, :, None], 3, axis=2)
        color = np.ascontiguousarray(color[:, :, :3])
        depth = bio.depth_to_metres(dmsg)
    except MessageDecodeError:
        summary.decode_errors += 1
        return
    K, info_wh = K_info
    dh, dw = depth.shape
    if info_wh != (dw, dh) and all(info_wh):
        from safnet_ros.geometry.camera import scale_intrinsics

        K = scale_intrinsics(K, info_wh, (dw, dh))
    buffer.offer(prepare_view(color, depth, K, pose, stamp=stamp_s))
