"""PointCloud2 / Image / CameraInfo codecs against hand-written struct-per-point references."""
from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from safnet_ros.errors import MessageDecodeError
from safnet_ros.ros.codecs import (
    MessageEncodeError,
    array_to_image,
    array_to_pointcloud2,
    camera_info_to_K,
    depth_to_metres,
    image_to_array,
    image_to_rgb,
    make_labeled_cloud,
    pack_rgb,
    pointcloud2_to_array,
    pointcloud2_to_xyz,
    unpack_rgb,
)

STRUCT = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 8: "d"}
NUMPY = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32, 7: np.float32, 8: np.float64}


# ----------------------------------------------------------------------------- slow references


def slow_encode_cloud(fields, values, *, width, height, point_step, row_step, bigendian, rng):
    """PointCloud2 written point by point with struct; padding bytes are random garbage."""
    order = ">" if bigendian else "<"
    data = bytearray(rng.integers(0, 256, height * row_step, dtype=np.uint8).tobytes())
    for v in range(height):
        for u in range(width):
            i = v * width + u
            base = v * row_step + u * point_step
            for name, datatype, offset, count in fields:
                vals = np.atleast_1d(values[name][i]).tolist()
                struct.pack_into(order + STRUCT[datatype] * count, data, base + offset, *vals)
    msg = PointCloud2()
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=n, datatype=d, offset=o, count=c) for n, d, o, c in fields]
    msg.is_bigendian = bigendian
    msg.point_step, msg.row_step = point_step, row_step
    msg.data = bytes(data)
    return msg


def slow_decode_cloud(msg):
    """{field: (N,) or (N, count) array} read point by point with struct."""
    order = ">" if msg.is_bigendian else "<"
    data = bytes(msg.data)
    out = {f.name: [] for f in msg.fields}
    for v in range(msg.height):
        for u in range(msg.width):
            base = v * msg.row_step + u * msg.point_step
            for f in msg.fields:
                vals = struct.unpack_from(order + STRUCT[f.datatype] * f.count, data, base + f.offset)
                out[f.name].append(vals if f.count > 1 else vals[0])
    return {f.name: np.array(out[f.name], dtype=NUMPY[f.datatype]) for f in msg.fields}


