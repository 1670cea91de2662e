"""image_transport's compressed images: the codecs (safnet_ros/ros/compressed.py), ``bag convert --compressed``
read back with rosbags, segment-bag on such a bag, and the node with ``image_transport:=compressed`` fed over
real rclpy pub/sub under a namespace.
"""
from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from safnet_ros.errors import MessageDecodeError, MessageEncodeError
from safnet_ros.ros import codecs
from safnet_ros.ros.compressed import (
    CONFIG_HEADER,
    DEPTH_PNG_FORMAT,
    compressed_depth_to_metres,
    compressed_to_rgb,
    compressed_topics,
    encode_color,
    encode_depth_mm,
    is_compressed,
)
from safnet_ros.tools import bag_io as bio

REPO = Path(__file__).resolve().parents[1]


def _msg(fmt: str, data: bytes) -> SimpleNamespace:
    """A CompressedImage as rosbags deserialises it (duck-typed: header, format, data as uint8 array)."""
    return SimpleNamespace(header=SimpleNamespace(frame_id="cam"), format=fmt,
                           data=np.frombuffer(data, dtype=np.uint8))


def _photo(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth colour image with a few edges (what a camera sees, JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=2)
    rgb[h // 4: h // 2, w // 4: w // 2] = (200, 40, 30)
    return rgb.astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- codecs
def test_jpeg_colour_round_trip_is_within_jpeg_tolerance_and_png_is_exact():
    rgb = _photo()
    fmt, data = encode_color(rgb, "jpeg", 90)
    assert fmt == "rgb8; jpeg compressed bgr8" and data[:2] == b"\xff\xd8"
    back = compressed_to_rgb(_msg(fmt, data))
    assert back.shape == rgb.shape and back.dtype == np.uint8 and back.flags.c_contiguous
    err = np.abs(back.astype(int) - rgb.astype(int))
    assert err.mean() < 3.0, err.mean()
    assert back[40, 50].tolist() == pytest.approx([200, 40, 30], abs=12)  # red stays red (RGB, not BGR)
    fmt, data = encode_color(rgb, "png")
    np.testing.assert_array_equal(compressed_to_rgb(_msg(fmt, data)), rgb)
    # the plain "jpeg" / "png" formats and a grey image (mono8) read too
    np.testing.assert_array_equal(compressed_to_rgb(_msg("png", _png(rgb))), rgb)
    grey = rgb[:, :, 0].copy()
    out = compressed_to_rgb(_msg("mono8; png compressed mono8", _png(grey)))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_colour_target_other_than_bgr_is_read_red_blue_swapped_as_compressed_image_transport_does():
    """compressed_image_transport's subscriber (compressed_subscriber.cpp) decodes with cv::imdecode (a BGR
    Mat) and reverts the colour transform only when the format says "compressed bgr": a producer that hands
    its rgb8 buffer to cv::imencode and writes "rgb8; jpeg compressed rgb8" stores R in the file's blue."""
    rgb = _photo()
    file_pixels = np.ascontiguousarray(rgb[:, :, ::-1])  # cv::imencode takes channel 0 as blue
    for fmt in ("rgb8; png compressed rgb8", "bgr8; png compressed rgb8", "rgba8; png compressed "):
        np.testing.assert_array_equal(compressed_to_rgb(_msg(fmt, _png(file_pixels))), rgb, err_msg=fmt)
    # the plugin's own "compressed bgr8", plain formats and grey images are standard files
    for fmt in ("rgb8; png compressed bgr8", "bgra8; png compressed bgr8", "png", "rgb16; png compressed bgr16"):
        np.testing.assert_array_equal(compressed_to_rgb(_msg(fmt, _png(rgb))), rgb, err_msg=fmt)
    grey = rgb[:, :, 1].copy()
    np.testing.assert_array_equal(compressed_to_rgb(_msg("mono8; png compressed ", _png(grey))),
                                  np.repeat(grey[:, :, None], 3, axis=2))


def test_depth_png_round_trip_is_exact_in_millimetres():
    mm = np.random.default_rng(0).integers(0, 9000, size=(60, 80)).astype(np.uint16)
    mm[:5] = 0  # no return
    fmt, data = encode_depth_mm(mm)
    assert fmt == DEPTH_PNG_FORMAT
    assert CONFIG_HEADER.unpack_from(data) == (0, 0.0, 0.0) and data[12:20] == b"\x89PNG\r\n\x1a\n"
    metres = compressed_depth_to_metres(_msg(fmt, data))
    assert metres.dtype == np.float32
    np.testing.assert_array_equal(np.round(metres * 1000).astype(np.uint16), mm)
    assert (metres[:5] == 0).all()
    # the older format string without the codec reads the same
    np.testing.assert_array_equal(compressed_depth_to_metres(_msg("16UC1; compressedDepth", data)), metres)


def test_32fc1_inverse_depth_layout_of_compressed_depth_image_transport_is_dequantised():
    """32FC1 as the C++ plugin writes it: q = A / d + B (truncated to uint16), A = z0 (z0 + 1),
    B = 1 - A / depth_max, q = 0 beyond depth_max; the header carries A and B."""
    z0, depth_max = 100.0, 10.0
    A = np.float32(z0 * (z0 + 1.0))
    B = np.float32(1.0 - A / depth_max)
    d = np.linspace(0.5, 12.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    q = np.where(d < depth_max, A / d + B, 0).astype(np.uint16)
    data = CONFIG_HEADER.pack(0, float(A), float(B)) + _png(q)
    metres = compressed_depth_to_metres(_msg("32FC1; compressedDepth png", data))
    near = d < depth_max
    np.testing.assert_allclose(metres[near], d[near], atol=0, rtol=2 * float(d.max()) / float(A) + 1e-6)
    assert (metres[~near] == 0).all()


def test_decode_rgbd_takes_compressed_messages_like_raw_ones():
    """The node's and segment-bag's one decode path: a CompressedImage pair gives the raw pair's view."""
    rgb = _photo()
    mm = np.full((48, 64), 1500, np.uint16)
    info = SimpleNamespace(k=[60.0, 0, 32, 0, 60.0, 24, 0, 0, 1], width=64, height=48,
                           header=SimpleNamespace(frame_id="cam"))
    raw = codecs.decode_rgbd(codecs.array_to_image(rgb, "rgb8"), codecs.array_to_image(mm, "16UC1"), info)
    png_rgb, depth = _msg(*encode_color(rgb, "png")), _msg(*encode_depth_mm(mm))
    assert is_compressed(png_rgb) and not is_compressed(codecs.array_to_image(rgb, "rgb8"))
    got = codecs.decode_rgbd(png_rgb, depth, info)
    np.testing.assert_array_equal(got.color, raw.color)
    np.testing.assert_array_equal(got.depth, raw.depth)
    np.testing.assert_array_equal(got.K, raw.K)


def test_image_transport_topic_names():
    assert compressed_topics("~/rgb/image", "/cam/depth/image_raw/") == (
        "~/rgb/image/compressed", "/cam/depth/image_raw/compressedDepth")


@pytest.mark.parametrize("fmt, data, words", [
    ("jpeg", _png(_photo()), "not a JPEG file"),
    ("rgb8; jpeg compressed bgr8", encode_color(_photo())[1][:200], "not a readable image"),
    ("rgb8; jpeg compressed bgr8", b"", "not a JPEG file"),
    ("bmp", b"BM" + bytes(60), "no supported codec"),
    (DEPTH_PNG_FORMAT, encode_color(_photo())[1], "compressedDepth image, not a colour image"),
])
def test_bad_colour_data_is_one_clear_error(fmt, data, words):
    with pytest.raises(MessageDecodeError) as exc:
        compressed_to_rgb(_msg(fmt, data))
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("fmt, data, words", [
    (DEPTH_PNG_FORMAT, b"\x00" * 5, "12-byte ConfigHeader"),
    (DEPTH_PNG_FORMAT, CONFIG_HEADER.pack(0, 0, 0) + encode_color(_photo())[1], "is not a PNG"),
    (DEPTH_PNG_FORMAT, CONFIG_HEADER.pack(0, 0, 0) + _png(np.zeros((4, 4), np.uint8)), "16-bit"),
    (DEPTH_PNG_FORMAT, CONFIG_HEADER.pack(0, 0, 0) + _png(np.zeros((4, 4), np.uint16))[:40], "not a readable"),
    ("16UC1; compressedDepth rvl", encode_depth_mm(np.ones((4, 4), np.uint16))[1], "'rvl' is not supported"),
    ("8UC3; compressedDepth png", encode_depth_mm(np.ones((4, 4), np.uint16))[1], "depth must be 16UC1"),
    ("png", encode_depth_mm(np.ones((4, 4), np.uint16))[1], "not a compressedDepth image"),
])
def test_bad_depth_data_is_one_clear_error(fmt, data, words):
    with pytest.raises(MessageDecodeError) as exc:
        compressed_depth_to_metres(_msg(fmt, data))
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_encoders_refuse_wrong_arrays():
    with pytest.raises(MessageEncodeError, match="uint8"):
        encode_color(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(MessageEncodeError, match="codec"):
        encode_color(np.zeros((4, 4, 3), np.uint8), "webp")
    with pytest.raises(MessageEncodeError, match="uint16"):
        encode_depth_mm(np.zeros((4, 4), np.float32))


# ----------------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def scene(make_loop_scene) -> Path:
    """20 frames of a synthetic room (.sens: 320x240 JPEG colour, 160x120 depth) on a loop."""
    return make_loop_scene(frames=20, seed=5)


@pytest.fixture(scope="module")
def bags(scene, tmp_path_factory) -> tuple[Path, Path]:
    """(raw bag, compressed bag) of the scene at 10 Hz, the compressed one written by the CLI."""
    from safnet_ros.tools.bag_convert import convert_scene

    out = tmp_path_factory.mktemp("bags")
    convert_scene(scene, out / "raw", rate=10.0, cloud_rate=2.0, progress=False)
    env_cmd = [sys.executable, "-m", "safnet_ros.cli", "bag", "convert", str(scene), str(out / "compressed"),
               "--rate", "10", "--cloud-rate", "2", "--compressed", "--quiet"]
    done = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / "raw", out / "compressed"


def _read(bag: Path) -> tuple[dict[str, str], dict[str, list]]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        msgs: dict[str, list] = {}
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(bio.deserialize(raw, conn.msgtype))
    return types, msgs


def test_bag_convert_compressed_writes_the_scenes_jpeg_and_exact_depth(scene, bags):
    from safnet_ros.data.sens import SensReader

    raw_types, raw = _read(bags[0])
    types, msgs = _read(bags[1])
    color_t, depth_t = compressed_topics(bio.COLOR_TOPIC, bio.DEPTH_TOPIC)
    assert types[color_t] == types[depth_t] == bio.COMPRESSED_IMAGE
    assert bio.COLOR_TOPIC not in types and bio.DEPTH_TOPIC not in types
    assert {t for t in types if t not in (color_t, depth_t)} == \
        {t for t in raw_types if t not in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC)}
    assert len(msgs[color_t]) == len(msgs[depth_t]) == len(raw[bio.COLOR_TOPIC]) == 20
    with SensReader(next(scene.glob("*.sens"))) as sens:
        stored = [bytes(f.color_bytes) for f in sens]
    for i, (c, d, rc, rd) in enumerate(zip(msgs[color_t], msgs[depth_t], raw[bio.COLOR_TOPIC], raw[bio.DEPTH_TOPIC])):
        assert c.format == "rgb8; jpeg compressed bgr8" and d.format == DEPTH_PNG_FORMAT
        assert bytes(c.data) == stored[i]  # the recorded JPEG as it is: no re-encoding
        assert c.header.stamp == rc.header.stamp and d.header.frame_id == rd.header.frame_id
        np.testing.assert_array_equal(compressed_to_rgb(c), codecs.image_to_rgb(rc))
        np.testing.assert_array_equal(compressed_depth_to_metres(d), codecs.depth_to_metres(rd))
    size = sum(len(m.data) for m in msgs[color_t] + msgs[depth_t])
    raw_size = sum(len(m.data) for m in raw[bio.COLOR_TOPIC] + raw[bio.DEPTH_TOPIC])
    assert size < raw_size / 2


def test_bag_convert_compressed_encodes_resized_colour_once(scene, tmp_path):
    from safnet_ros.tools.bag_convert import convert_scene

    convert_scene(scene, tmp_path / "small", rate=10.0, cloud_rate=0.0, resize=(160, 120), compressed=True,
                  progress=False)
    _, msgs = _read(tmp_path / "small")
    color_t, depth_t = compressed_topics(bio.COLOR_TOPIC, bio.DEPTH_TOPIC)
    assert compressed_to_rgb(msgs[color_t][0]).shape == (120, 160, 3)
    assert compressed_depth_to_metres(msgs[depth_t][0]).shape == (120, 160)


def test_segment_bag_on_the_compressed_bag_labels_like_the_raw_one(bags, tmp_path):
    from safnet_ros.engine.inference import Segmenter
    from safnet_ros.tools.segment_bag import segment_bag

    segmenter = Segmenter.from_checkpoint(None, device="cpu", num_views=3, chunk_stride=1.5, max_points=3000)
    raw = segment_bag(bags[0], tmp_path / "raw_out", segmenter=segmenter, progress=False)
    comp = segment_bag(bags[1], tmp_path / "comp_out", segmenter=segmenter, progress=False)
    assert comp.decode_errors == 0 and comp.views_kept == raw.views_kept > 0
    assert comp.clouds == raw.clouds > 0 and comp.clouds_3d_only == raw.clouds_3d_only
    _, a = _read(tmp_path / "raw_out")
    _, b = _read(tmp_path / "comp_out")
    for x, y in zip(a[bio.LABELED_CLOUD_TOPIC], b[bio.LABELED_CLOUD_TOPIC]):
        np.testing.assert_array_equal(codecs.pointcloud2_to_array(x)["label"], codecs.pointcloud2_to_array(y)["label"])


# ----------------------------------------------------------------------------- the node, real pub/sub
@pytest.mark.ros
def test_node_with_compressed_image_transport_under_a_namespace_keeps_views_and_labels_with_them(bags, monkeypatch, ros_session):
    """The node under /robot1 with image_transport:=compressed subscribes to <rgb>/compressed and
    <depth>/compressedDepth; frames published there over DDS are synchronised, only the keyframes are
    decoded, and a cloud comes back with image evidence."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2

    from safnet_ros.engine.inference import Segmenter
    from safnet_ros.ros.segment_node import SegmentNode

    decoded: list[int] = []
    monkeypatch.setattr(codecs.compressed, "compressed_to_rgb",
                        lambda msg: decoded.append(1) or compressed_to_rgb(msg))
    _, msgs = _read(bags[1])
    color_t, depth_t = compressed_topics(bio.COLOR_TOPIC, bio.DEPTH_TOPIC)
    segmenter = Segmenter.from_checkpoint(None, device="cpu", num_views=3, chunk_stride=1.5, max_points=3000)
    ctx, executor = ros_session.context, ros_session.executor
    node = SegmentNode(segmenter=segmenter, context=ctx, namespace="/robot1", parameter_overrides=[
        Parameter("warm_up", value=False), Parameter("map_enable", value=False),
        Parameter("image_transport", value="compressed")])
    ros_session.add(node)
    prefix = "/robot1/safnet_segment"
    assert [s.sub.topic_name for s in node.camera_inputs[0][1]] == [
        f"{prefix}/rgb/image/compressed", f"{prefix}/depth/image/compressedDepth", f"{prefix}/camera_info"]
    for topic in (bio.TF_STATIC_TOPIC, bio.TF_TOPIC):
        for tf_msg in msgs[topic]:
            for t in tf_msg.transforms:
                (node.tf_buffer.set_transform_static if topic == bio.TF_STATIC_TOPIC
                 else node.tf_buffer.set_transform)(_transform(t), "bag")
    pub_node = ros_session.add(rclpy.create_node("camera", context=ctx))
    pubs = [pub_node.create_publisher(CompressedImage, f"{prefix}/rgb/image/compressed", qos_profile_sensor_data),
            pub_node.create_publisher(CompressedImage, f"{prefix}/depth/image/compressedDepth",
                                      qos_profile_sensor_data),
            pub_node.create_publisher(CameraInfo, f"{prefix}/camera_info", qos_profile_sensor_data)]
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
        executor.spin_once(timeout_sec=0.05)
    classes = (CompressedImage, CompressedImage, CameraInfo)
    for c, d, info in zip(msgs[color_t], msgs[depth_t], msgs[bio.CAMERA_INFO_TOPIC]):
        for pub, msg, cls in zip(pubs, (c, d, info), classes):
            pub.publish(deserialize_message(bio.serialize(msg), cls))
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.01)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and node.stats.get("frames_synced") < 15:
        executor.spin_once(timeout_sec=0.05)
    counters = dict(node.stats.counters)
    assert counters["frames_synced"] >= 15, counters
    assert counters.get("decode_errors", 0) == 0 and counters.get("tf_failures", 0) == 0, counters
    assert 0 < counters["views_kept"] < counters["frames_synced"], counters
    assert len(decoded) == counters["views_kept"]  # only the keyframes were decoded
    cloud = deserialize_message(bio.serialize(msgs[bio.POINTS_TOPIC][-1]), PointCloud2)
    out = codecs.pointcloud2_to_array(node.process_cloud(cloud))
    seg = out["label"] != 255
    assert seg.any() and (np.nan_to_num(out["similarity"][seg]) > 0).mean() > 0.3


def _transform(t):
    """A rosbags TransformStamped as the rclpy message."""
    from geometry_msgs.msg import TransformStamped
    from rclpy.serialization import deserialize_message

    return deserialize_message(bio.serialize(t), TransformStamped)


@pytest.mark.ros
def test_every_camera_listens_on_its_compressed_topics():
    """With ``cameras`` each camera's image subscriptions are its raw topics' /compressed and /compressedDepth."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CompressedImage

    from safnet_ros.engine.inference import Segmenter
    from safnet_ros.ros.segment_node import SegmentNode

    segmenter = Segmenter.from_checkpoint(None, device="cpu", num_views=3, chunk_stride=1.5, max_points=3000)
    ctx = Context()
    rclpy.init(context=ctx)
    node = None
    try:
        node = SegmentNode(segmenter=segmenter, context=ctx, namespace="/robot1", parameter_overrides=[
            Parameter("warm_up", value=False), Parameter("map_enable", value=False),
            Parameter("cameras", value=["front", "back"]), Parameter("image_transport", value="compressed"),
            Parameter("cameras.back.rgb_topic", value="/back/color/image_raw")])
        topics = {camera: [s.sub.topic_name for s in subs] for camera, subs, _ in node.camera_inputs}
        prefix = "/robot1/safnet_segment"
        assert topics == {
            "front": [f"{prefix}/front/rgb/image/compressed", f"{prefix}/front/depth/image/compressedDepth",
                      f"{prefix}/front/camera_info"],
            "back": ["/back/color/image_raw/compressed", f"{prefix}/back/depth/image/compressedDepth",
                     f"{prefix}/back/camera_info"]}
        assert all(subs[0].sub.msg_type is CompressedImage for _, subs, _ in node.camera_inputs)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)
