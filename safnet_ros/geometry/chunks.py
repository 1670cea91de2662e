"""Chunks of a scene (1.5 x 1.5 m columns in xy, all heights) and voting over them.

docs/design.md §2.5 / the paper (after MVPNet): the network sees chunks of 1.5 x 1.5 m in xy
with the full height of the room; at test time chunks overlap with a 0.5 m stride
and each point's prediction is a vote over the chunks containing it.

* :func:`chunk_grid` tiles the cloud for inference: **every point lies in at least
  one returned chunk**;
* :func:`random_chunk` / :func:`sample_points` draw training chunks;
* :class:`VoteAccumulator` sums per-point class scores over the chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.errors import ConfigError, DataFormatError

__all__ = ["Chunk", "chunk_grid", "random_chunk", "sample_points", "VoteAccumulator"]

#: Default smallest chunk (points) that :func:`chunk_grid` keeps as a chunk of its own.
DEFAULT_MIN_POINTS = 100


@dataclass
class Chunk:
    """One chunk: ``index`` (n,) int64 into the cloud, ``center`` (2,) float64 xy metres of its box.

    ``merged`` counts points added from dropped small chunks (they may lie outside
    the ``size`` box around ``center``).
    """

    index: np.ndarray
    center: np.ndarray
    merged: int = 0

    def __len__(self) -> int:
        return len(self.index)


def _check_xyz(xyz) -> np.ndarray:
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise DataFormatError(None, f"points must be (N, 3), got shape {pts.shape}")
    xy = pts[:, :2].astype(np.float64)
    bad = ~np.all(np.isfinite(xy), axis=1)
    if bad.any():
        raise DataFormatError(None, f"{int(bad.sum())} of {len(pts)} points have non-finite coordinates")
    return xy


def _axis_grid(lo: float, hi: float, size: float, stride: float) -> tuple[float, int]:
    """Start and count of windows ``[s + i*stride, s + i*stride + size]`` covering [lo, hi], centred."""
    n = max(1, int(np.ceil((hi - lo - size) / stride - 1e-9)) + 1)
    overhang = (n - 1) * stride + size - (hi - lo)
    return lo - overhang / 2.0, n


def _axis_members(x: np.ndarray, start: float, n: int, size: float, stride: float) -> tuple[np.ndarray, np.ndarray]:
    """For each coordinate, the inclusive range [first, last] of windows containing it.

    ``last`` is clipped into [0, n-1] and ``first`` into [0, last], so every coordinate
    belongs to at least window ``last`` even under rounding.
    """
    rel = x - start
    last = np.clip(np.floor(rel / stride).astype(np.int64), 0, n - 1)
    first = np.clip(np.ceil((rel - size) / stride).astype(np.int64), 0, None)
    return np.minimum(first, last), last


def chunk_grid(
    xyz,
    size: float = 1.5,
    stride: float = 0.5,
    min_points: int = DEFAULT_MIN_POINTS,
    small: str = "merge",
) -> list[Chunk]:
    """Overlapping xy chunks covering every point of ``xyz`` (N, 3) metres (z is not limited).

    Boxes of ``size`` x ``size`` metres on a grid with step ``stride`` (<= size), the
    grid centred on the cloud's xy bounding box; a point belongs to every box that
    contains it (boundaries inclusive), i.e. ``(size/stride)^2`` chunks inside the cloud
    (one more box per axis for a point exactly on box edges).
    Empty boxes are dropped. Boxes with fewer than ``min_points`` points:

    * ``small="merge"`` (default): dropped; the points they held that are in no kept
      chunk are added to the kept chunk with the nearest centre (``Chunk.merged``
      counts them). If no box reaches ``min_points`` the fullest box is kept (so a
      small cloud becomes one chunk).
    * ``small="keep"``: kept as they are.

    Either way every point is in at least one chunk. Chunks are ordered row-major by
    (x, y) grid cell; indices within a chunk are ascending (merged points appended).
    """
    if not (size > 0 and stride > 0):
        raise ConfigError(f"chunk size and stride must be > 0, got {size}, {stride}")
    if stride > size:
        raise ConfigError(f"chunk stride {stride} > size {size} would leave gaps between chunks")
    if small not in ("merge", "keep"):
        raise ConfigError(f"small must be 'merge' or 'keep', got {small!r}")
    xy = _check_xyz(xyz)
    N = len(xy)
    if N == 0:
        return []
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    sx, nx = _axis_grid(lo[0], hi[0], size, stride)
    sy, ny = _axis_grid(lo[1], hi[1], size, stride)
    fx, lx = _axis_members(xy[:, 0], sx, nx, size, stride)
    fy, ly = _axis_members(xy[:, 1], sy, ny, size, stride)

    # (chunk id, point) membership pairs, point-major so that points stay ascending;
    # at most ceil(size/stride)+1 boxes per axis contain a point.
    reach = int(np.ceil(size / stride)) + 1
    cell = np.full((N, reach, reach), -1, dtype=np.int64)
    for a in range(reach):
        ix = fx + a
        for b in range(reach):
            iy = fy + b
            cell[:, a, b] = np.where((ix <= lx) & (iy <= ly), ix * ny + iy, -1)
    cell = cell.reshape(N, -1)
    valid = cell >= 0
    ids_all = cell[valid]
    pts_all = np.broadcast_to(np.arange(N, dtype=np.int64)[:, None], cell.shape)[valid]
    # stable sort by chunk id (radix sort for 16-bit keys) keeps points ascending per chunk.
    key = ids_all.astype(np.uint16) if nx * ny <= np.iinfo(np.uint16).max else ids_all
    order = np.argsort(key, kind="stable")
    ids_all, pts_all = ids_all[order], pts_all[order]
    starts = np.flatnonzero(np.r_[True, ids_all[1:] != ids_all[:-1]])
    cell_ids = ids_all[starts]
    counts = np.diff(np.r_[starts, len(ids_all)])
    centers = np.stack(
        [sx + (cell_ids // ny) * stride + size / 2.0, sy + (cell_ids % ny) * stride + size / 2.0], axis=1
    )
    keep = counts >= max(1, int(min_points)) if small == "merge" else counts > 0
    if not keep.any():  # nothing reaches min_points: keep the fullest box, merge the rest into it
        keep[int(np.argmax(counts))] = True

    chunks = [
        Chunk(index=pts_all[s:s + c].copy(), center=centers[i])
        for i, (s, c, k) in enumerate(zip(starts, counts, keep)) if k
    ]
    if small == "merge":
        in_kept = np.zeros(N, dtype=bool)
        for ch in chunks:
            in_kept[ch.index] = True
        orphans = np.flatnonzero(~in_kept)
        if len(orphans):
            kept_centers = np.stack([ch.center for ch in chunks])
            # nearest kept centre per orphan; blocks keep the (orphans x chunks) matrix small.
            target = np.empty(len(orphans), dtype=np.int64)
            for s in range(0, len(orphans), 65536):
                d = xy[orphans[s:s + 65536], None, :] - kept_centers[None, :, :]
                target[s:s + 65536] = np.argmin((d ** 2).sum(-1), axis=1)
            for t in np.unique(target):
                extra = orphans[target == t]
                chunks[t].index = np.concatenate([chunks[t].index, extra])
                chunks[t].merged = len(extra)
    return chunks


def random_chunk(
    xyz,
    size: float = 1.5,
    rng: Optional[np.random.Generator] = None,
    min_points: int = DEFAULT_MIN_POINTS,
    max_tries: int = 10,
    candidates: Optional[np.ndarray] = None,
) -> Optional[Chunk]:
    """A training chunk: the ``size`` x ``size`` m xy box (all z) centred on a random point.

    ``candidates`` (optional (K,) int64) restricts which points may be the centre (e.g.
    labelled ones). Chunks with fewer than ``min_points`` points are rejected and a new
    centre drawn, up to ``max_tries`` times; returns None when every try was rejected
    (the caller counts/handles that). ``index`` is ascending.
    """
    if not size > 0:
        raise ConfigError(f"chunk size must be > 0, got {size}")
    if max_tries < 1:
        raise ConfigError(f"max_tries must be >= 1, got {max_tries}")
    xy = _check_xyz(xyz)
    rng = rng if rng is not None else np.random.default_rng()
    pool = np.arange(len(xy)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if len(xy) == 0 or len(pool) == 0:
        return None
    half = size / 2.0
    for _ in range(max_tries):
        center = xy[int(pool[rng.integers(len(pool))])]
        inside = np.all(np.abs(xy - center) <= half, axis=1)
        if np.count_nonzero(inside) >= max(1, int(min_points)):
            return Chunk(index=np.flatnonzero(inside).astype(np.int64), center=center.copy())
    return None


def sample_points(index, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``n`` entries of ``index`` (k,) in random order: without replacement when k >= n;
    otherwise every entry once plus ``n - k`` drawn with replacement. Returns (n,) int64.
    """
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if n < 1:
        raise ConfigError(f"number of points to sample must be >= 1, got {n}")
    if len(idx) == 0:
        raise ConfigError("cannot sample points from an empty chunk")
    rng = rng if rng is not None else np.random.default_rng()
    if len(idx) >= n:
        return idx[rng.choice(len(idx), n, replace=False)]
    extra = idx[rng.integers(len(idx), size=n - len(idx))]
    return rng.permutation(np.concatenate([idx, extra]))


