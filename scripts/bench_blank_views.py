#!/usr/bin/env python3
"""Time one stage-3d training step with and without the 2D net's blank-slot skip.

    OMP_NUM_THREADS=1 python scripts/bench_blank_views.py --data PRE [--model CKPT] [--views 5 --min-views 1]

Chunks of 8192 points from PRE's training scenes with ``--views`` slots whose
real view counts are drawn from ``--min-views..--views`` (as ``chunks.min_views``
trains), batches of 2, the model in training mode (frozen 2D net with its tail
fine-tuned, as stage 3d runs it). Each step is a forward and a backward. "skip"
is the model as it is (the 2D net runs only on slots with back-projected
pixels); "all slots" forces every slot through the 2D net. Prints a table of
seconds per step, two interleaved rounds each.
"""
from __future__ import annotations

import argparse
import time

import torch

from safnet_ros.data.dataset import ChunkDataset, collate_chunks, list_scenes
from safnet_ros.model.safnet import SafnetModel, load_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="preprocessed scenes (safnet data preprocess)")
    ap.add_argument("--model", default="models/safnet_lite_synth.pt")
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--min-views", type=int, default=1)
    ap.add_argument("--batches", type=int, default=6)
    args = ap.parse_args()

    scenes = list_scenes(args.data, "train")
    ds = ChunkDataset(scenes, num_points=8192, num_views=args.views, min_views=args.min_views,
                      chunks_per_scene=max(1, (2 * args.batches) // len(scenes) + 1), seed=3)
    model = load_checkpoint(args.model)[0]
    model.train()
    batches = [collate_chunks([ds[2 * i], ds[2 * i + 1]]) for i in range(args.batches)]
    real = [info["views"] for _b, infos in batches for info in infos]
    skip = SafnetModel.__dict__["views_with_pixels"]
    every = staticmethod(lambda q_mask, q_pixel, v, hw: torch.ones(q_mask.shape[0], v, dtype=torch.bool))

    def round_seconds() -> float:
        t0 = time.perf_counter()
        for batch, _infos in batches:
            out = model(batch)
            out.logits.float().sum().backward()
            model.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / len(batches)

    times: dict[str, list[float]] = {"skip": [], "all slots": []}
    try:
        for _ in range(2):
            for name, fn in (("skip", skip), ("all slots", every)):
                SafnetModel.views_with_pixels = fn
                times[name].append(round_seconds())
    finally:
        SafnetModel.views_with_pixels = skip
    print(f"{len(batches)} batches of 2 chunks x 8192 points, {args.views} slots, real views per chunk "
          f"{sum(real) / len(real):.1f} on average ({min(real)}-{max(real)}), torch threads {torch.get_num_threads()}")
    print("| 2D net on | s / step (two rounds) |")
    print("|---|---|")
    for name, vals in times.items():
        print(f"| {name} | " + " / ".join(f"{v:.2f}" for v in vals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
