"""The node writes maps only where it was told at start, and keeps its map across runs.

An independent rclpy client (its own context and node, as another process on the
DDS domain would be) sets ``map_save_path`` and calls ``~/save_map`` / ``~/load_map``:
it cannot make the node write outside ``map_directory`` or overwrite a file that is
not one of its maps, and cannot change ``map_directory``. A map saved, the node
restarted with ``map_file``, gives the same voxels and labels back; ``~/load_map``
does the same at run time; ``map_save_on_shutdown`` saves it when the node stops.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from test_ros_node import NODE_PARAMS, Harness, tiny_checkpoint  # noqa: E402

from safnet_ros.data.labels import NUM_CLASSES  # noqa: E402
from safnet_ros.mapping.map_ply import load_map  # noqa: E402

pytestmark = pytest.mark.ros

try:
    from std_srvs.srv import Trigger
except Exception:  # noqa: BLE001 - not installed, or its type support library missing
    Trigger = None
needs_std_srvs = pytest.mark.skipif(Trigger is None, reason="std_srvs (pip: ros-std-srvs) is not installed")

NODE = "/safnet_segment"


def fill_map(node, seed: int = 0, n: int = 3000) -> None:
    """Fuse one cloud of class probabilities into the node's map (as the pipeline does after segmenting)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-2.0, 2.0, (n, 3))
    logits = rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)
    logits[np.arange(n), (pts[:, 0] > 0).astype(int) * 3] += 4.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    node.semantic_map.integrate(pts, probs.astype(np.float32), np.zeros(3))


class Peer:
    """Another participant on the domain: its own context, node and clients."""

    def __init__(self):
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("a_peer", context=self.context)
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _call(self, srv_type, name, request, timeout=30.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"no {name}"
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=timeout)
            assert future.done(), f"{name} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_param(self, name: str, value: str):
        msg = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
        return self._call(SetParameters, f"{NODE}/set_parameters", SetParameters.Request(parameters=[msg])).results[0]

    def trigger(self, name: str):
        return self._call(Trigger, f"{NODE}/{name}", Trigger.Request())

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")


def start(model: Path, **params) -> Harness:
    return Harness(model, {**NODE_PARAMS, "warm_up": False, **params})


def snapshot_table(path_or_map) -> tuple[np.ndarray, np.ndarray]:
    vmap = load_map(path_or_map) if isinstance(path_or_map, (str, Path)) else path_or_map
    snap = vmap.snapshot()
    order = np.lexsort(snap.centres.T[::-1])
    return np.round(snap.centres[order], 5), snap.labels[order]


@needs_std_srvs
def test_a_peer_cannot_make_the_node_write_outside_its_map_directory(model, tmp_path):
    maps = tmp_path / "maps"
    outside = tmp_path / "home"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"the operator's file\n")
    (maps).mkdir()
    os.symlink(outside, maps / "link")  # a link planted inside the directory, leading out
    (maps / "notes.ply").write_bytes(b"ply\nformat ascii 1.0\ncomment my own scan\nend_header\n")
    notes = (maps / "notes.ply").read_bytes()
    h = start(model, map_directory=str(maps))
    peer = Peer()
    try:
        fill_map(h.node)
        # map_directory is read-only: the peer cannot move it
        assert not peer.set_param("map_directory", str(outside)).successful
        for request in (str(victim), "../home/victim.txt", str(outside / "new.ply"), "link/victim.ply",
                        "../home/x.ply", "notes.ply", "map.txt"):
            assert peer.set_param("map_save_path", request).successful  # a run-time parameter ...
            res = peer.trigger("save_map")  # ... that cannot lead outside, nor over a file that is not ours
            assert not res.success, (request, res.message)
            assert "map directory" in res.message or "not a safnet map" in res.message or ".ply" in res.message
        assert victim.read_bytes() == b"the operator's file\n"
        assert (maps / "notes.ply").read_bytes() == notes
        assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
        # inside the directory: saved, and saved again over our own map
        assert peer.set_param("map_save_path", "run1.ply").successful
        for _ in range(2):
            res = peer.trigger("save_map")
            assert res.success, res.message
        assert str(maps / "run1.ply") in res.message and len(load_map(maps / "run1.ply")) == len(h.node.semantic_map)
    finally:
        peer.close()
        h.close()


@needs_std_srvs
def test_map_saved_restart_loads_the_same_voxels_and_labels(model, tmp_path):
    maps = tmp_path / "maps"
    h = start(model, map_directory=str(maps), map_save_path="run1.ply", map_save_on_shutdown=True)
    try:
        fill_map(h.node, seed=1)
        expected = snapshot_table(h.node.semantic_map.map)
        assert len(expected[1]) > 100
    finally:
        h.close()  # map_save_on_shutdown: saved as the node stops
    saved = maps / "run1.ply"
    assert saved.is_file()
    np.testing.assert_array_equal(snapshot_table(saved)[1], expected[1])

    # restart with map_file: the same voxels and labels are back at configure
    h = start(model, map_directory=str(maps), map_file=str(saved), map_save_path="run2.ply")
    peer = Peer()
    try:
        got = snapshot_table(h.node.semantic_map.map)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        # ~/load_map at run time: clear, then load run1.ply back
        h.node.semantic_map.clear()
        assert len(h.node.semantic_map) == 0
        assert peer.set_param("map_save_path", "run1.ply").successful
        res = peer.trigger("load_map")
        assert res.success and f"loaded {len(expected[1])} voxels" in res.message, res.message
        got = snapshot_table(h.node.semantic_map.map)
        np.testing.assert_array_equal(got[1], expected[1])
        # a map of another frame is refused with the reason; the current map is kept
        text = saved.read_bytes().replace(b"comment frame map", b"comment frame odom", 1)
        (maps / "odom.ply").write_bytes(text)
        assert peer.set_param("map_save_path", "odom.ply").successful
        res = peer.trigger("load_map")
        assert not res.success and "'odom'" in res.message and len(h.node.semantic_map) == len(expected[1])
    finally:
        peer.close()
        h.close()


def test_a_map_file_of_another_voxel_size_fails_configure_with_one_line(model, tmp_path, capfd):
    from safnet_ros.mapping import SemanticVoxelMap
    from safnet_ros.mapping.map_ply import save_map
    from safnet_ros.ros.segment_node import main

    vmap = SemanticVoxelMap(voxel_size=0.2)
    vmap.integrate(np.zeros((1, 3)), np.full((1, NUM_CLASSES), 1.0 / NUM_CLASSES, np.float32))
    path = save_map(tmp_path / "coarse.ply", vmap.snapshot(with_scores=True))
    rc = main(["segment_node", "--ros-args", "-p", f"map_file:={path}", "-p", "device:=cpu", "-p", "warm_up:=false",
               "-p", f"model:={model}", "-p", f"map_directory:={tmp_path}"])
    err = capfd.readouterr().err
    assert rc != 0 and "map_file" in err and "coarse.ply" in err and "voxel size" in err, err
    assert "Traceback" not in err
