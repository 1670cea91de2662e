"""Drop-in for ``tf2_ros.Buffer``: a thread-safe tree of time-stamped transforms (no rclpy needed).

Interpolates each link (linear translation, quaternion slerp) and chains links
through the common ancestor, raising the tf2 exceptions of
:mod:`safnet_ros.ros.tf_errors`.  Fed by :mod:`safnet_ros.ros.tf_topics`'
listener.  See docs/ros_compat.md.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped

from safnet_ros.ros.codecs import ns_to_stamp, stamp_to_ns
from safnet_ros.ros.tf_errors import (
    ConnectivityException,
    ExtrapolationException,
    InvalidArgumentException,
    LookupException,
    TransformException,
)


def _duration_ns(duration: Any) -> int:
    """Nanoseconds of an rclpy Duration, a builtin_interfaces/Duration, seconds (float) or None (0)."""
    if duration is None:
        return 0
    if hasattr(duration, "nanoseconds"):
        return int(duration.nanoseconds)
    if hasattr(duration, "sec") and hasattr(duration, "nanosec"):
        return int(duration.sec) * 1_000_000_000 + int(duration.nanosec)
    return int(round(float(duration) * 1e9))


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions (x, y, z, w)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector ``v`` (3,) by unit quaternion ``q`` (x, y, z, w)."""
    u, w = q[:3], q[3]
    uv = np.cross(u, v)
    return v + 2.0 * (w * uv + np.cross(u, uv))


