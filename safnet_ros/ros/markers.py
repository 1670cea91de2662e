"""RViz markers for the node: similarity-coloured points and camera frustums (docs/ros_node.md, "Markers").

``similarity_markers(...)`` returns one MarkerArray: ``DELETEALL``, a POINTS marker (namespace
``similarity``) of every ``stride``-th segmented point coloured over a fixed range per source
(:data:`SIMILARITY_RANGES`, so colours mean the same from cloud to cloud), and a LINE_LIST frustum per
view (namespace ``frustums``). A Marker holds one Python object per point, so
``similarity_markers_cdr(...)`` writes the points and colours as arrays into the CDR bytes of a
one-point template instead: byte for byte what serialising ``similarity_markers(...)`` gives (tested).
"""
from __future__ import annotations

import struct
from typing import Any, Callable, Optional, Sequence

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

#: Colour range per similarity source: values are clipped to [lo, hi] then ramped.
#: S_con is a cosine in [-1, 1]; S_geo starts near 1 for well-matched points
#: (a3 * exp(.) + a4 * exp(.), initial a3 = 1, a4 = 0.1); S = S_geo * S_con.
SIMILARITY_RANGES: dict[str, tuple[float, float]] = {
    "s": (-1.0, 1.1),
    "s_geo": (0.0, 1.1),
    "s_con": (-1.0, 1.0),
}

