"""``safnet``'s parser imports a command module only when its command is chosen (safnet_ros.cli.LazyCommands).

Each check runs ``safnet_ros.cli.main`` in a fresh interpreter, as a user's
``safnet ... --help`` does, and lists what it imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open3d", "matplotlib", "rclpy", "rosbags", "safnet_ros.data.synth", "safnet_ros.engine.evaluate",
         "safnet_ros.tools.demo")


def _imported_by(argv: list[str]) -> tuple[int, str, set[str]]:
    """(exit status, stdout, imported top modules and safnet_ros modules) of ``main(argv)`` in a fresh python."""
    code = ("import json, sys\nfrom safnet_ros.cli import main\nrc = main(%r)\n"
            "print('\\n' + json.dumps([rc, sorted(sys.modules)]))" % argv)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    *out, last = proc.stdout.rstrip("\n").split("\n")
    rc, modules = json.loads(last)
    return rc, "\n".join(out), set(modules)


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["bench", "--help"], ["demo", "--help"]])
def test_help_imports_no_heavy_module(argv):
    rc, out, modules = _imported_by(argv)
    assert rc == 0 and "usage: safnet" in out
    assert not [m for m in HEAVY if m in modules], sorted(m for m in HEAVY if m in modules)


def test_data_synth_help_imports_no_heavy_module():
    rc, out, modules = _imported_by(["data", "synth", "--help"])
    assert rc == 0 and "--frames" in out
    assert "open3d" not in modules and "safnet_ros.data.synth.generate" not in modules


def test_a_command_gets_its_module_s_description_and_options():
    rc, out, modules = _imported_by(["data", "info", "--help"])
    assert rc == 0 and "safnet_ros.data.info" in modules
    assert "Summarise one ScanNet-format scene folder" in out and "--json" in out
    rc, out, _ = _imported_by(["demo", "--help"])
    assert "a synthetic scene through a rosbag2" in out and "--offline" in out
    rc, out, modules = _imported_by(["eval", "--help"])
    assert rc == 0 and "safnet_ros.engine.evaluate" in modules and "--model CHECKPOINT" in out


def test_an_unknown_command_is_argparse_s_one_error():
    rc, _out, modules = _imported_by(["data", "nothing"])
    assert rc == 2 and "safnet_ros.data.info" not in modules
