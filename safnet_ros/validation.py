"""Checks at the boundary: argparse types with ranges, and path checks before long work
(docs/reliability.md, section 6). Nothing here imports torch, numpy or open3d: ``safnet --help``
stays instant.
"""
from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path
from typing import Callable, Optional

from safnet_ros.errors import ConfigError, DataFormatError, MissingDataError

#: Upper bound for counts that size memory (frames, points, scenes): larger is a typo, not a request.
MAX_COUNT = 10_000_000
#: Largest image side in pixels accepted anywhere (ScanNet's colour is 1296 x 968).
MAX_IMAGE_SIDE = 8192


# --------------------------------------------------------------------------- argparse types
def bounds_text(lo: Optional[float], hi: Optional[float], lo_open: bool = False) -> str:
    """``>= lo and <= hi`` (``> lo`` when ``lo_open``; a missing bound left out; '' without bounds)."""
    parts = [f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts)


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (either bound optional)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds_text(lo, hi, False)}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False
                ) -> Callable[[str], float]:
    """argparse type: a finite float in [lo, hi] (``(lo, hi]`` when ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        if below or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {bounds_text(lo, hi, lo_open)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def size_wh(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` -> (w, h), both in 1..MAX_IMAGE_SIDE pixels."""
    w, sep, h = str(text).lower().strip().partition("x")
    try:
        if not sep:
            raise ValueError
        wh = (int(w), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH (e.g. 160x120), got {text!r}") from None
    if not all(1 <= v <= MAX_IMAGE_SIDE for v in wh):
        raise argparse.ArgumentTypeError(f"size sides must be 1..{MAX_IMAGE_SIDE} pixels, got {text!r}")
    return wh


def int_list(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers, each in [lo, hi]; at least one."""
    one = int_range(lo, hi)

    def parse(text: str) -> list[int]:
        items = [v for v in str(text).replace(" ", "").split(",") if v != ""]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return [one(v) for v in items]
    parse.__name__ = "integer list"
    return parse


def device_name(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    t = str(text).strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")


# --------------------------------------------------------------------------- paths
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISREG, "a regular file"))


def path_kind(path: str | os.PathLike) -> Optional[str]:
    """What ``path`` is ("a folder", "a regular file", "a FIFO (named pipe)", ...), None when absent."""
    try:
        mode = os.stat(path).st_mode
        return next((name for is_kind, name in _KINDS if is_kind(mode)), "not a regular file")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise DataFormatError(path, f"cannot be examined: {exc.strerror or exc}") from exc


def _require(path: str | os.PathLike, what: str, kind: str, shown: str) -> Path:
    p = Path(path)
    found = path_kind(p)
    if found is None:
        raise MissingDataError(p, what)
    if found != kind:
        raise DataFormatError(p, f"expected the {what}{shown} here, but this is {found}")
    return p


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path when it is a regular file: MissingDataError when absent,
    DataFormatError saying what it is instead (a folder, a FIFO) otherwise."""
    return _require(path, what, "a regular file", " (a regular file)")


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` as a Path when it is a folder: MissingDataError when absent, DataFormatError otherwise."""
    return _require(path, what, "a folder", "")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be created: the path (or a
    parent) is a regular file, or the nearest existing parent is not writable.

    Creates nothing; returns ``path`` as a Path.
    """
    p = Path(path)
    kind = path_kind(p)
    if kind is not None and kind != "a folder":
        raise ConfigError(f"{p}: the {what} is {kind}, not a folder")
    probe = p if kind == "a folder" else p.parent
    for parent in [probe, *probe.parents]:
        pk = path_kind(parent)
        if pk is None:
            continue
        if pk != "a folder":
            raise ConfigError(f"{p}: the {what} cannot be created: {parent} is {pk}, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{p}: the {what} cannot be written: no write permission in {parent}")
        break
    return p


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse an output file path that is a folder (or whose folder cannot be created)."""
    p = Path(path)
    kind = path_kind(p)
    if kind == "a folder":
        raise ConfigError(f"{p}: the {what} is a folder")
    check_output_dir(p.parent, f"folder of the {what}")
    return p
