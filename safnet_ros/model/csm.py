"""Contextual similarity module (CSM, eqs. 6-8): the mapping M, f_P, f_Q and S_con.

The maths (enrichment, eq. 7's per-neighbour sum, the orientation-encoding
convolution, the MLP, the linear layer) and why the centre term carries no
absolute position: docs/model.md ("Data flow", step 5) and docs/design.md §1.6.
Implementation choices:

* eq. 7's W is applied as ``W_c c(x_i) + W_r [x_j - x_i, |x_j - x_i|] / r``, so the
  centre part is computed once per centre;
* the orientation-encoding cube's cells are stored with x the fastest axis (then y,
  then z): the two cells each convolution pairs are adjacent, so every step is a
  reshape view;
* N_P(i) and N_Q(i) go through M in ONE pass (stacked along the point axis), so
  batch normalisation sees the same statistics for both and identical
  neighbourhoods give S_con = 1 exactly.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from safnet_ros.geometry.neighbors import gather
from safnet_ros.model.aggregate import PointMLP

__all__ = ["ContextualSimilarity", "octant_neighbours", "CENTRE_MODES", "centre_features"]

#: The centre terms c(x_i) of the enrichment; the value is its channel count.
CENTRE_MODES: dict[str, int] = {"height": 1, "xyz": 3}
HEIGHT_MID, HEIGHT_SCALE = 1.5, 1.5  # metres: a room's 0-3 m height -> [-1, 1]
XY_SCALE = 0.75  # metres: half the 1.5 m training chunk


def centre_features(centres: torch.Tensor, mode: str) -> torch.Tensor:
    """c(x_i): ``centres (B, N, 3)`` chunk metres (xy centred on the chunk, z up from
    the floor) -> ``(B, N, CENTRE_MODES[mode])``, O(1) values, no absolute xy for
    ``"height"``."""
    height = (centres[..., 2:3] - HEIGHT_MID) / HEIGHT_SCALE
    if mode == "height":
        return height
    return torch.cat([centres[..., :2] / XY_SCALE, height], dim=-1)


def octant_neighbours(rel: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest neighbour slot in each of the 8 octants around the centre.

    Args:
        rel: ``(B, N, K, 3)`` neighbour minus centre, slots sorted by distance.
        valid: ``(B, N, K)`` bool.

    Returns:
        ``slot (B, N, 8)`` long (the first, i.e. nearest, valid slot of that octant,
        0 when none) and ``present (B, N, 8)`` bool. Octant index
        ``[dx >= 0] + 2 * [dy >= 0] + 4 * [dz >= 0]``, so x is the fastest axis.
    """
    k = rel.shape[2]
    octant = (rel[..., 0] >= 0).long() + (rel[..., 1] >= 0).long() * 2 + (rel[..., 2] >= 0).long() * 4
    slots = torch.arange(k, device=rel.device).expand_as(octant)
    key = torch.where(valid, slots, torch.full_like(slots, k))  # invalid slots never win
    first = torch.full((*rel.shape[:2], 8), k, dtype=torch.long, device=rel.device)
    first = first.scatter_reduce(2, octant, key, reduce="amin", include_self=True)
    present = first < k
    return first.clamp_max(k - 1), present


