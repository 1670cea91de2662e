"""Neighbourhood smoothing of a voxel map's class distributions at read-out (``map_smoothing``).

A voxel's label is read from its own fused distribution blended with the mean
distribution of the voxels around it::

    q_v = (p_v + weight * m_v) / (1 + weight)     (just p_v where v has no neighbour)
    label_v = argmax q_v,   confidence_v = q_v[label_v]

``m_v`` is the mean of ``p`` over the other voxels that share one of two
coarse cells with v: cells of ``cell`` voxels per edge, and a second grid of
the same cells shifted by half a cell on every axis, so that no voxel sits at
the border of both. Why, and what it gains: docs/ros_node.md ("Read-out
smoothing"). Cost: two sorts of the V coarse keys and two sparse (cells x V)
products per read-out, no per-voxel Python loop.
"""
from __future__ import annotations

import numpy as np

from safnet_ros.errors import ConfigError
from safnet_ros.mapping.grid_keys import pack_keys, sum_by_key

#: Default weight of the neighbourhood mean against the voxel's own distribution (0 = no smoothing).
DEFAULT_WEIGHT = 1.0
#: Default coarse-cell edge, metres (4 voxels of the default 4 cm).
DEFAULT_CELL_M = 0.16
#: Largest accepted weight (beyond it the voxel's own evidence no longer matters: a mode filter).
MAX_WEIGHT = 100.0


def check_smoothing(weight: float, cell_m: float) -> None:
    """ConfigError naming the setting for a weight outside [0, MAX_WEIGHT] or a cell outside (0, 100] metres."""
    for name, value, lo_open, hi in (("smoothing weight", weight, False, MAX_WEIGHT),
                                     ("smoothing cell", cell_m, True, 100.0)):
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"map {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not (np.isfinite(x) and (x > 0 if lo_open else x >= 0) and x <= hi):
            interval = f"(0, {hi:g}] metres" if lo_open else f"[0, {hi:g}] (0 = off)"
            raise ConfigError(f"map {name} must be in {interval}, got {value!r}")


def cell_voxels(cell_m: float, voxel_size: float) -> int:
    """Coarse-cell edge in voxels for ``cell_m`` metres: the nearest whole number, at least 2."""
    return max(2, int(round(float(cell_m) / float(voxel_size))))


def _cell_sums(cells: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the sum of ``dist`` (V, C) float32 over its coarse cell (``cells`` (V, 3) int64) and the
    cell's voxel count."""
    grouped = sum_by_key(pack_keys(cells), dist)
    cell_of = np.empty(len(cells), np.int64)  # each voxel's cell: the rank of its key among the distinct keys
    cell_of[grouped.order] = np.repeat(np.arange(len(grouped.starts)), grouped.counts)
    return np.take(grouped.sums, cell_of, axis=0), np.take(grouped.counts, cell_of)


def neighbourhood_blend(ijk: np.ndarray, dist: np.ndarray, cell: int, weight: float) -> np.ndarray:
    """Blended distributions q (V, C) float32 (see the module docstring).

    ijk (V, 3) int64 voxel grid coordinates (distinct); dist (V, C) each
    voxel's own class distribution (rows sum to 1); cell >= 2 voxels; weight >= 0.
    With weight 0 (or no voxels) ``dist`` is returned as float32.
    """
    dist = np.ascontiguousarray(dist, np.float32)
    if weight <= 0 or len(dist) == 0:
        return dist
    ijk = np.asarray(ijk, np.int64)
    sums, n_a = _cell_sums(np.floor_divide(ijk, cell), dist)
    sums_b, n_b = _cell_sums(np.floor_divide(ijk + cell // 2, cell), dist)
    sums += sums_b
    del sums_b
    sums -= 2.0 * dist  # the voxel itself is in both of its cells: neighbours only
    others = (n_a - 1) + (n_b - 1)  # a neighbour sharing both cells counts twice, as in the mean over the two
    scale = np.where(others > 0, np.float32(weight) / np.maximum(others, 1), 0.0).astype(np.float32)
    sums *= scale[:, None]
    sums += dist
    sums *= (1.0 / (1.0 + np.where(others > 0, np.float32(weight), 0.0))).astype(np.float32)[:, None]
    return sums
