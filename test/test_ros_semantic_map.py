"""The node's semantic map over real rclpy + DDS: ~/semantic_map (transient local), the real
~/save_map and ~/clear_map service calls, time jumps, diagnostics, probability fields on
~/labeled_cloud, and bad map settings refused at start."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from test_ros_node import (  # noqa: E402
    NODE_PARAMS,
    T_MAP_LIDAR,
    Collector,
    Harness,
    lidar_cloud,
    offline_segmenter,
    through_tf,
    tiny_checkpoint,
    wait_until,
)

from safnet_ros.data.labels import IGNORE_INDEX  # noqa: E402
from safnet_ros.engine.batching import prepare_view  # noqa: E402
from safnet_ros.engine.pipeline import transform_points  # noqa: E402
from safnet_ros.mapping import SemanticVoxelMap  # noqa: E402
from safnet_ros.mapping.map_ply import load_map  # noqa: E402
from safnet_ros.ros import codecs  # noqa: E402
from safnet_ros.ros.diagnostics import diagnostics_values  # noqa: E402

pytestmark = pytest.mark.ros

try:
    from std_srvs.srv import Trigger
except Exception:  # noqa: BLE001 - not installed, or its type support library missing
    Trigger = None
needs_std_srvs = pytest.mark.skipif(Trigger is None, reason="std_srvs (pip: ros-std-srvs) is not installed")

# outside_views ignore: points beyond the views stay unlabelled, so the fields of unlabelled points are checked too
MAP_PARAMS = {**NODE_PARAMS, "probabilities": "top3", "map_voxel_size": 0.1, "map_publish_rate": 20.0,
              "outside_views": "ignore"}


@pytest.fixture(scope="module")
def map_harness(tmp_path_factory):
    model = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")
    maps = tmp_path_factory.mktemp("maps")  # map_directory: the only folder the node writes maps into
    h = Harness(model, {**MAP_PARAMS, "map_directory": str(maps)})
    h.map_dir = maps
    h.maps = Collector()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.latched = latched
    yield h
    h.close()


def call(h, name: str, attempts: int = 1):
    """Call ~/name; with attempts > 1 (idempotent calls only) a request that gets no answer in 20 s is sent
    again: right after a service is (re)created, DDS may report it available before its reply path is
    matched, and the first request can then be lost under load."""
    client = h.pub.create_client(Trigger, f"/safnet_segment/{name}")
    try:
        assert client.wait_for_service(timeout_sec=30.0), f"no {name} service"
        for _ in range(attempts):
            future = client.call_async(Trigger.Request())
            if wait_until(future.done, 60.0 if attempts == 1 else 20.0):
                return future.result()
        raise AssertionError(f"{name} did not answer")
    finally:
        h.pub.destroy_client(client)


def segmented_cloud(h, base: float, spacing: float = 0.2):
    h.node.buffer.clear()
    sent = h.publish_views(base)
    if not wait_until(lambda: len(h.node.buffer) == 3, 30.0):
        sent = h.publish_views(base)
    assert wait_until(lambda: len(h.node.buffer) == 3, 30.0), h.node.stats.counters
    before = h.node.semantic_map.clouds_integrated
    msg, local = lidar_cloud(spacing, base + 1.2)
    h.pub_cloud.publish(msg)
    out = h.wait_cloud(base + 1.2)
    assert out is not None, h.node.stats.counters
    assert wait_until(lambda: h.node.semantic_map.clouds_integrated > before, 30.0)
    return sent, local, out


def test_map_is_published_latched_saved_and_cleared(map_harness, tmp_path):
    h = map_harness
    h.node.semantic_map.clear()
    sent, local, out = segmented_cloud(h, h.base_stamp())
    # the offline reference: the same messages, the same model, fused into a map of the same settings
    views = [prepare_view(codecs.image_to_rgb(rgb), codecs.depth_to_metres(depth), codecs.camera_info_to_K(info),
                          through_tf(T), stamp=codecs.stamp_to_ns(depth.header.stamp) / 1e9)
             for rgb, depth, info, T in sent]
    world = transform_points(through_tf(T_MAP_LIDAR), local)
    ref = offline_segmenter(h.model_path, h.node).segment(world, views)
    # SegmentResult.probs: the chunk-averaged class probabilities behind labels and confidence
    segd = ref.segmented
    np.testing.assert_allclose(ref.probs[segd].sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(ref.probs[segd].argmax(axis=1), ref.labels[segd])
    np.testing.assert_allclose(ref.probs[segd].max(axis=1), ref.confidence[segd], rtol=1e-5)
    assert (ref.probs[~segd] == 0).all()
    ref_map = SemanticVoxelMap(voxel_size=0.1)
    ref_map.integrate(world[ref.segmented], ref.probs[ref.segmented])

    # top3 probability fields on the labelled cloud
    names = [f.name for f in out.fields]
    assert names[7:] == ["p_label1", "p_label2", "p_label3", "p1", "p2", "p3"] and out.point_step == 48
    arr = codecs.pointcloud2_to_array(out)
    seg = arr["label"] != IGNORE_INDEX
    assert seg.any() and (~seg).any()
    np.testing.assert_array_equal(arr["p_label1"][seg], arr["label"][seg])
    np.testing.assert_allclose(arr["p1"][seg], arr["confidence"][seg], rtol=1e-5)
    assert (arr["p1"] >= arr["p2"]).all() and (arr["p2"] >= arr["p3"]).all()
    assert (arr["p_label1"][~seg] == IGNORE_INDEX).all() and (arr["p1"][~seg] == 0).all()

    # a late subscriber gets the map (transient local), in the fixed frame, as the offline map
    sm = h.node.semantic_map
    assert wait_until(lambda: sm._published_version == sm.map.version, 30.0)
    got = Collector()
    sub = h.pub.create_subscription(PointCloud2, "/safnet_segment/semantic_map", got, h.latched)
    try:
        msg = got.wait_for(lambda m: m.width > 0, 30.0)
    finally:
        h.pub.destroy_subscription(sub)
    assert msg is not None and msg.header.frame_id == "map"
    assert [(f.name, f.datatype) for f in msg.fields] == [
        ("x", PointField.FLOAT32), ("y", PointField.FLOAT32), ("z", PointField.FLOAT32), ("rgb", PointField.FLOAT32),
        ("label", PointField.UINT16), ("confidence", PointField.FLOAT32), ("observations", PointField.UINT32)]
    cloud = codecs.pointcloud2_to_array(msg)
    assert len(cloud) == len(ref_map) and cloud["observations"].sum() == ref.segmented.sum()
    mine = np.lexsort((cloud["z"], cloud["y"], cloud["x"]))
    ref_snap = ref_map.snapshot()
    c = ref_snap.centres
    theirs = np.lexsort((c[:, 2], c[:, 1], c[:, 0]))
    np.testing.assert_allclose(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)[mine], c[theirs], atol=1e-4)
    same = (cloud["label"][mine] == ref_snap.labels[theirs]).mean()
    assert same > 0.98, same  # float sums in another order may flip an exact tie

    # ~/save_map writes a PLY that loads back; a bad path is a failed response with the reason
    if Trigger is not None:
        path = h.map_dir / "maps" / "room.ply"
        h.node.set_parameters([Parameter("map_save_path", value=str(path))])
        res = call(h, "save_map")
        assert res.success, res.message
        assert len(load_map(path)) == len(ref_map)
        (h.map_dir / "a_file").write_text("x")
        h.node.set_parameters([Parameter("map_save_path", value=str(h.map_dir / "a_file" / "map.ply"))])
        res = call(h, "save_map")
        assert not res.success and "cannot save the map" in res.message and "a_file" in res.message
        res = call(h, "clear_map")
        assert res.success and f"cleared {len(ref_map)} voxels" == res.message
        assert len(sm) == 0
        assert wait_until(lambda: sm._published_version == sm.map.version, 30.0)  # the empty map went out


@needs_std_srvs
def test_node_keeps_running_after_a_failed_save_and_time_jump_clears_the_map(map_harness, tmp_path):
    h = map_harness
    base = h.base_stamp()
    (h.map_dir / "folder.ply").mkdir(exist_ok=True)
    h.node.set_parameters([Parameter("map_save_path", value="folder.ply")])  # a folder: refused
    res = call(h, "save_map")
    assert not res.success and "folder" in res.message
    segmented_cloud(h, base)
    sm = h.node.semantic_map
    assert len(sm) > 0
    clears = sm.clears
    past = base - 50.0  # the bag looped: the map of the old timeline is gone, the new cloud starts a new one
    before = sm.clouds_integrated
    msg, _ = lidar_cloud(0.4, past)
    h.pub_cloud.publish(msg)
    assert h.wait_cloud(past) is not None
    assert wait_until(lambda: sm.clouds_integrated > before, 30.0)
    assert sm.clears == clears + 1 and len(sm.map) > 0
    diag = h.diagnostics.wait_for(lambda m: "map_voxels" in diagnostics_values(m)
                                  and int(diagnostics_values(m)["map_clouds_integrated"]) > before, 30.0)
    assert diag is not None
    values = diagnostics_values(diag)
    assert int(values["map_voxels"]) > 0 and float(values["map_mib"]) > 0
    assert float(values["map_update_ms_mean"]) > 0 and values["map_save_failures"] != "0"
    assert h.node.stats.get("worker_errors") == 0


@pytest.mark.parametrize("param, value, words", [
    ("map_max_voxels", 0, "parameter 'map_max_voxels' = 0 is out of range: allowed 1..1000000000"),
    ("map_voxel_size", -0.05, "parameter 'map_voxel_size' = -0.05 is out of range: allowed (0, 10]"),
    ("map_publish_rate", 1000.0, "parameter 'map_publish_rate' = 1000.0 is out of range: allowed 0..50"),
    ("map_smoothing", -1.0, "parameter 'map_smoothing' = -1.0 is out of range: allowed 0..100"),
    ("map_smoothing_cell", 0.0, "parameter 'map_smoothing_cell' = 0.0 is out of range: allowed (0, 100]"),
    ("probabilities", "top5", "parameter 'probabilities' = 'top5' is not allowed: one of none | top3 | all"),
])
def test_bad_map_settings_are_refused_at_start_with_one_line(param, value, words, capfd):
    from safnet_ros.ros.segment_node import main

    assert main(["segment_node", "--ros-args", "-p", f"{param}:={value}", "-p", "device:=cpu",
                 "-p", "warm_up:=false"]) == 2  # a parameter error
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


@needs_std_srvs
def test_map_outlives_a_deactivate_activate_cycle_and_keeps_serving(map_harness, tmp_path):
    """deactivate -> activate keeps the map, its publisher and its services (Nav2's pattern: outputs live from
    configure to cleanup), so nothing is recreated under the same names and every reply still arrives."""
    h = map_harness
    sm = h.node.semantic_map
    segmented_cloud(h, h.base_stamp())
    voxels = len(sm)
    assert voxels > 0
    pub, save, clear = sm.pub_map, sm.srv_save, sm.srv_clear
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    try:
        assert sm.pub_map is pub and sm.srv_save is save and sm._timer is None  # kept; no publishing
        assert len(sm) == voxels
        path = h.map_dir / "inactive.ply"
        h.node.set_parameters([Parameter("map_save_path", value=str(path))])
        res = call(h, "save_map", attempts=3)  # an inactive node still saves its map (idempotent: retried)
        assert res.success, res.message
        assert len(load_map(path)) == voxels
    finally:
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert sm.pub_map is pub and sm.srv_save is save and sm.srv_clear is clear and sm._timer is not None
    segmented_cloud(h, h.base_stamp())  # the reactivated node segments and maps again
    assert len(sm) >= voxels
    assert wait_until(lambda: sm._published_version == sm.map.version, 30.0)
    got = Collector()
    sub = h.pub.create_subscription(PointCloud2, "/safnet_segment/semantic_map", got, h.latched)
    try:
        msg = got.wait_for(lambda m: m.width > 0, 30.0)  # latched, from the publisher of the first activation
    finally:
        h.pub.destroy_subscription(sub)
    assert msg is not None and msg.width == len(sm)
    res = call(h, "clear_map", attempts=3)  # idempotent here: a retry after a lost reply clears an empty map
    assert res.success and len(sm) == 0


def test_component_destroy_and_create_are_idempotent(map_harness):
    """cleanup -> destroy() (twice is harmless): topic and services gone, the map kept; configure -> create()."""
    from safnet_ros.ros.semantic_map_component import SemanticMapComponent

    h = map_harness
    sm = SemanticMapComponent(h.node.semantic_map.settings, "map")
    sm.map.integrate(np.zeros((4, 3)), np.full((4, 20), 0.05, np.float32))
    sm.create(h.pub)  # another node: the harness node's own map entities stay alone under their names
    sm.create(h.pub)  # idempotent
    try:
        assert sm.pub_map is not None and sm._timer is None
        sm.start_publishing()
        sm.start_publishing()
        assert sm._timer is not None
    finally:
        sm.destroy()
        sm.destroy()
    assert sm.pub_map is None and sm.srv_save is None and sm._timer is None
    assert len(sm) == 1
