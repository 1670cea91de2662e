"""How many torch threads the inference worker should use: the cores other processes leave free.

torch's CPU kernels (and pykdtree's queries) run on OpenMP teams whose idle
threads spin between parallel regions, so while another process keeps a core
busy, a two-thread team on a two-core robot waits at every barrier for the
thread that is not scheduled (docs/benchmarks.md, "Threads under load").
:class:`CoreShare` reads the system's and this process's CPU time from Linux's
``/proc`` between two clouds; :func:`threads_for` turns the cores the others
left free into a thread count. Without ``/proc`` it returns None and the caller
keeps torch's default. ``/proc/stat`` counts the whole machine: in a container
limited to some of the host's CPUs, load on the others counts as free.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

__all__ = ["CoreShare", "threads_for", "MIN_WINDOW_S"]

#: Windows shorter than this (seconds) keep the previous answer: too few clock ticks to judge.
MIN_WINDOW_S = 0.2


def _system_ticks(text: str) -> tuple[int, int, int]:
    """(busy ticks, total ticks, CPU count) from the text of ``/proc/stat``."""
    lines = text.splitlines()
    fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(fields)
    busy = total - fields[3] - fields[4]
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    return busy, total, max(cpus, 1)


def _process_ticks(text: str) -> int:
    """utime + stime (clock ticks, every thread of the process) from the text of ``/proc/self/stat``."""
    after_name = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return int(after_name[11]) + int(after_name[12])  # fields 14 and 15 of proc(5)


class CoreShare:
    """The cores other processes left idle since the previous :meth:`free_cores` call.

    stat_path / self_stat_path: the ``/proc`` files (tests give others).
    """

    def __init__(self, stat_path: str = "/proc/stat", self_stat_path: str = "/proc/self/stat") -> None:
        self._stat = Path(stat_path)
        self._self_stat = Path(self_stat_path)
        self._last: Optional[tuple[int, int, int, float]] = None
        self._answer: Optional[float] = None
        self._answered_at = 0.0
        if self._stat.is_file() and self._self_stat.is_file():
            self._last = self._read()

    def _read(self) -> Optional[tuple[int, int, int, float]]:
        """(busy, total, this process's ticks, CPU count), or None where the files cannot be read or parsed
        (the thread count is a tuning: it must never cost a cloud)."""
        try:
            busy, total, cpus = _system_ticks(self._stat.read_text())
            return busy, total, _process_ticks(self._self_stat.read_text()), float(cpus)
        except (OSError, ValueError, IndexError):
            return None

    def free_cores(self) -> Optional[float]:
        """Cores (0..CPU count) that processes other than this one did not use since the last call;
        None without ``/proc``. A window under :data:`MIN_WINDOW_S` returns the previous answer."""
        if self._last is None:
            return None
        now = time.monotonic()
        if self._answer is not None and now - self._answered_at < MIN_WINDOW_S:
            return self._answer
        reading = self._read()
        if reading is None:
            return self._answer
        busy, total, mine, cpus = reading
        d_busy, d_total, d_mine = busy - self._last[0], total - self._last[1], mine - self._last[2]
        if d_total <= 0:
            return self._answer
        self._last, self._answered_at = (busy, total, mine, cpus), now
        others = max(0.0, (d_busy - d_mine) / d_total) * cpus
        self._answer = max(0.0, cpus - others)
        return self._answer


def threads_for(free_cores: Optional[float], max_threads: int) -> Optional[int]:
    """torch threads for ``free_cores`` (rounded, 1 at least, ``max_threads`` at most); None for None."""
    if free_cores is None:
        return None
    return max(1, min(int(max_threads), int(round(free_cores))))
