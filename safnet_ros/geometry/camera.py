"""Pinhole cameras: intrinsics scaling, nearest-neighbour resizing, back-projection,
projection and the depth (visibility) test. numpy only, vectorised over pixels/points.

Conventions (see docs/dev/interfaces.md):

* Poses are 4x4 camera-to-world (``T_world_camera``), OpenCV optical frame: z forward,
  x right, y down. Metres everywhere.
* ``K`` is 3x3 (a 4x4 ScanNet intrinsic is accepted; its 3x3 block is used).
* **Pixel centres are at integer coordinates** (OpenCV): pixel (row v, column u) covers
  ``[u - 0.5, u + 0.5) x [v - 0.5, v + 0.5)`` and a point projecting to continuous
  ``(u, v)`` lies in pixel ``(floor(v + 0.5), floor(u + 0.5))``. Images are indexed
  ``img[v, u]``; the row-major pixel index is ``v * W + u``.
* Resizing by ``s = W'/W`` maps the continuous coordinate ``u`` to ``(u + 0.5) s - 0.5``
  (the image *edges* scale, not the pixel centres), so :func:`scale_intrinsics` gives
  ``fx' = fx s`` and ``cx' = (cx + 0.5) s - 0.5`` (same for y). :func:`resize_nearest`
  samples source pixel ``floor((j + 0.5) / s)`` for target pixel ``j``: the source pixel
  whose area contains the target pixel's centre. The two agree, so a pixel read from
  a resized depth/label image matches the ray of the scaled K within half a source pixel
  (the simpler ``cx' = cx s`` is off by ``0.5 (1 - s)`` target pixels).

Bad camera input (K zero/singular/non-finite, non-finite pose, wrong shapes) raises
:class:`~safnet_ros.errors.DataFormatError` with ``path=None``; bad parameters (tolerances,
depth range, stride, sizes) raise :class:`~safnet_ros.errors.ConfigError`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from safnet_ros.errors import ConfigError, DataFormatError

__all__ = [
    "check_intrinsics",
    "check_pose",
    "scale_intrinsics",
    "resize_nearest",
    "pixel_rays",
    "backproject",
    "project",
    "nearest_pixel",
    "visible",
]

#: Points closer to the camera plane than this (metres) are never "in the image".
MIN_PROJECT_Z = 1e-6


def check_intrinsics(K) -> np.ndarray:
    """Validate and return K as (3, 3) float64 (a 4x4 is cut to its 3x3 block).

    Raises DataFormatError when K is not 3x3/4x4, not finite, has fx or fy <= 0, or a
    last row other than (0, 0, 1).
    """
    arr = np.asarray(K, dtype=np.float64)
    if arr.shape not in ((3, 3), (4, 4)):
        raise DataFormatError(None, f"camera intrinsics must be a 3x3 (or 4x4) matrix, got shape {arr.shape}")
    arr = arr[:3, :3]
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(None, "camera intrinsics contain non-finite values")
    if not (arr[0, 0] > 0 and arr[1, 1] > 0):
        raise DataFormatError(
            None, f"camera intrinsics need fx > 0 and fy > 0, got fx={arr[0, 0]:g}, fy={arr[1, 1]:g}"
            " (an all-zero K means the camera was never calibrated)"
        )
    if not np.allclose(arr[2], (0.0, 0.0, 1.0)):
        raise DataFormatError(None, f"camera intrinsics must have last row (0, 0, 1), got {arr[2].tolist()}")
    return arr


def check_pose(camera_to_world) -> np.ndarray:
    """Validate and return a camera-to-world pose as (4, 4) float64.

    Raises DataFormatError for a wrong shape or non-finite entries (ScanNet marks
    frames with lost tracking by -inf poses: skip those frames before calling).
    """
    T = np.asarray(camera_to_world, dtype=np.float64)
    if T.shape != (4, 4):
        raise DataFormatError(None, f"camera pose must be a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise DataFormatError(None, "camera pose contains non-finite values (lost tracking?)")
    return T


def _check_wh(wh, name: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in wh)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be (width, height), got {wh!r}") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"{name} must be positive, got {(w, h)}")
    return w, h


def _depth_image(depth) -> np.ndarray:
    d = np.asarray(depth)
    if d.ndim != 2:
        raise DataFormatError(None, f"depth image must be (H, W), got shape {d.shape}")
    return d


def _valid_depth(z: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Bool mask of measured depths: finite, ``> 0`` (0 = no measurement) and within ``[min_depth, max_depth]``."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(z) & (z > 0) & (z >= min_depth) & (z <= max_depth)


def scale_intrinsics(K, from_wh: Sequence[int], to_wh: Sequence[int]) -> np.ndarray:
    """Intrinsics (3, 3) float64 of the same camera with its image resized from ``from_wh`` to ``to_wh``.

    ``fx' = fx sx``, ``cx' = (cx + 0.5) sx - 0.5`` with ``sx = W'/W`` (likewise y with
    ``sy = H'/H``): integer pixel centres, see the module docstring. Consistent with
    :func:`resize_nearest`.
    """
    K = check_intrinsics(K)
    w0, h0 = _check_wh(from_wh, "from_wh")
    w1, h1 = _check_wh(to_wh, "to_wh")
    sx, sy = w1 / w0, h1 / h0
    out = K.copy()
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 1] *= sy
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def resize_nearest(img: np.ndarray, wh: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) or (H, W, C) image (depth, labels) to ``wh`` = (W', H').

    Target pixel ``j`` takes source pixel ``floor((j + 0.5) W / W')`` (the source pixel
    containing its centre), so values are never blended (depth edges and label ids stay
    valid). Same dtype; a copy even when the size is unchanged.
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ConfigError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    w1, h1 = _check_wh(wh, "wh")
    h0, w0 = arr.shape[:2]
    if h0 == 0 or w0 == 0:
        raise ConfigError(f"cannot resize an empty image of shape {arr.shape}")
    cols = np.minimum(((np.arange(w1) + 0.5) * (w0 / w1)).astype(np.int64), w0 - 1)
    rows = np.minimum(((np.arange(h1) + 0.5) * (h0 / h1)).astype(np.int64), h0 - 1)
    return arr[rows[:, None], cols[None, :]].copy()


def pixel_rays(K, wh: Sequence[int], stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame rays with z = 1 through the pixel centres of a ``wh`` image.

    Returns (rays (H', W', 3) float64, pixel_index (H', W') int64 row-major into H*W) for
    every ``stride``-th row and column starting at 0. Handles skew (full inverse of K).
    """
    K = check_intrinsics(K)
    w, h = _check_wh(wh, "wh")
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    u = np.arange(0, w, int(stride))
    v = np.arange(0, h, int(stride))
    uu, vv = np.meshgrid(u, v)
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1).astype(np.float64)
    rays = pix @ np.linalg.inv(K).T
    rays /= rays[..., 2:3]
    return rays, (vv * w + uu).astype(np.int64)


