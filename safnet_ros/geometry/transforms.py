"""Rigid transforms and quaternions (numpy, vectorised over leading batch axes).

Conventions:

* A transform ``T`` is a (..., 4, 4) homogeneous matrix ``T_parent_child``: it maps
  points given in the child frame into the parent frame, ``p_parent = T @ [p_child, 1]``
  (a camera-to-world pose is ``T_world_camera``).
* Quaternions are (..., 4) in ROS order ``(x, y, z, w)`` (geometry_msgs/Quaternion),
  Hamilton convention, active rotation. :func:`quat_to_matrix` normalises its input;
  :func:`matrix_to_quat` returns unit quaternions with ``w >= 0`` (``q`` and ``-q`` are the
  same rotation; the sign is fixed so that round trips are exact and comparable).
* ScanNet's axis alignment (``axisAlignment`` in ``sceneXXXX_YY.txt``) is such a 4x4
  matrix: apply it with :func:`apply_transform`.

Bad input (zero-length quaternions, non-finite values, wrong shapes) raises
:class:`~safnet_ros.errors.ConfigError`.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from safnet_ros.errors import ConfigError

__all__ = [
    "quat_to_matrix",
    "matrix_to_quat",
    "make_transform",
    "invert_transform",
    "apply_transform",
    "transform_from_quat",
]


def _as_float(a, name: str, tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape[arr.ndim - len(tail):] != tail or arr.ndim < len(tail):
        raise ConfigError(f"{name} must have shape (..., {', '.join(map(str, tail))}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains non-finite values")
    return arr


def quat_to_matrix(q) -> np.ndarray:
    """Rotation matrices (..., 3, 3) float64 of quaternions ``q`` (..., 4) as (x, y, z, w).

    The quaternions are normalised first; a (near) zero-length one raises ConfigError.
    """
    q = _as_float(q, "quaternion", (4,))
    if np.any(np.linalg.norm(q, axis=-1) < 1e-12):
        raise ConfigError("quaternion of zero length has no rotation")
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R) -> np.ndarray:
    """Unit quaternions (..., 4) as (x, y, z, w), ``w >= 0``, of rotation matrices (..., 3, 3).

    Accepts (..., 4, 4) transforms too (the rotation block is used). scipy's
    ``Rotation.from_matrix`` takes the numerically stable branch per matrix
    (the largest of w, x, y, z from the trace-like sum, the others from
    off-diagonal terms); ``canonical`` gives ``w >= 0``.
    """
    tail = (4, 4) if np.shape(R)[-2:] == (4, 4) else (3, 3)
    R = _as_float(R, "rotation", tail)[..., :3, :3]
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat(canonical=True)
    return q.reshape(R.shape[:-2] + (4,))


def make_transform(R, t) -> np.ndarray:
    """(..., 4, 4) float64 homogeneous transforms from rotations (..., 3, 3) and translations (..., 3)."""
    R = _as_float(R, "rotation", (3, 3))
    t = _as_float(t, "translation", (3,))
    batch = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = np.zeros(batch + (4, 4), dtype=np.float64)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def transform_from_quat(t, q) -> np.ndarray:
    """(..., 4, 4) transforms from translations (..., 3) and quaternions (..., 4) (x, y, z, w)."""
    return make_transform(quat_to_matrix(q), t)


def invert_transform(T) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4): ``[R^T, -R^T t]`` (exact for rotations, no solve)."""
    T = _as_float(T, "transform", (4, 4))
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    return make_transform(Rt, -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3]))


def apply_transform(T, points) -> np.ndarray:
    """Map points (N, 3) (or (..., N, 3) with T (..., 4, 4)) by ``T``: ``R p + t``.

    Works for any affine 4x4 (bottom row 0 0 0 1), e.g. ScanNet's axis alignment.
    The result has the points' float dtype (float32 stays float32; other input -> float64).
    """
    T = _as_float(T, "transform", (4, 4))
    pts = np.asarray(points)
    if pts.ndim < 1 or pts.shape[-1] != 3:
        raise ConfigError(f"points must have shape (..., 3), got {pts.shape}")
    dtype = pts.dtype if pts.dtype in (np.float32, np.float64) else np.float64
    p = pts.astype(np.float64, copy=False)
    out = np.einsum("...ij,...nj->...ni", T[..., :3, :3], p) + T[..., None, :3, 3]
    return out.astype(dtype, copy=False)
