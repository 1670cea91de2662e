"""The package's layering rules, checked on the source: only ``safnet_ros/ros/`` imports rclpy, the ROS
message packages and the ROS libraries (docs/ros_compat.md)."""
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


#: Top-level modules that belong to ROS 2 (rclpy, message packages, ROS libraries and launch).
ROS_MODULES = ("rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "builtin_interfaces", "rosgraph_msgs",
               "tf2_msgs", "visualization_msgs", "std_srvs", "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces",
               "tf2_ros", "message_filters", "cv_bridge", "sensor_msgs_py", "launch", "launch_ros")


def test_only_the_ros_folder_imports_rclpy_and_ros_packages():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "ros":
            continue
        hits = sorted(m for m in _imported_modules(path) if m.split(".")[0] in ROS_MODULES)
        if hits:
            offenders.append(f"{rel}: {', '.join(hits)}")
    assert not offenders, "ROS 2 modules imported outside safnet_ros/ros/:\n" + "\n".join(offenders)


def test_the_check_sees_function_local_imports(tmp_path):
    """The scan finds an import inside a function body, where the tools used to import rclpy."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import rclpy\n    from rclpy.executors import MultiThreadedExecutor\n")
    assert _imported_modules(sample) == {"rclpy", "rclpy.executors"}
