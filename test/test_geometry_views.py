"""Coverage (depth test vs exact KD-tree) on a ray-cast room, and greedy view selection
against brute force and its guarantees (hypothesis over random coverage matrices)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from safnet_ros.errors import ConfigError
from safnet_ros.geometry.camera import scale_intrinsics
from safnet_ros.geometry.views import coverage_matrix, greedy_select

WH = (160, 120)
K = scale_intrinsics(np.array([[577.6, 0, 318.9], [0, 578.7, 242.7], [0, 0, 1]]), (640, 480), WH)

# Rectangles (corner, edge a, edge b): a 4 x 4 x 3 m room and a free-standing panel at x = 2.
RECTS = [
    ((0, 0, 0), (4, 0, 0), (0, 4, 0)),  # floor
    ((0, 0, 0), (0, 4, 0), (0, 0, 3)),  # wall x = 0
    ((4, 0, 0), (0, 4, 0), (0, 0, 3)),  # wall x = 4
    ((0, 0, 0), (4, 0, 0), (0, 0, 3)),  # wall y = 0
    ((0, 4, 0), (4, 0, 0), (0, 0, 3)),  # wall y = 4
    ((0, 0, 3), (4, 0, 0), (0, 4, 0)),  # ceiling
    ((2, 1, 0), (0, 2, 0), (0, 0, 2)),  # panel
]


def look_at(eye, target) -> np.ndarray:
    """Camera-to-world pose (OpenCV optical: z forward, x right, y down) at ``eye`` looking at ``target``."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


