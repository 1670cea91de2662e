"""Drop-in for ``tf2_ros.Buffer``: a thread-safe :class:`~safnet_ros.ros.tf_tree.TfTree` of time-stamped transforms.

Fed by :mod:`safnet_ros.ros.tf_topics`' listener; raises the drop-in tf2
exceptions of :mod:`safnet_ros.ros.tf_tree` (bound as ``compat.*Exception``
wherever tf2_ros is absent).  See docs/ros_compat.md.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration

from safnet_ros.ros.codecs import stamp_to_ns
from safnet_ros.ros.tf_tree import FallbackTransformException, TfTree, strip_frame
from safnet_ros.ros.transforms import matrix_to_transform


class FallbackBuffer:
    """tf2_ros.Buffer drop-in: a thread-safe tree of time-stamped transforms (docs/ros_compat.md, "What the
    drop-in Buffer does"). Dynamic links keep ``cache_time`` (default 10 s) behind their newest stamp; given
    ``node=`` it clears itself when the node's ROS clock jumps back, as tf2_ros' Buffer does. A positive
    lookup ``timeout`` waits (wall clock) for data: never inside an executor callback.
    """

    def __init__(self, cache_time: Any = None, node: Any = None) -> None:
        self.cache_ns = stamp_to_ns(cache_time) if cache_time is not None else 10 * 1_000_000_000
        self.node = node
        self._cond = threading.Condition(threading.RLock())
        self._tree = TfTree(self.cache_ns)
        self._jump_handle = None
        if node is not None:  # as tf2_ros.Buffer(node=...): clear when the node's ROS clock jumps back
            self._jump_handle = node.get_clock().create_jump_callback(
                JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1.0), on_clock_change=True),
                post_callback=self._on_clock_jump,
            )

    @property
    def num_rejected(self) -> int:
        return self._tree.num_rejected

    def _on_clock_jump(self, jump: Any) -> None:
        """The node's clock jumped back at least 1 s, or switched to/from ROS time: forget dynamic data."""
        if jump.delta.nanoseconds < 0 or "ACTIVATED" in str(jump.clock_change):
            self.clear()

    def close(self) -> None:
        """Stop watching the node's clock (idempotent)."""
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None

    # ---------------------------------------------------------------- writing
    def set_transform(self, transform: TransformStamped, authority: str) -> bool:
        """Store a dynamic transform (``authority`` is not kept); False (and ``num_rejected`` + 1) when it is
        invalid or too old."""
        return self._set(transform, static=False)

    def set_transform_static(self, transform: TransformStamped, authority: str) -> bool:
        """Store a transform valid at every time."""
        return self._set(transform, static=True)

    def _set(self, transform: TransformStamped, static: bool) -> bool:
        with self._cond:
            added = self._tree.add(transform, static)
            if added:
                self._cond.notify_all()
            return added

    def clear(self) -> None:
        """Forget every dynamic transform (time jumped back, e.g. a looping bag); static ones stay, as in tf2."""
        with self._cond:
            self._tree.clear()

    # ---------------------------------------------------------------- reading
    def all_frames(self) -> list[str]:
        """Every frame id known to the buffer, sorted."""
        with self._cond:
            return sorted(self._tree.frames())

    def _wait_lookup(self, target: str, source: str, time_: Any, timeout: Any) -> tuple[int, np.ndarray]:
        stamp = stamp_to_ns(time_)
        deadline = time.monotonic() + stamp_to_ns(timeout) / 1e9
        with self._cond:
            while True:
                try:
                    return self._tree.lookup(target, source, stamp)
                except FallbackTransformException:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._cond.wait(remaining)

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any,
                         timeout: Any = None) -> TransformStamped:
        """TransformStamped T_target_source at ``time`` (rclpy Time, builtin Time, int ns; zero = latest).

        Raises LookupException, ConnectivityException, ExtrapolationException,
        InvalidArgumentException (the tf2 classes where tf2_ros is installed).
        """
        stamp, matrix = self._wait_lookup(target_frame, source_frame, time, timeout)
        return matrix_to_transform(matrix, strip_frame(target_frame), strip_frame(source_frame), stamp=stamp)

    def can_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = None,
                      return_debug_tuple: bool = False) -> bool | tuple[bool, str]:
        """Whether :meth:`lookup_transform` would succeed (optionally with the reason why not)."""
        try:
            self._wait_lookup(target_frame, source_frame, time, timeout)
        except FallbackTransformException as exc:
            return (False, str(exc)) if return_debug_tuple else False
        return (True, "") if return_debug_tuple else True
