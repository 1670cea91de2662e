"""Start and stop as a user does it: the node in its own process (``python -m safnet_ros.ros.segment_node``),
SIGINT or SIGTERM sent at several points of start-up (while loading the model, while warming up, configured,
active). Each must exit 0 with one shutdown line, no traceback, and leave no file or process behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from safnet_ros.ros.dds_profile import PROFILE_ENV, large_data_profile, uses_fast_dds

pytest.importorskip("rclpy")

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


class NodeProcess:
    """The node as a child process; its log lines (stdout and stderr) collected as they come."""

    def __init__(self, tmp: Path, *params: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0",
                   TMPDIR=str(tmp), ROS_HOME=str(tmp / "ros_home"), ROS_LOG_DIR=str(tmp / "ros_log"))
        args = [sys.executable, "-m", "safnet_ros.ros.segment_node", "--ros-args", "-p", "device:=cpu"]
        for param in params:
            args += ["-p", param]
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if any(text in line for line in self.lines):
                    return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.005)
        return False

    def stop(self, sig: int, timeout: float = 30.0) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=5.0)
        return rc, "\n".join(self.lines)


# (what the node prints before the signal, extra delay after it, what it is doing then)
POINTS = [
    ("lifecycle: configuring", 0.0, "loading the model"),
    ("lifecycle: configuring", 0.4, "loading or warming up"),
    ("model warmed up", 0.0, "creating its outputs"),
    ("lifecycle: configured", 0.0, "configured, not yet active"),
    ("lifecycle: active", 0.5, "active"),
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("after, delay, doing", POINTS, ids=[p[2] for p in POINTS])
def test_a_signal_at_any_point_of_start_up_exits_0_with_one_line(tmp_path, sig, after, delay, doing):
    node = NodeProcess(tmp_path)
    assert node.wait_for(after), "\n".join(node.lines)
    time.sleep(delay)
    rc, text = node.stop(sig)
    assert rc == 0, f"{doing}: exit {rc}\n{text}"
    assert "Traceback" not in text and "[ERROR]" not in text and "[FATAL]" not in text, text
    lines = [line for line in text.splitlines() if "shutdown requested" in line]
    assert len(lines) == 1, text
    # nothing left behind: no file in the working directory or TMPDIR, no child process
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if not str(p.relative_to(tmp_path)).startswith(("ros_log", "ros_home")))
    assert left == [], left
    children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True).stdout
    assert children.strip() == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.35, 0.6])
def test_a_signal_while_python_imports_exits_0_with_one_line(tmp_path, sig, delay):
    """Before main() runs (numpy, rclpy, the package being imported): no traceback, no death by signal."""
    node = NodeProcess(tmp_path)
    time.sleep(delay)
    rc, text = node.stop(sig)
    assert rc == 0, f"exit {rc}\n{text}"
    lines = [line for line in text.splitlines() if "shutdown requested" in line]
    assert len(lines) == 1 and "Traceback" not in text, text


def test_the_early_handler_is_only_for_the_node_program():
    from safnet_ros.ros.early_signals import node_program

    assert node_program(["python", "-m", "safnet_ros.ros.segment_node", "--ros-args"])
    assert node_program(["/usr/bin/python3", "/ws/install/safnet_ros/lib/safnet_ros/segment_node"])
    assert not node_program(["python", "-m", "pytest", "test/"])
    assert not node_program(["python", "-m", "safnet_ros.cli", "bag", "play"])


def test_each_lifecycle_transition_is_logged(tmp_path):
    node = NodeProcess(tmp_path, "warm_up:=false")
    assert node.wait_for("lifecycle: active"), "\n".join(node.lines)
    rc, text = node.stop(signal.SIGINT)
    assert rc == 0, text
    order = ["lifecycle: configuring", "lifecycle: configured (inactive) after", "lifecycle: activating",
             "lifecycle: active after", "shutdown requested (SIGINT/SIGTERM) while running"]
    found = [next((i for i, line in enumerate(text.splitlines()) if word in line), -1) for word in order]
    assert -1 not in found and found == sorted(found), text
    if uses_fast_dds(os.environ) and not os.environ.get(PROFILE_ENV):  # full-size frames need it (ros/dds_profile.py)
        assert f"Fast DDS profile: {large_data_profile()}" in text, text


def test_the_device_found_is_logged_and_cuda_without_a_gpu_is_one_warning(tmp_path):
    import torch

    node = NodeProcess(tmp_path, "warm_up:=false", "device:=cuda")
    assert node.wait_for("lifecycle: active"), "\n".join(node.lines)
    rc, text = node.stop(signal.SIGINT)
    assert rc == 0, text
    found = [line for line in text.splitlines() if "inference device:" in line]
    assert len(found) == 1, text
    if torch.cuda.is_available():
        assert "inference device: cuda:0 = " in found[0] and " GiB " in found[0], found[0]
        assert "[WARN]" not in text, text
    else:
        assert "inference device: cpu (" in found[0] and "no CUDA" in found[0], found[0]
        warns = [line for line in text.splitlines() if "[WARN]" in line]
        assert len(warns) == 1 and "CUDA is not available" in warns[0], text
