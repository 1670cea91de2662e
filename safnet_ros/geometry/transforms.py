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

from safnet_ros.errors import ConfigError

__all__ = [
    "quat_to_matrix",
    "matrix_to_quat",
    "make_transform",
    "invert_transform",
    "apply_transform",
    "transform_from_quat",
    "transform_to_quat",
    "is_rigid",
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
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ConfigError("quaternion of zero length has no rotation")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    R = np.empty(q.shape[:-1] + (3, 3), dtype=np.float64)
    R[..., 0, 0] = 1 - 2 * (y * y + z * z)
    R[..., 0, 1] = 2 * (x * y - z * w)
    R[..., 0, 2] = 2 * (x * z + y * w)
    R[..., 1, 0] = 2 * (x * y + z * w)
    R[..., 1, 1] = 1 - 2 * (x * x + z * z)
    R[..., 1, 2] = 2 * (y * z - x * w)
    R[..., 2, 0] = 2 * (x * z - y * w)
    R[..., 2, 1] = 2 * (y * z + x * w)
    R[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def matrix_to_quat(R) -> np.ndarray:
    """Unit quaternions (..., 4) as (x, y, z, w), ``w >= 0``, of rotation matrices (..., 3, 3).

    Accepts (..., 4, 4) transforms too (the rotation block is used). Uses the
    numerically stable branch per matrix (largest of w, x, y, z is computed from the
    trace-like sum, the others from off-diagonal terms), vectorised over the batch.
    """
    tail = (4, 4) if np.shape(R)[-2:] == (4, 4) else (3, 3)
    R = _as_float(R, "rotation", tail)[..., :3, :3]
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2) from the diagonal.
    cand = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1
    )
    best = np.argmax(cand, axis=-1)
    s = 2.0 * np.sqrt(np.maximum(np.take_along_axis(cand, best[..., None], -1)[..., 0], 1e-300))
    d21, d12 = R[..., 2, 1], R[..., 1, 2]
    d02, d20 = R[..., 0, 2], R[..., 2, 0]
    d10, d01 = R[..., 1, 0], R[..., 0, 1]
    # Each branch gives (x, y, z, w) from s = 4 * the dominant component.
    branches = np.stack(
        [
            np.stack([(d21 - d12) / s, (d02 - d20) / s, (d10 - d01) / s, s / 4], -1),
            np.stack([s / 4, (d01 + d10) / s, (d02 + d20) / s, (d21 - d12) / s], -1),
            np.stack([(d01 + d10) / s, s / 4, (d12 + d21) / s, (d02 - d20) / s], -1),
            np.stack([(d02 + d20) / s, (d12 + d21) / s, s / 4, (d10 - d01) / s], -1),
        ],
        axis=-2,
    )
    q = np.take_along_axis(branches, best[..., None, None], -2)[..., 0, :]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


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


def transform_to_quat(T) -> tuple[np.ndarray, np.ndarray]:
    """Split (..., 4, 4) transforms into (translation (..., 3), quaternion (..., 4) xyzw, w >= 0)."""
    T = _as_float(T, "transform", (4, 4))
    return T[..., :3, 3].copy(), matrix_to_quat(T[..., :3, :3])


def invert_transform(T) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4): ``[R^T, -R^T t]`` (exact for rotations, no solve)."""
    T = _as_float(T, "transform", (4, 4))
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


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


def is_rigid(T, tol: float = 1e-5) -> bool:
    """True when every (..., 4, 4) ``T`` is a proper rigid transform (R^T R = I, det R = +1, last row 0 0 0 1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[..., :3, :3]
    eye = np.einsum("...ji,...jk->...ik", R, R)
    ok = np.abs(eye - np.eye(3)).max(axis=(-2, -1)) <= tol
    ok &= np.abs(np.linalg.det(R) - 1.0) <= tol
    ok &= np.abs(T[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=-1) <= tol
    return bool(np.all(ok))