class _AxisConv(nn.Module):
    """Kernel-2 convolution (+ BN + ReLU) along the fastest remaining cube axis,
    channels last: ``(B, N, 2R, C)`` -> ``(B, N, R, C')``. The two cells that the
    kernel covers (adjacent: cells ``2r`` and ``2r + 1``) are concatenated, which is
    a reshape view, and mapped by one linear layer; the output keeps the remaining
    axes in order, so the next convolution's pairs are adjacent again."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = PointMLP(2 * in_channels, (out_channels,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, cells, channels = x.shape
        return self.conv(x.reshape(batch, n, cells // 2, 2 * channels))


class ContextualSimilarity(nn.Module):
    """CSM: the mapping M, the contextual features and S_con.

    Args:
        point_width: width of the per-neighbour layer of eq. 7.
        oe_width: channels of each orientation-encoding convolution.
        mlp: widths of the shared MLP (64, 64, 64); ``mlp[-1]`` is the attribute
            size fed to PointNet++.
        out_channels: the linear layer's output (64): the contextual feature f.
        radius: r (metres): offsets and distances are divided by it.
        centre: the centre term, ``"height"`` or ``"xyz"`` (see :func:`centre_features`).
    """

    def __init__(
        self, point_width: int = 64, oe_width: int = 64, mlp: Sequence[int] = (64, 64, 64), out_channels: int = 64,
        radius: float = 0.15, centre: str = "height",
    ):
        super().__init__()
        if centre not in CENTRE_MODES:
            raise ValueError(f"CSM centre must be one of {tuple(CENTRE_MODES)}, got {centre!r}")
        if not radius > 0:
            raise ValueError(f"CSM radius must be > 0, got {radius}")
        self.centre = centre
        self.inv_radius = 1.0 / float(radius)
        self.centre_channels = CENTRE_MODES[centre]
        self.in_channels = self.centre_channels + 4  # [c(x_i), (x_j - x_i) / r, |x_j - x_i| / r]
        self.attr_channels = int(mlp[-1])
        self.point_centre = nn.Linear(self.centre_channels, point_width)  # W_c and b of eq. 7
        self.point_rel = nn.Linear(4, point_width, bias=False)  # W_r of eq. 7
        self.oe = nn.Sequential(
            _AxisConv(self.in_channels, oe_width), _AxisConv(oe_width, oe_width), _AxisConv(oe_width, oe_width)
        )
        self.mlp = PointMLP(point_width + oe_width, mlp)
        self.linear = nn.Linear(self.attr_channels, out_channels)

    def mapping(self, centres: torch.Tensor, cloud: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """M(N(i)): ``centres (B,N,3)``, neighbours ``cloud`` at ``idx (B,N,K)`` with
        ``valid (B,N,K)`` -> ``(B, N, mlp[-1])`` (channels last)."""
        k = idx.shape[-1]
        # in place on the fresh lookup (no (B, N, K, 3) temporaries; the same arithmetic)
        rel = gather(cloud, idx).sub_(centres.unsqueeze(2)).mul_(self.inv_radius)  # (B, N, K, 3), units of r
        rel = rel.masked_fill_(~valid.unsqueeze(-1), 0.0)
        rel4 = torch.cat([rel, torch.linalg.vector_norm(rel, dim=-1, keepdim=True)], dim=-1)  # (B, N, K, 4)

        # Eq. 7 as W_c x_i (once per centre) + W_r [x_j - x_i, |x_j - x_i|] (per neighbour).
        # fp32 under CPU autocast: without bf16 vector arithmetic this elementwise work is
        # slower in bf16; the MLP after it takes autocast's precision.
        with torch.autocast("cpu", enabled=False) if rel4.device.type == "cpu" else nullcontext():
            per_neighbour = self.point_rel(rel4)  # (B, N, K, W)
            centre = centre_features(centres, self.centre)  # (B, N, Cc)
            per_neighbour = torch.relu_(per_neighbour.add_(self.point_centre(centre).unsqueeze(2)))
            if per_neighbour.requires_grad:  # autograd keeps the ReLU output: no in-place masking
                summed = torch.einsum("bnkw,bnk->bnw", per_neighbour, valid.to(per_neighbour.dtype)) / k
            else:  # inference: mask in place + sum, 2x faster on a CPU than the einsum's bmm, no extra copy
                summed = per_neighbour.mul_(valid.unsqueeze(-1).to(per_neighbour.dtype)).sum(dim=2) / k

        slot, present = octant_neighbours(rel, valid)  # (B, N, 8)
        cells = gather(rel4.flatten(0, 1), slot.flatten(0, 1))  # (B*N, 8, 4)
        cells = cells.view(*slot.shape, 4) * present.unsqueeze(-1).to(rel4.dtype)  # empty octant: the centre
        oriented = self._orientation_encoding(centre, cells)  # (B, N, oe)

        return self.mlp(torch.cat([summed, oriented], dim=-1))

    def _orientation_encoding(self, centres: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The three OE convolutions on the cube whose 8 cells are ``[c(x_i), cell]``:
        ``centres (B, N, Cc)`` (the centre term), ``cells (B, N, 8, 4)`` -> ``(B, N, oe_width)``.

        The first convolution sees ``[c, c_a, c, c_b]`` for each pair of cells
        along x; its linear map is computed as ``(W_1 + W_3) c`` once per centre
        plus ``[W_2, W_4] [c_a, c_b]`` per pair (the same sum, without building the
        (B, N, 8, Cc + 4) cube and with 8 instead of 2 (Cc + 4) inputs per pair).
        """
        batch, n = cells.shape[:2]
        first = self.oe[0].conv
        cc, ci = self.centre_channels, self.in_channels
        weight = first.linears[0].weight  # (oe, 2 ci) = [W_1 (cc), W_2 (4), W_3 (cc), W_4 (4)]
        centre_w = weight[:, 0:cc] + weight[:, ci:ci + cc]
        cell_w = torch.cat([weight[:, cc:ci], weight[:, ci + cc:2 * ci]], dim=1)  # (oe, 8)
        pairs = cells.reshape(batch, n, 4, 8)  # the 4 pairs along x: cells (2r, 2r + 1)
        pre = F.linear(pairs, cell_w)  # (B, N, 4, oe)
        pre = pre.add_(F.linear(centres, centre_w).unsqueeze(2))  # in place: a broadcast add is slower
        x = first.from_first_linear(pre)  # (B, N, 4, oe)
        return self.oe[2](self.oe[1](x)).squeeze(2)

    def forward(
        self,
        points: torch.Tensor,
        q_points: torch.Tensor,
        p_idx: torch.Tensor,
        p_valid: torch.Tensor,
        q_idx: torch.Tensor,
        q_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points: ``(B, N, 3)`` P (the centres), ``q_points (B, M, 3)`` Q.
            p_idx, p_valid: N_P(i) ``(B, N, K)``; q_idx, q_valid: N_Q(i) ``(B, N, K)``.

        Returns:
            ``attr (B, N, mlp[-1])`` = M(N_P(i)) for PointNet++ (channels last), and
            ``s_con (B, N)`` in [-1, 1] (0 where N_Q(i) is empty).
        """
        n = points.shape[1]
        # N_P and N_Q through M in one pass: points stacked along N, neighbour
        # indices into [P; Q] (Q's shifted by |P|).
        cloud = torch.cat([points, q_points], dim=1)
        centres = torch.cat([points, points], dim=1)
        idx = torch.cat([p_idx, q_idx + n], dim=1)
        valid = torch.cat([p_valid, q_valid], dim=1)
        attr_both = self.mapping(centres, cloud, idx, valid)  # (B, 2N, A)
        f = self.linear(attr_both)
        f_p, f_q = f[:, :n], f[:, n:]
        s_con = F.cosine_similarity(f_p, f_q, dim=-1, eps=1e-8).clamp(-1.0, 1.0)
        s_con = s_con * q_valid.any(dim=-1).to(s_con.dtype)
        return attr_both[:, :n], s_con
