"""A padded batch of chunks of different sizes gives each chunk what it gets alone.

The Segmenter batches the chunks of a cloud: P padded with non-finite rows (masked
out everywhere, PointNet++ included), Q padded with ``q_mask`` False, and the 2D
features of all the batch's views in one table of batch 1 that ``q_pixel`` indexes.
"""
from __future__ import annotations

import pytest
import torch

from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.safnet import build_model

H, W = 24, 32


def _chunk(n: int, m: int, views: list[int], g: torch.Generator, side: float = 1.0) -> dict:
    """n points in a cube of ``side`` metres, m Q points near them from ``views`` (indices into a
    shared table)."""
    points = side * torch.rand(n, 3, generator=g)
    near = points[torch.randint(0, n, (m,), generator=g)] + 0.02 * torch.randn(m, 3, generator=g)
    slot = torch.tensor(views)[torch.randint(0, len(views), (m,), generator=g)]
    pixel = slot * H * W + torch.randint(0, H * W, (m,), generator=g)
    return {"points": points, "q": near, "pixel": pixel}


@pytest.mark.parametrize("variant", ["safnet", "concat", "project2d", "pointnet2"])
def test_padded_batch_with_a_shared_view_table_equals_each_chunk_alone(variant):
    torch.manual_seed(0)
    config = SafnetConfig.preset("lite", pn_npoints=(64, 32, 16, 8), pn_nsample=8, k=8, variant=variant)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, H, W, generator=g)
    with torch.no_grad():
        feats, logits = model.encode_views(images) if model.net2d is not None else (None, None)
    # sizes below and above the first level's 64 centroids, dense enough that the balls of
    # PointNet++ (0.1 m) hold several points; one chunk without Q (3D only)
    chunks = [_chunk(300, 500, [0, 2], g), _chunk(40, 90, [1], g, 0.15), _chunk(120, 0, [0], g, 0.3)]
    table = None if feats is None else (feats.reshape(1, -1, feats.shape[-1]), logits.unsqueeze(0))

    def run(parts: list[dict]):
        n = max(len(c["points"]) for c in parts)
        m = max(1, max(len(c["q"]) for c in parts))
        b = len(parts)
        batch = ChunkBatch(
            points=torch.full((b, n, 3), float("nan")),
            images=torch.zeros(b, 0, 3, H, W),
            q_points=torch.full((b, m, 3), 1e4),
            q_mask=torch.zeros(b, m, dtype=torch.bool),
            q_pixel=torch.zeros(b, m, dtype=torch.long),
        )
        for i, c in enumerate(parts):
            batch.points[i, :len(c["points"])] = c["points"]
            batch.q_points[i, :len(c["q"])] = c["q"]
            batch.q_mask[i, :len(c["q"])] = True
            batch.q_pixel[i, :len(c["q"])] = c["pixel"]
        if table is not None:
            batch.pixel_features, batch.pixel_logits = table
        with torch.no_grad():
            return model(batch)

    together = run(chunks)
    for i, chunk in enumerate(chunks):
        alone = run([chunk])
        n = len(chunk["points"])
        torch.testing.assert_close(together.logits[i, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
        for name in ("s", "s_geo", "s_con"):
            torch.testing.assert_close(getattr(together, name)[i, :n], getattr(alone, name)[0], atol=1e-5, rtol=1e-5)
        assert bool(together.point_valid[i, :n].all()) and not bool(together.point_valid[i, n:].any())
        assert (together.logits[i, n:] == 0).all()  # padding: uniform, as any invalid point
    if variant == "safnet":
        assert (together.s[2, :120] == 0).all() and (together.s[0, :300] > 0).any()  # no Q: S = 0
