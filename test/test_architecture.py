"""The package's layering rules, checked on the source: only ``safnet_ros/ros/`` imports rclpy."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "safnet_ros"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_ros_folder_imports_rclpy():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "ros":
            continue
        hits = sorted(m for m in _imported_modules(path) if m == "rclpy" or m.startswith("rclpy."))
        if hits:
            offenders.append(f"{rel}: {', '.join(hits)}")
    assert not offenders, "rclpy imported outside safnet_ros/ros/:\n" + "\n".join(offenders)


def test_the_check_sees_function_local_imports(tmp_path):
    """The scan finds an import inside a function body, where the tools used to import rclpy."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import rclpy\n    from rclpy.executors import MultiThreadedExecutor\n")
    assert _imported_modules(sample) == {"rclpy", "rclpy.executors"}
