"""The inference worker's thread count: the cores other processes leave free (engine/cpu_share.py)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from safnet_ros.engine import cpu_share
from safnet_ros.engine.cpu_share import CoreShare, threads_for

PROC = Path("/proc/stat").is_file() and Path("/proc/self/stat").is_file()


def write_proc(tmp: Path, busy: int, idle: int, mine: int, cpus: int = 2) -> tuple[str, str]:
    """A /proc/stat and a /proc/self/stat with these tick counts (the kernel's formats)."""
    stat = tmp / "stat"
    per_cpu = "".join(f"cpu{i} 1 0 1 1 0 0 0 0 0 0\n" for i in range(cpus))
    stat.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n{per_cpu}intr 1 2 3\nctxt 5\n")
    self_stat = tmp / "self_stat"
    # pid (comm) state ppid ... utime (14) stime (15): a name with a space and a parenthesis
    fields = ["S", "1", "1", "1", "0", "-1", "4194560", "100", "0", "0", "0", str(mine), "0"] + ["0"] * 30
    self_stat.write_text("1234 (python3 (x) y) " + " ".join(fields) + "\n")
    return str(stat), str(self_stat)


def test_free_cores_are_the_cores_minus_what_other_processes_used(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_share, "MIN_WINDOW_S", 0.0)
    stat, self_stat = write_proc(tmp_path, busy=1000, idle=1000, mine=100)
    share = CoreShare(stat, self_stat)
    # 200 ticks pass on 2 CPUs: 150 busy, 50 of them ours -> others used 100/200 of the machine = 1 core
    write_proc(tmp_path, busy=1150, idle=1050, mine=150)
    assert share.free_cores() == pytest.approx(1.0)
    # next window: all busy ticks are ours -> both cores free for us
    write_proc(tmp_path, busy=1350, idle=1050, mine=350)
    assert share.free_cores() == pytest.approx(2.0)
    # others take the whole machine: nothing free
    write_proc(tmp_path, busy=1550, idle=1050, mine=350)
    assert share.free_cores() == pytest.approx(0.0)


def test_a_window_too_short_or_without_ticks_keeps_the_previous_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_share, "MIN_WINDOW_S", 0.0)
    stat, self_stat = write_proc(tmp_path, busy=0, idle=0, mine=0)
    share = CoreShare(stat, self_stat)
    write_proc(tmp_path, busy=100, idle=100, mine=0)
    first = share.free_cores()
    assert first == pytest.approx(1.0)
    assert share.free_cores() == first  # no tick since: the same answer
    monkeypatch.setattr(cpu_share, "MIN_WINDOW_S", 60.0)
    write_proc(tmp_path, busy=100, idle=300, mine=0)
    assert share.free_cores() == first  # within the minimum window: not re-judged


def test_without_proc_there_is_no_answer_and_torch_keeps_its_default(tmp_path):
    share = CoreShare(str(tmp_path / "none"), str(tmp_path / "none2"))
    assert share.free_cores() is None
    assert threads_for(None, 2) is None


def test_unreadable_or_garbled_proc_files_never_raise(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_share, "MIN_WINDOW_S", 0.0)
    garbled = tmp_path / "garbled"
    garbled.write_text("cpu  not numbers\n")
    assert CoreShare(str(garbled), str(garbled)).free_cores() is None  # refused at the start
    stat, self_stat = write_proc(tmp_path, busy=0, idle=0, mine=0)
    share = CoreShare(stat, self_stat)
    write_proc(tmp_path, busy=100, idle=100, mine=0)
    answer = share.free_cores()
    Path(self_stat).write_text("1234 (python3) S\n")  # truncated mid-run: the last answer stays
    write_proc(tmp_path, busy=300, idle=100, mine=0)
    Path(self_stat).write_text("1234 (python3) S\n")
    assert share.free_cores() == answer


@pytest.mark.parametrize("free, max_threads, want", [(0.0, 2, 1), (0.6, 2, 1), (1.4, 2, 1), (1.6, 2, 2),
                                                      (2.0, 2, 2), (7.9, 4, 4), (3.2, 8, 3)])
def test_threads_are_the_free_cores_rounded_between_one_and_the_maximum(free, max_threads, want):
    assert threads_for(free, max_threads) == want


@pytest.mark.skipif(not PROC, reason="Linux /proc only")
def test_a_process_spinning_on_a_core_is_seen_as_a_core_taken():
    share = CoreShare()
    cpus = share._read()[3]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        share.free_cores()  # start the window with the spinner running
        time.sleep(0.8)
        free = share.free_cores()
    finally:
        spin.kill()
        spin.wait()
    assert free is not None and free <= cpus - 0.6, (free, cpus)
