"""Rigid transforms and (x, y, z, w) quaternions: known rotations, round trips, sign convention."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from safnet_ros.errors import ConfigError
from safnet_ros.geometry.transforms import (
    apply_transform,
    invert_transform,
    make_transform,
    matrix_to_quat,
    quat_to_matrix,
    transform_from_quat,
)


def _random_quats(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_known_rotation_90_deg_about_z():
    s = np.sqrt(0.5)
    R = quat_to_matrix([0.0, 0.0, s, s])  # ROS order: x, y, z, w
    np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(R @ [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix([0, 0, 0, 1]), np.eye(3))


def test_quaternion_is_normalised_and_sign_free():
    q = _random_quats(50, seed=1)
    R = quat_to_matrix(q)
    np.testing.assert_allclose(quat_to_matrix(3.7 * q), R, atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(-q), R, atol=1e-12)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_matrix_to_quat_round_trip_and_w_nonnegative():
    q = _random_quats(2000, seed=2)
    back = matrix_to_quat(quat_to_matrix(q))
    assert np.all(back[:, 3] >= 0)
    canon = np.where(q[:, 3:4] < 0, -q, q)
    np.testing.assert_allclose(back, canon, atol=1e-9)
    # and matrix -> quat -> matrix
    R = quat_to_matrix(q)
    np.testing.assert_allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_half_turns_are_accurate(axis):
    """Trace -1 (180 degrees): the w-branch alone would divide by ~0."""
    q = np.zeros(4)
    q[axis] = 1.0
    R = quat_to_matrix(q)
    np.testing.assert_allclose(matrix_to_quat(R), q, atol=1e-12)
    near = np.array(q)
    near[3] = 1e-7
    near /= np.linalg.norm(near)
    np.testing.assert_allclose(matrix_to_quat(quat_to_matrix(near)), near, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (4,), elements=st.floats(-1, 1)).filter(lambda q: np.linalg.norm(q) > 1e-3))
def test_round_trip_property(q):
    qn = q / np.linalg.norm(q)
    back = matrix_to_quat(quat_to_matrix(q))
    assert np.allclose(back, qn, atol=1e-8) or np.allclose(back, -qn, atol=1e-8)


def test_make_invert_apply_are_consistent():
    rng = np.random.default_rng(3)
    T = transform_from_quat(rng.normal(size=(7, 3)), _random_quats(7, seed=4))
    Ti = invert_transform(T)
    np.testing.assert_allclose(T @ Ti, np.broadcast_to(np.eye(4), (7, 4, 4)), atol=1e-12)
    pts = rng.normal(size=(100, 3))
    homog = np.c_[pts, np.ones(100)] @ T[0].T
    np.testing.assert_allclose(apply_transform(T[0], pts), homog[:, :3], atol=1e-12)
    np.testing.assert_allclose(apply_transform(Ti[0], apply_transform(T[0], pts)), pts, atol=1e-12)
    # batched: (B, 4, 4) with (B, N, 3)
    batch = apply_transform(T, np.broadcast_to(pts, (7, 100, 3)))
    np.testing.assert_allclose(batch[5], apply_transform(T[5], pts), atol=1e-12)
    assert apply_transform(T[0], pts.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(transform_from_quat(T[:, :3, 3], matrix_to_quat(T)), T, atol=1e-12)


def test_axis_alignment_matrix_applies_as_affine():
    """ScanNet's axisAlignment: p' = M [x y z 1]^T."""
    M = np.array([[0, -1, 0, 2.0], [1, 0, 0, -1.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(apply_transform(M, [[1.0, 2.0, 3.0]]), [[0.0, 0.0, 3.5]])


def test_bad_input_raises_config_error():
    with pytest.raises(ConfigError, match="zero length"):
        quat_to_matrix([0, 0, 0, 0])
    with pytest.raises(ConfigError, match="non-finite"):
        quat_to_matrix([0, 0, np.nan, 1])
    with pytest.raises(ConfigError, match="shape"):
        make_transform(np.eye(3), [1.0, 2.0])
