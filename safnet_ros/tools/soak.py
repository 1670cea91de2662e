"""``safnet bench soak``: loop a bag through the real segmentation node and watch memory, latency and drops.

A rosbag2 (by default a small synthetic scene converted once, frames and clouds
at ``--rate`` Hz) is replayed in a loop by :class:`~safnet_ros.ros.bag_player.BagPlayer`
into a :class:`~safnet_ros.ros.segment_node.SegmentNode` over real DDS in this
process; every loop makes time jump back, so the node must clear its buffers
and carry on.  :class:`SoakReport` holds what is measured; it is printed as a
table (or JSON with ``--json``) and written with the RSS plot into ``--out``
(docs/benchmarks.md, "Soak").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.figure import Figure

from safnet_ros import output_dir as od
from safnet_ros.engine.inference import Segmenter
from safnet_ros.ros.params import SPECS  # the node's parameter table: plain data, no rclpy
from safnet_ros.ros.tf_path import active_tf_path
from safnet_ros.tools import bag_io as bio
from safnet_ros.tools.bag_convert import convert_scene
from safnet_ros.tools.bench_model import proc_status_kb
from safnet_ros.validation import MAX_COUNT, device_name, float_range, int_range

__all__ = ["add_arguments", "run", "soak", "SoakReport", "read_rss_mib", "rss_slope_mib_per_min", "growing_share",
           "make_synthetic_bag"]

#: Node counters the report carries.
REPORTED_COUNTERS = ("clouds_received", "clouds_segmented", "clouds_dropped", "decode_errors", "tf_failures",
                     "time_jumps", "worker_errors", "frames_synced", "views_kept", "clouds_3d_only")


def read_rss_mib() -> float:
    """This process's resident set size, MiB (``VmRSS``; NaN where unavailable)."""
    return proc_status_kb("VmRSS") / 1024.0


