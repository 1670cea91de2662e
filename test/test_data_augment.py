"""Real-camera appearance (data/augment.py): each effect does what its knob says, on colour and depth."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.data import augment as A


@pytest.fixture
def texture() -> np.ndarray:
    """(120, 160, 3) float32 in [0.2, 0.8]: random blocks of 4 px (edges in both directions)."""
    rng = np.random.default_rng(0)
    small = rng.uniform(0.2, 0.8, (30, 40, 3)).astype(np.float32)
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)


def _grad_energy(x: np.ndarray, axis: int) -> float:
    return float((np.diff(x, axis=axis) ** 2).mean())


def test_exposure_scales_brightness_both_ways(texture):
    assert A.exposure(texture, 0.5).mean() > texture.mean() * 1.3
    assert A.exposure(texture, -1.0).mean() == pytest.approx(texture.mean() / 2, rel=1e-5)
    assert A.exposure(texture, 3.0).max() <= 1.0  # saturates like a sensor


def test_white_balance_shifts_red_and_blue_against_green(texture):
    out = A.white_balance(texture, 1.2, 0.8)
    np.testing.assert_array_equal(out[..., 1], texture[..., 1])
    assert out[..., 0].mean() / texture[..., 0].mean() == pytest.approx(1.2, rel=1e-4)
    assert out[..., 2].mean() / texture[..., 2].mean() == pytest.approx(0.8, rel=1e-4)


def test_sensor_noise_has_the_stated_std_and_grows_with_brightness():
    rng = np.random.default_rng(1)
    dark = np.full((200, 200, 3), 0.1, np.float32)
    bright = np.full((200, 200, 3), 0.7, np.float32)
    s_dark = (A.sensor_noise(dark, 0.02, rng) - dark).std()
    s_bright = (A.sensor_noise(bright, 0.02, rng) - bright).std()
    assert s_dark == pytest.approx(0.02 * np.sqrt(0.35), rel=0.05)
    assert s_bright == pytest.approx(0.02 * np.sqrt(0.95), rel=0.05)
    assert s_bright > s_dark


def test_motion_blur_smears_along_its_direction_only(texture):
    horizontal = A.motion_blur(texture, 9, 0.0)
    assert _grad_energy(horizontal, 1) < 0.3 * _grad_energy(texture, 1)  # along the streak: smeared
    rows = np.repeat(texture[:, :1], texture.shape[1], axis=1)  # varies along y only
    np.testing.assert_allclose(A.motion_blur(rows, 9, 0.0), rows, atol=1e-6)  # a horizontal streak keeps it
    assert _grad_energy(A.motion_blur(rows, 9, np.pi / 2), 0) < 0.3 * _grad_energy(rows, 0)  # a vertical one not
    vertical = A.motion_blur(texture, 9, np.pi / 2)
    assert _grad_energy(vertical, 0) < 0.3 * _grad_energy(texture, 0)
    assert horizontal.mean() == pytest.approx(texture.mean(), abs=2e-3)  # energy preserved
    np.testing.assert_array_equal(A.motion_blur(texture, 1, 0.3), texture)


def test_defocus_blur_smooths_both_directions_more_with_a_larger_disc(texture):
    small, large = A.defocus_blur(texture, 1.0), A.defocus_blur(texture, 3.0)
    for axis in (0, 1):
        assert _grad_energy(large, axis) < _grad_energy(small, axis) < _grad_energy(texture, axis)
    assert large.mean() == pytest.approx(texture.mean(), abs=2e-3)


def test_vignetting_darkens_corners_not_the_centre():
    flat = np.full((121, 161, 3), 0.5, np.float32)
    out = A.vignetting(flat, 0.4)
    assert out[60, 80, 0] == pytest.approx(0.5)
    assert out[0, 0, 0] == pytest.approx(0.5 * 0.6, rel=1e-5)
    assert out[60, 0, 0] > out[0, 0, 0]  # monotone in the distance from the centre


def test_jpeg_adds_block_artefacts_that_grow_as_quality_drops(texture):
    img = (texture * 255).astype(np.uint8)
    smooth = np.clip(A.defocus_blur(texture, 2.0) * 255, 0, 255).astype(np.uint8)
    errors = [np.abs(A.jpeg(smooth, q).astype(float) - smooth).mean() for q in (95, 50, 10)]
    assert errors[0] < errors[1] < errors[2]
    low = A.jpeg(smooth, 10).astype(float)
    # 8x8 blocks: the jump across a block boundary exceeds the jump inside a block.
    d = np.abs(np.diff(low, axis=1)).mean(axis=(0, 2))
    assert d[7::8].mean() > 1.2 * np.delete(d, np.s_[7::8]).mean()
    assert A.jpeg(img, 90).shape == img.shape and A.jpeg(img, 90).dtype == np.uint8


def test_depth_holes_appear_at_depth_edges_only():
    depth = np.full((40, 60), 1.0, np.float32)
    depth[:, 30:] = 3.0  # an occluding edge between columns 29 and 30
    depth[:, :10] += np.linspace(0, 0.02, 10)  # a gentle slope: no edge
    holes = A.depth_edge_holes(depth, 0.1)
    assert holes[:, 29].all() and holes[:, 30].all()
    assert holes.sum() == 2 * 40
    depth[5, 5] = 0.0  # an existing hole is not an edge
    assert A.depth_edge_holes(depth, 0.1).sum() == 2 * 40


def test_depth_holes_on_dark_and_shiny_surfaces():
    color = np.full((20, 20, 3), 0.5, np.float32)
    color[:5] = 0.02  # dark
    color[-5:] = 1.0  # specular highlight
    holes = A.depth_appearance_holes(color, 0.06, 0.97)
    assert holes[:5].all() and holes[-5:].all() and not holes[5:-5].any()


def test_camera_augment_is_consistent_and_leaves_inputs_alone():
    rng = np.random.default_rng(3)
    color = rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)
    color[:8] = 3  # a dark band: its depth must go
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:, 40:] = 4.0
    c0, d0 = color.copy(), depth.copy()
    always = A.CameraAugment(prob=1.0)
    out, out_depth = A.camera_augment(color, depth, np.random.default_rng(4), always)
    np.testing.assert_array_equal(color, c0)
    np.testing.assert_array_equal(depth, d0)
    assert out.dtype == np.uint8 and out.shape == color.shape and out_depth.dtype == np.float32
    assert (out_depth[:8] == 0).all()  # dark surface: no depth
    assert (out_depth[8:, 39:41] == 0).all()  # occluding edge: no depth
    assert (out_depth[8:, :38] == 2.0).all() and (out_depth[8:, 42:] == 4.0).all()  # the rest untouched
    assert not np.array_equal(out, color)
    never = A.CameraAugment(prob=0.0)
    same, same_depth = A.camera_augment(color, depth, np.random.default_rng(4), never)
    np.testing.assert_array_equal(same, color)
    np.testing.assert_array_equal(same_depth, depth)
    off = A.CameraAugment(prob=1.0, exposure=0, white_balance=0, noise=0, motion_blur=0, defocus_blur=0,
                          jpeg_quality=0, vignetting=0, depth_edge_holes=0, depth_dark_holes=0, depth_shiny_holes=1)
    same, same_depth = A.camera_augment(color, depth, np.random.default_rng(4), off)
    np.testing.assert_array_equal(same, color)
    np.testing.assert_array_equal(same_depth, depth)


def test_camera_settings_follow_the_config_section():
    from safnet_ros.engine.config_schema import CameraSection

    assert set(A.CameraAugment.__dataclass_fields__) == {f for f in CameraSection.__dataclass_fields__}
    assert A.CameraAugment.from_section(CameraSection()) == A.CameraAugment()


def test_single_effect_test_conditions_turn_on_one_effect_only():
    """`safnet eval --camera-effects NAME`: the named effect at the real-camera strength, every other one off."""
    rng = np.random.default_rng(5)
    color = rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)
    color[:8] = 3
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:, 40:] = 4.0
    for name in A.EFFECT_GROUPS:
        settings = A.single_effect_test(name)
        out, out_depth = A.camera_augment(color, depth, np.random.default_rng(6), settings)
        if name == "depth_holes":
            np.testing.assert_array_equal(out, color)
            assert (out_depth == 0).any()
        else:
            assert not np.array_equal(out, color), name
            np.testing.assert_array_equal(out_depth, depth)
        assert all(getattr(settings, k) == getattr(A.REAL_CAMERA_TEST, k) for k in A.EFFECT_GROUPS[name])
    assert A.single_effect_test("jpeg").exposure == 0 and A.single_effect_test("exposure").jpeg_quality == 0
