"""Replay a rosbag2 through rclpy with its recorded timing and /clock: ``ros2 bag play`` for pip installs.

Each message's raw CDR bytes (read with rosbags) go straight into ``deserialize_message`` with the
rclpy class of its type. Message ``k`` goes out ``(t_k - t_0) / rate`` seconds after the start;
``/clock`` carries the bag time before every message and every :data:`CLOCK_PERIOD_S` while waiting. /tf
goes out as recorded, or as TransformStamped on the fallback topics where the active TF path
(:func:`safnet_ros.ros.tf_path.active_tf_path`) has no TFMessage. Details: docs/bags.md, "safnet bag play".
"""
from __future__ import annotations

import importlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy._rclpy_pybind11 import RMWError
from rclpy.exceptions import InvalidTopicNameException
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock

from safnet_ros.errors import ConfigError, MessageDecodeError, MissingDataError
from safnet_ros.ros.codecs import ns_to_stamp
from safnet_ros.ros.dds_profile import use_large_data_profile
from safnet_ros.ros.tf_path import active_tf_path
from safnet_ros.ros.tf_topics import DEFAULT_TF_STATIC_TOPIC, DEFAULT_TF_TOPIC, reliable_qos
from safnet_ros.tools import bag_io as bio

_TF_TOPICS = (bio.TF_TOPIC, bio.TF_STATIC_TOPIC)
#: Seconds between /clock messages while waiting for the next message.
CLOCK_PERIOD_S = 0.05
#: Seconds waited once every volatile topic has a subscriber (see BagPlayer's wait_for_subscribers).
DISCOVERY_SETTLE_S = 0.5


def rclpy_message_class(msgtype: str) -> Any:
    """The rclpy message class of ``pkg/msg/Name``; ImportError when its package is not installed."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


@dataclass
class PlaySummary:
    """What a :meth:`BagPlayer.run` published."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)
    loops: int = 0
    clock_messages: int = 0
    elapsed_s: float = 0.0
    undecodable: dict[str, int] = field(default_factory=dict)  # topic -> messages that did not deserialise
    stopped: str = ""  # why the replay ended early ("Ctrl-C", "stopped"); "" when it ran to the end

    def lines(self) -> list[str]:
        how = f"{self.stopped} after {self.elapsed_s:.1f} s ({self.loops} complete pass(es))" if self.stopped \
            else f"played {self.loops} time(s) in {self.elapsed_s:.1f} s"
        out = [f"{how}; /clock {self.clock_messages} messages"]
        out += [f"  {topic}: {n}" for topic, n in sorted(self.published.items())]
        out += [f"  skipped {topic}: {why}" for topic, why in sorted(self.skipped_topics.items())]
        out += [f"  undecodable {topic}: {n} message(s) skipped" for topic, n in sorted(self.undecodable.items())]
        return out


@dataclass
class _Route:
    """Where one bag connection's messages go: a publisher of its own type, or the TF fallback."""

    publisher: Any
    msg_class: Any
    out_topic: str
    split_tf: bool
    latched: bool


