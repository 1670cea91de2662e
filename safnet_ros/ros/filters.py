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
    topics, docs/design.md §3.4); the default (depth 10) is reliable.
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
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

    Emits exactly the sets ROS 2's Python ``message_filters`` (Jazzy, Kilted) emits; the policy, the
    counters and ``reset`` (a safnet extra: clear the queues when an input's stamps go back):
    docs/ros_compat.md, "message_filters drop-in". Thread safe: ``add`` and the callbacks run under
    ``self.lock``. Headerless messages are stamped with the wall clock when ``allow_headerless``.
    """

    def __init__(self, fs: Sequence[Any], queue_size: int, slop: float, allow_headerless: bool = False,
                 reset: bool = False) -> None:
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
        self.num_dropped = self.num_emitted = self.num_headerless = self.num_resets = 0
        self._next_arrival = itertools.count()
        self.connectInput(fs)

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 (ROS name)
        """Listen to the filters ``fs`` (one queue each, in order)."""
        with self.lock:
            #: per input: (stamp ns, message) sorted by stamp
            self.queues: list[list[tuple[int, Any]]] = [[] for _ in fs]
            self._arrival: list[dict[int, int]] = [{} for _ in fs]  # per input: stamp -> arrival number (ties)
            self._latest: list[int | None] = [None for _ in fs]
            self.input_connections = [f.registerCallback(self.add, i) for i, f in enumerate(fs)]

    def _stamp(self, msg: Any) -> int | None:
        header = getattr(msg, "header", None)
        if header is None or not hasattr(header, "stamp"):
            if not self.allow_headerless:
                self.num_headerless += 1
                self.num_dropped += 1
                return None
            return time.time_ns()
        return stamp_to_ns(header.stamp)

    def _insert(self, msg: Any, queue_index: int) -> int | None:
        """Queue ``msg``; its stamp, or None when it was refused or pushed out at once."""
        stamp = self._stamp(msg)
        if stamp is None:
            return None
        latest = self._latest[queue_index]
        if self.reset and latest is not None and stamp < latest:
            self.num_dropped += sum(len(q) for q in self.queues)
            self.num_resets += 1
            for q, arrival in zip(self.queues, self._arrival):
                q.clear()
                arrival.clear()
            self._latest = [None for _ in self.queues]
        self._latest[queue_index] = stamp if latest is None else max(latest, stamp)
        queue, arrival = self.queues[queue_index], self._arrival[queue_index]
        pos = bisect.bisect_left([s for s, _ in queue], stamp)
        if pos < len(queue) and queue[pos][0] == stamp:
            queue[pos] = (stamp, msg)  # same stamp: replaced, keeps its place in the arrival order
            self.num_dropped += 1
        else:
            queue.insert(pos, (stamp, msg))
            arrival[stamp] = next(self._next_arrival)
        while len(queue) > self.queue_size:
            old, _ = queue.pop(0)
            del arrival[old]
            self.num_dropped += 1
        return stamp if stamp in arrival else None

    def add(self, msg: Any, queue_index: int) -> None:
        """Put ``msg`` into input ``queue_index`` and emit the set it completes, if any."""
        with self.lock:
            stamp = self._insert(msg, queue_index)
            if stamp is not None:
                self._match(stamp, queue_index)

    def _match(self, stamp: int, anchor: int) -> None:
        """Emit the first set around the new message ``stamp`` of input ``anchor`` (class docstring)."""
        choices: list[list[int]] = []  # per other input: positions in its queue, nearest first
        for j, queue in enumerate(self.queues):
            if j == anchor:
                continue
            near = [k for k, (s, _) in enumerate(queue) if abs(s - stamp) <= self.slop_ns]
            if not near:
                return
            arrival = self._arrival[j]
            near.sort(key=lambda k: (abs(queue[k][0] - stamp), arrival[queue[k][0]]))
            choices.append(near)
        anchor_pos = next(k for k, (s, _) in enumerate(self.queues[anchor]) if s == stamp)
        for combo in itertools.product(*choices):
            members = [*combo[:anchor], anchor_pos, *combo[anchor:]]  # per input: a position in its queue
            stamps = [self.queues[j][k][0] for j, k in enumerate(members)]
            if max(stamps) - min(stamps) >= self.slop_ns:
                continue
            msgs = [self.queues[j][k][1] for j, k in enumerate(members)]
            for j, k in enumerate(members):
                s, _ = self.queues[j].pop(k)
                del self._arrival[j][s]
            self.num_emitted += 1
            self.signalMessage(*msgs)
            return


class FallbackTimeSynchronizer(FallbackApproximateTimeSynchronizer):
    """message_filters.TimeSynchronizer: sets whose stamps are all exactly equal (every common stamp, oldest first)."""

    def __init__(self, fs: Sequence[Any], queue_size: int, reset: bool = False) -> None:
        super().__init__(fs, queue_size, 0.0, allow_headerless=False, reset=reset)

    def _match(self, stamp: int, anchor: int) -> None:
        common = set(self._arrival[0]).intersection(*self._arrival[1:])
        for s in sorted(common):
            msgs = []
            for j, queue in enumerate(self.queues):
                k = next(k for k, (q, _) in enumerate(queue) if q == s)
                msgs.append(queue.pop(k)[1])
                del self._arrival[j][s]
            self.num_emitted += 1
            self.signalMessage(*msgs)
