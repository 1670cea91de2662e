"""The model's input and output containers (docs/dev/interfaces.md, "Model batch")."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

__all__ = ["ChunkBatch", "SafnetOutput"]


@dataclass
class ChunkBatch:
    """A batch of chunks (all torch tensors, on one device).

    Attributes:
        points: ``(B, N, 3)`` float32, chunk-local metres (xy centred on the chunk,
            z from the floor). Non-finite rows are treated as missing points.
        images: ``(B, V, 3, H, W)`` float32, ImageNet-normalised RGB.
        q_points: ``(B, M, 3)`` float32, back-projected pixels in the same frame.
        q_mask: ``(B, M)`` bool, ``False`` for padding.
        q_pixel: ``(B, M)`` long, index into the flattened ``(V*H*W)`` pixel grid.
        labels: ``(B, N)`` long class indices, ``IGNORE_INDEX`` (255) where unknown.
        image_labels: ``(B, V, H, W)`` long, for the 2D loss.
        pixel_features: optional ``(B, V*H*W, C)`` 2D features computed beforehand
            by :meth:`SafnetModel.encode_views` (inference with the frozen 2D net:
            a view that serves several chunks or clouds is encoded once). When
            given, ``images`` are not run through the 2D net again (they may then
            hold no view at all). A table of batch 1, ``(1, U*H*W, C)``, is shared
            by every sample: ``q_pixel`` then indexes the U views of the whole
            batch (the Segmenter's batched chunks of one cloud).
        pixel_logits: optional ``(B or 1, V, K, H, W)`` 2D logits matching ``pixel_features``.
    """

    points: torch.Tensor
    images: torch.Tensor
    q_points: torch.Tensor
    q_mask: torch.Tensor
    q_pixel: torch.Tensor
    labels: Optional[torch.Tensor] = None
    image_labels: Optional[torch.Tensor] = None
    pixel_features: Optional[torch.Tensor] = None
    pixel_logits: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str) -> "ChunkBatch":
        """A copy with every tensor on ``device``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ChunkBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in values.items()})

    @property
    def batch_size(self) -> int:
        return int(self.points.shape[0])


@dataclass
class SafnetOutput:
    """What :class:`~safnet_ros.model.safnet.SafnetModel` returns.

    Attributes:
        logits: ``(B, N, C)`` per-point class scores (C = 20). Points with
            non-finite coordinates get all-zero logits (a uniform distribution).
        s_geo, s_con, s: ``(B, N)`` geometric, contextual and total similarity
            (``s = s_geo * s_con``); see docs/model.md for their values in the
            baselines and ablations.
        logits_3d: ``(B, N, C)`` auxiliary classifier on F3D (None without a 3D part).
        logits_2d: ``(B, V, C, H, W)`` the 2D net's own logits (None when frozen or
            without a 2D part).
        logits_unproj: ``(B, M, C)`` classifier on the back-projected 2D features of
            Q (computed in training mode only, None otherwise).
        point_valid: ``(B, N)`` bool, False for points with non-finite coordinates.
        q_valid: ``(B, M)`` bool, the Q points the model used (False for padding,
            non-finite xyz, a ``q_pixel`` outside the views, or a chunk without views);
            the unprojected loss ignores the others.
        nearest_q_dist: ``(B, N)`` metres from each point to its nearest valid Q point
            (the nearest back-projected pixel of the chunk's views; inf where there is
            none), as the fusion's neighbour search found it; None for 3D-only models.
    """

    logits: torch.Tensor
    s_geo: torch.Tensor
    s_con: torch.Tensor
    s: torch.Tensor
    logits_3d: Optional[torch.Tensor] = None
    logits_2d: Optional[torch.Tensor] = None
    logits_unproj: Optional[torch.Tensor] = None
    point_valid: Optional[torch.Tensor] = None
    q_valid: Optional[torch.Tensor] = None
    nearest_q_dist: Optional[torch.Tensor] = None
