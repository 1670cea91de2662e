"""3D branch of SAFNet: PointNet++ single-scale grouping (SSG) for segmentation.

The MVPNet / PointNet++ ScanNet setting (docs/design.md §1.7): four set-abstraction
(SA) levels (farthest point sampling, :func:`ball_query` grouping of the
``nsample`` nearest points within the radius, shared MLP, max pool), then four
feature-propagation (FP) levels (inverse-distance 3-NN interpolation, skip
concatenation, shared MLP) back to the input points.

The modules (and so the state_dict) are the usual 1x1 Conv2d / Conv1d + BN + ReLU;
they are evaluated channels last as ``F.linear`` on their weights (docs/model.md).
A level never asks for more centroids than the points it receives
(``min(npoint, N)``), so any N >= 1 works; a BN with a single value per channel
normalises with its running statistics (:class:`~safnet_ros.model.folded_norm.SafeBatchNorm`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from safnet_ros.geometry.neighbors import (
    ball_query,
    farthest_point_sample,
    gather,
    interpolate_rows,
    three_nn_weights,
)
from safnet_ros.model.folded_norm import SafeBatchNorm, bn_relu, linear_bn_relu
from safnet_ros.model.stages import stage

__all__ = ["PointNet2SSG", "SetAbstraction", "FeaturePropagation"]


def _shared_mlp(in_channels: int, widths: Sequence[int], dims: int) -> nn.Sequential:
    """1x1 conv (``dims`` = 1 or 2) + BN + ReLU per width (the usual PointNet++ modules and
    state_dict); :func:`_run_rows` evaluates them channels last."""
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    layers: list[nn.Module] = []
    for width in widths:
        layers += [conv(in_channels, width, 1, bias=False), SafeBatchNorm(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


def _conv_matrix(conv: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` matrix of a kernel-1 Conv1d/Conv2d (a view of its weight)."""
    return conv.weight.view(conv.weight.shape[0], conv.weight.shape[1])


def _run_rows(mlp: nn.Sequential, x: torch.Tensor, first_done: bool = False) -> torch.Tensor:
    """A :func:`_shared_mlp` on channels-last rows ``x (R, C_in)`` -> ``(R, C_out)``.

    A kernel-1 conv is a matrix product per position and BN over all positions of a
    channel is BN over the rows. ``first_done``: ``x`` already is the first layer's
    matrix product (``(R, widths[0])``), computed piecewise by the caller. In eval
    mode each BN is folded into its matrix product (:mod:`safnet_ros.model.folded_norm`).
    """
    for i in range(0, len(mlp), 3):
        conv, norm = mlp[i], mlp[i + 1]
        if first_done and i == 0:
            x = bn_relu(x, norm)
        else:
            x = linear_bn_relu(x, _conv_matrix(conv), norm)
    return x


