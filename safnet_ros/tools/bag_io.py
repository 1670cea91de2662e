"""rosbag2 files with rosbags: open, read, write, serialise, and what is bag-specific (topics, QoS, staging).

Messages are rosbags' dataclasses from one typestore (:data:`TYPESTORE`, ROS 2
Kilted definitions, which match the ROS message wheels byte for byte), decoded
with the node's duck-typed codecs (:mod:`safnet_ros.ros.codecs`); the node's
messages are written through :func:`to_bag_message`.  No rclpy import.  Stamps
are int nanoseconds; transforms are 4x4 float64 ``T_parent_child`` (child-frame
points into the parent frame); images and clouds are little endian, without
row padding, clouds ``height == 1`` (layouts: docs/bags.md).
"""
from __future__ import annotations

import array
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin
from rosbags.typesys import Stores, get_typestore

from safnet_ros.errors import ConfigError, DataFormatError, MessageDecodeError
from safnet_ros.io_boundary import as_data_error, load_yaml, reader_errors, reading
from safnet_ros.ros.codecs import array_to_image, make_header, pointcloud2_to_array, structured_to_pointcloud2
from safnet_ros.ros.codecs import pack_rgb as pack_rgb  # bag_convert packs /points colours with it
from safnet_ros.ros.transforms import matrix_to_transform
from safnet_ros.validation import require_dir, require_file

#: One typestore for every bag we write and read (ROS 2 Kilted, the wheels' distribution).
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
#: metadata.yaml version of the bags we write. 8, not rosbags' latest 9: version 9 stores each
#: topic's ``offered_qos_profiles`` as a YAML list, which Humble's rosbag2 (metadata version 5) reads
#: as a string and fails on ("Exception on parsing info file"); Jazzy and later read version 8 as
#: well (rosbag2_storage yaml.hpp / qos.cpp detect the integer QoS enums).
BAG_VERSION = 8

# Message type names (rosbags / rosbag2 spelling).
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"

# Default topics and frames of a converted scene.
COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/depth/image_rect_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
POINTS_TOPIC = "/points"
#: segment-bag's outputs: the node's topics under its default name (config/safnet.rviz shows them).
LABELED_CLOUD_TOPIC = "/safnet_segment/labeled_cloud"
MARKERS_TOPIC = "/safnet_segment/similarity_markers"
MAP_FRAME = "map"
CAMERA_LINK_FRAME = "camera_link"
OPTICAL_FRAME = "camera_color_optical_frame"
#: The second camera of ``safnet bag convert --second-camera``: its topics and frames.
CAMERA2_COLOR_TOPIC = "/camera2/color/image_raw"
CAMERA2_DEPTH_TOPIC = "/camera2/depth/image_rect_raw"
CAMERA2_INFO_TOPIC = "/camera2/color/camera_info"
CAMERA2_LINK_FRAME = "camera2_link"
CAMERA2_OPTICAL_FRAME = "camera2_color_optical_frame"

#: T_camera_link_optical of REP-103: optical z forward = link x, optical x right = -link y,
#: optical y down = -link z.
LINK_TO_OPTICAL = np.array(
    [[0.0, 0.0, 1.0, 0.0],
     [-1.0, 0.0, 0.0, 0.0],
     [0.0, -1.0, 0.0, 0.0],
     [0.0, 0.0, 0.0, 1.0]]
)

_INFINITE = QosTime(sec=2147483647, nsec=4294967295)


