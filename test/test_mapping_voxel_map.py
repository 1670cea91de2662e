"""The semantic voxel map without ROS: fusion rules, eviction, NaN handling, PLY round trip, scoring."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.data.labels import NUM_CLASSES, class_colors, class_to_nyu40
from safnet_ros.errors import ConfigError, DataFormatError, MissingDataError
from safnet_ros.mapping import SemanticVoxelMap
from safnet_ros.mapping.map_ply import MapSaveError, load_map, save_map
from safnet_ros.mapping.score import score_labels, transfer_labels


def one_hot(labels, p=0.9):
    probs = np.full((len(labels), NUM_CLASSES), (1 - p) / (NUM_CLASSES - 1), np.float32)
    probs[np.arange(len(labels)), labels] = p
    return probs


def test_points_of_one_voxel_fuse_into_it_and_its_label_is_the_evidence_winner():
    m = SemanticVoxelMap(voxel_size=0.1, max_voxels=100, smoothing=0)  # fusion alone
    pts = np.array([[0.01, 0.02, 0.03], [0.05, 0.05, 0.05], [0.09, 0.01, 0.0], [0.15, 0.0, 0.0]])
    stats = m.integrate(pts, one_hot(np.array([3, 3, 5, 7])), sensor_origin=np.zeros(3))
    assert len(m) == 2 and stats.voxels_new == 2 and stats.points_used == 4
    snap = m.snapshot()
    order = np.argsort(snap.centres[:, 0])
    np.testing.assert_allclose(snap.centres[order], [[0.05, 0.05, 0.05], [0.15, 0.05, 0.05]], atol=1e-6)
    assert snap.labels[order].tolist() == [3, 7]
    assert snap.observations[order].tolist() == [3, 1]
    # count rule: mean probability of the winner over the voxel's points
    np.testing.assert_allclose(snap.confidence[order][0], (0.9 + 0.9 + 0.1 / 19) / 3, rtol=1e-5)
    # a second cloud changes the first voxel's mind
    m.integrate(pts[:1].repeat(4, 0), one_hot(np.full(4, 5)))
    snap = m.snapshot()
    assert snap.labels[np.argsort(snap.centres[:, 0])].tolist() == [5, 7]
    assert len(m) == 2


@pytest.mark.parametrize("fusion", ["count", "log"])
def test_fusion_rules_agree_on_clear_evidence_and_confidence_is_a_probability(fusion):
    rng = np.random.default_rng(0)
    m = SemanticVoxelMap(voxel_size=0.5, max_voxels=1000, fusion=fusion)
    pts = rng.uniform(0, 2, (3000, 3))
    truth = (pts[:, 0] > 1).astype(int) + 2 * (pts[:, 1] > 1)
    noisy = np.where(rng.random(3000) < 0.3, rng.integers(0, NUM_CLASSES, 3000), truth)
    m.integrate(pts, one_hot(noisy, 0.7), sensor_origin=np.ones(3))
    snap = m.snapshot()
    expect = (snap.centres[:, 0] > 1).astype(int) + 2 * (snap.centres[:, 1] > 1)
    assert (snap.labels == expect).all()
    assert ((snap.confidence > 0) & (snap.confidence <= 1)).all()
    np.testing.assert_allclose(m.evidence().read().sum(axis=1), 1.0, rtol=1e-5)


def test_log_rule_stays_bounded_and_can_change_its_mind():
    m = SemanticVoxelMap(voxel_size=1.0, max_voxels=10, fusion="log")
    p = np.zeros((1, 3))
    for _ in range(200):
        m.integrate(p, one_hot(np.array([1]), 0.99))
    assert m.snapshot().labels.tolist() == [1] and np.isfinite(m._scores[:1]).all()
    for _ in range(60):
        m.integrate(p, one_hot(np.array([4]), 0.99))
    assert m.snapshot().labels.tolist() == [4]


def test_nan_points_and_bad_probability_rows_never_enter():
    m = SemanticVoxelMap(voxel_size=0.1, max_voxels=100)
    pts = np.array([[np.nan, 0, 0], [0, np.inf, 0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1e12, 0, 0]])
    probs = one_hot(np.array([1, 1, 1, 1, 1, 1]))
    probs[3] = np.nan
    probs[4] = 0.0
    stats = m.integrate(pts, probs)
    assert stats.points_rejected == 5 and stats.points_used == 1 and len(m) == 1
    assert np.isfinite(m.snapshot().centres).all() and m.points_rejected == 5
    with pytest.raises(ConfigError, match="probabilities"):
        m.integrate(pts, probs[:, :3])


def test_max_voxels_bounds_the_map_and_evicts_farthest_from_the_sensor():
    m = SemanticVoxelMap(voxel_size=1.0, max_voxels=50, evict_fraction=0.2)
    for step in range(20):  # the sensor walks along x, 10 new voxels a step
        x = np.arange(10) + 10 * step + 0.5
        pts = np.stack([x, np.zeros(10) + 0.5, np.zeros(10) + 0.5], 1)
        m.integrate(pts, one_hot(np.full(10, step % NUM_CLASSES)), sensor_origin=np.array([x.mean(), 0, 0]))
        assert len(m) <= 50
    c = m.snapshot().centres
    assert c[:, 0].min() > 200 - 60  # only voxels near the sensor's latest position survive
    assert m.voxels_evicted > 0
    # a cloud bigger than the whole map keeps its voxels nearest the sensor
    pts = np.stack([np.arange(200) + 0.5, np.full(200, 5.5), np.full(200, 0.5)], 1)
    m.integrate(pts, one_hot(np.zeros(200, int)), sensor_origin=np.array([0.0, 5.0, 0.0]))
    assert len(m) == 50 and m.snapshot().centres[:, 0].max() < 50


def test_eviction_far_from_the_origin_keeps_every_row_distinct():
    """70 km from the map origin, squared distances computed as |c|^2 - 2c.o + |o|^2 lose metres^2 to
    rounding; eviction must still never pick a free row (a row handed out twice) nor the current cloud's."""
    m = SemanticVoxelMap(voxel_size=0.1, max_voxels=3000, evict_fraction=0.1)
    rng = np.random.default_rng(4)
    far = np.array([60000.0, -40000.0, 1.0])
    for step in range(40):
        origin = far + np.array([0.3 * step, 0.0, 0.0])
        pts = origin + rng.uniform(-1.5, 1.5, (1500, 3))
        m.integrate(pts, one_hot(np.full(1500, step % NUM_CLASSES)), sensor_origin=origin)
        assert len(m) <= 3000
        live = np.flatnonzero(m._alive[: m._hi])
        assert len(live) == len(m) and len(np.unique(m._keys[live])) == len(m)
        assert len(np.intersect1d(live, m._free)) == 0  # no row is both live and free
        keys, rows = m._index.items()
        assert sorted(rows.tolist()) == live.tolist()
        # the survivors are the voxels nearest the sensor: none farther than the farthest evicted one was
        d = np.linalg.norm(m._centres[live] - origin, axis=1)
        assert d.max() < 4.5  # this cloud reaches 2.6 m; the map keeps ~2 clouds' worth around the sensor
    assert m.voxels_evicted > 0


