"""The node as robots run it: a namespace and the shipped YAML, inputs whose stamps lag each other, /clock
jumping back under sim time, lifecycle transitions over the real services, parameter errors, and the TF path
(/tf with the generated tf2_msgs/TFMessage where it exists). Real rclpy and DDS throughout.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from test_ros_node import (  # noqa: E402
    NODE_PARAMS,
    T_MAP_LIDAR,
    Collector,
    Harness,
    lidar_cloud,
    stamp,
    tiny_checkpoint,
    wait_until,
)

from safnet_ros.data.labels import IGNORE_INDEX  # noqa: E402
from safnet_ros.ros import codecs, compat  # noqa: E402
from safnet_ros.ros.segment_node import SegmentNode, main  # noqa: E402
from safnet_ros.ros.tf_path import active_tf_path, tf_message_class  # noqa: E402

#: The type hash (RIHS01) of ROS 2's tf2_msgs/msg/TFMessage (Jazzy, Kilted): the generated type must equal it.
TFMESSAGE_TYPE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
SHIPPED_YAML = REPO / "config" / "segment.yaml"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")


class Ros:
    """One context with an executor spinning in a thread; nodes are added as they are made."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list = []
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=10.0)
        for node in reversed(self.nodes):
            node.destroy_node()
        rclpy.shutdown(context=self.context)


def subscribers(node, topic: str) -> int:
    return len(node.get_subscriptions_info_by_topic(topic))


# ----------------------------------------------------------------------------- namespaces and the shipped YAML
def test_node_under_a_namespace_takes_the_shipped_yaml_and_subscribes_to_its_topics(model_path, tmp_path):
    ros = Ros()
    try:
        overrides = [Parameter("model", value=str(model_path)), Parameter("device", value="cpu"),
                     Parameter("warm_up", value=False)]
        node = ros.add(SegmentNode(context=ros.context, namespace="/robot1", parameter_overrides=overrides,
                                   cli_args=["--ros-args", "--params-file", str(SHIPPED_YAML)]))
        assert node.get_fully_qualified_name() == "/robot1/safnet_segment"
        for name, topic in (("cloud_topic", "points"), ("rgb_topic", "rgb/image"), ("depth_topic", "depth/image"),
                            ("camera_info_topic", "camera_info")):
            assert node.get_parameter(name).value == f"~/{topic}"
            assert wait_until(lambda t=topic: subscribers(node, f"/robot1/safnet_segment/{t}") == 1, 5.0), topic
        # The same file with values that differ from the defaults, under a renamed node: applied too.
        changed = tmp_path / "segment.yaml"
        changed.write_text(SHIPPED_YAML.read_text().replace('cloud_topic: "~/points"', 'cloud_topic: "lidar/points"')
                           .replace("num_views: 3", "num_views: 2"))
        other = ros.add(SegmentNode(context=ros.context, namespace="/robot1", node_name="segmenter_b",
                                    parameter_overrides=overrides,
                                    cli_args=["--ros-args", "--params-file", str(changed)]))
        assert other.get_parameter("num_views").value == 2
        assert wait_until(lambda: subscribers(other, "/robot1/lidar/points") == 1, 5.0)
    finally:
        ros.close()


# ----------------------------------------------------------------------------- per-stream time
@pytest.fixture(scope="module")
def harness(model_path):
    h = Harness(model_path, params={**NODE_PARAMS, "keyframe_min_translation": 0.0,
                                    "keyframe_min_rotation_deg": 0.0})
    yield h
    h.close()


