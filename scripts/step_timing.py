#!/usr/bin/env python3
"""Time the parts of each training step of any checkout: ``safnet ARGS`` with timers around them.

    OMP_NUM_THREADS=1 PYTHONPATH=CHECKOUT python scripts/step_timing.py train CHECKOUT/config/train_synth_3d.yaml \
        --no-progress --set data.root=PRE --set init_2d=CKPT --set train.epochs=1 \
        --set train.max_steps_per_epoch=36 --set train.batch_size=2 --set chunks.num_points=4096 \
        --set chunks.views=3 --set train.num_workers=0 --set train.val_every=100 --set out=/tmp/step_timing

Runs the ``safnet`` command of whatever ``safnet_ros`` is first on ``PYTHONPATH``
with wall-clock timers around the model's training forward
(``SafnetModel.forward`` in train mode), ``Tensor.backward`` and the data
loader's ``__next__`` (with ``train.num_workers=0`` that is the loading and
augmentation itself), and prints their means over the steps after the first
two, and the mean numbers of points and valid back-projected pixels (Q) per
batch (equal means: the two checkouts trained on the same chunks). Unlike
``train.profile`` it needs nothing from the checkout, so older code can be
timed the same way, side by side (docs/benchmarks.md, "Training step").
"""
from __future__ import annotations

import atexit
import statistics
import sys
import time
from typing import Any

import torch
from torch.utils.data import dataloader

from safnet_ros.cli import main as safnet_main
from safnet_ros.model import safnet

SKIP = 2  # warm-up steps left out of the means
TIMES: dict[str, list[float]] = {"forward": [], "backward": [], "data": [], "q": [], "points": []}


def _timed_forward(original: Any) -> Any:
    def forward(self: Any, batch: Any) -> Any:
        if not self.training:
            return original(self, batch)
        TIMES["q"].append(float(batch.q_mask.sum()))
        TIMES["points"].append(float(torch.isfinite(batch.points).all(-1).sum()))
        start = time.perf_counter()
        out = original(self, batch)
        TIMES["forward"].append(time.perf_counter() - start)
        return out
    return forward


def _timed(original: Any, key: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = original(*args, **kwargs)
        TIMES[key].append(time.perf_counter() - start)
        return out
    return call


def report() -> None:
    steps = len(TIMES["forward"])
    if steps <= SKIP:
        return
    ms = {key: 1000 * statistics.mean(TIMES[key][SKIP:steps]) for key in ("forward", "backward", "data")}
    print(f"step timing over steps {SKIP + 1}..{steps}: data {ms['data']:.0f} ms, forward {ms['forward']:.0f} ms, "
          f"backward {ms['backward']:.0f} ms, sum {sum(ms.values()):.0f} ms; per batch: "
          f"{statistics.mean(TIMES['points']):.0f} points, {statistics.mean(TIMES['q']):.0f} valid Q",
          file=sys.stderr)


if __name__ == "__main__":
    safnet.SafnetModel.forward = _timed_forward(safnet.SafnetModel.forward)
    torch.Tensor.backward = _timed(torch.Tensor.backward, "backward")
    dataloader._BaseDataLoaderIter.__next__ = _timed(dataloader._BaseDataLoaderIter.__next__, "data")
    atexit.register(report)
    sys.exit(safnet_main(sys.argv[1:]))
