"""Fuzzing the message decoders: nothing escapes but MessageDecodeError; valid input decodes right."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image, PointCloud2, PointField
from test_ros_codecs import slow_decode_cloud  # the struct-per-point reference decoder

from safnet_ros.errors import MessageDecodeError
from safnet_ros.ros.codecs import (
    camera_info_to_K,
    depth_to_metres,
    image_encoding_info,
    image_to_array,
    image_to_rgb,
    pointcloud2_to_array,
    pointcloud2_to_xyz,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 8}


def random_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def data_length(draw, exact: int) -> int:
    mode = draw(st.sampled_from(["exact", "exact", "near", "any"]))
    if mode == "exact":
        return exact
    if mode == "near":
        return max(0, exact + draw(st.integers(-9, 9)))
    return draw(st.integers(0, 2000))


def check_cloud(msg):
    """Decode; on success compare every field with the struct reference."""
    try:
        arr = pointcloud2_to_array(msg)
    except MessageDecodeError as exc:
        event(f"cloud refused: {str(exc).split(':')[1][:25]}")
        return None
    event("cloud decoded")
    assert arr.shape == (msg.width * msg.height,)
    ref = slow_decode_cloud(msg)
    for name, values in ref.items():
        expected = np.array(values, dtype=arr.dtype.fields[name][0].base.newbyteorder("=")).reshape(arr[name].shape)
        np.testing.assert_array_equal(arr[name], expected)
    try:
        xyz, index = pointcloud2_to_xyz(msg)
    except MessageDecodeError:
        assert not {"x", "y", "z"} <= set(ref) or any(f.count != 1 for f in msg.fields if f.name in "xyz")
        return arr
    assert xyz.shape == (len(index), 3) and xyz.dtype == np.float32 and np.isfinite(xyz).all()
    full = np.stack([np.asarray(ref[c], dtype=np.float64) for c in "xyz"], 1).astype(np.float32)
    np.testing.assert_array_equal(xyz, full[index])
    assert not np.isfinite(np.delete(full, index, axis=0)).all(axis=1).any()
    return arr


@st.composite
def any_cloud(draw):
    """Clouds with arbitrary (often wrong) layouts."""
    fields = draw(st.lists(st.tuples(st.sampled_from(["x", "y", "z", "rgb", "i", ""]), st.integers(0, 10),
                                     st.integers(0, 40), st.integers(0, 3)), max_size=5))
    msg = PointCloud2()
    msg.fields = [PointField(name=n, datatype=d, offset=o, count=c) for n, d, o, c in fields]
    msg.width, msg.height = draw(st.integers(0, 12)), draw(st.integers(0, 4))
    msg.point_step = draw(st.integers(0, 48))
    msg.row_step = draw(st.one_of(st.just(msg.width * msg.point_step), st.integers(0, 400)))
    msg.is_bigendian = draw(st.booleans())
    msg.data = random_bytes(draw(st.integers(0, 2**32 - 1)), data_length(draw, msg.height * msg.row_step))
    return msg


@st.composite
def valid_cloud(draw):
    """Clouds with correct layouts: gaps, sub-arrays, padding, rows, either byte order."""
    names = draw(st.lists(st.sampled_from(["x", "y", "z", "rgb", "i", "t", "ring"]), unique=True, min_size=1, max_size=6))
    if draw(st.booleans()):
        names = ["x", "y", "z"] + [n for n in names if n not in "xyz"]
    fields, offset = [], 0
    for name in names:
        datatype = draw(st.integers(1, 8))
        count = draw(st.integers(1, 3)) if name not in "xyz" else 1
        offset += draw(st.integers(0, 3))
        fields.append(PointField(name=name, datatype=datatype, offset=offset, count=count))
        offset += SIZE[datatype] * count
    msg = PointCloud2()
    msg.fields = fields
    msg.point_step = offset + draw(st.integers(0, 5))
    msg.width, msg.height = draw(st.integers(0, 10)), draw(st.integers(1, 4))
    msg.row_step = msg.width * msg.point_step + draw(st.integers(0, 7))
    msg.is_bigendian = draw(st.booleans())
    msg.data = random_bytes(draw(st.integers(0, 2**32 - 1)), msg.height * msg.row_step)
    return msg


@FUZZ
@given(any_cloud())
def test_fuzz_cloud_only_decode_errors(msg):
    check_cloud(msg)


@FUZZ
@given(valid_cloud())
def test_fuzz_valid_clouds_decode_right(msg):
    arr = check_cloud(msg)
    assert arr is not None, "a valid cloud was refused"


ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC3", "16SC2", "64FC1",
             "bgr16", "", "rgb", "bayer_rggb8", "16UC5", "8UC0", "32UC1", "yuv422"]


@st.composite
def any_image(draw):
    msg = Image()
    msg.encoding = draw(st.sampled_from(ENCODINGS))
    msg.width, msg.height = draw(st.integers(0, 12)), draw(st.integers(0, 6))
    try:
        dtype, channels = image_encoding_info(msg.encoding)
        row = msg.width * channels * dtype.itemsize
    except MessageDecodeError:
        row = msg.width * 3
    msg.step = draw(st.one_of(st.just(row), st.integers(0, row + 8), st.integers(0, 200)))
    msg.is_bigendian = draw(st.integers(0, 1))
    msg.data = random_bytes(draw(st.integers(0, 2**32 - 1)), data_length(draw, msg.height * msg.step))
    return msg


def slow_image(msg, dtype, channels):
    fmt = (">" if msg.is_bigendian else "<") + dtype.char * channels
    size = struct.calcsize(fmt)
    data = bytes(msg.data)
    out = np.array([[struct.unpack_from(fmt, data, r * msg.step + c * size) for c in range(msg.width)]
                    for r in range(msg.height)], dtype=dtype).reshape(msg.height, msg.width, channels)
    return out[:, :, 0] if channels == 1 else out


@FUZZ
@given(any_image())
def test_fuzz_image_only_decode_errors(msg):
    try:
        arr = image_to_array(msg)
    except MessageDecodeError as exc:
        event(f"image refused: {str(exc).split(':')[1][:25]}")
        return
    event("image decoded")
    dtype, channels = image_encoding_info(msg.encoding)
    assert arr.shape == ((msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels))
    np.testing.assert_array_equal(arr, slow_image(msg, dtype, channels))
    for decode in (image_to_rgb, depth_to_metres):
        try:
            out = decode(msg)
        except MessageDecodeError:
            continue
        assert out.shape[:2] == (msg.height, msg.width)
        if decode is depth_to_metres:
            assert out.dtype == np.float32 and np.isfinite(out).all() and (out >= 0).all()
        else:
            assert out.dtype == np.uint8 and out.shape[2] == 3


@st.composite
def valid_image(draw):
    enc = draw(st.sampled_from(ENCODINGS[:12]))
    dtype, channels = image_encoding_info(enc)
    msg = Image(encoding=enc, width=draw(st.integers(1, 12)), height=draw(st.integers(1, 6)),
                is_bigendian=draw(st.integers(0, 1)))
    msg.step = msg.width * channels * dtype.itemsize + draw(st.integers(0, 9))
    msg.data = random_bytes(draw(st.integers(0, 2**32 - 1)), msg.height * msg.step)
    return msg


@FUZZ
@given(valid_image())
def test_fuzz_valid_images_decode_right(msg):
    dtype, channels = image_encoding_info(msg.encoding)
    np.testing.assert_array_equal(image_to_array(msg), slow_image(msg, dtype, channels))


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=12))
def test_fuzz_camera_info(k):
    try:
        K = camera_info_to_K(SimpleNamespace(k=k))
    except MessageDecodeError:
        return
    assert K.shape == (3, 3) and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0
