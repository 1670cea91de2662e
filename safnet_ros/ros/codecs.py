"""numpy views over ROS 2 sensor messages: PointCloud2, Image, CameraInfo (table: docs/ros_compat.md).

Decoding never loops over points or pixels in Python: a structured dtype built from the message's
fields is laid over ``msg.data``, row padding becoming an array stride; encoding fills one structured
array and hands its bytes to the message in one copy. Decoders are duck-typed (rclpy and rosbags
messages alike; this module imports no rclpy) and may return read-only views over ``msg.data``: copy
them before writing. A malformed message raises :class:`~safnet_ros.errors.MessageDecodeError` naming
the field; bad arrays given to the encoders raise :class:`MessageEncodeError`.
"""
from __future__ import annotations

import array
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from numpy.lib.recfunctions import structured_to_unstructured
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from safnet_ros.data.labels import CLASS_NAMES, IGNORE_INDEX, class_colors, encode_label_ids
from safnet_ros.errors import DataFormatError, MessageDecodeError, MessageEncodeError
from safnet_ros.geometry.camera import scale_intrinsics
from safnet_ros.ros import compressed

__all__ = [
    "MessageDecodeError", "MessageEncodeError", "DecodedXYZ", "POINTFIELD_DTYPES", "LABELED_CLOUD_DTYPE",
    "pointcloud_dtype", "pointcloud2_to_array", "pointcloud2_to_xyz", "array_to_pointcloud2", "fields_from_dtype",
    "make_labeled_cloud", "labeled_cloud", "labeled_cloud_dtype", "probability_columns",
    "structured_to_pointcloud2", "pack_rgb", "unpack_rgb", "image_encoding_info", "image_to_array", "image_to_rgb",
    "depth_to_metres", "array_to_image", "camera_info_to_K", "RGBDFrame", "camera_frame_id", "decode_rgbd",
    "stamp_to_ns", "ns_to_stamp", "make_header",
]


# PointField.datatype -> numpy type code (without byte order).
POINTFIELD_DTYPES: dict[int, str] = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}
_DTYPE_TO_POINTFIELD: dict[str, int] = {code: dt for dt, code in POINTFIELD_DTYPES.items()}

# The node's output cloud (docs/design.md §3.7): 28 bytes a point, label padded to 4 bytes.
LABELED_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "label", "confidence", "similarity"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4", "<f4"],
        "offsets": [0, 4, 8, 12, 16, 20, 24],
        "itemsize": 28,
    }
)


# ----------------------------------------------------------------------------- helpers