@pytest.mark.parametrize("lag", [0.0, 1.5, 5.0])
def test_clouds_lagging_the_frames_are_segmented_with_the_frames_views(harness, lag):
    """A slower LiDAR pipeline: the cloud is stamped ``lag`` s before the newest camera frame."""
    h = harness
    base = h.base_stamp()
    h.node.buffer.clear()
    jumps = h.node.stats.get("time_jumps")
    h.publish_views(base)  # frames at base, base + 0.5, base + 1.0
    if not wait_until(lambda: len(h.node.buffer) == 3, 10.0):
        h.publish_views(base)
    assert wait_until(lambda: len(h.node.buffer) == 3, 10.0), h.node.stats.counters
    t_cloud = base + 1.0 - lag
    msg, local = lidar_cloud(0.25, t_cloud)
    out = None
    for _ in range(3):  # best effort: resend if lost in transport
        h.pub_cloud.publish(msg)
        out = h.wait_cloud(t_cloud, timeout=20.0)
        if out is not None:
            break
    assert out is not None, h.node.stats.counters
    assert h.node.stats.get("time_jumps") == jumps
    assert len(h.node.buffer) == 3 and h.node.last_timings["views"] == 3
    arr = codecs.pointcloud2_to_array(out)
    labelled = arr["label"] != IGNORE_INDEX
    assert labelled.mean() > 0.5
    assert (arr["similarity"][labelled] != 0).mean() > 0.5  # image evidence: 2D features were fused


def test_a_cloud_stream_going_back_is_a_jump(harness):
    h = harness
    base = h.base_stamp()
    jumps = h.node.stats.get("time_jumps")
    h.pub_cloud.publish(lidar_cloud(0.5, base)[0])
    assert h.wait_cloud(base) is not None
    h.pub_cloud.publish(lidar_cloud(0.5, base - 1000.0)[0])  # before every cloud so far: the source looped
    assert h.wait_cloud(base - 1000.0) is not None
    assert h.node.stats.get("time_jumps") == jumps + 1 and len(h.node.buffer) == 0


def test_clock_jumping_back_under_sim_time_clears_views_and_the_tf_buffer(model_path):
    h = Harness(model_path, params={**NODE_PARAMS, "use_sim_time": True})
    try:
        clock = h.pub.create_publisher(Clock, "/clock", 10)
        assert wait_until(lambda: clock.get_subscription_count() > 0, 10.0)

        def tick(seconds: float) -> None:
            clock.publish(Clock(clock=stamp(seconds)))

        base = h.base_stamp()
        tick(base)
        assert wait_until(lambda: abs(h.node.get_clock().now().nanoseconds / 1e9 - base) < 1e-6, 5.0)
        h.publish_views(base)
        assert wait_until(lambda: len(h.node.buffer) >= 1, 10.0)
        jumps = h.node.stats.get("time_jumps")
        tick(base + 2.0)
        time.sleep(0.2)
        assert h.node.stats.get("time_jumps") == jumps  # forward: nothing happens
        tick(base - 30.0)  # the bag looped (ros2 bag play --loop --clock)
        assert wait_until(lambda: h.node.stats.get("time_jumps") == jumps + 1, 5.0)
        assert len(h.node.buffer) == 0
        if hasattr(h.node.tf_buffer, "all_frames"):  # the drop-in buffer cleared itself like tf2_ros'
            frames = h.node.tf_buffer.all_frames()
            assert "camera_optical" not in frames and "lidar" in frames
    finally:
        h.close()


