"""Bag tools: ScanNet -> rosbag2 conversion, replay through rclpy, offline segmentation of a bag.

The scene fixture is a real ScanNet-format folder (``.sens`` written by
SensWriter, mesh by write_scannet_mesh, ``scene.txt`` with an axisAlignment),
small enough (20 frames, colour 80x60, depth 40x30) to keep the file fast.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.data.sens import SensWriter
from safnet_ros.errors import ConfigError, MissingDataError, SafnetError
from safnet_ros.geometry.camera import scale_intrinsics
from safnet_ros.geometry.transforms import quat_to_matrix
from safnet_ros.ros import codecs
from safnet_ros.ros.transforms import transform_to_matrix
from safnet_ros.tools import bag_io as bio
from safnet_ros.tools.bag_convert import convert_scene, registered_frame

NUM_FRAMES = 20
INVALID = (3, 11)  # frames whose pose is -inf (tracking lost)
COLOR_WH = (80, 60)
DEPTH_WH = (40, 30)
ALIGN = np.array([[0.0, -1.0, 0.0, 2.0], [1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.1], [0.0, 0.0, 0.0, 1.0]])


def _pinhole(wh: tuple[int, int], hfov_deg: float = 60.0) -> np.ndarray:
    f = wh[0] / 2 / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0, wh[0] / 2], [0, f, wh[1] / 2], [0, 0, 1.0]])


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world, OpenCV optical axes (z forward, y down), world z up."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def write_scene(root: Path, name: str = "scene0001_00", *, timestamps: bool = True, mesh: bool = True) -> Path:
    """A ScanNet scene folder: .sens with NUM_FRAMES frames (INVALID ones -inf), mesh, axisAlignment."""
    rng = np.random.default_rng(7)
    scene = root / name
    scene.mkdir(parents=True)
    with SensWriter(scene / f"{name}.sens", intrinsic_color=_pinhole(COLOR_WH), intrinsic_depth=_pinhole(DEPTH_WH),
                    color_size=COLOR_WH, depth_size=DEPTH_WH) as w:
        for i in range(NUM_FRAMES):
            a = 2 * math.pi * i / NUM_FRAMES
            pose = _look_at(np.array([2.0 + 0.5 * math.cos(a), 2.0 + 0.5 * math.sin(a), 1.4]),
                            np.array([2.0 + 2 * math.cos(a + 0.3), 2.0 + 2 * math.sin(a + 0.3), 0.8]))
            if i in INVALID:
                pose = np.full((4, 4), -np.inf)
            color = rng.integers(0, 256, (COLOR_WH[1], COLOR_WH[0], 3), dtype=np.uint8)
            depth = rng.integers(0, 4000, (DEPTH_WH[1], DEPTH_WH[0])).astype(np.uint16)
            depth[0, :5] = 0
            ts = 1_000_000 + 33_333 * i if timestamps else 0
            w.write_frame(pose, color, depth, color_timestamp=ts, depth_timestamp=ts)
    if mesh:
        g = np.linspace(0.0, 4.0, 41)
        gx, gy = np.meshgrid(g, g)
        floor = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
        gz = np.linspace(0.0, 2.5, 26)
        wx, wz = np.meshgrid(g, gz)
        walls = [np.stack([wx.ravel(), np.full(wx.size, c), wz.ravel()], axis=1) for c in (0.0, 4.0)]
        walls += [np.stack([np.full(wx.size, c), wx.ravel(), wz.ravel()], axis=1) for c in (0.0, 4.0)]
        xyz = np.concatenate([floor] + walls).astype(np.float32)
        rgb = rng.integers(0, 256, (xyz.shape[0], 3), dtype=np.uint8)
        write_scannet_mesh(scene / f"{name}_vh_clean_2.ply", xyz, rgb, np.array([[0, 1, 42]], np.int32))
    (scene / f"{name}.txt").write_text("axisAlignment = " + " ".join(repr(float(v)) for v in ALIGN.ravel()) + "\n")
    return scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def mcap_bag(scene_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bags") / "scene.mcap_bag"
    convert_scene(scene_dir, out, storage="mcap", progress=False)
    return out


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """{topic: [(bag time ns, deserialised message), ...]} in bag order."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, bio.deserialize(raw, conn.msgtype)))
    return out


def tf_chain_to_matrix(tf_msg, static_msg) -> np.ndarray:
    """map -> camera_color_optical_frame from the recorded /tf and /tf_static."""
    (link,) = tf_msg.transforms
    (optical,) = static_msg.transforms
    assert (link.header.frame_id, link.child_frame_id) == ("map", "camera_link")
    assert (optical.header.frame_id, optical.child_frame_id) == ("camera_link", "camera_color_optical_frame")
    return transform_to_matrix(link) @ transform_to_matrix(optical)


# ----------------------------------------------------------------------------- bag_io


