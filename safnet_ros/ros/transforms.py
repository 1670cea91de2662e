"""geometry_msgs Transform(Stamped) to and from (4, 4) homogeneous matrices."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped

from safnet_ros.errors import MessageDecodeError
from safnet_ros.ros.codecs import MessageEncodeError, ns_to_stamp, stamp_to_ns


def transform_to_matrix(transform: Any) -> np.ndarray:
    """(4,4) float64 homogeneous matrix of a geometry_msgs Transform or TransformStamped.

    Quaternion order is (x, y, z, w); it is normalised first.
    """
    tf = getattr(transform, "transform", transform)
    q = np.array([tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(q).all() or norm < 1e-9:
        raise MessageDecodeError(f"Transform: rotation quaternion {tuple(q)} is not a rotation")
    x, y, z, w = q / norm
    out = np.eye(4)
    out[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    out[:3, 3] = [tf.translation.x, tf.translation.y, tf.translation.z]
    return out


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (x, y, z, w), w >= 0, of a (3,3) rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_to_transform(
    matrix: np.ndarray, frame_id: str = "", child_frame_id: str = "", stamp: Any = None
) -> TransformStamped:
    """TransformStamped (parent ``frame_id``, child ``child_frame_id``) from a (4,4) rigid transform.

    Raises MessageEncodeError when the matrix is not finite or its rotation
    block is not orthonormal with determinant +1 (tolerance 1e-4).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise MessageEncodeError(f"transform must be a finite (4, 4) matrix, got shape {m.shape}")
    r = m[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise MessageEncodeError("transform's (3, 3) block is not a rotation")
    q = matrix_to_quaternion(r)
    out = TransformStamped()
    out.header.frame_id = frame_id
    out.child_frame_id = child_frame_id
    if stamp is not None:
        out.header.stamp = ns_to_stamp(stamp_to_ns(stamp))
    out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = map(float, m[:3, 3])
    rot = out.transform.rotation
    rot.x, rot.y, rot.z, rot.w = map(float, q)
    return out
