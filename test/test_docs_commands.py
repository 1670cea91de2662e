"""Every documented command line that starts the node is copy-paste correct.

The command lines in README.md's and docs/*.md's code blocks that run the node (``ros2 run safnet_ros
segment_node``, ``python -m safnet_ros.ros.segment_node``) or its launch file (``ros2 launch safnet_ros
segment.launch.py``) are split as bash splits them (shlex; a word starting with an unquoted ``~`` is
expanded to $HOME, as bash does), then:

- every ``-p name:=value`` names a parameter the node declares;
- every ``-r from:=to`` remaps one of the node's topics to ``to`` when rcl applies it (rclpy resolves the
  node's topic names under the command's own remaps and namespace);
- every ``--params-file`` that names a file of this repository exists;
- every ``name:=value`` of ``ros2 launch`` is an argument the launch file declares.
"""
from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NODE_STARTS = ("ros2 run safnet_ros segment_node", "python -m safnet_ros.ros.segment_node")
LAUNCH_START = "ros2 launch safnet_ros "
#: The node's topics as it names them (docs/ros_node.md).
NODE_TOPICS = ("~/points", "~/rgb/image", "~/depth/image", "~/camera_info", "~/labeled_cloud",
               "~/similarity_markers", "~/semantic_map", "~/label_info", "/diagnostics", "/tf", "/tf_static")


def documented_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) of each node or launch command line in a fenced code block."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        fenced = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                fenced = not fenced
                i += 1
                continue
            start = i
            command = line
            while fenced and command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1] + " " + lines[i].strip()
            if fenced and (any(s in command for s in NODE_STARTS) or LAUNCH_START in command):
                found.append((str(path.relative_to(REPO)), start + 1, command))
            i += 1
    return found


COMMANDS = documented_commands()


def bash_words(command: str) -> list[str]:
    """The words bash passes to the program: shlex's split, comments dropped, leading ``~`` expanded."""
    raw = shlex.shlex(command, posix=False, punctuation_chars=False)
    raw.whitespace_split = True
    raw.commenters = "#"
    words = []
    for token in raw:
        word = shlex.split(token)[0] if token else token
        if token.startswith("~"):  # unquoted: bash's tilde expansion
            word = os.path.expanduser("~") + word[1:] if word.startswith("~/") or word == "~" else word
        words.append(word)
    return words


def _declared_parameters() -> set[str]:
    from safnet_ros.ros.segment_node import PARAMETERS

    return {spec.name for spec in PARAMETERS} | {"use_sim_time"}


def _launch_arguments(name: str) -> set[str]:
    path = REPO / "launch" / name
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("TOPIC_ARGUMENTS",) for t in node.targets):
            names |= set(ast.literal_eval(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_the_docs_have_node_commands():
    assert len([c for c in COMMANDS if any(s in c[2] for s in NODE_STARTS)]) >= 2, COMMANDS


@pytest.mark.parametrize("where, line, command", COMMANDS, ids=[f"{w}:{n}" for w, n, _ in COMMANDS])
def test_documented_command_is_copy_paste_correct(where, line, command):
    words = bash_words(command)
    if LAUNCH_START in command:
        i = words.index("launch")
        launch_file = words[i + 2]
        args = [w for w in words[i + 3:] if ":=" in w]
        unknown = [a.split(":=")[0] for a in args if a.split(":=")[0] not in _launch_arguments(launch_file)]
        assert not unknown, f"{where}:{line}: {launch_file} declares no argument {unknown}"
        return
    assert "--ros-args" in words, f"{where}:{line}: no --ros-args"
    ros = words[words.index("--ros-args") + 1:]
    params, remaps, files = [], [], []
    for i, word in enumerate(ros):
        nxt = ros[i + 1] if i + 1 < len(ros) else ""
        if word in ("-p", "--param"):
            params.append(nxt)
        elif word in ("-r", "--remap"):
            remaps.append(nxt)
        elif word == "--params-file":
            files.append(nxt)
    bad = [p for p in params if ":=" not in p or p.split(":=")[0] not in _declared_parameters()]
    assert not bad, f"{where}:{line}: not a parameter of the node: {bad}"
    for f in files:
        if not f.startswith("/path") and "..." not in f:
            assert (REPO / f).is_file(), f"{where}:{line}: --params-file {f} does not exist"
    topic_remaps = [r for r in remaps if not r.startswith("__")]
    if topic_remaps:
        _check_remaps(where, line, remaps, topic_remaps)


def _check_remaps(where: str, line: int, remaps: list[str], topic_remaps: list[str]) -> None:
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    assert all(":=" in r for r in remaps), f"{where}:{line}: remap without ':=': {remaps}"
    context = Context()
    rclpy.init(context=context, args=[])
    try:
        cli = ["--ros-args"] + [x for r in remaps for x in ("-r", r)]
        node = rclpy.create_node("safnet_segment", context=context, cli_args=cli)
        plain = rclpy.create_node("safnet_segment_plain", context=context, namespace=node.get_namespace())
        resolved = {t: node.resolve_topic_name(t) for t in NODE_TOPICS}
        for remap in topic_remaps:
            target = remap.split(":=", 1)[1]
            expected = plain.resolve_topic_name(target, only_expand=True)
            hits = [t for t, r in resolved.items() if r == expected]
            assert hits, (f"{where}:{line}: '-r {remap}' (as bash passes it) remaps none of the node's topics "
                          f"{list(NODE_TOPICS)}: quote a remap that starts with '~'")
        node.destroy_node()
        plain.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_an_unquoted_tilde_remap_is_caught_and_a_quoted_one_passes():
    home = os.path.expanduser("~")
    assert bash_words("x -r ~/points:=/lidar/points") == ["x", "-r", f"{home}/points:=/lidar/points"]
    assert bash_words("x -r '~/points:=/lidar/points'  # c") == ["x", "-r", "~/points:=/lidar/points"]
    with pytest.raises(AssertionError, match="remaps none"):
        _check_remaps("t", 1, [f"{home}/points:=/lidar/points"], [f"{home}/points:=/lidar/points"])
    _check_remaps("t", 1, ["__ns:=/robot1", "~/points:=/lidar/points"], ["~/points:=/lidar/points"])