def test_bag_io_round_trips_messages_through_cdr():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = bio.deserialize(bio.serialize(bio.image_message(rgb, "rgb8", 42, "cam")), bio.IMAGE)
    assert np.array_equal(codecs.image_to_array(msg), rgb) and codecs.stamp_to_ns(msg.header.stamp) == 42
    mm = rng.integers(0, 65535, (5, 7)).astype(np.uint16)
    msg = bio.deserialize(bio.serialize(bio.image_message(mm, "16UC1", 1, "cam")), bio.IMAGE)
    assert np.allclose(codecs.depth_to_metres(msg), mm * np.float32(0.001))
    for seed in range(20):
        q = np.random.default_rng(seed).normal(size=4)
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(q)
        m[:3, 3] = (1.0, -2.0, 3.5)
        tf = bio.deserialize(bio.serialize(bio.tf_message([bio.transform_stamped(m, "a", "b", 5)])), bio.TF_MESSAGE)
        assert np.abs(transform_to_matrix(tf.transforms[0]) - m).max() < 1e-12
    xyz = rng.normal(size=(9, 3)).astype(np.float32)
    labeled = codecs.make_labeled_cloud(xyz, np.arange(9), rng.integers(0, 256, (9, 3), dtype=np.uint8),
                                        np.linspace(0, 1, 9), np.linspace(1, 0, 9), frame_id="map", stamp=3)
    cloud = bio.deserialize(bio.serialize(bio.to_bag_message(labeled)), bio.POINTCLOUD2)  # the node's message
    back = bio.pointcloud_to_array(cloud)
    assert cloud.point_step == 28 and [f.name for f in cloud.fields] == list(codecs.LABELED_CLOUD_DTYPE.names)
    assert codecs.stamp_to_ns(cloud.header.stamp) == 3 and cloud.header.frame_id == "map"
    assert np.array_equal(codecs.pointcloud2_to_xyz(cloud).xyz, xyz) and np.array_equal(back["label"], np.arange(9))


def test_bag_io_rejects_malformed_images():
    msg = bio.image_message(np.zeros((4, 4, 3), np.uint8), "rgb8", 0, "cam")
    msg.data = msg.data[:-5]
    with pytest.raises(SafnetError, match="bytes"):
        codecs.image_to_array(msg)


# ----------------------------------------------------------------------------- convert


def test_converted_bag_equals_its_source(scene_dir, mcap_bag):
    topics = read_bag(mcap_bag)
    assert set(topics) == {bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC, bio.TF_TOPIC,
                           bio.TF_STATIC_TOPIC, bio.POINTS_TOPIC}
    (static,) = topics[bio.TF_STATIC_TOPIC]
    scene = ScanNetScene(scene_dir)
    source = scene.frames
    valid = source.valid_indices
    assert len(valid) == NUM_FRAMES - len(INVALID)
    assert [len(topics[t]) for t in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC, bio.TF_TOPIC)] == [len(valid)] * 4
    K = scale_intrinsics(source.intrinsic_depth, source.depth_size, COLOR_WH)
    stamps = []
    for k, i in enumerate(valid):
        frame = source.get(i)
        rgb, mm = registered_frame(frame.color, frame.depth, COLOR_WH)
        t, color_msg = topics[bio.COLOR_TOPIC][k]
        _, depth_msg = topics[bio.DEPTH_TOPIC][k]
        _, info = topics[bio.CAMERA_INFO_TOPIC][k]
        _, tf = topics[bio.TF_TOPIC][k]
        assert color_msg.encoding == "rgb8" and depth_msg.encoding == "16UC1"
        assert np.array_equal(codecs.image_to_array(color_msg), frame.color)  # colour is stored at its own size
        assert np.array_equal(codecs.image_to_array(depth_msg), mm)
        # depth: exactly the source millimetres, nearest-resampled (40x30 -> 80x60 repeats each pixel 2x2)
        raw = np.round(frame.depth * 1000).astype(np.uint16)
        assert np.array_equal(codecs.image_to_array(depth_msg)[::2, ::2], raw)
        assert (info.width, info.height) == COLOR_WH and np.allclose(codecs.camera_info_to_K(info), K)
        expected = ALIGN @ frame.camera_to_world
        assert np.abs(tf_chain_to_matrix(tf, static[1]) - expected).max() < 1e-6
        for m in (color_msg, depth_msg, info):
            assert codecs.stamp_to_ns(m.header.stamp) == t and m.header.frame_id == "camera_color_optical_frame"
        assert codecs.stamp_to_ns(tf.transforms[0].header.stamp) == t
        stamps.append(t)
    # recorded timestamps 33.333 ms apart: stamps follow them (gaps where frames were invalid)
    assert np.all(np.diff(stamps) > 0)
    assert np.allclose(np.diff(stamps), np.diff(valid) * 33_333_000)
    scene.close()


def test_tf_static_is_transient_local(mcap_bag):
    from rosbags.rosbag2 import Reader

    with Reader(mcap_bag) as reader:
        conns = {c.topic: c for c in reader.connections}
        assert bio.is_transient_local(conns[bio.TF_STATIC_TOPIC].ext.offered_qos_profiles)
        assert not bio.is_transient_local(conns[bio.TF_TOPIC].ext.offered_qos_profiles)
    custom = bio.bag_custom_data(mcap_bag)
    assert custom["safnet.source_scene"] == "scene0001_00"
    assert np.array_equal(np.array(custom["safnet.axis_alignment"].split(), float).reshape(4, 4), ALIGN)


