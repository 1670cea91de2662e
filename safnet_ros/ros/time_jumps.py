"""Time going back, judged per input stream and on the node's ROS clock (a looping bag, a restarted driver).

Sensors do not share one timeline: a LiDAR pipeline can deliver clouds stamped
seconds behind the newest camera frame, and that is not time going back.  So
each input (``frames``, ``clouds``) is compared with **its own** newest stamp,
and under ``use_sim_time`` the ROS clock fed by ``/clock`` is watched through
an rclpy jump handler (:func:`watch_clock_jumps`), the clock whose jumps
tf2's Buffer also listens to.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration

from safnet_ros.engine.view_buffer import TimeJumpDetector


class StreamTimeJumps:
    """One :class:`TimeJumpDetector` per named input stream, sharing one tolerance (seconds)."""

    def __init__(self, streams: Iterable[str], tolerance: float):
        self._detectors = {name: TimeJumpDetector(tolerance) for name in streams}

    def set_tolerance(self, seconds: float) -> None:
        """The tolerance of every stream (run-time parameter ``time_jump_tolerance``)."""
        for detector in self._detectors.values():
            detector.tolerance = float(seconds)

    def check(self, stream: str, stamp_s: float) -> Optional[float]:
        """The stream's previous newest stamp when ``stamp_s`` went back beyond the tolerance, else None."""
        detector = self._detectors[stream]
        newest = detector.newest
        return newest if detector.check(stamp_s) else None

    def reset(self) -> None:
        """Forget every stream's newest stamp (a new activation starts a new timeline)."""
        for detector in self._detectors.values():
            detector.reset()


def watch_clock_jumps(node: Any, tolerance_s: float, on_jump_back: Callable[[float], None]) -> Any:
    """Call ``on_jump_back(seconds back)`` when the node's ROS clock jumps back (``/clock`` under sim time).

    Returns the rclpy JumpHandle (keep it; ``unregister()`` it to stop).
    Switching between system and ROS time is not a jump.  rclpy wants a
    non-zero backward threshold, so a tolerance of 0 means 1 ns.
    """
    threshold = JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-max(int(tolerance_s * 1e9), 1)),
                              on_clock_change=False)

    def post(jump: Any) -> None:
        if jump.clock_change in (ClockChange.ROS_TIME_NO_CHANGE, ClockChange.SYSTEM_TIME_NO_CHANGE) \
                and jump.delta.nanoseconds < 0:
            on_jump_back(-jump.delta.nanoseconds / 1e9)

    return node.get_clock().create_jump_callback(threshold, post_callback=post)


__all__ = ["StreamTimeJumps", "watch_clock_jumps"]