# ----------------------------------------------------------------------------- lifecycle
def test_lifecycle_transitions_over_the_real_services(model_path, monkeypatch, capfd):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    ros = Ros()
    try:
        node = ros.add(SegmentNode(context=ros.context, node_name="safnet_lc", parameter_overrides=[
            Parameter("model", value=str(model_path)), Parameter("device", value="cpu"),
            Parameter("autostart", value=False), Parameter("chunk_size", value=8.0),
            Parameter("chunk_stride", value=8.0)]))
        client = ros.add(rclpy.create_node("lifecycle_manager", context=ros.context))
        change = client.create_client(ChangeState, "/safnet_lc/change_state")
        get = client.create_client(GetState, "/safnet_lc/get_state")
        assert change.wait_for_service(timeout_sec=10.0) and get.wait_for_service(timeout_sec=10.0)

        def call(cli, request):
            future = cli.call_async(request)
            assert wait_until(future.done, 60.0)
            return future.result()

        def state() -> int:
            return call(get, GetState.Request()).current_state.id

        def transition(tid: int) -> bool:
            return call(change, ChangeState.Request(transition=Transition(id=tid))).success

        points = "/safnet_lc/points"
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.segmenter is None
        assert subscribers(client, points) == 0

        if not compat.HAVE_TF2:  # configure warns when a ROS install is sourced without tf2_ros
            monkeypatch.setenv("ROS_DISTRO", "jazzy")
        capfd.readouterr()
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert state() == State.PRIMARY_STATE_INACTIVE and node.segmenter is not None
        if not compat.HAVE_TF2:
            err = capfd.readouterr().err
            assert "[WARN]" in err and "tf2_ros_py" in err, err
        # inactive (Nav2's pattern): the outputs exist from configure on, the inputs only while active
        assert subscribers(client, points) == 0
        assert wait_until(lambda: client.count_publishers("/safnet_lc/labeled_cloud") == 1, 5.0)

        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state() == State.PRIMARY_STATE_ACTIVE
        assert wait_until(lambda: subscribers(client, points) == 1, 5.0)
        got = Collector()
        client.create_subscription(PointCloud2, "/safnet_lc/labeled_cloud", got,
                                   QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        pub = client.create_publisher(PointCloud2, points, qos_profile_sensor_data)
        compat.StaticTransformBroadcaster(client).sendTransform(
            compat.matrix_to_transform(T_MAP_LIDAR, "map", "lidar"))
        msg, local = lidar_cloud(0.5, 10.0)
        out = None
        deadline = time.monotonic() + 30.0
        while out is None and time.monotonic() < deadline:
            pub.publish(msg)
            out = got.wait_for(lambda m: True, 1.0)
        assert out is not None and out.width == len(local)

        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert wait_until(lambda: subscribers(client, points) == 0, 5.0)
        assert client.count_publishers("/safnet_lc/labeled_cloud") == 1  # kept: never recreated on reactivation
        assert node.segmenter is not None and node._worker is None

        # deactivate -> activate: the same publisher delivers again (nothing was destroyed and recreated)
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert wait_until(lambda: subscribers(client, points) == 1, 5.0)
        msg, local = lidar_cloud(0.5, 20.0)
        out = None
        deadline = time.monotonic() + 30.0
        while out is None and time.monotonic() < deadline:
            pub.publish(msg)
            out = got.wait_for(lambda m: m.header.stamp.sec == 20, 1.0)
        assert out is not None and out.width == len(local)
        assert transition(Transition.TRANSITION_DEACTIVATE)

        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.segmenter is None and node.tf_buffer is None
        assert wait_until(lambda: client.count_publishers("/safnet_lc/labeled_cloud") == 0, 5.0)

        assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
        assert wait_until(lambda: subscribers(client, points) == 1, 5.0)
    finally:
        ros.close()


# ----------------------------------------------------------------------------- parameter errors
@pytest.mark.parametrize("arg, words", [
    ("chunk_size:=2", ["'chunk_size'", "2", "type int", "double"]),
    ("num_views:=20", ["'num_views'", "20", "0..16"]),
    ("sync_slop:=0.0", ["'sync_slop'", "0.0", "0.0001..10"]),
    ("similarity_marker_source:=colour", ["'similarity_marker_source'", "'colour'", "s_con"]),
    ("device:=tpu", ["'device'", "'tpu'", "cuda"]),
])
def test_a_bad_parameter_is_one_fatal_line_and_exit_status_2(arg, words, capfd):
    assert main(["segment_node", "--ros-args", "-p", arg, "-p", "warm_up:=false"]) == 2
    text = capfd.readouterr().err
    # (the module's harness node, also a 'safnet_segment', may log in this process meanwhile)
    fatal = [line for line in text.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and "cannot start" in fatal[0], text
    assert all(w in fatal[0] for w in words), fatal[0]
    assert "Traceback" not in text and "[ERROR]" not in text, text


# ----------------------------------------------------------------------------- the TF path
def test_active_tf_path_is_shared_and_tfmessage_has_the_standard_type_hash():
    path = active_tf_path()
    assert path.describe() in compat.backends()
    cls = tf_message_class()
    if cls is None:
        assert path.name == "fallback"
        pytest.skip("no tf2_msgs/TFMessage here (run `make venv`, which generates it)")
    ros = Ros()
    try:
        node = ros.add(rclpy.create_node("tf_hash_probe", context=ros.context))
        compat.FallbackTransformBroadcaster(node, tf_message=cls)
        (info,) = [i for i in node.get_publishers_info_by_topic("/tf") if i.node_name == "tf_hash_probe"]
        assert info.topic_type == "tf2_msgs/msg/TFMessage"
        assert str(info.topic_type_hash) == TFMESSAGE_TYPE_HASH
    finally:
        ros.close()


def test_drop_in_listener_on_tf_and_tf_static_with_tfmessage():
    cls = tf_message_class()
    if cls is None:
        pytest.skip("no tf2_msgs/TFMessage here (run `make venv`, which generates it)")
    ros = Ros()
    try:
        pub = ros.add(rclpy.create_node("tf_pub", context=ros.context))
        sub = ros.add(rclpy.create_node("tf_sub", context=ros.context))
        static = compat.FallbackStaticTransformBroadcaster(pub, tf_message=cls)
        # sent before the listener exists: /tf_static is transient local, like tf2_ros'
        static.sendTransform(compat.matrix_to_transform(T_MAP_LIDAR, "map", "lidar"))
        static.sendTransform(compat.matrix_to_transform(np.eye(4), "lidar", "lidar_mount"))
        buffer = compat.FallbackBuffer()
        listener = compat.FallbackTransformListener(buffer, sub, tf_message=cls)
        assert listener.topic == "/tf" and listener.static_topic == "/tf_static"
        dynamic = compat.FallbackTransformBroadcaster(pub, tf_message=cls)
        assert wait_until(lambda: dynamic.pub_tf.get_subscription_count() > 0, 5.0)
        T = np.eye(4)
        T[:3, 3] = [1.0, 2.0, 3.0]
        dynamic.sendTransform([compat.matrix_to_transform(T, "map", "camera", stamp=stamp(t)) for t in (5.0, 6.0)])
        assert wait_until(lambda: {"lidar", "lidar_mount", "camera"} <= set(buffer.all_frames()), 5.0)
        got = compat.transform_to_matrix(buffer.lookup_transform("map", "lidar_mount", 0))
        np.testing.assert_allclose(got, T_MAP_LIDAR, atol=1e-9)
        np.testing.assert_allclose(compat.transform_to_matrix(buffer.lookup_transform("map", "camera", 5_500_000_000)), T)
        listener.unregister()
    finally:
        ros.close()


# ----------------------------------------------------------------------------- the target, end to end
@pytest.mark.slow
def test_independent_client_replays_a_bag_into_the_node_under_robot1_with_clouds_late(model_path, tmp_path):
    """scripts/robot_replay.py: the node as its own process under /robot1 with the shipped YAML, a client of
    its own replaying a converted synthetic scene with every cloud 1.5 s behind the frames."""
    robot_replay = _robot_replay()
    bag = robot_replay.make_bag(tmp_path / "bag", frames=30)
    report = robot_replay.replay(bag, model=str(model_path), namespace="/robot1", cloud_delay=1.5,
                                 extra_params=("warm_up:=false",), log=lambda *_: None)
    assert report.clouds_sent >= 5
    assert report.labelled_fraction >= 0.6, report.table()
    assert report.time_jumps == 0, report.table()


def _robot_replay():
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import robot_replay
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return robot_replay


@pytest.mark.slow
def test_a_real_size_stream_at_its_recorded_rate_comes_back_labelled_with_image_evidence(model_path, tmp_path):
    """A real-size stream played as recorded, as a robot's camera driver sends it: 150 frames of 1296x968
    colour and registered depth at the recorded 30 Hz (5 s), 5 clouds, converted with ``bag convert
    --compressed`` (image_transport's ``/compressed`` JPEG and ``/compressedDepth`` PNG topics, ~0.14 MB a
    frame of this upscaled rendering instead of 6.3 MB raw), into the node as its own process under /robot1 with the shipped YAML and
    ``image_transport:=compressed``, over DDS at rate 1.0 while another process keeps a core busy
    (scripts/robot_replay.py; the benchmark of docs/benchmarks.md, "Real-size stream", on a 300-frame
    scene). TF: tf2_ros where importable, else our drop-in, whichever the node reports.

    Raw 6 MB frames are mostly lost by best-effort DDS on 2 cores (docs/benchmarks.md); compressed ones
    arrive, so most synchronised frames reach the node and the clouds come back with image evidence.
    """
    robot_replay = _robot_replay()
    bag = robot_replay.make_bag(tmp_path / "bag", frames=150, frame_rate=None, cloud_rate=1.0,
                                image_size=(1296, 968), overlap=0.98,  # the camera as fast as in the benchmark
                                compressed=True)
    assert robot_replay.bag_image_transport(bag) == "compressed"
    try:
        with robot_replay.BusyCores(1):
            report = robot_replay.replay(bag, model=str(model_path), namespace="/robot1", cloud_delay=1.5,
                                         extra_params=("warm_up:=false",), drain_s=15.0, log=lambda *_: None)
    finally:
        shutil.rmtree(bag, ignore_errors=True)
    table = report.table()
    print(table)
    assert report.image_transport == "compressed", table
    assert report.clouds_sent >= 4, table
    assert "tf2_ros" in report.diagnostics.get("backends", ""), table  # which TF the node used: in the table
    assert report.clouds_labelled >= report.clouds_sent - 1, table
    assert report.time_jumps == 0, table
    frames = report.counter("frames_synced")
    # the transport delivers: most of the 150 sets reach the synchroniser (raw frames: 5-44 of 291)
    assert frames >= 100, table
    assert report.counter("decode_errors") in (0, -1), table
    # A few frames can still miss their transform while the whole suite loads both cores and /tf arrives
    # late: the benchmark's 0-failure figure is on a machine without the suite running.
    assert report.counter("tf_failures") <= frames // 10, table
    assert report.counter("views_kept") >= 3, table
    assert report.point_evidence_fraction >= 0.5, table  # the target of docs/benchmarks.md


def test_launch_file_moves_the_rviz_topics_under_the_namespace():
    """launch/segment.launch.py's rewrite of config/safnet.rviz (run here without launch_ros installed)."""
    import ast

    source = (REPO / "launch" / "segment.launch.py").read_text()
    func = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "rviz_config_for_namespace")
    scope: dict = {}
    exec(compile(ast.Module(body=[func], type_ignores=[]), "segment.launch.py", "exec"), scope)
    rviz = (REPO / "config" / "safnet.rviz").read_text()
    topics = [line.split("Value:")[1].strip() for line in rviz.splitlines() if "Value: /" in line]
    names = ["labeled_cloud", "semantic_map", "similarity_markers"]
    assert sorted(topics) == [f"/safnet_segment/{name}" for name in names]
    moved = scope["rviz_config_for_namespace"](rviz, "/robot1")
    assert sorted(line.split("Value:")[1].strip() for line in moved.splitlines() if "Value: /" in line) == [
        f"/robot1/safnet_segment/{name}" for name in names]
    assert scope["rviz_config_for_namespace"](rviz, "") == rviz