def assert_humble_reads(bag: Path) -> None:
    """The bag's metadata.yaml (and a db3's topics table) as Humble's rosbag2 decodes them
    (ros2/rosbag2 humble: rosbag2_storage metadata_io.cpp, rosbag2_transport qos.cpp): each topic's
    ``offered_qos_profiles`` read ``as<std::string>()``, that string a YAML list of profiles whose
    history, reliability, durability and liveliness are read ``as<int>()``."""
    import sqlite3

    import yaml

    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert isinstance(info["version"], int) and info["storage_identifier"] in ("mcap", "sqlite3")
    file_keys = {"path", "starting_time", "duration", "message_count"}
    assert info["relative_file_paths"] and all(set(f) >= file_keys for f in info["files"])
    strings = [t["topic_metadata"]["offered_qos_profiles"] for t in info["topics_with_message_count"]]
    for db in bag.glob("*.db3"):
        with sqlite3.connect(db) as con:
            strings += [row[0] for row in con.execute("SELECT offered_qos_profiles FROM topics")]
    assert strings
    for qos in strings:
        assert isinstance(qos, str), f"offered_qos_profiles is {type(qos).__name__}, Humble reads a string"
        for profile in yaml.safe_load(qos):
            for key in ("history", "reliability", "durability", "liveliness", "depth"):
                assert type(profile[key]) is int, f"{key}: {profile[key]!r} is not an integer enum"


def test_bags_are_readable_by_humble(mcap_bag, scene_dir, tmp_path):
    assert_humble_reads(mcap_bag)
    sqlite = tmp_path / "humble_sqlite"
    convert_scene(scene_dir, sqlite, storage="sqlite3", cloud_rate=0, progress=False)
    assert_humble_reads(sqlite)


def test_tf_with_mixed_durability_offers_is_not_static(tmp_path):
    """/tf recorded from a volatile and a transient-local publisher: ros2 bag play plays it volatile
    (rosbag2_storage qos.cpp, adapt_offer_to_recorded_offers), and segment-bag keeps it time-varying."""
    from rosbags.rosbag2 import Writer

    from safnet_ros.tools.segment_bag import BagTopics, read_tf

    bag = tmp_path / "mixed_tf"
    with Writer(bag, version=bio.BAG_VERSION) as w:
        conn = w.add_connection(bio.TF_TOPIC, bio.TF_MESSAGE, typestore=bio.TYPESTORE,
                                offered_qos_profiles=[bio.make_qos(100), bio.STATIC_QOS])
        for k, ns in enumerate((1_000_000_000, 2_000_000_000)):
            m = np.eye(4)
            m[0, 3] = float(k)
            w.write(conn, ns, bio.serialize(bio.tf_message([bio.transform_stamped(m, "map", "base", ns)])))
    with bio.bag_reader(bag) as reader:
        (c,) = reader.connections
        assert not bio.is_transient_local(c.ext.offered_qos_profiles)
        tf = read_tf(reader, BagTopics(), bag)
    assert tf.lookup_matrix("map", "base", 1_000_000_000)[0, 3] == 0.0
    assert tf.lookup_matrix("map", "base", 2_000_000_000)[0, 3] == 1.0
    assert not bio.is_transient_local([]) and bio.is_transient_local([bio.STATIC_QOS, bio.STATIC_QOS])


