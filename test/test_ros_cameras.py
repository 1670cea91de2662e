"""Several cameras (the ``cameras`` parameter): each with its own topics and synchroniser, all into one view
buffer. A synthetic room converted with ``bag convert --second-camera`` (the second camera looks at another
part of the room) gives image evidence on more of each cloud with both cameras than with either alone; the
node runs under a namespace with real rclpy subscriptions, and a silent camera is named on /diagnostics.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from safnet_ros.ros import codecs  # noqa: E402
from safnet_ros.tools import bag_io as bio  # noqa: E402

CAMERA_TOPICS = {"a": (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC),
                 "b": (bio.CAMERA2_COLOR_TOPIC, bio.CAMERA2_DEPTH_TOPIC, bio.CAMERA2_INFO_TOPIC)}
NAMESPACE = "/robot1"


@pytest.fixture(scope="module")
def loop_scene(make_loop_scene) -> Path:
    """40 frames (320x240) of a synthetic room on a loop trajectory (the view turns round the room)."""
    return make_loop_scene(frames=40, seed=3)


@pytest.fixture(scope="module")
def two_camera_bag(loop_scene, tmp_path_factory) -> Path:
    """The loop scene at 10 Hz with a second camera 2 s (20 frames) ahead."""
    from safnet_ros.tools.bag_convert import convert_scene

    scene = loop_scene
    out = tmp_path_factory.mktemp("bags") / "two_cameras"
    conv = convert_scene(scene, out, rate=10.0, cloud_rate=1.0, second_camera=2.0, progress=False)
    assert conv.camera2_offset_frames == 20 and conv.clouds_written == 4
    return out


def _bag_messages(bag: Path) -> list[tuple[str, object]]:
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import PointCloud2
    from tf2_msgs.msg import TFMessage

    types = {bio.POINTS_TOPIC: PointCloud2, bio.TF_TOPIC: TFMessage, bio.TF_STATIC_TOPIC: TFMessage}
    for rgb, depth, info in CAMERA_TOPICS.values():
        types.update({rgb: Image, depth: Image, info: CameraInfo})
    with Reader(bag) as reader:
        return [(conn.topic, deserialize_message(bytes(raw), types[conn.topic]))
                for conn, _, raw in reader.messages() if conn.topic in types]


def _evidence(messages, segmenter, cameras: list[str]) -> tuple[float, dict[str, int]]:
    """Share of all cloud points with image evidence (similarity > 0) when the node, under a namespace,
    gets the frames of ``cameras`` through its own synchroniser callbacks; and its counters."""
    from safnet_ros.ros.segment_node import SegmentNode

    ctx = Context()
    rclpy.init(context=ctx)
    node = None
    try:
        params = [Parameter("warm_up", value=False), Parameter("map_enable", value=False),
                  Parameter("buffer_max_views", value=8), Parameter("cameras", value=cameras)]
        for name in cameras:
            for suffix, topic in zip(("rgb_topic", "depth_topic", "camera_info_topic"), CAMERA_TOPICS[name]):
                params.append(Parameter(f"cameras.{name}.{suffix}", value=topic))
        node = SegmentNode(segmenter=segmenter, context=ctx, namespace=NAMESPACE, parameter_overrides=params)
        assert [c for c, _, _ in node.camera_inputs] == cameras
        assert [subs[0].sub.topic_name for _, subs, _ in node.camera_inputs] == \
            [CAMERA_TOPICS[c][0] for c in cameras]
        for topic, msg in messages:  # the whole recorded TF first, as segment-bag reads it
            for t in msg.transforms if topic in (bio.TF_TOPIC, bio.TF_STATIC_TOPIC) else ():
                (node.tf_buffer.set_transform_static if topic == bio.TF_STATIC_TOPIC
                 else node.tf_buffer.set_transform)(t, "bag")
        role = {topic: (camera, i) for camera, topics in CAMERA_TOPICS.items() for i, topic in enumerate(topics)}
        sets: dict[tuple[str, int], dict[int, object]] = {}
        covered = total = 0
        for topic, msg in messages:
            if topic == bio.POINTS_TOPIC:
                sim = codecs.pointcloud2_to_array(node.process_cloud(msg))["similarity"]
                covered += int((np.nan_to_num(sim) > 0).sum())
                total += sim.size
            elif topic in role and role[topic][0] in cameras:
                camera, i = role[topic]
                group = sets.setdefault((camera, codecs.stamp_to_ns(msg.header.stamp)), {})
                group[i] = msg
                if len(group) == 3:
                    node._on_frames(group[0], group[1], group[2], camera)
        counters = dict(node.stats.counters)
        assert counters["tf_failures"] == 0 and counters["decode_errors"] == 0
        views = node.buffer.views()
        assert {v.camera for v in views} == set(cameras)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)
    return covered / max(total, 1), counters


@pytest.fixture(scope="module")
def segmenter():
    from safnet_ros.engine.inference import Segmenter

    return Segmenter.from_checkpoint(None, device="cpu", num_views=3, chunk_stride=1.5, max_points=3000)


@pytest.mark.ros
@pytest.mark.slow
def test_two_cameras_give_evidence_on_more_of_each_cloud_than_either_alone(two_camera_bag, segmenter):
    messages = _bag_messages(two_camera_bag)
    share_a, counters_a = _evidence(messages, segmenter, ["a"])
    share_b, _ = _evidence(messages, segmenter, ["b"])
    share_ab, counters_ab = _evidence(messages, segmenter, ["a", "b"])
    print(f"image evidence: camera a {share_a:.3f}, camera b {share_b:.3f}, both {share_ab:.3f}")
    assert 0 < share_a < 1 and 0 < share_b < 1
    assert share_ab > max(share_a, share_b) + 0.05
    # keyframes are judged per camera: camera b does not take a's keyframes away
    assert counters_ab["views_kept.a"] == counters_a["views_kept.a"] > 1
    assert counters_ab["frames_synced.a"] == counters_ab["frames_synced.b"] == 40


@pytest.mark.ros
@pytest.mark.slow
def test_each_camera_has_its_own_synchroniser_and_a_silent_one_is_named(segmenter, ros_session):
    """Real pub/sub under a namespace: sets published on camera 'back''s default topics reach its own
    synchroniser; camera 'front' never publishes and /diagnostics' watchdog names it and its topics."""
    from safnet_ros.ros.segment_node import SegmentNode

    ctx, executor = ros_session.context, ros_session.executor
    node = SegmentNode(segmenter=segmenter, context=ctx, namespace=NAMESPACE, parameter_overrides=[
        Parameter("warm_up", value=False), Parameter("map_enable", value=False),
        Parameter("cameras", value=["front", "back"]), Parameter("input_timeout", value=1.0),
        Parameter("diagnostics_period", value=0.2)])
    ros_session.add(node)
    prefix = f"{NAMESPACE}/safnet_segment"
    assert node.camera_topics()["back"] == ("~/back/rgb/image", "~/back/depth/image", "~/back/camera_info")
    pub_node = ros_session.add(rclpy.create_node("camera_back", context=ctx))
    pubs = [pub_node.create_publisher(Image, f"{prefix}/back/rgb/image", qos_profile_sensor_data),
            pub_node.create_publisher(Image, f"{prefix}/back/depth/image", qos_profile_sensor_data),
            pub_node.create_publisher(CameraInfo, f"{prefix}/back/camera_info", qos_profile_sensor_data)]
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    deadline = time.monotonic() + 20.0
    ns = 10**9
    while time.monotonic() < deadline and node.stats.get("frames_synced.back") < 3:
        ns += 10**8
        msgs = (bio.image_message(np.zeros((48, 64, 3), np.uint8), "rgb8", ns, "back_optical"),
                bio.image_message(np.full((48, 64), 1000, np.uint16), "16UC1", ns, "back_optical"),
                bio.camera_info_message(K, (64, 48), ns, "back_optical"))
        for pub, msg in zip(pubs, msgs):
            pub.publish(codecs_from_bag(msg, type(pub.msg_type())))
        for _ in range(6):  # one callback per spin_once: the three messages and the timers
            executor.spin_once(timeout_sec=0.02)
    assert node.stats.get("frames_synced.back") >= 3 and node.stats.get("frames_synced.front") == 0
    silent: list = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not any(s.name == "rgbd.front" for s in silent):
        executor.spin_once(timeout_sec=0.1)
        node.input_watchdog.observe(node.stats.counters)
        silent = node.input_watchdog.silent()
    texts = {s.name: s.text for s in silent}
    assert "rgbd.front" in texts and "rgbd.back" not in texts, texts
    assert f"{prefix}/front/rgb/image" in texts["rgbd.front"] and "camera 'front'" in texts["rgbd.front"]


