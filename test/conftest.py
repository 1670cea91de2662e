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


@pytest.fixture(scope="session")
def make_loop_scene(tmp_path_factory):
    """``make(frames, seed) -> scene folder``: a synthetic room (.sens: 320x240 JPEG colour,
    160x120 depth) scanned on a loop trajectory, every pose valid and nothing moved."""
    from safnet_ros.data.synth.generate import SynthConfig, generate_scene

    def make(frames: int, seed: int):
        root = tmp_path_factory.mktemp("loop_scene")
        cfg = SynthConfig(frames=frames, color_size=(320, 240), depth_size=(160, 120), vertex_spacing=0.1,
                          invalid_poses=0.0, moved_objects=0.0, trajectory="loop", progress=False)
        return root / generate_scene(root, seed=seed, index=0, cfg=cfg)["name"]

    return make


class RosSession:
    """A private rclpy context and executor for one test (see the ``ros_session`` fixture)."""

    def __init__(self):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list = []

    def add(self, node):
        """Spin ``node`` on the executor and destroy it at teardown; returns it."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        for node in self._nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def ros_session():
    """A private rclpy context with an executor; nodes given to ``add`` are destroyed at teardown,
    then the context is shut down (whatever the test raised)."""
    session = RosSession()
    yield session
    session.close()