def _second_half(times_s: list[float], rss_mib: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The samples (seconds, MiB) from half the run's length on: allocator warm-up is over by then."""
    t = np.asarray(times_s, np.float64)
    r = np.asarray(rss_mib, np.float64)
    if len(t) == 0:
        return t, r
    half = t >= t[-1] / 2.0
    return t[half], r[half]


def rss_slope_mib_per_min(times_s: list[float], rss_mib: list[float]) -> float:
    """Least-squares slope (MiB/min) of RSS over the second half of the run (NaN with < 2 samples)."""
    t, r = _second_half(times_s, rss_mib)
    if len(t) < 2 or np.ptp(t) <= 0:
        return float("nan")
    return float(np.polyfit(t, r, 1)[0] * 60.0)  # MiB/s -> MiB/min


def growing_share(times_s: list[float], rss_mib: list[float], step_mib: float = 0.25) -> float:
    """The share of sampling intervals in the run's second half over which RSS grew by more than ``step_mib``.

    A leak adds memory all the time, so nearly every interval grows; allocator
    warm-up adds it in a few steps (a new block pool: 2-60 MiB at once), so few
    intervals do. Unlike the second half's total growth, this tells the two apart
    in a short run. NaN with fewer than two samples in the second half.
    """
    _, r = _second_half(times_s, rss_mib)
    if len(r) < 2:
        return float("nan")
    return float(np.mean(np.diff(r) > step_mib))


@dataclass
class SoakReport:
    """What a soak run measured (times in seconds, memory in MiB).

    ``samples``: (time, RSS) every ``--sample-period``; the slope is over the second half of the run
    (the first includes warm-up: allocator pools, caches).  Latency: cloud received to labelled cloud
    published, from the node's ``last_timings``.  ``map_peak_voxels``: the most the node's semantic map
    held after an update (never above ``map_max_voxels``); ``map_clears``: one per bag loop.
    """

    minutes: float
    bag: str
    rate_hz: float
    device: str
    duration_s: float = 0.0
    bag_loops: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, RSS MiB)
    rss_start_mib: float = float("nan")
    rss_end_mib: float = float("nan")
    rss_max_mib: float = float("nan")
    rss_slope_mib_per_min: float = float("nan")
    latency_p50_s: float = float("nan")
    latency_p90_s: float = float("nan")
    latency_p99_s: float = float("nan")
    latency_count: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: how transforms reached the node (safnet_ros.ros.tf_path.active_tf_path, shared with the player)
    transforms: str = ""
    map_max_voxels: int = 0
    map_peak_voxels: int = 0
    map_voxels_sampled_max: int = 0
    map_voxels_evicted: int = 0
    map_clears: int = 0
    map_clouds_integrated: int = 0
    map_update_ms_mean: float = float("nan")

    def table(self) -> str:
        """A human-readable summary and the RSS samples (about 12 rows)."""
        c = self.counters
        lines = [
            f"soak: {self.duration_s:.0f} s, bag {self.bag} looped {self.bag_loops} times at {self.rate_hz:g} Hz, "
            f"device {self.device}",
            f"transforms: {self.transforms}",
            f"clouds: received {c.get('clouds_received', 0)}, segmented {c.get('clouds_segmented', 0)}, "
            f"dropped {c.get('clouds_dropped', 0)}",
            f"errors: decode {c.get('decode_errors', 0)}, tf {c.get('tf_failures', 0)}, "
            f"worker {c.get('worker_errors', 0)}; time jumps {c.get('time_jumps', 0)}",
            f"latency (n={self.latency_count}): p50 {self.latency_p50_s:.3f} s, p90 {self.latency_p90_s:.3f} s, "
            f"p99 {self.latency_p99_s:.3f} s",
            f"RSS: start {self.rss_start_mib:.1f} MiB, end {self.rss_end_mib:.1f} MiB, max {self.rss_max_mib:.1f} MiB, "
            f"slope over the second half {self.rss_slope_mib_per_min:+.2f} MiB/min",
            f"semantic map: {self.map_clouds_integrated} clouds fused, peak {self.map_peak_voxels} voxels "
            f"(max_voxels {self.map_max_voxels}), {self.map_voxels_evicted} evicted, {self.map_clears} clears, "
            f"{self.map_update_ms_mean:.1f} ms per update",
            "",
            f"{'t (s)':>8}  {'RSS (MiB)':>10}",
        ]
        step = max(1, len(self.samples) // 12)
        shown = self.samples[::step]
        if self.samples and shown[-1] is not self.samples[-1]:
            shown.append(self.samples[-1])
        lines += [f"{t:8.1f}  {r:10.1f}" for t, r in shown]
        return "\n".join(lines)


def make_synthetic_bag(out: Path, rate_hz: float = 10.0) -> Path:
    """Generate a small synthetic scene (40 frames), convert it to a rosbag2 at ``out`` at ``rate_hz``."""
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset  # noqa: PLC0415 - generate loads open3d, only for the synthetic bag (none with --bag)
    scenes = Path(out).parent / (Path(out).name + "_scene")
    cfg = SynthConfig(frames=40, color_size=(160, 120), depth_size=(160, 120), vertex_spacing=0.08,
                      progress=False)
    (summary,) = generate_dataset(scenes, scenes=1, seed=7, cfg=cfg)
    convert_scene(scenes / summary["name"], out, rate=rate_hz, cloud_rate=rate_hz, progress=False, overwrite=True)
    return Path(out)


def soak(
    minutes: float,
    rate: float = 10.0,
    bag: Optional[str | Path] = None,
    model: Optional[str] = None,
    device: str = "cpu",
    sample_period: float = 2.0,
    log: Any = None,
    map_max_voxels: Optional[int] = None,
    map_enable: bool = True,
) -> SoakReport:
    """Loop ``bag`` (default: a synthetic bag at ``rate`` Hz) through a SegmentNode for ``minutes``.

    model: checkpoint (None = the shipped default / an untrained lite model);
    log: a callable taking one progress line (None = silent); map_max_voxels:
    the node's map_max_voxels (None = its default); map_enable: the node's
    map_enable (False: the same run without the semantic map, for A/B).
    Returns the :class:`SoakReport`. Raises SafnetError subclasses for a bad
    bag or model.
    """
    from safnet_ros.ros.bag_session import BagSession  # noqa: PLC0415 - rclpy outside ros/: loaded when a soak runs, not when tools import this module
    if bag is not None:  # a broken bag is named now, not found by the player thread after the run
        with bio.bag_reader(bio.require_bag(bag)):
            pass
    torch.set_num_threads(2)
    say = log or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="safnet_soak_", ignore_cleanup_errors=True) as tmp_dir:
        if bag is None:
            tmp = Path(tmp_dir)
            say(f"converting a synthetic scene to a bag at {rate:g} Hz in {tmp}")
            bag = make_synthetic_bag(tmp / "bag", rate_hz=rate)
        segmenter = Segmenter.from_checkpoint(model or None, device=device, num_views=3, chunk_stride=1.5,
                                              max_points=8000, precision=SPECS["precision"].default)

        report = SoakReport(minutes=float(minutes), bag=str(bag), rate_hz=float(rate), device=str(segmenter.device),
                            transforms=active_tf_path().describe())
        parameters: dict[str, Any] = {"publish_markers": False, "map_enable": bool(map_enable)}
        if map_max_voxels is not None:  # 0 or less is refused by the node, never silently the default
            parameters["map_max_voxels"] = int(map_max_voxels)
        stop = threading.Event()
        player_thread = None
        with BagSession(segmenter, parameters, executor_threads=2, name="safnet_soak") as session:
            node = session.node
            try:
                player = session.player(bag, rate=1.0, loop=True, wait_for_subscribers=5.0)
                player_thread = threading.Thread(target=player.run, args=(stop,), name="soak_player", daemon=True)

                latencies: list[float] = []
                seen = node.last_timings
                start = time.monotonic()
                end = start + minutes * 60.0
                next_sample = start
                player_thread.start()
                while True:
                    now = time.monotonic()
                    timings = node.last_timings  # a new dict per labeled cloud
                    if timings is not seen and "total_s" in timings:
                        latencies.append(float(timings["total_s"]))
                        seen = timings
                    if now >= next_sample:
                        rss = read_rss_mib()
                        report.samples.append((now - start, rss))
                        report.map_voxels_sampled_max = max(report.map_voxels_sampled_max, len(node.semantic_map))
                        next_sample += sample_period
                        if len(report.samples) % max(1, int(30 / sample_period)) == 1:
                            c = node.stats.snapshot(0, 0, "").counters
                            say(f"{now - start:6.0f} s  RSS {rss:7.1f} MiB  segmented {c['clouds_segmented']}  "
                                f"dropped {c['clouds_dropped']}  jumps {c['time_jumps']}  "
                                f"map {len(node.semantic_map)} voxels")
                    if now >= end:
                        break
                    time.sleep(0.01)
                report.duration_s = time.monotonic() - start
                stop.set()
                player_thread.join(timeout=10.0)
                report.bag_loops = player.summary.loops
                report.counters = {k: int(node.stats.snapshot(0, 0, "").counters.get(k, 0))
                                   for k in REPORTED_COUNTERS}
                sm = node.semantic_map
                report.map_max_voxels = sm.settings.max_voxels
                report.map_peak_voxels = sm.map.peak_voxels
                report.map_voxels_evicted = sm.map.voxels_evicted
                report.map_clears = sm.clears
                report.map_clouds_integrated = sm.clouds_integrated
                report.map_update_ms_mean = sm.update_ms_mean()
            finally:
                stop.set()  # the player stops publishing before the session destroys its node
                if player_thread is not None:
                    player_thread.join(timeout=10.0)

    rss = [r for _, r in report.samples]
    if rss:
        report.rss_start_mib, report.rss_end_mib, report.rss_max_mib = rss[0], rss[-1], max(rss)
    report.rss_slope_mib_per_min = rss_slope_mib_per_min([t for t, _ in report.samples], rss)
    report.latency_count = len(latencies)
    if latencies:
        report.latency_p50_s, report.latency_p90_s, report.latency_p99_s = map(float, np.percentile(latencies, (50, 90, 99)))
    return report