def random_values(datatype, n, count, rng):
    dt = np.dtype(NUMPY[datatype])
    shape = (n, count) if count > 1 else (n,)
    if dt.kind == "f":
        return rng.normal(0, 100, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


MIXED_FIELDS = [  # name, datatype, offset, count: out of order, gaps, a sub-array
    ("intensity", PointField.FLOAT64, 0, 1),
    ("x", PointField.FLOAT32, 8, 1),
    ("y", PointField.FLOAT32, 12, 1),
    ("z", PointField.FLOAT32, 16, 1),
    ("ring", PointField.UINT16, 22, 1),
    ("t", PointField.INT32, 24, 1),
    ("normal", PointField.FLOAT32, 28, 3),
    ("flag", PointField.INT8, 41, 1),
]


def mixed_cloud(rng, *, width, height, point_step=48, row_pad=0, bigendian=False):
    n = width * height
    values = {name: random_values(dt, n, c, rng) for name, dt, _, c in MIXED_FIELDS}
    msg = slow_encode_cloud(MIXED_FIELDS, values, width=width, height=height, point_step=point_step,
                            row_step=width * point_step + row_pad, bigendian=bigendian, rng=rng)
    return msg, values


# ----------------------------------------------------------------------------- PointCloud2


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("height,row_pad", [(1, 0), (1, 5), (4, 0), (4, 13)])
def test_cloud_decode_matches_slow_reference(bigendian, height, row_pad):
    rng = np.random.default_rng(height * 100 + row_pad + bigendian)
    msg, values = mixed_cloud(rng, width=7, height=height, point_step=52, row_pad=row_pad, bigendian=bigendian)
    arr = pointcloud2_to_array(msg)
    ref = slow_decode_cloud(msg)
    assert arr.shape == (7 * height,)
    assert arr.dtype.itemsize == 52
    for name in ref:
        np.testing.assert_array_equal(arr[name], ref[name])
        np.testing.assert_array_equal(arr[name], values[name])
    xyz, index = pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(xyz, np.stack([values[c] for c in "xyz"], axis=1))
    np.testing.assert_array_equal(index, np.arange(7 * height))
    assert xyz.dtype == np.float32 and xyz.flags.c_contiguous


def test_cloud_last_row_padding_may_be_missing():
    rng = np.random.default_rng(1)
    msg, values = mixed_cloud(rng, width=3, height=2, row_pad=8)
    msg.data = bytes(msg.data)[:-8]
    np.testing.assert_array_equal(pointcloud2_to_array(msg)["t"], values["t"])


def test_cloud_roundtrip_structured_and_dict():
    rng = np.random.default_rng(2)
    n = 50
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "normal"],
                      "formats": [">f4", "<f4", "f8", "u1", "<u2", ("<f4", (3,))],
                      "offsets": [0, 4, 8, 20, 24, 28], "itemsize": 48})
    arr = np.zeros(n, dtype)
    for name in dtype.names:
        arr[name] = rng.normal(size=arr[name].shape) * 10 if dtype[name].kind == "f" else rng.integers(0, 200, arr[name].shape)
    msg = array_to_pointcloud2(arr, frame_id="lidar", stamp=12.25)
    assert (msg.height, msg.width, msg.is_bigendian, msg.is_dense) == (1, n, False, True)
    assert msg.header.frame_id == "lidar" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 250_000_000)
    assert msg.point_step == 4 + 4 + 8 + 1 + 2 + 12  # packed
    assert [f.count for f in msg.fields] == [1, 1, 1, 1, 1, 3]
    back = pointcloud2_to_array(msg)
    ref = slow_decode_cloud(msg)
    for name in dtype.names:
        np.testing.assert_array_equal(back[name], arr[name])
        np.testing.assert_array_equal(ref[name], arr[name])
    cols = {"x": arr["x"].astype(np.float32), "y": arr["y"], "z": arr["z"], "label": np.arange(n, dtype=np.uint32)}
    msg2 = array_to_pointcloud2(cols)
    np.testing.assert_array_equal(pointcloud2_to_array(msg2)["label"], np.arange(n))
    # survives the rclpy (de)serialisation a real publisher uses
    msg3 = deserialize_message(serialize_message(msg2), PointCloud2)
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg3)[0], pointcloud2_to_xyz(msg2)[0])


def test_xyz_drops_nan_and_inf_and_counts_them():
    xyz = np.arange(30, dtype=np.float64).reshape(10, 3)
    xyz[2, 0] = np.nan
    xyz[5, 2] = np.inf
    xyz[7, 1] = -np.inf
    msg = array_to_pointcloud2({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})  # float64 fields
    assert msg.is_dense is False
    result = pointcloud2_to_xyz(msg)
    keep = [0, 1, 3, 4, 6, 8, 9]
    np.testing.assert_array_equal(result.index, keep)
    np.testing.assert_array_equal(result.xyz, xyz[keep].astype(np.float32))
    assert (result.num_points, result.num_dropped) == (10, 3)
    full, index = pointcloud2_to_xyz(msg, skip_nans=False)
    assert full.shape == (10, 3) and np.isnan(full[2, 0]) and len(index) == 10


def test_xyz_with_scattered_offsets():
    rng = np.random.default_rng(3)
    fields = [("z", PointField.FLOAT32, 0, 1), ("x", PointField.FLOAT64, 8, 1), ("y", PointField.INT16, 20, 1)]
    values = {"z": random_values(7, 9, 1, rng), "x": random_values(8, 9, 1, rng), "y": random_values(3, 9, 1, rng)}
    msg = slow_encode_cloud(fields, values, width=9, height=1, point_step=24, row_step=9 * 24, bigendian=True, rng=rng)
    xyz, _ = pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(xyz, np.stack([values["x"], values["y"], values["z"]], 1).astype(np.float32))


