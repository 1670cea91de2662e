"""The safnet_segment node end to end over real rclpy + DDS (no mocks of rclpy).

A publisher node sends an analytic room (floor, four walls, a box) as posed RGB-D
frames (rgb8, 16UC1 depth, CameraInfo), transforms (through the TF path the node
uses: the drop-in TransformStamped topics here, /tf on a full install) and a
PointCloud2 in a ``lidar`` frame. The labeled clouds that come back are checked
against ``Segmenter.segment`` run offline on the very same messages with the
same (untrained, seeded) model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time as TimeMsg  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from safnet_ros.data.labels import IGNORE_INDEX, class_colors  # noqa: E402
from safnet_ros.engine.batching import prepare_view  # noqa: E402
from safnet_ros.engine.pipeline import transform_points  # noqa: E402
from safnet_ros.ros import codecs, compat  # noqa: E402
from safnet_ros.ros.diagnostics import diagnostics_values  # noqa: E402
from safnet_ros.ros.segment_node import PARAMETERS, SegmentNode  # noqa: E402
from safnet_ros.ros.spin import spin_resilient  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- the analytic scene
ROOM_HI = np.array([4.0, 4.0, 2.5])
BOX_LO = np.array([1.6, 1.5, 0.0])
BOX_HI = np.array([2.6, 2.3, 0.8])
IMAGE_WH = (320, 240)
K_CAM = np.array([[277.0, 0.0, 159.5], [0.0, 277.0, 119.5], [0.0, 0.0, 1.0]])
CAMERA_EYES = ([0.4, 0.5, 1.5], [3.6, 0.6, 1.4], [2.0, 3.7, 1.6])
LOOK_AT = [2.1, 1.9, 0.4]


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) camera-to-world in the optical convention (z forward, x right, y down)."""
    eye = np.asarray(eye, float)
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


