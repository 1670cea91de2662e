"""Every documented ``--ros-args`` command line does what its text says, as bash runs it.

The command lines are taken from the fenced code blocks of README.md and docs/*.md,
split into words by a real bash (so an unquoted ``~/points:=...`` is tilde-expanded
exactly as a user's shell would), and the words after ``--ros-args`` are given to
rclpy. A node with the segment node's name then resolves the node's default input
topics: every remap rule of the line must land on the topic it names, every ``-p``
must be a parameter the node declares, and every ``--params-file`` must exist.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)

#: The node's input topics (its defaults of cloud_topic, rgb_topic, depth_topic, camera_info_topic).
NODE_INPUTS = ("~/points", "~/rgb/image", "~/depth/image", "~/camera_info")


def documented_ros_args_lines() -> list[tuple[str, str]]:
    """``(where, command line)`` of every fenced command line with ``--ros-args``,
    backslash continuations joined."""
    found = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if "--ros-args" in line:
                    found.append((f"{path.relative_to(REPO)}: {line.strip()[:60]}", line.strip()))
    return found


def bash_words(line: str, home: str) -> list[str]:
    """The argv bash makes of ``line`` (quotes removed, ``~`` expanded with HOME=home)."""
    script = "set -- " + line + '\nprintf "%s\\0" "$@"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True,
                         env={"HOME": home, "PATH": "/usr/bin:/bin"}).stdout
    return out.decode().split("\0")[:-1]


def node_parameter_names() -> set[str]:
    try:  # the parameter table's home once it moves out of the node module
        from safnet_ros.ros.params import PARAMETERS
    except ImportError:
        from safnet_ros.ros.segment_node import PARAMETERS
    return {spec.name for spec in PARAMETERS} | {"use_sim_time"}


LINES = documented_ros_args_lines()


def test_the_docs_have_ros_args_lines():
    assert any("-r '~/points:=" in line for _, line in LINES), "the documented remap example is gone"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("line", [line for _, line in LINES], ids=[where for where, _ in LINES])
def test_documented_ros_args_do_what_they_say(line, tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from std_msgs.msg import String

    home = str(tmp_path / "home")
    words = bash_words(line, home)
    args = words[words.index("--ros-args"):]
    remaps, params, files = {}, [], []
    for flag, value in zip(args, args[1:]):
        assert not value.startswith(home), f"the shell expanded '~' in {value!r}: quote it ({line})"
        if flag in ("-r", "--remap"):
            source, _, target = value.partition(":=")
            remaps[source] = target
        elif flag in ("-p", "--param"):
            params.append(value.partition(":=")[0])
        elif flag == "--params-file":
            files.append(value)
    unknown = set(params) - node_parameter_names()
    assert not unknown, f"{line}: the node declares no parameter {sorted(unknown)}"
    for name in files:
        if "..." not in name and not name.startswith("/"):
            assert (REPO / name).is_file(), f"{line}: no file {name}"

    context = rclpy.Context()
    rclpy.init(args=["safnet_segment", *args], context=context)
    try:
        node = rclpy.create_node("safnet_segment", context=context)
        try:
            resolved = {t: node.create_subscription(String, t, lambda _m: None, 1).topic_name for t in NODE_INPUTS}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    for source, target in remaps.items():
        if source.startswith("__"):
            continue
        assert source in resolved, f"{line}: remaps {source}, which is not one of the node's inputs"
        assert resolved[source] == target, f"{line}: {source} resolves to {resolved[source]}, not {target}"
