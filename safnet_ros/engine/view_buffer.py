"""A rolling buffer of posed RGB-D views for streaming segmentation (the ROS node, bag replay).

Views arrive far faster (30 Hz) than clouds are segmented and consecutive frames see almost the
same thing, so the buffer keeps *keyframes* only, within a count and a memory bound; a view stamped
more than ``jump_tolerance`` seconds before the newest seen (a bag that loops) clears it first.
The rules: docs/ros_node.md, "The view buffer". Pure python + numpy (no rclpy), thread safe.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from safnet_ros.engine.batching import PosedView
from safnet_ros.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class KeyframePolicy:
    """When a new view is worth keeping: ``min_interval`` seconds (message stamps) since the
    camera's last kept view and, unless both are 0, ``min_translation`` metres of camera-centre
    motion or ``min_rotation_deg`` degrees of rotation (angle of R_last^T R_new) from it; a
    threshold of 0 switches its criterion off. The first view of each camera is always kept.
    """

    min_translation: float = 0.05
    min_rotation_deg: float = 5.0
    min_interval: float = 0.2

    def __post_init__(self) -> None:
        for name in ("min_translation", "min_rotation_deg", "min_interval"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"keyframe {name} must be a finite number >= 0, got {value}")


def pose_delta(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(translation metres, rotation degrees) between two (4, 4) camera-to-world poses."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    translation = float(np.linalg.norm(b[:3, 3] - a[:3, 3]))
    rel = a[:3, :3].T @ b[:3, :3]
    cos = (np.trace(rel) - 1.0) / 2.0
    rotation = math.degrees(math.acos(min(1.0, max(-1.0, float(cos)))))
    return translation, rotation


def view_nbytes(view: PosedView) -> int:
    """Bytes held by one view's arrays (colour, depth, labels, K, pose)."""
    arrays = (view.color, view.depth, view.labels, view.K, view.camera_to_world)
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)


@dataclass
class ViewBufferStats:
    """Counters since construction (never reset by :meth:`ViewBuffer.clear`)."""

    offered: int = 0
    kept: int = 0
    not_keyframe: int = 0
    too_large: int = 0
    invalid: int = 0
    evicted_count: int = 0
    evicted_memory: int = 0
    clears: int = 0
    time_jumps: int = 0


class TimeJumpDetector:
    """Notices time going backwards (a looping bag) in a stream of stamps.

    ``check(stamp)`` returns True when ``stamp`` lies more than ``tolerance``
    seconds before the newest stamp seen so far (``inf``: never); the detector
    then restarts from ``stamp``. Small reorderings between topics (within ``tolerance``)
    are not jumps. Thread safe.
    """

    def __init__(self, tolerance: float = 1.0):
        if math.isnan(tolerance) or tolerance < 0:
            raise ConfigError(f"time jump tolerance must be >= 0 seconds (inf: never), got {tolerance}")
        self.tolerance = float(tolerance)
        self.newest: Optional[float] = None
        self._lock = threading.Lock()

    def check(self, stamp: float) -> bool:
        with self._lock:
            if self.newest is not None and stamp < self.newest - self.tolerance:
                self.newest = float(stamp)
                return True
            if self.newest is None or stamp > self.newest:
                self.newest = float(stamp)
            return False

    def reset(self) -> None:
        with self._lock:
            self.newest = None