def render(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the room: (rgb (H, W, 3) uint8, z-depth (H, W) float32 metres)."""
    w, h = IMAGE_WH
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([(u - K_CAM[0, 2]) / K_CAM[0, 0], (v - K_CAM[1, 2]) / K_CAM[1, 1], np.ones_like(u)], -1)
    d = rays.reshape(-1, 3) @ T[:3, :3].T  # camera z = 1, so the ray parameter is the z-depth
    o = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t_room = np.maximum(-o * inv, (ROOM_HI - o) * inv).min(axis=1)
        t0, t1 = (BOX_LO - o) * inv, (BOX_HI - o) * inv
        t_in, t_out = np.minimum(t0, t1).max(axis=1), np.maximum(t0, t1).min(axis=1)
    box = (t_in <= t_out) & (t_in > 0) & (t_in < t_room)
    t = np.where(box, t_in, t_room)
    p = o + d * t[:, None]
    rgb = np.full((len(t), 3), 200.0)
    floor = ~box & (p[:, 2] < 1e-3)
    wall = ~box & ~floor & (p[:, 2] < ROOM_HI[2] - 1e-3)
    checker = (np.floor(p[:, 0] * 2) + np.floor(p[:, 1] * 2)) % 2
    rgb[floor] = 110 + 60 * checker[floor, None] * np.array([1.0, 0.8, 0.5])
    rgb[wall] = [150, 170, 210]
    rgb[box] = [200, 40, 30]
    return rgb.reshape(h, w, 3).astype(np.uint8), t.reshape(h, w).astype(np.float32)


def sample_room(spacing: float) -> np.ndarray:
    """(N, 3) float32 points on the floor, the walls (up to 2 m) and the box, on a grid of ``spacing`` m."""
    def grid(a0, a1, b0, b1):
        a, b = np.meshgrid(np.arange(a0 + spacing / 2, a1, spacing), np.arange(b0 + spacing / 2, b1, spacing))
        return a.ravel(), b.ravel()

    parts = []
    x, y = grid(0, 4, 0, 4)
    under_box = (x > BOX_LO[0]) & (x < BOX_HI[0]) & (y > BOX_LO[1]) & (y < BOX_HI[1])
    parts.append(np.stack([x, y, np.zeros_like(x)], 1)[~under_box])
    a, z = grid(0, 4, 0, 2.0)
    for const, axis in ((0.0, 0), (4.0, 0), (0.0, 1), (4.0, 1)):
        pts = np.zeros((len(a), 3))
        pts[:, axis], pts[:, 1 - axis], pts[:, 2] = const, a, z
        parts.append(pts)
    x, y = grid(BOX_LO[0], BOX_HI[0], BOX_LO[1], BOX_HI[1])
    parts.append(np.stack([x, y, np.full_like(x, BOX_HI[2])], 1))
    a, z = grid(BOX_LO[0], BOX_HI[0], 0, BOX_HI[2])
    parts += [np.stack([a, np.full_like(a, yc), z], 1) for yc in (BOX_LO[1], BOX_HI[1])]
    a, z = grid(BOX_LO[1], BOX_HI[1], 0, BOX_HI[2])
    parts += [np.stack([np.full_like(a, xc), a, z], 1) for xc in (BOX_LO[0], BOX_HI[0])]
    return np.concatenate(parts).astype(np.float32)


#: The lidar sits 1 m up in the room, yawed 30 degrees: T_map_lidar.
T_MAP_LIDAR = np.eye(4)
T_MAP_LIDAR[:3, :3] = [[np.cos(0.5236), -np.sin(0.5236), 0], [np.sin(0.5236), np.cos(0.5236), 0], [0, 0, 1]]
T_MAP_LIDAR[:3, 3] = [2.0, 2.0, 1.0]


def through_tf(T: np.ndarray) -> np.ndarray:
    """T as the node sees it after a TransformStamped round trip (quaternion, float64)."""
    return compat.transform_to_matrix(compat.matrix_to_transform(T))


def stamp(seconds: float) -> TimeMsg:
    return codecs.ns_to_stamp(int(round(seconds * 1e9)))


def lidar_cloud(spacing: float, stamp_s: float, nan_rows: int = 3, frame_id: str = "lidar") -> tuple[PointCloud2, np.ndarray]:
    """(PointCloud2 with x y z intensity in the lidar frame, its finite xyz (N, 3) in that frame)."""
    world = sample_room(spacing)
    inv = np.linalg.inv(T_MAP_LIDAR)
    local = transform_points(inv, world)
    cols = {"x": local[:, 0].copy(), "y": local[:, 1].copy(), "z": local[:, 2].copy(),
            "intensity": np.linspace(0, 1, len(local)).astype(np.float32)}
    for name in "xyz":
        cols[name][:nan_rows] = np.nan
    msg = codecs.array_to_pointcloud2(cols, frame_id=frame_id, stamp=stamp(stamp_s))
    return msg, local[nan_rows:]


def frame_messages(T: np.ndarray, stamp_s: float) -> tuple[Image, Image, CameraInfo]:
    rgb, depth = render(T)
    header = codecs.make_header(frame_id="camera_optical", stamp=stamp(stamp_s))
    rgb_msg = codecs.array_to_image(rgb, "rgb8", header)
    depth_msg = codecs.array_to_image(np.round(depth * 1000.0).astype(np.uint16), "16UC1", header)
    info = CameraInfo()
    info.header = header
    info.width, info.height = IMAGE_WH
    info.k = [float(v) for v in K_CAM.ravel()]
    return rgb_msg, depth_msg, info


# ----------------------------------------------------------------------------- the harness
NODE_PARAMS = {
    "device": "cpu",
    "num_views": 3,
    "chunk_size": 8.0,  # one chunk: keeps the untrained model's CPU time low
    "chunk_stride": 8.0,
    "keyframe_min_interval": 0.1,
    "tf_timeout": 0.5,
    "marker_stride": 2,
    "diagnostics_period": 0.2,
}


def tiny_checkpoint(path: Path) -> Path:
    """A seeded, untrained lite SAFNet with a lighter PointNet++, saved with save_checkpoint."""
    import torch

    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model, save_checkpoint

    torch.manual_seed(1234)
    config = SafnetConfig.preset("lite", pn_npoints=(256, 64, 16, 4), k=8)
    model = build_model(config).eval()
    with torch.no_grad():  # sharpen the random classifier so labels vary from point to point
        model.head.classifier.weight.mul_(50.0)
    save_checkpoint(path, model, config)
    return path


def offline_segmenter(model_path: Path, node: SegmentNode):
    """A Segmenter loaded from the same file with the node's own parameter values."""
    from safnet_ros.engine.inference import Segmenter

    def value(name: str):
        return node.get_parameter(name).value

    return Segmenter.from_checkpoint(
        model_path, device="cpu", num_views=value("num_views"), chunk_size=value("chunk_size"),
        chunk_stride=value("chunk_stride"), max_points=value("max_points") or None,
        voxel_size=value("voxel_size"), crop_margin=value("crop_margin"), precision=value("precision"),
        outside_views=value("outside_views"), batch_points=value("batch_points"),
    )


class Collector:
    """Subscription callback that keeps messages and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list = []
        self.cond = threading.Condition()

    def __call__(self, msg) -> None:
        with self.cond:
            self.items.append(msg)
            self.cond.notify_all()

    def wait_for(self, pred: Callable, timeout: float):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.items:
                    if pred(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Ctrl-C for a node process still running (as a user stops it), killed after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(pred: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period)
    return pred()


class Harness:
    """One rclpy context: the node under test, a scene publisher node, collectors, a spinning executor."""

    def __init__(self, model_path: Path, params: dict | None = None, in_process: bool = True,
                 raw_markers: bool = False):
        """``in_process=False``: no node here; the caller has started it as a process (the harness waits
        until it subscribes). ``raw_markers``: the markers are taken as serialised bytes, as RViz (C++)
        takes them, not turned into a Python object per point in this process (the latency benches)."""
        self.model_path = model_path
        self.context = Context()
        rclpy.init(context=self.context)
        overrides = [Parameter(k, value=v) for k, v in (NODE_PARAMS if params is None else params).items()]
        overrides.append(Parameter("model", value=str(model_path)))
        self.node = SegmentNode(context=self.context, parameter_overrides=overrides) if in_process else None
        self.pub = rclpy.create_node("scene_publisher", context=self.context)
        ns = "/safnet_segment"
        self.pub_rgb = self.pub.create_publisher(Image, f"{ns}/rgb/image", qos_profile_sensor_data)
        self.pub_depth = self.pub.create_publisher(Image, f"{ns}/depth/image", qos_profile_sensor_data)
        self.pub_info = self.pub.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
        self.pub_cloud = self.pub.create_publisher(PointCloud2, f"{ns}/points", qos_profile_sensor_data)
        self.tf = compat.TransformBroadcaster(self.pub)
        self.tf_static = compat.StaticTransformBroadcaster(self.pub)
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.clouds = Collector()
        self.markers = Collector()
        self.diagnostics = Collector()
        self.pub.create_subscription(PointCloud2, f"{ns}/labeled_cloud", self.clouds, reliable)
        self.pub.create_subscription(MarkerArray, f"{ns}/similarity_markers", self.markers, reliable,
                                     raw=raw_markers)
        self.pub.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        if self.node is not None:
            self.executor.add_node(self.node)
        self.executor.add_node(self.pub)
        self.thread = threading.Thread(target=spin_resilient, args=(self.executor, self.context), daemon=True)
        self.thread.start()
        self.tf_static.sendTransform(compat.matrix_to_transform(T_MAP_LIDAR, "map", "lidar"))
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in
                                      (self.pub_rgb, self.pub_depth, self.pub_info, self.pub_cloud)),
                          10.0 if in_process else 120.0)
        if self.node is not None:
            assert wait_until(lambda: "lidar" in self._known_frames(), 10.0)
        self._next_base = 1000.0

    def _known_frames(self) -> str:
        return str(getattr(self.node.tf_buffer, "all_frames", lambda: ["lidar"])())

    def base_stamp(self) -> float:
        """A fresh stretch of time for one test (100 s after the previous one)."""
        self._next_base += 100.0
        return self._next_base

    def publish_views(self, base: float, step: float = 0.5) -> list[tuple[Image, Image, CameraInfo, np.ndarray]]:
        """Send the three camera transforms and frames; returns (rgb, depth, info, T) per view."""
        sent = []
        for i, eye in enumerate(CAMERA_EYES):
            T = look_at(eye, LOOK_AT)
            t = base + i * step
            self.tf.sendTransform(compat.matrix_to_transform(T, "map", "camera_optical", stamp=stamp(t)))
            sent.append((*frame_messages(T, t), T))
        time.sleep(0.1)
        for rgb, depth, info, _ in sent:
            self.pub_rgb.publish(rgb)
            self.pub_depth.publish(depth)
            self.pub_info.publish(info)
            time.sleep(0.05)
        return sent

    def wait_cloud(self, stamp_s: float, timeout: float = 40.0) -> PointCloud2 | None:
        ns = int(round(stamp_s * 1e9))
        return self.clouds.wait_for(lambda m: codecs.stamp_to_ns(m.header.stamp) == ns, timeout)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        if self.node is not None:
            self.node.destroy_node()
        self.pub.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")


@pytest.fixture(scope="module")
def harness(model_path):
    h = Harness(model_path)
    yield h
    h.close()


# ----------------------------------------------------------------------------- tests
def test_labeled_cloud_matches_offline_segmentation(harness, model_path):
    h = harness
    base = h.base_stamp()
    h.node.buffer.clear()
    prepared = h.node.stats.get("views_prepared_idle")
    sent = h.publish_views(base)
    if not wait_until(lambda: len(h.node.buffer) == 3, 10.0):  # best effort: resend once
        sent = h.publish_views(base)
    assert wait_until(lambda: len(h.node.buffer) == 3, 10.0), h.node.stats.counters
    # The idle worker encodes and back-projects the kept views before any cloud needs them
    # (the labels below must still equal the offline run's, which prepared nothing).
    assert wait_until(lambda: h.node.stats.get("views_prepared_idle") >= prepared + 3, 10.0), h.node.stats.counters
    cloud_t = base + 1.2
    msg, local = lidar_cloud(0.2, cloud_t)
    h.pub_cloud.publish(msg)
    out = h.wait_cloud(cloud_t)
    assert out is not None, f"no labeled cloud; node counters {h.node.stats.counters}"

    assert out.header.frame_id == "lidar"
    assert [(f.name, f.datatype) for f in out.fields] == [
        ("x", PointField.FLOAT32), ("y", PointField.FLOAT32), ("z", PointField.FLOAT32),
        ("rgb", PointField.FLOAT32), ("label", PointField.UINT16), ("confidence", PointField.FLOAT32),
        ("similarity", PointField.FLOAT32),
    ]
    arr = codecs.pointcloud2_to_array(out)
    assert len(arr) == len(local)  # the 3 NaN points are left out
    np.testing.assert_array_equal(np.stack([arr["x"], arr["y"], arr["z"]], 1), local)

    # Offline: the same messages, the same model, Segmenter.segment directly.
    views = [
        prepare_view(codecs.image_to_rgb(rgb), codecs.depth_to_metres(depth), codecs.camera_info_to_K(info),
                     through_tf(T), stamp=codecs.stamp_to_ns(depth.header.stamp) / 1e9)
        for rgb, depth, info, T in sent
    ]
    world = transform_points(through_tf(T_MAP_LIDAR), local)
    ref = offline_segmenter(model_path, h.node).segment(world, views)
    assert ref.views_used, "the offline run used no view: the scene does not exercise fusion"
    assert ref.segmented.mean() > 0.5  # points beyond the views' cover + crop_margin stay unsegmented (255)
    assert len(np.unique(ref.labels[ref.segmented])) >= 2, "labels too uniform to compare meaningfully"
    np.testing.assert_array_equal(arr["label"], ref.labels.astype(np.uint16))
    np.testing.assert_allclose(arr["confidence"], ref.confidence, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr["similarity"], np.nan_to_num(ref.s, nan=0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(codecs.unpack_rgb(arr["rgb"]), class_colors(ref.labels))

    # Markers: similarity points in the fixed frame plus one frustum per view used.
    markers = h.markers.wait_for(lambda m: any(mk.ns == "frustums" for mk in m.markers), 5.0)
    assert markers is not None
    frustums = [mk for mk in markers.markers if mk.ns == "frustums"]
    points = [mk for mk in markers.markers if mk.ns == "similarity"][0]
    assert len(frustums) == len(ref.views_used)
    assert all(len(f.points) == 16 and f.type == Marker.LINE_LIST for f in frustums)
    assert points.header.frame_id == "map" and len(points.points) == len(points.colors) > 0


def test_bad_messages_are_counted_and_the_node_keeps_running(harness):
    h = harness
    base = h.base_stamp()
    before = dict(h.node.stats.counters)
    # an RGB image with an unknown encoding, in an otherwise fine set
    rgb, depth, info = frame_messages(look_at(CAMERA_EYES[0], LOOK_AT), base)
    rgb.encoding = "not_an_encoding"
    h.tf.sendTransform(compat.matrix_to_transform(look_at(CAMERA_EYES[0], LOOK_AT), "map", "camera_optical",
                                                  stamp=stamp(base)))
    h.pub_rgb.publish(rgb)
    h.pub_depth.publish(depth)
    h.pub_info.publish(info)
    # a cloud whose data is shorter than width * point_step
    bad, _ = lidar_cloud(0.5, base + 0.1)
    bad.data = bytes(bad.data)[:-5]
    h.pub_cloud.publish(bad)
    assert wait_until(lambda: h.node.stats.get("decode_errors") >= before["decode_errors"] + 2, 10.0), \
        h.node.stats.counters
    # a cloud in a frame TF does not know (sent after: a newer cloud would replace it in the mailbox)
    lost, _ = lidar_cloud(0.5, base + 0.2, frame_id="nowhere")
    h.pub_cloud.publish(lost)
    assert wait_until(lambda: h.node.stats.get("tf_failures") >= before["tf_failures"] + 1, 10.0)
    diag = h.diagnostics.wait_for(
        lambda m: int(diagnostics_values(m).get("decode_errors", 0)) >= before["decode_errors"] + 2, 5.0)
    assert diag is not None
    status = diag.status[0]
    assert status.level == DiagnosticStatus.WARN, status.message
    assert status.name == "safnet_segment: segmentation" and status.hardware_id == "cpu"
    assert {"latency_mean_s", "rate_hz", "clouds_dropped", "buffer_views", "device"} <= set(diagnostics_values(diag))
    # still alive: a good cloud comes back labeled
    good, local = lidar_cloud(0.5, base + 0.3)
    h.pub_cloud.publish(good)
    out = h.wait_cloud(base + 0.3)
    assert out is not None and out.width == len(local)
    assert h.node.stats.get("worker_errors") == 0


def test_time_jump_back_clears_views_and_clouds_go_3d_only(harness, model_path):
    h = harness
    base = h.base_stamp()
    h.publish_views(base)
    assert wait_until(lambda: len(h.node.buffer) >= 1, 5.0)
    jumps = h.node.stats.get("time_jumps")
    assert h.wait_cloud(base + 1.0, timeout=0.0) is None
    h.pub_cloud.publish(lidar_cloud(0.4, base + 1.0)[0])
    assert h.wait_cloud(base + 1.0) is not None
    assert h.node.stats.get("time_jumps") == jumps  # a cloud newer than the frames is no jump
    past = base - 500.0  # the bag looped: before every cloud so far
    msg, local = lidar_cloud(0.4, past)
    h.pub_cloud.publish(msg)
    out = h.wait_cloud(past)
    assert out is not None
    assert h.node.stats.get("time_jumps") == jumps + 1
    assert len(h.node.buffer) == 0
    if hasattr(h.node.tf_buffer, "all_frames"):  # the drop-in buffer: kept, as no clock jumped (wall time)
        frames = h.node.tf_buffer.all_frames()
        assert "camera_optical" in frames and "lidar" in frames
    # no view any more (camera stopped): still segmented, 3D only, as offline with no views
    arr = codecs.pointcloud2_to_array(out)
    ref = offline_segmenter(model_path, h.node).segment(transform_points(through_tf(T_MAP_LIDAR), local), [])
    np.testing.assert_array_equal(arr["label"], ref.labels.astype(np.uint16))
    assert (arr["label"] != IGNORE_INDEX).all()


def test_parameters_have_descriptions_and_runtime_ones_can_change(harness):
    node = harness.node
    for spec in PARAMETERS:
        desc = node.describe_parameter(spec.name)
        assert desc.description, spec.name
        assert desc.read_only == (not spec.runtime), spec.name
    ok = node.set_parameters([Parameter("similarity_marker_source", value="s_con")])[0]
    assert ok.successful and node.get_parameter("similarity_marker_source").value == "s_con"
    bad = node.set_parameters([Parameter("similarity_marker_source", value="colour")])[0]
    assert not bad.successful and node.get_parameter("similarity_marker_source").value == "s_con"
    frozen = node.set_parameters([Parameter("fixed_frame", value="odom")])[0]
    assert not frozen.successful
    node.set_parameters([Parameter("buffer_max_views", value=2)])
    assert node.buffer.max_views == 2
    node.set_parameters([Parameter("buffer_max_views", value=30),
                         Parameter("similarity_marker_source", value="s")])


def test_node_sets_the_gil_switch_interval_of_its_process(harness):
    """The worker must win the GIL back after every torch op: the node shortens CPython's
    switch interval (gil_switch_interval, 0.5 ms) so busy callback threads cannot stall it."""
    assert harness.node.get_parameter("gil_switch_interval").value == 0.0005
    assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_the_worker_runs_torch_on_the_threads_asked_for(harness):
    """``threads``: N = N torch threads for every cloud; 0 = the cores other processes left free, at
    least 1 and at most torch's default (engine/cpu_share.py)."""
    import torch

    h = harness
    base = h.base_stamp()
    try:
        for i, (threads, allowed) in enumerate([(1, {1.0}), (0, {float(n) for n in range(1, h.node._max_threads + 1)})]):
            h.node.set_parameters([Parameter("threads", value=threads)])
            t = base + 0.5 * (i + 1)
            msg, _ = lidar_cloud(0.3, t)
            h.pub_cloud.publish(msg)
            assert h.wait_cloud(t) is not None, h.node.stats.counters
            assert h.node.last_timings["threads"] in allowed, (threads, h.node.last_timings)
    finally:
        h.node.set_parameters([Parameter("threads", value=0)])
    assert torch.get_num_threads() >= 1


def test_node_runs_as_a_separate_process(harness, model_path, tmp_path):
    """``python -m safnet_ros.ros.segment_node --ros-args ...`` labels a cloud sent over DDS."""
    h = harness
    name = "safnet_segment_proc"
    # the shipped parameter file as it is ('/**': any node name; every parameter and type checked by rcl)
    params_file = REPO / "config" / "segment.yaml"
    args = [sys.executable, "-m", "safnet_ros.ros.segment_node", "--ros-args", "-r", f"__node:={name}",
            "--params-file", str(params_file), "-p", f"model:={model_path}", "-p", "device:=cpu", "-p", "chunk_size:=8.0", "-p", "chunk_stride:=8.0",
            "-p", "tf_timeout:=0.5"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got = Collector()
    sub = h.pub.create_subscription(PointCloud2, f"/{name}/labeled_cloud", got,
                                    QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    pub = h.pub.create_publisher(PointCloud2, f"/{name}/points", qos_profile_sensor_data)
    try:
        assert wait_until(lambda: pub.get_subscription_count() > 0 or proc.poll() is not None, 45.0)
        assert proc.poll() is None, proc.stdout.read()
        base = h.base_stamp()
        msg, local = lidar_cloud(0.5, base)
        out = None
        deadline = time.monotonic() + 45.0
        while out is None and time.monotonic() < deadline and proc.poll() is None:
            pub.publish(msg)  # best effort: resend until it comes back
            out = got.wait_for(lambda m: True, 2.0)
        assert out is not None, "no labeled cloud from the node process"
        assert out.header.frame_id == "lidar" and out.width == len(local)
        assert codecs.stamp_to_ns(out.header.stamp) == codecs.stamp_to_ns(msg.header.stamp)
    finally:
        h.pub.destroy_subscription(sub)
        h.pub.destroy_publisher(pub)
        stop_process(proc, timeout=15)
    log = proc.stdout.read()
    assert "safnet_segment active" in log, log
    assert proc.returncode == 0, log


def test_newest_cloud_wins_when_inference_is_slower(harness):
    h = harness
    base = h.base_stamp()
    dropped = h.node.stats.get("clouds_dropped")
    stamps = [base + 0.1 * i for i in range(5)]
    for t in stamps:  # back to back: far faster than one forward pass
        h.pub_cloud.publish(lidar_cloud(0.4, t)[0])
    assert h.wait_cloud(stamps[-1], timeout=20.0) is not None, h.node.stats.counters
    assert h.node.stats.get("clouds_dropped") >= dropped + 2
    got = {codecs.stamp_to_ns(m.header.stamp) for m in h.clouds.items}
    assert len(got & {int(round(t * 1e9)) for t in stamps}) <= 3


def test_device_parameter_resolution():
    from safnet_ros.errors import ConfigError
    from safnet_ros.ros.segment_node import resolve_node_device

    assert resolve_node_device("auto", True) == ("cuda", None)
    device, note = resolve_node_device("auto", False)
    assert device == "cpu" and "no CUDA" in note
    device, note = resolve_node_device("cuda:1", False)
    assert device == "cpu" and "not available" in note
    assert resolve_node_device("cuda:1", True) == ("cuda:1", None)
    assert resolve_node_device("CPU", True) == ("cpu", None)
    with pytest.raises(ConfigError):
        resolve_node_device("tpu", True)


def test_main_refuses_to_start_with_a_missing_model(tmp_path):
    from safnet_ros.ros.segment_node import main

    missing = tmp_path / "missing.pt"
    assert main(["segment_node", "--ros-args", "-p", f"model:={missing}", "-p", "device:=cpu"]) == 1


def test_latest_mailbox_keeps_only_the_newest():
    from safnet_ros.ros.segment_node import LatestMailbox

    box = LatestMailbox()
    assert box.take(timeout=0.01) is None
    assert box.put("a") is False
    assert box.put("b") is True  # replaced "a": a drop
    assert box.take(timeout=0.01) == "b"
    assert box.take(timeout=0.01) is None
    box.put("c")
    box.close()
    assert box.take() == "c" and box.take() is None  # closed: never blocks


def test_marker_colours_and_frustum_geometry():
    from safnet_ros.ros.markers import frustum_lines, ramp_colors, similarity_markers

    rgb = ramp_colors(np.array([-5.0, 0.0, 0.5, 1.0, np.nan]), 0.0, 1.0)
    np.testing.assert_allclose(rgb, [[0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    T = look_at([1.0, 0.0, 1.0], [1.0, 5.0, 1.0])  # looking along +y
    seg = frustum_lines(K_CAM, T, IMAGE_WH, depth=2.0)
    assert seg.shape == (16, 3)
    np.testing.assert_allclose(seg[0], [1.0, 0.0, 1.0])  # edges start at the camera centre
    np.testing.assert_allclose(seg[1::2][:4, 1], 2.0)  # far corners 2 m ahead (world y)
    header = codecs.make_header(frame_id="map", stamp=stamp(1.0))
    sim = np.array([0.1, np.nan, 0.5, 0.9, 0.3])
    msg = similarity_markers(header, np.zeros((5, 3)), sim, source="s_con", stride=1)
    assert msg.markers[0].action == Marker.DELETEALL
    assert len(msg.markers[1].points) == 4  # the NaN (not segmented) point is left out
    with pytest.raises(ValueError):
        similarity_markers(header, np.zeros((5, 3)), sim, source="rgb")


@pytest.mark.parametrize("n, stride, views", [(25025, 4, 3), (7, 1, 1), (1, 1, 0), (5, 9, 2), (0, 1, 1)])
def test_serialised_markers_are_the_markers_message(n, stride, views):
    """similarity_markers_cdr (what the node publishes) deserialises to the message similarity_markers
    builds, for every size, stride and number of frustums; it serialises only a one-point template."""
    from rclpy.serialization import deserialize_message, serialize_message

    from safnet_ros.engine.batching import prepare_view
    from safnet_ros.ros.markers import similarity_markers, similarity_markers_cdr

    rng = np.random.default_rng(n)
    points = rng.uniform(-3.0, 3.0, (n, 3)).astype(np.float32)
    sim = rng.uniform(-1.0, 1.1, n)
    sim[::5] = np.nan
    posed = [prepare_view(*render(look_at(eye, LOOK_AT)), K_CAM, look_at(eye, LOOK_AT)) for eye in CAMERA_EYES[:views]]
    header = codecs.make_header(frame_id="map", stamp=stamp(12.5))
    serialised_sizes = []

    def serialize(msg):
        serialised_sizes.append(len(msg.markers[1].points))
        return serialize_message(msg)

    data = similarity_markers_cdr(serialize, header, points, sim, source="s", stride=stride, views=posed)
    expected = serialize_message(similarity_markers(header, points, sim, source="s", stride=stride, views=posed))
    assert deserialize_message(data, MarkerArray) == deserialize_message(expected, MarkerArray)
    assert len(data) == len(expected)
    assert serialised_sizes == [min(1, len(deserialize_message(expected, MarkerArray).markers[1].points))]


def test_params_file_lists_every_parameter_with_a_comment_and_its_default():
    import yaml

    text = (REPO / "config" / "segment.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert set(values) == {spec.name for spec in PARAMETERS}
    lines = text.splitlines()
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        row = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{spec.name}:"))
        assert lines[row - 1].strip().startswith("#"), f"{spec.name} has no comment above it"
    doc = (REPO / "docs" / "ros_node.md").read_text()
    missing = [spec.name for spec in PARAMETERS if f"`{spec.name}`" not in doc]
    assert not missing, f"docs/ros_node.md does not document {missing}"


def test_launch_file_is_valid_python_and_imports_where_launch_exists():
    import importlib.util

    path = REPO / "launch" / "segment.launch.py"
    compile(path.read_text(), str(path), "exec")
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed here (docs/design.md §3.10); compiled only")
    spec = importlib.util.spec_from_file_location("segment_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = {a.name for a in module.generate_launch_description().get_launch_arguments()}
    assert {"params_file", "namespace", "autostart", "model", "device", "use_sim_time", "rviz"} <= names


def _latency_model_and_params(tmp_path: Path) -> tuple[Path, dict]:
    """The latency benches' model (the shipped one; an untrained full lite SAFNet when none ships, or with
    SAFNET_BENCH_MODEL=untrained; SAFNET_BENCH_MODEL=FILE for a checkpoint that older code reads too) and
    node parameters: the node's defaults but for the device and the TF wait,
    SAFNET_BENCH_PRECISION for another precision, SAFNET_BENCH_PARAMS a JSON object of other parameters."""
    import torch

    from safnet_ros.engine.inference import default_model_path
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model, save_checkpoint

    chosen = os.environ.get("SAFNET_BENCH_MODEL", "")
    path = Path(chosen) if chosen not in ("", "untrained") else default_model_path()
    if path is None or chosen == "untrained":
        torch.manual_seed(0)
        config = SafnetConfig.preset("lite")
        path = tmp_path / "lite.pt"
        save_checkpoint(path, build_model(config).eval(), config)
    print(f"\nmodel: {path}")
    params = {k: v for k, v in NODE_PARAMS.items() if k in ("device", "num_views", "tf_timeout")}
    if os.environ.get("SAFNET_BENCH_PRECISION"):
        params["precision"] = os.environ["SAFNET_BENCH_PRECISION"]
    params.update(json.loads(os.environ.get("SAFNET_BENCH_PARAMS", "{}")))  # e.g. '{"publish_markers": false}'
    return path, params


def _time_clouds(h: Harness, base: float, stages: Callable[[], str], after_first: Callable[[], None] = lambda: None
                 ) -> list[float]:
    """Seven 25k-point clouds published one after another; seconds from each publish to its labelled cloud.
    ``after_first`` runs once the first (warm-up) cloud is back."""
    latencies = []
    for k in range(7):  # the first includes warm-up (2D features of the views); report each
        if k == 1:
            after_first()
        t_cloud = base + 1.2 + k
        msg, local = lidar_cloud(0.045, t_cloud, nan_rows=0)
        t0 = time.monotonic()
        h.pub_cloud.publish(msg)
        out = h.wait_cloud(t_cloud, timeout=120.0)
        latencies.append(time.monotonic() - t0)
        assert out is not None and out.width == len(local) == 25025
        print(f"\n{len(local)} points, 3 views, lite, CPU: cloud in -> labeled cloud out {latencies[-1]:.3f} s"
              f"{stages()}")
    warm = sorted(latencies[1:])
    print(f"after warm-up: min {warm[0]:.3f} s, median {warm[len(warm) // 2]:.3f} s, max {warm[-1]:.3f} s "
          f"over {len(warm)} clouds; load average {os.getloadavg()}")
    return latencies


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SAFNET_BENCH"), reason="benchmark: set SAFNET_BENCH=1 (minutes on 2 cores)")
def test_latency_25k_points_three_views_through_dds(tmp_path):
    """Benchmark (docs/benchmarks.md, "Node latency"): cloud published -> labeled cloud received, the node
    in this process (its stage times printed), with the default model at the node's default precision;
    the markers are subscribed to (so drawn) and taken as bytes, as RViz takes them."""
    path, params = _latency_model_and_params(tmp_path)
    h = Harness(path, params, raw_markers=True)
    try:
        base = h.base_stamp()
        h.publish_views(base)
        assert wait_until(lambda: len(h.node.buffer) == 3, 10.0)
        _time_clouds(h, base, lambda: f" (node stages: { {k: round(v, 3) for k, v in h.node.last_timings.items()} })")
        print(f"precision {h.node.segmenter.precision}")
    finally:
        h.close()


def _process_counts(pid: int) -> tuple[int, float]:
    """(minor page faults, CPU seconds) of process ``pid`` so far, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SAFNET_BENCH"), reason="benchmark: set SAFNET_BENCH=1 (minutes on 2 cores)")
def test_latency_of_the_node_program_25k_points_three_views(tmp_path):
    """Benchmark (docs/benchmarks.md, "Node latency"): the same clouds, but the node is its own process,
    started as ``ros2 run`` starts it (``python -m safnet_ros.ros.segment_node``), as on a robot: nothing
    else shares its interpreter. SAFNET_BENCH_NODE_REPO runs the node of another checkout (a ratio against
    older code on the same machine)."""
    path, params = _latency_model_and_params(tmp_path)
    repo = Path(os.environ.get("SAFNET_BENCH_NODE_REPO", str(REPO)))
    args = [sys.executable, "-m", "safnet_ros.ros.segment_node", "--ros-args", "-p", f"model:={path}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={str(value).lower() if isinstance(value, bool) else value}"]
    log = open(tmp_path / "node.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), stdout=log,
                            stderr=subprocess.STDOUT)
    h = None
    try:
        h = Harness(path, params, in_process=False, raw_markers=True)
        base = h.base_stamp()
        h.publish_views(base)
        assert h.diagnostics.wait_for(lambda m: int(diagnostics_values(m).get("views_kept", 0)) >= 3, 30.0), \
            (tmp_path / "node.log").read_text()
        counts = []
        _time_clouds(h, base, lambda: "", after_first=lambda: counts.append(_process_counts(proc.pid)))
        faults, cpu = (b - a for a, b in zip(counts[0], _process_counts(proc.pid)))
        print(f"node process per cloud after warm-up: {faults / 6:.0f} minor page faults, {cpu / 6:.3f} s CPU; "
              f"node from {repo}")
    finally:
        if h is not None:
            h.close()
        stop_process(proc, timeout=20)
        log.close()
