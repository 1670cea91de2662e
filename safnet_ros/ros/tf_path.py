"""Which way transforms travel in this process: the one test the node and every tool share.

Three paths, best first: ``tf2_ros`` (it imports), ``tf2_msgs`` (the drop-in buffer on /tf where
TFMessage imports) and ``fallback`` (TransformStamped on /safnet/transforms); the table and the
environment switches (``SAFNET_TF_PATH``, ``SAFNET_FORCE_ROS_FALLBACK``): docs/ros_compat.md, "TF:
three paths, one test". The node, ``safnet bag play``, ``safnet segment-bag``, the demo and the soak all
call :func:`active_tf_path`, so a publisher and a listener of one install always agree.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Any, Optional

TF2_ROS = "tf2_ros"
TF2_MSGS = "tf2_msgs"
FALLBACK = "fallback"


@dataclass(frozen=True)
class TfPath:
    """The active TF path: its name, whether /tf carries TFMessage, and the TFMessage class (or None)."""

    name: str
    tf_message: Any = None

    @property
    def uses_tf_topics(self) -> bool:
        """True when transforms travel on /tf and /tf_static as tf2_msgs/TFMessage."""
        return self.name in (TF2_ROS, TF2_MSGS)

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.name == TF2_ROS:
            return "tf2_ros on /tf, /tf_static"
        if self.name == TF2_MSGS:
            return "safnet drop-in buffer on /tf, /tf_static (tf2_msgs/TFMessage; no tf2_ros)"
        return "safnet drop-in buffer on /safnet/transforms (geometry_msgs/TransformStamped; no tf2_msgs)"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def tf_message_class() -> Optional[Any]:
    """``tf2_msgs.msg.TFMessage`` where it imports, else None."""
    try:
        return importlib.import_module("tf2_msgs.msg").TFMessage
    except (ImportError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def active_tf_path() -> TfPath:
    """The TF path of this process (see the module docstring); decided once."""
    forced = os.environ.get("SAFNET_TF_PATH", "").strip().lower()
    force_dropins = os.environ.get("SAFNET_FORCE_ROS_FALLBACK", "").strip().lower() in ("1", "true", "yes")
    tf_message = tf_message_class()
    if forced == FALLBACK or tf_message is None:
        return TfPath(FALLBACK)
    if forced != TF2_MSGS and not force_dropins and _importable("tf2_ros"):
        return TfPath(TF2_ROS, tf_message)
    return TfPath(TF2_MSGS, tf_message)


def missing_tf2_ros_warning() -> Optional[str]:
    """The WARN line for a sourced ROS 2 install (ROS_DISTRO or AMENT_PREFIX_PATH set) without tf2_ros's
    Python package, else None."""
    if not (os.environ.get("ROS_DISTRO") or os.environ.get("AMENT_PREFIX_PATH")) or _importable("tf2_ros"):
        return None
    return ("a ROS 2 install is sourced but 'import tf2_ros' fails: install the Python tf2 package tf2_ros_py "
            f"(apt: ros-$ROS_DISTRO-tf2-ros-py; rosdep key tf2_ros_py). Using the {active_tf_path().describe()}")


__all__ = ["TfPath", "active_tf_path", "tf_message_class", "missing_tf2_ros_warning",
           "TF2_ROS", "TF2_MSGS", "FALLBACK"]
