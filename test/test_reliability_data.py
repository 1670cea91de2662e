"""Reliability of the core (no rclpy): model and device faults, out-of-memory retries, the soak's arithmetic.

Issue 7, item 4 (model and device) and the parts of item 7 (soak) that need no
DDS. Data-tool faults (item 5) are covered by test_data_*; docs/reliability.md
maps every behaviour to its test.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.engine.inference import Segmenter, is_out_of_memory, resolve_device
from safnet_ros.errors import ModelLoadError, SafnetError


def tiny_model(preset: str = "lite"):
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model

    torch.manual_seed(7)
    config = SafnetConfig.preset(preset, pn_npoints=(256, 64, 16, 4), k=8)
    return build_model(config).eval(), config


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory) -> Path:
    from safnet_ros.model.safnet import save_checkpoint

    model, config = tiny_model("lite")
    path = tmp_path_factory.mktemp("ckpt") / "tiny_lite.pt"
    save_checkpoint(path, model, config)
    return path


def room_points(n: int = 3000, seed: int = 0) -> np.ndarray:
    """(n, 3) metres on a 3 x 3 m floor and two walls."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0, 0], [3, 3, 2.5], (n, 3)).astype(np.float32)
    face = rng.integers(0, 3, n)
    pts[face == 0, 2] = 0.0
    pts[face == 1, 0] = 0.0
    pts[face == 2, 1] = 3.0
    return pts


# ----------------------------------------------------------------------------- model files
def test_checkpoint_of_another_preset_is_refused_naming_file_and_presets(lite_checkpoint):
    with pytest.raises(ModelLoadError) as info:
        Segmenter.from_checkpoint(lite_checkpoint, device="cpu", preset="paper")
    text = str(info.value)
    assert str(lite_checkpoint) in text and "'lite'" in text and "'paper'" in text
    # the matching preset loads
    assert Segmenter.from_checkpoint(lite_checkpoint, device="cpu", preset="lite").config.preset_name == "lite"


def test_truncated_checkpoint_is_a_model_load_error_naming_the_file(lite_checkpoint, tmp_path):
    cut = tmp_path / "cut.pt"
    data = lite_checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(cut)):
        Segmenter.from_checkpoint(cut, device="cpu")


# ----------------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_falls_back_to_cpu_with_a_warning(caplog, lite_checkpoint):
    with caplog.at_level(logging.WARNING, logger="safnet_ros.inference"):
        assert resolve_device("cuda") == torch.device("cpu")
        assert resolve_device("cuda:1") == torch.device("cpu")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "CUDA is not available" in warnings[0].getMessage()
    seg = Segmenter.from_checkpoint(lite_checkpoint, device="cuda")
    assert seg.device == torch.device("cpu") and next(seg.model.parameters()).device.type == "cpu"


# ----------------------------------------------------------------------------- out of memory
class FakeOom:
    """Wraps a model's forward: raises an out-of-memory error when a chunk has more than ``limit`` points."""

    def __init__(self, model: torch.nn.Module, limit: int, error: type[BaseException] = torch.cuda.OutOfMemoryError,
                 message: str = "CUDA out of memory. Tried to allocate 2.00 GiB (fake)"):
        self.forward = model.forward
        self.limit = limit
        self.error = error
        self.message = message
        self.sizes: list[int] = []  # points per call that went through
        self.refused: list[int] = []

    def __call__(self, batch, *args, **kwargs):
        n = int(batch.points.shape[1])
        if n > self.limit:
            self.refused.append(n)
            raise self.error(self.message)
        self.sizes.append(n)
        return self.forward(batch, *args, **kwargs)


def oom_segmenter(limit: int, **kwargs) -> tuple[Segmenter, FakeOom]:
    model, config = tiny_model()
    seg = Segmenter(model, config, "cpu", num_views=0, chunk_size=8.0, chunk_stride=8.0, **kwargs)
    fake = FakeOom(seg.model, limit)
    seg.model.forward = fake  # nn.Module.__call__ looks the instance attribute up first
    return seg, fake


def test_out_of_memory_retries_the_chunk_in_smaller_parts(caplog):
    points = room_points(3000)
    seg, fake = oom_segmenter(limit=1000, max_chunk_points=30000, min_oom_chunk_points=200)
    with caplog.at_level(logging.WARNING, logger="safnet_ros.inference"):
        result = seg.segment(points)
    # 3000 -> 1500 -> 750: two halvings, every point labelled exactly through forwards that fit
    assert fake.refused[:2] == [3000, 1500]
    assert result.oom_retries == len(fake.refused) >= 2
    assert seg.max_chunk_points == 750
    assert max(fake.sizes) <= 1000 and sum(fake.sizes) == len(points)
    assert result.segmented.all() and (result.labels != IGNORE_INDEX).all()
    assert np.all(result.confidence > 0)
    assert any("out of memory" in w for w in result.warnings)
    assert any("out of memory" in r.getMessage() for r in caplog.records)
    # the lowered chunk size sticks: the next cloud needs no retry
    again = seg.segment(points)
    assert again.oom_retries == 0 and again.segmented.all()


