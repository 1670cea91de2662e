"""A semantic voxel map in the fixed frame that fuses per-point class probabilities over time.

docs/ros_node.md ("The semantic map") describes the fusion rules, the read-out
smoothing and the bounded memory, and why counts are the default. Each occupied
voxel (keyed by its grid coordinates ``floor(p / voxel_size)``) keeps

* ``scores`` (C,) float32, the fused evidence by one of :data:`FUSION_RULES`:
  ``"count"`` sums the points' probability vectors (label = argmax, confidence =
  the winner's mean probability); ``"log"`` sums ``log(max(p, LOG_FLOOR))``, rows
  kept at max 0 and clamped at ``LOG_CLAMP`` (confidence = the winner's posterior);
* ``observations`` (int64): how many points were fused into it.

Reading blends each voxel's distribution with its neighbourhood's
(:mod:`~safnet_ros.mapping.smoothing`) once per map version; the stored evidence
is never changed by it. Evicted rows are reused, never moved. Points with a
non-finite coordinate or a non-finite / all-zero probability row never enter the
map (``points_rejected``). Not thread safe: the node's map component guards it
with a lock.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from safnet_ros.data.labels import NUM_CLASSES
from safnet_ros.errors import ConfigError
from safnet_ros.mapping.grid_keys import MAX_GRID_COORD, pack_keys, sum_by_key, unpack_keys
from safnet_ros.mapping.key_index import KeyIndex
from safnet_ros.mapping.smoothing import (
    DEFAULT_CELL_M,
    DEFAULT_WEIGHT,
    cell_voxels,
    check_smoothing,
    neighbourhood_blend,
)

#: The documented fusion rules (see the module docstring).
FUSION_RULES: tuple[str, ...] = ("count", "log")
#: Smallest probability the log rule takes the log of (a single 0 would veto a class forever).
LOG_FLOOR = 1e-4
#: The log rule's scores are kept in [LOG_CLAMP, 0] (relative to the row's best class).
LOG_CLAMP = -60.0
#: Largest accepted voxel edge, metres.
MAX_VOXEL_SIZE = 10.0


@dataclass
class IntegrateStats:
    """What one :meth:`SemanticVoxelMap.integrate` did."""

    points_used: int = 0
    points_rejected: int = 0  # NaN/inf coordinates or probabilities, all-zero rows, outside the key range
    voxels_new: int = 0
    voxels_evicted: int = 0
    seconds: float = 0.0


@dataclass
class MapSnapshot:
    """A consistent copy of the map for publishing, saving and scoring (V voxels).

    centres (V, 3) float32 metres; labels (V,) int64 class indices 0..C-1;
    confidence (V,) float32 in [0, 1]; observations (V,) int64 points fused;
    scores (V, C) float32 fused evidence (None unless asked for); smoothing and
    smoothing_cell: the read-out settings that made labels and confidence.
    """

    centres: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    observations: np.ndarray
    voxel_size: float
    fusion: str
    scores: Optional[np.ndarray] = None
    smoothing: float = 0.0
    smoothing_cell: float = DEFAULT_CELL_M

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MapEvidence:
    """The stored evidence of a map at one version, in key order (V voxels), readable without the map.

    keys (V,) int64 packed grid keys, ascending (:func:`~safnet_ros.mapping.grid_keys.pack_keys`);
    scores (V, C) float32 fused evidence in the map's ``fusion`` rule;
    observations (V,) int64 points fused; voxel_size metres; smoothing and
    smoothing_cell: the read-out settings; version: the map version copied.
    """

    keys: np.ndarray
    scores: np.ndarray
    observations: np.ndarray
    voxel_size: float
    fusion: str
    smoothing: float
    smoothing_cell: float
    version: int

    @property
    def state(self) -> tuple:
        """(version, smoothing, smoothing_cell): what a read-out of this copy is valid for."""
        return (self.version, self.smoothing, self.smoothing_cell)

    def read(self) -> np.ndarray:
        """(V, C) float32 class distributions as read: each voxel's own fused distribution (rows sum to 1),
        blended with its neighbourhood's when ``smoothing`` > 0."""
        dist = self.scores.copy()
        if self.fusion == "count":
            dist /= np.maximum(dist.sum(axis=1, keepdims=True), np.float32(1e-12))
        else:  # log rule: a softmax of the (clamped) log sums
            dist -= dist.max(axis=1, keepdims=True)
            np.exp(dist, out=dist)
            dist /= dist.sum(axis=1, keepdims=True)
        if self.smoothing > 0 and len(dist):
            dist = neighbourhood_blend(unpack_keys(self.keys), dist,
                                       cell_voxels(self.smoothing_cell, self.voxel_size), self.smoothing)
        return dist

    def snapshot(self, dist: Optional[np.ndarray] = None, with_scores: bool = False) -> MapSnapshot:
        """The :class:`MapSnapshot` of this copy; ``dist`` (V, C) a read-out of it when already computed."""
        dist = self.read() if dist is None else dist
        labels = np.argmax(dist, axis=1).astype(np.int64)
        return MapSnapshot(
            centres=((unpack_keys(self.keys) + 0.5) * self.voxel_size).astype(np.float32), labels=labels,
            confidence=dist[np.arange(len(dist)), labels].astype(np.float32), observations=self.observations,
            voxel_size=self.voxel_size, fusion=self.fusion, scores=self.scores if with_scores else None,
            smoothing=self.smoothing, smoothing_cell=self.smoothing_cell)


