"""Voxel grid coordinates as int64 keys, and rows summed per key: the map's and the smoothing's grouping.

A key packs (i, j, k) grid coordinates, 21 bits per axis (|c| <= MAX_GRID_COORD,
about +-52 km at 5 cm voxels), so that sorting keys sorts by x, then y, then z.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse

_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1
#: Largest |grid coordinate| a key can hold.
MAX_GRID_COORD = _OFFSET - 1


def pack_keys(ijk: np.ndarray) -> np.ndarray:
    """(N, 3) int64 grid coordinates (|c| <= MAX_GRID_COORD) -> (N,) int64 keys (order: x, then y, then z)."""
    u = ijk.astype(np.int64) + _OFFSET
    return (u[:, 0] << (2 * _BITS)) | (u[:, 1] << _BITS) | u[:, 2]


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """(N,) int64 keys -> (N, 3) int64 grid coordinates."""
    shifts = np.array([2 * _BITS, _BITS, 0], np.int64)
    return ((np.asarray(keys, np.int64)[:, None] >> shifts) & _MASK) - _OFFSET


class KeySums(NamedTuple):
    """Rows grouped by key (U distinct keys): see :func:`sum_by_key`."""

    keys: np.ndarray  # (U,) int64 distinct keys, ascending
    sums: np.ndarray  # (U, C) float32 sum of the rows of each key
    counts: np.ndarray  # (U,) int64 rows per key
    order: np.ndarray  # (N,) row indices sorted by key (each key's rows together)
    starts: np.ndarray  # (U,) where each key's rows start in ``order``


def sum_by_key(keys: np.ndarray, rows: np.ndarray) -> KeySums:
    """Sum ``rows`` (N, C) float32 per distinct value of ``keys`` (N,) int64 (N >= 1).

    One sort of the keys and one sparse (U, N) membership matrix (row u holds
    ones at the rows of key u) times the rows: a single pass in C, where
    np.add.reduceat or per-class bincounts cost 5-15x more on 25k rows.
    """
    order = np.argsort(keys)
    sorted_keys = keys[order]
    first = np.empty(len(keys), bool)
    first[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    ends = np.append(starts, len(keys))
    membership = scipy.sparse.csr_matrix((np.ones(len(order), np.float32), order, ends),
                                         shape=(len(starts), len(order)))
    return KeySums(sorted_keys[first], np.asarray(membership @ rows, dtype=np.float32), np.diff(ends), order, starts)
