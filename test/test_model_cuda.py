"""CPU and CUDA give the same SAFNet outputs and the same neighbours.

Skipped on machines without CUDA (our CPU CI); run on a GPU machine with
``pytest test/test_model_cuda.py``. The CPU path searches neighbours with a
KD-tree, the CUDA path with chunked torch distances: same sets, ties aside.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch(n: int = 4000, m: int = 12000, views: int = 3, seed: int = 0):
    from safnet_ros.model.batch import ChunkBatch

    g = torch.Generator().manual_seed(seed)
    points = torch.rand(1, n, 3, generator=g) * torch.tensor([1.5, 1.5, 2.5])
    q = points[:, torch.randint(0, n, (m,), generator=g)] + 0.01 * torch.randn(1, m, 3, generator=g)
    return ChunkBatch(
        points=points,
        images=torch.randn(1, views, 3, 120, 160, generator=g),
        q_points=q,
        q_mask=torch.ones(1, m, dtype=torch.bool),
        q_pixel=torch.randint(0, views * 120 * 160, (1, m), generator=g),
    )


@pytest.mark.parametrize("backend_fn", ["knn", "ball_query"])
def test_neighbours_agree_between_kdtree_and_cuda(backend_fn):
    from safnet_ros.geometry import neighbors

    g = torch.Generator().manual_seed(1)
    query, ref = torch.rand(1, 3000, 3, generator=g), torch.rand(1, 9000, 3, generator=g)
    if backend_fn == "knn":
        d_cpu, _ = neighbors.knn(query, ref, 8)
        d_gpu, _ = neighbors.knn(query.cuda(), ref.cuda(), 8)
        torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-4, atol=1e-5)
    else:
        i_cpu, v_cpu = neighbors.ball_query(query, ref, 0.08, 16)
        i_gpu, v_gpu = neighbors.ball_query(query.cuda(), ref.cuda(), 0.08, 16)
        assert (v_gpu.cpu() == v_cpu).float().mean() > 0.999
        same = (i_gpu.cpu() == i_cpu) | ~v_cpu
        assert same.float().mean() > 0.999


@pytest.mark.parametrize("preset", ["lite", "paper"])
def test_model_outputs_agree_between_cpu_and_cuda(preset):
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model

    torch.manual_seed(0)
    model = build_model(SafnetConfig.preset(preset)).eval()
    batch = _batch()
    with torch.no_grad():
        cpu = model(batch)
        gpu = model.cuda()(batch.to("cuda"))
    # TF32 and reduction order differ: compare decisions and similarities, not bits.
    agree = (cpu.logits.argmax(-1) == gpu.logits.argmax(-1).cpu()).float().mean().item()
    assert agree > 0.99
    np.testing.assert_allclose(gpu.s.cpu().numpy(), cpu.s.numpy(), atol=1e-3)
    np.testing.assert_allclose(gpu.logits.cpu().numpy(), cpu.logits.numpy(), atol=5e-2, rtol=5e-2)