def test_points_are_the_mesh_vertices_in_the_camera_frustum(scene_dir, mcap_bag):
    topics = read_bag(mcap_bag)
    (static,) = topics[bio.TF_STATIC_TOPIC]
    xyz_all, rgb_all = ScanNetScene(scene_dir).load_points(aligned=True)
    tf_by_stamp = {t: m for t, m in topics[bio.TF_TOPIC]}
    clouds = topics[bio.POINTS_TOPIC]
    # 2 Hz over ~0.6 s of recording at 30 Hz
    assert 2 <= len(clouds) <= 3
    assert np.all(np.diff([t for t, _ in clouds]) >= 499_000_000)
    K = scale_intrinsics(_pinhole(DEPTH_WH), DEPTH_WH, COLOR_WH)
    for t, cloud in clouds:
        assert cloud.header.frame_id == "map"
        arr = bio.pointcloud_to_array(cloud)
        pose = tf_chain_to_matrix(tf_by_stamp[t], static[1])
        cam = (xyz_all.astype(np.float64) - pose[:3, 3]) @ pose[:3, :3]
        uv = cam[:, :2] / cam[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
        inside = (cam[:, 2] > 0.1) & (cam[:, 2] <= 5.0) & (uv >= -0.5).all(1) & (uv < np.subtract(COLOR_WH, 0.5)).all(1)
        assert 50 < arr.shape[0] == inside.sum()
        got = np.stack([arr["x"], arr["y"], arr["z"]], axis=1)
        assert np.allclose(got, xyz_all[inside], atol=1e-6)
        assert np.array_equal(codecs.unpack_rgb(arr["rgb"]), rgb_all[inside])


def test_mcap_and_sqlite3_hold_the_same_messages(scene_dir, mcap_bag, tmp_path):
    from rosbags.rosbag2 import Reader

    sqlite = tmp_path / "scene_sqlite"
    convert_scene(scene_dir, sqlite, storage="sqlite3", progress=False)
    assert list(sqlite.glob("*.db3")) and list(mcap_bag.glob("*.mcap"))

    def raw(path):
        with Reader(path) as r:
            return [(c.topic, c.msgtype, t, bytes(d)) for c, t, d in r.messages()]

    a, b = raw(mcap_bag), raw(sqlite)
    assert len(a) == len(b) > 0
    assert sorted(a) == sorted(b)


def test_invalid_frames_skipped_and_counted(scene_dir, tmp_path):
    summary = convert_scene(scene_dir, tmp_path / "b", progress=False, skip=2, cloud_rate=0)
    # even frame ids 0..18: none of INVALID (3, 11) is even
    assert summary.frames_invalid_pose == 0 and summary.frames_written == 10
    assert summary.frames_skipped_by_skip == 10
    summary = convert_scene(scene_dir, tmp_path / "c", progress=False, cloud_rate=0)
    assert summary.frames_invalid_pose == len(INVALID) and summary.frames_written == NUM_FRAMES - len(INVALID)
    assert summary.clouds_written == 0 and bio.POINTS_TOPIC not in read_bag(tmp_path / "c")


def test_rate_and_resize_options(scene_dir, tmp_path):
    summary = convert_scene(scene_dir, tmp_path / "b", progress=False, rate=10.0, resize=(20, 16))
    topics = read_bag(tmp_path / "b")
    stamps = np.array([t for t, _ in topics[bio.COLOR_TOPIC]])
    valid = ScanNetScene(scene_dir).frames.valid_indices
    assert np.array_equal(stamps - stamps[0], (np.array(valid) - valid[0]) * 100_000_000)
    _, depth = topics[bio.DEPTH_TOPIC][0]
    _, info = topics[bio.CAMERA_INFO_TOPIC][0]
    assert (depth.width, depth.height) == (20, 16) == (info.width, info.height) == summary.image_size
    assert np.allclose(codecs.camera_info_to_K(info), scale_intrinsics(_pinhole(DEPTH_WH), DEPTH_WH, (20, 16)))


def test_timestamps_missing_fall_back_to_30hz(tmp_path):
    scene = write_scene(tmp_path, timestamps=False, mesh=False)
    summary = convert_scene(scene, tmp_path / "b", progress=False, cloud_rate=0)
    stamps = np.array([t for t, _ in read_bag(tmp_path / "b")[bio.COLOR_TOPIC]])
    assert np.all(np.diff(stamps) > 0) and summary.stamps_synthesised == len(stamps) - 1
    assert abs(np.diff(stamps)[0] - 1e9 / 30) < 2


def test_existing_output_is_an_error_unless_overwrite(scene_dir, tmp_path):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="exists"):
        convert_scene(scene_dir, out, progress=False, cloud_rate=0)
    assert (out / "keep.txt").exists()
    # --overwrite replaces only a bag safnet wrote: a folder holding a user's file is never deleted
    with pytest.raises(ConfigError, match="not written by safnet"):
        convert_scene(scene_dir, out, progress=False, cloud_rate=0, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    out.rmdir()
    convert_scene(scene_dir, out, progress=False, cloud_rate=0)
    first = (out / "metadata.yaml").read_bytes()
    convert_scene(scene_dir, out, progress=False, cloud_rate=0, overwrite=True, rate=5.0)
    assert (out / "metadata.yaml").exists() and (out / "metadata.yaml").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]  # no partial folders or locks left behind