def test_labeled_cloud_layout_and_values():
    rng = np.random.default_rng(4)
    n = 100
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(0, 41, n)
    colors = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    conf = rng.random(n)
    sim = rng.random(n).astype(np.float32)
    msg = make_labeled_cloud(xyz, labels, colors, conf, sim, frame_id="map", stamp=3)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1),
        ("label", 16, 4, 1), ("confidence", 20, 7, 1), ("similarity", 24, 7, 1)]
    assert (msg.point_step, msg.row_step, msg.width, msg.height) == (28, 28 * n, n, 1)
    ref = slow_decode_cloud(msg)
    np.testing.assert_array_equal(ref["label"], labels)
    np.testing.assert_array_equal(ref["confidence"], conf.astype(np.float32))
    np.testing.assert_array_equal(ref["similarity"], sim)
    np.testing.assert_array_equal(np.stack([ref[c] for c in "xyz"], 1), xyz)
    bits = np.array(ref["rgb"], dtype=np.float32).view(np.uint32)
    np.testing.assert_array_equal(bits, colors[:, 0].astype(np.uint32) << 16 | colors[:, 1].astype(np.uint32) << 8 | colors[:, 2])
    np.testing.assert_array_equal(unpack_rgb(pointcloud2_to_array(msg)["rgb"]), colors)
    # packed colours given directly, as float32 or uint32
    packed = pack_rgb(colors)
    for given in (packed, packed.view(np.uint32)):
        again = make_labeled_cloud(xyz, labels, given, conf, sim)
        assert bytes(again.data) == bytes(msg.data)
    with pytest.raises(MessageEncodeError):
        make_labeled_cloud(xyz, np.full(n, 70000), colors, conf, sim)
    with pytest.raises(MessageEncodeError):
        make_labeled_cloud(xyz, labels, colors, conf[:-1], sim)


def test_pack_rgb_known_value():
    packed = pack_rgb(np.array([[255, 128, 1], [0, 0, 0]], dtype=np.uint8))
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0x00FF8001, 0]
    np.testing.assert_array_equal(unpack_rgb(packed.astype(">f4")), [[255, 128, 1], [0, 0, 0]])
    np.testing.assert_array_equal(unpack_rgb(np.array([0x00102030], np.uint32)), [[16, 32, 48]])


def _cloud(**overrides):
    msg = PointCloud2()
    msg.height, msg.width = 1, 2
    msg.fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    msg.point_step, msg.row_step = 12, 24
    msg.data = bytes(24)
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"fields": [PointField(name="x", offset=0, datatype=7, count=1)]}, "no y/z field"),
        ({"fields": [PointField(name="x", offset=0, datatype=9, count=1)]}, "unsupported datatype 9"),
        ({"point_step": 8, "row_step": 16, "data": bytes(16)}, "past point_step 8"),
        ({"fields": [PointField(name="x", offset=10, datatype=7, count=1)]}, "ends at byte 14"),
        ({"width": 3, "row_step": 36}, "data holds 24 bytes"),
        ({"data": bytes(23)}, "data holds 23 bytes"),
        ({"row_step": 20}, "row_step 20 is smaller"),
        ({"height": 2, "row_step": 20, "data": bytes(48)}, "row_step 20 is smaller"),
        ({"fields": [PointField(name="x", offset=0, datatype=7, count=1)] * 2}, "appears twice"),
        ({"fields": [PointField(name="x", offset=0, datatype=7, count=0)]}, "count 0"),
        ({"point_step": 0, "row_step": 0, "fields": [], "data": b""}, "point_step is 0"),
        ({"width": 0, "height": 0}, "data holds 24 bytes"),
    ],
)
def test_cloud_errors(overrides, needle):
    decode = pointcloud2_to_xyz if "field" in needle else pointcloud2_to_array
    with pytest.raises(MessageDecodeError, match=needle):
        decode(_cloud(**overrides))


def test_encode_errors():
    with pytest.raises(MessageEncodeError):
        array_to_pointcloud2({"x": np.zeros(3), "y": np.zeros(4)})
    with pytest.raises(MessageEncodeError):
        array_to_pointcloud2({"x": np.zeros(3, dtype=bool)})
    with pytest.raises(MessageEncodeError):
        array_to_pointcloud2(np.zeros((3, 3)))


# ----------------------------------------------------------------------------- Image

ENCODINGS = {  # encoding -> (dtype, channels)
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
    "8UC3": (np.uint8, 3), "16SC1": (np.int16, 1), "64FC1": (np.float64, 1), "bgr16": (np.uint16, 3),
}


