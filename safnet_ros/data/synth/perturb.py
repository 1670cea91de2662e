"""The paper's 2D-3D mismatch knobs: sensor noise, pose errors, moved objects, lost tracking.

All functions take a ``numpy.random.Generator`` and are deterministic given it.

- :func:`noisy_depth`: Gaussian depth noise growing with depth,
  ``sigma(z) = noise * (1 + (z / 2 m)^2)``, plus dropout holes like a structured
  light sensor (grazing-angle pixels, smooth blobs and speckle).
- :func:`recorded_poses`: what the tracker "recorded" vs the pose used to
  render: per-frame jitter (rotation and translation, in the camera frame) and an
  accumulated random-walk drift along the trajectory (translation and yaw).
- :func:`invalid_frames`: frames whose pose is written as ``-inf`` (lost
  tracking, in short bursts as in ScanNet).
- :func:`move_objects`: movable furniture displaced between the scanned mesh and
  the frames (the mesh keeps the original placement).
"""
from __future__ import annotations

import math

import numpy as np

from safnet_ros.data.synth.rooms import Room, SceneObject, footprint, move_object

#: Yaw drift per metre of translation drift (degrees per metre): --pose-drift 0.05 -> 0.25 deg.
YAW_DRIFT_DEG_PER_M = 5.0


def noisy_depth(rng: np.random.Generator, depth: np.ndarray, incidence: np.ndarray, noise: float,
                dropout: float) -> np.ndarray:
    """Sensor-like depth (H, W) float32 metres from a clean z-depth image (0 = no return).

    ``noise`` is the std in metres at 0 m (see module docstring); ``dropout`` the
    fraction of pixels lost in random blobs/speckle, with grazing-angle pixels
    (|cos| < 0.12) dropped as well whenever ``dropout > 0``.
    """
    from scipy.special import ndtri

    out = depth.astype(np.float32, copy=True)
    h, w = out.shape
    if noise > 0:
        sigma = noise * (1.0 + (out / 2.0) ** 2)
        out += rng.standard_normal((h, w), dtype=np.float32) * sigma.astype(np.float32)
    if dropout > 0:
        holes = incidence < 0.12
        # Smooth blobs: a coarse random field, upsampled, thresholded to ~3/4 of the dropout fraction.
        gh, gw = max(2, h // 12), max(2, w // 12)
        field = rng.standard_normal((gh, gw)).astype(np.float32)
        big = _upsample_bilinear(field, h, w) + 0.35 * rng.standard_normal((h, w), dtype=np.float32)
        # big ~ N(0, 1 + 0.35^2): threshold at the normal quantile instead of sorting the image.
        holes |= big > float(ndtri(1.0 - 0.75 * dropout)) * math.sqrt(1.0 + 0.35 ** 2)
        holes |= rng.uniform(size=(h, w)) < 0.25 * dropout
        out[holes] = 0.0
    out[(depth <= 0) | (out <= 0)] = 0.0
    return out


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


def _rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """(N, 3) rotation vectors (radians) -> (N, 3, 3) rotation matrices."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rv).as_matrix()


def recorded_poses(rng: np.random.Generator, poses: np.ndarray, noise_m: float, noise_deg: float,
                   drift_m: float) -> np.ndarray:
    """Recorded camera-to-world poses (F, 4, 4) from the true ones.

    Per frame, a random rotation (std ``noise_deg`` per axis) and translation
    (std ``noise_m`` per axis) applied in the camera frame; plus drift: a random
    walk whose end-point std is ``drift_m`` metres per axis in the world (and
    ``drift_m * YAW_DRIFT_DEG_PER_M`` degrees of yaw about the camera centre).
    """
    f = len(poses)
    out = poses.copy()
    if f == 0:
        return out
    if noise_m > 0 or noise_deg > 0:
        rv = rng.standard_normal((f, 3)) * math.radians(noise_deg)
        dt = rng.standard_normal((f, 3)) * noise_m
        jitter = np.tile(np.eye(4), (f, 1, 1))
        jitter[:, :3, :3] = _rotvec_to_matrix(rv)
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
        out[:, :3, :3] = np.einsum("fij,fjk->fik", _rotvec_to_matrix(rz), out[:, :3, :3])
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


def move_objects(rng: np.random.Generator, room: Room, amount: float) -> tuple[list[SceneObject], list[dict]]:
    """Displace movable objects (aligned frame) for the frames; the mesh keeps the originals.

    ``amount`` < 1 is a fraction of the movable objects (at least one when > 0),
    >= 1 a count. Each chosen object is shifted 0.3-0.8 m and turned up to
    ~30 degrees where it stays inside the room and clear of other objects'
    footprints (40 tries, otherwise it stays put). Returns the objects as seen
    by the camera and a record per moved object (objectId, category, dx, dy,
    dyaw in the aligned frame).
    """
    objects = list(room.objects)
    movable = [i for i, o in enumerate(objects) if o.movable]
    if amount <= 0 or not movable:
        return objects, []
    n = int(math.floor(amount)) if amount >= 1 else max(1, int(round(amount * len(movable))))
    n = min(n, len(movable))
    chosen = [movable[int(k)] for k in rng.permutation(len(movable))[:n]]
    shell = {"wall", "floor", "ceiling"}
    moved: list[dict] = []
    margin = 0.05
    for i in sorted(chosen):
        others = [footprint(o) for k, o in enumerate(objects) if k != i and o.category not in shell]
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
