"""2D features onto 3D points, as MVPNet does (docs/design.md §1.3, docs/model.md step 3).

Per input point: its k = 3 nearest valid Q points, ``[F(q), q - p, |q - p|^2]``,
a shared MLP with BN + ReLU, summed over the neighbours: F2D ``(B, N, C')``;
a point with no valid Q point at all gets F2D = 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from safnet_ros.geometry.neighbors import gather, knn
from safnet_ros.model.folded_norm import SafeBatchNorm, bn_relu, linear_bn_relu

__all__ = ["Aggregate2D", "PointMLP"]


class PointMLP(nn.Module):
    """Shared MLP on channels-last features ``(..., C_in)`` -> ``(..., widths[-1])``.

    Each layer is Linear (no bias) + BatchNorm over all leading positions + ReLU:
    the maths of 1x1 convolutions with BN, channels last (docs/model.md). In eval
    mode each BN is folded into its linear layer (:mod:`safnet_ros.model.folded_norm`).
    """

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for width in widths:
            self.linears.append(nn.Linear(in_channels, int(width), bias=False))
            self.norms.append(SafeBatchNorm(int(width)))
            in_channels = int(width)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # inference: the first BN folded into the first product too
            lead = x.shape[:-1]
            rows = linear_bn_relu(x.reshape(-1, x.shape[-1]), self.linears[0].weight, self.norms[0])
            return self._eval_rest(rows).view(*lead, self.out_channels)
        return self.from_first_linear(self.linears[0](x))

    def _eval_rest(self, x: torch.Tensor) -> torch.Tensor:
        """Layers 2.. in eval mode on rows ``(R, widths[0])``, each BN folded."""
        for linear, norm in zip(self.linears[1:], self.norms[1:]):
            x = linear_bn_relu(x, linear.weight, norm)
        return x

    def from_first_linear(self, pre: torch.Tensor) -> torch.Tensor:
        """Finish the MLP from the output of the first linear layer ``(..., widths[0])``
        (lets a caller compute that layer piecewise: a linear map of a concatenation
        is the sum of linear maps of its parts)."""
        lead = pre.shape[:-1]
        x = pre.reshape(-1, pre.shape[-1])
        if not self.training:  # inference: every BN folded into its linear layer
            return self._eval_rest(bn_relu(x, self.norms[0])).view(*lead, self.out_channels)
        for i, norm in enumerate(self.norms):
            if i > 0:
                x = self.linears[i](x)
            x = torch.relu_(norm(x))
        return x.view(*lead, self.out_channels)


class Aggregate2D(nn.Module):
    """k-NN aggregation of per-pixel 2D features onto the input points.

    Args:
        feat_dim: channels C of the 2D features (64).
        mlp: widths of the shared MLP (64, 64, 64); the output has ``mlp[-1]`` channels.
        k: neighbours in Q per point (3).
    """

    def __init__(self, feat_dim: int = 64, mlp: Sequence[int] = (64, 64, 64), k: int = 3):
        super().__init__()
        self.k = int(k)
        self.out_channels = int(mlp[-1])
        self.mlp = PointMLP(feat_dim + 4, mlp)

    def forward(
        self,
        points: torch.Tensor,
        q_points: torch.Tensor,
        q_feats: torch.Tensor,
        q_mask: Optional[torch.Tensor] = None,
        neighbours: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        q_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """F2D ``(B, N, mlp[-1])``, channels last; zero for points without any valid Q point.

        Args:
            points: ``(B, N, 3)``; q_points: ``(B, M, 3)``, M >= 1 (metres).
            q_feats: ``(B, R, C)`` feature rows: Q point j's is row ``q_index[b, j]``
                (``q_index (B, M)`` long; row j when None), so the flattened pixel grid
                with ``q_index = q_pixel`` is never expanded per Q point.
            q_mask: ``(B, M)`` bool, False = padding.
            neighbours: optional precomputed ``knn(P, Q, >= k)`` ``(dist, idx)``.

        The first layer is computed as ``W_F F + W_g [dxyz, |dxyz|^2]`` with ``W_F F``
        applied to the feature rows before the lookup (docs/model.md, step 3).
        """
        if neighbours is None:
            neighbours = knn(points, q_points, self.k, q_mask)
        dist, idx = neighbours[0][..., : self.k], neighbours[1][..., : self.k]
        found = torch.isfinite(dist)  # (B, N, k)
        offset = gather(q_points, idx) - points.unsqueeze(2)  # (B, N, k, 3)
        offset = offset.masked_fill(~found.unsqueeze(-1), 0.0)
        geometry = torch.cat([offset, (offset * offset).sum(-1, keepdim=True)], dim=-1)  # (B, N, k, 4)
        weight = self.mlp.linears[0].weight  # (W0, C + 4)
        channels = weight.shape[1] - 4
        projected = q_feats @ weight[:, :channels].t()  # (B, R, W0)
        rows = idx if q_index is None else gather(q_index.unsqueeze(-1), idx).squeeze(-1)
        pre = gather(projected, rows) + geometry @ weight[:, channels:].t()
        y = self.mlp.from_first_linear(pre)  # (B, N, k, C')
        if bool(found.all()):
            return y.sum(dim=2)
        return (y * found.unsqueeze(-1).to(y.dtype)).sum(dim=2)
