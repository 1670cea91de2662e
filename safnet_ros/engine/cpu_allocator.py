"""Keep freed tensor memory in the process for reuse (glibc ``malloc`` tuning).

:func:`tune_cpu_allocator` raises glibc's mmap threshold to 32 MiB (its largest)
and its trim threshold to 512 MiB with ``mallopt``, so a forward's large freed
temporaries stay in the heap instead of being page-faulted (and zero-filled) in
again by the next forward, and caps glibc at one arena (``M_ARENA_MAX``), so a
worker thread gets no arena of its own that keeps nothing. The price is
resident memory: the peak working set stays. **Tune before other threads
exist**: ``M_ARENA_MAX`` only stops new arenas, so the node program tunes as the
first thing ``import safnet_ros.ros`` does and the ``safnet`` CLI before it
imports a command (docs/ros_node.md, docs/benchmarks.md). ``SAFNET_MALLOC_TUNING=0``
or a user's own ``GLIBC_TUNABLES`` / ``MALLOC_*_`` setting leaves malloc alone;
without glibc's ``mallopt`` (macOS, musl) it does nothing and returns False.
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