def random_image(dtype, channels, h, w, rng):
    shape = (h, w) if channels == 1 else (h, w, channels)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 5, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def padded_image_msg(arr, encoding, pad, bigendian, rng):
    """Image with ``pad`` garbage bytes after every row, written row by row."""
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1).astype(arr.dtype.newbyteorder(">" if bigendian else "<"))
    step = row.shape[1] * arr.dtype.itemsize + pad
    data = bytearray(rng.integers(0, 256, h * step, dtype=np.uint8).tobytes())
    for r in range(h):
        data[r * step: r * step + row.shape[1] * arr.dtype.itemsize] = row[r].tobytes()
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=step)
    msg.data = bytes(data)
    return msg


def slow_decode_image(msg, dtype, channels):
    fmt = (">" if msg.is_bigendian else "<") + np.dtype(dtype).char * channels
    size = struct.calcsize(fmt)
    data = bytes(msg.data)
    out = [[struct.unpack_from(fmt, data, r * msg.step + c * size) for c in range(msg.width)] for r in range(msg.height)]
    arr = np.array(out, dtype=dtype)
    return arr[:, :, 0] if channels == 1 else arr


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_image_decode_matches_reference(encoding, pad, bigendian):
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(len(encoding) * 7 + pad + bigendian)
    arr = random_image(dtype, channels, 5, 6, rng)
    msg = padded_image_msg(arr, encoding, pad, bigendian, rng)
    out = image_to_array(msg)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(out, slow_decode_image(msg, dtype, channels))
    if not bigendian and pad == 0:  # our encoder writes exactly this message
        assert bytes(array_to_image(arr, encoding).data) == bytes(msg.data)


def test_image_to_rgb_conversions():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (4, 5, 1), dtype=np.uint8)
    cases = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2),
    }
    for enc, arr in cases.items():
        out = image_to_rgb(padded_image_msg(np.ascontiguousarray(arr), enc, 2, False, rng))
        np.testing.assert_array_equal(out, rgb, err_msg=enc)
        assert out.flags.c_contiguous
    mono = rgb[:, :, 0]
    np.testing.assert_array_equal(image_to_rgb(array_to_image(mono, "mono8")), np.repeat(mono[:, :, None], 3, 2))
    wide = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(image_to_rgb(array_to_image(wide[:, :, ::-1], "bgr16")), rgb)
    with pytest.raises(MessageDecodeError, match="not a colour encoding"):
        image_to_rgb(array_to_image(np.zeros((2, 2), np.uint16), "16UC1"))


def test_depth_to_metres():
    mm = np.array([[0, 1000, 65535], [1, 2500, 0]], dtype=np.uint16)
    for bigendian in (False, True):
        msg = padded_image_msg(mm, "16UC1", 4, bigendian, np.random.default_rng(0))
        np.testing.assert_allclose(depth_to_metres(msg), [[0, 1.0, 65.535], [0.001, 2.5, 0]], rtol=1e-6)
    m = np.array([[np.nan, 1.5, np.inf], [-1.0, 0.0, 3.25]], dtype=np.float32)
    out = depth_to_metres(array_to_image(m, "32FC1"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 1.5, 0], [0, 0, 3.25]])
    with pytest.raises(MessageDecodeError, match="depth encoding"):
        depth_to_metres(array_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8"))


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"encoding": "yuv422_weird"}, "unknown image encoding"),
        ({"step": 11}, "step 11 is smaller than width×channels×bytes = 4×3×1 = 12"),
        ({"data": bytes(12 * 3 - 1)}, "data holds 35 bytes"),
        ({"data": bytes(12 * 3 + 1)}, "data holds 37 bytes"),
        ({"height": 4}, "data holds 36 bytes"),
    ],
)
def test_image_errors(fields, needle):
    msg = Image(height=3, width=4, encoding="rgb8", step=12)
    msg.data = bytes(36)
    for k, v in fields.items():
        setattr(msg, k, v)
    with pytest.raises(MessageDecodeError, match=needle):
        image_to_array(msg)


def test_array_to_image_errors():
    with pytest.raises(MessageEncodeError, match="needs dtype uint16"):
        array_to_image(np.zeros((2, 2), np.float32), "16UC1")
    with pytest.raises(MessageEncodeError, match="needs shape"):
        array_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(MessageEncodeError, match="unknown image encoding"):
        array_to_image(np.zeros((2, 2), np.uint8), "nope")
    msg = array_to_image(np.zeros((2, 3, 3), np.uint8), "bgr8", frame_id="cam", stamp=1.0)
    assert (msg.step, msg.header.frame_id, msg.header.stamp.sec) == (9, "cam", 1)


