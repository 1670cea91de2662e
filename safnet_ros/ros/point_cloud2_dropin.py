"""Drop-in for ``sensor_msgs_py.point_cloud2`` (read_points*, create_cloud*) on :mod:`safnet_ros.ros.codecs`."""
from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from safnet_ros.errors import MessageDecodeError
from safnet_ros.ros import codecs


def _pc2_read_points(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    """Structured array of the cloud's points (selected fields), like sensor_msgs_py ``read_points``."""
    points = codecs.pointcloud2_to_array(cloud)
    names = points.dtype.names or ()
    if field_names is not None:
        missing = [n for n in field_names if n not in names]
        if missing:
            raise MessageDecodeError(f"PointCloud2: no field(s) {missing} (fields: {list(names)})")
        points = points[list(field_names)]
        names = tuple(field_names)
    if uvs is not None:
        uv = np.asarray(list(uvs), dtype=np.int64).reshape(-1, 2)
        width, height = int(cloud.width), int(cloud.height)
        if uv.size and ((uv[:, 0] < 0) | (uv[:, 0] >= width) | (uv[:, 1] < 0) | (uv[:, 1] >= height)).any():
            raise MessageDecodeError(f"PointCloud2: uvs outside the {width}x{height} cloud")
        points = points[uv[:, 1] * width + uv[:, 0]]
    if skip_nans:
        keep = np.ones(points.shape[0], dtype=bool)
        for name in names:
            col = points[name]
            if col.dtype.kind == "f":
                keep &= ~np.isnan(col.reshape(col.shape[0], -1)).any(axis=1)
        points = points[keep]
    elif reshape_organized_cloud and int(cloud.height) > 1 and uvs is None:
        points = points.reshape(int(cloud.height), int(cloud.width))
    return points


def _pc2_read_points_numpy(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    """(N, k) array of the selected fields, which must share one datatype."""
    points = _pc2_read_points(cloud, field_names, skip_nans, uvs, reshape_organized_cloud)
    types_ = {points.dtype.fields[n][0].base.newbyteorder("=") for n in points.dtype.names or ()}
    if len(types_) != 1:
        raise MessageDecodeError(f"PointCloud2: read_points_numpy needs fields of one datatype, got {types_}")
    base = types_.pop()
    cols = [points[n].astype(base).reshape(points.shape + (-1,)) for n in points.dtype.names]
    return np.concatenate(cols, axis=-1)


def _pc2_read_points_list(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
) -> list[Any]:
    """List of namedtuples (slow; for small clouds and tests only)."""
    from collections import namedtuple

    points = _pc2_read_points(cloud, field_names, skip_nans, uvs)
    point = namedtuple("Point", points.dtype.names or ())
    return [point._make(p) for p in points.tolist()]


def _pc2_dtype_from_fields(fields: Sequence[PointField], point_step: int | None = None) -> np.dtype:
    """Little-endian structured dtype of ``fields`` (itemsize ``point_step`` or the end of the last field)."""
    if point_step is None:
        ends = [
            int(f.offset) + np.dtype(codecs.POINTFIELD_DTYPES.get(int(f.datatype), "u1")).itemsize * max(int(f.count), 1)
            for f in fields
        ]
        point_step = max(ends, default=0)
    return codecs.pointcloud_dtype(fields, point_step, False)


def _pc2_create_cloud(header: Header, fields: Sequence[PointField], points: Any) -> PointCloud2:
    """PointCloud2 (little endian, height 1) with ``fields`` from rows, a structured or an (N, k) array."""
    dtype = _pc2_dtype_from_fields(fields)
    if isinstance(points, np.ndarray) and points.dtype.names is not None:
        data = np.zeros(points.shape[0], dtype=dtype)
        for name in dtype.names or ():
            data[name] = points[name]
    elif isinstance(points, np.ndarray):
        from numpy.lib import recfunctions

        data = recfunctions.unstructured_to_structured(np.asarray(points).reshape(len(points), -1), dtype=dtype)
    else:
        data = np.array([tuple(p) for p in points], dtype=dtype)
    msg = PointCloud2()
    msg.header = codecs.make_header(header)
    msg.height = 1
    msg.width = int(data.shape[0])
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields]
    msg.is_bigendian = False
    msg.point_step = int(dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = False
    msg.data = codecs._to_byte_array(data)
    return msg


def _pc2_create_cloud_xyz32(header: Header, points: Any) -> PointCloud2:
    """PointCloud2 with float32 x, y, z (12 bytes a point)."""
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return _pc2_create_cloud(header, fields, np.asarray(points, dtype=np.float32).reshape(-1, 3))


fallback_point_cloud2 = types.SimpleNamespace(
    read_points=_pc2_read_points,
    read_points_numpy=_pc2_read_points_numpy,
    read_points_list=_pc2_read_points_list,
    create_cloud=_pc2_create_cloud,
    create_cloud_xyz32=_pc2_create_cloud_xyz32,
    dtype_from_fields=_pc2_dtype_from_fields,
)