def render(pose, K=K, wh=WH) -> np.ndarray:
    """Depth (H, W) metres of the nearest rectangle hit by each pixel-centre ray; 0 = no hit."""
    w, h = wh
    uu, vv = np.meshgrid(np.arange(w), np.arange(h))
    dirs = (np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(K).T) @ pose[:3, :3].T
    o = pose[:3, 3]
    best = np.full((h, w), np.inf)
    for corner, a, b in RECTS:
        c, a, b = (np.asarray(v, float) for v in (corner, a, b))
        n = np.cross(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((c - o) @ n) / (dirs @ n)
            hit = o + lam[..., None] * dirs - c
            s, t = hit @ a / (a @ a), hit @ b / (b @ b)
            ok = (lam > 0) & (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
        best = np.where(ok & (lam < best), lam, best)
    return np.where(np.isfinite(best), best, 0.0).astype(np.float32)


def surface_points(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    which = rng.integers(len(RECTS), size=n)
    st_ = rng.uniform(0.02, 0.98, (n, 2))
    parts = [np.asarray(RECTS[i][0], float) + s * np.asarray(RECTS[i][1], float) + t * np.asarray(RECTS[i][2], float)
             for i, (s, t) in zip(which, st_)]
    return np.array(parts)


CAMERAS = [
    look_at((0.5, 2.0, 1.2), (4.0, 2.0, 1.0)),  # faces the panel: the wall behind it is hidden
    look_at((3.5, 0.5, 1.5), (0.0, 3.5, 0.5)),
    look_at((3.0, 3.5, 2.5), (1.0, 0.5, 0.0)),
    look_at((1.0, 0.5, 1.0), (1.0, 4.0, 1.0)),
]


@pytest.fixture(scope="module")
def room_views():
    return [(render(T), K, T) for T in CAMERAS]


def test_depth_test_coverage_matches_exact_kdtree(room_views):
    pts = surface_points(3000)
    fast = coverage_matrix(pts, room_views, tol=0.1)
    exact = coverage_matrix(pts, room_views, tol=0.1, method="kdtree")
    assert fast.shape == exact.shape == (len(CAMERAS), len(pts)) and fast.dtype == bool
    assert fast.any(axis=1).all()  # every camera sees something
    agree = (fast == exact).mean()
    assert agree > 0.97, agree
    # disagreements are only where the depth test is stricter (edges/grazing), not looser
    assert (fast & ~exact).mean() < 0.005


def test_occluded_and_floating_points_are_not_covered(room_views):
    hidden = np.array([[4.0, 2.0, 1.0], [4.0, 1.5, 0.5], [4.0, 2.5, 1.5]])  # wall behind the panel
    seen_panel = np.array([[2.0, 2.0, 1.0], [2.0, 1.5, 0.5]])
    floating = np.array([[1.0, 2.0, 1.5]])  # in the air, ~1 m from any surface in view 0
    for method in ("projection", "kdtree"):
        cov = coverage_matrix(np.vstack([hidden, seen_panel, floating]), room_views, method=method)
        assert not cov[0, :3].any(), method
        assert cov[0, 3:5].all(), method
        assert not cov[:, 5].any(), method


def test_select_views_on_the_room(room_views):
    pts = surface_points(5000, seed=1)
    base = pts[np.random.default_rng(0).choice(len(pts), 2000, replace=False)]  # MVPNet's 2000 base points
    chosen = greedy_select(coverage_matrix(base, room_views), 3)
    assert 1 <= len(chosen) <= 3 and len(set(chosen)) == len(chosen)
    cov = coverage_matrix(pts, room_views)
    # the first choice is (up to base-point sampling) the best single view
    singles = cov.sum(axis=1)
    assert singles[chosen[0]] >= 0.95 * singles.max()
    assert coverage_fraction(cov, chosen) >= coverage_fraction(cov, [int(np.argmax(singles))])


def covered_count(cov: np.ndarray, selection=None) -> int:
    """Points (columns) covered by at least one view of ``selection`` (all views when None)."""
    rows = cov if selection is None else cov[np.asarray(list(selection), dtype=np.int64)]
    return int(np.count_nonzero(rows.any(axis=0))) if len(rows) else 0


def coverage_fraction(cov: np.ndarray, selection=None) -> float:
    return covered_count(cov, selection) / cov.shape[1]


def brute_force_select(cov: np.ndarray, k: int) -> list[int]:
    """The optimal ``min(k, V)`` views (largest union; ties -> lexicographically first set), exhaustively."""
    combos = itertools.combinations(range(cov.shape[0]), min(k, cov.shape[0]))
    return list(max(combos, key=lambda c: (covered_count(cov, c), [-v for v in c])))


def _greedy_reference(cov: np.ndarray, k: int) -> list[int]:
    """Textbook greedy max coverage on Python sets."""
    sets = [set(np.flatnonzero(r)) for r in cov]
    covered: set[int] = set()
    chosen: list[int] = []
    for _ in range(k):
        gains = [len(s - covered) for s in sets]
        if not gains or max(gains) == 0:
            break
        best = gains.index(max(gains))
        chosen.append(best)
        covered |= sets[best]
    return chosen


coverage_matrices = st.integers(1, 7).flatmap(
    lambda v: st.integers(1, 40).flatmap(lambda n: arrays(np.bool_, (v, n)))
)


@settings(max_examples=150, deadline=None)
@given(coverage_matrices, st.integers(1, 5))
def test_greedy_properties(cov, k):
    chosen = greedy_select(cov, k)
    assert chosen == _greedy_reference(cov, k)
    assert len(chosen) <= k and len(set(chosen)) == len(chosen)
    # never worse than the best single view, and within (1 - 1/e) of the optimum
    assert covered_count(cov, chosen) >= cov.sum(axis=1).max()
    optimum = covered_count(cov, brute_force_select(cov, k))
    assert covered_count(cov, chosen) >= (1 - 1 / np.e) * optimum
    # each pick adds something new; stopping early means nothing more can be added
    for i in range(len(chosen)):
        assert covered_count(cov, chosen[: i + 1]) > covered_count(cov, chosen[:i])
    if len(chosen) < min(k, len(cov)):
        assert covered_count(cov, chosen) == covered_count(cov)


def test_greedy_matches_brute_force_on_disjoint_views():
    rng = np.random.default_rng(0)
    sizes = [5, 12, 3, 9, 7]
    owner = np.repeat(np.arange(5), sizes)
    cov = owner[None, :] == np.arange(5)[:, None]
    cov = cov[:, rng.permutation(cov.shape[1])]
    for k in range(1, 6):
        g, b = greedy_select(cov, k), brute_force_select(cov, k)
        assert covered_count(cov, g) == covered_count(cov, b) == sum(sorted(sizes)[::-1][:k])
        assert sorted(g) == sorted(b)
    assert greedy_select(cov, 2) == [1, 3]


def test_greedy_on_nested_views_stops_after_the_largest():
    n = 30
    cov = np.zeros((4, n), bool)
    for v, m in enumerate([10, 30, 20, 5]):  # view 1 contains all the others
        cov[v, :m] = True
    assert greedy_select(cov, 3) == [1]
    assert covered_count(cov, brute_force_select(cov, 3)) == n


def test_brute_force_beats_greedy_where_greedy_is_suboptimal():
    """A = {0,1,2,3}, B = {0,1,4}, C = {2,3,5}: greedy takes A first and covers 5 of 6."""
    cov = np.zeros((3, 6), bool)
    cov[0, [0, 1, 2, 3]] = True
    cov[1, [0, 1, 4]] = True
    cov[2, [2, 3, 5]] = True
    assert greedy_select(cov, 2) == [0, 1]  # tie between B and C -> lower index
    assert brute_force_select(cov, 2) == [1, 2]
    assert covered_count(cov, [1, 2]) == 6 > covered_count(cov, [0, 1]) == 5


def test_edge_cases_and_fraction():
    assert greedy_select(np.zeros((0, 5), bool), 3) == []
    assert greedy_select(np.zeros((3, 5), bool), 3) == []  # no view sees anything
    assert greedy_select(np.ones((3, 5), bool), 0) == []
    assert greedy_select(np.ones((3, 5), bool), 3) == [0]  # ties -> lower index, then nothing new
    with pytest.raises(ConfigError):
        greedy_select(np.ones(5, bool), 1)
    with pytest.raises(ConfigError):
        coverage_matrix(np.zeros((2, 3)), [], method="nope")
    assert coverage_matrix(np.zeros((0, 3)), [(np.ones((4, 4)), K, np.eye(4))]).shape == (1, 0)
