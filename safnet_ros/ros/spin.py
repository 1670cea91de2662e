"""Spin an rclpy executor in a thread that survives entities destroyed from other threads.

``Executor.spin()`` dies with ``InvalidHandle`` when another thread destroys a publisher or subscription
while it builds its wait set (rclpy does not guard the entity's QoS event handlers), and with
``RCLError: ... the given context is not valid`` when Ctrl-C shuts the context down meanwhile. This
loop spins once at a time: it rebuilds the wait set after the first and ends quietly on the second.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor


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


class NodeThread:
    """A node of its own in ``context`` (no parameter services, no rosout), spun by a daemon thread once
    :meth:`start` is called: the TF listeners' way to keep /tf off the caller's executor.

    The thread makes its executor itself: a Ctrl-C (KeyboardInterrupt, main thread only) can then never
    cut an ``Executor.__init__`` short, whose ``__del__`` prints a traceback for the half-made object.
    :meth:`stop` shuts the executor down and joins the thread, so that nothing the thread waits on is
    destroyed under it; :meth:`destroy` stops, then destroys the node. Both idempotent.
    """

    def __init__(self, name: str, context: Any) -> None:
        self.node = rclpy.create_node(name, context=context, start_parameter_services=False, enable_rosout=False)
        self.executor: Any = None
        self._made = threading.Event()  # set once the thread has made its executor (or failed to)
        self.thread = threading.Thread(target=self._spin, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # context shut down under us: the thread just ends
            try:
                self.executor = SingleThreadedExecutor(context=self.node.context)
                self.executor.add_node(self.node)
            finally:
                self._made.set()
            spin_resilient(self.executor, self.node.context)

    def stop(self) -> None:
        if self.thread.ident is None:  # never started
            return
        self._made.wait(timeout=2.0)
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)

    def destroy(self) -> None:
        self.stop()
        self.node.destroy_node()