class ViewBuffer:
    """Bounded, keyframe-filtered store of :class:`PosedView` (see the module docstring).

    Views must carry ``stamp`` (seconds) and a camera-to-world pose in one fixed frame.
    """

    def __init__(
        self,
        max_views: int = 30,
        max_mb: float = 256.0,
        policy: KeyframePolicy = KeyframePolicy(),
        jump_tolerance: float = 1.0,
    ):
        self._jumps = TimeJumpDetector(jump_tolerance)
        self._views: deque[tuple[PosedView, int]] = deque()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.stats = ViewBufferStats()
        self.set_limits(max_views, max_mb, policy)  # checks and sets max_views, max_bytes and policy

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffered views' arrays."""
        with self._lock:
            return self._nbytes

    def views(self) -> list[PosedView]:
        """Snapshot of the buffered views, oldest first."""
        with self._lock:
            return [v for v, _ in self._views]

    def last(self, camera: Optional[str] = None) -> Optional[PosedView]:
        """The newest kept view (of ``camera``; None = of any camera), or None."""
        with self._lock:
            return self._last_locked(camera)

    def _last_locked(self, camera: Optional[str]) -> Optional[PosedView]:
        for view, _ in reversed(self._views):
            if camera is None or view.camera == camera:
                return view
        return None

    def decide(self, stamp: float, camera_to_world: np.ndarray, camera: str = "") -> bool:
        """Whether a view of ``camera`` at ``stamp`` with this pose would pass the keyframe policy now.

        Lets a caller skip the costly resize of frames the buffer would refuse.
        Does not count anything and does not look at time jumps.
        """
        with self._lock:
            return self._decide_locked(stamp, camera_to_world, camera)

    def _decide_locked(self, stamp: float, camera_to_world: np.ndarray, camera: str = "") -> bool:
        last = self._last_locked(camera)
        if last is None:
            return True
        policy = self.policy
        if stamp - last.stamp < policy.min_interval:
            return False
        if policy.min_translation <= 0 and policy.min_rotation_deg <= 0:
            return True
        moved, turned = pose_delta(last.camera_to_world, camera_to_world)
        return moved >= policy.min_translation > 0 or turned >= policy.min_rotation_deg > 0

    # ------------------------------------------------------------------ updates
    def offer(self, view: PosedView) -> bool:
        """Keep ``view`` if the policy and the bounds allow; returns whether it was kept.

        A stamp more than ``jump_tolerance`` before the newest seen clears the
        buffer first (``stats.time_jumps``). A view with a non-finite pose or
        stamp is refused (``stats.invalid``).
        """
        stamp = float(view.stamp)
        pose = np.asarray(view.camera_to_world)
        with self._lock:
            self.stats.offered += 1
            if not math.isfinite(stamp) or pose.shape != (4, 4) or not np.isfinite(pose).all():
                self.stats.invalid += 1
                return False
            if self._jumps.check(stamp):
                self.stats.time_jumps += 1
                self._clear_locked()
            if not self._decide_locked(stamp, pose, view.camera):
                self.stats.not_keyframe += 1
                return False
            size = view_nbytes(view)
            if size > self.max_bytes:
                self.stats.too_large += 1
                return False
            while self._views and len(self._views) >= self.max_views:
                self._evict_oldest_locked()
                self.stats.evicted_count += 1
            while self._views and self._nbytes + size > self.max_bytes:
                self._evict_oldest_locked()
                self.stats.evicted_memory += 1
            self._views.append((view, size))
            self._nbytes += size
            self.stats.kept += 1
            return True

    def _evict_oldest_locked(self) -> None:
        _, size = self._views.popleft()
        self._nbytes -= size

    def clear(self) -> None:
        """Forget every view (time went back, or the fixed frame changed)."""
        with self._lock:
            self._clear_locked()
            self._jumps.reset()

    def _clear_locked(self) -> None:
        self._views.clear()
        self._nbytes = 0
        self.stats.clears += 1

    def set_limits(
        self, max_views: Optional[int] = None, max_mb: Optional[float] = None, policy: Optional[KeyframePolicy] = None
    ) -> None:
        """Change the bounds or policy at run time; excess views are evicted (oldest first) now."""
        with self._lock:
            if max_views is not None:
                if int(max_views) < 1:
                    raise ConfigError(f"buffer max_views must be >= 1, got {max_views}")
                self.max_views = int(max_views)
            if max_mb is not None:
                if not math.isfinite(max_mb) or max_mb <= 0:
                    raise ConfigError(f"buffer max_mb must be > 0, got {max_mb}")
                self.max_bytes = int(max_mb * MIB)
            if policy is not None:
                self.policy = policy
            while self._views and (len(self._views) > self.max_views or self._nbytes > self.max_bytes):
                self._evict_oldest_locked()
                self.stats.evicted_count += 1


__all__ = ["KeyframePolicy", "ViewBuffer", "ViewBufferStats", "TimeJumpDetector", "pose_delta", "view_nbytes", "MIB"]