def test_missing_scene_parts_named_in_one_error(tmp_path):
    empty = tmp_path / "scene0002_00"
    empty.mkdir()
    with pytest.raises(MissingDataError) as info:
        convert_scene(empty, tmp_path / "out", progress=False)
    text = str(info.value)
    assert "scene0002_00.sens" in text and "scene0002_00_vh_clean_2.ply" in text
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingDataError, match="scene folder"):
        convert_scene(tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_failed_conversion_leaves_no_bag(tmp_path):
    scene = write_scene(tmp_path)
    sens = scene / "scene0001_00.sens"
    data = sens.read_bytes()
    sens.write_bytes(data[: len(data) - 3000])  # the last frames are cut off
    with pytest.raises(SafnetError):
        convert_scene(scene, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_convert(scene_dir, tmp_path, capsys):
    from safnet_ros.cli import main

    out = tmp_path / "cli_bag"
    assert main(["bag", "convert", str(scene_dir), str(out), "--storage", "sqlite3", "--cloud-rate", "1"]) == 0
    assert f"{NUM_FRAMES - len(INVALID)} written, {len(INVALID)} skipped (invalid pose)" in capsys.readouterr().out
    assert (out / "metadata.yaml").exists()
    assert main(["bag", "convert", str(scene_dir), str(out)]) == 2
    assert "exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------- play


@pytest.mark.ros
def test_bag_play_publishes_images_clock_and_fallback_transforms(mcap_bag):
    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from safnet_ros.ros.bag_player import BagPlayer
    from safnet_ros.ros.compat import DEFAULT_TF_STATIC_TOPIC, DEFAULT_TF_TOPIC
    from safnet_ros.ros.tf_topics import reliable_qos as qos

    topics = read_bag(mcap_bag)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    got: dict[str, list] = {"image": [], "tf": [], "static": [], "clock": []}
    spinner = None
    try:
        listener = rclpy.create_node("bag_listener", context=ctx)
        player_node = rclpy.create_node("bag_player", context=ctx)
        executor.add_node(listener)
        listener.create_subscription(Image, bio.COLOR_TOPIC, got["image"].append, qos(50, False))
        listener.create_subscription(TransformStamped, DEFAULT_TF_TOPIC, got["tf"].append, qos(100, False))
        listener.create_subscription(Clock, "/clock", got["clock"].append, qos(100, False))
        player = BagPlayer(player_node, mcap_bag, rate=4.0, wait_for_subscribers=5.0, tf_fallback=True,
                           topics=[bio.COLOR_TOPIC, bio.TF_TOPIC, bio.TF_STATIC_TOPIC])
        assert player.tf_fallback  # the last-resort path, forced (TFMessage may exist here)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        t0 = time.monotonic()
        summary = player.run()
        wall = time.monotonic() - t0
        # a late subscriber still gets the static transform: transient local
        listener.create_subscription(TransformStamped, DEFAULT_TF_STATIC_TOPIC, got["static"].append, qos(1000, True))
        n = len(topics[bio.COLOR_TOPIC])
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (len(got["image"]) < n or len(got["tf"]) < n or not got["static"]):
            time.sleep(0.02)
    finally:
        executor.shutdown(timeout_sec=1.0)
        if spinner is not None:
            spinner.join(timeout=10.0)
        rclpy.shutdown(context=ctx)
    assert summary.published == {bio.COLOR_TOPIC: n, DEFAULT_TF_TOPIC: n, DEFAULT_TF_STATIC_TOPIC: 1}
    # recorded span ~0.63 s at 4x -> ~0.16 s of playback (plus discovery wait)
    span = (topics[bio.COLOR_TOPIC][-1][0] - topics[bio.COLOR_TOPIC][0][0]) / 1e9
    assert wall >= span / 4.0 * 0.9
    assert len(got["image"]) == n and len(got["tf"]) == n and len(got["static"]) == 1
    for msg, (t, ref) in zip(got["image"], topics[bio.COLOR_TOPIC]):
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
        assert np.array_equal(np.frombuffer(bytes(msg.data), np.uint8), np.asarray(ref.data))
    for msg, (t, ref) in zip(got["tf"], topics[bio.TF_TOPIC]):
        assert (msg.header.frame_id, msg.child_frame_id) == ("map", "camera_link")
        assert np.abs(transform_to_matrix(msg) - transform_to_matrix(ref.transforms[0])).max() == 0
    assert got["static"][0].child_frame_id == "camera_color_optical_frame"
    clock = [c.clock.sec * 10**9 + c.clock.nanosec for c in got["clock"]]
    assert len(clock) >= n and np.all(np.diff(clock) >= 0)
    assert clock[-1] == topics[bio.COLOR_TOPIC][-1][0]


@pytest.mark.ros
def test_bag_play_rejects_unknown_topics_and_non_bags(mcap_bag, tmp_path):
    import rclpy

    from safnet_ros.ros.bag_player import BagPlayer

    with pytest.raises(MissingDataError, match="metadata.yaml"):
        BagPlayer(None, tmp_path)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("bag_player_bad", context=ctx)
        with pytest.raises(MissingDataError, match="/nope"):
            BagPlayer(node, mcap_bag, topics=["/nope"]).run()
    finally:
        rclpy.shutdown(context=ctx)


def test_bag_play_skips_the_second_type_of_a_topic(tmp_path):
    """A topic recorded with two types (two connections): the first type is played, the other
    skipped and named; publishing it through the first type's publisher raised TypeError."""
    import rclpy
    from rosbags.rosbag2 import Writer

    from safnet_ros.ros.bag_player import BagPlayer

    bag = tmp_path / "two_types"
    with Writer(bag, version=bio.BAG_VERSION) as w:
        qos = [bio.DEFAULT_QOS]
        info, image = (w.add_connection("/cam", t, typestore=bio.TYPESTORE, offered_qos_profiles=qos)
                       for t in (bio.CAMERA_INFO, bio.IMAGE))
        for k in range(2):
            ns = (k + 1) * 10_000_000
            w.write(info, ns, bio.serialize(bio.camera_info_message(np.eye(3), (4, 3), ns, "cam")))
            depth = bio.image_message(np.zeros((3, 4), np.uint16), "16UC1", ns, "cam")
            w.write(image, ns + 1, bio.serialize(depth))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("bag_player_two_types", context=ctx)
        summary = BagPlayer(node, bag, clock=False).run()
    finally:
        rclpy.shutdown(context=ctx)
    assert summary.published == {"/cam": 2} and summary.loops == 1
    why = f"also recorded as {bio.CAMERA_INFO}, which is played"
    assert summary.skipped_topics == {f"/cam ({bio.IMAGE})": why}


# ----------------------------------------------------------------------------- segment-bag


def test_bag_tools_share_the_node_modules_without_importing_rclpy():
    """segment-bag uses the node's codecs, TF tree and markers; none of them pulls rclpy in."""
    import subprocess
    import sys

    code = ("import sys, safnet_ros.tools.segment_bag, safnet_ros.tools.bag_io; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rclpy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_bag_tf_interpolates_chains_and_raises_extrapolation_at_the_ends():
    """segment-bag's TF is the node's tree: interpolated inside the recording, extrapolation outside (no clamping)."""
    from safnet_ros.ros.tf_tree import FallbackExtrapolationException, FallbackLookupException, TfTree

    tf = TfTree(cache_ns=None)
    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = quat_to_matrix([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # 90 deg about z
    b[:3, 3] = (2.0, 0.0, 0.0)
    tf.add(bio.transform_stamped(a, "map", "camera_link", 1_000), static=False)
    tf.add(bio.transform_stamped(b, "map", "camera_link", 3_000), static=False)
    tf.add(bio.transform_stamped(bio.LINK_TO_OPTICAL, "camera_link", "optical", 0), static=True)
    mid = tf.lookup_matrix("map", "camera_link", 2_000)
    assert np.allclose(mid[:3, 3], (1.0, 0.0, 0.0))
    expected = quat_to_matrix([0.0, 0.0, np.sin(np.pi / 8), np.cos(np.pi / 8)])  # 45 deg
    assert np.allclose(mid[:3, :3], expected, atol=1e-12)
    assert np.allclose(tf.lookup_matrix("map", "optical", 3_000), b @ bio.LINK_TO_OPTICAL)
    assert np.allclose(tf.lookup_matrix("optical", "map", 3_000), np.linalg.inv(b @ bio.LINK_TO_OPTICAL))
    with pytest.raises(FallbackExtrapolationException, match="future"):
        tf.lookup_matrix("map", "optical", 3_001)
    with pytest.raises(FallbackExtrapolationException, match="past"):
        tf.lookup_matrix("map", "optical", 999)
    with pytest.raises(FallbackLookupException, match="does not exist"):
        tf.lookup_matrix("map", "base_link", 2_000)


def test_segment_bag_requires_the_topics(scene_dir, tmp_path):
    from safnet_ros.tools.segment_bag import segment_bag

    bag = tmp_path / "no_points"
    convert_scene(scene_dir, bag, progress=False, cloud_rate=0)
    with pytest.raises(MissingDataError) as info:
        segment_bag(bag, tmp_path / "out", segmenter=object(), progress=False)
    assert "/points (sensor_msgs/msg/PointCloud2)" in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingDataError, match="metadata.yaml"):
        segment_bag(tmp_path / "nothing", tmp_path / "out", segmenter=object(), progress=False)


@pytest.fixture(scope="module")
def segmenter():
    from safnet_ros.engine.inference import Segmenter

    return Segmenter.from_checkpoint(None, device="cpu", num_views=1, chunk_stride=1.5, max_points=1500)


def test_segment_bag_writes_labeled_clouds_and_markers(mcap_bag, segmenter, tmp_path):
    from safnet_ros.data.labels import IGNORE_INDEX, class_colors
    from safnet_ros.tools.segment_bag import segment_bag

    out = tmp_path / "labeled"
    summary = segment_bag(mcap_bag, out, segmenter=segmenter, max_views=3, progress=False)
    source = read_bag(mcap_bag)
    result = read_bag(out)
    assert set(result) == {bio.LABELED_CLOUD_TOPIC, bio.MARKERS_TOPIC}
    assert_humble_reads(out)
    clouds = result[bio.LABELED_CLOUD_TOPIC]
    assert summary.clouds == len(clouds) == len(source[bio.POINTS_TOPIC]) == len(result[bio.MARKERS_TOPIC])
    assert summary.frames_paired == len(source[bio.COLOR_TOPIC]) and summary.frames_no_pose == 0
    assert summary.frames_no_camera_info == 0 and summary.frames_unpaired == 0  # the first frame waits for its info
    assert 1 <= summary.views_kept <= summary.frames_paired and summary.mean_latency_s > 0
    for (t, cloud), (t_src, src) in zip(clouds, source[bio.POINTS_TOPIC]):
        assert t == t_src and cloud.header.frame_id == src.header.frame_id == "map"
        assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
            ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("label", 16, 4), ("confidence", 20, 7),
            ("similarity", 24, 7)]
        arr = bio.pointcloud_to_array(cloud)
        assert np.array_equal(codecs.pointcloud2_to_xyz(cloud).xyz, codecs.pointcloud2_to_xyz(src).xyz)
        labels = arr["label"].astype(np.int64)
        seg = labels != IGNORE_INDEX
        assert seg.any() and labels[seg].max() < 20
        assert np.array_equal(codecs.unpack_rgb(arr["rgb"]), class_colors(labels))
        assert np.all((arr["confidence"][seg] > 0) & (arr["confidence"][seg] <= 1))
        assert np.all(np.isfinite(arr["similarity"]))
    markers = result[bio.MARKERS_TOPIC][-1][1].markers
    assert markers[0].action == 3 and markers[1].ns == "similarity" and len(markers[1].points) > 0
    assert all(m.ns == "frustums" for m in markers[2:])


def test_node_and_segment_bag_give_the_same_labels(mcap_bag, segmenter, tmp_path):
    """One pipeline: the bag's frames and clouds, fed in bag order to a real SegmentNode's own callbacks
    (TF from the bag's /tf in its buffer), are labelled exactly as `segment-bag` labels them."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    from safnet_ros.ros.segment_node import SegmentNode
    from safnet_ros.tools.segment_bag import segment_bag

    out = tmp_path / "labeled"
    summary = segment_bag(mcap_bag, out, segmenter=segmenter, max_views=3, progress=False)
    offline = [codecs.pointcloud2_to_array(msg)["label"] for _, msg in read_bag(out)[bio.LABELED_CLOUD_TOPIC]]

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = None
    try:
        node = SegmentNode(segmenter=segmenter, context=ctx, parameter_overrides=[
            Parameter("warm_up", value=False), Parameter("buffer_max_views", value=3),
            Parameter("map_enable", value=False)])
        types = {bio.COLOR_TOPIC: Image, bio.DEPTH_TOPIC: Image, bio.CAMERA_INFO_TOPIC: CameraInfo,
                 bio.POINTS_TOPIC: PointCloud2, bio.TF_TOPIC: TFMessage, bio.TF_STATIC_TOPIC: TFMessage}
        with Reader(mcap_bag) as reader:
            messages = [(conn.topic, deserialize_message(bytes(raw), types[conn.topic]))
                        for conn, _, raw in reader.messages() if conn.topic in types]
        for topic, msg in messages:  # the whole recorded TF first, as segment-bag reads it
            for t in msg.transforms if topic in (bio.TF_TOPIC, bio.TF_STATIC_TOPIC) else ():
                (node.tf_buffer.set_transform_static if topic == bio.TF_STATIC_TOPIC
                 else node.tf_buffer.set_transform)(t, "bag")
        sets: dict[int, dict] = {}
        online = []
        for topic, msg in messages:
            if topic == bio.POINTS_TOPIC:
                online.append(codecs.pointcloud2_to_array(node.process_cloud(msg))["label"])
            elif topic in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC):
                group = sets.setdefault(codecs.stamp_to_ns(msg.header.stamp), {})
                group[topic] = msg
                if len(group) == 3:
                    node._on_frames(group[bio.COLOR_TOPIC], group[bio.DEPTH_TOPIC], group[bio.CAMERA_INFO_TOPIC])
        assert node.stats.get("views_kept") == summary.views_kept >= 2
        assert node.stats.get("tf_failures") == 0 and node.stats.get("frames_waiting_tf") == 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert len(online) == len(offline) == summary.clouds > 0
    for a, b in zip(online, offline):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- a synthetic room


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory) -> Path:
    from safnet_ros.data.synth.generate import SynthConfig, generate_scene

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(frames=20, color_size=(80, 60), depth_size=(40, 30), vertex_spacing=0.1,
                      invalid_poses=0.2, progress=False)
    summary = generate_scene(root, seed=5, index=0, cfg=cfg)
    return root / summary["name"]


@pytest.mark.slow
def test_synthetic_room_clouds_agree_with_depth_and_poses(synth_scene, tmp_path):
    """Points (axis-aligned mesh) and poses (axis-aligned) are consistent: cloud points land on the depth."""
    from safnet_ros.geometry.camera import visible

    scene = ScanNetScene(synth_scene)
    assert not np.allclose(scene.axis_alignment, np.eye(4))  # the room is turned: alignment matters
    summary = convert_scene(synth_scene, tmp_path / "b", progress=False, cloud_rate=10.0)
    assert summary.frames_invalid_pose == scene.frames.num_invalid > 0
    assert summary.frames_written == len(scene.frames.valid_indices)
    topics = read_bag(tmp_path / "b")
    (static,) = topics[bio.TF_STATIC_TOPIC]
    tf_by_stamp = {t: m for t, m in topics[bio.TF_TOPIC]}
    depth_by_stamp = {t: m for t, m in topics[bio.DEPTH_TOPIC]}
    K = codecs.camera_info_to_K(topics[bio.CAMERA_INFO_TOPIC][0][1])
    assert len(topics[bio.POINTS_TOPIC]) >= 4
    fractions = []
    for t, cloud in topics[bio.POINTS_TOPIC]:
        pose = tf_chain_to_matrix(tf_by_stamp[t], static[1])
        depth = codecs.depth_to_metres(depth_by_stamp[t])
        xyz = codecs.pointcloud2_to_xyz(cloud).xyz
        seen = visible(xyz, depth, K, pose, tol=0.1)
        # the frustum cloud has no occlusion test: furniture hides part of it from the camera
        assert xyz.shape[0] > 100 and seen.mean() > 0.3, seen.mean()
        # the same cloud seen from the pose without the alignment does not fit the depth
        raw_pose = np.linalg.inv(scene.axis_alignment) @ pose
        # (floor points stay on the floor plane under the turn about z, so some fit by chance)
        assert visible(xyz, depth, K, raw_pose, tol=0.1).mean() < min(0.35, 0.6 * seen.mean())
        fractions.append(seen.mean())
    assert np.mean(fractions) > 0.5


def test_cli_segment_bag_reports_missing_topics(scene_dir, tmp_path, capsys):
    from safnet_ros.cli import main

    bag = tmp_path / "no_points"
    convert_scene(scene_dir, bag, progress=False, cloud_rate=0)
    assert main(["segment-bag", str(bag), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/points" in err and err.count("\n") == 1
    # the input topics are options: a bag recorded from other drivers names its own
    assert main(["segment-bag", str(bag), str(tmp_path / "out"), "--cloud-topic", "/lidar/points",
                 "--rgb-topic", "/cam/rgb", "--depth-topic", bio.DEPTH_TOPIC]) == 2
    err = capsys.readouterr().err
    assert "/lidar/points (sensor_msgs/msg/PointCloud2)" in err and "/cam/rgb (sensor_msgs/msg/Image)" in err
    assert bio.DEPTH_TOPIC + " " not in err and not (tmp_path / "out").exists()


@pytest.mark.ros
def test_bag_play_loops_until_stopped_and_keeps_the_rate(mcap_bag):
    import rclpy

    from safnet_ros.ros.bag_player import BagPlayer

    topics = read_bag(mcap_bag)
    span = (topics[bio.CAMERA_INFO_TOPIC][-1][0] - topics[bio.CAMERA_INFO_TOPIC][0][0]) / 1e9
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("bag_player_loop", context=ctx)
        stop = threading.Event()
        player = BagPlayer(node, mcap_bag, rate=10.0, loop=True, clock=False, topics=[bio.CAMERA_INFO_TOPIC])
        timer = threading.Timer(0.5, stop.set)
        timer.start()
        summary = player.run(stop)
        timer.cancel()
    finally:
        rclpy.shutdown(context=ctx)
    n = len(topics[bio.CAMERA_INFO_TOPIC])
    # each pass takes span / rate (~63 ms): about 8 passes in 0.5 s, never faster than the recorded timing
    assert 2 <= summary.loops <= 0.5 / (span / 10.0) + 1
    assert summary.published[bio.CAMERA_INFO_TOPIC] >= 2 * n and summary.clock_messages == 0


@pytest.mark.ros
@pytest.mark.slow
def test_bag_play_feeds_the_segment_node_through_the_fallback_tf(mcap_bag, segmenter):
    """Replay through the TF path player and node share (/tf with TFMessage, else the fallback topics):
    the real node gets frames, poses and clouds and publishes labels."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from safnet_ros.ros.bag_player import BagPlayer
    from safnet_ros.ros.segment_node import SegmentNode
    from safnet_ros.ros.tf_topics import reliable_qos as qos

    topics = read_bag(mcap_bag)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    executor = MultiThreadedExecutor(context=ctx)
    got: list = []
    spin = None
    try:
        node = SegmentNode(segmenter=segmenter, context=ctx, parameter_overrides=[
            Parameter("rgb_topic", value=bio.COLOR_TOPIC), Parameter("depth_topic", value=bio.DEPTH_TOPIC),
            Parameter("camera_info_topic", value=bio.CAMERA_INFO_TOPIC),
            Parameter("cloud_topic", value=bio.POINTS_TOPIC), Parameter("use_sim_time", value=True)])
        listener = rclpy.create_node("labeled_listener", context=ctx)
        listener.create_subscription(PointCloud2, "/safnet_segment/labeled_cloud", got.append, qos(10, False))
        executor.add_node(node)
        executor.add_node(listener)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        player = BagPlayer(rclpy.create_node("player_for_node", context=ctx), mcap_bag, rate=1.0,
                           wait_for_subscribers=5.0)
        player.run()
        clouds = len(topics[bio.POINTS_TOPIC])
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and (
                node.stats.snapshot(0, 0, "cpu").counters.get("clouds_segmented", 0)
                + node.stats.snapshot(0, 0, "cpu").counters.get("clouds_dropped", 0) < clouds or not got):
            time.sleep(0.05)
        counters = node.stats.snapshot(0, 0, "cpu").counters
    finally:
        executor.shutdown(timeout_sec=2.0)
        if spin is not None:
            spin.join(timeout=10.0)  # no callback may run once the context is shut down
        rclpy.shutdown(context=ctx)
    # Sensor-data QoS is best effort, keep last 5: on a starved 2-core machine a
    # frame can be lost in transport, which is the QoS's contract, not a node bug.
    frames = len(topics[bio.COLOR_TOPIC])
    assert frames - 2 <= counters["frames_synced"] <= frames, (repr(counters), repr(player.summary))
    assert counters["tf_failures"] == 0 and counters["views_kept"] >= 1
    assert got and got[0].header.frame_id == "map"
    assert [f.name for f in got[0].fields] == list(codecs.LABELED_CLOUD_DTYPE.names)


def test_exported_layout_converts_like_the_sens(scene_dir, tmp_path):
    from safnet_ros.data.scannet import export_frames

    exported = tmp_path / "scene0003_00"
    export_frames(ScanNetScene(scene_dir), exported)
    summary = convert_scene(exported, tmp_path / "b", progress=False, cloud_rate=0)
    assert summary.frames_written == NUM_FRAMES - len(INVALID) and summary.frames_invalid_pose == len(INVALID)
    topics = read_bag(tmp_path / "b")
    source = ScanNetScene(exported).frames
    for (_t, depth_msg), i in zip(topics[bio.DEPTH_TOPIC], source.valid_indices):
        _, mm = registered_frame(source.get(i).color, source.get(i).depth, COLOR_WH)
        assert np.array_equal(codecs.image_to_array(depth_msg), mm)
    # no timestamps in the exported layout: 30 Hz by frame id
    stamps = np.array([t for t, _ in topics[bio.DEPTH_TOPIC]])
    assert np.allclose(np.diff(stamps), np.diff(source.valid_indices) * 1e9 / 30, atol=1)