def test_runtime_error_saying_out_of_memory_is_retried_too():
    seg, fake = oom_segmenter(limit=1600, max_chunk_points=30000, min_oom_chunk_points=100)
    fake.error, fake.message = RuntimeError, "CUDA error: out of memory"
    result = seg.segment(room_points(3000))
    assert result.oom_retries == 1 and result.segmented.all() and max(fake.sizes) <= 1500


def test_out_of_memory_below_the_floor_is_a_safnet_error():
    seg, fake = oom_segmenter(limit=100, max_chunk_points=30000, min_oom_chunk_points=500)
    with pytest.raises(SafnetError, match=r"out of memory .* min_oom_chunk_points=500"):
        seg.segment(room_points(3000))


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory():
    seg, fake = oom_segmenter(limit=10)
    fake.error, fake.message = RuntimeError, "shape mismatch"
    with pytest.raises(RuntimeError, match="shape mismatch"):
        seg.segment(room_points(500))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and not is_out_of_memory(ValueError("out of memory"))


# ----------------------------------------------------------------------------- soak arithmetic
def test_rss_slope_uses_the_second_half_only():
    from safnet_ros.tools.soak import read_rss_mib, rss_slope_mib_per_min

    t = [float(s) for s in range(0, 121, 2)]
    warmup_then_flat = [100.0 + min(s, 60.0) for s in t]  # +60 MiB in the first minute, flat afterwards
    assert rss_slope_mib_per_min(t, warmup_then_flat) == pytest.approx(0.0, abs=1e-9)
    leak = [100.0 + 0.5 * s for s in t]  # 0.5 MiB/s = 30 MiB/min
    assert rss_slope_mib_per_min(t, leak) == pytest.approx(30.0)
    assert np.isnan(rss_slope_mib_per_min([0.0], [1.0]))
    assert 1.0 < read_rss_mib() < 1e6


def test_growing_share_ignores_allocator_steps_and_catches_a_leak():
    from safnet_ros.tools.soak import growing_share

    t = [float(s) for s in range(0, 61)]
    steps = [800.0 + 64.1 * (s >= 47) + 2.4 * (s >= 35) + 23.0 * (s >= 54) for s in t]  # CI's +64 MiB and others
    assert growing_share(t, steps) == pytest.approx(3 / 30)
    leak = [800.0 + 0.7 * s for s in t]  # 0.1 MiB per cloud at 7 clouds/s
    assert growing_share(t, leak) == 1.0
    assert np.isnan(growing_share([0.0, 60.0], [1.0, 2.0]))


@pytest.mark.ros
@pytest.mark.slow
def test_one_minute_soak_loops_the_bag_with_flat_memory(tmp_path):
    """The CI version of ``safnet bench soak``: a synthetic bag looped at 10 Hz through the real node for 60 s.

    Run as users run it, in a fresh process: inside pytest the RSS would carry
    the rest of the suite's allocations and say nothing about the node.
    """
    import json
    import subprocess
    import sys

    from safnet_ros.tools.soak import growing_share

    pytest.importorskip("rclpy")
    proc = subprocess.run(
        [sys.executable, "-m", "safnet_ros.cli", "bench", "soak", "--minutes", "1", "--sample-period", "1",
         "--json", "--out", str(tmp_path), "--map-max-voxels", "3000"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    c = report["counters"]
    assert c["clouds_segmented"] > 0 and c["worker_errors"] == 0 and c["decode_errors"] == 0
    assert report["bag_loops"] >= 2 and c["time_jumps"] >= 1  # every loop jumps back; the node clears and goes on
    # every cloud received is accounted for: segmented, dropped (newest wins), skipped for TF, or still in flight
    assert c["clouds_segmented"] + c["clouds_dropped"] <= c["clouds_received"]
    assert c["clouds_received"] <= c["clouds_segmented"] + c["clouds_dropped"] + c["tf_failures"] + 2
    assert report["latency_count"] > 0 and 0 < report["latency_p50_s"] <= report["latency_p99_s"]
    # the semantic map is on: every segmented cloud fused, bounded by max_voxels, cleared at each loop
    assert report["map_clouds_integrated"] >= c["clouds_segmented"] - 1 and report["map_max_voxels"] == 3000
    assert 0 < report["map_peak_voxels"] <= 3000 and report["map_voxels_sampled_max"] <= 3000
    assert report["map_clears"] >= c["time_jumps"] >= 1
    samples = report["samples"]
    assert len(samples) >= 50
    # 60 s is too short for a slope: allocator warm-up comes in steps of 2-60 MiB
    # (CI once saw +64 MiB at once in the last half minute). A leak grows in nearly
    # every 1 s interval, steps in a few: fewer than half of the second half's
    # intervals may grow by more than 0.25 MiB (a leak of 0.1 MiB per cloud, ~7
    # clouds/s, grows in all), and the whole second half less than 160 MiB. The
    # 10-minute soak's slope (docs/benchmarks.md) is the figure of record.
    times, rss = [t for t, _ in samples], [m for _, m in samples]
    share = growing_share(times, rss)
    assert share < 0.5, (share, samples[::3])
    mid = [m for t, m in samples if t >= times[-1] / 2][0]
    assert rss[-1] - mid <= 160.0, (rss[-1] - mid, samples[::3])
