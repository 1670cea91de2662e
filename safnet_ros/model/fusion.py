"""Fusion: channel attention on each modality and the FC head (eq. 2, eq. 10).

docs/design.md §1.8 states the method and our confidence gate; docs/model.md step 7
how they are wired.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from safnet_ros.model.aggregate import PointMLP

__all__ = ["ChannelAttention", "ConfidenceGate", "Dropout", "FusionHead", "pixel_confidence"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn with ``torch.rand`` on a CPU.

    The same distribution (each element kept with probability ``1 - p``, kept
    ones scaled by ``1 / (1 - p)``); CPU ``bernoulli_`` is about three times as
    slow as ``rand`` and a compare. Other devices use the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class ChannelAttention(nn.Module):
    """Squeeze-excitation over points, channels last: ``(B, N, C)`` -> ``(B, N, C)``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.excite = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x (B, N, C)``, ``mask (B, N)`` bool (False: excluded from the pool)."""
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            w = mask.to(x.dtype)
            # (B, 1, N) @ (B, N, C): the masked sum as one bmm (einsum is far slower on a CPU)
            pooled = torch.bmm(w.unsqueeze(1), x).squeeze(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        return x * self.excite(pooled).unsqueeze(1)


class FusionHead(nn.Module):
    """Per-point classifier, channels last: ``(B, N, in_channels)`` -> logits ``(B, N, num_classes)``."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (192, 192, 192), num_classes: int = 20,
                 dropout: float = 0.5):
        super().__init__()
        self.body = PointMLP(in_channels, widths)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(int(widths[-1]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.body(x)))


def pixel_confidence(logits: torch.Tensor) -> torch.Tensor:
    """The 2D net's confidence in each row of logits: ``(..., K)`` -> ``(...)`` in [1/K, 1].

    The largest softmax probability, computed in float32 and without a gradient:
    the gate reads how sure the 2D net is; it must not teach the 2D net to be sure.
    """
    return torch.softmax(logits.detach().float(), dim=-1).amax(dim=-1)


class ConfidenceGate(nn.Module):
    """``g = sigmoid(w * c + b)``: a weight in (0, 1) per point from its 2D confidence ``c``.

    Two learnt scalars, ``w = 0`` and ``b = 4`` at initialisation (g = 0.98: a model
    trained without the gate begins where it was). They are stored divided by
    :attr:`SCALE`, a learning-rate multiplier: Adam moves a parameter by about the
    learning rate (5e-4) per step, and the gate needs ``w`` of order 10.
    ``forward(c (B, N)) -> g (B, N)``.
    """

    SCALE = 50.0

    def __init__(self, weight: float = 0.0, bias: float = 4.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(weight) / self.SCALE))
        self.bias = nn.Parameter(torch.tensor(float(bias) / self.SCALE))

    def forward(self, confidence: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.SCALE * (self.weight * confidence + self.bias))
