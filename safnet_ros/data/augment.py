"""Real-camera appearance for training images: what an RGB-D camera does and our renderer does not.

:func:`camera_augment` takes one frame, colour ``(H, W, 3) uint8`` and optionally
depth ``(H, W) float32`` metres, and returns both changed as a real camera would
change them. The effects, their order and the knobs (the ``camera`` section of
the training config): docs/training.md ("Real-camera appearance").
"""
from __future__ import annotations

import dataclasses
import io
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class CameraAugment:
    """The knobs (the training config's ``camera`` section has the same names and documents them)."""

    prob: float = 0.5
    exposure: float = 0.5
    white_balance: float = 0.15
    noise: float = 0.02
    motion_blur: int = 7
    defocus_blur: float = 1.5
    jpeg_quality: int = 30
    vignetting: float = 0.4
    depth_edge_holes: float = 0.1
    depth_dark_holes: float = 0.06
    depth_shiny_holes: float = 0.97

    @classmethod
    def from_section(cls, section) -> "CameraAugment":
        """From the config's CameraSection (or any object with the same attributes)."""
        return cls(**{k: getattr(section, k) for k in cls.__dataclass_fields__})


#: The test condition of ``safnet eval --camera-effects real``: every effect on every
#: frame (prob 1), each up to a strength at or beyond the training defaults, so a
#: model is scored on views that look as a real camera's might, not as our renderer's.
REAL_CAMERA_TEST = CameraAugment(prob=1.0, exposure=0.8, white_balance=0.25, noise=0.03, motion_blur=9,
                                 defocus_blur=2.0, jpeg_quality=25, vignetting=0.5)

#: Each knob's "off" value (camera_augment skips an effect at these).
_KNOBS_OFF = dict(exposure=0.0, white_balance=0.0, noise=0.0, motion_blur=0, defocus_blur=0.0, jpeg_quality=0,
                  vignetting=0.0, depth_edge_holes=0.0, depth_dark_holes=0.0, depth_shiny_holes=1.0)
#: The effect groups that ``safnet eval --camera-effects NAME`` applies alone (the knobs of each group).
EFFECT_GROUPS: dict[str, tuple[str, ...]] = {
    "exposure": ("exposure",),
    "white_balance": ("white_balance",),
    "noise": ("noise",),
    "motion_blur": ("motion_blur",),
    "defocus_blur": ("defocus_blur",),
    "jpeg": ("jpeg_quality",),
    "vignetting": ("vignetting",),
    "depth_holes": ("depth_edge_holes", "depth_dark_holes", "depth_shiny_holes"),
}


def camera_test_settings(condition: str) -> Optional[CameraAugment]:
    """The settings of a ``safnet eval --camera-effects`` condition: None for ``off``,
    :data:`REAL_CAMERA_TEST` for ``real``, :func:`single_effect_test` for an effect's name."""
    if condition == "off":
        return None
    return REAL_CAMERA_TEST if condition == "real" else single_effect_test(condition)


def single_effect_test(group: str) -> CameraAugment:
    """:data:`REAL_CAMERA_TEST` with only the knobs of ``group`` (a key of :data:`EFFECT_GROUPS`) left on.

    Scores what one effect alone does to a model's views, at the real-camera test strength.
    """
    keep = EFFECT_GROUPS[group]
    return dataclasses.replace(REAL_CAMERA_TEST, **{k: v for k, v in _KNOBS_OFF.items() if k not in keep})


# --------------------------------------------------------------------------- photometric (float, 0..1)
def luminance(x: np.ndarray) -> np.ndarray:
    """(H, W) Rec. 601 luma of an (H, W, 3) image in [0, 1]."""
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def exposure(x: np.ndarray, log2_gain: float) -> np.ndarray:
    """Whole-image gain ``2**log2_gain`` (clipped to [0, 1] as a sensor saturates)."""
    return np.clip(x * np.float32(2.0 ** log2_gain), 0.0, 1.0)


def white_balance(x: np.ndarray, red: float, blue: float) -> np.ndarray:
    """Red and blue channel gains against green."""
    return np.clip(x * np.array([red, 1.0, blue], np.float32), 0.0, 1.0)


