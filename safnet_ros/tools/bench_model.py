"""``safnet bench model``: forward latency and peak memory of SAFNet vs PointNet++ (docs/benchmarks.md).

For every preset x points x views x ``--precision`` it times the full model's
forward pass (eval mode, ``torch.inference_mode``, both models under the same
``torch.autocast``) on :func:`synthetic_bench_batch`, and the PointNet++
baseline of the same preset on the same points: the median wall time of
``--repeats`` runs after ``--warmup`` (synchronised on CUDA), the median
process CPU time (with ``--threads 1``, the latency on an idle core: other
processes inflate wall times on a shared machine) and the peak memory of
activations and workspace (:func:`_measure`).  ``--profile`` adds the median
time of each stage of the forward (:mod:`safnet_ros.model.stages`).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import torch

from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
from safnet_ros.engine.inference import PRECISIONS, autocast_context, check_precision
from safnet_ros.errors import ConfigError
from safnet_ros.geometry import neighbors
from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.safnet import build_model
from safnet_ros.model.stages import STAGES, record_stages
from safnet_ros.validation import int_list, int_range

__all__ = ["add_arguments", "run", "benchmark", "synthetic_bench_batch"]


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _precision_list(text: str) -> list[str]:
    names = [n.lower() for n in _name_list(text)]
    bad = [n for n in names if n not in PRECISIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)}: not one of {', '.join(PRECISIONS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", type=_name_list, default=["paper", "lite"], help="comma-separated presets")
    parser.add_argument("--points", type=int_list(1, 2_000_000), default=[8000, 25000],
                        help="points per chunk, comma-separated")
    parser.add_argument("--views", type=int_list(1, 64), default=[1, 3, 5], help="views per chunk, comma-separated")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int_range(1, 10_000), default=5, help="timed runs per row (median reported)")
    parser.add_argument("--warmup", type=int_range(0, 10_000), default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int_range(1, 1024), default=2, help="torch CPU threads")
    parser.add_argument("--width", type=int_range(16, 4096), default=160, help="image width (16..4096)")
    parser.add_argument("--height", type=int_range(16, 4096), default=120, help="image height (16..4096)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--precision", type=_precision_list, default=["fp32"],
                        help=f"comma-separated precisions to time every row at: {' | '.join(PRECISIONS)} "
                             "(default fp32; fp16 on CUDA only)")
    parser.add_argument("--profile", action="store_true",
                        help="also print the time per stage of each forward (2D net, FPS, neighbour search, "
                             "SA MLPs, GSM, CSM, fusion, the rest)")


# ---------------------------------------------------------------------- input
def synthetic_bench_batch(num_points: int, num_views: int, height: int, width: int, device: Any, seed: int = 0):
    """A :class:`ChunkBatch` (B = 1) of ``num_points`` points and ``num_views`` fully valid views.

    P sampled on a floor, two walls and a box inside a 1.5 x 1.5 m chunk, Q (M = V * H * W
    back-projected pixels) on the same surfaces with 5 mm noise; labels are irrelevant here.
    """
    g = torch.Generator().manual_seed(seed)

    def on_surfaces(n: int) -> "torch.Tensor":
        u = torch.rand(n, 3, generator=g)
        which = torch.randint(0, 4, (n,), generator=g)
        pts = torch.empty(n, 3)
        pts[:, 0] = u[:, 0] * 1.5 - 0.75
        pts[:, 1] = u[:, 1] * 1.5 - 0.75
        pts[:, 2] = u[:, 2] * 2.5
        pts[which == 0, 2] = 0.0  # floor
        pts[which == 1, 0] = -0.75  # wall x
        pts[which == 2, 1] = -0.75  # wall y
        box = which == 3  # box top at 0.5 m over [-0.2, 0.3]^2
        pts[box, 0] = u[box, 0] * 0.5 - 0.2
        pts[box, 1] = u[box, 1] * 0.5 - 0.2
        pts[box, 2] = 0.5
        return pts

    m = num_views * height * width
    points = on_surfaces(num_points)
    q = on_surfaces(m) + 0.005 * torch.randn(m, 3, generator=g)
    batch = ChunkBatch(
        points=points[None],
        images=torch.randn(1, num_views, 3, height, width, generator=g),
        q_points=q[None],
        q_mask=torch.ones(1, m, dtype=torch.bool),
        q_pixel=torch.randperm(m, generator=g)[None],
    )
    return batch.to(device)


# ---------------------------------------------------------------------- measuring
def proc_status_kb(key: str) -> float:
    """A ``kB`` field of /proc/self/status (NaN where the file or the field is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((float(line.split()[1]) for line in f if line.startswith(key + ":")), float("nan"))
    except OSError:
        return float("nan")


def _max_rss() -> int:
    """The process's lifetime peak resident set, bytes (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _CpuPeak:
    """Peak RSS growth (bytes) of this process around a block of work.

    Freed heap memory is first returned to the OS (glibc ``malloc_trim``: memory of
    earlier rows is neither this row's floor nor reused invisibly), then Linux
    ``VmHWM`` is reset (``5`` into /proc/self/clear_refs) and read after the work,
    minus the RSS at the start.  Where that is unavailable, ``ru_maxrss`` (a
    lifetime peak, so later rows may read 0).
    """

    def start(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base, self.proc = proc_status_kb("VmRSS") * 1024, True
        except OSError:
            self.base, self.proc = _max_rss(), False

    def stop(self) -> int:
        return max(0, (proc_status_kb("VmHWM") * 1024 if self.proc else _max_rss()) - self.base)


def _measure(fn: Callable[[], Any], device: Any, repeats: int, warmup: int) -> tuple[float, int, float]:
    """(median wall ms, peak bytes, median process CPU ms) of ``fn``.

    Peak bytes over the warm-up and timed runs (the weights and the input are allocated before): on CUDA
    ``torch.cuda.max_memory_allocated`` minus the memory allocated before, on the CPU :class:`_CpuPeak`.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        peak = _CpuPeak()
        peak.start()
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu_times.append((time.process_time() - c0) * 1000.0)
    used = (torch.cuda.max_memory_allocated() - before) if cuda else peak.stop()
    return statistics.median(times), int(used), statistics.median(cpu_times)


def _profile(fn: Callable[[], Any], device: Any, repeats: int) -> dict[str, float]:
    """Median milliseconds per stage of ``fn`` over ``repeats`` runs (``rest``: what no stage
    covers; ``total``: the whole run, synchronised on CUDA at every stage boundary)."""
    cuda = device.type == "cuda"
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        with record_stages(sync_cuda=cuda) as times:
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
        row = {name: times.seconds.get(name, 0.0) for name in STAGES}
        row["rest"] = total - sum(row.values())
        row["total"] = total
        runs.append(row)
    return {name: round(1000.0 * statistics.median(r[name] for r in runs), 1) for name in runs[0]}


def benchmark(presets: Sequence[str], points: Sequence[int], views: Sequence[int], device: str = "auto",
              repeats: int = 5, warmup: int = 1, height: int = 120, width: int = 160,
              threads: int = 2, profile: bool = False, precisions: Sequence[str] = ("fp32",)) -> dict[str, Any]:
    """Run the grid; returns ``{"machine": {...}, "rows": [...]}`` (one row per preset x points x views x
    precision).  Counts are in the CLI's ranges (argparse checks them)."""
    malloc_tuned = tune_cpu_allocator()  # what the CLI, the node and Segmenter run with
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device")
    dev = torch.device(device)
    torch.set_num_threads(max(1, threads))
    resolved = list(dict.fromkeys(check_precision(p, dev) for p in precisions))  # ConfigError on a bad one
    configs = {name: SafnetConfig.preset(name) for name in presets}  # ConfigError on a bad name
    rows: list[dict[str, Any]] = []
    for name, cfg in configs.items():
        model = build_model(cfg).to(dev).eval()
        baseline = build_model(SafnetConfig.preset(name, variant="pointnet2")).to(dev).eval()
        for n in points:
            pn_by_precision: dict[str, tuple[float, int, float]] = {}  # PointNet++ ignores the views
            for v, precision in ((v, p) for v in views for p in resolved):
                batch = synthetic_bench_batch(n, v, height, width, dev)
                with torch.inference_mode(), autocast_context(precision, dev):
                    if precision not in pn_by_precision:
                        pn_by_precision[precision] = _measure(lambda b=batch, m=baseline: m(b), dev, repeats, warmup)
                    pn_ms, pn_mem, pn_cpu = pn_by_precision[precision]
                    ms, mem, cpu = _measure(lambda b=batch, m=model: m(b), dev, repeats, warmup)
                    stages = {}
                    if profile:
                        stages = {"safnet_stages_ms": _profile(lambda b=batch, m=model: m(b), dev, repeats),
                                  "pointnet2_stages_ms": _profile(lambda b=batch, m=baseline: m(b), dev, repeats)}
                rows.append({
                    "preset": name, "points": n, "views": v, "precision": precision, "q_points": v * height * width,
                    "safnet_ms": round(ms, 1), "pointnet2_ms": round(pn_ms, 1),
                    "ratio": round(ms / pn_ms, 2) if pn_ms else None,
                    "safnet_peak_mb": round(mem / 2**20, 1), "pointnet2_peak_mb": round(pn_mem / 2**20, 1),
                    "safnet_cpu_ms": round(cpu, 1), "pointnet2_cpu_ms": round(pn_cpu, 1), **stages,
                })
                del batch
        del model, baseline
    machine = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "image_size": [width, height], "repeats": repeats, "warmup": warmup,
        "memory": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS growth (VmHWM)",
        "load_average": [round(v, 2) for v in os.getloadavg()],  # others' work inflates wall times
        "kdtree": neighbors.KDTREE_LIBRARY if dev.type == "cpu" else "torch (cdist + topk)",
        "malloc_tuned": malloc_tuned,
    }
    return {"machine": machine, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    header = ("preset", "points", "views", "precision", "SAFNet ms", "PN++ ms", "ratio", "SAFNet MB", "PN++ MB",
              "SAFNet CPU ms", "PN++ CPU ms")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in result["rows"]:
        lines.append(" | ".join(str(x) for x in (r["preset"], r["points"], r["views"], r["precision"], r["safnet_ms"],
                                                  r["pointnet2_ms"], r["ratio"], r["safnet_peak_mb"],
                                                  r["pointnet2_peak_mb"], r["safnet_cpu_ms"],
                                                  r["pointnet2_cpu_ms"])))
    if any("safnet_stages_ms" in r for r in result["rows"]):
        stages = list(result["rows"][0]["safnet_stages_ms"])
        lines += ["", "time per stage, ms (median; SAFNet / PointNet++)",
                  " | ".join(("preset", "points", "views", "precision") + tuple(stages)),
                  " | ".join("---" for _ in range(4 + len(stages)))]
        for r in result["rows"]:
            cells = [f"{r['safnet_stages_ms'][k]} / {r['pointnet2_stages_ms'][k]}" for k in stages]
            lines.append(" | ".join([str(r["preset"]), str(r["points"]), str(r["views"]), r["precision"]] + cells))
    m = result["machine"]
    lines.append(f"\n{m['device']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
                 f"images {m['image_size'][0]}x{m['image_size'][1]}, median of {m['repeats']} after "
                 f"{m['warmup']} warm-up; memory: {m['memory']}; load average {m['load_average']}; "
                 f"neighbour search: {m.get('kdtree', '?')}; malloc tuned: {'yes' if m.get('malloc_tuned') else 'no'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = benchmark(args.presets, args.points, args.views, args.device, args.repeats, args.warmup,
                       args.height, args.width, args.threads, profile=args.profile, precisions=args.precision)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
    return 0
