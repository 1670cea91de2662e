"""``safnet bench map``: semantic map update time per cloud and the map's memory.

A sensor walks through a synthetic 20 x 12 x 3 m building (floor, ceiling, a
wall grid every 4 m, boxes); every step it sees ``--points`` points (default
25 000, the node's benchmark cloud) on the surfaces within 5 m, each with a
20-class probability vector (softmax of noisy logits around the surface's
class). Each row fuses ``--clouds`` such clouds into a fresh
:class:`~safnet_ros.mapping.SemanticVoxelMap` and reports the update time per
cloud (mean, median, p95, max, ms; the first ``--warmup`` clouds are not
timed), the voxels at the end and the map's arrays (MiB). One row per fusion
rule, plus one with a ``max_voxels`` small enough that every cloud evicts
(the bounded-memory regime of a long run). Target: <= 15 ms per 25k-point
cloud on one CPU core. ``read ms`` is one full read-out of the final map (a
snapshot: labels and confidence of every voxel, what each ~/semantic_map
message and save costs) with the default neighbourhood smoothing, ``raw`` the
same with smoothing 0, and ``locked`` how long the node's map lock is held
for one such read (:meth:`SemanticVoxelMap.snapshot_outside` copies the
evidence under it and smooths outside it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

import numpy as np
from tqdm import tqdm

from safnet_ros.errors import ConfigError
from safnet_ros.mapping import SemanticVoxelMap
from safnet_ros.validation import MAX_COUNT, float_range, int_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int_range(1, MAX_COUNT), default=25_000,
                        help="points per cloud (default 25000)")
    parser.add_argument("--clouds", type=int_range(1, MAX_COUNT), default=60, help="clouds fused per row (default 60)")
    parser.add_argument("--warmup", type=int_range(0, MAX_COUNT), default=3, help="untimed clouds first (default 3)")
    parser.add_argument("--voxel-size", type=float_range(0.001, 10.0), default=0.04,
                        help="voxel edge, metres, 0.001..10 (default 0.04)")
    parser.add_argument("--max-voxels", type=int_range(1, MAX_COUNT), default=500_000,
                        help="max_voxels of the normal rows")
    parser.add_argument("--evict-max-voxels", type=int_range(1, MAX_COUNT), default=60_000,
                        help="max_voxels of the eviction row (default 60000: every cloud evicts)")
    parser.add_argument("--smoothing", type=float_range(0.0, 100.0), default=None,
                        help="read-out smoothing weight, 0..100 (default: the map's, 1.0)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="random seed, 0..2^32-1 (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


class SyntheticWalk:
    """Clouds of a sensor walking through a synthetic building: (points (N, 3) m, probs (N, 20), origin (3,))."""

    def __init__(self, points: int, seed: int = 0, num_classes: int = 20):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.points = int(points)
        self.num_classes = num_classes
        # a dense pool of surface points with their class, sampled once
        n = 1_500_000
        kind = rng.integers(0, 4, n)
        p = rng.uniform([0, 0, 0], [20, 12, 3], (n, 3))
        p[kind == 0, 2] = 0.0  # floor
        p[kind == 1, 2] = 3.0  # ceiling
        walls_x = kind == 2
        p[walls_x, 0] = np.round(p[walls_x, 0] / 4.0) * 4.0
        walls_y = kind == 3
        p[walls_y, 1] = np.round(p[walls_y, 1] / 4.0) * 4.0
        cls = np.select([kind == 0, kind == 1], [1, 0], default=0)
        cls = np.where((kind >= 2) & (p[:, 2] < 1.0) & ((p[:, 0] + p[:, 1]) % 3 < 1), 2 + (kind % 5), cls)
        self.pool, self.pool_cls = p.astype(np.float32), cls
        self.step = 0

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.step * 0.25
        self.step += 1
        origin = np.array([2 + (t % 16), 2 + 8 * abs(np.sin(t / 7.0)), 1.2])
        near = np.flatnonzero(np.linalg.norm(self.pool - origin.astype(np.float32), axis=1) < 5.0)
        pick = self.rng.choice(near, self.points, replace=len(near) < self.points)
        pts = self.pool[pick] + self.rng.normal(0, 0.005, (self.points, 3)).astype(np.float32)
        logits = self.rng.normal(0, 1.0, (self.points, self.num_classes)).astype(np.float32)
        logits[np.arange(self.points), self.pool_cls[pick]] += 2.5
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return pts, e / e.sum(axis=1, keepdims=True), origin


def read_ms(vmap, smoothing: float) -> float:
    """Milliseconds of one full read-out (snapshot) of ``vmap`` with this smoothing weight (cache bypassed)."""
    keep = vmap.smoothing
    vmap.smoothing = smoothing
    vmap.forget_readout()  # time the computation, not the cache
    t0 = time.perf_counter()
    vmap.snapshot()
    dt = (time.perf_counter() - t0) * 1000.0
    vmap.smoothing = keep
    return dt


class TimedLock:
    """A lock that adds up how long it was held, seconds (``held``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0.0
        self._t0 = 0.0

    def __enter__(self) -> "TimedLock":
        self._lock.acquire()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.held += time.perf_counter() - self._t0
        self._lock.release()


def locked_ms(vmap) -> float:
    """Milliseconds the map's lock is held for one read-out by :meth:`snapshot_outside` (cache bypassed)."""
    vmap.forget_readout()
    lock = TimedLock()
    vmap.snapshot_outside(lock)
    return lock.held * 1000.0


def bench_row(name: str, fusion: str, voxel_size: float, max_voxels: int, clouds: list, warmup: int,
              smoothing: float | None = None) -> dict:
    vmap = SemanticVoxelMap(voxel_size=voxel_size, max_voxels=max_voxels, fusion=fusion,
                            **({} if smoothing is None else {"smoothing": smoothing}))
    times, cpu, peak = [], [], 0
    for i, (pts, probs, origin) in enumerate(clouds):
        c0 = time.process_time()
        stats = vmap.integrate(pts, probs, sensor_origin=origin)
        c1 = time.process_time()
        peak = max(peak, len(vmap))
        if i >= warmup:
            times.append(stats.seconds * 1000.0)
            cpu.append((c1 - c0) * 1000.0)
    times_sorted = sorted(times)
    return {
        "row": name, "fusion": fusion, "voxel_size": voxel_size, "max_voxels": max_voxels,
        "points": int(len(clouds[0][0])), "clouds_timed": len(times),
        "mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
        "p95_ms": times_sorted[int(0.95 * (len(times_sorted) - 1))], "max_ms": times_sorted[-1],
        "cpu_mean_ms": statistics.fmean(cpu), "voxels": len(vmap), "peak_voxels": peak,
        "evicted": vmap.voxels_evicted, "map_mib": vmap.nbytes / 2 ** 20,
        "smoothing": vmap.smoothing, "read_ms": read_ms(vmap, vmap.smoothing), "read_raw_ms": read_ms(vmap, 0.0),
        "locked_ms": locked_ms(vmap),
    }


def run(args: argparse.Namespace) -> int:
    if args.points < 1 or args.clouds < 1 or args.warmup < 0 or args.clouds <= args.warmup:
        raise ConfigError("--points and --clouds must be >= 1, --warmup >= 0 and below --clouds")
    walk = SyntheticWalk(args.points, seed=args.seed)
    clouds = [walk.next() for _ in tqdm(range(args.clouds), desc="synthetic clouds", leave=False)]
    rows = [
        bench_row("count", "count", args.voxel_size, args.max_voxels, clouds, args.warmup, args.smoothing),
        bench_row("log", "log", args.voxel_size, args.max_voxels, clouds, args.warmup, args.smoothing),
        bench_row("count, evicting", "count", args.voxel_size, args.evict_max_voxels, clouds, args.warmup,
                  args.smoothing),
    ]
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "numpy": np.__version__}
    if args.json:
        print(json.dumps({"rows": rows, **info}))
        return 0
    print(f"semantic map update, {args.points} points per cloud, {args.clouds - args.warmup} timed clouds, "
          f"voxel {args.voxel_size} m, read-out smoothing {rows[0]['smoothing']:g}; {info['cpus']} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in info['load_average'])}, numpy {np.__version__}")
    head = f"{'row':<17} {'max_voxels':>10} {'mean ms':>8} {'median':>7} {'p95':>7} {'max':>7} {'cpu ms':>7} " \
           f"{'voxels':>8} {'evicted':>8} {'MiB':>6} {'read ms':>8} {'raw':>6} {'locked':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['row']:<17} {r['max_voxels']:>10} {r['mean_ms']:>8.2f} {r['median_ms']:>7.2f} {r['p95_ms']:>7.2f} "
              f"{r['max_ms']:>7.2f} {r['cpu_mean_ms']:>7.2f} {r['voxels']:>8} {r['evicted']:>8} {r['map_mib']:>6.1f} "
              f"{r['read_ms']:>8.1f} {r['read_raw_ms']:>6.1f} {r['locked_ms']:>7.1f}")
    return 0
