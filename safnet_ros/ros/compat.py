"""The ROS 2 Python libraries the node needs, real where installed, else small drop-ins (docs/ros_compat.md).

Binds the public names of ``message_filters`` and ``tf2_ros`` to the real library where it imports
(and ``SAFNET_FORCE_ROS_FALLBACK=1`` is not set), else to the drop-in with the same call shape
(:mod:`~safnet_ros.ros.filters`, :mod:`~safnet_ros.ros.tf_buffer`, :mod:`~safnet_ros.ros.tf_tree`,
:mod:`~safnet_ros.ros.tf_topics`); ``HAVE_MESSAGE_FILTERS`` and ``HAVE_TF2`` say which. The
``Fallback*`` classes are always importable from here too.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from safnet_ros.ros.filters import (
    FallbackApproximateTimeSynchronizer,
    FallbackSimpleFilter,
    FallbackSubscriber,
    FallbackTimeSynchronizer,
)
from safnet_ros.ros.spin import NodeThread
from safnet_ros.ros.tf_buffer import FallbackBuffer
from safnet_ros.ros.tf_path import active_tf_path
from safnet_ros.ros.tf_topics import (
    DEFAULT_TF_STATIC_TOPIC,
    DEFAULT_TF_TOPIC,
    FallbackStaticTransformBroadcaster,
    FallbackTransformBroadcaster,
    FallbackTransformListener,
)
from safnet_ros.ros.tf_tree import (
    FallbackConnectivityException,
    FallbackExtrapolationException,
    FallbackInvalidArgumentException,
    FallbackLookupException,
    FallbackTimeoutException,
    FallbackTransformException,
)
from safnet_ros.ros.transforms import matrix_to_transform, transform_to_matrix

_FORCE_FALLBACK = os.environ.get("SAFNET_FORCE_ROS_FALLBACK", "").strip().lower() in ("1", "true", "yes")


def _bind(library: str, dropins: tuple[Any, ...]) -> tuple[bool, tuple[Any, ...]]:
    """(True, the library's classes of the drop-ins' names without ``Fallback``) where ``library`` imports
    and fallbacks are not forced, else (False, ``dropins``)."""
    if not _FORCE_FALLBACK:
        try:
            module = importlib.import_module(library)
        except ImportError:
            pass
        else:
            return True, tuple(getattr(module, d.__name__.removeprefix("Fallback")) for d in dropins)
    return False, dropins


HAVE_MESSAGE_FILTERS, (Subscriber, ApproximateTimeSynchronizer, TimeSynchronizer) = _bind(
    "message_filters", (FallbackSubscriber, FallbackApproximateTimeSynchronizer, FallbackTimeSynchronizer))
HAVE_TF2, (Buffer, TransformListener, TransformBroadcaster, StaticTransformBroadcaster, TransformException,
           LookupException, ConnectivityException, ExtrapolationException, InvalidArgumentException,
           TimeoutException) = _bind("tf2_ros", (
               FallbackBuffer, FallbackTransformListener, FallbackTransformBroadcaster,
               FallbackStaticTransformBroadcaster, FallbackTransformException, FallbackLookupException,
               FallbackConnectivityException, FallbackExtrapolationException, FallbackInvalidArgumentException,
               FallbackTimeoutException))


class Tf2ListenerThread:
    """tf2_ros' TransformListener on a node of its own, spun by a thread of its own in that node's context.

    Not with the caller's node: rclpy keeps a node in one executor at a time, so whichever executor adds
    it last takes all of that node's callbacks (/tf on the image callbacks' thread, or the images on the
    listener's). And not with tf2_ros' ``spin_thread=True``: it adds the node to a
    ``SingleThreadedExecutor()`` of the *default* context (ros2/geometry2,
    tf2_ros_py/tf2_ros/transform_listener.py, Humble to Rolling), which raises where only a context of
    the caller's own is initialised (``BagSession``: the demo, the soak). So tf2_ros only subscribes;
    this node (:class:`~safnet_ros.ros.spin.NodeThread`, in the caller's context) is spun here. ``unregister`` stops the thread first,
    then destroys the subscriptions and the node.
    """

    def __init__(self, buffer: Any, context: Any) -> None:
        self.spun = NodeThread(f"safnet_tf2_listener_{os.getpid()}_{id(self):x}", context)
        self.listener = TransformListener(buffer, self.spun.node)
        self.spun.start()

    def unregister(self) -> None:
        """Idempotent."""
        if self.listener is None:
            return
        self.spun.stop()
        self.listener.unregister()
        self.listener = None
        self.spun.destroy()


def make_transform_listener(buffer: Any, node: Any, *, spin_thread: bool = False,
                            fallback_topic: str = DEFAULT_TF_TOPIC,
                            fallback_static_topic: str = DEFAULT_TF_STATIC_TOPIC) -> Any:
    """The listener of the active TF path (:func:`safnet_ros.ros.tf_path.active_tf_path`): tf2_ros' where it
    exists (with ``spin_thread``, on a node and a thread of its own: :class:`Tf2ListenerThread`), else the
    drop-in on /tf (TFMessage) or, last resort, on the fallback TransformStamped topics."""
    path = active_tf_path()
    if HAVE_TF2 and path.name == "tf2_ros":
        if spin_thread:
            return Tf2ListenerThread(buffer, node.context)
        return TransformListener(buffer, node)
    return FallbackTransformListener(buffer, node, spin_thread=spin_thread, topic=fallback_topic,
                                     static_topic=fallback_static_topic, tf_message=path.tf_message)


def release_buffer(buffer: Any, node: Any) -> None:
    """Release what a TF ``buffer`` made with ``node=`` left on ``node`` (at the node's cleanup): the drop-in
    stops watching the clock; tf2_ros' Buffer has no close, and would leave its ``tf2_frames`` service (a
    second one at the next configure, answering for the old buffer) and, Jazzy on, its clock jump callback."""
    if isinstance(buffer, FallbackBuffer):
        buffer.close()
        return
    if getattr(buffer, "srv", None) is not None:
        node.destroy_service(buffer.srv)
    if getattr(buffer, "jump_handle", None) is not None:
        buffer.jump_handle.unregister()


def backends() -> str:
    """One line for the node's log: which libraries are real and which are drop-ins, and the TF path."""
    parts = [("message_filters", HAVE_MESSAGE_FILTERS), ("tf2_ros", HAVE_TF2)]
    line = ", ".join(f"{name}: {'ros' if real else 'safnet drop-in'}" for name, real in parts)
    return f"{line}; transforms: {active_tf_path().describe()}"


__all__ = [
    "HAVE_MESSAGE_FILTERS", "HAVE_TF2", "backends",
    "Subscriber", "ApproximateTimeSynchronizer", "TimeSynchronizer",
    "Buffer", "TransformListener", "TransformBroadcaster", "StaticTransformBroadcaster", "make_transform_listener",
    "Tf2ListenerThread", "release_buffer",
    "TransformException", "LookupException", "ConnectivityException", "ExtrapolationException",
    "InvalidArgumentException", "TimeoutException",
    "transform_to_matrix", "matrix_to_transform",
    "DEFAULT_TF_TOPIC", "DEFAULT_TF_STATIC_TOPIC",
    "FallbackSimpleFilter", "FallbackSubscriber", "FallbackApproximateTimeSynchronizer", "FallbackTimeSynchronizer",
    "FallbackBuffer", "FallbackTransformListener", "FallbackTransformBroadcaster",
    "FallbackStaticTransformBroadcaster", "FallbackTransformException", "FallbackLookupException",
    "FallbackConnectivityException", "FallbackExtrapolationException", "FallbackInvalidArgumentException",
    "FallbackTimeoutException",
]
