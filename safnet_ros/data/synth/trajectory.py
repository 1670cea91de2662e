"""A handheld-scanner-like camera path through a room.

The camera walks a rounded-rectangle loop at least 1.3 m inside the walls (28 % of
the room's size from each wall), at
1.2-1.7 m height, looking outwards at the walls and the furniture along them
with a slow sideways sway (so it also glances along the walls and into the
middle of the room), pitched down 13-37 degrees, with a little roll and hand
jitter. All motion is smooth (sums of low-frequency sinusoids of the loop
angle) and deterministic given the generator.

Speed along the loop sets how much consecutive frames overlap: by default the
``frames`` frames cover exactly one loop; ``overlap`` in (0, 1) instead makes the
view direction advance ``(1 - overlap)`` of the horizontal field of view per
frame (0.98 -> 2 % new content per frame; lower values give sparser, faster
scans that may loop several times).
"""
from __future__ import annotations

import math

import numpy as np


def look_at_pose(position: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV optical axes, for a camera at ``position`` (3,) metres.

    ``yaw`` is the heading about +z (0 = looking along +x), ``pitch`` > 0 looks
    down, ``roll`` rotates about the optical axis (radians).
    """
    f = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    cr, sr = math.cos(roll), math.sin(roll)
    x = cr * right + sr * down
    y = -sr * right + cr * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, f, position
    return pose


def handheld_trajectory(rng: np.random.Generator, width: float, depth: float, frames: int,
                        overlap: float | None = None, hfov_deg: float = 58.0, margin: float = 1.3) -> np.ndarray:
    """(frames, 4, 4) camera-to-world poses in the room's aligned frame ``[0, W] x [0, D]``.

    See the module docstring for the motion model; ``margin`` is the distance
    of the loop from the walls in metres.
    """
    if frames <= 0:
        return np.zeros((0, 4, 4))
    if overlap is None:
        step = 2 * math.pi / frames
    else:
        step = (1.0 - float(overlap)) * math.radians(hfov_deg)
    phi0 = float(rng.uniform(0, 2 * math.pi))
    direction = 1.0 if rng.uniform() < 0.5 else -1.0
    phi = phi0 + direction * step * np.arange(frames)
    ph = rng.uniform(0, 2 * math.pi, size=8)
    a = max(min(width / 2 - margin, 0.22 * width), 0.3)
    b = max(min(depth / 2 - margin, 0.22 * depth), 0.3)
    # Rounded rectangle (smooth: tanh-squashed circle), with a slow radial wobble.
    k = 1.8
    c, s = np.tanh(k * np.cos(phi)) / math.tanh(k), np.tanh(k * np.sin(phi)) / math.tanh(k)
    wobble = 1.0 + 0.06 * np.sin(3 * phi + ph[0])
    x = width / 2 + a * c * wobble
    y = depth / 2 + b * s * wobble
    z = 1.45 + 0.18 * np.sin(2 * phi + ph[1]) + 0.05 * np.sin(7 * phi + ph[2])
    outward = np.arctan2(y - depth / 2, (x - width / 2) * (depth / width))
    yaw = outward + 0.9 * np.sin(2 * phi + ph[3]) + 0.25 * np.sin(5 * phi + ph[4])
    pitch = np.radians(25.0 + 12.0 * np.sin(3 * phi + ph[5]))
    roll = np.radians(3.0 * np.sin(4 * phi + ph[6]))
    # Hand jitter: small, smooth, a few mm and a fraction of a degree.
    t = np.arange(frames)
    jitter = 0.004 * np.stack([np.sin(0.31 * t + ph[7]), np.sin(0.23 * t + ph[0]), np.sin(0.37 * t + ph[1])], 1)
    pos = np.stack([x, y, z], 1) + jitter
    yaw = yaw + np.radians(0.3) * np.sin(0.29 * t + ph[2])
    return np.stack([look_at_pose(pos[i], yaw[i], pitch[i], roll[i]) for i in range(frames)])