class BagPlayer:
    """Publish a bag's messages from ``node`` with the recorded timing.

    node: an rclpy Node (publishers are created on it); bag_path: rosbag2
    folder; rate: speed factor (> 0); loop: start again at the end; topics:
    only these bag topics (default all); clock: publish rosgraph_msgs/Clock on
    ``/clock``; tf_fallback: None = as the active TF path says (only when
    tf2_msgs/TFMessage is missing); wait_for_subscribers: seconds to wait,
    before the first message, until every publisher of a volatile topic has a
    subscriber (0 = no wait), then :data:`DISCOVERY_SETTLE_S` more: discovery
    completes on the publisher's side first, and a best-effort message sent
    before the subscriber's side has matched is dropped.
    """

    def __init__(self, node: Any, bag_path: str | Path, rate: float = 1.0, loop: bool = False,
                 topics: Optional[Sequence[str]] = None, clock: bool = True, tf_fallback: Optional[bool] = None,
                 wait_for_subscribers: float = 0.0) -> None:
        if not rate > 0:
            raise ConfigError(f"rate must be positive, got {rate}")
        self.node = node
        self.bag_path = Path(bag_path)
        bio.require_bag(self.bag_path)
        self.rate = float(rate)
        self.loop = loop
        self.topics = set(topics) if topics else None
        self.clock = clock
        self.tf_fallback = (not active_tf_path().uses_tf_topics) if tf_fallback is None else tf_fallback
        self.wait_for_subscribers = wait_for_subscribers
        self.summary = PlaySummary()
        self._routes: dict[int, _Route] = {}
        self._clock_pub = None
        self._last_clock_wall = 0.0

    # ------------------------------------------------------------------ setup

    def _make_routes(self, connections: Sequence[Any]) -> list[Any]:
        """Publishers for the selected connections; returns the connections to read."""
        by_topic: dict[tuple[str, bool], Any] = {}
        wanted = []
        known = {c.topic for c in connections}
        if self.topics:
            missing = sorted(self.topics - known)
            if missing:
                raise MissingDataError(self.bag_path, f"topics {missing} (the bag has {sorted(known)})")
        first_type: dict[str, str] = {}
        for conn in connections:
            if self.topics and conn.topic not in self.topics:
                continue
            if first_type.setdefault(conn.topic, conn.msgtype) != conn.msgtype:  # a publisher has one type
                self.summary.skipped_topics[f"{conn.topic} ({conn.msgtype})"] = (
                    f"also recorded as {first_type[conn.topic]}, which is played")
                continue
            latched = bio.is_transient_local(conn.ext.offered_qos_profiles)
            split_tf = conn.msgtype == bio.TF_MESSAGE and self.tf_fallback
            if split_tf:  # one TransformStamped per transform, on the fallback topics
                latched = conn.topic == bio.TF_STATIC_TOPIC or latched
                cls, out_topic = TransformStamped, DEFAULT_TF_STATIC_TOPIC if latched else DEFAULT_TF_TOPIC
            else:
                try:
                    cls, out_topic = rclpy_message_class(conn.msgtype), conn.topic
                except (ImportError, AttributeError, ValueError):
                    self.summary.skipped_topics[conn.topic] = f"no Python messages for {conn.msgtype} here"
                    continue
            key = (out_topic, latched)
            if key not in by_topic:
                depth = 1000 if latched else (100 if split_tf or conn.topic in _TF_TOPICS else 10)
                try:
                    by_topic[key] = self.node.create_publisher(cls, out_topic, reliable_qos(depth, latched))
                except InvalidTopicNameException:  # a bag from another tool may hold any string as a name
                    self.summary.skipped_topics[conn.topic] = "not a valid ROS 2 topic name"
                    continue
            self._routes[conn.id] = _Route(by_topic[key], cls, out_topic, split_tf, latched)
            wanted.append(conn)
        if self.clock:
            self._clock_pub = self.node.create_publisher(Clock, "/clock", reliable_qos(10, False))
        return wanted

    def _wait_for_subscribers(self, stop: threading.Event) -> None:
        if self.wait_for_subscribers <= 0:
            return
        # latched (transient local) topics reach late subscribers anyway: wait for the others only
        pubs = {id(r.publisher): r.publisher for r in self._routes.values() if not r.latched}.values()
        deadline = time.monotonic() + self.wait_for_subscribers
        while time.monotonic() < deadline and not stop.is_set():
            if all(p.get_subscription_count() > 0 for p in pubs):
                stop.wait(DISCOVERY_SETTLE_S)  # the subscribers' side of discovery
                return
            stop.wait(0.02)

    # ------------------------------------------------------------------ publishing

    def _publish_clock(self, bag_ns: int) -> None:
        if self._clock_pub is None:
            return
        self._clock_pub.publish(Clock(clock=ns_to_stamp(bag_ns)))
        self.summary.clock_messages += 1
        self._last_clock_wall = time.monotonic()

    def _publish(self, route: _Route, raw: bytes, topic: str, msgtype: str) -> None:
        if route.split_tf:
            try:
                tf = bio.deserialize(raw, msgtype, what=f"{self.bag_path}:{topic}")
            except MessageDecodeError as exc:
                self._undecodable(topic, msgtype, exc)
                return
            msgs = [deserialize_message(bio.serialize(t), route.msg_class) for t in tf.transforms]
        else:
            try:
                msgs = [deserialize_message(raw, route.msg_class)]
            except RMWError as exc:
                self._undecodable(topic, msgtype, exc)
                return
        for msg in msgs:
            route.publisher.publish(msg)
            self.summary.published[route.out_topic] = self.summary.published.get(route.out_topic, 0) + 1

    def _undecodable(self, topic: str, msgtype: str, exc: Exception) -> None:
        """One broken message must not end the replay: count it, warn once per topic."""
        n = self.summary.undecodable.get(topic, 0)
        self.summary.undecodable[topic] = n + 1
        if n == 0:
            self.node.get_logger().warning(f"{self.bag_path}: a {msgtype} message on {topic} does not "
                                           f"deserialise ({' '.join(str(exc).split())[:120]}); skipped")

    def _wait_until(self, wall_target: float, wall_start: float, first_ns: int, stop: threading.Event) -> None:
        """Sleep until ``wall_target`` (monotonic seconds), keeping /clock moving every CLOCK_PERIOD_S."""
        while not stop.is_set():
            now = time.monotonic()
            remaining = wall_target - now
            if remaining <= 0:
                return
            if self._clock_pub is not None and now - self._last_clock_wall >= CLOCK_PERIOD_S:
                self._publish_clock(first_ns + int((now - wall_start) * self.rate * 1e9))
            stop.wait(min(remaining, CLOCK_PERIOD_S))

    def run(self, stop_event: Optional[threading.Event] = None) -> PlaySummary:
        """Publish the bag (again and again with ``loop``) until its end or ``stop_event`` is set."""
        stop = stop_event or threading.Event()
        started = time.monotonic()
        try:
            return self._run(stop)
        except KeyboardInterrupt:
            self.summary.stopped = "stopped by Ctrl-C"
            raise
        finally:
            self.summary.elapsed_s = time.monotonic() - started

    def _run(self, stop: threading.Event) -> PlaySummary:
        with bio.bag_reader(self.bag_path) as reader:
            wanted = self._make_routes(reader.connections)
            if not wanted:
                skipped = "; ".join(f"{t}: {why}" for t, why in sorted(self.summary.skipped_topics.items())[:3])
                raise MissingDataError(self.bag_path, "topics that can be published here"
                                                      + (f" (skipped {skipped})" if skipped else ""))
            self._wait_for_subscribers(stop)
            while not stop.is_set():
                wall_start = time.monotonic()
                first_ns = None
                for conn, bag_ns, raw in bio.bag_messages(reader, self.bag_path, wanted):
                    if stop.is_set():
                        break
                    if first_ns is None:
                        first_ns = bag_ns
                    self._wait_until(wall_start + (bag_ns - first_ns) / 1e9 / self.rate, wall_start, first_ns, stop)
                    if stop.is_set():
                        break
                    self._publish_clock(bag_ns)
                    self._publish(self._routes[conn.id], bytes(raw), conn.topic, conn.msgtype)
                if stop.is_set():
                    self.summary.stopped = self.summary.stopped or "stopped"
                    break
                self.summary.loops += 1  # only complete passes count
                if not self.loop:
                    break
        return self.summary


