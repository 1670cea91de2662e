"""Clean start and stop of the node: Ctrl-C or SIGTERM at any moment is one line and exit status 0.

rclpy's signal handler shuts the context down (and for SIGINT raises KeyboardInterrupt), so a signal
during start-up surfaces as whatever the constructor was doing: KeyboardInterrupt, ``RCLError: ...
context is invalid``, or a failed transition. :func:`requested` tells that case apart and
:func:`exit_line` writes the one line. :func:`log_transition` logs each lifecycle transition.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException

from safnet_ros.ros import early_signals
from safnet_ros.ros.early_signals import exit_line

#: What each transition step of the node does (by the step method's name), for the log.
_STEP_WORDS: dict[str, tuple[str, str]] = {
    "_configure": ("configuring", "configured (inactive)"),
    "_activate": ("activating", "active"),
    "_deactivate": ("deactivating", "inactive"),
    "_cleanup": ("cleaning up", "unconfigured"),
    "_release_all": ("shutting down", "finalized"),
}


def requested(context: Any = None, exc: Optional[BaseException] = None) -> bool:
    """True when a shutdown was asked for: the context is shut down, or ``exc`` is a Ctrl-C."""
    if isinstance(exc, (KeyboardInterrupt, ExternalShutdownException)):
        return True
    try:
        return not rclpy.ok(context=context)
    except Exception:  # noqa: BLE001 - a context that cannot even answer is a shut-down one
        return True


def install_sigterm() -> None:
    """Make SIGTERM interrupt the main thread as SIGINT does (call before ``rclpy.init``): rclpy's handler
    then calls it, so a long model load stops at once instead of running on against a dead context."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if signal.getsignal(signal.SIGINT) is early_signals.exit_early:  # back to Python's Ctrl-C
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quietly(action: Callable[[], Any]) -> None:
    """Run a release step after a requested shutdown; errors of an already invalid context are expected."""
    with contextlib.suppress(Exception):  # the context is gone: releasing may fail, nothing is left to leak
        action()


def log_transition(node: Any, step: Callable[[], Any], run: Callable[[], Any]) -> Any:
    """Run one lifecycle step (``node._configure`` ..., a name of :data:`_STEP_WORDS`) through ``run``
    (which returns the TransitionCallbackReturn), logging its start, outcome and duration."""
    doing, done = _STEP_WORDS[step.__name__]
    logger = node.get_logger()
    logger.info(f"lifecycle: {doing}")
    start = time.monotonic()
    result = run()
    if result.name != "SUCCESS" and requested(node.context):
        # the step failed because the context went away (Ctrl-C, SIGTERM): not an error, stop starting
        raise KeyboardInterrupt(f"shutdown requested while {doing}")
    seconds = time.monotonic() - start
    if result.name == "SUCCESS":
        logger.info(f"lifecycle: {done} after {seconds:.2f} s")
    else:
        logger.warning(f"lifecycle: {doing} failed ({result.name}) after {seconds:.2f} s")
    return result


__all__ = ["requested", "exit_line", "install_sigterm", "quietly", "log_transition"]
