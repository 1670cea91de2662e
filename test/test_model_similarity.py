"""GSM, CSM and the 2D->3D aggregation: the mathematics, checked against brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safnet_ros.model.aggregate import Aggregate2D
from safnet_ros.model.csm import ContextualSimilarity, octant_neighbours
from safnet_ros.model.gsm import GeometricSimilarity, backward_distances, find_neighbourhoods

R = 0.15
K = 16


def _cloud(n: int, seed: int, extent: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, n, 3, generator=g) * extent


def _gsm(p: torch.Tensor, q: torch.Tensor, q_mask=None, k: int = K, **kwargs) -> tuple[torch.Tensor, dict]:
    """(S_geo, {"s_p2q": ..., "s_q2p": ...} of the terms switched on)."""
    gsm = GeometricSimilarity(**kwargs)
    nb = find_neighbourhoods(p, q, None, q_mask, k, R, 3)
    with torch.no_grad():
        parts = {"s_p2q": gsm.s_p2q(nb)} if gsm.use_forward else {}
        if gsm.use_backward:
            parts["s_q2p"] = gsm.s_q2p(p, q, nb)
        return gsm(p, q, nb), parts


def _brute_force_gsm(p: np.ndarray, q: np.ndarray, k: int, r: float, a1=0.25, a2=0.25, b1=0.0, b2=0.0):
    """Eqs. 3-4 with explicit loops over points (the reference for the vectorised code)."""
    s_p2q, s_q2p = [], []
    for i in range(len(p)):
        dp = np.linalg.norm(p - p[i], axis=1)
        order = np.argsort(dp, kind="stable")
        n_p = [j for j in order if dp[j] < r][:k]
        d_f = [np.linalg.norm(q - p[j], axis=1).min() for j in n_p]
        s_p2q.append(math.exp(-np.mean(d_f) / a1) + b1)
        dq = np.linalg.norm(q - p[i], axis=1)
        order_q = np.argsort(dq, kind="stable")
        n_q = [j for j in order_q if dq[j] < r][:k] or [order_q[0]]
        d_b = [np.linalg.norm(p[n_p] - q[j], axis=1).min() for j in n_q]
        s_q2p.append(math.exp(-np.mean(d_b) / a2) + b2)
    return np.array(s_p2q), np.array(s_q2p)


# ----------------------------------------------------------------------------- GSM
def test_p2q_is_one_plus_b1_when_q_equals_p():
    p = _cloud(300, 0)
    _, parts = _gsm(p, p.clone(), b1=0.3)
    assert torch.allclose(parts["s_p2q"], torch.full_like(parts["s_p2q"], 1.3), atol=1e-6)


def test_p2q_falls_monotonically_towards_b1_as_q_moves_away():
    p = _cloud(300, 1)
    means = []
    for offset in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0, 3.0):
        q = p + torch.tensor([offset, 0.0, 0.0])
        _, parts = _gsm(p, q, b1=0.2)
        means.append(float(parts["s_p2q"].mean()))
    assert means[0] == pytest.approx(1.2, abs=1e-6)
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[-1] == pytest.approx(0.2, abs=1e-4)  # exp(-3/0.25) ~ 6e-6


def test_gsm_matches_brute_force_on_random_clouds():
    p = _cloud(120, 2)
    q = _cloud(400, 3) + 0.05
    _, parts = _gsm(p, q, k=8, b1=0.1, b2=-0.2, a2=0.3)
    ref_p2q, ref_q2p = _brute_force_gsm(p[0].double().numpy(), q[0].double().numpy(), 8, R, a2=0.3, b1=0.1, b2=-0.2)
    np.testing.assert_allclose(parts["s_p2q"][0].numpy(), ref_p2q, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["s_q2p"][0].numpy(), ref_q2p, rtol=1e-4, atol=1e-5)


def test_backward_search_starts_from_the_nearest_q_point_when_n_q_is_empty():
    p = torch.tensor([[[0.0, 0.0, 0.0], [0.05, 0.0, 0.0]]])
    q = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, 0.9], [2.0, 2.0, 2.0]]])  # all farther than r
    nb = find_neighbourhoods(p, q, None, None, K, R, 3)
    assert not bool(nb.q_valid.any())
    d_b, weight = backward_distances(p, q, nb)
    assert weight.sum(-1).tolist() == [[1, 1]] and bool(weight[..., 0].all())
    # q0 = (0,0,0.5) is the nearest Q point of both; its nearest point in N_P is p0.
    assert d_b[0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert d_b[0, 1, 0].item() == pytest.approx(0.5, abs=1e-6)
    _, parts = _gsm(p, q, a2=0.25, b2=0.05)
    assert parts["s_q2p"][0, 0].item() == pytest.approx(math.exp(-0.5 / 0.25) + 0.05, abs=1e-6)


def test_backward_blocks_give_the_same_result():
    p, q = _cloud(200, 4), _cloud(500, 5)
    nb = find_neighbourhoods(p, q, None, None, K, R, 3)
    full, _ = backward_distances(p, q, nb, block=10_000)
    blocked, _ = backward_distances(p, q, nb, block=7)
    assert torch.equal(full, blocked)


def test_s_geo_combines_only_the_switched_on_terms():
    p, q = _cloud(150, 6), _cloud(300, 7)
    init = dict(a3=1.5, a4=0.7, b3=0.25)
    both, parts = _gsm(p, q, **init)
    fwd, fparts = _gsm(p, q, use_backward=False, **init)
    bwd, bparts = _gsm(p, q, use_forward=False, **init)
    off, oparts = _gsm(p, q, use_forward=False, use_backward=False, **init)
    assert set(fparts) == {"s_p2q"} and set(bparts) == {"s_q2p"} and oparts == {}
    assert torch.allclose(both, 0.25 + 1.5 * parts["s_p2q"] + 0.7 * parts["s_q2p"], atol=1e-6)
    assert torch.allclose(fwd, 0.25 + 1.5 * parts["s_p2q"], atol=1e-6)
    assert torch.allclose(bwd, 0.25 + 0.7 * parts["s_q2p"], atol=1e-6)
    assert torch.equal(off, torch.ones_like(off))


def test_no_q_at_all_gives_zero_s_geo():
    p, q = _cloud(50, 8), _cloud(60, 9)
    s_geo, _ = _gsm(p, q, q_mask=torch.zeros(1, 60, dtype=torch.bool))
    assert torch.equal(s_geo, torch.zeros_like(s_geo))


def test_scales_stay_positive_and_all_scalars_get_gradients():
    p, q = _cloud(100, 10), _cloud(200, 11) + 0.03
    gsm = GeometricSimilarity(a1=-0.25)  # a negative a1 acts as |a1|
    nb = find_neighbourhoods(p, q, None, None, K, R, 3)
    s_geo = gsm(p, q, nb)
    assert bool(torch.isfinite(s_geo).all()) and bool((gsm.s_p2q(nb) <= 1.0 + 1e-6).all())
    s_geo.square().sum().backward()
    for name in ("a1", "a2", "b1", "b2", "a3", "a4", "b3"):
        grad = getattr(gsm, name).grad
        assert grad is not None and grad.abs().item() > 0, name


# ----------------------------------------------------------------------------- CSM
def _csm_run(p, q, q_mask=None, train=True, seed=0):
    torch.manual_seed(seed)
    csm = ContextualSimilarity(point_width=16, oe_width=16, mlp=(16, 16, 16), out_channels=16)
    csm.train(train)
    nb = find_neighbourhoods(p, q, None, q_mask, K, R, 3)
    with torch.no_grad():
        return csm(p, q, nb.p_idx, nb.p_valid, nb.q_idx, nb.q_valid), nb


def test_s_con_is_one_for_identical_neighbourhoods():
    p = _cloud(300, 12)
    for train in (True, False):
        (attr, s_con), _ = _csm_run(p, p.clone(), train=train)
        assert attr.shape == (1, 300, 16)
        assert torch.allclose(s_con, torch.ones_like(s_con), atol=1e-5)


def test_s_con_stays_in_range_and_differs_for_different_neighbourhoods():
    p = _cloud(300, 13)
    q = _cloud(900, 14, extent=0.8) - 0.1
    (_, s_con), nb = _csm_run(p, q)
    assert bool((s_con >= -1).all()) and bool((s_con <= 1).all())
    has = nb.q_valid.any(-1)
    assert float((1 - s_con[has]).abs().mean()) > 1e-3


def test_s_con_is_zero_where_n_q_is_empty():
    p = _cloud(100, 15)
    q = p + torch.tensor([0.0, 0.0, 5.0])  # nothing within r
    (_, s_con), _ = _csm_run(p, q)
    assert torch.equal(s_con, torch.zeros_like(s_con))


def test_octant_neighbours_pick_the_nearest_valid_slot_per_octant():
    rel = torch.tensor([[[[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [-0.1, 0.1, 0.1], [-0.1, -0.1, -0.1], [0.05, -0.1, 0.1]]]])
    valid = torch.tensor([[[True, True, True, False, True]]])
    slot, present = octant_neighbours(rel, valid)
    # octant = [x>=0] + 2*[y>=0] + 4*[z>=0]: (+,+,+) = 7, (-,+,+) = 6, (+,-,+) = 5
    assert present[0, 0].tolist() == [False, False, False, False, False, True, True, True]
    assert slot[0, 0, 7].item() == 0  # nearest of the two in (+,+,+)
    assert slot[0, 0, 6].item() == 2 and slot[0, 0, 5].item() == 4


def _reference_mapping(csm: ContextualSimilarity, centres, cloud, idx, valid) -> torch.Tensor:
    """M(N(i)) written plainly: eq. 7 on the full enriched vectors [c(x_i), (x_j - x_i) / r,
    |x_j - x_i| / r] (c: the height term (z - 1.5) / 1.5), a masked sum over K, and the
    OE convolutions on the explicit (B, N, 8, 5) cube."""
    k = idx.shape[-1]
    rel = (torch.stack([cloud[b][idx[b]] for b in range(cloud.shape[0])]) - centres.unsqueeze(2)) / R
    rel = rel.masked_fill(~valid.unsqueeze(-1), 0.0)
    rel4 = torch.cat([rel, rel.norm(dim=-1, keepdim=True)], dim=-1)
    height = (centres[..., 2:3] - 1.5) / 1.5
    enriched = torch.cat([height.unsqueeze(2).expand(-1, -1, k, -1), rel4], dim=-1)  # (B, N, K, 5)
    w = torch.cat([csm.point_centre.weight, csm.point_rel.weight], dim=1)
    per_neighbour = torch.relu(enriched @ w.t() + csm.point_centre.bias)
    summed = (per_neighbour * valid.unsqueeze(-1)).sum(2) / k
    slot, present = octant_neighbours(rel, valid)
    cells = torch.gather(rel4, 2, slot.unsqueeze(-1).expand(-1, -1, -1, 4)) * present.unsqueeze(-1)
    cube = torch.cat([height.unsqueeze(2).expand(-1, -1, 8, -1), cells], dim=-1)
    oriented = csm.oe(cube).squeeze(2)
    return csm.mlp(torch.cat([summed, oriented], dim=-1))


@pytest.mark.parametrize("train", [False, True])
def test_csm_mapping_equals_the_plain_formulation(train):
    """The split linear maps (per-centre part once, OE first layer without the cube)
    compute what the plain formulation computes."""
    torch.manual_seed(4)
    csm = ContextualSimilarity(point_width=16, oe_width=24, mlp=(32, 32), out_channels=32, radius=R)
    g = torch.Generator().manual_seed(5)
    for mod in csm.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    csm.train(train)
    p, q = _cloud(200, 21), _cloud(500, 22)
    nb = find_neighbourhoods(p, q, None, None, 8, R, 3)
    cloud = torch.cat([p, q], dim=1)
    centres = torch.cat([p, p], dim=1)
    idx = torch.cat([nb.p_idx, nb.q_idx + 200], dim=1)
    valid = torch.cat([nb.p_valid, nb.q_valid], dim=1)
    assert 0 < float(valid.float().mean()) < 1  # some empty slots and some empty octants
    with torch.no_grad():  # inference route (in-place masking)
        out = csm.mapping(centres, cloud, idx, valid)
        ref = _reference_mapping(csm, centres, cloud, idx, valid)
    assert float(ref.std()) > 0.05
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out = csm.mapping(centres, cloud, idx, valid)  # autograd route
    (grad,) = torch.autograd.grad(out.square().sum(), csm.point_rel.weight)
    assert float(grad.abs().sum()) > 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- aggregation
def test_aggregation_excludes_padding_and_zeroes_points_without_q():
    torch.manual_seed(0)
    agg = Aggregate2D(feat_dim=8, mlp=(8, 8), k=3).eval()
    p = _cloud(20, 16)
    q = _cloud(40, 17)
    feats = torch.randn(1, 40, 8)
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, 20:] = False
    out = agg(p, q, feats, mask)
    feats2 = feats.clone()
    feats2[0, 20:] = 100.0  # padding: must not matter
    q2 = q.clone()
    q2[0, 20:] = p[0, :20]  # padding right on top of the points: must not be picked
    assert torch.allclose(out, agg(p, q2, feats2, mask), atol=1e-6)
    none = agg(p, q, feats, torch.zeros(1, 40, dtype=torch.bool))
    assert torch.equal(none, torch.zeros_like(none))
    # sum over 3 neighbours of the shared MLP of [F, dxyz, |dxyz|^2]
    from safnet_ros.geometry.neighbors import gather, knn

    _, idx = knn(p, q, 3, mask)
    x = torch.cat([gather(feats, idx), gather(q, idx) - p.unsqueeze(2)], -1)
    x = torch.cat([x, x[..., 8:].square().sum(-1, keepdim=True)], -1)
    assert torch.allclose(out, agg.mlp(x).sum(2), atol=1e-5)
