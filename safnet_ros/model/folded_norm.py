"""Batch norm for the shared MLPs: :class:`SafeBatchNorm`, folded into the linear layer before it for inference.

In eval mode a BatchNorm is a fixed per-channel affine map,
``BN(y) = y * scale + shift`` with ``scale = gamma / sqrt(running_var + eps)`` and
``shift = beta - running_mean * scale``. After a bias-free linear layer ``y = x W^T``
that is ``x (W * scale)^T + shift``: one matrix product with a bias
(:func:`torch.addmm`) instead of a product plus a separate normalisation pass over
every row.

The fold is recomputed on every call from the live parameters (a few hundred
numbers per layer), so nothing goes stale when weights are loaded or trained, and
checkpoints are unchanged. In training mode (batch statistics) and for a norm
without running statistics, the unfolded modules run as before.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SafeBatchNorm", "folded_scale_shift", "linear_bn_relu", "bn_relu"]


class SafeBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm for ``(B, C, ...)`` or rows ``(R, C)`` that normalises with its running statistics
    when a training batch holds a single value per channel (batch statistics of one value are undefined)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected (B, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // max(x.shape[1], 1) <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def folded_scale_shift(norm: nn.modules.batchnorm._BatchNorm) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(scale (C,), shift (C,))`` with ``norm(y) == y * scale + shift`` per channel,
    or None when ``norm`` uses batch statistics (training mode, or no running stats)."""
    if norm.training or norm.running_mean is None or norm.running_var is None:
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def linear_bn_relu(x: torch.Tensor, weight: torch.Tensor, norm: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``relu(norm(x @ weight^T))`` for rows ``x (R, C_in)``, ``weight (C_out, C_in)``
    -> ``(R, C_out)``; one ``addmm`` when the norm can be folded."""
    folded = folded_scale_shift(norm)
    if folded is None:
        return torch.relu_(norm(F.linear(x, weight)))
    scale, shift = folded
    return torch.relu_(torch.addmm(shift, x, (weight * scale.unsqueeze(1)).t()))


def bn_relu(y: torch.Tensor, norm: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``relu(norm(y))`` for rows ``y (R, C)`` (a linear layer's output computed
    elsewhere); one fused multiply-add when the norm can be folded."""
    folded = folded_scale_shift(norm)
    if folded is None:
        return torch.relu_(norm(y))
    scale, shift = folded
    return torch.relu_(torch.addcmul(shift, y, scale))
