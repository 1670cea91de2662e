"""Spin an rclpy executor in a thread that survives entities destroyed from other threads.

``Executor.spin()`` dies with ``InvalidHandle`` when another thread destroys a publisher or subscription
while it builds its wait set (rclpy does not guard the entity's QoS event handlers), and with
``RCLError: ... the given context is not valid`` when Ctrl-C shuts the context down meanwhile. This
loop spins once at a time: it rebuilds the wait set after the first and ends quietly on the second.
"""
from __future__ import annotations

from typing import Any

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, ShutdownException


def spin_resilient(executor: Any, context: Any = None, period_s: float = 0.1) -> None:
    """Spin ``executor`` until its context shuts down or the executor is shut down."""
    while rclpy.ok(context=context) and not getattr(executor, "_is_shutdown", False):
        try:
            executor.spin_once(timeout_sec=period_s)
        except InvalidHandle:
            continue  # an entity was destroyed while the wait set was built: the next round leaves it out
        except (ExternalShutdownException, ShutdownException, KeyboardInterrupt):
            return
        except RCLError:  # a real error only while the context is still valid
            if rclpy.ok(context=context):
                raise
            return
