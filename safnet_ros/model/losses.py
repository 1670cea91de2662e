"""SAFNet's training loss (eq. 11): L = L_fusion + 0.2 L_2D + 0.8 L_3D + 0.8 L_2Dunp.

* L_fusion: cross-entropy of the fused per-point logits.
* L_3D: the auxiliary classifier on F3D (switch ``aux_losses``).
* L_2D: the 2D net's logits on its images, only while the 2D net is trained
  (``freeze_2d`` False) and the batch has ``image_labels`` (switch ``aux_losses``).
* L_2Dunp: the classifier on the back-projected 2D features of Q, each Q point
  labelled with the nearest input point within r' (``unproj_radius``); Q points
  without such a point, padding, Q points the model did not use
  (``output.q_valid``) and invalid input points are ignored (switch ``unproj_loss``).

Every term is a cross-entropy with ``ignore_index = IGNORE_INDEX`` (255); a term
with no labelled element is an exact 0 that still keeps the graph (never NaN).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.geometry.neighbors import gather, knn
from safnet_ros.model.batch import ChunkBatch, SafnetOutput
from safnet_ros.model.config import SafnetConfig

__all__ = ["safnet_loss", "masked_cross_entropy", "unprojected_labels"]


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled elements.

    ``logits (..., C)`` with ``labels (...)`` long; IGNORE_INDEX (and any label
    outside ``[0, C)``) is skipped; 0 when nothing is labelled.
    """
    num_classes = logits.shape[-1]
    flat_logits = logits.reshape(-1, num_classes)
    flat_labels = labels.reshape(-1).long()
    keep = (flat_labels >= 0) & (flat_labels < num_classes)
    if not bool(keep.any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits[keep], flat_labels[keep])


def unprojected_labels(batch: ChunkBatch, radius: float, point_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, M)`` long: the label of each Q point's nearest input point within ``radius``
    metres; IGNORE_INDEX for padding and Q points with no input point that close."""
    if batch.labels is None:
        raise ValueError("unprojected labels need batch.labels")
    points = batch.points
    valid = torch.isfinite(points).all(-1) if point_valid is None else point_valid
    points = torch.where(valid.unsqueeze(-1), points, torch.zeros_like(points))
    q = batch.q_points
    b, m = q.shape[:2]
    out = torch.full((b, m), IGNORE_INDEX, dtype=torch.long, device=q.device)
    if m == 0:
        return out
    q_ok = batch.q_mask.bool() & torch.isfinite(q).all(-1)
    q = torch.where(q_ok.unsqueeze(-1), q, torch.zeros_like(q))
    with torch.no_grad():
        dist, idx = knn(q, points, 1, valid)
    nearest = gather(batch.labels.long().unsqueeze(-1), idx).view(b, m)
    close = (dist[..., 0] < radius) & q_ok
    return torch.where(close, nearest, out)


def safnet_loss(
    output: SafnetOutput, batch: ChunkBatch, config: SafnetConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (``fusion``, ``3d``, ``2d``, ``unproj`` when present;
    each part unweighted, the total weighted by ``w_2d``, ``w_3d``, ``w_unproj``).

    Raises:
        ValueError: the batch has no ``labels``.
    """
    if batch.labels is None:
        raise ValueError("safnet_loss needs batch.labels")
    labels = batch.labels.long()
    if output.point_valid is not None:
        labels = torch.where(output.point_valid, labels, torch.full_like(labels, IGNORE_INDEX))
    parts: dict[str, torch.Tensor] = {"fusion": masked_cross_entropy(output.logits, labels)}
    total = parts["fusion"]
    if config.aux_losses and output.logits_3d is not None:
        parts["3d"] = masked_cross_entropy(output.logits_3d, labels)
        total = total + config.w_3d * parts["3d"]
    if config.aux_losses and output.logits_2d is not None and batch.image_labels is not None and not config.freeze_2d:
        parts["2d"] = masked_cross_entropy(output.logits_2d.movedim(2, -1), batch.image_labels)
        total = total + config.w_2d * parts["2d"]
    if config.unproj_loss and output.logits_unproj is not None:
        target = unprojected_labels(batch, config.unproj_radius, output.point_valid)
        if output.q_valid is not None:
            target = torch.where(output.q_valid, target, torch.full_like(target, IGNORE_INDEX))
        parts["unproj"] = masked_cross_entropy(output.logits_unproj, target)
        total = total + config.w_unproj * parts["unproj"]
    return total, parts
