"""Drop-in for ``message_filters``: Subscriber, ApproximateTimeSynchronizer, TimeSynchronizer.

Same call shapes as ROS 2's ``message_filters`` (which a pip-only machine lacks);
:mod:`safnet_ros.ros.compat` binds the public names to the real library where
it imports.  See docs/ros_compat.md.
"""
from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from safnet_ros.ros.codecs import stamp_to_ns


class FallbackSimpleFilter:
    """Base of the drop-in filters: callbacks registered with extra arguments, called in order."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._next_connection = itertools.count()

    def registerCallback(self, cb: Callable[..., Any], *args: Any) -> int:  # noqa: N802 (ROS name)
        """Call ``cb(*messages, *args)`` on every output; returns a connection id."""
        conn = next(self._next_connection)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 (ROS name)
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class FallbackSubscriber(FallbackSimpleFilter):
    """message_filters.Subscriber: an rclpy subscription that feeds its messages to filters.

    Pass the QoS explicitly (``rclpy.qos.qos_profile_sensor_data`` for sensor
    topics, SPEC §3); the default (depth 10) is reliable.
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
        self.msg_type = msg_type
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos_profile, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 (ROS name)
        return self.topic

    def unregister(self) -> None:
        """Destroy the subscription (idempotent)."""
        if self.sub is not None:
            self.node.destroy_subscription(self.sub)
            self.sub = None


class FallbackApproximateTimeSynchronizer(FallbackSimpleFilter):
    """message_filters.ApproximateTimeSynchronizer: match messages whose stamps lie within ``slop``.

    Policy (greedy, like rclpy's own message_filters: a set is emitted as soon
    as one exists):

    * one queue per input, sorted by stamp, at most ``queue_size`` messages
      (the oldest is dropped); a second message with the same stamp on one
      input replaces the first;
    * a candidate set takes an anchor message and, from every other input,
      the first message at or after the anchor's stamp; it is feasible when
      ``max - min <= slop`` (this is the smallest spread for that anchor);
    * among the feasible sets whose anchor lies within ``slop`` of the oldest
      feasible anchor, the one with the smallest spread wins (ties: older);
    * the set is emitted (callback ``cb(msg_0, ..., msg_{n-1}, *args)`` in
      input order) and, in every queue, its member and everything older are
      removed.

    Dropped messages are counted in ``num_dropped``, emitted sets in
    ``num_emitted``.  Thread safe: ``add`` runs under ``self.lock`` and so do
    the callbacks (SPEC §3: callbacks must only enqueue work and return).
    Headerless messages are stamped with the wall clock when
    ``allow_headerless`` is True, else dropped and counted in
    ``num_headerless``.  ``reset=True`` clears the queues when an input's time
    jumps back (a bag looping).
    """

    def __init__(
        self,
        fs: Sequence[Any],
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        reset: bool = False,
    ) -> None:
        super().__init__()
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(float(slop) * 1e9))
        self.allow_headerless = bool(allow_headerless)
        self.reset = bool(reset)
        self.lock = threading.RLock()
        self.num_dropped = 0
        self.num_emitted = 0
        self.num_headerless = 0
        self.num_resets = 0
        self.queues: list[list[tuple[int, Any]]] = []
        self._latest: list[int | None] = []
        self.input_connections: list[int] = []
        self.connectInput(fs)

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 (ROS name)
        """Listen to the filters ``fs`` (one queue each, in order)."""
        with self.lock:
            self.queues = [[] for _ in fs]
            self._latest = [None for _ in fs]
            self.input_connections = [f.registerCallback(self.add, i) for i, f in enumerate(fs)]

    def add(self, msg: Any, queue_index: int) -> None:
        """Put ``msg`` into input ``queue_index`` and emit every set that is now complete."""
        header = getattr(msg, "header", None)
        with self.lock:
            if header is None or not hasattr(header, "stamp"):
                if not self.allow_headerless:
                    self.num_headerless += 1
                    self.num_dropped += 1
                    return
                stamp = time.time_ns()
            else:
                stamp = stamp_to_ns(header.stamp)
            latest = self._latest[queue_index]
            if self.reset and latest is not None and stamp < latest:
                self.num_dropped += sum(len(q) for q in self.queues)
                self.num_resets += 1
                for q in self.queues:
                    q.clear()
                self._latest = [None for _ in self.queues]
            self._latest[queue_index] = stamp if latest is None else max(latest, stamp)
            queue = self.queues[queue_index]
            stamps = [s for s, _ in queue]
            pos = bisect.bisect_left(stamps, stamp)
            if pos < len(queue) and queue[pos][0] == stamp:
                queue[pos] = (stamp, msg)
                self.num_dropped += 1
            else:
                queue.insert(pos, (stamp, msg))
            while len(queue) > self.queue_size:
                queue.pop(0)
                self.num_dropped += 1
            while self._emit_best():
                pass

    def _emit_best(self) -> bool:
        """Emit the best feasible set (see the class docstring); False when there is none."""
        if not self.queues or any(not q for q in self.queues):
            return False
        stamps = [[s for s, _ in q] for q in self.queues]
        candidates: list[tuple[int, int, list[int]]] = []  # (anchor stamp, spread, member index per queue)
        for a, anchor_stamps in enumerate(stamps):
            for ia, t in enumerate(anchor_stamps):
                members: list[int] = []
                top = t
                for j, sj in enumerate(stamps):
                    if j == a:
                        members.append(ia)
                        continue
                    k = bisect.bisect_left(sj, t)
                    if k == len(sj) or sj[k] - t > self.slop_ns:
                        break
                    members.append(k)
                    top = max(top, sj[k])
                else:
                    candidates.append((t, top - t, members))
        if not candidates:
            return False
        oldest = min(c[0] for c in candidates)
        near = [c for c in candidates if c[0] <= oldest + self.slop_ns]
        _, _, members = min(near, key=lambda c: (c[1], c[0]))
        msgs = [self.queues[j][k][1] for j, k in enumerate(members)]
        for j, k in enumerate(members):
            self.num_dropped += k  # older, never matched
            del self.queues[j][: k + 1]
        self.num_emitted += 1
        self.signalMessage(*msgs)
        return True


class FallbackTimeSynchronizer(FallbackApproximateTimeSynchronizer):
    """message_filters.TimeSynchronizer: sets whose stamps are all exactly equal."""

    def __init__(self, fs: Sequence[Any], queue_size: int, reset: bool = False) -> None:
        super().__init__(fs, queue_size, 0.0, allow_headerless=False, reset=reset)
