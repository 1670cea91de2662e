"""Neighbourhoods N_P(i), N_Q(i) and the geometric similarity module (GSM, eqs. 3-5).

The method: docs/design.md §1.4-1.5; this code: docs/model.md ("Data flow",
steps 2 and 4). The forward search shares one ``knn(P, Q)`` over all of Q between
every neighbourhood; the backward search computes the pairwise distances inside
the two neighbourhoods in blocks of ``block`` points. a1, a2 divide distances:
they are used as ``max(|a|, 1e-3)`` metres. Switches: forward off drops
``a3 * S_P2Q``, backward off drops ``a4 * S_Q2P``, both off make S_geo the
constant 1. A sample with no valid Q point gets S_geo = 0. Distances carry no
gradient; the seven scalars do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from safnet_ros.geometry.neighbors import ball_query, gather, knn

__all__ = ["Neighbourhoods", "find_neighbourhoods", "GeometricSimilarity"]

_MIN_SCALE = 1e-3  # metres: floor of the effective a1, a2


@dataclass
class Neighbourhoods:
    """Neighbour indices shared by the aggregation, GSM and CSM.

    Attributes:
        p_idx, p_valid: ``(B, N, K)`` N_P(i) into P; invalid slots repeat a valid index.
        q_idx, q_valid: ``(B, N, K)`` N_Q(i) into Q; invalid slots hold the nearest
            Q point of p_i (the backward search's starting point when N_Q(i) is empty).
        q_knn_dist, q_knn_idx: ``(B, N, k')`` the raw ``knn(P, Q, k')`` (ascending,
            ``dist = inf`` where no valid Q point exists), ``k' = max(K, agg_k)``.
        has_q: ``(B,)`` bool, the sample has at least one valid Q point.
    """

    p_idx: Optional[torch.Tensor]
    p_valid: Optional[torch.Tensor]
    q_idx: Optional[torch.Tensor]
    q_valid: Optional[torch.Tensor]
    q_knn_dist: torch.Tensor
    q_knn_idx: torch.Tensor
    has_q: torch.Tensor

    @property
    def nearest_q_dist(self) -> torch.Tensor:
        """``(B, N)`` distance of every p to its nearest point of all of Q (inf if none)."""
        return self.q_knn_dist[..., 0]


def find_neighbourhoods(
    points: torch.Tensor,
    q_points: torch.Tensor,
    point_mask: Optional[torch.Tensor],
    q_mask: Optional[torch.Tensor],
    k: int,
    radius: float,
    knn_k: int = 3,
    with_balls: bool = True,
    nq_mode: str = "ball",
) -> Neighbourhoods:
    """One KD-tree query P -> Q (``max(k, knn_k)`` nearest) gives the aggregation's
    3-NN, every point's nearest Q point and N_Q(i) (the slots closer than ``radius``);
    a ball query P -> P gives N_P(i). ``with_balls=False`` skips both balls (the
    concat baseline needs the 3-NN only).

    Args:
        points: ``(B, N, 3)`` metres (finite); ``point_mask (B, N)`` False = excluded.
        q_points: ``(B, M, 3)`` metres, M >= 1; ``q_mask (B, M)`` False = padding.
        nq_mode: ``"ball"`` or ``"knn"`` (docs/model.md, "Data flow", step 2).
    """
    kk = max(int(k), int(knn_k)) if with_balls else int(knn_k)
    # Excluded points (padding of a batch of chunks) need no neighbours: not searched.
    rows = None if point_mask is None or bool(point_mask.all()) else point_mask
    q_dist, q_knn_idx = knn(points, q_points, kk, q_mask, query_mask=rows)
    q_dist = q_dist.detach()
    has_q = torch.isfinite(q_dist[..., 0]).any(dim=1)
    if not with_balls:
        return Neighbourhoods(None, None, None, None, q_dist, q_knn_idx, has_q)
    p_idx, p_valid = ball_query(points, points, radius, k, point_mask, query_mask=rows)
    q_valid = torch.isfinite(q_dist[..., :k]) if nq_mode == "knn" else q_dist[..., :k] < radius
    q_idx = torch.where(q_valid, q_knn_idx[..., :k], q_knn_idx[..., :1].expand(-1, -1, k))
    return Neighbourhoods(p_idx, p_valid, q_idx, q_valid, q_dist, q_knn_idx, has_q)


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the last axis with 0/1 ``weight`` (0 where no weight)."""
    weight = weight.to(values.dtype)
    return (values * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)


def backward_distances(
    points: torch.Tensor, q_points: torch.Tensor, nb: Neighbourhoods, block: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """d_B for every slot of N_Q(i): distance to the nearest point of N_P(i).

    Returns ``(d_B (B, N, Kq), weight (B, N, Kq) bool)`` where ``weight`` marks the
    slots that enter the mean: the valid slots of N_Q(i), or slot 0 alone (the
    nearest Q point of p_i) when N_Q(i) is empty. Computed in blocks of ``block``
    points so at most ``block * Kq * Kp`` distances exist at a time.
    """
    batch, n, kq = nb.q_idx.shape
    d_b = points.new_zeros(batch, n, kq)
    with torch.no_grad():
        for start in range(0, n, block):
            sl = slice(start, start + block)
            qs = gather(q_points, nb.q_idx[:, sl])  # (B, n', Kq, 3)
            ps = gather(points, nb.p_idx[:, sl])  # (B, n', Kp, 3)
            d = torch.cdist(qs.flatten(0, 1), ps.flatten(0, 1))  # (B*n', Kq, Kp)
            d = d.view(batch, -1, kq, ps.shape[2])
            d = d.masked_fill(~nb.p_valid[:, sl].unsqueeze(2), float("inf"))
            d_b[:, sl] = d.amin(dim=-1)
    empty = ~nb.q_valid.any(dim=-1, keepdim=True)  # (B, N, 1)
    first = torch.zeros_like(nb.q_valid)
    first[..., 0] = True
    weight = nb.q_valid | (empty & first)
    d_b = torch.where(torch.isfinite(d_b), d_b, torch.zeros_like(d_b))
    return d_b, weight


class GeometricSimilarity(nn.Module):
    """GSM: per-point S_geo from the forward and backward neighbour searches.

    ``forward(points (B,N,3), q_points (B,M,3), nb: Neighbourhoods)`` -> ``s_geo (B,N)``
    (eq. 5, of the terms :meth:`s_p2q` and :meth:`s_q2p` that are switched on).
    """

    def __init__(
        self,
        a1: float = 0.25,
        a2: float = 0.25,
        b1: float = 0.0,
        b2: float = 0.0,
        a3: float = 1.0,
        a4: float = 0.1,
        b3: float = 0.0,
        use_forward: bool = True,
        use_backward: bool = True,
        block: int = 4096,
    ):
        super().__init__()
        self.use_forward = bool(use_forward)
        self.use_backward = bool(use_backward)
        self.block = int(block)
        for name, value in dict(a1=a1, a2=a2, b1=b1, b2=b2, a3=a3, a4=a4, b3=b3).items():
            setattr(self, name, nn.Parameter(torch.tensor(float(value))))

    @staticmethod
    def _scale(a: torch.Tensor) -> torch.Tensor:
        return a.abs().clamp_min(_MIN_SCALE)

    def s_p2q(self, nb: Neighbourhoods) -> torch.Tensor:
        """Eq. 3: ``(B, N)``."""
        d_nearest = nb.nearest_q_dist  # (B, N)
        d_nearest = torch.where(torch.isfinite(d_nearest), d_nearest, torch.zeros_like(d_nearest))
        d_f = gather(d_nearest.unsqueeze(-1), nb.p_idx).squeeze(-1)  # (B, N, Kp)
        mean_d = _masked_mean(d_f, nb.p_valid)
        return torch.exp(-mean_d / self._scale(self.a1)) + self.b1

    def s_q2p(self, points: torch.Tensor, q_points: torch.Tensor, nb: Neighbourhoods) -> torch.Tensor:
        """Eq. 4: ``(B, N)``."""
        d_b, weight = backward_distances(points, q_points, nb, self.block)
        mean_d = _masked_mean(d_b, weight)
        return torch.exp(-mean_d / self._scale(self.a2)) + self.b2

    def forward(self, points: torch.Tensor, q_points: torch.Tensor, nb: Neighbourhoods) -> torch.Tensor:
        if not (self.use_forward or self.use_backward):
            s_geo = points.new_ones(points.shape[:2])
        else:
            s_geo = self.b3.expand(points.shape[:2])
            if self.use_forward:
                s_geo = s_geo + self.a3 * self.s_p2q(nb)
            if self.use_backward:
                s_geo = s_geo + self.a4 * self.s_q2p(points, q_points, nb)
        return s_geo * nb.has_q.unsqueeze(1).to(s_geo.dtype)
