"""Parameters given to the node that it does not declare: a WARN naming each and the closest known name.

rclpy ignores an override nobody declares, so ``-p cloud_topc:=...`` (a typo) would silently leave the
node on its default. The names given in the ``--ros-args`` sections (``-p`` and ``--params-file``, read
as rcl reads them) of the node's ``cli_args`` and the global arguments (``sys.argv``, or the list
:func:`set_global_args` recorded for ``rclpy.init``) are compared with the declared ones at start-up.
"""
from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Iterable, Optional, Sequence

import yaml

_global_args: Optional[list[str]] = None

#: Names rclpy or rcl declare or handle themselves; never reported.
_IGNORED_PREFIXES = ("qos_overrides.",)


def set_global_args(args: Optional[Sequence[str]]) -> None:
    """Record the argument list given to ``rclpy.init`` (None = ``sys.argv``)."""
    global _global_args
    _global_args = None if args is None else list(args)


def ros_args(argv: Iterable[str]) -> list[str]:
    """The tokens inside ``--ros-args ... [--]`` sections of ``argv``, in order."""
    out: list[str] = []
    inside = False
    for token in argv:
        if token == "--ros-args":
            inside = True
        elif token == "--" and inside:
            inside = False
        elif inside:
            out.append(token)
    return out


def node_pattern_matches(pattern: str, fqn: str) -> bool:
    """rcl's node-name matching for parameter files: ``/**``, ``/*``, a plain or full node name."""
    pattern = pattern.strip()
    if not pattern.startswith("/"):
        pattern = "/**/" + pattern if pattern not in ("**", "*") else "/" + pattern
    regex = ""
    for part in re.split(r"(\*\*|\*)", pattern):
        regex += {"**": ".*", "*": "[^/]*"}.get(part, re.escape(part))
    return re.fullmatch(regex.replace("/.*/", "(/.*)?/"), fqn) is not None


def _flatten(values: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            names += _flatten(value, name + ".")
        else:
            names.append(name)
    return names


def params_file_names(path: str, fqn: str) -> list[str]:
    """Parameter names a ``--params-file`` gives to the node ``fqn`` ([] when unreadable: rcl reports that)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return []
    names: list[str] = []
    for key, section in (data or {}).items() if isinstance(data, dict) else ():
        if isinstance(section, dict) and node_pattern_matches(str(key), fqn):
            params = section.get("ros__parameters")
            if isinstance(params, dict):
                names += _flatten(params)
    return names


def given_parameters(argv: Iterable[str], fqn: str) -> dict[str, str]:
    """name -> where it was given (``-p name:=...`` or the parameter file), for the node ``fqn``."""
    tokens = ros_args(argv)
    given: dict[str, str] = {}
    node_name = fqn.rsplit("/", 1)[-1]
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in ("-p", "--param") and ":=" in nxt:
            name = nxt.split(":=", 1)[0]
            if ":" in name:  # node_name:param:=value
                target, name = name.split(":", 1)
                if target not in (node_name, fqn):
                    continue
            given.setdefault(name, f"-p {nxt}")
        elif token == "--params-file" and nxt:
            for name in params_file_names(nxt, fqn):
                given.setdefault(name, f"--params-file {nxt}")
    return given


def warn_undeclared(node: Any, cli_args: Optional[Sequence[str]] = None,
                    will_declare: Iterable[str] = ()) -> list[str]:
    """Warn once per parameter given to ``node`` that it does not declare; returns the warnings.

    will_declare: names the node is about to declare (so the check can run before they are, and
    undeclared names are reported even when a bad value stops the node right after).
    """
    known = sorted({*node.list_parameters([], 0).names, *will_declare})
    argv = list(sys.argv if _global_args is None else _global_args) + list(cli_args or [])
    lines = []
    for name, where in given_parameters(argv, node.get_fully_qualified_name()).items():
        if name in known or name.startswith(_IGNORED_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        lines.append(f"parameter '{name}' ({where}) is not a parameter of this node and is ignored{hint}")
        node.get_logger().warning(lines[-1])
    return lines


__all__ = ["set_global_args", "ros_args", "node_pattern_matches", "params_file_names",
           "given_parameters", "warn_undeclared"]
