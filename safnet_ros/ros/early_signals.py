"""Ctrl-C or SIGTERM while the node's process is still importing Python modules: one line, exit status 0.

The package's ``__init__`` installs :func:`exit_early` for both signals when the process is the node;
nothing exists yet that could be left behind, so it writes the line and ends the process. ``main``
hands the signals back to ros/shutdown.py before ``rclpy.init``. No rclpy: this runs on every import.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Optional

NODE_MODULE = "safnet_ros.ros.segment_node"


def node_program(orig_argv: Optional[list[str]] = None) -> bool:
    """True when this process was started as the node (``python -m safnet_ros.ros.segment_node`` or the
    ``segment_node`` script of ``ros2 run``), judged from the interpreter's own command line."""
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == NODE_MODULE:
        return True
    return any(os.path.basename(arg) == "segment_node" for arg in argv[:2])


def install() -> None:
    """SIGINT and SIGTERM end the process with one line and status 0 (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, exit_early)
        signal.signal(signal.SIGTERM, exit_early)


def exit_line(node_name: str, stage: str) -> int:
    """Write the one line of a requested shutdown during ``stage``; returns exit status 0. Printed: a ROS
    logger would add rcl's "Failed to publish log message to rosout" (the context is shut down)."""
    print(f"[INFO] [{node_name}]: shutdown requested (SIGINT/SIGTERM) while {stage}: exiting",
          file=sys.stderr, flush=True)
    return 0


def exit_early(signum: int, frame: Any) -> None:
    os._exit(exit_line("safnet_segment", "loading Python modules"))


__all__ = ["NODE_MODULE", "node_program", "install", "exit_line", "exit_early"]
