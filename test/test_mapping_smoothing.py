"""Read-out smoothing of the semantic map: what it changes, what it leaves, and that it matches its definition."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.data.labels import NUM_CLASSES
from safnet_ros.mapping import SemanticVoxelMap
from safnet_ros.mapping.map_ply import load_map, save_map
from safnet_ros.mapping.smoothing import cell_voxels, neighbourhood_blend


def probs(labels, p):
    out = np.full((len(labels), NUM_CLASSES), (1 - p) / (NUM_CLASSES - 1), np.float32)
    out[np.arange(len(labels)), labels] = p
    return out


def plane(n=12, size=0.04):
    """Points at the voxel centres of an n x n floor patch (z = 0.02 m), one point per voxel."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([(i.ravel() + 0.5) * size, (j.ravel() + 0.5) * size, np.full(n * n, 0.5 * size)], 1)


def test_an_uncertain_stray_voxel_takes_its_neighbourhoods_class_and_smoothing_0_keeps_it():
    pts = plane()
    labels = np.full(len(pts), 2)
    stray = 5 * 12 + 6
    labels[stray] = 7
    p = probs(labels, 0.9)
    p[stray] = probs([7], 0.5)[0]  # the network was unsure there
    for weight, expect in ((0.0, 7), (1.0, 2)):
        m = SemanticVoxelMap(voxel_size=0.04, smoothing=weight)
        m.integrate(pts, p)
        snap, dist = m.snapshot(), m.evidence().read()
        k = np.flatnonzero(np.all(np.abs(snap.centres - pts[stray]) < 1e-6, axis=1))[0]
        assert snap.labels[k] == expect
        assert (np.delete(snap.labels, k) == 2).all()
        np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(snap.labels, dist.argmax(axis=1))
        np.testing.assert_allclose(snap.confidence, dist.max(axis=1), rtol=1e-6)


def test_a_confident_voxel_in_a_mixed_neighbourhood_keeps_its_class_and_a_lone_voxel_is_untouched():
    pts = plane()
    rng = np.random.default_rng(0)
    labels = rng.choice([2, 5], len(pts))  # no class dominates the neighbourhood
    m = SemanticVoxelMap(voxel_size=0.04)
    m.integrate(pts, probs(labels, 0.95))
    order = np.lexsort(pts.T[::-1])
    assert (m.snapshot().labels == labels[order]).all()
    lone = SemanticVoxelMap(voxel_size=0.04)
    lone.integrate(np.array([[5.0, 5.0, 5.0]]), probs([9], 0.3))
    snap = lone.snapshot()
    assert snap.labels.tolist() == [9]
    np.testing.assert_allclose(snap.confidence, [0.3], rtol=1e-5)


