"""Test-wide settings: DDS stays on loopback, an isolated ROS domain per run, few threads."""
from __future__ import annotations

import os
import random

import pytest

# Real DDS pub/sub, but discovery only on this machine and in a domain of our own
# so parallel runs (and other sessions) do not see each other.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))

try:  # keep the suite well-behaved on 2-core CI machines
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
except ImportError:  # pragma: no cover
    pass


def _overfit(model, batch, config, steps: int = 300, lr: float = 2e-3, stop_at: float = 0.97):
    """Adam on one ChunkBatch until its point accuracy (labelled points) reaches ``stop_at``,
    checked every 25 steps. Returns (accuracy, predictions (B, N), steps taken)."""
    import torch

    from safnet_ros.data.labels import IGNORE_INDEX
    from safnet_ros.model.losses import safnet_loss

    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    valid = batch.labels != IGNORE_INDEX
    accuracy, pred, step = 0.0, None, 0
    for step in range(steps):
        model.train()
        total, _ = safnet_loss(model(batch), batch, config)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        if step % 25 == 24:
            model.eval()
            with torch.no_grad():
                pred = model(batch).logits.argmax(-1)
            accuracy = float((pred[valid] == batch.labels[valid]).float().mean())
            if accuracy >= stop_at:
                break
    return accuracy, pred, step + 1


@pytest.fixture
def overfit():
    """The overfitting loop of the learning tests (see :func:`_overfit`)."""
    return _overfit