def test_camera_info_to_K():
    info = CameraInfo()
    info.k = [525.0, 0.0, 319.5, 0.0, 526.0, 239.5, 0.0, 0.0, 1.0]
    K = camera_info_to_K(info)
    np.testing.assert_array_equal(K, [[525, 0, 319.5], [0, 526, 239.5], [0, 0, 1]])
    with pytest.raises(MessageDecodeError, match="all zero"):
        camera_info_to_K(CameraInfo())
    bad = [525.0, 0.0, 319.5, 0.0, float("nan"), 239.5, 0.0, 0.0, 1.0]
    with pytest.raises(MessageDecodeError, match="NaN"):
        camera_info_to_K(SimpleNamespace(k=bad))
    with pytest.raises(MessageDecodeError, match="8 values"):
        camera_info_to_K(SimpleNamespace(k=[1.0] * 8))
    with pytest.raises(MessageDecodeError, match="focal"):
        camera_info_to_K(SimpleNamespace(k=[-1.0, 0, 0, 0, 1, 0, 0, 0, 1]))
    with pytest.raises(MessageDecodeError, match="last row"):
        camera_info_to_K(SimpleNamespace(k=[1.0, 0, 0, 0, 1, 0, 0, 0, 0]))


# ----------------------------------------------------------------------------- cross-checks (full ROS installs)


def test_cross_check_sensor_msgs_py():
    pc2 = pytest.importorskip("sensor_msgs_py.point_cloud2")
    msg, values = mixed_cloud(np.random.default_rng(6), width=5, height=3, row_pad=0, bigendian=False)
    theirs = pc2.read_points(msg, field_names=("x", "y", "z", "ring"), skip_nans=False)
    ours = pointcloud2_to_array(msg)
    for name in ("x", "y", "z", "ring"):
        np.testing.assert_array_equal(np.asarray(theirs[name]), ours[name])


def test_cross_check_cv_bridge():
    cv_bridge = pytest.importorskip("cv_bridge")
    bridge = cv_bridge.CvBridge()
    rng = np.random.default_rng(7)
    for enc in ("rgb8", "bgr8", "mono8", "16UC1", "32FC1"):
        dtype, channels = ENCODINGS[enc]
        arr = random_image(dtype, channels, 6, 7, rng)
        msg = padded_image_msg(arr, enc, 0, False, rng)
        np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, "passthrough"), image_to_array(msg))


# ----------------------------------------------------------------------------- speed


def test_timings_300k_points(capsys):
    """Vectorised decode/encode: ~ms for 300k points (a per-point loop would take seconds)."""
    rng = np.random.default_rng(8)
    n = 300_000
    msg, _ = mixed_cloud(rng, width=10, height=1)  # field layout of a real lidar, tiled to n points
    msg.width = n
    msg.row_step = n * msg.point_step
    msg.data = rng.integers(0, 256, n * msg.point_step, dtype=np.uint8).tobytes()

    def best(fn, repeats=5):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    # x, y, z at 8/12/16 in a 48-byte point with garbage elsewhere: some NaN/inf are expected
    t_dec, (xyz, index) = best(lambda: pointcloud2_to_xyz(msg))
    xyz_ = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(0, 20, n)
    colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    conf = rng.random(n).astype(np.float32)
    t_enc, out = best(lambda: make_labeled_cloud(xyz_, labels, colors, conf, conf))
    t_rt, (back, _) = best(lambda: pointcloud2_to_xyz(out))
    np.testing.assert_array_equal(back, xyz_)
    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    img_msg = padded_image_msg(img, "rgb8", 64, False, rng)
    t_img, rgb = best(lambda: image_to_rgb(img_msg))
    np.testing.assert_array_equal(rgb, img)
    with capsys.disabled():
        print(f"\n[timings] decode 300k-point PointCloud2 (48 B/pt) to xyz: {t_dec * 1e3:.2f} ms; "
              f"encode 300k-point labelled cloud: {t_enc * 1e3:.2f} ms; decode it back: {t_rt * 1e3:.2f} ms; "
              f"640x480 rgb8 with row padding to RGB: {t_img * 1e3:.3f} ms")
    assert len(index) + (n - len(index)) == n
    assert t_dec < 0.25 and t_enc < 0.25 and t_img < 0.05