class SetAbstraction(nn.Module):
    """One SA level: FPS centroids, ball-query grouping, shared MLP, max pool."""

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.npoint = int(npoint)
        self.radius = float(radius)
        self.nsample = int(nsample)
        self.mlp = _shared_mlp(in_channels + 3, mlp, dims=2)

    def forward(
        self, xyz: torch.Tensor, features: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyz (B, N, 3)`` metres, ``features (B, N, C) | None`` -> ``(centroids (B, m, 3),
        features (B, m, mlp[-1]))`` with ``m = min(npoint, N)``, channels last.

        ``mask (B, N)`` bool (None: all valid): False rows (padding of a batch of
        chunks of different sizes) are never a centroid or a neighbour. A sample
        with n valid rows gets its ``min(npoint, n)`` centroids first; the slots
        after them repeat its first centroid (see :meth:`centroid_mask`).
        """
        m = min(self.npoint, xyz.shape[1])
        with stage("fps"):
            centre_idx = farthest_point_sample(xyz, m, mask)  # (B, m)
        centroids = gather(xyz, centre_idx)  # (B, m, 3)
        with stage("neighbours"):
            idx, _ = ball_query(centroids, xyz, self.radius, self.nsample, mask,
                                query_mask=self.centroid_mask(mask, m))  # (B, m, k)
        # Invalid slots repeat the nearest valid neighbour: harmless under max pooling.
        # The first layer W [x_j - c, f_j] = W_x (x_j - c) + W_f f_j: the feature part
        # runs once per point and is looked up for the (B, m, k) rows (N is smaller than
        # m * k at every level but the first), and the grouped concatenation is never
        # built. The offsets x_j - c stay explicit: W_x x_j - W_x c would cancel.
        weight = _conv_matrix(self.mlp[0])  # (W0, 3 + C)
        # in place on fresh tensors (the lookup, the matmul's output): no (B, m, k, .) temporaries
        pre = F.linear(gather(xyz, idx).sub_(centroids.unsqueeze(2)), weight[:, :3])  # (B, m, k, W0)
        if features is not None:
            pre = pre.add_(gather(F.linear(features, weight[:, 3:]), idx))
        batch, _, k, width = pre.shape
        with stage("sa_mlp"):
            out = _run_rows(self.mlp, pre.reshape(-1, width), first_done=True)  # (B*m*k, C')
            pooled = out.view(batch, m, k, -1).amax(dim=2)  # (B, m, C')
        return centroids, pooled

    def centroid_mask(self, mask: Optional[torch.Tensor], m: int) -> Optional[torch.Tensor]:
        """``(B, m)`` bool: the centroid slots that hold a real centroid for an input
        ``mask (B, N)`` (None stays None): the first ``min(npoint, n_valid)`` slots."""
        if mask is None:
            return None
        n_valid = mask.sum(dim=1, keepdim=True)
        return torch.arange(m, device=mask.device).unsqueeze(0) < n_valid


class FeaturePropagation(nn.Module):
    """One FP level: 3-NN inverse-distance interpolation + skip concat + shared MLP.

    The first layer ``W [interp(F2), F1]`` is computed as ``interp(W_2 F2) + W_1 F1``:
    interpolation is linear, so ``W_2`` is applied to the m coarse rows before the
    interpolation instead of to the n interpolated rows (n >> m), and the
    concatenation is never built.
    """

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = _shared_mlp(in_channels, mlp, dims=1)

    def forward(
        self,
        fine_xyz: torch.Tensor,
        coarse_xyz: torch.Tensor,
        fine_feats: Optional[torch.Tensor],
        coarse_feats: torch.Tensor,
        coarse_mask: Optional[torch.Tensor] = None,
        fine_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``fine_xyz (B, n, 3)``, ``coarse_xyz (B, m, 3)``, ``fine_feats (B, n, C1) | None``,
        ``coarse_feats (B, m, C2)`` -> ``(B, n, mlp[-1])``, channels last;
        ``coarse_mask (B, m)`` bool: the coarse rows that may be interpolated from (None: all);
        ``fine_mask (B, n)``: the fine rows whose output matters (the others get no neighbours)."""
        coarse_channels = coarse_feats.shape[-1]
        weight = _conv_matrix(self.mlp[0])  # (W0, C2 + C1)
        with stage("neighbours"):
            idx, w = three_nn_weights(fine_xyz, coarse_xyz, coarse_mask, query_mask=fine_mask)  # (B, n, 3)
        with stage("fp_mlp"):
            pre = interpolate_rows(F.linear(coarse_feats, weight[:, :coarse_channels]), idx, w)  # (B, n, W0)
            if fine_feats is not None:
                pre = pre.add_(F.linear(fine_feats, weight[:, coarse_channels:]))  # in place: pre is fresh
            batch, n, width = pre.shape
            return _run_rows(self.mlp, pre.reshape(batch * n, width), first_done=True).view(batch, n, -1)


class PointNet2SSG(nn.Module):
    """PointNet++ SSG segmentation backbone: per-point features for every input point.

    Args:
        in_channels: per-point features besides xyz (64 from the CSM, 0 for xyz only).
        npoints, radii (metres), nsample, mlps: the four SA levels.
        fp_mlps: the four FP levels, coarsest first.
        out_channels: ``fp_mlps[-1][-1]`` (:meth:`SafnetConfig.validate` checks the layout).

    ``forward(xyz (B, N, 3) metres, features (B, in_channels, N) | None)`` ->
    ``(B, out_channels, N)``.
    """

    def __init__(
        self,
        in_channels: int = 0,
        npoints: Sequence[int] = (2048, 512, 128, 32),
        radii: Sequence[float] = (0.1, 0.2, 0.4, 0.8),
        nsample: int = 32,
        mlps: Sequence[Sequence[int]] = ((32, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 512)),
        fp_mlps: Sequence[Sequence[int]] = ((256, 256), (256, 256), (256, 128), (128, 128, 128)),
        out_channels: int = 128,
    ):
        super().__init__()
        levels = len(npoints)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.sa = nn.ModuleList()
        level_channels = [in_channels]
        for npoint, radius, widths in zip(npoints, radii, mlps):
            self.sa.append(SetAbstraction(npoint, radius, nsample, level_channels[-1], widths))
            level_channels.append(int(widths[-1]))
        self.fp = nn.ModuleList()
        deep = level_channels[-1]
        for i, widths in enumerate(fp_mlps):
            skip = level_channels[levels - 1 - i]  # features of the finer level
            self.fp.append(FeaturePropagation(deep + skip, widths))
            deep = int(widths[-1])

    def forward(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask (B, N)`` bool (None: all valid): rows that take part. The others
        (padding of a batch of chunks of different sizes, or non-finite points
        replaced by a stand-in) are never sampled, grouped or interpolated from,
        so a padded sample gives its valid rows what it gives them alone; their
        own outputs are meaningless."""
        if mask is not None and bool(mask.all()):
            mask = None
        if xyz.dim() != 3 or xyz.shape[-1] != 3 or xyz.shape[1] < 1:
            raise ValueError(f"xyz must be (B, N>=1, 3), got {tuple(xyz.shape)}")
        if self.in_channels == 0:
            if features is not None and features.shape[1] != 0:
                raise ValueError(f"this PointNet2SSG takes no features, got {tuple(features.shape)}")
            features = None
        elif features is None or tuple(features.shape) != (xyz.shape[0], self.in_channels, xyz.shape[1]):
            got = None if features is None else tuple(features.shape)
            raise ValueError(f"features must be {(xyz.shape[0], self.in_channels, xyz.shape[1])}, got {got}")
        xyz = xyz.contiguous()
        # Channels last inside (rows of (B, N, C)); the interface stays (B, C, N).
        level_xyz, level_feats = [xyz], [None if features is None else features.transpose(1, 2)]
        level_mask = [mask]
        for sa in self.sa:
            new_xyz, new_feats = sa(level_xyz[-1], level_feats[-1], level_mask[-1])
            level_xyz.append(new_xyz)
            level_feats.append(new_feats)
            level_mask.append(sa.centroid_mask(level_mask[-1], new_xyz.shape[1]))
        deep = level_feats[-1]
        levels = len(self.sa)
        for i, fp in enumerate(self.fp):
            fine = levels - 1 - i
            deep = fp(level_xyz[fine], level_xyz[fine + 1], level_feats[fine], deep, level_mask[fine + 1],
                      level_mask[fine])
        return deep.transpose(1, 2)  # (B, C, N): a view of the channels-last rows
