"""Keep freed tensor memory in the process for reuse (glibc ``malloc`` tuning).

PyTorch takes CPU tensor memory from ``malloc``. glibc serves a block above its
mmap threshold (128 KiB at start, adapting upwards) with a fresh ``mmap`` and hands
it back with ``munmap`` when freed, and it trims free memory above 128 KiB off the
top of the heap. A SAFNet forward allocates dozens of ``(N * K, C)`` tensors of
5-25 MB each, so every forward page-faults all of them in again and the kernel
zero-fills each page. :func:`tune_cpu_allocator` raises the mmap threshold to
32 MiB (glibc's largest) and the trim threshold to 512 MiB with ``mallopt``, so
freed blocks stay in the heap and are reused. It also caps glibc at one arena
(``M_ARENA_MAX``): a thread other than the main one (the node's inference worker)
otherwise mallocs from an arena of its own, made of 64 MiB mmap'd heaps that the
thresholds above do not keep, and paid ~15k page faults and ~50 ms of system
time per 25k-point cloud (0 with one arena; ``Segmenter.segment`` in a worker
thread, alternated with the main thread in one process).

**Tune before other threads exist.** ``M_ARENA_MAX`` only stops glibc from
making new arenas: a thread then gets one of those that exist, round robin.
Threads started before the tuning (numpy's and torch's pools start at import
and at the first parallel op) have arenas of their own, so a worker started
later can land on one of them and fault its temporaries in again: measured
~3-8k page faults per 25k-point cloud and ~30 ms of system time, against 0
when the tuning came first. The node program therefore tunes as the first
thing ``import safnet_ros.ros`` does (before numpy, torch and rclpy), and the
``safnet`` CLI before it imports a command.

Measured on the 2-core development CPU, lite SAFNet, 25k points, 3 views, one
thread, per forward (three processes each way): untuned 31k-44k page faults and
69-81 ms of system time, tuned 20-725 page faults and 3-10 ms; user time is
unchanged (0.37-0.41 s), so the forward is about 15 % cheaper. The price is resident memory: the process keeps its peak
working set instead of returning it between forwards (bounded; the node's soak
test watches the slope).

It is applied by the ``safnet`` CLI, the ROS node and :class:`Segmenter`; set
``SAFNET_MALLOC_TUNING=0`` to leave malloc alone. It does nothing (returns False)
where glibc's ``mallopt`` is not available (macOS, musl) and when the user already
tunes malloc through ``GLIBC_TUNABLES`` or ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``: their choice wins.
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
    return _apply()


def _apply() -> bool:
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
