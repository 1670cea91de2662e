"""Wiring that cannot fail silently: a node left without input says so on /diagnostics, naming the input;
a misspelt parameter draws a warning with the closest known name; several bad values are reported at once.
Real rclpy and DDS: the node under /robot1, a second node listening on /diagnostics.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from test_ros_node import Collector, lidar_cloud, tiny_checkpoint, wait_until  # noqa: E402

from safnet_ros.ros import param_audit  # noqa: E402
from safnet_ros.ros.diagnostics import diagnostics_values  # noqa: E402
from safnet_ros.ros.input_watchdog import InputWatchdog  # noqa: E402
from safnet_ros.ros.segment_node import SegmentNode, main  # noqa: E402
from safnet_ros.ros.spin import spin_resilient  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")


def _ours(msg: DiagnosticArray) -> bool:
    return bool(msg.status) and msg.status[0].name.startswith("safnet_segment")


def last(collector: Collector) -> DiagnosticArray:
    return [m for m in list(collector.items) if _ours(m)][-1]


def test_a_node_without_input_warns_naming_each_silent_input(model_path):
    context = Context()
    rclpy.init(context=context)
    overrides = [Parameter("model", value=str(model_path)), Parameter("device", value="cpu"),
                 Parameter("warm_up", value=False), Parameter("input_timeout", value=1.0),
                 Parameter("diagnostics_period", value=0.2), Parameter("tf_timeout", value=0.0)]
    node = SegmentNode(context=context, namespace="/robot1", parameter_overrides=overrides)
    probe = rclpy.create_node("probe", context=context)
    diagnostics = Collector()
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 50)
    pub = probe.create_publisher(PointCloud2, "/robot1/safnet_segment/points", qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(probe)
    thread = threading.Thread(target=spin_resilient, args=(executor, context), daemon=True)
    thread.start()
    try:
        # first second: healthy (nothing has been silent for input_timeout yet)
        assert wait_until(lambda: any(_ours(m) for m in diagnostics.items), 5.0)
        first = next(m for m in diagnostics.items if _ours(m)).status[0]
        assert first.level == DiagnosticStatus.OK, first.message
        # then WARN, naming the cloud topic and the camera topics under the namespace; not the transform
        assert wait_until(lambda: last(diagnostics).status[0].level == DiagnosticStatus.WARN, 5.0)
        status = last(diagnostics).status[0]
        assert "no PointCloud2 on /robot1/safnet_segment/points" in status.message, status.message
        assert "no synchronised RGB-D set on /robot1/safnet_segment/rgb/image" in status.message, status.message
        assert "no transform" not in status.message
        assert diagnostics_values(last(diagnostics))["silent_inputs"] == "cloud,rgbd"
        # clouds arrive in a frame with no transform to 'map': the cloud is no longer silent, the transform is
        stop = threading.Event()

        def publish() -> None:
            t = 1000.0
            while not stop.is_set():
                pub.publish(lidar_cloud(0.5, t)[0])
                t += 0.1
                time.sleep(0.1)

        sender = threading.Thread(target=publish, daemon=True)
        sender.start()
        try:
            def transform_named() -> bool:
                msg = last(diagnostics).status[0].message
                return "no transform" in msg and "no PointCloud2" not in msg

            assert wait_until(transform_named, 10.0), last(diagnostics).status[0].message
            assert "'map'" in last(diagnostics).status[0].message
            assert diagnostics_values(last(diagnostics))["silent_inputs"] == "rgbd,transform"
        finally:
            stop.set()
            sender.join(timeout=2.0)
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)


def test_watchdog_clock_starts_at_activation_and_each_arrival_resets_it():
    now = [100.0]
    dog = InputWatchdog(5.0, {"cloud": "on /c"}, counters={"clouds_received": 7}, clock=lambda: now[0])
    now[0] = 104.9
    dog.observe({"clouds_received": 7})
    assert dog.silent() == []
    now[0] = 105.0
    dog.observe({"clouds_received": 7})  # counts from before activation do not count
    assert [s.name for s in dog.silent()] == ["cloud", "rgbd"]
    assert dog.silent()[0].text == "no PointCloud2 on /c for 5 s (since activation)"
    dog.observe({"clouds_received": 8})
    assert [s.name for s in dog.silent()] == ["rgbd", "transform"]  # clouds flow, none found its transform
    now[0] = 111.0
    dog.observe({"clouds_received": 8, "clouds_segmented": 1})
    assert [s.name for s in dog.silent()] == ["cloud", "rgbd"]
    assert "since the last one" in dog.silent()[0].text
    assert InputWatchdog(0.0, {}, clock=lambda: 1e9).silent() == []  # 0 = off


def test_misspelt_and_bad_parameters_are_all_reported_at_start(tmp_path, capfd):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    map_voxel_sise: 0.05\n    fixed_frame: odom\n"
                      "other_node:\n  ros__parameters:\n    nothing_of_ours: 1\n")
    status = main(["segment_node", "--ros-args", "-p", "cloud_topc:=/lidar/points", "-p", "num_view:=2",
                   "-p", "chunk_size:=2", "-p", "num_views:=20", "-p", "warm_up:=false", "-p", "device:=tpu",
                   "-p", "label_ids:=names", "-p", "similarity_marker_source:=colour",
                   "--params-file", str(params)])
    assert status == 2
    err = capfd.readouterr().err
    warns = [line for line in err.splitlines() if "[WARN]" in line and "is not a parameter" in line]
    assert len(warns) == 3, err
    assert "'cloud_topc'" in warns[0] and "did you mean 'cloud_topic'" in warns[0]
    assert "'num_view'" in warns[1] and "did you mean 'num_views'" in warns[1]
    assert "'map_voxel_sise'" in warns[2] and "did you mean 'map_voxel_size'" in warns[2] and str(params) in warns[2]
    fatal = [line for line in err.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1, err
    for name in ("'chunk_size'", "'num_views'", "'device' = 'tpu'", "'label_ids' = 'names'",
                 "'similarity_marker_source' = 'colour'"):
        assert name in fatal[0], (name, fatal[0])


def test_parameter_files_are_matched_to_the_node_as_rcl_does(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/robot1/safnet_segment:\n  ros__parameters:\n    a: 1\n    nested: {b: 2}\n"
                 "/**/safnet_segment:\n  ros__parameters:\n    c: 3\n"
                 "/robot2/safnet_segment:\n  ros__parameters:\n    d: 4\n")
    given = param_audit.given_parameters(["x", "--ros-args", "--params-file", str(f), "--", "-p", "e:=1"],
                                         "/robot1/safnet_segment")
    assert sorted(given) == ["a", "c", "nested.b"]
    assert param_audit.node_pattern_matches("/**", "/safnet_segment")
    assert param_audit.node_pattern_matches("safnet_segment", "/robot1/safnet_segment")
    assert not param_audit.node_pattern_matches("/*/safnet_segment", "/a/b/safnet_segment")


def test_max_points_warns_once_then_counts(model_path, capfd):
    from test_ros_node import NODE_PARAMS, Harness

    h = Harness(model_path, params={**NODE_PARAMS, "max_points": 200})
    try:
        for k in range(3):
            base = h.base_stamp()
            msg, local = lidar_cloud(0.3, base)
            assert len(local) > 200
            h.pub_cloud.publish(msg)
            assert h.wait_cloud(base) is not None, h.node.stats.counters
        assert h.node.stats.get("downsampled") == 3
    finally:
        h.close()
    err = capfd.readouterr().err
    warns = [line for line in err.splitlines() if "[WARN]" in line and "max_points" in line]
    assert len(warns) == 1 and "warned once" in warns[0], warns
