"""The node's health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray; keys and levels: docs/ros_node.md).

:class:`NodeStats` gathers counters and latencies from the node's threads under one lock;
:func:`stats_to_diagnostics` turns a snapshot into one DiagnosticStatus.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

#: Counters the node increments (name -> meaning, shown in the docs and on /diagnostics).
COUNTERS: dict[str, str] = {
    "clouds_received": "PointCloud2 messages received",
    "clouds_segmented": "labeled clouds published",
    "clouds_dropped": "clouds replaced in the latest-wins mailbox before inference took them",
    "frames_synced": "matched (rgb, depth, camera_info) sets",
    "views_kept": "views added to the buffer",
    "views_not_keyframe": "views refused by the keyframe policy",
    "views_prepared_idle": "kept views encoded and back-projected by the worker while no cloud waited",
    "decode_errors": "messages that could not be decoded (skipped)",
    "tf_failures": "clouds or views skipped for a missing transform",
    "frames_waiting_tf": "frames set aside until their transform arrives (retried by a timer)",
    "time_jumps": "times the message time went backwards (buffers cleared)",
    "worker_errors": "unexpected errors in the inference worker (cloud skipped)",
    "clouds_3d_only": "clouds segmented with no view covering them",
    "downsampled": "clouds voxel-downsampled beyond max_points",
    "clouds_empty": "clouds with no finite point (skipped)",
    "oom_retries": "chunk forwards retried in smaller parts after running out of memory",
}

#: Seconds of latencies behind latency_* and rate_hz on /diagnostics.
LATENCY_WINDOW_S = 10.0


@dataclass
class StatsSnapshot:
    """A consistent copy of :class:`NodeStats` at one moment."""

    counters: dict[str, int]
    latency_last: float
    latency_mean: float
    latency_max: float
    rate_hz: float
    buffer_views: int
    buffer_mib: float
    device: str
    extra: dict[str, str] = field(default_factory=dict)


class NodeStats:
    """Thread-safe counters and a sliding window of latencies (:data:`LATENCY_WINDOW_S`) for the node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {name: 0 for name in COUNTERS}
        self._latencies: deque[tuple[float, float]] = deque()  # (when, seconds)
        self._last_latency = float("nan")
        self._reported: dict[str, int] = dict(self.counters)
        self._frame_costs: deque[float] = deque(maxlen=1000)  # seconds per synchronised-frame callback

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + int(n)

    def get(self, name: str) -> int:
        with self._lock:
            return self.counters.get(name, 0)

    def add_latency(self, seconds: float) -> None:
        """One labeled cloud published ``seconds`` after its cloud arrived."""
        now = time.monotonic()
        with self._lock:
            self._latencies.append((now, float(seconds)))
            self._last_latency = float(seconds)
            self._trim(now)

    def add_frame_cost(self, seconds: float) -> None:
        """One synchronised (rgb, depth, camera_info) callback took ``seconds`` on the executor."""
        with self._lock:
            self._frame_costs.append(float(seconds))

    def _frame_report_locked(self) -> dict[str, str]:
        """Per-frame callback cost p50 / p99 (ms, last 1000 frames) and views kept / frames synced."""
        costs = np.asarray(self._frame_costs, dtype=np.float64)
        synced, kept = self.counters.get("frames_synced", 0), self.counters.get("views_kept", 0)
        p50, p99 = (np.percentile(costs, (50, 99)) * 1000.0) if costs.size else (float("nan"),) * 2
        return {"frame_cost_p50_ms": _fmt(p50, 3), "frame_cost_p99_ms": _fmt(p99, 3),
                "views_kept_per_frame": _fmt(kept / synced if synced else float("nan"), 3)}

    def _trim(self, now: float) -> None:
        while self._latencies and self._latencies[0][0] < now - LATENCY_WINDOW_S:
            self._latencies.popleft()

    def snapshot(self, buffer_views: int, buffer_bytes: int, device: str, extra: Optional[dict] = None) -> StatsSnapshot:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            lat = [s for _, s in self._latencies]
            if len(self._latencies) >= 2:
                span = max(self._latencies[-1][0] - self._latencies[0][0], 1e-9)
                rate = (len(self._latencies) - 1) / span
            else:
                rate = 0.0
            return StatsSnapshot(
                counters=dict(self.counters), latency_last=self._last_latency,
                latency_mean=sum(lat) / len(lat) if lat else float("nan"),
                latency_max=max(lat) if lat else float("nan"), rate_hz=rate, buffer_views=int(buffer_views),
                buffer_mib=buffer_bytes / (1024.0 * 1024.0), device=str(device),
                extra={**self._frame_report_locked(), **{k: str(v) for k, v in (extra or {}).items()}},
            )

    def new_since_last_report(self) -> dict[str, int]:
        """How much each counter grew since the previous call (for the WARN and ERROR levels)."""
        with self._lock:
            grown = {n: count - self._reported.get(n, 0) for n, count in self.counters.items()}
            self._reported = dict(self.counters)
            return grown


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if value != value else f"{value:.{digits}f}"


def stats_to_diagnostics(snap: StatsSnapshot, grown: dict[str, int], stamp: Any, name: str,
                         hardware_id: str) -> DiagnosticArray:
    """One DiagnosticArray with a single status ``name`` describing ``snap``.

    grown: counter increments since the last report (decides WARN / ERROR).
    stamp: builtin_interfaces/Time for the header.
    """
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=DiagnosticStatus.OK)
    problems = []
    for key, what, level in (("worker_errors", "worker errors", DiagnosticStatus.ERROR),
                             ("decode_errors", "undecodable messages", DiagnosticStatus.WARN),
                             ("tf_failures", "missing transforms", DiagnosticStatus.WARN),
                             ("clouds_dropped", "dropped clouds", DiagnosticStatus.WARN)):
        if grown.get(key, 0):
            problems.append(f"{grown[key]} {what}")
            status.level = max(status.level, level)
    status.message = "; ".join(problems) if problems else "segmenting"
    values = {"latency_last_s": _fmt(snap.latency_last), "latency_mean_s": _fmt(snap.latency_mean),
              "latency_max_s": _fmt(snap.latency_max), "rate_hz": _fmt(snap.rate_hz, 3),
              "buffer_views": str(snap.buffer_views), "buffer_mib": _fmt(snap.buffer_mib, 2), "device": snap.device,
              **{key: str(value) for key, value in snap.counters.items()}, **snap.extra}
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg


def diagnostics_values(msg: DiagnosticArray) -> dict[str, str]:
    """key -> value of the first status of a DiagnosticArray (tests and tools)."""
    if not msg.status:
        return {}
    return {kv.key: kv.value for kv in msg.status[0].values}


__all__ = ["COUNTERS", "NodeStats", "StatsSnapshot", "stats_to_diagnostics", "diagnostics_values"]