def _to_byte_array(arr: np.ndarray) -> array.array:
    """One copy of a contiguous array's bytes into the ``array('B')`` that rclpy messages hold."""
    out = array.array("B")
    out.frombytes(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return out


def _as_int(value: Any, name: str, what: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise MessageDecodeError(f"{what}: {name} is not an integer ({value!r})") from None
    if out < 0:
        raise MessageDecodeError(f"{what}: {name} is negative ({out})")
    return out


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds from a builtin_interfaces/Time or Duration, an rclpy Time or Duration, an int (ns) or a
    float (seconds); None is 0."""
    if stamp is None:
        return 0
    if hasattr(stamp, "nanosec") and hasattr(stamp, "sec"):
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if isinstance(stamp, (float, np.floating)):
        return int(round(float(stamp) * 1e9))
    raise TypeError(f"cannot read a time stamp from {type(stamp).__name__}")


def ns_to_stamp(ns: int) -> TimeMsg:
    """builtin_interfaces/Time from nanoseconds (non-negative)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return TimeMsg(sec=sec, nanosec=nanosec)


def make_header(header: Header | None = None, *, frame_id: str | None = None, stamp: Any = None) -> Header:
    """A std_msgs/Header: a copy of ``header`` with ``frame_id`` / ``stamp`` overridden where given."""
    out = Header()
    if header is not None:
        out.frame_id = header.frame_id
        out.stamp = TimeMsg(sec=header.stamp.sec, nanosec=header.stamp.nanosec)
    if frame_id is not None:
        out.frame_id = frame_id
    if stamp is not None:
        out.stamp = stamp if isinstance(stamp, TimeMsg) else ns_to_stamp(stamp_to_ns(stamp))
    return out


# ----------------------------------------------------------------------------- PointCloud2


def pointcloud_dtype(fields: Sequence[Any], point_step: int, is_bigendian: bool) -> np.dtype:
    """Structured dtype (itemsize ``point_step``) for a PointCloud2's ``fields``.

    Fields with ``count > 1`` become sub-arrays of shape ``(count,)``.  Raises
    MessageDecodeError on empty or duplicate names, unknown datatypes, a count
    below 1 and fields that end past ``point_step``.
    """
    what = "PointCloud2"
    point_step = _as_int(point_step, "point_step", what)
    order = ">" if is_bigendian else "<"
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    for field in fields:
        name = str(field.name)
        if not name:
            raise MessageDecodeError(f"{what}: a field has an empty name")
        if name in names:
            raise MessageDecodeError(f"{what}: field {name!r} appears twice")
        code = POINTFIELD_DTYPES.get(int(field.datatype))
        if code is None:
            raise MessageDecodeError(f"{what}: field {name!r} has unsupported datatype {int(field.datatype)} "
                                     f"(PointField types are 1..8)")
        offset = _as_int(field.offset, f"field {name!r} offset", what)
        count = _as_int(field.count, f"field {name!r} count", what)
        if count < 1:
            raise MessageDecodeError(f"{what}: field {name!r} has count 0")
        base = np.dtype(order + code)
        end = offset + base.itemsize * count
        if end > point_step:
            raise MessageDecodeError(
                f"{what}: field {name!r} (offset {offset}, {base.itemsize * count} bytes) ends at byte "
                f"{end}, past point_step {point_step}"
            )
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def _cloud_view(msg: Any, dtype: np.dtype) -> np.ndarray:
    """(height*width,) array of ``dtype`` (itemsize == point_step) over ``msg.data``, rows in order.

    A read-only view when rows are contiguous, else a (row-major) copy.
    """
    what = "PointCloud2"
    height = _as_int(msg.height, "height", what)
    width = _as_int(msg.width, "width", what)
    point_step = _as_int(msg.point_step, "point_step", what)
    row_step = _as_int(msg.row_step, "row_step", what)
    buf = compressed.message_bytes(msg.data, what)
    n = height * width
    row_bytes = width * point_step
    if height and row_step < row_bytes:
        raise MessageDecodeError(
            f"{what}: row_step {row_step} is smaller than width×point_step = {width}×{point_step} = {row_bytes}"
        )
    need_min = (height - 1) * row_step + row_bytes if height else 0
    need_max = height * row_step
    if not need_min <= buf.size <= need_max:
        raise MessageDecodeError(
            f"{what}: data holds {buf.size} bytes but width×height = {width}×{height} points with "
            f"point_step {point_step} and row_step {row_step} need {need_max} bytes"
        )
    if n == 0:
        return np.empty(0, dtype=dtype)
    if point_step == 0:
        raise MessageDecodeError(f"{what}: point_step is 0 for {n} points")
    if height == 1 or row_step == row_bytes:
        out = np.ndarray(shape=(n,), dtype=dtype, buffer=buf, strides=(point_step,))
        out.flags.writeable = False
        return out
    grid = np.ndarray(shape=(height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step))
    return grid.reshape(n)  # rows are not evenly spaced: one copy


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """All points of a PointCloud2 as a structured array ``(height*width,)``, row-major, with the message's
    fields, offsets and byte order; row padding skipped. May be a read-only view."""
    dtype = pointcloud_dtype(msg.fields, msg.point_step, bool(msg.is_bigendian))
    return _cloud_view(msg, dtype)


class DecodedXYZ(tuple):
    """``(xyz (M,3) float32 metres, index (M,) int64)`` from :func:`pointcloud2_to_xyz`.

    Unpacks as a 2-tuple; ``index`` maps the kept points back to the cloud's
    ``height*width`` points (row-major).  ``num_points`` is the cloud's point
    count and ``num_dropped`` how many NaN/inf points were left out.
    """

    num_points: int

    def __new__(cls, xyz: np.ndarray, index: np.ndarray, num_points: int) -> "DecodedXYZ":
        self = super().__new__(cls, (xyz, index))
        self.num_points = int(num_points)
        return self

    @property
    def xyz(self) -> np.ndarray:
        return self[0]

    @property
    def index(self) -> np.ndarray:
        return self[1]

    @property
    def num_dropped(self) -> int:
        return self.num_points - int(self[1].shape[0])


def pointcloud2_to_xyz(msg: Any, skip_nans: bool = True) -> DecodedXYZ:
    """Coordinates of a PointCloud2 as ``(xyz (M,3) float32, index (M,) int64)``.

    Needs scalar fields x, y, z (any numeric PointField type).  With
    ``skip_nans`` points with any non-finite coordinate are dropped (and counted:
    ``result.num_dropped``); otherwise M = height*width and ``index`` is
    ``arange(M)``.
    """
    what = "PointCloud2"
    full = pointcloud_dtype(msg.fields, msg.point_step, bool(msg.is_bigendian))
    names = full.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
        raise MessageDecodeError(f"{what}: no {'/'.join(missing)} field (fields: {list(names)})")
    for c in "xyz":
        if full[c].shape != ():
            raise MessageDecodeError(f"{what}: field {c!r} has count {full[c].shape[0]}, expected 1")
    # x, y, z only (offsets and point_step kept): one strided copy when they are adjacent fields of one type
    xyz = np.array(structured_to_unstructured(_cloud_view(msg, full[["x", "y", "z"]]), dtype=np.float32))
    n = xyz.shape[0]
    index = np.flatnonzero(np.isfinite(xyz).all(axis=1)) if skip_nans else np.arange(n)
    return DecodedXYZ(xyz if len(index) == n else xyz[index], index.astype(np.int64), n)


def fields_from_dtype(dtype: np.dtype) -> list[PointField]:
    """PointFields (offsets, datatypes, counts) describing a structured dtype."""
    out = []
    for name in dtype.names or ():
        dt, offset = dtype.fields[name][:2]
        base, shape = (dt.base, dt.shape) if dt.shape else (dt, ())
        if len(shape) > 1:
            raise MessageEncodeError(f"field {name!r} has shape {shape}; only (count,) sub-arrays are allowed")
        code = _DTYPE_TO_POINTFIELD.get(base.str[1:])
        if code is None or base.kind not in "uif":
            raise MessageEncodeError(f"field {name!r} has dtype {base} which no PointField datatype holds")
        out.append(PointField(name=name, offset=offset, datatype=code, count=int(shape[0]) if shape else 1))
    return out


def _packed_le(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """A packed little-endian structured array holding the given equal-length columns."""
    names, formats = [], []
    n = None
    for name, col in columns.items():
        col = np.asarray(col)
        if col.ndim not in (1, 2):
            raise MessageEncodeError(f"column {name!r} must be (N,) or (N, k), got shape {col.shape}")
        if n is None:
            n = col.shape[0]
        elif col.shape[0] != n:
            raise MessageEncodeError(f"column {name!r} has {col.shape[0]} rows, expected {n}")
        if col.dtype.kind not in "uif" or col.dtype.str[1:] not in _DTYPE_TO_POINTFIELD:
            raise MessageEncodeError(f"column {name!r} has dtype {col.dtype} which no PointField datatype holds")
        base = col.dtype.newbyteorder("<")
        names.append(str(name))
        formats.append(base if col.ndim == 1 else (base, (col.shape[1],)))
    out = np.zeros(n or 0, dtype=np.dtype({"names": names, "formats": formats}))
    for name, col in columns.items():
        out[str(name)] = col
    return out


def array_to_pointcloud2(points: np.ndarray | Mapping[str, Any], header: Header | None = None, *,
                         frame_id: str | None = None, stamp: Any = None) -> PointCloud2:
    """PointCloud2 (little endian, height 1, packed fields) from a structured array or a dict of columns.

    Columns are ``(N,)`` (count 1) or ``(N, k)`` (count k) of int8..uint32,
    float32 or float64.  ``is_dense`` is True unless x/y/z hold NaN/inf.
    """
    if isinstance(points, np.ndarray):
        if points.dtype.names is None:
            raise MessageEncodeError(f"points must be a structured array or a dict of columns, got {points.dtype}")
        packed = _packed_le({name: points[name] for name in points.dtype.names})
    elif isinstance(points, Mapping):
        packed = _packed_le(points)
    else:
        raise MessageEncodeError(f"points must be a structured array or a dict of columns, got {type(points).__name__}")
    return structured_to_pointcloud2(packed, header, frame_id=frame_id, stamp=stamp)


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are ``0x00RRGGBB`` (PCL / RViz ``rgb``)."""
    colors = np.asarray(colors)
    if colors.ndim < 1 or colors.shape[-1] != 3:
        raise MessageEncodeError(f"colours must be (N, 3), got shape {colors.shape}")
    if colors.dtype != np.uint8 and (colors.dtype.kind not in "ui"
                                     or (colors.size and (colors.min() < 0 or colors.max() > 255))):
        raise MessageEncodeError(f"colours must be uint8 0..255, got dtype {colors.dtype}")
    c = colors.astype(np.uint32)
    packed = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return packed.view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,) packed ``rgb`` (float32 bits, any byte order, or uint32) -> (N, 3) uint8 RGB."""
    rgb = np.asarray(rgb)
    if rgb.dtype.kind == "f":
        bits = rgb.astype("<f4").view("<u4")
    elif rgb.dtype.kind in "ui":
        bits = rgb.astype("<u4")
    else:
        raise MessageDecodeError(f"rgb must be float32 or uint32, got dtype {rgb.dtype}")
    return ((bits[..., None] >> np.array([16, 8, 0], dtype="<u4")) & 0xFF).astype(np.uint8)


def _class_field_names() -> tuple[str, ...]:
    return tuple("p_" + name.replace(" ", "_") for name in CLASS_NAMES)


def labeled_cloud_dtype(probabilities: str = "none") -> np.dtype:
    """The labelled cloud's point layout for a ``probabilities`` mode: :data:`LABELED_CLOUD_DTYPE` plus, for
    top3 / all, the fields of docs/ros_node.md, "Probability fields on ~/labeled_cloud"."""
    if probabilities == "none":
        return LABELED_CLOUD_DTYPE
    if probabilities == "top3":
        extra = zip(["p_label1", "p_label2", "p_label3", "p1", "p2", "p3"], ["<u2"] * 3 + ["<f4"] * 3,
                    [28, 30, 32, 36, 40, 44])
    elif probabilities == "all":
        extra = ((name, "<f4", 28 + 4 * k) for k, name in enumerate(_class_field_names()))
    else:
        raise MessageEncodeError(f"probabilities must be none, top3 or all, got {probabilities!r}")
    rows = [(name, *LABELED_CLOUD_DTYPE.fields[name]) for name in LABELED_CLOUD_DTYPE.names]  # (name, dtype, offset)
    names, formats, offsets = zip(*rows, *extra)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": offsets[-1] + 4})


def probability_columns(probs: np.ndarray, segmented: np.ndarray, probabilities: str) -> dict[str, np.ndarray]:
    """The extra columns of :func:`labeled_cloud_dtype` from (N, C) probabilities; zeros / 255 where not segmented."""
    probs = np.asarray(probs, np.float32)
    seg = np.asarray(segmented, bool)
    if probs.ndim != 2 or probs.shape[0] != seg.shape[0]:
        raise MessageEncodeError(f"probabilities must be (N, C) for N = {seg.shape[0]} points, got {probs.shape}")
    if probabilities == "none":
        return {}
    if probabilities == "all":
        names = _class_field_names()
        if probs.shape[1] != len(names):
            raise MessageEncodeError(f"probabilities must have {len(names)} classes, got {probs.shape[1]}")
        return {name: np.where(seg, probs[:, k], 0.0) for k, name in enumerate(names)}
    if probabilities == "top3":
        k = min(3, probs.shape[1])
        # a stable sort of all classes: among equal probabilities (bf16 logits tie often) the lowest
        # class comes first, as argmax picks the label, so p_label1 is always the label
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        p_top = np.take_along_axis(probs, top, axis=1)
        out = {}
        for i in range(3):
            none = np.full(len(seg), IGNORE_INDEX)
            out[f"p_label{i + 1}"] = np.where(seg, top[:, i], IGNORE_INDEX) if i < k else none
            out[f"p{i + 1}"] = np.where(seg, p_top[:, i], 0.0) if i < k else np.zeros(len(seg))
        return out
    raise MessageEncodeError(f"probabilities must be none, top3 or all, got {probabilities!r}")


def structured_to_pointcloud2(points: np.ndarray, header: Header | None = None, *, frame_id: str | None = None,
                              stamp: Any = None) -> PointCloud2:
    """PointCloud2 (height 1) whose layout is ``points``' structured dtype as it is (offsets and padding kept).

    The dtype must be little endian with scalar or (count,) fields of PointField types.
    """
    points = np.ascontiguousarray(points)
    if points.dtype.names is None:
        raise MessageEncodeError(f"points must be a structured array, got {points.dtype}")
    for name in points.dtype.names:
        if points.dtype.fields[name][0].base.byteorder == ">":
            raise MessageEncodeError(f"field {name!r} is big endian; the output clouds are little endian")
    n, step = int(points.shape[0]), int(points.dtype.itemsize)
    dense = all(bool(np.isfinite(points[c]).all()) for c in "xyz" if c in points.dtype.names) if n else True
    return PointCloud2(header=make_header(header, frame_id=frame_id, stamp=stamp), height=1, width=n,
                       fields=fields_from_dtype(points.dtype), is_bigendian=False, point_step=step,
                       row_step=step * n, is_dense=dense, data=_to_byte_array(points))


def make_labeled_cloud(xyz: np.ndarray, labels: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                       similarity: np.ndarray, header: Header | None = None, *, frame_id: str | None = None,
                       stamp: Any = None, extra: Mapping[str, np.ndarray] | None = None,
                       probabilities: str = "none") -> PointCloud2:
    """The node's output PointCloud2 (docs/design.md §3.7), :data:`LABELED_CLOUD_DTYPE` layout.

    xyz (N,3) metres; labels (N,) ints 0..65535 (stored uint16); colors either
    (N,3) uint8 RGB or (N,) packed rgb (float32 bits or uint32 ``0x00RRGGBB``);
    confidence, similarity (N,) floats.  ``probabilities`` top3 / all with
    ``extra`` = :func:`probability_columns`: the layout of :func:`labeled_cloud_dtype`.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise MessageEncodeError(f"xyz must be (N, 3), got shape {xyz.shape}")
    n = xyz.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise MessageEncodeError(f"labels must be ({n},), got shape {labels.shape}")
    if labels.dtype.kind not in "ui" or (n and (labels.min() < 0 or labels.max() > 0xFFFF)):
        raise MessageEncodeError(f"labels must be integers in 0..65535 (got dtype {labels.dtype})")
    colors = np.asarray(colors)
    if colors.ndim == 2:
        rgb = pack_rgb(colors)
    elif colors.ndim == 1 and colors.dtype.kind == "f":
        rgb = colors.astype(np.float32)
    elif colors.ndim == 1 and colors.dtype.kind in "ui":
        rgb = colors.astype(np.uint32).view(np.float32)
    else:
        raise MessageEncodeError(f"colors must be (N,3) uint8 or (N,) packed rgb, got {colors.dtype} {colors.shape}")
    dtype, extra = labeled_cloud_dtype(probabilities), dict(extra or {})
    extra_names = [name for name in dtype.names if name not in LABELED_CLOUD_DTYPE.names]
    if sorted(extra) != sorted(extra_names):
        raise MessageEncodeError(f"probabilities {probabilities!r} needs the columns {extra_names}, got {sorted(extra)}")
    for name, col in (("colors", rgb), ("confidence", confidence), ("similarity", similarity), *extra.items()):
        if np.shape(col) != (n,):
            raise MessageEncodeError(f"{name} must have {n} entries, got shape {np.shape(col)}")
    cloud = np.zeros(n, dtype=dtype)
    cloud["x"], cloud["y"], cloud["z"] = xyz.T
    cloud["rgb"], cloud["label"], cloud["confidence"], cloud["similarity"] = rgb, labels, confidence, similarity
    for name, col in extra.items():
        cloud[name] = col
    return structured_to_pointcloud2(cloud, header, frame_id=frame_id, stamp=stamp)


def labeled_cloud(xyz: np.ndarray, result: Any, header: Any, probabilities: str = "none",
                  label_ids: str = "index") -> PointCloud2:
    """The node's ``~/labeled_cloud`` of a segmented cloud (segment-bag writes the same message).

    xyz (N, 3) metres in the cloud's own frame; result: a SegmentResult
    (labels, confidence, s, and probs/segmented for ``probabilities`` top3 /
    all); header: the input cloud's (frame and stamp are kept); label_ids: the
    ``label`` field's id space, ``index`` or ``nyu40`` (:mod:`safnet_ros.ros.label_info`).
    """
    labels = np.asarray(result.labels)
    mode = probabilities if result.probs is not None else "none"
    return make_labeled_cloud(
        xyz, encode_label_ids(labels, label_ids), class_colors(labels), result.confidence,
        np.nan_to_num(result.s, nan=0.0).astype(np.float32), header=header, probabilities=mode,
        extra=probability_columns(result.probs, result.segmented, mode) if mode != "none" else None,
    )


# ----------------------------------------------------------------------------- Image

# encoding -> (numpy type code, channels); OpenCV-style "16UC1" names are parsed.
_NAMED_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "mono16": ("u2", 1),
    "rgb16": ("u2", 3), "bgr16": ("u2", 3), "rgba16": ("u2", 4), "bgra16": ("u2", 4),
}
_CV_ENCODING = re.compile(r"^(8|16|32|64)(U|S|F)C([1-4])$")
_CV_CODES = {("8", "U"): "u1", ("8", "S"): "i1", ("16", "U"): "u2", ("16", "S"): "i2",
             ("32", "S"): "i4", ("32", "F"): "f4", ("64", "F"): "f8"}
# colour encodings -> channel index of R, G, B (alpha ignored)
_RGB_ORDER = {"rgb8": (0, 1, 2), "rgba8": (0, 1, 2), "bgr8": (2, 1, 0), "bgra8": (2, 1, 0),
              "rgb16": (0, 1, 2), "rgba16": (0, 1, 2), "bgr16": (2, 1, 0), "bgra16": (2, 1, 0)}


def image_encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """``(little-endian element dtype, channels)`` of a sensor_msgs/Image encoding."""
    info = _NAMED_ENCODINGS.get(encoding)
    if info is None:
        m = _CV_ENCODING.match(encoding or "")
        code = _CV_CODES.get((m.group(1), m.group(2))) if m else None
        if code is None:
            raise MessageDecodeError(f"Image: unknown image encoding {encoding!r}")
        info = (code, int(m.group(3)))
    return np.dtype("<" + info[0]), info[1]


def image_to_array(msg: Any) -> np.ndarray:
    """Pixels of a sensor_msgs/Image as ``(H, W)`` (one channel) or ``(H, W, C)``, native byte order.

    Channels stay in the encoding's order (bgr8 stays BGR: use
    :func:`image_to_rgb` for RGB).  Row padding (``step``) and
    ``is_bigendian`` are honoured; a read-only view unless a byte swap was needed.
    """
    what = "Image"
    base, channels = image_encoding_info(str(msg.encoding))
    height = _as_int(msg.height, "height", what)
    width = _as_int(msg.width, "width", what)
    step = _as_int(msg.step, "step", what)
    buf = compressed.message_bytes(msg.data, what)
    pixel = base.itemsize * channels
    row = width * pixel
    if height and step < row:
        raise MessageDecodeError(
            f"{what}: step {step} is smaller than width×channels×bytes = {width}×{channels}×{base.itemsize} = {row}"
        )
    need_min = (height - 1) * step + row if height and width else 0
    need_max = height * step
    if not need_min <= buf.size <= max(need_max, need_min):
        raise MessageDecodeError(
            f"{what}: data holds {buf.size} bytes but {msg.encoding} {width}×{height} with step {step} "
            f"needs {need_max} bytes"
        )
    dtype = base.newbyteorder(">") if msg.is_bigendian else base
    if height == 0 or width == 0:
        out = np.zeros((height, width, channels), dtype=base)
    else:
        out = np.ndarray(shape=(height, width, channels), dtype=dtype, buffer=buf,
                         strides=(step, pixel, base.itemsize))
        if dtype.byteorder == ">" and base.itemsize > 1:
            out = out.astype(base)  # native copy
        else:
            out.flags.writeable = False
    return out[:, :, 0] if channels == 1 else out


def image_to_rgb(msg: Any) -> np.ndarray:
    """A colour Image as C-contiguous ``(H, W, 3)`` uint8 RGB.

    rgb8 / bgr8 / rgba8 / bgra8 reorder channels (alpha dropped); mono8 is
    repeated into three channels; the 16-bit colour encodings keep their high
    byte.  Other encodings raise MessageDecodeError.
    """
    enc = str(msg.encoding)
    arr = image_to_array(msg)
    if enc == "mono8":
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    order = _RGB_ORDER.get(enc)
    if order is None:
        raise MessageDecodeError(f"Image: encoding {enc!r} is not a colour encoding (rgb8, bgr8, rgba8, bgra8, mono8)")
    rgb = arr[:, :, list(order)] if order != (0, 1, 2) or arr.shape[2] != 3 else arr
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def depth_to_metres(msg: Any) -> np.ndarray:
    """A depth Image as ``(H, W)`` float32 metres; 0 marks invalid pixels.

    ``16UC1`` / ``mono16`` are millimetres (0 = no return); ``32FC1`` is
    metres (NaN, ±inf, 0 and negative values become 0).
    """
    enc = str(msg.encoding)
    if enc not in ("16UC1", "mono16", "32FC1"):
        raise MessageDecodeError(f"Image: depth encoding must be 16UC1 (mm) or 32FC1 (m), got {enc!r}")
    raw = image_to_array(msg)
    if enc == "32FC1":
        depth = raw.astype(np.float32)
        depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
        return depth
    return raw.astype(np.float32) * np.float32(0.001)


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None, *, frame_id: str | None = None,
                   stamp: Any = None) -> Image:
    """sensor_msgs/Image (little endian, no row padding) from ``(H, W)`` / ``(H, W, C)`` pixels.

    The array's dtype must match the encoding (uint8 for rgb8, uint16 for
    16UC1, float32 for 32FC1, ...); channels are written as given.
    """
    try:
        base, channels = image_encoding_info(encoding)
    except MessageDecodeError as exc:
        raise MessageEncodeError(str(exc)) from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and channels == 1:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise MessageEncodeError(f"{encoding} needs shape {shape}, got {arr.shape}")
    if arr.dtype.kind != base.kind or arr.dtype.itemsize != base.itemsize:
        raise MessageEncodeError(f"{encoding} needs dtype {base.name}, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=base)
    return Image(header=make_header(header, frame_id=frame_id, stamp=stamp), height=int(arr.shape[0]),
                 width=int(arr.shape[1]), encoding=encoding, is_bigendian=0,
                 step=int(arr.shape[1] * channels * base.itemsize), data=_to_byte_array(arr))


def camera_info_to_K(msg: Any) -> np.ndarray:
    """The (3,3) float64 intrinsic matrix of a CameraInfo (fx, fy, cx, cy in pixels).

    Raises MessageDecodeError for a K that is not 9 finite numbers, is all zero
    (uncalibrated camera), has fx or fy <= 0, or whose last row is not (0, 0, 1).
    """
    try:
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MessageDecodeError(f"CameraInfo: K is not numeric ({exc})") from None
    if k.size != 9:
        raise MessageDecodeError(f"CameraInfo: K has {k.size} values, expected 9")
    if not np.isfinite(k).all():
        raise MessageDecodeError("CameraInfo: K holds NaN or inf")
    if not k.any():
        raise MessageDecodeError("CameraInfo: K is all zero (the camera is not calibrated)")
    K = k.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MessageDecodeError(f"CameraInfo: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise MessageDecodeError(f"CameraInfo: last row of K must be (0, 0, 1), got {tuple(K[2])}")
    return K


class RGBDFrame(NamedTuple):
    """A decoded (colour, depth, camera_info) set: what a view is made of (unpacks as a 3-tuple)."""

    color: np.ndarray  # (Hc, Wc, 3) uint8 RGB
    depth: np.ndarray  # (Hd, Wd) float32 metres, 0 = invalid
    K: np.ndarray  # (3, 3) float64 intrinsics of the depth image


def camera_frame_id(depth: Any, info: Any) -> str:
    """The camera optical frame of a depth Image / CameraInfo pair (the depth's, else the info's)."""
    frame_id = str(depth.header.frame_id or info.header.frame_id)
    if not frame_id:
        raise MessageDecodeError("depth Image and CameraInfo have no header.frame_id: camera frame unknown")
    return frame_id


def decode_rgbd(rgb: Any, depth: Any, info: Any) -> RGBDFrame:
    """Decode a synchronised colour Image, depth Image and CameraInfo (the node's and segment-bag's one path).

    The images may be CompressedImage instead. Colour to RGB, depth to metres, K from the CameraInfo,
    rescaled to the depth image when the CameraInfo's width/height differ from it. MessageDecodeError for a
    malformed message, an image of width or height 0, an unusable K, or a depth image without any valid
    (> 0) pixel (a view with no depth covers nothing).
    """
    color = compressed.compressed_to_rgb(rgb) if compressed.is_compressed(rgb) else image_to_rgb(rgb)
    depth_m = (compressed.compressed_depth_to_metres(depth) if compressed.is_compressed(depth)
               else depth_to_metres(depth))
    for name, pixels in (("colour", color), ("depth", depth_m)):
        if pixels.shape[0] == 0 or pixels.shape[1] == 0:  # a valid message, but no view to keep
            raise MessageDecodeError(f"{name} Image is {pixels.shape[1]}x{pixels.shape[0]} (no pixels)")
    K = camera_info_to_K(info)
    dh, dw = depth_m.shape
    if not np.any(depth_m > 0):  # np.any is False for NaN too
        raise MessageDecodeError(f"depth Image ({dw}x{dh}) has no valid (> 0) pixel")
    if info.width and info.height and (int(info.width), int(info.height)) != (dw, dh):
        try:
            K = scale_intrinsics(K, (int(info.width), int(info.height)), (dw, dh))
        except DataFormatError as exc:
            raise MessageDecodeError(f"CameraInfo: {exc}") from None
    return RGBDFrame(color, depth_m, K)