def play_main(bag: str, rate: float = 1.0, loop: bool = False, topics: Optional[Sequence[str]] = None,
              clock: bool = True, wait_for_subscribers: float = 2.0) -> int:
    """The ``safnet bag play`` command: an rclpy node that plays the bag until its end or Ctrl-C."""
    profile = use_large_data_profile()
    # Our own SIGTERM handling: rclpy's would shut the context down under the publishing
    # loop (an RCLError traceback); here SIGTERM stops the replay like Ctrl-C.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("safnet_bag_player")
    stop = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main_thread else None
    try:
        player = BagPlayer(node, bag, rate=rate, loop=loop, topics=topics, clock=clock,
                           wait_for_subscribers=wait_for_subscribers)
        mode = ("TransformStamped on the fallback topics (no tf2_msgs here)" if player.tf_fallback
                else "tf2_msgs/TFMessage on /tf, /tf_static")
        node.get_logger().info(f"playing {bag} at {rate}x; transforms as {mode}"
                               + (f"; Fast DDS profile {profile}" if profile else ""))
        try:
            summary = player.run(stop)
        except KeyboardInterrupt:  # run() noted "stopped by Ctrl-C"
            stop.set()
            summary = player.summary
        if stop.is_set() and summary.stopped == "stopped":
            summary.stopped = "stopped by a signal"
        print("\n".join(summary.lines()))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