def backproject(
    depth: np.ndarray,
    K,
    camera_to_world,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """World points of the valid pixels of a depth image.

    depth: (H, W) metres (z along the optical axis, as ScanNet/OpenCV depth), float
    or integer; K (3, 3) of this image size; camera_to_world (4, 4).
    A pixel is valid when its depth is finite and ``min_depth <= d <= max_depth``
    (zero = no measurement is skipped by ``min_depth > 0``). ``stride`` > 1 uses every
    stride-th row and column (index still refers to the full image).

    Returns (points (M, 3) float32 world metres, pixel_index (M,) int64 row-major into
    H*W), in row-major pixel order, so ``features.reshape(H*W, C)[pixel_index]`` gathers
    each point's pixel feature.
    """
    d = _depth_image(depth)
    if not (0.0 <= min_depth <= max_depth):
        raise ConfigError(f"need 0 <= min_depth <= max_depth, got {min_depth}, {max_depth}")
    T = check_pose(camera_to_world)
    h, w = d.shape
    rays, pix = pixel_rays(K, (w, h), stride)
    z = d[:: int(stride), :: int(stride)].astype(np.float64)
    valid = _valid_depth(z, min_depth, max_depth)
    cam = rays[valid] * z[valid][:, None]
    world = cam @ T[:3, :3].T + T[:3, 3]
    return world.astype(np.float32), pix[valid]


def project(points, K, camera_to_world, wh: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points into a camera.

    points (N, 3) metres world; K (3, 3); camera_to_world (4, 4); wh = (W, H) image size.
    Returns (uv (N, 2) float64 continuous pixel coordinates (u column, v row; NaN for
    points at or behind the camera plane), z (N,) float64 depth along the optical axis
    (negative behind the camera), in_image (N,) bool: ``z > 1e-6`` and the nearest pixel
    ``(floor(u + 0.5), floor(v + 0.5))`` lies inside the image). A point behind the
    camera is never in the image.
    """
    K = check_intrinsics(K)
    T = check_pose(camera_to_world)
    w, h = _check_wh(wh, "wh")
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise DataFormatError(None, f"points must be (N, 3), got shape {p.shape}")
    # world -> camera with the exact inverse (the pose need not be perfectly rigid).
    T_inv = np.linalg.inv(T)
    cam = p @ T_inv[:3, :3].T + T_inv[:3, 3]
    z = cam[:, 2]
    front = z > MIN_PROJECT_Z
    uv = np.full((len(p), 2), np.nan)
    pix = cam[front] @ K.T
    uv[front] = pix[:, :2] / pix[:, 2:3]
    with np.errstate(invalid="ignore"):
        in_image = front & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
    return uv, z, in_image


def nearest_pixel(uv: np.ndarray, in_image: np.ndarray, wh: Sequence[int]) -> np.ndarray:
    """Row-major pixel index (N,) int64 of the pixel containing each ``uv``; -1 where not ``in_image``."""
    w, h = _check_wh(wh, "wh")
    out = np.full(len(uv), -1, dtype=np.int64)
    cols = np.floor(uv[in_image, 0] + 0.5).astype(np.int64)
    rows = np.floor(uv[in_image, 1] + 0.5).astype(np.int64)
    out[in_image] = np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)
    return out


def visible(
    points,
    depth: np.ndarray,
    K,
    camera_to_world,
    tol: float = 0.1,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
) -> np.ndarray:
    """The depth test: (N,) bool, True where a point is seen by this depth image.

    The point is projected; its nearest pixel must hold a valid depth (finite, within
    ``[min_depth, max_depth]`` as in :func:`backproject`) with ``|depth - z| <= tol``
    metres, z being the point's camera depth. Points behind a nearer surface (occluded),
    outside the image, or behind the camera are not visible.
    """
    if not tol >= 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    d = _depth_image(depth)
    h, w = d.shape
    uv, z, in_image = project(points, K, camera_to_world, (w, h))
    idx = nearest_pixel(uv, in_image, (w, h))
    out = np.zeros(len(z), dtype=bool)
    sel = np.flatnonzero(in_image)
    dz = d.reshape(-1)[idx[sel]].astype(np.float64)
    out[sel] = _valid_depth(dz, min_depth, max_depth) & (np.abs(dz - z[sel]) <= tol)
    return out
