"""Time per stage of a forward pass, for ``safnet bench model --profile``.

The model marks its stages with ``with stage("fps"): ...``. Outside
:func:`record_stages` that is a no-op (one global lookup). Inside it, every stage
accumulates its *exclusive* wall time: time spent in a stage nested inside another
(e.g. the neighbour search inside a PointNet++ level) counts for the inner stage
only, so the stages add up to at most the forward's time and "the rest" is what
no stage covers. On CUDA each boundary synchronises the device (profiling only),
so the times are those of the kernels, not of their launches. The stage names
are :data:`STAGES` (``neighbours``: kNN, ball query and 3-NN of every module;
``fusion``: channel attention and the head).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

__all__ = ["STAGES", "StageTimes", "stage", "record_stages"]

#: The stages the model marks, in the order a forward runs them.
STAGES: tuple[str, ...] = ("2d_net", "fps", "neighbours", "sa_mlp", "fp_mlp", "aggregate", "gsm", "csm", "fusion")


class StageTimes:
    """Exclusive seconds per stage name, summed over the stages entered while recording."""

    def __init__(self, sync_cuda: bool = False):
        self.seconds: dict[str, float] = {}
        self.sync_cuda = bool(sync_cuda)
        self._stack: list[list] = []  # [name, start, seconds spent in nested stages]

    def _now(self) -> float:
        if self.sync_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def enter(self, name: str) -> None:
        self._stack.append([name, self._now(), 0.0])

    def leave(self) -> None:
        name, start, nested = self._stack.pop()
        elapsed = self._now() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - nested
        if self._stack:
            self._stack[-1][2] += elapsed


_ACTIVE: Optional[StageTimes] = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a stage of the forward (see module docstring); a no-op unless recording."""
    times = _ACTIVE
    if times is None:
        yield
        return
    times.enter(name)
    try:
        yield
    finally:
        times.leave()


@contextmanager
def record_stages(sync_cuda: bool = False) -> Iterator[StageTimes]:
    """Record the stage times of everything run inside the block (not thread-safe:
    for benchmarks, one recording at a time)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, StageTimes(sync_cuda)
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = previous
