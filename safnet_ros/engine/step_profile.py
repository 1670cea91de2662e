"""Where a training step's time goes (``train.profile: true``): data, forward (per model stage), backward, optimizer.

The trainer wraps each part of a step in :meth:`StepProfile.phase`; the forward
also records the model's own stages (:mod:`safnet_ros.model.stages`). On CUDA
every boundary synchronises the device, so the figures are kernel times. What a
run prints and writes: docs/training.md ("Where a step's time goes").
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from safnet_ros.model.stages import record_stages

__all__ = ["PHASES", "StepProfile"]

#: The parts of a step, in order: waiting for the loader's batch (and moving it to the
#: device), the forward with the loss, the backward, the optimizer step.
PHASES: tuple[str, ...] = ("data", "forward", "backward", "optimizer")


class StepProfile:
    """Seconds per phase and per model stage, summed over the steps recorded."""

    def __init__(self, device: torch.device):
        self.sync_cuda = device.type == "cuda"
        self.phases: dict[str, float] = {p: 0.0 for p in PHASES}
        self.stages: dict[str, float] = {}
        self.steps = 0
        self.chunks = 0

    def _now(self) -> float:
        if self.sync_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase of the current step; the forward also records the model's stages."""
        start = self._now()
        if name == "forward":
            with record_stages(self.sync_cuda) as times:
                yield
            for stage, seconds in times.seconds.items():
                self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        else:
            yield
        self.phases[name] += self._now() - start

    def end_step(self, chunks: int) -> None:
        """Count one finished step of ``chunks`` training samples (chunks or image crops)."""
        self.steps += 1
        self.chunks += int(chunks)

    def to_dict(self) -> dict[str, Any]:
        """Totals, per-step milliseconds and throughput (chunks per second of stepping)."""
        total = sum(self.phases.values())
        per_step = {k: 1000.0 * v / max(1, self.steps) for k, v in self.phases.items()}
        stages = {k: 1000.0 * v / max(1, self.steps) for k, v in self.stages.items()}
        stages["forward, the rest"] = per_step["forward"] - sum(stages.values())
        return {"steps": self.steps, "chunks": self.chunks, "seconds": total,
                "chunks_per_s": self.chunks / total if total > 0 else 0.0,
                "ms_per_step": per_step, "forward_stages_ms_per_step": stages}

    def table(self) -> str:
        """The profile as a few lines of text (ms per step, share of the step)."""
        d = self.to_dict()
        step_ms = 1000.0 * d["seconds"] / max(1, d["steps"])
        lines = [f"step profile: {d['steps']} steps, {d['chunks']} chunks, {d['chunks_per_s']:.2f} chunks/s, "
                 f"{step_ms:.0f} ms per step"]
        for name, ms in d["ms_per_step"].items():
            lines.append(f"  {name:<22} {ms:9.1f} ms  {100.0 * ms / step_ms if step_ms else 0.0:5.1f} %")
            if name == "forward":
                for stage, sms in sorted(d["forward_stages_ms_per_step"].items(), key=lambda kv: -kv[1]):
                    lines.append(f"    {stage:<20} {sms:9.1f} ms")
        return "\n".join(lines)