def test_settings_are_checked_with_one_clear_line():
    for kwargs, what in (({"max_voxels": 0}, "max_voxels"), ({"voxel_size": -0.1}, "voxel size"),
                         ({"voxel_size": float("nan")}, "voxel size"), ({"fusion": "max"}, "fusion"),
                         ({"smoothing": -1}, "smoothing weight"), ({"smoothing": float("nan")}, "smoothing weight"),
                         ({"smoothing": 101}, "smoothing weight"), ({"smoothing_cell": 0}, "smoothing cell"),
                         ({"smoothing_cell": "wide"}, "smoothing cell")):
        with pytest.raises(ConfigError, match=what):
            SemanticVoxelMap(**kwargs)


def test_clear_empties_the_map():
    m = SemanticVoxelMap(voxel_size=0.1)
    m.integrate(np.zeros((3, 3)), one_hot(np.array([1, 2, 2])))
    v = m.version
    m.clear()
    assert len(m) == 0 and m.version > v and m.snapshot().labels.shape == (0,)


@pytest.mark.parametrize("fusion", ["count", "log"])
def test_ply_round_trip_is_exact_and_readable_by_open3d_and_our_reader(tmp_path, fusion):
    from safnet_ros.data.ply import read_ply

    rng = np.random.default_rng(1)
    m = SemanticVoxelMap(voxel_size=0.05, max_voxels=10000, fusion=fusion)
    pts = rng.uniform(-1, 1, (2000, 3))
    m.integrate(pts, one_hot(rng.integers(0, NUM_CLASSES, 2000), 0.6))
    path = save_map(tmp_path / "sub" / "map.ply", m.snapshot(with_scores=True))
    back = load_map(path)
    assert back.voxel_size == 0.05 and back.fusion == fusion and len(back) == len(m)
    a, b = m.snapshot(), back.snapshot()
    oa, ob = np.lexsort(a.centres.T), np.lexsort(b.centres.T)
    np.testing.assert_allclose(a.centres[oa], b.centres[ob], atol=1e-6)
    np.testing.assert_array_equal(a.labels[oa], b.labels[ob])
    np.testing.assert_array_equal(a.observations[oa], b.observations[ob])
    np.testing.assert_allclose(a.confidence[oa], b.confidence[ob], rtol=1e-5)
    v = read_ply(path).elements["vertex"]
    np.testing.assert_array_equal(v["label"], class_to_nyu40(a.labels))
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), class_colors(a.labels))
    o3d = pytest.importorskip("open3d")
    pcd = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(pcd.points), a.centres, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pcd.colors) * 255.0, class_colors(a.labels), atol=0.6)
    # fusion continues on the reloaded map
    back.integrate(pts[:10], one_hot(np.zeros(10, int)))
    assert len(back) == len(m)


