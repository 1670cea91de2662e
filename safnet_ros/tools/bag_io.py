"""rosbag2 messages with rosbags only: build, serialise and decode, no ROS install needed.

Everything here works on rosbags' message dataclasses (from one typestore,
:data:`TYPESTORE`, ROS 2 Kilted definitions, which match the ROS message wheels
on this machine byte for byte) and numpy arrays.  No rclpy import: the bag
converter and the offline segmenter run on any Python with rosbags.

Conventions (docs/design.md §3.7, docs/bags.md):

* stamps are int nanoseconds; a ``builtin_interfaces/Time`` is built from them;
* colour ``rgb8``, depth ``16UC1`` millimetres (0 = no return), little endian,
  no row padding;
* transforms are 4x4 float64 ``T_parent_child`` (maps points in the child frame
  into the parent frame); quaternions are (x, y, z, w);
* point clouds are little endian, ``height == 1``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.typesys import Stores, get_typestore

from safnet_ros.errors import ConfigError, MessageDecodeError, MessageEncodeError
from safnet_ros.geometry.transforms import matrix_to_quat, quat_to_matrix

#: One typestore for every bag we write and read (ROS 2 Kilted, the wheels' distribution).
TYPESTORE = get_typestore(Stores.ROS2_KILTED)

# Message type names (rosbags / rosbag2 spelling).
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
CLOCK = "rosgraph_msgs/msg/Clock"

# Default topics and frames of a converted scene.
COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/depth/image_rect_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
POINTS_TOPIC = "/points"
LABELED_CLOUD_TOPIC = "/safnet/labeled_cloud"
MARKERS_TOPIC = "/safnet/similarity_markers"
MAP_FRAME = "map"
CAMERA_LINK_FRAME = "camera_link"
OPTICAL_FRAME = "camera_color_optical_frame"

#: T_camera_link_optical of REP-103: optical z forward = link x, optical x right = -link y,
#: optical y down = -link z.
LINK_TO_OPTICAL = np.array(
    [[0.0, 0.0, 1.0, 0.0],
     [-1.0, 0.0, 0.0, 0.0],
     [0.0, -1.0, 0.0, 0.0],
     [0.0, 0.0, 0.0, 1.0]]
)

_ZERO = QosTime(sec=0, nsec=0)
_INFINITE = QosTime(sec=2147483647, nsec=4294967295)


def make_qos(depth: int, *, transient_local: bool = False, reliable: bool = True) -> Qos:
    """An offered QoS profile for a bag connection (keep last ``depth``)."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=_INFINITE,
        lifespan=_INFINITE,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_INFINITE,
        avoid_ros_namespace_conventions=False,
    )


#: /tf_static is latched: reliable, transient local (what tf2's static broadcaster offers).
STATIC_QOS = make_qos(1, transient_local=True)
DEFAULT_QOS = make_qos(10)


def is_transient_local(profiles: Sequence[Qos]) -> bool:
    """True when any offered profile of a connection is transient local (a latched topic)."""
    return any(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)


# ----------------------------------------------------------------------------- small types

_T = TYPESTORE.types


def stamp(ns: int) -> Any:
    """builtin_interfaces/Time from int nanoseconds (>= 0)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return _T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def stamp_ns(t: Any) -> int:
    """Int nanoseconds of a builtin_interfaces/Time."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def header(ns: int, frame_id: str) -> Any:
    return _T["std_msgs/msg/Header"](stamp=stamp(ns), frame_id=frame_id)


def serialize(msg: Any) -> bytes:
    """CDR bytes of a rosbags message (the bytes rosbag2 stores and rclpy deserialises)."""
    return bytes(TYPESTORE.serialize_cdr(msg, msg.__msgtype__))


def deserialize(data: bytes | memoryview, msgtype: str, what: str = "") -> Any:
    """A rosbags message from CDR bytes; MessageDecodeError (naming ``what``) when they do not parse."""
    try:
        return TYPESTORE.deserialize_cdr(data, msgtype)
    except Exception as exc:  # rosbags raises assorted errors (struct, index, value) on bad bytes
        raise MessageDecodeError(f"{what or msgtype}: cannot deserialise {msgtype} ({exc})") from None


# ----------------------------------------------------------------------------- rotations


