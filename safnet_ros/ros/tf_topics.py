"""Drop-ins for ``tf2_ros``' TransformListener and broadcasters: the topics that feed a buffer.

Two wire formats, chosen by :func:`safnet_ros.ros.tf_path.active_tf_path`: ``tf2_msgs/TFMessage`` on
``/tf`` and ``/tf_static`` as tf2_ros does, or (last resort, no TFMessage) one
``geometry_msgs/TransformStamped`` per message on the fallback topics. Topics and QoS:
docs/ros_compat.md, "TF: three paths, one test".
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from safnet_ros.ros.params import DEFAULT_TF_STATIC_TOPIC, DEFAULT_TF_TOPIC
from safnet_ros.ros.spin import NodeThread
from safnet_ros.ros.tf_path import active_tf_path


def reliable_qos(depth: int, latched: bool) -> QoSProfile:
    """Reliable keep-last ``depth``; ``latched``: transient local (late joiners get the last messages)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


_USE_ACTIVE = object()  # default of ``tf_message``: the active TF path's TFMessage (None on the last resort)


class FallbackTransformListener:
    """tf2_ros.TransformListener drop-in: feeds a buffer from the transform topics.

    With ``tf_message`` (the TFMessage class; by default the active TF path's) it listens like tf2_ros on
    /tf and /tf_static, ``topic`` and ``static_topic`` unused; with ``tf_message=None`` (the last resort) on
    TransformStamped ``topic`` and the transient-local ``static_topic``. With ``spin_thread=True`` the
    subscriptions live on an internal node spun by a daemon thread; otherwise the caller spins ``node``.
    """

    def __init__(self, buffer: Any, node: Any, *, spin_thread: bool = False, qos: QoSProfile | None = None,
                 static_qos: QoSProfile | None = None, topic: str = DEFAULT_TF_TOPIC,
                 static_topic: str = DEFAULT_TF_STATIC_TOPIC, tf_message: Any = _USE_ACTIVE) -> None:
        self.buffer = buffer
        self.tf_message = active_tf_path().tf_message if tf_message is _USE_ACTIVE else tf_message
        if self.tf_message is not None:
            topic, static_topic = "/tf", "/tf_static"
        self.topic = topic
        self.static_topic = static_topic
        self._spun = None
        if spin_thread:
            self._spun = NodeThread(f"safnet_tf_listener_{os.getpid()}_{id(self):x}", node.context)
            node = self._spun.node
        self.node = node
        tfm = self.tf_message  # TFMessage: tf2's static depth 100; one TransformStamped a message: 1000
        self.tf_sub = node.create_subscription(tfm or TransformStamped, topic, self.callback,
                                               qos or reliable_qos(100, False))
        self.tf_static_sub = node.create_subscription(tfm or TransformStamped, static_topic, self.static_callback,
                                                      static_qos or reliable_qos(100 if tfm else 1000, True))
        if self._spun is not None:
            self._spun.start()

    def callback(self, msg: Any) -> None:
        """A TFMessage (every transform it holds) or a TransformStamped."""
        for transform in getattr(msg, "transforms", (msg,)):
            self.buffer.set_transform(transform, "default_authority")

    def static_callback(self, msg: Any) -> None:
        for transform in getattr(msg, "transforms", (msg,)):
            self.buffer.set_transform_static(transform, "default_authority")

    def unregister(self) -> None:
        """Stop the internal thread, then destroy the subscriptions (and the internal node); idempotent.

        In that order, so that no wait set of the thread's executor still holds a subscription being
        destroyed."""
        if self._spun is not None:
            self._spun.stop()
        if self.tf_sub is not None:
            self.node.destroy_subscription(self.tf_sub)
            self.node.destroy_subscription(self.tf_static_sub)
            self.tf_sub = self.tf_static_sub = None
        if self._spun is not None:
            self._spun.destroy()
            self._spun = None


class FallbackTransformBroadcaster:
    """tf2_ros.TransformBroadcaster drop-in.

    ``TFMessage`` on ``/tf`` where the active TF path carries it (or
    ``tf_message`` is given), else one TransformStamped per message on
    ``topic`` (``/safnet/transforms``).
    """

    #: tf2's topic and its QoS (depth, latched), then the last resort's: the static broadcaster's differ.
    _TF_TOPIC, _TF_QOS = "/tf", (100, False)
    _FALLBACK_TOPIC, _FALLBACK_QOS = DEFAULT_TF_TOPIC, (100, False)

    def __init__(self, node: Any, qos: QoSProfile | None = None, topic: str | None = None,
                 tf_message: Any = _USE_ACTIVE) -> None:
        self.node = node
        self.tf_message = active_tf_path().tf_message if tf_message is _USE_ACTIVE else tf_message
        self._latched: dict[str, TransformStamped] = {}
        if self.tf_message is not None:
            self.pub_tf = node.create_publisher(self.tf_message, self._TF_TOPIC, qos or reliable_qos(*self._TF_QOS))
        else:
            self.pub_tf = node.create_publisher(TransformStamped, topic or self._FALLBACK_TOPIC,
                                                qos or reliable_qos(*self._FALLBACK_QOS))

    def _tf_batch(self, items: list[TransformStamped]) -> list[TransformStamped]:
        """The transforms of the next TFMessage."""
        return items

    def sendTransform(self, transform: TransformStamped | Iterable[TransformStamped]) -> None:  # noqa: N802
        items = [transform] if isinstance(transform, TransformStamped) else list(transform)
        if self.tf_message is not None:
            self.pub_tf.publish(self.tf_message(transforms=self._tf_batch(items)))
            return
        for item in items:
            self.pub_tf.publish(item)


class FallbackStaticTransformBroadcaster(FallbackTransformBroadcaster):
    """tf2_ros.StaticTransformBroadcaster drop-in.

    ``TFMessage`` on ``/tf_static`` (transient local, keep last 1) holding every
    static transform sent so far, one per child frame, as tf2_ros does; on the
    last-resort path one TransformStamped per message on the transient-local
    ``topic`` (``/safnet/transforms_static``).
    """

    _TF_TOPIC, _TF_QOS = "/tf_static", (1, True)
    _FALLBACK_TOPIC, _FALLBACK_QOS = DEFAULT_TF_STATIC_TOPIC, (1000, True)

    def _tf_batch(self, items: list[TransformStamped]) -> list[TransformStamped]:
        for item in items:
            self._latched[item.child_frame_id] = item
        return list(self._latched.values())