class VoteAccumulator:
    """Per-point class votes accumulated over overlapping chunks.

    ``mode="soft"`` (default; MVPNet-style): sum the class probabilities of every
    prediction of a point; the label is the argmax of the sum. ``mode="majority"``:
    each prediction votes for its argmax class; the label is the most voted class.
    Ties go to the lower class index. Every row passed to :meth:`add` counts as one
    prediction (a point sampled twice in one chunk votes twice).
    Memory: (num_points, num_classes) float32 (+ int32 in majority mode).
    """

    def __init__(self, num_points: int, num_classes: int, mode: str = "soft"):
        if num_points < 0 or num_classes < 1:
            raise ConfigError(f"need num_points >= 0 and num_classes >= 1, got {num_points}, {num_classes}")
        if mode not in ("soft", "majority"):
            raise ConfigError(f"vote mode must be 'soft' or 'majority', got {mode!r}")
        self.num_points = int(num_points)
        self.num_classes = int(num_classes)
        self.mode = mode
        self.prob_sum = np.zeros((self.num_points, self.num_classes), dtype=np.float32)
        self.counts = np.zeros(self.num_points, dtype=np.int64)
        self.hard = np.zeros((self.num_points, self.num_classes), dtype=np.int32) if mode == "majority" else None

    def add(self, index, scores, kind: str = "auto") -> None:
        """Add predictions ``scores`` (n, C) for points ``index`` (n,) (duplicates allowed).

        ``kind``: "probs" (rows are probabilities), "logits" (softmax is applied), or
        "auto": probabilities when every value is in [0, 1] and every row sums to 1
        (within 1e-3), logits otherwise.
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape != (len(idx), self.num_classes):
            raise ConfigError(f"scores must be ({len(idx)}, {self.num_classes}), got {s.shape}")
        if len(idx) == 0:
            return
        if idx.min() < 0 or idx.max() >= self.num_points:
            raise ConfigError(f"point index out of range [0, {self.num_points}): {idx.min()}..{idx.max()}")
        if not np.all(np.isfinite(s)):
            raise ConfigError("scores contain non-finite values")
        if kind not in ("auto", "probs", "logits"):
            raise ConfigError(f"kind must be 'auto', 'probs' or 'logits', got {kind!r}")
        if kind == "auto":
            is_probs = s.min() >= 0 and s.max() <= 1 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3)
            kind = "probs" if is_probs else "logits"
        if kind == "logits":
            e = np.exp(s - s.max(axis=1, keepdims=True))
            s = e / e.sum(axis=1, keepdims=True)
        added = np.bincount(idx, minlength=self.num_points)
        if added.max() <= 1:  # no duplicates (a chunk's points): plain fancy indexing, ~10x np.add.at's speed
            self.prob_sum[idx] += s.astype(np.float32)
        else:
            np.add.at(self.prob_sum, idx, s.astype(np.float32))
        self.counts += added
        if self.hard is not None:
            np.add.at(self.hard, (idx, np.argmax(s, axis=1)), 1)

    @property
    def num_unvoted(self) -> int:
        """Number of points that no chunk predicted (they get IGNORE_INDEX)."""
        return int(np.count_nonzero(self.counts == 0))

    def probabilities(self) -> np.ndarray:
        """(N, C) float32 mean probabilities over each point's predictions (zeros if unvoted)."""
        return (self.prob_sum / np.maximum(self.counts, 1)[:, None]).astype(np.float32)

    def labels(self) -> np.ndarray:
        """(N,) int64 winning class per point; IGNORE_INDEX where no chunk voted."""
        score = self.hard if self.hard is not None else self.prob_sum
        out = np.argmax(score, axis=1).astype(np.int64)
        out[self.counts == 0] = IGNORE_INDEX
        return out

    def confidence(self) -> np.ndarray:
        """(N,) float32 mean probability of the winning class (see :meth:`labels`); 0 where unvoted."""
        lab = self.labels()
        voted = lab != IGNORE_INDEX
        out = np.zeros(self.num_points, dtype=np.float32)
        rows = np.flatnonzero(voted)
        out[rows] = self.prob_sum[rows, lab[rows]] / self.counts[rows]
        return out