def plot_rss(report: SoakReport, path: Path) -> Path:
    """PNG of RSS (MiB) over time (minutes) with the second-half slope in the title."""
    t = [s / 60.0 for s, _ in report.samples]
    r = [m for _, m in report.samples]
    fig = Figure(figsize=(7, 3.5))  # matplotlib's object API: no pyplot state, no backend to choose
    ax = fig.add_subplot()
    ax.plot(t, r, marker=".", lw=1)
    ax.set(xlabel="time (min)", ylabel="RSS (MiB)")
    ax.set_title(f"safnet soak: {report.counters.get('clouds_segmented', 0)} clouds, "
                 f"slope {report.rss_slope_mib_per_min:+.2f} MiB/min (2nd half)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float_range(0.0, 100_000.0, lo_open=True), default=10.0,
                        help="how long to run (default 10)")
    parser.add_argument("--rate", type=float_range(0.1, 1000.0), default=10.0,
                        help="frame and cloud rate of the synthetic bag, Hz "
                             "(a given --bag plays at its recorded timing)")
    parser.add_argument("--bag", default=None, help="rosbag2 to loop (default: a synthetic scene converted once)")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped / untrained lite model)")
    parser.add_argument("--device", type=device_name, default="cpu", help="auto | cpu | cuda[:N] (default cpu)")
    parser.add_argument("--sample-period", type=float_range(0.01, 3600.0), default=2.0,
                        help="seconds between RSS samples")
    parser.add_argument("--out", default="soak_results", help="folder for soak.json and soak_rss.png")
    parser.add_argument("--map-max-voxels", type=int_range(1, MAX_COUNT), default=None, metavar="N",
                        help="the node's map_max_voxels (default: the node's 500000; small values exercise eviction)")
    parser.add_argument("--no-map", action="store_true", help="the node without its semantic map (map_enable false)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    inputs = [p for p in (args.bag, args.model) if p]
    with od.output_lock(args.out, "--out folder"):
        # before the soak, not after it: --out is new, empty or an earlier soak's (replaced whole at the end)
        od.claim(args.out, "bench soak", overwrite=True, inputs=inputs, what="--out folder")
        report = soak(args.minutes, rate=args.rate, bag=args.bag, model=args.model, device=args.device,
                      sample_period=args.sample_period, map_max_voxels=args.map_max_voxels,
                      map_enable=not args.no_map, log=lambda line: print(line, file=sys.stderr, flush=True))
        data = asdict(report)
        with od.staged_folder(args.out, "bench soak", {"minutes": args.minutes, "rate": args.rate, "bag": args.bag},
                              overwrite=True) as stage:
            (stage / "soak.json").write_text(json.dumps(data, indent=2))
            plot_rss(report, stage / "soak_rss.png")
    print(json.dumps(data, indent=2) if args.json else report.table())
    return 0
