"""SAFNet's training loss (eq. 11): L = L_fusion + 0.2 L_2D + 0.8 L_3D + 0.8 L_2Dunp.

The terms, their switches and the class weights: docs/model.md ("Losses") and
docs/design.md §1.9. Every term is a cross-entropy with ``ignore_index =
IGNORE_INDEX`` (255), class-weighted when ``class_weights (C,)`` is given (the
weighted mean); a term with no labelled element is an exact 0 that still keeps
the graph (never NaN). L_2Dunp ignores Q points the model did not use
(``output.q_valid``) and invalid input points.
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


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(Class-weighted) mean cross-entropy over labelled elements.

    ``logits (..., C)`` with ``labels (...)`` long; IGNORE_INDEX (and any label
    outside ``[0, C)``) is skipped; 0 when nothing is labelled. ``class_weights``
    ``(C,)``: the weighted mean of torch's ``cross_entropy(weight=...)``.
    """
    num_classes = logits.shape[-1]
    flat_logits = logits.reshape(-1, num_classes)
    flat_labels = labels.reshape(-1).long()
    keep = (flat_labels >= 0) & (flat_labels < num_classes)
    if not bool(keep.any()):
        return flat_logits.sum() * 0.0
    weight = None if class_weights is None else class_weights.to(device=flat_logits.device, dtype=flat_logits.dtype)
    return F.cross_entropy(flat_logits[keep], flat_labels[keep], weight=weight)


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
    output: SafnetOutput, batch: ChunkBatch, config: SafnetConfig, class_weights: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (``fusion``, ``3d``, ``2d``, ``unproj`` when present;
    each part without its lambda, the total weighted by ``w_2d``, ``w_3d``, ``w_unproj``);
    every cross-entropy class-weighted by ``class_weights (C,)`` when given.

    Raises:
        ValueError: the batch has no ``labels``.
    """
    if batch.labels is None:
        raise ValueError("safnet_loss needs batch.labels")
    labels = batch.labels.long()
    if output.point_valid is not None:
        labels = torch.where(output.point_valid, labels, torch.full_like(labels, IGNORE_INDEX))
    parts: dict[str, torch.Tensor] = {"fusion": masked_cross_entropy(output.logits, labels, class_weights)}
    total = parts["fusion"]
    if config.aux_losses and output.logits_3d is not None:
        parts["3d"] = masked_cross_entropy(output.logits_3d, labels, class_weights)
        total = total + config.w_3d * parts["3d"]
    if config.aux_losses and output.logits_2d is not None and batch.image_labels is not None and not config.freeze_2d:
        parts["2d"] = masked_cross_entropy(output.logits_2d.movedim(2, -1), batch.image_labels, class_weights)
        total = total + config.w_2d * parts["2d"]
    if config.unproj_loss and output.logits_unproj is not None:
        target = unprojected_labels(batch, config.unproj_radius, output.point_valid)
        if output.q_valid is not None:
            target = torch.where(output.q_valid, target, torch.full_like(target, IGNORE_INDEX))
        parts["unproj"] = masked_cross_entropy(output.logits_unproj, target, class_weights)
        total = total + config.w_unproj * parts["unproj"]
    return total, parts