def make_qos(depth: int, *, transient_local: bool = False) -> Qos:
    """An offered QoS profile for a bag connection (reliable, keep last ``depth``)."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
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
    """True when every offered profile of a connection is transient local (a latched topic), as
    ``ros2 bag play`` decides: publishers with mixed durabilities are played volatile (rosbag2_storage
    qos.cpp, ``adapt_offer_to_recorded_offers``)."""
    return bool(profiles) and all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)


# ----------------------------------------------------------------------------- small types

_T = TYPESTORE.types


def header(ns: int, frame_id: str) -> Any:
    """std_msgs/Header stamped at int nanoseconds ``ns`` (>= 0)."""
    return to_bag_message(make_header(frame_id=frame_id, stamp=int(ns)))


def serialize(msg: Any) -> bytes:
    """CDR bytes of a rosbags message (the bytes rosbag2 stores and rclpy deserialises)."""
    return bytes(TYPESTORE.serialize_cdr(msg, msg.__msgtype__))


def serialize_message(msg: Any) -> bytes:
    """CDR bytes of a message of the ROS wheels' classes (what rclpy's ``serialize_message`` gives,
    without rclpy): :func:`to_bag_message`, then :func:`serialize`."""
    return serialize(to_bag_message(msg))


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


# ----------------------------------------------------------------------------- builders (rosbags messages)


def to_bag_message(msg: Any) -> Any:
    """The rosbags dataclass of a ROS wheels' message (same fields, converted recursively), to write into a bag.

    Lets ``segment-bag`` write exactly what the node publishes.  Primitive
    sequences become numpy arrays, as rosbags holds them.
    """
    cls = type(msg)
    fields = {}
    for name in cls.get_fields_and_field_types():
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            value = to_bag_message(value)
        elif isinstance(value, list) and value and hasattr(value[0], "get_fields_and_field_types"):
            value = [to_bag_message(v) for v in value]
        elif isinstance(value, array.array):
            value = np.frombuffer(value, dtype=np.dtype(value.typecode))
        fields[name] = value
    return _T[f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"](**fields)


def transform_stamped(matrix: np.ndarray, parent: str, child: str, ns: int) -> Any:
    """geometry_msgs/TransformStamped of a 4x4 ``T_parent_child`` (its rotation orthonormalised first)."""
    m = np.array(matrix, dtype=np.float64)
    m[:3, :3] = orthonormalize(m[:3, :3])
    return to_bag_message(matrix_to_transform(m, parent, child, stamp=int(ns)))


def tf_message(transforms: Sequence[Any]) -> Any:
    """tf2_msgs/TFMessage holding the given TransformStamped messages."""
    return _T[TF_MESSAGE](transforms=list(transforms))


def image_message(pixels: np.ndarray, encoding: str, ns: int, frame_id: str) -> Any:
    """sensor_msgs/Image (little endian, no row padding) from (H, W) or (H, W, C) pixels of ``encoding``."""
    return to_bag_message(array_to_image(pixels, encoding, frame_id=frame_id, stamp=int(ns)))


def compressed_image_message(fmt: str, data: bytes, ns: int, frame_id: str) -> Any:
    """sensor_msgs/CompressedImage with ``format`` and ``data`` as given (see safnet_ros/ros/compressed.py)."""
    return _T[COMPRESSED_IMAGE](header=header(ns, frame_id), format=str(fmt),
                                data=np.frombuffer(bytes(data), dtype=np.uint8))


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


#: /points of a converted scene: x, y, z and the mesh colour packed 0x00RRGGBB in a float32.
XYZRGB_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                         "itemsize": 16})


def pointcloud_message(points: np.ndarray, ns: int, frame_id: str) -> Any:
    """sensor_msgs/PointCloud2 (``height == 1``) from a little-endian structured array."""
    return to_bag_message(structured_to_pointcloud2(points, frame_id=frame_id, stamp=int(ns)))


def pointcloud_to_array(msg: Any) -> np.ndarray:
    """(height*width,) structured array of a PointCloud2 (a writable copy; :func:`codecs.pointcloud2_to_array`)."""
    return np.array(pointcloud2_to_array(msg))


def bag_storage_plugin(storage: str) -> Any:
    """rosbags StoragePlugin for ``"mcap"`` or ``"sqlite3"``."""
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
    p = require_dir(path, "rosbag2 folder (with metadata.yaml)")
    require_file(p / "metadata.yaml", "rosbag2 metadata.yaml")
    return p


def bag_custom_data(path: str | os.PathLike) -> dict[str, str]:
    """The ``custom_data`` of a rosbag2's metadata.yaml (empty when none), e.g. ``safnet.axis_alignment``."""
    meta_path = os.path.join(os.fspath(path), "metadata.yaml")
    meta = load_yaml(meta_path, "rosbag2 metadata.yaml") or {}
    info = meta.get("rosbag2_bagfile_information", {}) if isinstance(meta, dict) else None
    custom = info.get("custom_data") if isinstance(info, dict) else None
    if info is None or not isinstance(custom or {}, dict):
        raise DataFormatError(meta_path, "not a rosbag2 metadata.yaml (no rosbag2_bagfile_information mapping)")
    return {str(k): str(v) for k, v in (custom or {}).items()}


def bag_size(path: str | os.PathLike) -> int:
    """Bytes of every file under a bag folder."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
