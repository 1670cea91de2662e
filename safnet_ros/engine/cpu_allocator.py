"""Keep freed tensor memory in the process for reuse (glibc ``malloc`` tuning).

A SAFNet forward allocates dozens of 5-25 MB tensors. glibc serves a block above
its mmap threshold with a fresh ``mmap``, unmaps it when freed and trims free
memory off the heap, so every forward page-faults (and zero-fills) them again.
:func:`tune_cpu_allocator` raises the mmap threshold to 32 MiB (glibc's largest)
and the trim threshold to 512 MiB with ``mallopt``, so freed blocks stay and are
reused, and caps glibc at one arena (``M_ARENA_MAX``): a worker thread on an
arena of its own (64 MiB mmap'd heaps that the thresholds do not keep) would
fault its temporaries in again. The price is resident memory: the process keeps
its peak working set.

**Tune before other threads exist.** ``M_ARENA_MAX`` only stops new arenas, and
the threads numpy and torch start at import have arenas of their own, so the
node program tunes as the first thing ``import safnet_ros.ros`` does and the
``safnet`` CLI before it imports a command. Figures: docs/benchmarks.md.

``SAFNET_MALLOC_TUNING=0`` leaves malloc alone, and so does a user's
``GLIBC_TUNABLES`` or ``MALLOC_*_`` setting (their choice wins); without glibc's
``mallopt`` (macOS, musl) it does nothing and returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["tune_cpu_allocator", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "ENV_SWITCH"]

ENV_SWITCH = "SAFNET_MALLOC_TUNING"
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
ARENA_MAX = 1
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


@functools.lru_cache(maxsize=None)
def tune_cpu_allocator() -> bool:
    """Apply the malloc settings above once per process; True when they are in effect."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no libc by that name, or not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a refused value.
    return (bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
            and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
            and bool(mallopt(_M_ARENA_MAX, ARENA_MAX)))