def orthonormalize(rot: np.ndarray) -> np.ndarray:
    """Nearest rotation (SVD) to a (3, 3) matrix: ScanNet poses are float32 and not exactly orthogonal."""
    u, _, vt = np.linalg.svd(np.asarray(rot, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


# ----------------------------------------------------------------------------- builders


def transform_stamped(matrix: np.ndarray, parent: str, child: str, ns: int) -> Any:
    """geometry_msgs/TransformStamped of a 4x4 ``T_parent_child``."""
    m = np.asarray(matrix, dtype=np.float64)
    q = matrix_to_quat(orthonormalize(m[:3, :3]))
    t = m[:3, 3]
    v = _T["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2]))
    r = _T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return _T[TRANSFORM_STAMPED](
        header=header(ns, parent), child_frame_id=child, transform=_T["geometry_msgs/msg/Transform"](translation=v, rotation=r)
    )


def transform_to_matrix(tf: Any) -> np.ndarray:
    """4x4 float64 ``T_parent_child`` of a (rosbags or rclpy) geometry_msgs/Transform(Stamped)."""
    tr = getattr(tf, "transform", tf)
    q = np.array([tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w], dtype=np.float64)
    if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise MessageDecodeError(f"Transform: rotation {tuple(q)} is not a unit quaternion")
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(q)
    m[:3, 3] = (tr.translation.x, tr.translation.y, tr.translation.z)
    return m


def tf_message(transforms: Sequence[Any]) -> Any:
    """tf2_msgs/TFMessage holding the given TransformStamped messages."""
    return _T[TF_MESSAGE](transforms=list(transforms))


def clock_message(ns: int) -> Any:
    return _T[CLOCK](clock=stamp(ns))


_IMAGE_DTYPES: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "8UC1": ("u1", 1), "8UC3": ("u1", 3), "mono16": ("u2", 1), "16UC1": ("u2", 1), "32FC1": ("f4", 1),
}


def image_message(pixels: np.ndarray, encoding: str, ns: int, frame_id: str) -> Any:
    """sensor_msgs/Image (little endian, no row padding) from (H, W) or (H, W, C) pixels of ``encoding``."""
    if encoding not in _IMAGE_DTYPES:
        raise MessageEncodeError(f"Image: unsupported encoding {encoding!r}")
    code, channels = _IMAGE_DTYPES[encoding]
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels or arr.dtype.str[1:] != code:
        raise MessageEncodeError(
            f"Image: {encoding} needs {channels} channel(s) of {np.dtype(code)}, got {arr.dtype} {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype="<" + code)
    h, w = arr.shape[:2]
    return _T[IMAGE](
        header=header(ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=w * channels * arr.dtype.itemsize, data=arr.reshape(-1).view(np.uint8),
    )


def image_to_array(msg: Any, what: str = "Image") -> np.ndarray:
    """(H, W) or (H, W, C) pixels of a sensor_msgs/Image, honouring ``step`` and ``is_bigendian``.

    Channel order is the message's own (``rgb8`` gives RGB).  A copy, writable.
    """
    enc = str(msg.encoding)
    if enc not in _IMAGE_DTYPES:
        raise MessageDecodeError(f"{what}: unsupported encoding {enc!r}")
    code, channels = _IMAGE_DTYPES[enc]
    dtype = np.dtype((">" if msg.is_bigendian else "<") + code)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels * dtype.itemsize
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if step < row or (h and data.size < (h - 1) * step + row):
        raise MessageDecodeError(f"{what}: {data.size} bytes cannot hold {w}x{h} {enc} with step {step}")
    if h == 0 or w == 0:
        return np.zeros((h, w) if channels == 1 else (h, w, channels), dtype=dtype.newbyteorder("="))
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, row), strides=(step, 1))
    arr = np.ascontiguousarray(rows).view(dtype).reshape(h, w, channels).astype(dtype.newbyteorder("="))
    return arr[:, :, 0] if channels == 1 else arr


def depth_to_metres(msg: Any, what: str = "depth Image") -> np.ndarray:
    """(H, W) float32 metres of a 16UC1/mono16 (mm) or 32FC1 (m) depth image; 0 = invalid."""
    enc = str(msg.encoding)
    if enc not in ("16UC1", "mono16", "32FC1"):
        raise MessageDecodeError(f"{what}: depth encoding must be 16UC1 (mm) or 32FC1 (m), got {enc!r}")
    raw = image_to_array(msg, what)
    if enc == "32FC1":
        depth = raw.astype(np.float32)
        depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
        return depth
    return raw.astype(np.float32) * np.float32(0.001)


def camera_info_message(K: np.ndarray, wh: tuple[int, int], ns: int, frame_id: str) -> Any:
    """sensor_msgs/CameraInfo of an undistorted pinhole camera (plumb_bob, zero distortion)."""
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _T[CAMERA_INFO](
        header=header(ns, frame_id), height=int(wh[1]), width=int(wh[0]), distortion_model="plumb_bob",
        d=np.zeros(5), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1),
        binning_x=0, binning_y=0, roi=roi,
    )


def camera_info_to_K(msg: Any, what: str = "CameraInfo") -> np.ndarray:
    """(3, 3) float64 intrinsics of a CameraInfo; MessageDecodeError when K is unusable."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9 or not np.isfinite(k).all():
        raise MessageDecodeError(f"{what}: K must be 9 finite numbers")
    K = k.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MessageDecodeError(f"{what}: K has non-positive focal lengths (uncalibrated camera?)")
    return K


# ----------------------------------------------------------------------------- point clouds

# PointField datatype <-> numpy type code.
_FIELD_CODES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_CODE_FIELDS = {v: k for k, v in _FIELD_CODES.items()}

#: /points of a converted scene: x, y, z and the mesh colour packed 0x00RRGGBB in a float32.
XYZRGB_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                         "itemsize": 16})
#: The node's labelled cloud (docs/design.md §3.7; the same layout as safnet_ros.ros.codecs.LABELED_CLOUD_DTYPE).
LABELED_CLOUD_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "label", "confidence", "similarity"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4", "<f4"],
    "offsets": [0, 4, 8, 12, 16, 20, 24],
    "itemsize": 28,
})


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are ``0x00RRGGBB`` (PCL / RViz ``rgb``)."""
    c = np.asarray(colors, dtype=np.uint8).astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,) packed float32 ``rgb`` -> (N, 3) uint8."""
    bits = np.asarray(rgb).astype("<f4").view("<u4")
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(np.uint8)


def pointcloud_message(points: np.ndarray, ns: int, frame_id: str) -> Any:
    """sensor_msgs/PointCloud2 (``height == 1``) from a little-endian structured array, one copy."""
    points = np.ascontiguousarray(points)
    dtype = points.dtype
    fields = []
    for name in dtype.names or ():
        dt, offset = dtype.fields[name][:2]
        code = _CODE_FIELDS.get(dt.str[1:]) if dt.shape == () else None
        if code is None or dt.byteorder == ">":
            raise MessageEncodeError(f"PointCloud2: field {name!r} has dtype {dt}, not a little-endian scalar")
        fields.append(_T["sensor_msgs/msg/PointField"](name=name, offset=offset, datatype=code, count=1))
    n = int(points.shape[0])
    return _T[POINTCLOUD2](
        header=header(ns, frame_id), height=1, width=n, fields=fields, is_bigendian=False,
        point_step=dtype.itemsize, row_step=dtype.itemsize * n,
        data=points.view(np.uint8).reshape(-1) if n else np.zeros(0, np.uint8), is_dense=True,
    )


def pointcloud_to_array(msg: Any, what: str = "PointCloud2") -> np.ndarray:
    """(height*width,) structured array over a PointCloud2 (a copy), fields and offsets as the message's."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    step = int(msg.point_step)
    for f in msg.fields:
        code = _FIELD_CODES.get(int(f.datatype))
        if code is None or int(f.count) != 1:
            raise MessageDecodeError(f"{what}: field {f.name!r} has datatype {f.datatype} count {f.count}")
        if int(f.offset) + np.dtype(code).itemsize > step:
            raise MessageDecodeError(f"{what}: field {f.name!r} ends past point_step {step}")
        names.append(str(f.name))
        formats.append(order + code)
        offsets.append(int(f.offset))
    if len(set(names)) != len(names):
        raise MessageDecodeError(f"{what}: duplicate field names {names}")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": max(step, 1)})
    h, w, row_step = int(msg.height), int(msg.width), int(msg.row_step)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if h * w == 0:
        return np.zeros(0, dtype=dtype)
    if row_step < w * step or data.size < (h - 1) * row_step + w * step:
        raise MessageDecodeError(f"{what}: {data.size} bytes cannot hold {w}x{h} points of {step} bytes "
                                 f"(row_step {row_step})")
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, w * step), strides=(row_step, 1))
    return np.ascontiguousarray(rows).reshape(-1).view(dtype)


