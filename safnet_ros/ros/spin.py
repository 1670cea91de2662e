"""Spin an rclpy executor in a thread that survives entities destroyed from other threads.

``Executor.spin()`` dies with ``InvalidHandle: cannot use Destroyable because
destruction was requested`` when another thread destroys a publisher or
subscription while the executor is building its wait set (rclpy adds the
entity's QoS event handlers without guarding them; seen in our tests, which
create and destroy subscriptions beside a spinning executor). A dead spin
thread answers no service and delivers no message again. This loop spins
once at a time and simply rebuilds the wait set after such a race.

It also ends quietly when the context is shut down (Ctrl-C, SIGINT) while the
executor builds its wait set: ``Executor.spin()`` raises ``RCLError: failed
to initialize wait set: the given context is not valid`` there (seen once in a
fresh clone's test of the node as a separate process: exit status 1 and a
traceback on Ctrl-C). The node's own ``main()`` spins with this loop too.
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
        except RCLError:
            # SIGINT shut the context down while the executor built its wait set ("the given context is
            # not valid"): a normal shutdown. With the context still valid it is a real error.
            if rclpy.ok(context=context):
                raise
            return
