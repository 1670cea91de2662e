"""Launch for robots: segment.launch.py's arguments and temp-file clean-up, and the Nav2 lifecycle-manager setup
(config/nav2_lifecycle.yaml) driven over the node's real lifecycle services the way nav2_lifecycle_manager does
(configure every listed node, then activate every one). ``ros2 launch`` end to end where launch_ros exists.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "segment.launch.py"
NAV2_LAUNCH = REPO / "launch" / "segment_nav2.launch.py"
NAV2_PARAMS = REPO / "config" / "nav2_lifecycle.yaml"


def _functions(path: Path, *names: str) -> dict:
    """Top-level functions and constants of a launch file, run without launch installed."""
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in names)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in names for t in n.targets))]
    scope: dict = {"os": os}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), scope)
    return scope


def _declared_arguments(path: Path) -> set[str]:
    scope = _functions(path, "TOPIC_ARGUMENTS", "PASSED_ON")
    names = set(scope.get("TOPIC_ARGUMENTS", ())) | set(scope.get("PASSED_ON", ()))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_launch_file_has_the_robot_arguments():
    names = _declared_arguments(LAUNCH)
    assert {"cloud_topic", "rgb_topic", "depth_topic", "camera_info_topic", "fixed_frame", "log_level",
            "respawn", "namespace", "autostart", "params_file"} <= names


def test_the_rviz_temp_file_is_removed(tmp_path):
    remove = _functions(LAUNCH, "remove_file")["remove_file"]
    temp = tmp_path / "safnet_x.rviz"
    temp.write_text("x")
    remove(str(temp))
    assert not temp.exists()
    remove(str(temp))  # gone already: fine
    text = LAUNCH.read_text()
    assert "OnShutdown" in text and "atexit.register(remove_file" in text


@pytest.mark.ros
@pytest.mark.parametrize("namespace, pushed", [("", None), ("robot1", None), ("robot1", "fleet"), ("", "fleet")])
def test_log_level_reaches_the_node_under_any_namespace(namespace, pushed):
    """rcl names a node's logger after its namespace ('robot1.safnet_segment'): the launch file's
    ``--log-level`` arguments must name that logger, or ``log_level:=debug namespace:=robot1`` does nothing."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.logging import LoggingSeverity

    scope = _functions(LAUNCH, "_namespace", "_full_namespace", "_log_level_arguments")

    class LaunchConfiguration:  # launch's, for the one argument the functions read
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    scope["LaunchConfiguration"] = LaunchConfiguration
    context = type("Context", (), {})()
    context.launch_configurations = {"namespace": namespace, **({"ros_namespace": pushed} if pushed else {})}
    full = "/" + "/".join(p for p in (pushed, namespace) if p)
    args = scope["_log_level_arguments"](context, "debug")
    ros = rclpy.Context()
    rclpy.init(args=args, context=ros)
    try:
        node = rclpy.create_node("safnet_segment", namespace=full, context=ros)
        assert node.get_logger().get_effective_level() == LoggingSeverity.DEBUG, node.get_logger().name
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ros)
        for arg in args[2::2]:  # logger levels are the process's: back to inherited for the tests after
            rclpy.logging.set_logger_level(arg.split(":=")[0], LoggingSeverity.UNSET)


def test_nav2_launch_keeps_the_node_off_autostart_and_passes_every_argument():
    text = NAV2_LAUNCH.read_text()
    assert '"autostart": "false"' in text
    assert _declared_arguments(LAUNCH) - {"autostart"} <= _declared_arguments(NAV2_LAUNCH) | {"respawn_delay"}
    params = yaml.safe_load(NAV2_PARAMS.read_text())["lifecycle_manager_safnet"]["ros__parameters"]
    assert params == {"autostart": True, "node_names": ["safnet_segment"], "bond_timeout": 0.0}


@pytest.mark.ros
def test_nav2_lifecycle_manager_sequence_brings_the_node_up_and_down(tmp_path):
    """What nav2_lifecycle_manager does with config/nav2_lifecycle.yaml, over the real services."""
    rclpy = pytest.importorskip("rclpy")
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from test_ros_node import tiny_checkpoint

    from safnet_ros.ros.segment_node import SegmentNode
    from safnet_ros.ros.spin import spin_resilient

    model = tiny_checkpoint(tmp_path / "tiny.pt")
    params = yaml.safe_load(NAV2_PARAMS.read_text())["lifecycle_manager_safnet"]["ros__parameters"]
    context = Context()
    rclpy.init(context=context)
    node = SegmentNode(context=context, namespace="/robot1", parameter_overrides=[
        Parameter("model", value=str(model)), Parameter("device", value="cpu"), Parameter("warm_up", value=False),
        Parameter("autostart", value=False)])
    manager = rclpy.create_node("lifecycle_manager_safnet", namespace="/robot1", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(manager)
    import threading

    thread = threading.Thread(target=spin_resilient, args=(executor, context), daemon=True)
    thread.start()

    def call(client, request):
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(request)
        end = time.monotonic() + 20.0
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        assert future.done()
        return future.result()

    try:
        names = params["node_names"]
        change = {n: manager.create_client(ChangeState, f"{n}/change_state") for n in names}
        get = {n: manager.create_client(GetState, f"{n}/get_state") for n in names}
        assert [call(get[n], GetState.Request()).current_state.id for n in names] == [State.PRIMARY_STATE_UNCONFIGURED]
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):  # the manager's startup
            for n in names:
                assert call(change[n], ChangeState.Request(transition=Transition(id=transition))).success
        assert [call(get[n], GetState.Request()).current_state.id for n in names] == [State.PRIMARY_STATE_ACTIVE]
        assert len(manager.get_subscriptions_info_by_topic("/robot1/safnet_segment/points")) == 1
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):  # the manager's reset
            for n in reversed(names):
                assert call(change[n], ChangeState.Request(transition=Transition(id=transition))).success
        assert [call(get[n], GetState.Request()).current_state.id for n in names] == [State.PRIMARY_STATE_UNCONFIGURED]
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        manager.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.ros
def test_ros2_launch_end_to_end(tmp_path):
    if importlib.util.find_spec("launch_ros") is None or shutil.which("ros2") is None:
        pytest.skip("launch_ros / the ros2 CLI are not installed here: ros2 launch not run")
    proc = subprocess.Popen(["ros2", "launch", "safnet_ros", "segment.launch.py", "namespace:=robot1",
                             "cloud_topic:=/lidar/points", "device:=cpu", "log_level:=info", "rviz:=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120.0
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "lifecycle: active" in line:
                break
        assert any("lifecycle: active" in line for line in lines), "".join(lines)
        assert any("/lidar/points" in line for line in lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0