def pointcloud_to_xyz(msg: Any, what: str = "PointCloud2") -> np.ndarray:
    """(N, 3) float32 finite coordinates of a PointCloud2 (non-finite points dropped)."""
    arr = pointcloud_to_array(msg, what)
    missing = [c for c in "xyz" if c not in (arr.dtype.names or ())]
    if missing:
        raise MessageDecodeError(f"{what}: no {'/'.join(missing)} field")
    xyz = np.stack([arr[c].astype(np.float32) for c in "xyz"], axis=1)
    return xyz[np.isfinite(xyz).all(axis=1)]


def labeled_cloud_array(xyz: np.ndarray, labels: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                        similarity: np.ndarray) -> np.ndarray:
    """(N,) :data:`LABELED_CLOUD_DTYPE` array: xyz (N,3) m, labels (N,) 0..65535, colors (N,3) uint8,
    confidence and similarity (N,) float."""
    n = int(np.asarray(xyz).shape[0])
    out = np.zeros(n, dtype=LABELED_CLOUD_DTYPE)
    xyz = np.asarray(xyz, dtype=np.float32)
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out["rgb"] = pack_rgb(colors)
    out["label"] = np.asarray(labels).astype(np.uint16)
    out["confidence"] = np.asarray(confidence, dtype=np.float32)
    out["similarity"] = np.asarray(similarity, dtype=np.float32)
    return out


