"""The ROS 2 Python libraries the node needs, real where installed, else small drop-ins.

A full ROS 2 install has ``message_filters``, ``tf2_ros``, ``cv_bridge`` and
``sensor_msgs_py``; a pip-only machine (ours: rclpy and message wheels, SPEC §3)
has none of them.  This module imports each real library where it can and
otherwise binds the same public names to a drop-in with the same call shape:

=====================  ==========================================  ==========================
name here              real library                                drop-in
=====================  ==========================================  ==========================
Subscriber,            ``message_filters``                         :class:`FallbackSubscriber`,
ApproximateTime-                                                   :class:`FallbackApproximate-
Synchronizer,                                                      TimeSynchronizer`, ...
TimeSynchronizer
Buffer,                ``tf2_ros`` (``/tf``, ``/tf_static``)       :class:`FallbackBuffer`,
TransformListener,                                                 :class:`FallbackTransformListener`
TransformBroadcaster,                                              (geometry_msgs/TransformStamped
StaticTransform-                                                   on ``/safnet/transforms`` and
Broadcaster, the                                                   ``/safnet/transforms_static``)
tf2 exceptions
CvBridge, CvBridgeError ``cv_bridge``                              :class:`FallbackCvBridge`
point_cloud2           ``sensor_msgs_py.point_cloud2``             a namespace built on codecs.py
=====================  ==========================================  ==========================

``HAVE_TF2``, ``HAVE_MESSAGE_FILTERS``, ``HAVE_CV_BRIDGE`` and
``HAVE_SENSOR_MSGS_PY`` say which path was taken (:func:`backends` gives one
line for the node's log).  Setting ``SAFNET_FORCE_ROS_FALLBACK=1`` before the
import uses the drop-ins even where the real libraries exist (for testing).
The ``Fallback*`` classes are always importable.  See docs/ros_compat.md.
"""
from __future__ import annotations

import bisect
import itertools
import math
import os
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from safnet_ros.errors import MessageDecodeError, SafnetError
from safnet_ros.ros import codecs
from safnet_ros.ros.codecs import MessageEncodeError, ns_to_stamp, stamp_to_ns

_FORCE_FALLBACK = os.environ.get("SAFNET_FORCE_ROS_FALLBACK", "").strip().lower() in ("1", "true", "yes")

DEFAULT_TF_TOPIC = "/safnet/transforms"
DEFAULT_TF_STATIC_TOPIC = "/safnet/transforms_static"


def _duration_ns(duration: Any) -> int:
    """Nanoseconds of an rclpy Duration, a builtin_interfaces/Duration, seconds (float) or None (0)."""
    if duration is None:
        return 0
    if hasattr(duration, "nanoseconds"):
        return int(duration.nanoseconds)
    if hasattr(duration, "sec") and hasattr(duration, "nanosec"):
        return int(duration.sec) * 1_000_000_000 + int(duration.nanosec)
    return int(round(float(duration) * 1e9))


# ============================================================================ message_filters


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


# ============================================================================ tf2


class FallbackTransformException(SafnetError):
    """Base of the drop-in tf2 errors (tf2_ros.TransformException)."""


class FallbackLookupException(FallbackTransformException):
    """A frame is unknown to the buffer."""


class FallbackConnectivityException(FallbackTransformException):
    """The two frames are in different trees."""


class FallbackExtrapolationException(FallbackTransformException):
    """The requested time lies outside the data of some link of the chain."""


class FallbackInvalidArgumentException(FallbackTransformException):
    """An empty frame id or a malformed transform."""