def test_the_blend_is_the_mean_over_the_two_staggered_cells_as_documented():
    rng = np.random.default_rng(3)
    ijk = np.unique(rng.integers(-6, 6, (300, 3)), axis=0)
    dist = rng.dirichlet(np.ones(4), len(ijk))
    cell, weight = 4, 0.7
    got = neighbourhood_blend(ijk, dist, cell, weight)
    a = np.floor_divide(ijk, cell)
    b = np.floor_divide(ijk + cell // 2, cell)
    for v in range(len(ijk)):
        same_a = np.flatnonzero((a == a[v]).all(axis=1) & (np.arange(len(ijk)) != v))
        same_b = np.flatnonzero((b == b[v]).all(axis=1) & (np.arange(len(ijk)) != v))
        others = np.r_[same_a, same_b]
        want = dist[v] if len(others) == 0 else (dist[v] + weight * dist[others].mean(axis=0)) / (1 + weight)
        np.testing.assert_allclose(got[v], want, rtol=1e-5)
    np.testing.assert_allclose(neighbourhood_blend(ijk, dist, cell, 0.0), dist, rtol=1e-6)
    assert cell_voxels(0.16, 0.04) == 4 and cell_voxels(0.01, 0.04) == 2


def test_the_saved_map_keeps_its_smoothing_and_an_older_file_reads_without(tmp_path):
    pts = plane()
    labels = np.full(len(pts), 2)
    labels[::7] = 11
    m = SemanticVoxelMap(voxel_size=0.04, smoothing=2.0, smoothing_cell=0.2)
    m.integrate(pts, probs(labels, 0.6))
    path = save_map(tmp_path / "m.ply", m.snapshot(with_scores=True))
    back = load_map(path)
    assert (back.smoothing, back.smoothing_cell) == (2.0, 0.2)
    np.testing.assert_array_equal(back.snapshot().labels, m.snapshot().labels)
    assert (back.snapshot().labels == 2).all()  # every stray 11 smoothed away
    # a file written before read-out smoothing existed has no smoothing comment: its labels are kept
    text = path.read_bytes()
    head, body = text.split(b"end_header\n", 1)
    head = b"\n".join(l for l in head.split(b"\n") if not l.startswith(b"comment smoothing"))
    old = tmp_path / "old.ply"
    old.write_bytes(head + b"end_header\n" + body)
    raw = load_map(old)
    assert raw.smoothing == 0.0 and (raw.snapshot().labels == 11).sum() == (labels == 11).sum()
    again = load_map(old, smoothing=2.0, smoothing_cell=0.2)
    assert (again.snapshot().labels == back.snapshot().labels).all()


@pytest.mark.parametrize("fusion", ["count", "log"])
def test_reading_is_cached_per_version_and_follows_updates(fusion):
    pts = plane(6)
    m = SemanticVoxelMap(voxel_size=0.04, fusion=fusion)
    m.integrate(pts, probs(np.full(len(pts), 4), 0.8))
    first = m.evidence().read()
    m.snapshot()
    cached = m._readout_dist
    m.snapshot()
    assert m._readout_dist is cached  # no recomputation without a change
    m.integrate(pts, probs(np.full(len(pts), 6), 0.99))
    m.integrate(pts, probs(np.full(len(pts), 6), 0.99))
    assert (m.snapshot().labels == 6).all() and not np.allclose(first, m.evidence().read())


def _mixed_map(fusion, smoothing=1.0, seed=0):
    """A 12 x 12 floor patch of noisy labels 2 / 7 fused twice, read with ``smoothing``."""
    rng = np.random.default_rng(seed)
    pts = plane()
    m = SemanticVoxelMap(voxel_size=0.04, fusion=fusion, smoothing=smoothing)
    for _ in range(2):
        m.integrate(pts, probs(np.where(rng.random(len(pts)) < 0.3, 7, 2), 0.7))
    return m, pts


@pytest.mark.parametrize("fusion", ["count", "log"])
def test_a_snapshot_taken_outside_the_lock_equals_the_snapshot_under_it(fusion):
    import threading

    m, _ = _mixed_map(fusion)
    inside = m.snapshot(with_scores=True)
    m.forget_readout()
    outside = m.snapshot_outside(threading.Lock(), with_scores=True)
    for name in ("centres", "labels", "confidence", "observations", "scores"):
        np.testing.assert_array_equal(getattr(outside, name), getattr(inside, name))
    assert (outside.smoothing, outside.smoothing_cell, outside.fusion) == (1.0, m.smoothing_cell, fusion)
    assert m._readout_state == m._read_state()  # the read-out went back into the map's cache


def test_the_smoothing_runs_with_the_lock_released_and_a_stale_read_out_is_not_cached(monkeypatch):
    import threading

    import safnet_ros.mapping.voxel_map as voxel_map

    m, pts = _mixed_map("count")
    lock = threading.Lock()
    before = m.snapshot()
    m.forget_readout()
    blend, seen = voxel_map.neighbourhood_blend, []

    def blend_while_another_thread_fuses(*args, **kwargs):
        seen.append(lock.locked())
        with lock:  # what the node's worker does meanwhile: it must not wait for the read-out
            m.integrate(pts, probs(np.full(len(pts), 11), 0.99))
        return blend(*args, **kwargs)

    monkeypatch.setattr(voxel_map, "neighbourhood_blend", blend_while_another_thread_fuses)
    snap = m.snapshot_outside(lock)
    assert seen == [False]
    np.testing.assert_array_equal(snap.labels, before.labels)  # the copy's version, consistent in itself
    assert m._readout_state != m._read_state()  # that read-out is of an older version: not cached
    monkeypatch.setattr(voxel_map, "neighbourhood_blend", blend)
    fresh = m.snapshot_outside(lock)  # the next read sees the newer cloud
    assert (fresh.labels == m.snapshot().labels).all()
    assert (fresh.labels == 11).any() and not (before.labels == 11).any()
