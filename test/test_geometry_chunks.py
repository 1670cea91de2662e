"""Chunking covers every point; random training chunks; point sampling; vote accumulation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.errors import ConfigError, DataFormatError
from safnet_ros.geometry.chunks import VoteAccumulator, chunk_grid, random_chunk, sample_points


def _members(chunks, n: int) -> np.ndarray:
    counts = np.zeros(n, np.int64)
    for ch in chunks:
        np.add.at(counts, ch.index, 1)
    return counts


def _check_boxes(xy, chunks, size, exact_membership: bool):
    half = size / 2
    for ch in chunks:
        own = ch.index[: len(ch.index) - ch.merged]
        assert np.all(np.abs(xy[own] - ch.center) <= half + 1e-9)
        assert np.all(np.diff(own) > 0)
        if exact_membership:  # every point strictly inside the box is in the chunk
            strictly = np.flatnonzero(np.all(np.abs(xy - ch.center) < half - 1e-9, axis=1))
            assert np.isin(strictly, ch.index).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 3000),
    extent=st.tuples(st.floats(0.0, 9.0), st.floats(0.0, 9.0)),
    min_points=st.integers(1, 400),
    sparse_corners=st.booleans(),
)
def test_chunk_grid_covers_every_point(seed, n, extent, min_points, sparse_corners):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0, 1, (n, 3)) * [extent[0], extent[1], 3.0] + rng.normal(0, 50, 3)
    if sparse_corners:  # a dense room plus a few far, isolated points
        corners = xyz[:1] + np.array([[extent[0] + 4, 0, 0], [-5, extent[1] + 3, 1], [-7, -6, 2]])
        xyz = np.vstack([xyz, corners])
    xy = xyz[:, :2]
    for small in ("merge", "keep"):
        chunks = chunk_grid(xyz, size=1.5, stride=0.5, min_points=min_points, small=small)
        counts = _members(chunks, len(xyz))
        assert counts.min() >= 1, small
        _check_boxes(xy, chunks, 1.5, exact_membership=(small == "keep"))
        if small == "merge":
            kept_big = [len(c) - c.merged >= min_points for c in chunks]
            assert all(kept_big) or len(chunks) == 1
        else:
            assert counts.max() <= 16  # 3 boxes per axis, 4 for points exactly on box edges
    if sparse_corners and min_points > 1 and n >= 50 * min_points:
        assert sum(c.merged for c in chunk_grid(xyz, min_points=min_points)) >= 3


def test_one_point_and_degenerate_clouds():
    one = chunk_grid(np.array([[1.0, 2.0, 0.5]]), min_points=100)
    assert len(one) == 1 and one[0].index.tolist() == [0]
    np.testing.assert_allclose(one[0].center, [1.0, 2.0])
    line = np.c_[np.zeros(500), np.linspace(0, 6, 500), np.zeros(500)]  # all x equal
    chunks = chunk_grid(line, min_points=1)
    assert _members(chunks, 500).min() >= 1
    assert len({tuple(c.center) for c in chunks}) == len(chunks)
    same = np.zeros((10, 3))
    assert [c.index.tolist() for c in chunk_grid(same, min_points=1)] == [list(range(10))]
    assert chunk_grid(np.zeros((0, 3))) == []


def test_grid_layout_for_a_room():
    rng = np.random.default_rng(0)
    xyz = rng.uniform([0, 0, 0], [6, 5, 3], (20_000, 3))
    chunks = chunk_grid(xyz, size=1.5, stride=0.5, min_points=10)
    # ceil((6 - 1.5) / 0.5) + 1 = 10 columns, ceil((5 - 1.5) / 0.5) + 1 = 8 rows
    assert len(chunks) == 80
    centers = np.array([c.center for c in chunks])
    np.testing.assert_allclose(np.unique(np.round(np.diff(np.unique(centers[:, 0])), 9)), [0.5])
    # an interior point lies in 3 x 3 = 9 chunks; a point near a corner in 1
    counts = _members(chunks, len(xyz))
    inner = np.all(np.abs(xyz[:, :2] - [3.1, 2.6]) < 0.05, axis=1)
    assert np.all(counts[inner] == 9)
    corner = np.all(xyz[:, :2] < 0.4, axis=1)
    assert np.all(counts[corner] == 1)


def test_small_chunks_are_merged_into_the_nearest_kept_chunk():
    rng = np.random.default_rng(1)
    room = rng.uniform([0, 0, 0], [3, 3, 3], (3000, 3))
    stray = np.array([[6.0, 1.0, 1.0]])  # 3 m east of the room: its own boxes have 1 point
    xyz = np.vstack([room, stray])
    merged = chunk_grid(xyz, min_points=50)
    owners = [c for c in merged if 3000 in c.index]
    assert len(owners) == 1 and owners[0].merged == 1
    others_x = [c.center[0] for c in merged]
    assert owners[0].center[0] == max(others_x)  # the nearest (east-most) kept chunk
    kept = chunk_grid(xyz, min_points=50, small="keep")
    assert any(c.index.tolist() == [3000] for c in kept)


def test_chunk_grid_rejects_bad_input():
    with pytest.raises(ConfigError, match="gaps"):
        chunk_grid(np.zeros((3, 3)), size=1.0, stride=2.0)
    with pytest.raises(DataFormatError, match="non-finite"):
        chunk_grid(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(DataFormatError):
        chunk_grid(np.zeros(5))


def test_random_chunk_is_a_box_around_a_point():
    rng = np.random.default_rng(2)
    xyz = rng.uniform([0, 0, 0], [5, 5, 3], (5000, 3))
    for _ in range(20):
        ch = random_chunk(xyz, size=1.5, rng=rng, min_points=100)
        assert ch is not None and len(ch) >= 100
        inside = np.all(np.abs(xyz[:, :2] - ch.center) <= 0.75, axis=1)
        np.testing.assert_array_equal(ch.index, np.flatnonzero(inside))
        assert np.any(np.all(xyz[:, :2] == ch.center, axis=1))  # centred on a point
    sparse = rng.uniform(0, 100, (50, 3))
    assert random_chunk(sparse, rng=rng, min_points=10, max_tries=5) is None
    only = random_chunk(xyz, rng=rng, min_points=1, candidates=np.array([7]))
    np.testing.assert_allclose(only.center, xyz[7, :2])


def test_sample_points():
    rng = np.random.default_rng(3)
    idx = np.arange(100, 200)
    s = sample_points(idx, 40, rng)
    assert len(s) == 40 and len(np.unique(s)) == 40 and np.isin(s, idx).all()
    s = sample_points(idx, 250, rng)
    assert len(s) == 250 and set(s.tolist()) == set(idx.tolist())  # every point at least once
    assert s.dtype == np.int64
    with pytest.raises(ConfigError):
        sample_points(np.array([], np.int64), 5, rng)


def test_vote_sums_decisions_over_chunks():
    votes = VoteAccumulator(4, 3)
    # point 0 is in two chunks: neither chunk alone says class 1, their sum does
    votes.add([0, 1], [[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    votes.add([0, 2], [[0.0, 0.45, 0.55], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(votes.labels(), [1, 2, 0, IGNORE_INDEX])
    assert votes.num_unvoted == 1
    np.testing.assert_allclose(votes.confidence(), [0.425, 0.8, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(votes.probabilities()[0], [0.3, 0.425, 0.275], atol=1e-6)

    hard = VoteAccumulator(4, 3, mode="majority")
    hard.add([0, 1], [[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    hard.add([0, 2], [[0.0, 0.45, 0.55], [1.0, 0.0, 0.0]])
    hard.add([0], [[0.0, 0.1, 0.9]])
    np.testing.assert_array_equal(hard.labels(), [2, 2, 0, IGNORE_INDEX])
    np.testing.assert_allclose(hard.confidence()[0], (0.0 + 0.55 + 0.9) / 3, atol=1e-6)


def test_vote_accepts_logits_and_duplicates():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a, b = VoteAccumulator(2, 3), VoteAccumulator(2, 3)
    a.add([0, 1], logits)
    b.add([0, 1], probs, kind="probs")
    np.testing.assert_allclose(a.prob_sum, b.prob_sum, atol=1e-6)
    dup = VoteAccumulator(2, 3)
    dup.add([1, 1, 0], [[1, 0, 0], [1, 0, 0], [0, 0, 1]])  # point 1 predicted twice
    dup.add([1], [[0, 1, 0]])
    np.testing.assert_array_equal(dup.counts, [1, 3])
    assert dup.labels().tolist() == [2, 0]
    with pytest.raises(ConfigError, match="out of range"):
        dup.add([2], [[1, 0, 0]])
    with pytest.raises(ConfigError):
        dup.add([0], [[1, 0]])


def test_vote_over_a_chunk_grid_labels_every_point():
    rng = np.random.default_rng(4)
    xyz = rng.uniform([0, 0, 0], [4, 4, 3], (4000, 3))
    truth = (xyz[:, 0] > 2).astype(int)
    votes = VoteAccumulator(len(xyz), 2)
    for ch in chunk_grid(xyz, min_points=20):
        p = np.full((len(ch), 2), 0.2)
        p[np.arange(len(ch)), truth[ch.index]] = 0.8
        votes.add(ch.index, p)
    assert votes.num_unvoted == 0
    np.testing.assert_array_equal(votes.labels(), truth)
