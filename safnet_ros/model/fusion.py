"""Fusion: channel attention on each modality and the FC head (eq. 2, eq. 10).

* :class:`ChannelAttention` is a squeeze-excitation block over points: the
  features ``(B, N, C)`` are averaged over the valid points of each sample
  (squeeze), a 1x1 ``C -> C / r`` + ReLU + ``C / r -> C`` + sigmoid gives one
  weight per channel (excitation) that scales every point's features.
* :class:`FusionHead` is the FC (192, 192, 192, 20) classifier: shared linear
  layers (channels last) with BN + ReLU after the first three layers and dropout (0.5) after the third.
* :class:`ConfidenceGate` (our extension, ``confidence_gate``; docs/design.md §1.7):
  a learnt, monotone weight of F2D from the 2D net's own confidence at the pixels a
  point gathers from, so the fusion can lean on F3D where the image is unsure.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from safnet_ros.model.aggregate import PointMLP

__all__ = ["ChannelAttention", "ConfidenceGate", "Dropout", "FusionHead", "pixel_confidence"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn with ``torch.rand`` on a CPU.

    The same function and distribution (each element kept with probability
    ``1 - p``, kept ones scaled by ``1 / (1 - p)``), but CPU ``bernoulli_`` takes
    about three times as long as ``rand`` and a compare: forward and backward of
    the lite head's ``(2, 4096, 128)`` training activations take 6.7 ms here
    against 15.6 ms for ``nn.Dropout``. Other devices use the fused kernel.
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
            # (B, 1, N) @ (B, N, C): the masked sum as one bmm (einsum picks a layout that is
            # 7x slower for a batch of chunks on a CPU: 5.7 ms against 0.8 ms at 9 x 2744 x 128)
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

    Two learnt scalars. At initialisation ``w = 0`` and ``b = 4`` (g = 0.98 for every
    point), so a model started from weights trained without the gate begins where it
    was; training moves ``w`` and ``b`` as far as the 2D net's confidence predicts
    whether its features help. They are stored divided by :attr:`SCALE`: Adam moves a
    parameter by about the learning rate per step (5e-4), which would leave a gate
    that needs ``w`` of order 10 where it started; the scale is a learning-rate
    multiplier that needs no optimiser change. ``forward(c (B, N)) -> g (B, N)``.
    """

    SCALE = 50.0

    def __init__(self, weight: float = 0.0, bias: float = 4.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(weight) / self.SCALE))
        self.bias = nn.Parameter(torch.tensor(float(bias) / self.SCALE))

    def forward(self, confidence: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.SCALE * (self.weight * confidence + self.bias))
