"""Labelled clouds voted per mesh vertex: the demo's yardstick.

:class:`VertexVotes` matches each labelled point back to the scene vertex it
came from (nearest distinct position within :data:`MATCH_TOLERANCE_M`) and
counts the labels every vertex received; ``safnet demo`` scores the majority
vote with :func:`safnet_ros.mapping.score.score_labels`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

#: A labelled point is the scene vertex nearest to it within this distance (metres).
MATCH_TOLERANCE_M = 1e-3


@dataclass
class VertexVotes:
    """Labels voted per scene vertex from labelled clouds whose points are (copies of) those vertices.

    vertices (N, 3) metres in the clouds' frame; num_classes C.  Vertices at
    the same position (a mesh's seams) share their votes: a cloud point matches
    a position, not one of its copies.  ``counts`` (P, C) int64 votes per
    distinct position; ``similarity_sum``/``similarity_n`` (P,) for the mean S.
    """

    vertices: np.ndarray
    num_classes: int
    counts: np.ndarray = field(init=False)
    similarity_sum: np.ndarray = field(init=False)
    similarity_n: np.ndarray = field(init=False)
    points_matched: int = 0
    points_unmatched: int = 0
    points_not_segmented: int = 0

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        positions, inverse = np.unique(self.vertices, axis=0, return_inverse=True)
        self._position_of_vertex = inverse.reshape(-1)  # (N,) index into positions
        self._tree = cKDTree(positions)
        p = len(positions)
        self.counts = np.zeros((p, self.num_classes), dtype=np.int64)
        self.similarity_sum = np.zeros(p, dtype=np.float64)
        self.similarity_n = np.zeros(p, dtype=np.int64)

    @property
    def num_positions(self) -> int:
        """P, the number of distinct vertex positions (rows of ``counts``)."""
        return len(self.counts)

    def positions_of(self, xyz: np.ndarray) -> np.ndarray:
        """(M,) int64 index of the distinct position each point of ``xyz`` (M, 3) metres matches within
        :data:`MATCH_TOLERANCE_M`; -1 for a point that matches none (or is not finite)."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        out = np.full(len(xyz), -1, dtype=np.int64)
        finite = np.isfinite(xyz).all(axis=1)
        if finite.any():
            dist, idx = self._tree.query(xyz[finite], distance_upper_bound=MATCH_TOLERANCE_M)
            out[finite] = np.where(np.isfinite(dist), idx, -1)
        return out

    def per_vertex(self, per_position: np.ndarray) -> np.ndarray:
        """A (P, ...) array over distinct positions spread to the (N, ...) vertices."""
        return np.asarray(per_position)[self._position_of_vertex]

    def add(self, xyz: np.ndarray, labels: np.ndarray, similarity: Optional[np.ndarray] = None) -> None:
        """One cloud: xyz (M, 3) metres, labels (M,) class indices (>= C: not segmented), similarity (M,)."""
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        p, k = self.counts.shape
        idx = self.positions_of(xyz)
        matched = idx >= 0
        self.points_unmatched += int((~matched).sum())
        self.points_matched += int(matched.sum())
        segmented = matched & (labels >= 0) & (labels < self.num_classes)
        self.points_not_segmented += int((matched & ~segmented).sum())
        v, c = idx[segmented], labels[segmented]
        self.counts += np.bincount(v * k + c, minlength=p * k).reshape(p, k)
        if similarity is not None:
            s = np.asarray(similarity, dtype=np.float64).reshape(-1)[segmented]
            ok = np.isfinite(s)
            self.similarity_sum += np.bincount(v[ok], weights=s[ok], minlength=p)
            self.similarity_n += np.bincount(v[ok], minlength=p)

    def labels(self, ties: str = "lowest", seed: int = 0) -> np.ndarray:
        """(N,) int64 majority class per vertex; -1 where none was received.

        ties: how a vertex whose top count is shared by several classes is
        decided: "lowest" (the lower class index, numpy's argmax; the demo's
        ``miou``) or "random" (uniformly among the tied classes, seeded).
        """
        counts = self.counts
        if ties == "random":
            top = counts == counts.max(axis=1, keepdims=True)
            counts = counts + top * np.random.default_rng(seed).random(counts.shape) * 0.5
        elif ties != "lowest":
            raise ValueError(f"ties must be 'lowest' or 'random', got {ties!r}")
        per_position = np.where(self.counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
        return self.per_vertex(per_position)

    def tied(self) -> np.ndarray:
        """(N,) bool: labelled vertices whose top vote count is shared by two or more classes."""
        top = self.counts == self.counts.max(axis=1, keepdims=True)
        per_position = (self.counts.sum(axis=1) > 0) & (top.sum(axis=1) > 1)
        return self.per_vertex(per_position)

    def similarity(self) -> np.ndarray:
        """(N,) mean similarity S per vertex; NaN where none was received."""
        n = self.similarity_n
        with np.errstate(invalid="ignore", divide="ignore"):
            per_position = np.where(n > 0, self.similarity_sum / np.maximum(n, 1), np.nan)
        return self.per_vertex(per_position)
