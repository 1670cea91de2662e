"""Neighbour search: KD-tree path and torch (cdist) path against a brute-force reference.

Every test runs once with each CPU KD-tree library (pykdtree and scipy's cKDTree):
a ROS install without pykdtree takes the scipy path.
"""
from __future__ import annotations

import pytest
import torch

from safnet_ros.errors import ConfigError
from safnet_ros.geometry import neighbors
from safnet_ros.geometry.neighbors import (
    ball_query,
    farthest_point_sample,
    gather,
    interpolate_rows,
    knn,
    three_nn_interpolate,
    three_nn_weights,
)

BACKENDS = ("kdtree", "torch")


@pytest.fixture(autouse=True, params=["pykdtree", "scipy"])
def kdtree_library(request, monkeypatch):
    if request.param == "pykdtree":
        pytest.importorskip("pykdtree")
    monkeypatch.setattr(neighbors, "KDTREE_LIBRARY", request.param)
    return request.param


def _cloud(seed: int, b: int, n: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * scale


def _brute_distances(query, ref, ref_mask=None):
    d = ((query[:, :, None, :] - ref[:, None, :, :]) ** 2).sum(-1).sqrt()
    if ref_mask is not None:
        d = d.masked_fill(~ref_mask[:, None, :], float("inf"))
    return d


def _brute_fps(xyz: torch.Tensor, m: int) -> list[int]:
    """Textbook FPS on one cloud (N, 3) from index 0, ties to the lowest index."""
    chosen = [0]
    best = ((xyz - xyz[0]) ** 2).sum(-1)
    for _ in range(m - 1):
        nxt = int(torch.argmax(best))
        chosen.append(nxt)
        best = torch.minimum(best, ((xyz - xyz[nxt]) ** 2).sum(-1))
    return chosen


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_matches_brute_force(backend):
    query, ref = _cloud(0, 2, 40), _cloud(1, 2, 70)
    dist, idx = knn(query, ref, 5, backend=backend)
    ref_d = _brute_distances(query, ref)
    ref_dk, ref_ik = torch.topk(ref_d, 5, dim=-1, largest=False)
    assert dist.shape == (2, 40, 5) and idx.dtype == torch.long
    torch.testing.assert_close(dist, ref_dk, atol=1e-6, rtol=1e-5)
    # Random float coordinates: no ties, so the neighbour sets are identical.
    assert torch.equal(idx, ref_ik)
    assert bool((dist[..., 1:] >= dist[..., :-1]).all())


def test_knn_backends_agree_and_distances_are_differentiable():
    query = _cloud(2, 2, 300, 2.0).requires_grad_(True)
    ref = _cloud(3, 2, 500, 2.0).requires_grad_(True)
    d_tree, i_tree = knn(query, ref, 8, backend="kdtree")
    d_torch, i_torch = knn(query, ref, 8, backend="torch")
    assert torch.equal(i_tree, i_torch)
    torch.testing.assert_close(d_tree, d_torch)
    d_tree.sum().backward()
    assert query.grad is not None and ref.grad is not None
    assert float(query.grad.abs().sum()) > 0 and float(ref.grad.abs().sum()) > 0
    # d/dq |q - r| = (q - r)/|q - r|: a unit vector per (query, neighbour) pair.
    assert torch.isfinite(query.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_respects_mask_and_fills_missing_slots(backend):
    query, ref = _cloud(4, 2, 10), _cloud(5, 2, 12)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, [1, 4, 7]] = True  # 3 valid refs in element 0
    mask[1, :] = True
    mask[1, 0] = False  # the ref at index 0 is padding in element 1
    dist, idx = knn(query, ref, 5, ref_mask=mask, backend=backend)
    assert set(idx[0, :, :3].flatten().tolist()) <= {1, 4, 7}
    assert torch.isinf(dist[0, :, 3:]).all() and (idx[0, :, 3:] == 0).all()
    assert torch.isfinite(dist[0, :, :3]).all()
    assert not (idx[1] == 0).any()
    ref_dk, ref_ik = torch.topk(_brute_distances(query, ref, mask)[1], 5, dim=-1, largest=False)
    assert torch.equal(idx[1], ref_ik)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_with_more_neighbours_asked_than_references(backend):
    query, ref = _cloud(17, 1, 5), _cloud(18, 1, 3)
    dist, idx = knn(query, ref, 5, backend=backend)
    assert torch.isfinite(dist[..., :3]).all() and torch.isinf(dist[..., 3:]).all()
    assert sorted(idx[0, 0, :3].tolist()) == [0, 1, 2] and (idx[..., 3:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_with_no_valid_reference(backend):
    query, ref = _cloud(6, 1, 4), _cloud(7, 1, 6)
    dist, idx = knn(query, ref, 2, ref_mask=torch.zeros(1, 6, dtype=torch.bool), backend=backend)
    assert torch.isinf(dist).all() and (idx == 0).all()
    dist, idx = knn(query, torch.zeros(1, 0, 3), 2, backend=backend)
    assert dist.shape == (1, 4, 2) and torch.isinf(dist).all() and (idx == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ball_query_radius_sorted_and_first_index_padding(backend):
    query, ref = _cloud(8, 2, 50), _cloud(9, 2, 400)
    radius, k = 0.15, 16
    idx, valid = ball_query(query, ref, radius, k, backend=backend)
    brute = _brute_distances(query, ref)
    d = torch.gather(brute, 2, idx)
    # Valid slots are inside the radius, sorted, and a prefix of the row.
    assert bool((d[valid] < radius).all())
    d_valid = d.masked_fill(~valid, float("inf"))
    assert bool((d_valid[..., 1:] >= d_valid[..., :-1]).all())
    assert bool((valid[..., 1:] <= valid[..., :-1]).all())
    # Count and membership equal the brute force: k nearest inside the radius.
    inside = (brute < radius).sum(-1).clamp(max=k)
    assert torch.equal(valid.sum(-1), inside)
    ref_dk, ref_ik = torch.topk(brute, k, dim=-1, largest=False)
    assert torch.equal(idx[valid], ref_ik[valid])
    # Invalid slots repeat the first valid index.
    first = idx[..., :1].expand_as(idx)
    assert torch.equal(idx[~valid], first[~valid])
    assert (~valid).any() and valid.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ball_query_empty_neighbourhood_and_mask(backend):
    ref = torch.tensor([[[0.0, 0, 0], [0.05, 0, 0], [0.1, 0, 0], [5.0, 5, 5]]])
    query = torch.tensor([[[0.0, 0, 0], [3.0, 3, 3]]])
    mask = torch.tensor([[False, True, True, True]])
    idx, valid = ball_query(query, ref, 0.08, 4, ref_mask=mask, backend=backend)
    # Query 0: the ref at 0 is padding, 0.05 is inside, 0.1 is outside (strict <).
    assert valid[0, 0].tolist() == [True, False, False, False]
    assert idx[0, 0].tolist() == [1, 1, 1, 1]
    # Query 1: nothing within 0.08 -> all invalid, index 0.
    assert not valid[0, 1].any() and (idx[0, 1] == 0).all()


def test_ball_query_backends_agree_on_bigger_cloud():
    query, ref = _cloud(10, 1, 2000, 1.5), _cloud(11, 1, 6000, 1.5)
    i1, v1 = ball_query(query, ref, 0.1, 32, backend="kdtree")
    i2, v2 = ball_query(query, ref, 0.1, 32, backend="torch")
    assert torch.equal(v1, v2)
    assert torch.equal(i1, i2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_farthest_point_sample_equals_reference_and_spreads(backend):
    xyz = _cloud(12, 2, 500)
    m = 32
    idx = farthest_point_sample(xyz, m, backend=backend)
    assert idx.shape == (2, m) and idx.dtype == torch.long
    for b in range(2):
        assert idx[b].tolist() == _brute_fps(xyz[b], m)
        assert len(set(idx[b].tolist())) == m

    def min_pairwise(points):
        d = torch.cdist(points, points) + torch.eye(len(points)) * 1e9
        return float(d.min())

    random_subset = torch.randperm(500, generator=torch.Generator().manual_seed(0))[:m]
    assert min_pairwise(xyz[0, idx[0]]) > min_pairwise(xyz[0, random_subset])


def test_farthest_point_sample_backends_agree():
    xyz = _cloud(16, 2, 3000, 2.0)
    mask = torch.rand(2, 3000, generator=torch.Generator().manual_seed(2)) > 0.3
    for kwargs in ({}, {"mask": mask}):
        a = farthest_point_sample(xyz, 400, backend="kdtree", **kwargs)
        b = farthest_point_sample(xyz, 400, backend="torch", **kwargs)
        assert torch.equal(a, b)
    assert bool(mask.gather(1, a).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_farthest_point_sample_mask_and_more_samples_than_points(backend):
    xyz = _cloud(13, 1, 6)
    mask = torch.tensor([[False, True, True, False, True, False]])
    idx = farthest_point_sample(xyz, 5, mask=mask, backend=backend)
    assert idx[0, 0] == 1  # first valid point
    assert set(idx[0, :3].tolist()) == {1, 2, 4}
    assert idx[0, 3:].tolist() == [1, 1]  # then the first sample repeated
    idx = farthest_point_sample(xyz, 9, backend=backend)
    assert sorted(idx[0, :6].tolist()) == list(range(6))
    assert idx[0, 6:].tolist() == [0, 0, 0]
    assert farthest_point_sample(torch.zeros(1, 1, 3), 4, backend=backend).tolist() == [[0, 0, 0, 0]]
    none_valid = torch.zeros(1, 6, dtype=torch.bool)
    assert farthest_point_sample(xyz, 3, mask=none_valid, backend=backend).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_nn_interpolate_exact_on_known_points_and_weighted(backend):
    known = _cloud(14, 2, 20)
    feats = torch.randn(2, 5, 20, generator=torch.Generator().manual_seed(1))
    out = three_nn_interpolate(known, known, feats, backend=backend)
    torch.testing.assert_close(out, feats, atol=1e-5, rtol=1e-5)
    # A point between two known points (third far away): inverse-distance weights.
    known = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0]]])
    feats = torch.tensor([[[0.0, 4.0, 100.0]]])
    out = three_nn_interpolate(torch.tensor([[[0.25, 0, 0]]]), known, feats, backend=backend)
    w = torch.tensor([1 / 0.25, 1 / 0.75, 1 / 9.75])
    expected = float((w * feats[0, 0]).sum() / w.sum())
    assert abs(float(out) - expected) < 1e-4


def test_three_nn_interpolate_masked_and_gradient_to_features():
    known = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [0.1, 0, 0]]])
    feats = torch.tensor([[[1.0, 2.0, 3.0, 99.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    out = three_nn_interpolate(torch.tensor([[[0.1, 0, 0]]]), known, feats, known_mask=mask)
    assert float(out.detach()) < 3.0  # the padded 99 never contributes
    out.sum().backward()
    assert feats.grad[0, 0, 3] == 0 and feats.grad[0, 0, 0] > 0


def test_gather_shapes_and_values():
    values = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    idx = torch.tensor([[[3, 0]], [[1, 1]]])
    out = gather(values, idx)
    assert out.shape == (2, 1, 2, 3)
    assert torch.equal(out[0, 0, 0], values[0, 3]) and torch.equal(out[1, 0, 1], values[1, 1])


def test_bad_arguments_raise_documented_errors():
    q = _cloud(15, 1, 3)
    with pytest.raises(ConfigError):
        knn(q, q, 0)
    with pytest.raises(ConfigError):
        ball_query(q, q, 0.0, 4)
    with pytest.raises(ConfigError):
        knn(q, q, 1, backend="gpu-magic")
    with pytest.raises(ValueError):
        knn(q[..., :2], q, 1)


def test_gather_equals_torch_gather_with_batches_and_gradient():
    """The index_select route gives torch.gather's values and gradients (B > 1, repeats)."""
    g = torch.Generator().manual_seed(3)
    values = torch.randn(3, 50, 7, generator=g, requires_grad=True)
    idx = torch.randint(0, 50, (3, 20, 4), generator=g)
    out = gather(values, idx)
    ref = torch.gather(values, 1, idx.reshape(3, 80, 1).expand(-1, -1, 7)).reshape(3, 20, 4, 7)
    assert torch.equal(out, ref)
    weights = torch.randn(3, 20, 4, 7, generator=g)
    (grad,) = torch.autograd.grad((out * weights).sum(), values)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), values)
    torch.testing.assert_close(grad, grad_ref)
    # non-contiguous values (a transposed channels-first tensor)
    feats = torch.randn(2, 5, 30, generator=g)
    out = gather(feats.transpose(1, 2), idx[:2, :, :3] % 30)
    assert torch.equal(out[1, 4, 2], feats[1, :, int(idx[1, 4, 2]) % 30])


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_nn_weights_and_interpolate_rows(backend):
    """Channels-last interpolation: inverse-distance weights summing to 1, and the
    same values as the channels-first :func:`three_nn_interpolate`."""
    unknown, known = _cloud(5, 2, 40, 2.0), _cloud(6, 2, 12, 2.0)
    idx, weight = three_nn_weights(unknown, known, backend=backend)
    d = torch.cdist(unknown, known)
    nearest = torch.topk(d, 3, largest=False).indices
    assert torch.equal(torch.sort(idx, dim=-1).values, torch.sort(nearest, dim=-1).values)
    inv = 1.0 / (torch.gather(d, 2, idx) + 1e-8)
    torch.testing.assert_close(weight, inv / inv.sum(-1, keepdim=True))
    feats = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(2))
    rows = interpolate_rows(feats.transpose(1, 2), idx, weight)
    torch.testing.assert_close(rows.transpose(1, 2), three_nn_interpolate(unknown, known, feats, backend=backend))
    manual = sum(weight[1, 7, j] * feats[1, :, idx[1, 7, j]] for j in range(3))
    torch.testing.assert_close(rows[1, 7], manual)


def test_both_kdtree_libraries_give_the_same_neighbours(monkeypatch):
    pytest.importorskip("pykdtree")
    query, ref = _cloud(31, 2, 3000), _cloud(32, 2, 7000)
    mask = torch.rand(2, 7000, generator=torch.Generator().manual_seed(33)) > 0.2
    out = {}
    for library in ("pykdtree", "scipy"):
        monkeypatch.setattr(neighbors, "KDTREE_LIBRARY", library)
        out[library] = (knn(query, ref, 8, mask, backend="kdtree"),
                        ball_query(query, ref, 0.05, 16, mask, backend="kdtree"),
                        knn(query, ref[:, :5], 8, backend="kdtree"))  # k > references
    (d1, i1), (b1, v1), (f1, j1) = out["pykdtree"]
    (d2, i2), (b2, v2), (f2, j2) = out["scipy"]
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    assert torch.equal(b1, b2) and torch.equal(v1, v2) and 0 < float(v1.float().mean()) < 1
    assert torch.equal(j1, j2) and torch.equal(f1, f2) and torch.isinf(f1[..., 5:]).all()


def test_kdtree_library_choice_from_the_environment(monkeypatch):
    monkeypatch.setenv("SAFNET_KDTREE", "scipy")
    assert neighbors._kdtree_library() == "scipy"
    monkeypatch.setenv("SAFNET_KDTREE", "flann")
    with pytest.raises(ConfigError, match="SAFNET_KDTREE"):
        neighbors._kdtree_library()
