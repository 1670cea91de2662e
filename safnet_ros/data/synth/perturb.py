"""The paper's 2D-3D mismatch knobs: sensor noise, pose errors, moved objects, lost tracking.

All functions take a ``numpy.random.Generator`` and are deterministic given it.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter
from scipy.spatial.transform import Rotation
from scipy.special import ndtri

from safnet_ros.data.synth.rooms import SHELL_CATEGORIES, Room, SceneObject, footprint, move_object

#: Yaw drift per metre of translation drift (degrees per metre): --pose-drift 0.05 -> 0.25 deg.
YAW_DRIFT_DEG_PER_M = 5.0


def noisy_depth(rng: np.random.Generator, depth: np.ndarray, incidence: np.ndarray, noise: float,
                dropout: float) -> np.ndarray:
    """Sensor-like depth (H, W) float32 metres from a clean z-depth image (0 = no return).

    ``noise`` is the std in metres at 0 m, ``sigma(z) = noise * (1 + (z / 2 m)^2)``; ``dropout`` the
    fraction of pixels lost in random blobs/speckle, with grazing-angle pixels
    (|cos| < 0.12) dropped as well whenever ``dropout > 0``.
    """
    out = depth.astype(np.float32, copy=True)
    h, w = out.shape
    if noise > 0:
        sigma = noise * (1.0 + (out / 2.0) ** 2)
        out += rng.standard_normal((h, w), dtype=np.float32) * sigma.astype(np.float32)
    if dropout > 0:
        out[(incidence < 0.12) | _random_holes(rng, h, w, dropout)] = 0.0
    out[(depth <= 0) | (out <= 0)] = 0.0
    return out


def _random_holes(rng: np.random.Generator, h: int, w: int, dropout: float) -> np.ndarray:
    """(h, w) bool: about ``dropout`` of the pixels, 3/4 in smooth blobs and 1/4 as speckle."""
    # Blobs: a coarse random field, upsampled, with pixel noise: ~ N(0, 1 + 0.35^2), so thresholding at
    # the normal quantile drops ~3/4 of the dropout fraction without sorting the image.
    field = rng.standard_normal((max(2, h // 12), max(2, w // 12))).astype(np.float32)
    big = _upsample_bilinear(field, h, w) + 0.35 * rng.standard_normal((h, w), dtype=np.float32)
    holes = big > float(ndtri(1.0 - 0.75 * dropout)) * math.sqrt(1.0 + 0.35 ** 2)
    return holes | (rng.uniform(size=(h, w)) < 0.25 * dropout)


def _upsample_bilinear(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw) -> (h, w) by bilinear interpolation (pixel centres aligned), float32."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)

    gh, gw = field.shape
    y0, y1, wy = axis(h, gh)
    x0, x1, wx = axis(w, gw)
    rows = field[y0] * (1 - wy)[:, None] + field[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx)[None, :] + rows[:, x1] * wx[None, :]


def correlated_noise(rng: np.random.Generator, n: int, dims: int, corr_frames: float) -> np.ndarray:
    """(n, dims) unit-variance noise; an AR(1) process with correlation time ``corr_frames`` (0: white)."""
    white = rng.standard_normal((n, dims))
    if corr_frames <= 0 or n < 2:
        return white
    a = math.exp(-1.0 / corr_frames)
    out = np.empty_like(white)
    out[0] = white[0]  # start in the stationary distribution
    out[1:] = lfilter([math.sqrt(1 - a * a)], [1.0, -a], white[1:], axis=0, zi=a * white[0:1])[0]
    return out


def recorded_poses(rng: np.random.Generator, poses: np.ndarray, noise_m: float, noise_deg: float,
                   drift_m: float, corr_frames: float = 0.0) -> np.ndarray:
    """Recorded camera-to-world poses (F, 4, 4) from the true ones.

    Per frame, a random rotation (std ``noise_deg`` per axis) and translation
    (std ``noise_m`` per axis) applied in the camera frame, temporally
    correlated over ``corr_frames`` frames (AR(1); 0: independent per frame, as
    the error of a tracker is not); plus drift: a random
    walk whose end-point std is ``drift_m`` metres per axis in the world (and
    ``drift_m * YAW_DRIFT_DEG_PER_M`` degrees of yaw about the camera centre).
    """
    f = len(poses)
    out = poses.copy()
    if f == 0:
        return out
    if noise_m > 0 or noise_deg > 0:
        n6 = correlated_noise(rng, f, 6, corr_frames)
        rv = n6[:, :3] * math.radians(noise_deg)
        dt = n6[:, 3:] * noise_m
        jitter = np.tile(np.eye(4), (f, 1, 1))
        jitter[:, :3, :3] = Rotation.from_rotvec(rv).as_matrix()
        jitter[:, :3, 3] = dt
        out = np.einsum("fij,fjk->fik", out, jitter)
    if drift_m > 0:
        scale = 1.0 / math.sqrt(f)
        walk_t = np.cumsum(rng.standard_normal((f, 3)) * drift_m * scale, axis=0)
        walk_t[:, 2] *= 0.3  # vertical drift is small (gravity-aligned trackers)
        walk_yaw = np.cumsum(rng.standard_normal(f) * math.radians(drift_m * YAW_DRIFT_DEG_PER_M) * scale)
        rz = np.zeros((f, 3))
        rz[:, 2] = walk_yaw
        out = out.copy()
        out[:, :3, :3] = np.einsum("fij,fjk->fik", Rotation.from_rotvec(rz).as_matrix(), out[:, :3, :3])
        out[:, :3, 3] += walk_t
    return out


def invalid_frames(rng: np.random.Generator, frames: int, fraction: float) -> np.ndarray:
    """(frames,) bool: frames whose pose is lost (written as -inf), in bursts of 1-5 frames.

    Exactly ``round(fraction * frames)`` frames are chosen (at least one when
    ``fraction > 0``); the first frame always keeps its pose.
    """
    mask = np.zeros(frames, dtype=bool)
    want = int(round(fraction * frames))
    if fraction > 0:
        want = max(1, want)
    want = min(want, max(frames - 1, 0))
    while mask.sum() < want:
        start = int(rng.integers(1, frames))
        length = int(rng.integers(1, 6))
        free = np.flatnonzero(~mask[start:start + length]) + start
        mask[free[: want - int(mask.sum())]] = True
    return mask


def move_objects(rng: np.random.Generator, room: Room, count: int) -> tuple[list[SceneObject], list[dict]]:
    """Displace ``count`` movable objects (aligned frame) for the frames; the mesh keeps the originals.

    Each chosen object is shifted 0.3-0.8 m and turned up to ~30 degrees where
    it stays inside the room and clear of other objects' footprints (40 tries,
    otherwise it stays put). Returns the objects as seen by the camera and a
    record per moved object (objectId, category, dx, dy, dyaw in the aligned frame).
    """
    objects = list(room.objects)
    movable = [i for i, o in enumerate(objects) if o.movable]
    if count <= 0 or not movable:
        return objects, []
    chosen = [movable[int(k)] for k in rng.permutation(len(movable))[:count]]
    moved: list[dict] = []
    margin = 0.05
    for i in sorted(chosen):
        others = [footprint(o) for k, o in enumerate(objects) if k != i and o.category not in SHELL_CATEGORIES]
        for _ in range(40):
            dist = float(rng.uniform(0.3, 0.8))
            ang = float(rng.uniform(0, 2 * math.pi))
            dyaw = float(rng.uniform(-0.5, 0.5))
            cand = move_object(objects[i], dist * math.cos(ang), dist * math.sin(ang), dyaw)
            fp = footprint(cand)
            if fp[0] < margin or fp[1] < margin or fp[2] > room.width - margin or fp[3] > room.depth - margin:
                continue
            if any(fp[0] < o[2] and o[0] < fp[2] and fp[1] < o[3] and o[1] < fp[3] for o in others):
                continue
            objects[i] = cand
            moved.append({"objectId": objects[i].object_id, "category": objects[i].category,
                          "dx": dist * math.cos(ang), "dy": dist * math.sin(ang), "dyaw": dyaw})
            break
    return objects, moved


def structured_light_depth(rng: np.random.Generator, depth: np.ndarray, incidence: np.ndarray,
                           luminance: np.ndarray | None, noise: float, dropout: float,
                           max_depth: float = 4.5, min_depth: float = 0.4, glass: np.ndarray | None = None
                           ) -> np.ndarray:
    """Depth (H, W) float32 metres as a structured-light sensor (Structure sensor, Kinect v1) returns it.

    From a clean z-depth image (0 = no return):
    - error growing with range, ``sigma(z) = noise * (1 + (z / 2 m)^2)``, half of
      it spatially smooth (a wavy surface, as a real sensor's calibration residual)
      and half per pixel;
    - holes at depth edges (the projector's shadow beside a depth jump), on
      dark surfaces (``luminance`` (H, W) in 0..1 below 0.12) and at grazing
      angles (|cos| < 0.2, partly below 0.35), on window glass (``glass`` (H, W)
      bool, most of it), plus ``dropout`` of the pixels
      in random blobs and speckle (as :func:`noisy_depth`);
    - nothing nearer than ``min_depth`` or farther than ``max_depth`` (returns
      thin out from 80 % of ``max_depth``).
    ``noise`` 0 and ``dropout`` 0 give the clean depth inside the range.
    """
    out = depth.astype(np.float32, copy=True)
    h, w = out.shape
    valid = depth > 0
    if noise > 0:
        sigma = (noise * (1.0 + (out / 2.0) ** 2)).astype(np.float32)
        gh, gw = max(2, h // 16), max(2, w // 16)
        smooth = _upsample_bilinear(rng.standard_normal((gh, gw)).astype(np.float32), h, w)
        smooth /= max(float(smooth.std()), 1e-6)
        white = rng.standard_normal((h, w), dtype=np.float32)
        out += sigma * np.float32(math.sqrt(0.5)) * (smooth + white)
    holes = (depth < min_depth) | (depth > max_depth)
    if dropout > 0:
        # Range: returns thin out beyond 80 % of the maximum range.
        far = np.clip((depth - 0.8 * max_depth) / (0.2 * max_depth), 0.0, 1.0)
        u = rng.uniform(size=(h, w)).astype(np.float32)
        holes |= u < far
        # Grazing angles.
        holes |= incidence < 0.2
        holes |= (incidence < 0.35) & (u > 0.5 + (incidence - 0.2) / 0.3)
        # Depth edges: the pixel on the far side of a jump is in the projector's shadow.
        d = np.where(valid, depth, np.float32(0.0))
        # A jump is a depth step larger than a smooth surface makes between neighbouring pixels at 320 px
        # width (coarser images step further on the same surface).
        jump = (0.04 + 0.03 * d) * np.float32(max(1.0, 320.0 / w))
        edge = np.zeros((h, w), dtype=bool)
        edge[:, 1:] |= (d[:, 1:] - d[:, :-1]) > jump[:, 1:]
        edge[:, :-1] |= (d[:, :-1] - d[:, 1:]) > jump[:, :-1]
        edge[1:, :] |= (d[1:, :] - d[:-1, :]) > jump[1:, :]
        edge[:-1, :] |= (d[:-1, :] - d[1:, :]) > jump[:-1, :]
        grow = edge.copy()  # one more pixel, on about half of the edge
        grow[:, 1:] |= edge[:, :-1] & (u[:, 1:] < 0.5)
        holes |= grow
        # Glass lets the pattern through: almost no return.
        if glass is not None:
            holes |= glass & (u < 0.9)
        # Dark surfaces absorb the projected pattern.
        if luminance is not None:
            holes |= u < np.clip((0.12 - luminance) / 0.12, 0.0, 1.0) * 0.8
        holes |= _random_holes(rng, h, w, dropout)
    out[holes | ~valid | (out <= 0)] = 0.0
    return out


def shift_image(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """(H, W, C) image moved by (dx, dy) pixels (bilinear, edges repeated): colour-depth misregistration."""
    if dx == 0 and dy == 0:
        return image
    h, w = image.shape[:2]
    x = np.clip(np.arange(w, dtype=np.float32) - dx, 0, w - 1)
    y = np.clip(np.arange(h, dtype=np.float32) - dy, 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[None, :, None]
    fy = (y - y0)[:, None, None]
    rows = image[y0] * (1 - fy) + image[y1] * fy
    return (rows[:, x0] * (1 - fx) + rows[:, x1] * fx).astype(image.dtype, copy=False)


def exposure_gains(rng: np.random.Generator, frames: int, variation: float) -> np.ndarray:
    """(frames, 3) per-frame colour gains: auto-exposure (slow, ``variation`` std in log) and white balance."""
    if variation <= 0 or frames == 0:
        return np.ones((frames, 3))
    slow = correlated_noise(rng, frames, 1, 30.0)[:, 0] * variation
    balance = 1.0 + 0.3 * variation * (rng.uniform(-1, 1, 3))
    return np.exp(slow)[:, None] * balance[None, :]


def move_times(rng: np.random.Generator, frames: int, count: int) -> list[int]:
    """Frame indices (sorted) at which ``count`` objects move: each in the middle half of the scan."""
    lo, hi = max(1, frames // 4), max(2, (3 * frames) // 4)
    return sorted(int(v) for v in rng.integers(lo, hi, size=count)) if frames > 1 else [0] * count