class FallbackTimeoutException(FallbackTransformException):
    """Reserved for API parity (tf2_ros raises it from async waits)."""


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
    must :meth:`clear` (SPEC §3).  ``lookup_transform(target, source, time)``
    returns T_target_source (maps points in ``source`` into ``target``),
    interpolating each link between its two bracketing stamps (linear
    translation, quaternion slerp) and chaining links through the common
    ancestor; ``time`` zero means the latest time that every link has data.
    A positive ``timeout`` waits (wall clock) for data to arrive — never do
    that inside an executor callback (SPEC §3).
    """

    def __init__(self, cache_time: Any = None, node: Any = None) -> None:
        self.cache_ns = _duration_ns(cache_time) if cache_time is not None else 10 * 1_000_000_000
        self.node = node
        self._cond = threading.Condition(threading.RLock())
        self._links: dict[str, _Link] = {}
        self.num_rejected = 0

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


def _tf_qos() -> QoSProfile:
    """Dynamic transforms: reliable, volatile, deep queue (like /tf)."""
    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def _tf_static_qos() -> QoSProfile:
    """Static transforms: reliable, transient local; one message per transform so keep many."""
    return QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class FallbackTransformListener:
    """tf2_ros.TransformListener drop-in: feeds a buffer from TransformStamped topics.

    There is no tf2_msgs/TFMessage here, so dynamic transforms come one
    geometry_msgs/TransformStamped per message on ``topic`` (default
    ``/safnet/transforms``) and static ones on ``static_topic`` (default
    ``/safnet/transforms_static``, transient local so late joiners get them).
    With ``spin_thread=True`` the subscriptions live on an internal node spun
    by a daemon thread; otherwise the caller's executor spins ``node``.
    """

    def __init__(
        self,
        buffer: Any,
        node: Any,
        *,
        spin_thread: bool = False,
        qos: QoSProfile | None = None,
        static_qos: QoSProfile | None = None,
        topic: str = DEFAULT_TF_TOPIC,
        static_topic: str = DEFAULT_TF_STATIC_TOPIC,
    ) -> None:
        self.buffer = buffer
        self.topic = topic
        self.static_topic = static_topic
        self._own_node = None
        self._executor = None
        self._thread = None
        if spin_thread:
            self._own_node = rclpy.create_node(
                f"safnet_tf_listener_{os.getpid()}_{id(self):x}", context=node.context,
                start_parameter_services=False,
            )
            node = self._own_node
        self.node = node
        self.tf_sub = node.create_subscription(TransformStamped, topic, self.callback, qos or _tf_qos())
        self.tf_static_sub = node.create_subscription(
            TransformStamped, static_topic, self.static_callback, static_qos or _tf_static_qos()
        )
        if spin_thread:
            from rclpy.executors import SingleThreadedExecutor

            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(node)
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # context shut down under us: the thread just ends
            pass

    def callback(self, msg: TransformStamped) -> None:
        self.buffer.set_transform(msg, "default_authority")

    def static_callback(self, msg: TransformStamped) -> None:
        self.buffer.set_transform_static(msg, "default_authority")

    def unregister(self) -> None:
        """Destroy the subscriptions (and the internal node and thread); idempotent."""
        if self.tf_sub is not None:
            self.node.destroy_subscription(self.tf_sub)
            self.node.destroy_subscription(self.tf_static_sub)
            self.tf_sub = self.tf_static_sub = None
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=1.0)
            self._executor = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._own_node is not None:
            self._own_node.destroy_node()
            self._own_node = None


class FallbackTransformBroadcaster:
    """tf2_ros.TransformBroadcaster drop-in: publishes TransformStamped on ``/safnet/transforms``."""

    def __init__(self, node: Any, qos: QoSProfile | None = None, topic: str = DEFAULT_TF_TOPIC) -> None:
        self.node = node
        self.pub_tf = node.create_publisher(TransformStamped, topic, qos or _tf_qos())

    def sendTransform(self, transform: TransformStamped | Iterable[TransformStamped]) -> None:  # noqa: N802
        items = [transform] if isinstance(transform, TransformStamped) else list(transform)
        for item in items:
            self.pub_tf.publish(item)


class FallbackStaticTransformBroadcaster(FallbackTransformBroadcaster):
    """tf2_ros.StaticTransformBroadcaster drop-in: transient-local ``/safnet/transforms_static``."""

    def __init__(self, node: Any, qos: QoSProfile | None = None, topic: str = DEFAULT_TF_STATIC_TOPIC) -> None:
        super().__init__(node, qos or _tf_static_qos(), topic)


def transform_to_matrix(transform: Any) -> np.ndarray:
    """(4,4) float64 homogeneous matrix of a geometry_msgs Transform or TransformStamped.

    Quaternion order is (x, y, z, w); it is normalised first.
    """
    tf = getattr(transform, "transform", transform)
    q = np.array([tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(q).all() or norm < 1e-9:
        raise MessageDecodeError(f"Transform: rotation quaternion {tuple(q)} is not a rotation")
    x, y, z, w = q / norm
    out = np.eye(4)
    out[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    out[:3, 3] = [tf.translation.x, tf.translation.y, tf.translation.z]
    return out


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (x, y, z, w), w >= 0, of a (3,3) rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_to_transform(
    matrix: np.ndarray, frame_id: str = "", child_frame_id: str = "", stamp: Any = None
) -> TransformStamped:
    """TransformStamped (parent ``frame_id``, child ``child_frame_id``) from a (4,4) rigid transform.

    Raises MessageEncodeError when the matrix is not finite or its rotation
    block is not orthonormal with determinant +1 (tolerance 1e-4).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise MessageEncodeError(f"transform must be a finite (4, 4) matrix, got shape {m.shape}")
    r = m[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise MessageEncodeError("transform's (3, 3) block is not a rotation")
    q = matrix_to_quaternion(r)
    out = TransformStamped()
    out.header.frame_id = frame_id
    out.child_frame_id = child_frame_id
    if stamp is not None:
        out.header.stamp = ns_to_stamp(stamp_to_ns(stamp))
    out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = map(float, m[:3, 3])
    rot = out.transform.rotation
    rot.x, rot.y, rot.z, rot.w = map(float, q)
    return out


# ============================================================================ cv_bridge


class FallbackCvBridgeError(MessageDecodeError, TypeError):
    """cv_bridge.CvBridgeError drop-in (also a MessageDecodeError)."""


_CV_DEPTH_NAMES = {"u1": "8U", "i1": "8S", "u2": "16U", "i2": "16S", "i4": "32S", "f4": "32F", "f8": "64F"}
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


class FallbackCvBridge:
    """cv_bridge.CvBridge drop-in on codecs.py (numpy arrays; no OpenCV needed).

    ``imgmsg_to_cv2`` returns a writable C-contiguous copy; conversions among
    rgb8, bgr8, rgba8, bgra8 and mono8 are supported (mono8 from colour uses
    the BT.601 luma weights, alpha is 255 when added), anything else must be
    ``passthrough`` or the message's own encoding.
    """

    def imgmsg_to_cv2(self, img_msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
        try:
            arr = codecs.image_to_array(img_msg)
        except FallbackCvBridgeError:
            raise
        except MessageDecodeError as exc:
            raise FallbackCvBridgeError(str(exc)) from None
        source = str(img_msg.encoding)
        if desired_encoding in ("passthrough", source):
            return np.array(arr, copy=True, order="C")
        if source not in _COLOUR or desired_encoding not in _COLOUR:
            raise FallbackCvBridgeError(f"cannot convert {source!r} to {desired_encoding!r}")
        rgb = codecs.image_to_rgb(img_msg)
        if desired_encoding == "mono8":
            luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        out = rgb[:, :, ::-1] if desired_encoding.startswith("bgr") else rgb
        if desired_encoding.endswith("a8"):
            alpha = arr[:, :, 3:4] if source.endswith("a8") else np.full(rgb.shape[:2] + (1,), 255, np.uint8)
            out = np.concatenate([out, alpha], axis=2)
        return np.ascontiguousarray(out)

    def cv2_to_imgmsg(self, cvim: np.ndarray, encoding: str = "passthrough", header: Header | None = None) -> Image:
        cvim = np.asarray(cvim)
        if encoding == "passthrough":
            channels = 1 if cvim.ndim == 2 else (cvim.shape[2] if cvim.ndim == 3 else 0)
            depth = _CV_DEPTH_NAMES.get(cvim.dtype.str[1:])
            if depth is None or not 1 <= channels <= 4:
                raise FallbackCvBridgeError(f"cannot encode an array of dtype {cvim.dtype} and shape {cvim.shape}")
            encoding = f"{depth}C{channels}"
        try:
            return codecs.array_to_image(cvim, encoding, header)
        except MessageEncodeError as exc:
            raise FallbackCvBridgeError(str(exc)) from None


# ============================================================================ sensor_msgs_py.point_cloud2


def _pc2_read_points(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    """Structured array of the cloud's points (selected fields), like sensor_msgs_py ``read_points``."""
    points = codecs.pointcloud2_to_array(cloud)
    names = points.dtype.names or ()
    if field_names is not None:
        missing = [n for n in field_names if n not in names]
        if missing:
            raise MessageDecodeError(f"PointCloud2: no field(s) {missing} (fields: {list(names)})")
        points = points[list(field_names)]
        names = tuple(field_names)
    if uvs is not None:
        uv = np.asarray(list(uvs), dtype=np.int64).reshape(-1, 2)
        width, height = int(cloud.width), int(cloud.height)
        if uv.size and ((uv[:, 0] < 0) | (uv[:, 0] >= width) | (uv[:, 1] < 0) | (uv[:, 1] >= height)).any():
            raise MessageDecodeError(f"PointCloud2: uvs outside the {width}x{height} cloud")
        points = points[uv[:, 1] * width + uv[:, 0]]
    if skip_nans:
        keep = np.ones(points.shape[0], dtype=bool)
        for name in names:
            col = points[name]
            if col.dtype.kind == "f":
                keep &= ~np.isnan(col.reshape(col.shape[0], -1)).any(axis=1)
        points = points[keep]
    elif reshape_organized_cloud and int(cloud.height) > 1 and uvs is None:
        points = points.reshape(int(cloud.height), int(cloud.width))
    return points


def _pc2_read_points_numpy(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    """(N, k) array of the selected fields, which must share one datatype."""
    points = _pc2_read_points(cloud, field_names, skip_nans, uvs, reshape_organized_cloud)
    types_ = {points.dtype.fields[n][0].base.newbyteorder("=") for n in points.dtype.names or ()}
    if len(types_) != 1:
        raise MessageDecodeError(f"PointCloud2: read_points_numpy needs fields of one datatype, got {types_}")
    base = types_.pop()
    cols = [points[n].astype(base).reshape(points.shape + (-1,)) for n in points.dtype.names]
    return np.concatenate(cols, axis=-1)


def _pc2_read_points_list(
    cloud: PointCloud2,
    field_names: Sequence[str] | None = None,
    skip_nans: bool = False,
    uvs: Iterable[Sequence[int]] | None = None,
) -> list[Any]:
    """List of namedtuples (slow; for small clouds and tests only)."""
    from collections import namedtuple

    points = _pc2_read_points(cloud, field_names, skip_nans, uvs)
    point = namedtuple("Point", points.dtype.names or ())
    return [point._make(p) for p in points.tolist()]


def _pc2_dtype_from_fields(fields: Sequence[PointField], point_step: int | None = None) -> np.dtype:
    """Little-endian structured dtype of ``fields`` (itemsize ``point_step`` or the end of the last field)."""
    if point_step is None:
        ends = [
            int(f.offset) + np.dtype(codecs.POINTFIELD_DTYPES.get(int(f.datatype), "u1")).itemsize * max(int(f.count), 1)
            for f in fields
        ]
        point_step = max(ends, default=0)
    return codecs.pointcloud_dtype(fields, point_step, False)


def _pc2_create_cloud(header: Header, fields: Sequence[PointField], points: Any) -> PointCloud2:
    """PointCloud2 (little endian, height 1) with ``fields`` from rows, a structured or an (N, k) array."""
    dtype = _pc2_dtype_from_fields(fields)
    if isinstance(points, np.ndarray) and points.dtype.names is not None:
        data = np.zeros(points.shape[0], dtype=dtype)
        for name in dtype.names or ():
            data[name] = points[name]
    elif isinstance(points, np.ndarray):
        from numpy.lib import recfunctions

        data = recfunctions.unstructured_to_structured(np.asarray(points).reshape(len(points), -1), dtype=dtype)
    else:
        data = np.array([tuple(p) for p in points], dtype=dtype)
    msg = PointCloud2()
    msg.header = codecs.make_header(header)
    msg.height = 1
    msg.width = int(data.shape[0])
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields]
    msg.is_bigendian = False
    msg.point_step = int(dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = False
    msg.data = codecs._to_byte_array(data)
    return msg


def _pc2_create_cloud_xyz32(header: Header, points: Any) -> PointCloud2:
    """PointCloud2 with float32 x, y, z (12 bytes a point)."""
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return _pc2_create_cloud(header, fields, np.asarray(points, dtype=np.float32).reshape(-1, 3))


fallback_point_cloud2 = types.SimpleNamespace(
    read_points=_pc2_read_points,
    read_points_numpy=_pc2_read_points_numpy,
    read_points_list=_pc2_read_points_list,
    create_cloud=_pc2_create_cloud,
    create_cloud_xyz32=_pc2_create_cloud_xyz32,
    dtype_from_fields=_pc2_dtype_from_fields,
)


# ============================================================================ binding: real or drop-in

HAVE_MESSAGE_FILTERS = False
HAVE_TF2 = False
HAVE_CV_BRIDGE = False
HAVE_SENSOR_MSGS_PY = False

Subscriber: Any = FallbackSubscriber
ApproximateTimeSynchronizer: Any = FallbackApproximateTimeSynchronizer
TimeSynchronizer: Any = FallbackTimeSynchronizer
Buffer: Any = FallbackBuffer
TransformListener: Any = FallbackTransformListener
TransformBroadcaster: Any = FallbackTransformBroadcaster
StaticTransformBroadcaster: Any = FallbackStaticTransformBroadcaster
TransformException: Any = FallbackTransformException
LookupException: Any = FallbackLookupException
ConnectivityException: Any = FallbackConnectivityException
ExtrapolationException: Any = FallbackExtrapolationException
InvalidArgumentException: Any = FallbackInvalidArgumentException
TimeoutException: Any = FallbackTimeoutException
CvBridge: Any = FallbackCvBridge
CvBridgeError: Any = FallbackCvBridgeError
point_cloud2: Any = fallback_point_cloud2

if not _FORCE_FALLBACK:
    try:
        import message_filters as _message_filters

        Subscriber = _message_filters.Subscriber
        ApproximateTimeSynchronizer = _message_filters.ApproximateTimeSynchronizer
        TimeSynchronizer = _message_filters.TimeSynchronizer
        HAVE_MESSAGE_FILTERS = True
    except ImportError:
        pass
    try:
        import tf2_ros as _tf2_ros

        Buffer = _tf2_ros.Buffer
        TransformListener = _tf2_ros.TransformListener
        TransformBroadcaster = _tf2_ros.TransformBroadcaster
        StaticTransformBroadcaster = _tf2_ros.StaticTransformBroadcaster
        TransformException = _tf2_ros.TransformException
        LookupException = _tf2_ros.LookupException
        ConnectivityException = _tf2_ros.ConnectivityException
        ExtrapolationException = _tf2_ros.ExtrapolationException
        InvalidArgumentException = _tf2_ros.InvalidArgumentException
        TimeoutException = _tf2_ros.TimeoutException
        HAVE_TF2 = True
    except ImportError:
        pass
    try:
        import cv_bridge as _cv_bridge

        CvBridge = _cv_bridge.CvBridge
        CvBridgeError = _cv_bridge.CvBridgeError
        HAVE_CV_BRIDGE = True
    except ImportError:
        pass
    try:
        from sensor_msgs_py import point_cloud2 as _point_cloud2

        point_cloud2 = _point_cloud2
        HAVE_SENSOR_MSGS_PY = True
    except ImportError:
        pass


def make_transform_listener(
    buffer: Any,
    node: Any,
    *,
    spin_thread: bool = False,
    fallback_topic: str = DEFAULT_TF_TOPIC,
    fallback_static_topic: str = DEFAULT_TF_STATIC_TOPIC,
) -> Any:
    """The real TransformListener (``/tf``, ``/tf_static``) where tf2_ros exists.

    Else the drop-in on the fallback TransformStamped topics.
    """
    if HAVE_TF2:
        return TransformListener(buffer, node, spin_thread=spin_thread)
    return FallbackTransformListener(
        buffer, node, spin_thread=spin_thread, topic=fallback_topic, static_topic=fallback_static_topic
    )


def backends() -> str:
    """One line for the node's log: which libraries are real and which are drop-ins."""
    parts = [
        ("message_filters", HAVE_MESSAGE_FILTERS),
        ("tf2_ros", HAVE_TF2),
        ("cv_bridge", HAVE_CV_BRIDGE),
        ("sensor_msgs_py", HAVE_SENSOR_MSGS_PY),
    ]
    return ", ".join(f"{name}: {'ros' if real else 'safnet drop-in'}" for name, real in parts)


__all__ = [
    "HAVE_MESSAGE_FILTERS", "HAVE_TF2", "HAVE_CV_BRIDGE", "HAVE_SENSOR_MSGS_PY", "backends",
    "Subscriber", "ApproximateTimeSynchronizer", "TimeSynchronizer",
    "Buffer", "TransformListener", "TransformBroadcaster", "StaticTransformBroadcaster", "make_transform_listener",
    "TransformException", "LookupException", "ConnectivityException", "ExtrapolationException",
    "InvalidArgumentException", "TimeoutException",
    "transform_to_matrix", "matrix_to_transform", "matrix_to_quaternion",
    "CvBridge", "CvBridgeError", "point_cloud2",
    "DEFAULT_TF_TOPIC", "DEFAULT_TF_STATIC_TOPIC",
    "FallbackSubscriber", "FallbackApproximateTimeSynchronizer", "FallbackTimeSynchronizer",
    "FallbackBuffer", "FallbackTransformListener", "FallbackTransformBroadcaster",
    "FallbackStaticTransformBroadcaster", "FallbackCvBridge", "FallbackCvBridgeError", "fallback_point_cloud2",
]
