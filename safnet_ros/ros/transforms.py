"""geometry_msgs Transform(Stamped) to and from (4, 4) homogeneous matrices (rclpy or rosbags messages)."""
from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped

from safnet_ros.errors import MessageDecodeError
from safnet_ros.geometry.transforms import matrix_to_quat, transform_from_quat
from safnet_ros.ros.codecs import MessageEncodeError, ns_to_stamp, stamp_to_ns


def transform_to_matrix(transform: Any) -> np.ndarray:
    """(4,4) float64 homogeneous matrix of a geometry_msgs Transform or TransformStamped.

    Quaternion order is (x, y, z, w); it is normalised first.
    """
    tf = getattr(transform, "transform", transform)
    q = np.array([tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w], dtype=np.float64)
    if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise MessageDecodeError(f"Transform: rotation quaternion {tuple(q)} is not a rotation")
    return transform_from_quat([tf.translation.x, tf.translation.y, tf.translation.z], q)


def matrix_to_transform(matrix: np.ndarray, frame_id: str = "", child_frame_id: str = "",
                        stamp: Any = None) -> TransformStamped:
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
    out = TransformStamped()
    out.header.frame_id = frame_id
    out.child_frame_id = child_frame_id
    if stamp is not None:
        out.header.stamp = ns_to_stamp(stamp_to_ns(stamp))
    out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = map(float, m[:3, 3])
    rot = out.transform.rotation
    rot.x, rot.y, rot.z, rot.w = map(float, matrix_to_quat(r))
    return out