def sensor_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Shot + read noise: Gaussian with std ``std * sqrt(0.25 + x)`` per pixel and channel."""
    sigma = np.float32(std) * np.sqrt(np.float32(0.25) + x)
    return np.clip(x + sigma * rng.standard_normal(x.shape, dtype=np.float32), 0.0, 1.0)


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return ndimage.convolve(x, kernel[:, :, None], mode="nearest")


def motion_blur(x: np.ndarray, length: int, angle: float) -> np.ndarray:
    """A straight streak of ``length`` pixels at ``angle`` radians (length < 2: unchanged)."""
    if length < 2:
        return x
    r = (length - 1) / 2.0
    size = 2 * int(np.ceil(r)) + 1
    c = size // 2
    t = np.linspace(-r, r, 4 * length)
    kernel = np.zeros((size, size), np.float32)
    np.add.at(kernel, (np.rint(c + t * np.sin(angle)).astype(int), np.rint(c + t * np.cos(angle)).astype(int)), 1.0)
    return _filter(x, kernel)


def defocus_blur(x: np.ndarray, radius: float) -> np.ndarray:
    """Convolution with a disc of ``radius`` pixels (radius < 0.5: unchanged)."""
    if radius < 0.5:
        return x
    c = int(np.ceil(radius))
    yy, xx = np.mgrid[-c:c + 1, -c:c + 1]
    return _filter(x, (yy ** 2 + xx ** 2 <= radius ** 2 + 1e-6).astype(np.float32))


def vignetting(x: np.ndarray, strength: float) -> np.ndarray:
    """Darkening ``1 - strength * r**2``, r the distance from the centre (1 at the corners)."""
    h, w = x.shape[:2]
    yy = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / ((h - 1) / 2 or 1)
    xx = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / ((w - 1) / 2 or 1)
    r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) / 2.0
    return x * (1.0 - np.float32(strength) * r2)[:, :, None]


def jpeg(color: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 after a JPEG encode/decode at ``quality`` (1..95)."""
    buf = io.BytesIO()
    Image.fromarray(color).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


# --------------------------------------------------------------------------- depth
def depth_edge_holes(depth: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: pixels next to a depth jump of more than ``threshold`` x the nearer depth.

    Both sides of an occluding edge are marked (the sensor's baseline shadows one,
    the mixed pixels the other); pixels beside an invalid (0) pixel are not edges.
    """
    d = depth.astype(np.float32)

    def jump(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.abs(a - b) > threshold * np.minimum(a, b)) & (a > 0) & (b > 0)

    holes = np.zeros(d.shape, bool)
    down, right = jump(d[:-1], d[1:]), jump(d[:, :-1], d[:, 1:])
    holes[:-1] |= down
    holes[1:] |= down
    holes[:, :-1] |= right
    holes[:, 1:] |= right
    return holes


def depth_appearance_holes(color01: np.ndarray, dark: float, shiny: float) -> np.ndarray:
    """(H, W) bool: dark (luminance < ``dark``) or shiny (luminance > ``shiny``) surface pixels."""
    y = luminance(color01)
    return (y < dark) | (y > shiny)


# --------------------------------------------------------------------------- all together
def camera_augment(color: np.ndarray, depth: Optional[np.ndarray], rng: np.random.Generator,
                   settings: CameraAugment) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(color (H, W, 3) uint8, depth (H, W) float32 metres or None)`` as a real camera would give them.

    The inputs are not modified. The effects and their order: docs/training.md.
    """
    s = settings
    if s.prob <= 0:  # off: no random draw either, so the caller's stream is that of a run without it
        return color, depth
    x = color.astype(np.float32) / 255.0
    if depth is not None:
        new_depth = depth.astype(np.float32, copy=True)
        holes = np.zeros(depth.shape, bool)
        if s.depth_edge_holes > 0 and rng.random() < s.prob:
            holes |= depth_edge_holes(new_depth, s.depth_edge_holes)
        if (s.depth_dark_holes > 0 or s.depth_shiny_holes < 1) and rng.random() < s.prob:
            holes |= depth_appearance_holes(x, s.depth_dark_holes, s.depth_shiny_holes)
        new_depth[holes] = 0.0
        depth = new_depth

    def apply(knob: float) -> bool:
        return knob > 0 and rng.random() < s.prob

    if apply(s.exposure):
        x = exposure(x, rng.uniform(-s.exposure, s.exposure))
    if apply(s.white_balance):
        x = white_balance(x, *(1.0 + rng.uniform(-s.white_balance, s.white_balance, size=2)))
    if apply(s.vignetting):
        x = vignetting(x, rng.uniform(0.0, s.vignetting))
    if apply(s.motion_blur):
        x = motion_blur(x, int(rng.integers(2, s.motion_blur + 1)) if s.motion_blur >= 2 else 1,
                        rng.uniform(0.0, np.pi))
    if apply(s.defocus_blur):
        x = defocus_blur(x, rng.uniform(0.5, max(0.5, s.defocus_blur)))
    if apply(s.noise):
        x = sensor_noise(x, rng.uniform(0.0, s.noise), rng)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    if apply(s.jpeg_quality):
        out = jpeg(out, int(rng.integers(min(s.jpeg_quality, 95), 96)))
    return out, depth


def degrade_view_arrays(color: np.ndarray, depth: np.ndarray, key: str, frame: int,
                        settings: CameraAugment = REAL_CAMERA_TEST) -> tuple[np.ndarray, np.ndarray]:
    """:func:`camera_augment` of one test frame, the same on every run and for every model.

    The random stream is seeded by ``(crc32(key), frame)`` (``key``: the scene's name),
    so two models, or two runs, see the very same degraded views.
    """
    rng = np.random.default_rng([zlib.crc32(key.encode()), int(frame)])
    return camera_augment(color, depth, rng, settings)