def codecs_from_bag(msg, cls):
    """A rosbags message (bag_io's builders) as the rclpy message class ``cls``, through CDR."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(bio.serialize(msg), cls)


def test_keyframes_are_judged_per_camera():
    """Two cameras at the same stamps and poses: each keeps its own keyframes (neither suppresses the other)."""
    from safnet_ros.engine.pipeline import KEPT, NOT_KEYFRAME, SegmentationPipeline
    from safnet_ros.engine.view_buffer import KeyframePolicy, ViewBuffer

    pipeline = SegmentationPipeline(None, ViewBuffer(max_views=10, policy=KeyframePolicy(0.05, 5.0, 0.2)))
    frame = (np.zeros((24, 32, 3), np.uint8), np.ones((24, 32), np.float32),
             np.array([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]]))
    pose = np.eye(4)
    assert pipeline.offer_frame(1.0, pose, lambda: frame, "a") == KEPT
    assert pipeline.frame_due(1.0, "b") and not pipeline.frame_due(1.1, "a")
    assert pipeline.offer_frame(1.0, pose, lambda: frame, "b") == KEPT
    moved = pose.copy()
    moved[0, 3] = 0.01  # below the motion threshold, for either camera's last view
    assert pipeline.offer_frame(1.5, moved, lambda: frame, "a") == NOT_KEYFRAME
    moved[0, 3] = 0.2
    assert pipeline.offer_frame(1.5, moved, lambda: frame, "a") == KEPT
    assert [v.camera for v in pipeline.buffer.views()] == ["a", "b", "a"]
    assert pipeline.buffer.last("b").stamp == 1.0 and pipeline.buffer.last().camera == "a"


@pytest.mark.parametrize("value, words", [
    (["front", "front"], "names a camera twice"),
    (["front cam"], "must start with a letter"),
    (["1st"], "must start with a letter"),
])
def test_bad_camera_names_are_one_line(value, words):
    from safnet_ros.ros.params import SPECS, ParameterError, camera_parameters, check_value

    assert check_value(SPECS["cameras"], ["front", "back_2"]) == ["front", "back_2"]
    with pytest.raises(ParameterError, match=words):
        check_value(SPECS["cameras"], value)
    assert camera_parameters(["front"]) == {"cameras.front.rgb_topic": "~/front/rgb/image",
                                            "cameras.front.depth_topic": "~/front/depth/image",
                                            "cameras.front.camera_info_topic": "~/front/camera_info"}


def test_second_camera_bag_has_its_own_topics_and_frames(two_camera_bag):
    messages = _bag_messages(two_camera_bag)
    topics = {t for t, _ in messages}
    assert set(CAMERA_TOPICS["b"]) <= topics and set(CAMERA_TOPICS["a"]) <= topics
    (static,) = [m for t, m in messages if t == bio.TF_STATIC_TOPIC]
    assert {(t.header.frame_id, t.child_frame_id) for t in static.transforms} == {
        (bio.CAMERA_LINK_FRAME, bio.OPTICAL_FRAME), (bio.CAMERA2_LINK_FRAME, bio.CAMERA2_OPTICAL_FRAME)}
    children = {t.child_frame_id for topic, m in messages if topic == bio.TF_TOPIC for t in m.transforms}
    assert children == {bio.CAMERA_LINK_FRAME, bio.CAMERA2_LINK_FRAME}
    a = [m for t, m in messages if t == bio.COLOR_TOPIC]
    b = [m for t, m in messages if t == bio.CAMERA2_COLOR_TOPIC]
    assert len(a) == len(b) == 40 and all(m.header.frame_id == bio.CAMERA2_OPTICAL_FRAME for m in b)
    # camera2 at stamp k shows camera1's frame k + 20 (wrapping), at the same stamps
    for k in (0, 5, 30):
        assert b[k].header.stamp == a[k].header.stamp
        assert bytes(b[k].data) == bytes(a[(k + 20) % 40].data)


@pytest.mark.ros
def test_a_bad_cameras_value_stops_the_node_with_the_other_errors(segmenter):
    from safnet_ros.ros.params import ParameterError
    from safnet_ros.ros.segment_node import SegmentNode

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        with pytest.raises(ParameterError) as err:
            SegmentNode(segmenter=segmenter, context=ctx, parameter_overrides=[
                Parameter("warm_up", value=False), Parameter("cameras", value=["front", "front"]),
                Parameter("num_views", value=-1)])
        assert "names a camera twice" in str(err.value) and "num_views" in str(err.value)
        with pytest.raises(ParameterError, match="'cameras'.*list of strings"):
            SegmentNode(segmenter=segmenter, context=ctx, cli_args=["--ros-args", "-p", "cameras:=front"],
                        parameter_overrides=[Parameter("warm_up", value=False)])
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.ros
def test_the_shipped_two_camera_yaml_wires_two_cameras(segmenter):
    """config/two_cameras.yaml beside config/segment.yaml: two cameras with the file's topics under the
    namespace; their parameters are known to the parameter audit, a misspelt camera's are not."""
    from safnet_ros.ros import param_audit
    from safnet_ros.ros.segment_node import SegmentNode

    repo = Path(__file__).resolve().parents[1]
    cli_args = ["--ros-args", "--params-file", str(repo / "config" / "segment.yaml"),
                "--params-file", str(repo / "config" / "two_cameras.yaml"), "-p", "warm_up:=false",
                "-p", "cameras.frnt.rgb_topic:=/x"]
    ctx = Context()
    rclpy.init(context=ctx)
    node = None
    try:
        node = SegmentNode(segmenter=segmenter, context=ctx, namespace=NAMESPACE, cli_args=cli_args)
        assert node.cameras == ["front", "back"]
        assert node.camera_topics()["back"] == ("/back/color/image_raw", "/back/aligned_depth_to_color/image_raw",
                                                "/back/color/camera_info")
        assert [subs[2].sub.topic_name for _, subs, _ in node.camera_inputs] == [
            "/front/color/camera_info", "/back/color/camera_info"]
        warnings = param_audit.warn_undeclared(node, cli_args)
        assert len(warnings) == 1 and "'cameras.frnt.rgb_topic'" in warnings[0], warnings
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_bag_convert_second_camera_on_the_command_line(loop_scene, tmp_path):
    """`safnet bag convert --second-camera` as users type it; the output-folder guard still refuses an existing
    folder it did not write, and leaves it alone."""
    import subprocess
    import sys

    out = tmp_path / "bag"
    cmd = [sys.executable, "-m", "safnet_ros.cli", "bag", "convert", str(loop_scene), str(out), "--rate", "10",
           "--cloud-rate", "0", "--quiet", "--second-camera"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "second camera on /camera2/...: each frame 30 frames ahead" in done.stdout  # default 3 s at 10 Hz
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    refused = subprocess.run(cmd[:6] + [str(mine)] + cmd[7:], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error:"), refused.stderr
    assert (mine / "keep.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    bad = subprocess.run(cmd[:-1] + ["--second-camera", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--second-camera" in bad.stderr