# ----------------------------------------------------------------------------- markers


def _marker(stamp_ns: int, frame_id: str, **fields: Any) -> Any:
    """A visualization_msgs/Marker with every field set (rosbags dataclasses have no defaults)."""
    P = _T["geometry_msgs/msg/Point"]
    C = _T["std_msgs/msg/ColorRGBA"]
    M = _T["visualization_msgs/msg/Marker"]
    base = dict(
        header=header(stamp_ns, frame_id), ns="", id=0, type=M.POINTS, action=M.ADD,
        pose=_T["geometry_msgs/msg/Pose"](position=P(x=0.0, y=0.0, z=0.0),
                                          orientation=_T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        scale=_T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0), color=C(r=0.0, g=0.0, b=0.0, a=0.0),
        lifetime=_T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0), frame_locked=False,
        points=[], colors=[], texture_resource="",
        texture=_T["sensor_msgs/msg/CompressedImage"](header=header(0, ""), format="", data=np.zeros(0, np.uint8)),
        uv_coordinates=[], text="", mesh_resource="",
        mesh_file=_T["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
        mesh_use_embedded_materials=False,
    )
    base.update(fields)
    return M(**base)


def _points(xyz: np.ndarray) -> list[Any]:
    P = _T["geometry_msgs/msg/Point"]
    return [P(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def similarity_markers(stamp_ns: int, frame_id: str, points: np.ndarray, similarity: np.ndarray, source: str = "s",
                       stride: int = 4, max_points: int = 20000, point_size: float = 0.02,
                       views: Sequence[Any] = (), frustum_depth: float = 0.4) -> Any:
    """visualization_msgs/MarkerArray laid out as the node's (safnet_ros.ros.markers.similarity_markers).

    DELETEALL; ``similarity``/0: POINTS of every ``stride``-th point with a
    finite similarity (at most ``max_points``), coloured blue -> red over the
    source's fixed range; ``frustums``/i: a LINE_LIST pyramid per view used.
    points (N, 3) metres in ``frame_id``; similarity (N,) (NaN = not
    segmented); views: objects with K, camera_to_world, wh (PosedView).
    Builds one Python object per marker point, hence the stride and cap.
    """
    from safnet_ros.ros.markers import SIMILARITY_RANGES, frustum_lines, ramp_colors

    if source not in SIMILARITY_RANGES:
        raise ConfigError(f"similarity source must be one of {sorted(SIMILARITY_RANGES)}, got {source!r}")
    M = _T["visualization_msgs/msg/Marker"]
    C = _T["std_msgs/msg/ColorRGBA"]
    V = _T["geometry_msgs/msg/Vector3"]
    sim = np.asarray(similarity, dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(sim))[:: max(1, int(stride))]
    if len(keep) > max_points:
        keep = keep[np.linspace(0, len(keep) - 1, max_points).astype(np.int64)]
    lo, hi = SIMILARITY_RANGES[source]
    colors = [C(r=r, g=g, b=b, a=1.0) for r, g, b in ramp_colors(sim[keep], lo, hi).astype(np.float64).tolist()]
    markers = [
        _marker(stamp_ns, frame_id, action=M.DELETEALL),
        _marker(stamp_ns, frame_id, ns="similarity", id=0, type=M.POINTS, scale=V(x=point_size, y=point_size, z=0.0),
                color=C(r=0.0, g=0.0, b=0.0, a=1.0), points=_points(np.asarray(points)[keep]), colors=colors),
    ]
    for i, view in enumerate(views):
        markers.append(_marker(
            stamp_ns, frame_id, ns="frustums", id=i, type=M.LINE_LIST, scale=V(x=0.01, y=0.0, z=0.0),
            color=C(r=1.0, g=0.6, b=0.0, a=1.0),
            points=_points(frustum_lines(view.K, view.camera_to_world, view.wh, frustum_depth)),
        ))
    return _T[MARKER_ARRAY](markers=markers)


def bag_storage_plugin(storage: str) -> Any:
    """rosbags StoragePlugin for ``"mcap"`` or ``"sqlite3"``."""
    from rosbags.rosbag2 import StoragePlugin

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ConfigError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
    return plugins[storage]


#: Errors rosbags raises from its own parsing of a malformed bag (metadata fields of the wrong
#: type, an mcap index with absurd offsets) besides its ReaderError.
_BAG_PARSE_ERRORS: tuple[type[BaseException], ...] = (OverflowError, KeyError, TypeError, ValueError, IndexError)


@contextlib.contextmanager
def bag_reader(path: str | os.PathLike) -> Iterator[Any]:
    """An opened rosbags ``Reader`` of ``path``; a broken bag (truncated, empty or garbage
    mcap/db3, a metadata.yaml that is not YAML or not UTF-8) is one DataFormatError naming
    it. Only the opening is guarded here: read messages through :func:`bag_messages`."""
    from rosbags.rosbag2 import Reader

    from safnet_ros.io_boundary import reading

    with reading(path, "rosbag2 bag", *_BAG_PARSE_ERRORS):
        reader = Reader(path)
        reader.open()
    try:
        yield reader
    finally:
        reader.close()


def bag_messages(reader: Any, path: str | os.PathLike, connections: Sequence[Any] = ()) -> Iterator[tuple]:
    """``reader.messages(connections=...)`` with the reader's errors on a damaged bag (a chunk
    that does not decompress, a truncated file) turned into one DataFormatError naming ``path``.
    Errors raised by the caller's loop body are not touched."""
    from safnet_ros.io_boundary import as_data_error, reader_errors

    errors = (OSError,) + reader_errors(*_BAG_PARSE_ERRORS)  # built once: this loop is per message
    try:
        it = iter(reader.messages(connections=connections))
    except errors as exc:
        raise as_data_error(path, "rosbag2 bag", exc) from exc
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except errors as exc:
            raise as_data_error(path, "rosbag2 bag", exc) from exc
        yield item


def require_bag(path: str | os.PathLike) -> Path:
    """``path`` when it is a rosbag2 folder; MissingDataError when absent, DataFormatError naming
    what it is instead (a regular file, a FIFO) or when its metadata.yaml is not a regular file."""
    from safnet_ros.validation import require_dir, require_file

    p = require_dir(path, "rosbag2 folder (with metadata.yaml)")
    require_file(p / "metadata.yaml", "rosbag2 metadata.yaml")
    return p


def is_bag(path: str | os.PathLike) -> bool:
    """True when ``path`` is a rosbag2 folder (has metadata.yaml)."""
    return os.path.isfile(os.path.join(os.fspath(path), "metadata.yaml"))


def bag_custom_data(path: str | os.PathLike) -> dict[str, str]:
    """The ``custom_data`` of a rosbag2's metadata.yaml (empty when none), e.g. ``safnet.axis_alignment``."""
    from safnet_ros.errors import DataFormatError
    from safnet_ros.io_boundary import load_yaml

    meta_path = os.path.join(os.fspath(path), "metadata.yaml")
    meta = load_yaml(meta_path, "rosbag2 metadata.yaml") or {}
    info = meta.get("rosbag2_bagfile_information", {}) if isinstance(meta, dict) else None
    custom = info.get("custom_data") if isinstance(info, dict) else None
    if info is None or not isinstance(custom or {}, dict):
        raise DataFormatError(meta_path, "not a rosbag2 metadata.yaml (no rosbag2_bagfile_information mapping)")
    return {str(k): str(v) for k, v in (custom or {}).items()}


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path; ConfigError when it exists and ``overwrite`` is False (checked before any work)."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"{out} exists already; pass --overwrite to replace it")
    return out


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree (no error when absent)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a path to write a bag into; on success it is renamed to ``out``.

    The bag is written as ``.NAME.partial-PID/NAME`` beside ``out`` (same name,
    so rosbag2's storage file is named as a finished bag's would be; hidden
    staging folder, same file system for the rename).  On any exception (or
    Ctrl-C) the staging folder is deleted and ``out`` is left untouched; a
    killed process leaves only the hidden staging folder, never a
    complete-looking bag at ``out``.
    """
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    remove_path(staging)
    staging.mkdir()
    try:
        yield staging / out.name
        if out.exists() or out.is_symlink():
            check_output(out, overwrite)
            remove_path(out)
        os.replace(staging / out.name, out)
    finally:
        remove_path(staging)


def bag_size(path: str | os.PathLike) -> int:
    """Bytes of every file under a bag folder."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
