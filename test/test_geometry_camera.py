"""Pinhole camera: back-projection of an analytically rendered plane, projection round
trips, the depth test, and intrinsics scaling against nearest-neighbour resizing."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.errors import ConfigError, DataFormatError, SafnetError
from safnet_ros.geometry.camera import (
    backproject,
    project,
    resize_nearest,
    scale_intrinsics,
    visible,
)
from safnet_ros.geometry.transforms import transform_from_quat

K = np.array([[301.5, 0.0, 83.2], [0.0, 297.0, 57.9], [0.0, 0.0, 1.0]])
WH = (160, 120)


def _pose() -> np.ndarray:
    """A non-trivial camera-to-world pose: tilted, rolled, off the origin."""
    q = np.array([0.31, -0.52, 0.18, 0.77])
    return transform_from_quat([1.3, -0.4, 1.6], q / np.linalg.norm(q))


def render_plane(normal, offset, K, pose, wh):
    """Depth (H, W) of the plane {x : n.x = offset} by ray casting each pixel centre; 0 where missed."""
    w, h = wh
    uu, vv = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(K).T  # z = 1 in camera
    dirs = rays @ pose[:3, :3].T
    n = np.asarray(normal, float)
    lam = (offset - n @ pose[:3, 3]) / (dirs @ n)
    return np.where(np.isfinite(lam) & (lam > 0), lam, 0.0)


def _plane_through_view(pose):
    """A tilted plane that the camera of ``pose`` sees about 2.5 m ahead."""
    n = np.array([0.3, -0.2, 0.93])
    n /= np.linalg.norm(n)
    ahead = pose[:3, 3] + 2.5 * pose[:3, 2]
    return n, float(n @ ahead)


def test_backprojected_plane_lies_on_the_plane():
    pose = _pose()
    n, off = _plane_through_view(pose)
    depth = render_plane(n, off, K, pose, WH)
    assert (depth > 0).mean() > 0.5 and np.ptp(depth[depth > 0]) > 0.5  # sees the plane, tilted
    depth[10, 20] = np.nan  # invalid values are skipped, never back-projected
    depth[11, 20] = 0.0
    depth[12, 20] = 50.0  # beyond max_depth
    pts, pix = backproject(depth.astype(np.float32), K, pose, min_depth=0.1, max_depth=10.0)
    valid = np.isfinite(depth) & (depth >= 0.1) & (depth <= 10.0)
    assert len(pts) == valid.sum()
    np.testing.assert_array_equal(pix, np.flatnonzero(valid.reshape(-1)))
    assert pts.dtype == np.float32
    dist = np.abs(pts.astype(np.float64) @ n - off)
    assert dist.max() < 1e-3
    # each point lies on its pixel's ray: distance from the camera centre = depth * |ray|
    rays = np.c_[pix % WH[0], pix // WH[0], np.ones(len(pix))] @ np.linalg.inv(K).T
    expect = rays @ pose[:3, :3].T * depth.reshape(-1)[pix][:, None] + pose[:3, 3]
    np.testing.assert_allclose(pts, expect, atol=1e-3)


def test_backproject_stride_keeps_full_image_indices():
    pose = _pose()
    depth = render_plane(*_plane_through_view(pose), K, pose, WH)
    full, full_pix = backproject(depth, K, pose)
    sub, sub_pix = backproject(depth, K, pose, stride=4)
    rows, cols = sub_pix // WH[0], sub_pix % WH[0]
    assert np.all(rows % 4 == 0) and np.all(cols % 4 == 0)
    pos = np.searchsorted(full_pix, sub_pix)
    np.testing.assert_array_equal(full_pix[pos], sub_pix)
    np.testing.assert_allclose(full[pos], sub, atol=1e-6)


def test_project_of_backprojection_returns_the_pixel():
    pose = _pose()
    depth = render_plane(*_plane_through_view(pose), K, pose, WH)
    pts, pix = backproject(depth, K, pose)
    uv, z, inside = project(pts, K, pose, WH)
    assert inside.all()
    np.testing.assert_allclose(uv[:, 0], pix % WH[0], atol=2e-3)
    np.testing.assert_allclose(uv[:, 1], pix // WH[0], atol=2e-3)
    np.testing.assert_allclose(z, depth.reshape(-1)[pix], atol=1e-5)


def test_points_behind_the_camera_are_never_in_the_image():
    pose = _pose()
    depth = render_plane(*_plane_through_view(pose), K, pose, WH)
    pts, _ = backproject(depth, K, pose, stride=8)
    centre = pose[:3, 3]
    mirrored = 2 * centre - pts  # same viewing line, behind the camera
    uv, z, inside = project(mirrored, K, pose, WH)
    assert np.all(z < 0) and not inside.any() and np.isnan(uv).all()
    on_plane = project(np.array([centre]), K, pose, WH)[2]  # the centre itself (z = 0)
    assert not on_plane.any()
    # pixel-boundary convention: u in [-0.5, W - 0.5) is inside
    cam = np.array([[(-0.499 - K[0, 2]) / K[0, 0], 0.0, 1.0], [(-0.501 - K[0, 2]) / K[0, 0], 0.0, 1.0]])
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    assert project(world, K, pose, WH)[2].tolist() == [True, False]


def test_depth_test_rejects_occluded_points():
    pose = _pose()
    n, off = _plane_through_view(pose)
    depth = render_plane(n, off, K, pose, WH).astype(np.float32)
    surface, pix = backproject(depth, K, pose, stride=5)
    centre = pose[:3, 3]
    rays = surface.astype(np.float64) - centre
    behind = centre + rays * 1.5  # same pixel, 50% further: hidden by the plane
    near_front = centre + rays * (1 - 0.03 / np.linalg.norm(rays, axis=1))[:, None]  # 3 cm in front
    far_front = centre + rays * 0.8  # well in front of the surface: it would occlude, not be seen there
    assert visible(surface, depth, K, pose, tol=0.1).all()
    assert visible(near_front, depth, K, pose, tol=0.1).mean() > 0.99
    assert not visible(behind, depth, K, pose, tol=0.1).any()
    assert not visible(far_front, depth, K, pose, tol=0.1).any()
    # a pixel without depth sees nothing
    holes = depth.copy()
    holes.reshape(-1)[pix] = 0.0
    assert not visible(surface, holes, K, pose, tol=0.1).any()
    holes.reshape(-1)[pix] = np.nan
    assert not visible(surface, holes, K, pose, tol=0.1).any()


@pytest.mark.parametrize("big,small", [((1296, 968), (160, 120)), ((640, 480), (160, 120)), ((160, 120), (640, 480)),
                                       ((97, 61), (40, 33))])
def test_scale_intrinsics_agrees_with_resize_nearest(big, small):
    """The ray of each small-image pixel (scaled K) passes within half a big pixel of the
    centre of the big pixel that resize_nearest copied into it."""
    Kb = np.array([[1170.2, 0.0, big[0] / 2 + 3.1], [0.0, 1169.4, big[1] / 2 - 7.3], [0, 0, 1]])
    Kb[:2] *= big[0] / 1296
    Ks = scale_intrinsics(Kb, big, small)
    ids = np.arange(big[0] * big[1]).reshape(big[1], big[0])
    src = resize_nearest(ids, small)
    assert src.shape == (small[1], small[0])
    src_u, src_v = src % big[0], src // big[0]
    uu, vv = np.meshgrid(np.arange(small[0]), np.arange(small[1]))
    rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(Ks).T
    in_big = rays @ Kb.T
    assert np.abs(in_big[..., 0] - src_u).max() <= 0.5 + 1e-9
    assert np.abs(in_big[..., 1] - src_v).max() <= 0.5 + 1e-9
    # the naive convention (c' = c * s) misses by several big pixels when shrinking a lot
    naive = Kb.copy()
    naive[0] *= small[0] / big[0]
    naive[1] *= small[1] / big[1]
    off = np.abs((np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(naive).T @ Kb.T)[..., 0] - src_u).max()
    if big[0] / small[0] >= 4:
        assert off > 1.0


def test_scale_intrinsics_values_and_projection_of_a_point():
    Ks = scale_intrinsics(K, (640, 480), (160, 120))
    np.testing.assert_allclose(Ks[0], [301.5 / 4, 0, (83.2 + 0.5) / 4 - 0.5])
    np.testing.assert_allclose(Ks[1], [0, 297.0 / 4, (57.9 + 0.5) / 4 - 0.5])
    # a world point lands in the small pixel whose source pixel is the big pixel it lands in
    pose = _pose()
    rng = np.random.default_rng(0)
    uv_big = rng.uniform([0, 0], [639, 479], (500, 2))
    # choose points near big pixel centres so that rounding is unambiguous at both sizes
    uv_big = np.round(uv_big / 4) * 4 + 1.5
    uv_big = uv_big[(uv_big[:, 0] < 639.5) & (uv_big[:, 1] < 479.5)]
    cam = np.c_[uv_big, np.ones(len(uv_big))] @ np.linalg.inv(K).T * 2.0
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    ids = np.arange(640 * 480).reshape(480, 640)
    small_ids = resize_nearest(ids, (160, 120))
    uv_s, _, inside = project(world, Ks, pose, (160, 120))
    assert inside.all()
    got = small_ids[np.floor(uv_s[:, 1] + 0.5).astype(int), np.floor(uv_s[:, 0] + 0.5).astype(int)]
    expect = np.floor(uv_big[:, 1] + 0.5).astype(int) * 640 + np.floor(uv_big[:, 0] + 0.5).astype(int)
    np.testing.assert_array_equal(got, expect)


def test_resize_nearest_keeps_values_and_dtype():
    labels = np.random.default_rng(1).integers(0, 20, (480, 640)).astype(np.uint8)
    small = resize_nearest(labels, (160, 120))
    assert small.dtype == np.uint8 and small.shape == (120, 160)
    np.testing.assert_array_equal(small, labels[2::4, 2::4])  # floor((j + 0.5) * 4) = 4j + 2
    rgb = np.random.default_rng(2).integers(0, 255, (12, 16, 3)).astype(np.uint8)
    np.testing.assert_array_equal(resize_nearest(rgb, (16, 12)), rgb)


def test_4x4_intrinsics_input():
    K4 = np.pad(K, ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1.0])
    np.testing.assert_allclose(scale_intrinsics(K4, WH, (80, 60)), scale_intrinsics(K, WH, (80, 60)))


def test_bad_camera_input_raises_documented_errors():
    pose = _pose()
    depth = np.ones((120, 160), np.float32)
    with pytest.raises(DataFormatError, match="fx > 0") as err:
        backproject(depth, np.zeros((3, 3)), pose)
    assert err.value.path is None and isinstance(err.value, (SafnetError, ValueError))
    bad_pose = pose.copy()
    bad_pose[0, 3] = -np.inf
    with pytest.raises(DataFormatError, match="non-finite"):
        backproject(depth, K, bad_pose)
    with pytest.raises(DataFormatError, match="non-finite"):
        project(np.zeros((3, 3)), K, bad_pose, WH)
    with pytest.raises(DataFormatError, match="3x3"):
        visible(np.zeros((3, 3)), depth, np.eye(2), pose)
    with pytest.raises(DataFormatError, match=r"\(H, W\)"):
        backproject(np.ones((4, 4, 1)), K, pose)
    with pytest.raises(ConfigError):
        backproject(depth, K, pose, min_depth=2.0, max_depth=1.0)
    with pytest.raises(ConfigError):
        scale_intrinsics(K, (0, 120), (160, 120))