_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array(
    [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
)


def ramp_colors(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(N,) values -> (N, 3) float32 RGB in 0..1: blue at ``lo``, red at ``hi`` (clipped)."""
    t = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)
    return np.stack([np.interp(t, _RAMP_STOPS, _RAMP_RGB[:, c]) for c in range(3)], axis=1).astype(np.float32)


def frustum_lines(K: np.ndarray, camera_to_world: np.ndarray, wh: tuple[int, int], depth: float) -> np.ndarray:
    """(16, 3) float64 world points: 8 segments (4 edges from the centre, 4 of the far rectangle).

    K (3, 3) intrinsics for an image of size ``wh`` (width, height) pixels;
    camera_to_world (4, 4) optical-frame pose; depth: metres along z.
    """
    w, h = wh
    corners_px = np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])
    K = np.asarray(K, dtype=np.float64)
    x = (corners_px[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (corners_px[:, 1] - K[1, 2]) / K[1, 1] * depth
    corners_cam = np.stack([x, y, np.full(4, depth)], axis=1)
    T = np.asarray(camera_to_world, dtype=np.float64)
    corners = corners_cam @ T[:3, :3].T + T[:3, 3]
    edges = np.stack([np.broadcast_to(T[:3, 3], (4, 3)), corners], axis=1)  # centre -> each corner
    rim = np.stack([corners, np.roll(corners, -1, axis=0)], axis=1)  # corner i -> corner i + 1
    return np.concatenate([edges, rim]).reshape(16, 3)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def _colors(rgb: np.ndarray, alpha: float = 1.0) -> list[ColorRGBA]:
    return [ColorRGBA(r=r, g=g, b=b, a=alpha) for r, g, b in np.asarray(rgb, dtype=np.float64).tolist()]


def _marker_points(points: np.ndarray, similarity: np.ndarray, source: str, stride: int, max_points: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The POINTS marker's contents: (xyz (M, 3) float64 metres, rgb (M, 3) float32 0..1) of every
    ``stride``-th point with a finite ``similarity`` (at most ``max_points``, evenly thinned)."""
    if source not in SIMILARITY_RANGES:
        raise ValueError(f"similarity source must be one of {sorted(SIMILARITY_RANGES)}, got {source!r}")
    sim = np.asarray(similarity, dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(sim))[:: max(1, int(stride))]
    if len(keep) > max_points:
        keep = keep[np.linspace(0, len(keep) - 1, max_points).astype(np.int64)]
    lo, hi = SIMILARITY_RANGES[source]
    return np.asarray(points, dtype=np.float64)[keep], ramp_colors(sim[keep], lo, hi)


def _marker_array(header: Header, xyz: np.ndarray, rgb: np.ndarray, point_size: float, views: Sequence[Any],
                  frustum_depth: float) -> MarkerArray:
    """DELETEALL, the POINTS marker of ``xyz`` coloured ``rgb``, one frustum per view (module docstring)."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    # (a Marker's pose is the identity by default: geometry_msgs/Quaternion's w defaults to 1)
    pts = Marker(header=header, ns="similarity", id=0, type=Marker.POINTS, action=Marker.ADD)
    pts.scale.x = pts.scale.y = float(point_size)
    pts.color.a = 1.0
    pts.points = _points(xyz)
    pts.colors = _colors(rgb)
    out.markers.append(pts)
    for i, view in enumerate(views):
        m = Marker(header=header, ns="frustums", id=i, type=Marker.LINE_LIST, action=Marker.ADD,
                   color=ColorRGBA(r=1.0, g=0.6, b=0.0, a=1.0))
        m.scale.x = 0.01
        m.points = _points(frustum_lines(view.K, view.camera_to_world, view.wh, frustum_depth))
        out.markers.append(m)
    return out


def similarity_markers(header: Header, points: np.ndarray, similarity: np.ndarray, source: str = "s", stride: int = 4,
                       max_points: int = 20000, point_size: float = 0.02, views: Sequence[Any] = (),
                       frustum_depth: float = 0.4) -> MarkerArray:
    """The MarkerArray described in the module docstring.

    header: frame and stamp for every marker (``points`` and the views' poses
    must be in that frame); points (N, 3) metres; similarity (N,) values of
    ``source`` (NaN = not segmented); views: objects with ``K``,
    ``camera_to_world`` and ``wh`` (e.g. PosedView).
    """
    xyz, rgb = _marker_points(points, similarity, source, stride, max_points)
    return _marker_array(header, xyz, rgb, point_size, views, frustum_depth)


#: The template's one point and colour: values no real marker holds, found in its CDR bytes.
_SENTINEL_XYZ = np.array([[1.2345678901234567e-300, -2.718281828459045e-299, 3.141592653589793e-298]])
_SENTINEL_RGB = np.array([[1.17549435e-38 * 3, -1.17549435e-38 * 5, 1.17549435e-38 * 7]], dtype=np.float32)
_CDR_LE = b"\x00\x01"  # the encapsulation header of little-endian CDR


def similarity_markers_cdr(serialize: Callable[[Any], bytes], header: Header, points: np.ndarray,
                           similarity: np.ndarray, source: str = "s", stride: int = 4, max_points: int = 20000,
                           point_size: float = 0.02, views: Sequence[Any] = (), frustum_depth: float = 0.4) -> bytes:
    """:func:`similarity_markers` serialised, for ``Publisher.publish(bytes)``; ``serialize`` is
    ``rclpy.serialization.serialize_message`` (passed in: this module needs no rclpy).

    A template with one sentinel point and colour is serialised, and the points' and colours' sequences
    are written in its place as arrays (length, then float64 x y z per point; length, then float32
    r g b a per colour). Each point and colour adds 24 + 16 bytes, a multiple of CDR's largest
    alignment (8), so every later field keeps its alignment. Falls back to serialising the message
    when the template is not little-endian CDR or holds no point.
    """
    xyz, rgb = _marker_points(points, similarity, source, stride, max_points)
    if len(xyz):
        spliced = _splice_points(serialize(_marker_array(header, _SENTINEL_XYZ, _SENTINEL_RGB, point_size, views,
                                                         frustum_depth)), xyz, rgb)
        if spliced is not None:
            return spliced
    return serialize(_marker_array(header, xyz, rgb, point_size, views, frustum_depth))


def _splice_points(template: bytes, xyz: np.ndarray, rgb: np.ndarray) -> Optional[bytes]:
    """``template`` (a MarkerArray's CDR with the sentinel point and colour) with the points' and colours'
    sequences replaced by ``xyz (M, 3)`` and ``rgb (M, 3)``; None when the template is not little-endian
    CDR or the sentinels are not where a one-element sequence puts them."""
    at_xyz = template.find(_SENTINEL_XYZ.astype("<f8").tobytes())
    rgba_one = np.concatenate([_SENTINEL_RGB, np.ones((1, 1), np.float32)], axis=1)
    at_rgb = template.find(rgba_one.astype("<f4").tobytes())
    one = struct.pack("<I", 1)
    # the points' length sits just before them, or 4 bytes of padding earlier (float64 alignment)
    len_xyz = at_xyz - 4 if template[at_xyz - 4:at_xyz] == one else at_xyz - 8
    len_rgb = at_rgb - 4
    if (template[:2] != _CDR_LE or at_xyz < 8 or at_rgb < at_xyz + 24 or template[len_xyz:len_xyz + 4] != one
            or template[len_rgb:at_rgb] != one):
        return None
    count = struct.pack("<I", len(xyz))
    rgba = np.concatenate([rgb, np.ones((len(rgb), 1), np.float32)], axis=1)
    return b"".join((template[:len_xyz], count, template[len_xyz + 4:at_xyz], xyz.astype("<f8").tobytes(),
                     template[at_xyz + 24:len_rgb], count, rgba.astype("<f4").tobytes(), template[at_rgb + 16:]))


__all__ = ["SIMILARITY_RANGES", "ramp_colors", "frustum_lines", "similarity_markers", "similarity_markers_cdr"]