def test_loading_a_ply_without_the_map_fields_is_a_clear_error(tmp_path):
    from safnet_ros.data.ply import write_scannet_mesh

    mesh = tmp_path / "mesh.ply"
    write_scannet_mesh(mesh, np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), None,
                       labels=np.array([1, 2, 3]))
    with pytest.raises(DataFormatError, match="confidence, observations are missing"):
        load_map(mesh)
    with pytest.raises(MissingDataError):
        load_map(tmp_path / "nothing.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(DataFormatError):
        load_map(tmp_path / "junk.ply")


def test_a_map_from_another_tool_without_scores_loads_from_label_and_confidence(tmp_path):
    m = SemanticVoxelMap(voxel_size=0.2)
    m.integrate(np.array([[0.0, 0, 0], [1.0, 0, 0]]), one_hot(np.array([4, 9]), 0.8))
    path = save_map(tmp_path / "map.ply", m.snapshot(with_scores=False))
    back = load_map(path)
    snap = back.snapshot()
    order = np.argsort(snap.centres[:, 0])
    assert snap.labels[order].tolist() == [4, 9]
    np.testing.assert_allclose(snap.confidence[order], 0.8, rtol=1e-5)


def test_save_to_an_unwritable_place_fails_with_the_reason_and_leaves_nothing(tmp_path):
    m = SemanticVoxelMap(voxel_size=0.2)
    m.integrate(np.zeros((1, 3)), one_hot(np.array([1])))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MapSaveError, match="cannot save the map"):
        save_map(tmp_path / "file" / "map.ply", m.snapshot())
    with pytest.raises(MapSaveError, match="folder"):
        save_map(tmp_path, m.snapshot())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_transfer_and_score_use_the_nearest_voxel_within_the_distance():
    m = SemanticVoxelMap(voxel_size=0.1)
    m.integrate(np.array([[0.05, 0.05, 0.05], [1.05, 0.05, 0.05]]), one_hot(np.array([2, 3])))
    verts = np.array([[0.06, 0.05, 0.05], [1.0, 0.05, 0.05], [5.0, 5.0, 5.0], [np.nan, 0, 0]])
    labels = transfer_labels(m.snapshot(), verts)
    assert labels.tolist() == [2, 3, -1, -1]
    s = score_labels(np.array([2, 4, 3, 2]), labels)
    assert s["coverage"] == 0.5 and s["labelled_vertices"] == 2 and s["oa"] == 0.5
    assert s["miou"] == pytest.approx(1 / 3) and s["miou_all_vertices"] == pytest.approx(0.5 / 3)