class SemanticVoxelMap:
    """Voxels in the fixed frame fusing class probabilities (see the module docstring).

    voxel_size: edge, metres, in (0, 10]; max_voxels >= 1; fusion: "count" or
    "log"; evict_fraction: share of max_voxels freed by one eviction;
    smoothing: weight of the neighbourhood's mean distribution at read-out,
    in [0, 100] (0 = each voxel alone); smoothing_cell: the neighbourhood's
    coarse-cell edge, metres (at least 2 voxels are used).
    Raises ConfigError for bad settings.
    """

    def __init__(self, voxel_size: float = 0.04, max_voxels: int = 500_000, fusion: str = "count",
                 num_classes: int = NUM_CLASSES, evict_fraction: float = 0.1,
                 smoothing: float = DEFAULT_WEIGHT, smoothing_cell: float = DEFAULT_CELL_M):
        try:
            vs = float(voxel_size)
        except (TypeError, ValueError):
            raise ConfigError(f"map voxel size must be a number of metres, got {voxel_size!r}") from None
        if not (np.isfinite(vs) and 0.0 < vs <= MAX_VOXEL_SIZE):
            raise ConfigError(f"map voxel size must be in (0, {MAX_VOXEL_SIZE:g}] metres, got {voxel_size}")
        if isinstance(max_voxels, bool) or not isinstance(max_voxels, (int, np.integer)) or max_voxels < 1:
            raise ConfigError(f"map max_voxels must be an integer >= 1, got {max_voxels!r}")
        if fusion not in FUSION_RULES:
            raise ConfigError(f"map fusion rule must be one of {', '.join(FUSION_RULES)}, got {fusion!r}")
        if not 0.0 <= float(evict_fraction) < 1.0:
            raise ConfigError(f"map evict_fraction must be in [0, 1), got {evict_fraction}")
        check_smoothing(smoothing, smoothing_cell)
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.voxel_size = float(voxel_size)
        self.max_voxels = int(max_voxels)
        self.fusion = fusion
        self.num_classes = int(num_classes)
        self.evict_fraction = float(evict_fraction)
        self.smoothing = float(smoothing)
        self.smoothing_cell = float(smoothing_cell)
        self.points_rejected = 0
        self.voxels_evicted = 0
        #: most voxels the map ever held after an update (never above max_voxels)
        self.peak_voxels = 0
        self.clear()

    # ------------------------------------------------------------------ storage
    def clear(self) -> None:
        """Forget every voxel (the settings and the lifetime counters stay)."""
        self._n = 0  # live voxels
        self._hi = 0  # rows ever handed out (live + free)
        self._free = np.empty(0, np.int64)  # rows of evicted voxels, reused first
        self._keys = np.empty(0, np.int64)  # (cap,) key of each row
        self._centres = np.empty((0, 3), np.float64)  # (cap, 3) voxel centre of each row, metres (for eviction)
        self._centre_sq = np.empty(0, np.float64)  # (cap,) |centre|^2 of each row, m^2 (for eviction)
        self._scores = np.empty((0, self.num_classes), np.float32)  # (cap, C)
        self._obs = np.empty(0, np.int64)  # (cap,)
        self._alive = np.zeros(0, bool)  # (cap,) row holds a live voxel
        self._index = KeyIndex(self.max_voxels)  # key -> row of every live voxel
        self._order_version = -1  # map version that _order_rows/_order_keys were sorted for
        self._order_rows = np.empty(0, np.int64)
        self._order_keys = np.empty(0, np.int64)
        self._readout_state: Optional[tuple] = None  # (version, smoothing, cell) _readout_dist was computed for
        self._readout_dist = np.empty((0, self.num_classes), np.float32)
        self.last_sensor_origin: Optional[np.ndarray] = None
        self.version = getattr(self, "version", 0) + 1

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the map's arrays in use (the reserved max_voxels rows are only touched as they fill)."""
        row = self._keys.itemsize + self._scores.itemsize * self.num_classes + self._obs.itemsize + 24 + 8 + 1
        return int(self._n * row + self._index.nbytes)

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` rows: max_voxels rows at once (np.empty: pages are only touched as rows fill)."""
        if rows <= len(self._keys):
            return
        new_cap = max(rows, self.max_voxels)
        for name in ("_keys", "_centres", "_centre_sq", "_scores", "_obs", "_alive"):
            old = getattr(self, name)
            grown = (np.zeros if name == "_alive" else np.empty)((new_cap, *old.shape[1:]), old.dtype)
            grown[: self._hi] = old[: self._hi]
            setattr(self, name, grown)

    # ------------------------------------------------------------------ fusion
    def integrate(self, points: np.ndarray, probabilities: np.ndarray,
                  sensor_origin: Optional[np.ndarray] = None) -> IntegrateStats:
        """Fuse one cloud: points (N, 3) metres in the map's frame, probabilities (N, C) (rows ~ sum 1).

        sensor_origin (3,) metres: where the sensor was (eviction keeps what is
        near it); None = the centroid of the cloud. Rows that are not usable
        (non-finite coordinates or probabilities, all-zero probabilities, outside
        the key range) are left out and counted. Raises ConfigError for arrays
        of the wrong shape.
        """
        t0 = time.perf_counter()
        stats = IntegrateStats()
        points = np.asarray(points)
        probabilities = np.asarray(probabilities)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ConfigError(f"map points must be (N, 3), got {points.shape}")
        if probabilities.shape != (len(points), self.num_classes):
            raise ConfigError(f"map probabilities must be ({len(points)}, {self.num_classes}), "
                              f"got {probabilities.shape}")
        scaled = points.astype(np.float64) / self.voxel_size
        w = np.ascontiguousarray(probabilities, dtype=np.float32)  # (N, C)
        row_sum = w @ np.ones(self.num_classes, np.float32)  # NaN/inf anywhere in a row -> not finite
        ok = np.isfinite(row_sum) & (row_sum > 0)  # NaN fails every comparison
        if len(w) and not w.min() >= 0:  # a negative entry somewhere (rare): find its rows
            ok &= w.min(axis=1) >= 0
        lo, hi = (scaled.min(), scaled.max()) if len(scaled) else (0.0, 0.0)
        if not (-MAX_GRID_COORD < lo and hi < MAX_GRID_COORD):  # some coordinate is NaN, inf or out of range
            ok &= (np.abs(scaled) < MAX_GRID_COORD).all(axis=1)  # False for NaN/inf coordinates too
        stats.points_rejected = int(len(points) - ok.sum())
        self.points_rejected += stats.points_rejected
        if sensor_origin is not None:
            origin = np.asarray(sensor_origin, np.float64).reshape(3)
            if np.isfinite(origin).all():
                self.last_sensor_origin = origin
        if not ok.any():
            stats.seconds = time.perf_counter() - t0
            return stats
        if not ok.all():
            scaled, w = scaled[ok], w[ok]
        ijk = np.floor(scaled).astype(np.int64)
        if sensor_origin is None or self.last_sensor_origin is None:
            self.last_sensor_origin = (ijk.mean(axis=0) + 0.5) * self.voxel_size
        keys = pack_keys(ijk)
        if self.fusion == "log":
            w = np.log(np.maximum(w, np.float32(LOG_FLOOR)))
        ukeys, contrib, counts, order, starts = sum_by_key(keys, w)  # (U, C) sums per voxel
        stats.points_used = int(len(keys))

        # existing voxels (np.take: numpy's fancy-index gathers cost 2-4x more here)
        all_rows, hints = self._index.lookup_with_hints(ukeys)
        found = all_rows >= 0
        seen = np.flatnonzero(found)
        rows = np.take(all_rows, seen)
        self._scores[rows] = np.take(self._scores, rows, axis=0) + np.take(contrib, seen, axis=0)
        self._obs[rows] += np.take(counts, seen)
        if self.fusion == "log":
            self._normalise_log(rows)

        # new voxels: make room (evicting far voxels, never this cloud's), then insert
        new = np.flatnonzero(~found)
        if len(new):
            if len(new) > self.max_voxels:  # a cloud larger than the whole map: keep what is nearest
                centres = (unpack_keys(ukeys[new]) + 0.5) * self.voxel_size
                d = np.linalg.norm(centres - self.last_sensor_origin, axis=1)
                new = np.sort(new[np.argpartition(d, self.max_voxels - 1)[: self.max_voxels]])
            if self._n + len(new) > self.max_voxels:
                target = min(self.max_voxels - len(new), int(self.max_voxels * (1.0 - self.evict_fraction)))
                stats.voxels_evicted = self._evict(self._n - max(target, 0), protect=rows)
            first_point = np.take(order, np.take(starts, new))  # a point of each new voxel: its grid cell
            self._insert(np.take(ukeys, new), np.take(contrib, new, axis=0), np.take(counts, new),
                         hints.select(new), grid=np.take(ijk, first_point, axis=0))
            stats.voxels_new = int(len(new))
        self.version += 1
        self.peak_voxels = max(self.peak_voxels, self._n)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _normalise_log(self, rows: np.ndarray) -> None:
        """Keep log-rule rows at max 0 and clamped at LOG_CLAMP (bounded floats, the map can change its mind)."""
        if len(rows) == 0:
            return
        s = self._scores[rows]
        s -= s.max(axis=1, keepdims=True)
        np.maximum(s, np.float32(LOG_CLAMP), out=s)
        self._scores[rows] = s

    def _insert(self, keys: np.ndarray, contrib: np.ndarray, counts: np.ndarray,
                hints: Optional[tuple[np.ndarray, int]] = None, grid: Optional[np.ndarray] = None) -> None:
        """Rows for new (distinct, absent) keys, added to the index (hints: the index's free-slot hints;
        grid (k, 3) int64: the keys' grid coordinates when the caller has them, else unpacked)."""
        k = len(keys)
        reuse = min(k, len(self._free))
        fresh = k - reuse
        self._reserve(self._hi + fresh)
        rows = np.concatenate([self._free[len(self._free) - reuse:], np.arange(self._hi, self._hi + fresh)])
        self._free = self._free[: len(self._free) - reuse]
        self._hi += fresh
        self._keys[rows] = keys
        centres = ((unpack_keys(keys) if grid is None else grid) + 0.5) * self.voxel_size
        self._centres[rows] = centres
        self._centre_sq[rows] = np.einsum("ij,ij->i", centres, centres)
        self._scores[rows] = contrib
        self._obs[rows] = counts
        self._alive[rows] = True
        self._n += k
        if self.fusion == "log":
            self._normalise_log(rows)
        self._index.insert(keys, rows, *(hints or ()))

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (V,), keys (V,)) of the live voxels in ascending key order, sorted once per map version."""
        if self._order_version != self.version:
            rows = np.flatnonzero(self._alive[: self._hi])
            keys = self._keys[rows]
            order = np.argsort(keys, kind="stable")
            self._order_rows, self._order_keys = rows[order], keys[order]
            self._order_version = self.version
        return self._order_rows, self._order_keys

    def _evict(self, count: int, protect: np.ndarray) -> int:
        """Drop the ``count`` voxels farthest from the last sensor origin (rows in ``protect`` last).

        Rows are not moved: evicted rows go to a free list that the next inserts reuse,
        so an eviction costs one O(V) distance pass over the stored centres, not a
        copy of every voxel's scores; the index frees their slots by row, without probing.
        """
        n = self._n
        count = min(int(count), n)
        if count <= 0:
            return 0
        hi = self._hi
        origin = np.asarray(self.last_sensor_origin, np.float64)
        # squared distances of every row as |c|^2 - 2 c.o + |o|^2: one matrix-vector product, no (hi, 3)
        # difference; float64: at 50 km from the origin float32 would round this by hundreds of m^2
        d = self._centre_sq[:hi] - 2.0 * (self._centres[:hi] @ origin) + float(origin @ origin)
        np.maximum(d, 0.0, out=d)  # rounding can still dip a hair below 0: keep the markers below every row
        if len(protect):
            d[protect] = -1.0  # this cloud's voxels go last
        d[~self._alive[:hi]] = -2.0  # free rows never: count <= live voxels, which all rank above them
        drop = np.argpartition(d, hi - count)[hi - count:] if count < n else np.flatnonzero(self._alive[:hi])
        self._index.remove_rows(drop)
        self._alive[drop] = False
        self._free = np.concatenate([self._free, drop])
        self._n = n - count
        self.voxels_evicted += count
        return count

    # ------------------------------------------------------------------ reading
    def _read_state(self) -> tuple:
        """What the read-out depends on: (version, smoothing, smoothing_cell)."""
        return (self.version, self.smoothing, self.smoothing_cell)

    def evidence(self) -> "MapEvidence":
        """A copy of the stored evidence in key order, to be read without this map (see :class:`MapEvidence`).

        Costs a sort per map version and an O(V C) copy; the read-out itself
        (normalising and smoothing, the costly part) is left to the copy.
        """
        rows, keys = self._sorted()
        return MapEvidence(keys=keys.copy(), scores=np.take(self._scores, rows, axis=0),
                           observations=np.take(self._obs, rows), voxel_size=self.voxel_size,
                           fusion=self.fusion, smoothing=self.smoothing, smoothing_cell=self.smoothing_cell,
                           version=self.version)

    def snapshot_outside(self, lock: "AbstractContextManager[Any]", with_scores: bool = False) -> MapSnapshot:
        """:meth:`snapshot` for a map shared between threads, holding ``lock`` only to copy.

        Under the lock: a copy of the evidence (:meth:`evidence`) and the
        cached read-out when it is current. A stale read-out is computed with the
        lock released, so that the thread fusing clouds is not held up by the
        smoothing of a large map, and handed back to the map's cache when the map
        has not changed meanwhile.
        """
        with lock:
            evidence = self.evidence()
            dist = self._readout_dist if self._readout_state == evidence.state else None
        if dist is None:
            dist = evidence.read()
            with lock:
                if self._readout_state != evidence.state and self._read_state() == evidence.state:
                    self._readout_dist, self._readout_state = dist, evidence.state
        return evidence.snapshot(dist, with_scores=with_scores)

    def forget_readout(self) -> None:
        """Drop the cached read-out, so that the next reader computes it again (for timing it)."""
        self._readout_state = None

    def snapshot(self, with_scores: bool = False) -> MapSnapshot:
        """A consistent copy of the map (take it under the owner's lock, or use :meth:`snapshot_outside`).

        The read-out (:meth:`MapEvidence.read`, the costly part) is cached per :meth:`_read_state`.
        """
        evidence = self.evidence()
        if self._readout_state != evidence.state:
            self._readout_dist, self._readout_state = evidence.read(), evidence.state
        return evidence.snapshot(self._readout_dist, with_scores=with_scores)

    # ------------------------------------------------------------------ restoring
    def load_voxels(self, centres: np.ndarray, scores: np.ndarray, observations: np.ndarray) -> None:
        """Replace the map's content by V voxels: centres (V, 3) m, scores (V, C) in this map's rule, observations (V,).

        Centres are snapped to this map's grid; voxels sharing a grid cell are
        merged (scores and observations added). ConfigError for wrong shapes,
        non-finite values or more than max_voxels voxels.
        """
        centres = np.asarray(centres, np.float64)
        scores = np.asarray(scores, np.float32)
        observations = np.asarray(observations, np.int64).reshape(-1)
        v = len(centres)
        if centres.shape != (v, 3) or scores.shape != (v, self.num_classes) or observations.shape != (v,):
            raise ConfigError(f"map voxels must be centres (V, 3), scores (V, {self.num_classes}) and "
                              f"observations (V,), got {centres.shape}, {scores.shape}, {observations.shape}")
        if not (np.isfinite(centres).all() and np.isfinite(scores).all()):
            raise ConfigError("map voxels hold NaN or inf centres or scores")
        if (observations < 0).any():
            raise ConfigError("map voxels hold negative observation counts")
        self.clear()
        if v == 0:
            return
        scaled = np.floor(centres / self.voxel_size)
        if not (np.abs(scaled) < MAX_GRID_COORD).all():  # before the cast: 1e30 would wrap around int64
            far = float(np.abs(centres).max())
            raise ConfigError(f"map voxel centres lie outside the +-{MAX_GRID_COORD * self.voxel_size:.0f} m grid "
                              f"(up to {far:g} m)")
        ijk = scaled.astype(np.int64)
        keys = pack_keys(ijk)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        if len(starts) > self.max_voxels:
            raise ConfigError(f"the map holds {len(starts)} voxels, more than max_voxels {self.max_voxels}")
        self._insert(sk[starts], np.add.reduceat(scores[order], starts, axis=0),
                     np.add.reduceat(observations[order], starts))
        self.last_sensor_origin = centres.mean(axis=0)
        self.version += 1