def _quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def _slerp(q0: np.ndarray, q1: np.ndarray, ratio: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions along the shorter arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: normalised lerp is accurate and stable
        out = q0 + ratio * (q1 - q0)
        return out / np.linalg.norm(out)
    theta = math.acos(min(dot, 1.0))
    s = math.sin(theta)
    return (math.sin((1.0 - ratio) * theta) * q0 + math.sin(ratio * theta) * q1) / s


def _compose(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``a ∘ b`` for rigid transforms as (translation (3,), quaternion (4,))."""
    return a[0] + _quat_rotate(a[1], b[0]), _quat_mul(a[1], b[1])


def _invert(a: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    qi = _quat_conj(a[1])
    return -_quat_rotate(qi, a[0]), qi


_IDENTITY = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))


class _Link:
    """History of one child frame's transform to its parent (T_parent_child), sorted by stamp."""

    __slots__ = ("parent", "static", "stamps", "translations", "rotations", "authority")

    def __init__(self, parent: str, static: bool, authority: str) -> None:
        self.parent = parent
        self.static = static
        self.authority = authority
        self.stamps: list[int] = []
        self.translations: list[np.ndarray] = []
        self.rotations: list[np.ndarray] = []

    def insert(self, stamp: int, translation: np.ndarray, rotation: np.ndarray, cache_ns: int) -> None:
        if self.static:
            self.stamps, self.translations, self.rotations = [stamp], [translation], [rotation]
            return
        pos = bisect.bisect_left(self.stamps, stamp)
        if pos < len(self.stamps) and self.stamps[pos] == stamp:
            self.translations[pos], self.rotations[pos] = translation, rotation
        else:
            self.stamps.insert(pos, stamp)
            self.translations.insert(pos, translation)
            self.rotations.insert(pos, rotation)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if cut:
            del self.stamps[:cut], self.translations[:cut], self.rotations[:cut]

    def at(self, stamp: int, child: str) -> tuple[np.ndarray, np.ndarray]:
        """T_parent_child at ``stamp`` (ns): linear translation, slerp rotation between the bracketing entries."""
        if self.static:
            return self.translations[0], self.rotations[0]
        stamps = self.stamps
        if stamp > stamps[-1] or stamp < stamps[0]:
            direction = "future" if stamp > stamps[-1] else "past"
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the {direction}. Requested time "
                f"{stamp / 1e9:.9f} but the data for [{self.parent}] -> [{child}] spans "
                f"{stamps[0] / 1e9:.9f} .. {stamps[-1] / 1e9:.9f}"
            )
        k = bisect.bisect_left(stamps, stamp)
        if stamps[k] == stamp:
            return self.translations[k], self.rotations[k]
        t0, t1 = stamps[k - 1], stamps[k]
        ratio = (stamp - t0) / (t1 - t0)
        translation = self.translations[k - 1] + ratio * (self.translations[k] - self.translations[k - 1])
        return translation, _slerp(self.rotations[k - 1], self.rotations[k], ratio)


def _strip(frame_id: str) -> str:
    return str(frame_id).lstrip("/")

class FallbackBuffer:
    """tf2_ros.Buffer drop-in: a thread-safe tree of time-stamped transforms.

    ``set_transform`` / ``set_transform_static`` store geometry_msgs
    TransformStamped (T_parent_child: header.frame_id = parent,
    child_frame_id = child); each child has one parent (a new parent replaces
    the child's history).  Dynamic links keep ``cache_time`` (default 10 s)
    behind their newest stamp; data older than that is rejected (counted in
    ``num_rejected``, like tf2's TF_OLD_DATA), so when a bag loops the caller
    must :meth:`clear` (docs/design.md §3.6); given ``node=``, the buffer does that itself
    when the node's ROS clock (``/clock`` under sim time) jumps back, as
    tf2_ros' Buffer does.  ``lookup_transform(target, source, time)``
    returns T_target_source (maps points in ``source`` into ``target``),
    interpolating each link between its two bracketing stamps (linear
    translation, quaternion slerp) and chaining links through the common
    ancestor; ``time`` zero means the latest time that every link has data.
    A positive ``timeout`` waits (wall clock) for data to arrive — never do
    that inside an executor callback (docs/design.md §3.5).
    """

    def __init__(self, cache_time: Any = None, node: Any = None) -> None:
        self.cache_ns = _duration_ns(cache_time) if cache_time is not None else 10 * 1_000_000_000
        self.node = node
        self._cond = threading.Condition(threading.RLock())
        self._links: dict[str, _Link] = {}
        self.num_rejected = 0
        self.num_clock_jumps = 0
        self._jump_handle = None
        if node is not None:  # as tf2_ros.Buffer(node=...): clear when the node's ROS clock jumps back
            from rclpy.clock import JumpThreshold
            from rclpy.duration import Duration

            self._jump_handle = node.get_clock().create_jump_callback(
                JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1.0), on_clock_change=True),
                post_callback=self._on_clock_jump,
            )

    def _on_clock_jump(self, jump: Any) -> None:
        """The node's clock jumped back at least 1 s, or switched to/from ROS time: forget dynamic data."""
        if jump.delta.nanoseconds < 0 or "ACTIVATED" in str(jump.clock_change):
            self.num_clock_jumps += 1
            self.clear()

    def close(self) -> None:
        """Stop watching the node's clock (idempotent)."""
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None

    # ---------------------------------------------------------------- writing
    def set_transform(self, transform: TransformStamped, authority: str) -> bool:
        """Store a dynamic transform; False (and ``num_rejected`` + 1) when it is invalid or too old."""
        return self._set(transform, authority, static=False)

    def set_transform_static(self, transform: TransformStamped, authority: str) -> bool:
        """Store a transform valid at every time."""
        return self._set(transform, authority, static=True)

    def _set(self, transform: TransformStamped, authority: str, static: bool) -> bool:
        parent = _strip(transform.header.frame_id)
        child = _strip(transform.child_frame_id)
        tr = transform.transform.translation
        ro = transform.transform.rotation
        translation = np.array([tr.x, tr.y, tr.z], dtype=np.float64)
        rotation = np.array([ro.x, ro.y, ro.z, ro.w], dtype=np.float64)
        norm = float(np.linalg.norm(rotation))
        valid = (
            parent and child and parent != child
            and np.isfinite(translation).all() and np.isfinite(rotation).all() and norm > 1e-6
        )
        with self._cond:
            if not valid:
                self.num_rejected += 1
                return False
            stamp = stamp_to_ns(transform.header.stamp)
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static:
                link = _Link(parent, static, authority)
                self._links[child] = link
            elif not static and link.stamps and stamp < link.stamps[-1] - self.cache_ns:
                self.num_rejected += 1
                return False
            link.insert(stamp, translation, rotation / norm, self.cache_ns)
            self._cond.notify_all()
            return True

    def clear(self) -> None:
        """Forget every dynamic transform (call when time jumps back, e.g. a looping bag).

        Static transforms stay, as in tf2 (they are valid at every time and a
        transient-local topic would not send them again).
        """
        with self._cond:
            self._links = {child: link for child, link in self._links.items() if link.static}

    # ---------------------------------------------------------------- reading
    def all_frames(self) -> list[str]:
        """Every frame id known to the buffer, sorted."""
        with self._cond:
            return sorted(set(self._links) | {link.parent for link in self._links.values()})

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root."""
        chain = [frame]
        seen = {frame}
        while chain[-1] in self._links:
            parent = self._links[chain[-1]].parent
            if parent in seen:
                raise ConnectivityException(f"frames {chain} form a loop")
            chain.append(parent)
            seen.add(parent)
        return chain

    def _lookup(self, target: str, source: str, stamp: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """(time used, T_target_source); raises the tf2 exceptions."""
        target, source = _strip(target), _strip(source)
        for name, frame in (("target_frame", target), ("source_frame", source)):
            if not frame:
                raise InvalidArgumentException(f"{name} is empty: frame ids cannot be empty")
        if target == source:  # as tf2: identity, even for a frame it has not seen
            return stamp, _IDENTITY
        known = set(self._links) | {link.parent for link in self._links.values()}
        for name, frame in (("target_frame", target), ("source_frame", source)):
            if frame not in known:
                raise LookupException(f'"{frame}" passed to lookup_transform argument {name} does not exist.')
        up_source = self._chain(source)
        up_target = self._chain(target)
        target_set = set(up_target)
        common = next((f for f in up_source if f in target_set), None)
        if common is None:
            raise ConnectivityException(
                f"Could not find a connection between '{target}' and '{source}' because they are not "
                f"part of the same tree (roots '{up_target[-1]}' and '{up_source[-1]}')."
            )
        source_links = up_source[: up_source.index(common)]
        target_links = up_target[: up_target.index(common)]
        links = source_links + target_links
        if stamp == 0:
            dynamic = [self._links[c].stamps[-1] for c in links if not self._links[c].static]
            stamp = min(dynamic) if dynamic else 0
        common_source = _IDENTITY
        for child in source_links:  # T_common_source = T_common_p ∘ ... ∘ T_p_source
            common_source = _compose(self._links[child].at(stamp, child), common_source)
        common_target = _IDENTITY
        for child in target_links:
            common_target = _compose(self._links[child].at(stamp, child), common_target)
        return stamp, _compose(_invert(common_target), common_source)

    def _wait_lookup(
        self, target: str, source: str, time_: Any, timeout: Any
    ) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        stamp = stamp_to_ns(time_)
        deadline = time.monotonic() + _duration_ns(timeout) / 1e9
        with self._cond:
            while True:
                try:
                    return self._lookup(target, source, stamp)
                except TransformException:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._cond.wait(remaining)

    def lookup_transform(
        self, target_frame: str, source_frame: str, time: Any, timeout: Any = None
    ) -> TransformStamped:
        """TransformStamped T_target_source at ``time`` (rclpy Time, builtin Time, int ns; zero = latest).

        Raises LookupException, ConnectivityException, ExtrapolationException,
        InvalidArgumentException (the tf2 classes where tf2_ros is installed).
        """
        stamp, (translation, rotation) = self._wait_lookup(target_frame, source_frame, time, timeout)
        out = TransformStamped()
        out.header.frame_id = _strip(target_frame)
        out.header.stamp = ns_to_stamp(stamp)
        out.child_frame_id = _strip(source_frame)
        out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = map(float, translation)
        q = rotation / np.linalg.norm(rotation)
        r = out.transform.rotation
        r.x, r.y, r.z, r.w = map(float, q)
        return out

    def can_transform(
        self,
        target_frame: str,
        source_frame: str,
        time: Any,
        timeout: Any = None,
        return_debug_tuple: bool = False,
    ) -> bool | tuple[bool, str]:
        """Whether :meth:`lookup_transform` would succeed (optionally with the reason why not)."""
        try:
            self._wait_lookup(target_frame, source_frame, time, timeout)
        except TransformException as exc:
            return (False, str(exc)) if return_debug_tuple else False
        return (True, "") if return_debug_tuple else True
