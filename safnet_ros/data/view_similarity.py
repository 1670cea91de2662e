"""S view by view: the model's similarity for each (vertex, view) sighting, with that view alone.

In use, S pools the back-projected points of all of a chunk's views, so one view
that still sees a moved object in place hides the others' mismatch
(docs/synthetic_data.md). Here the Segmenter runs once per view, with that view
as the only one, and keeps S of every vertex the view sees: a (views, vertices)
matrix of sightings, for ``safnet data stats --model``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def similarity_per_view(segmenter: Any, xyz: np.ndarray, views: Sequence[Any], seen: np.ndarray) -> np.ndarray:
    """(V, N) float32: S of vertex n when ``segmenter`` is given view v alone; NaN where v does not see n.

    xyz (N, 3) metres in the views' world frame; views: V PosedViews; seen
    (V, N) bool, which view sees which vertex (:func:`~safnet_ros.data.stats.view_sightings`).
    A sighting the Segmenter leaves unsegmented or without a finite S stays NaN.
    One whole segmentation per view (a loop over views, never over points).
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    seen = np.asarray(seen, dtype=bool)
    if seen.shape != (len(views), len(xyz)):
        raise ValueError(f"seen must be (views, vertices) = ({len(views)}, {len(xyz)}), got {seen.shape}")
    s = np.full(seen.shape, np.nan, np.float32)
    for k, view in enumerate(views):
        if not seen[k].any():
            continue
        result = segmenter.segment(xyz, [view])
        ok = seen[k] & result.segmented & np.isfinite(result.s)
        s[k, ok] = result.s[ok]
    return s


def _row(values: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Sightings, vertices and mean S of the sightings in ``mask`` ((V, N) bool)."""
    picked = values[mask]
    return {"sightings": int(mask.sum()), "vertices": int(mask.any(axis=0).sum()),
            "s_mean": float(picked.mean()) if len(picked) else float("nan")}


def sighting_groups(s: np.ndarray, through: np.ndarray, moved: np.ndarray,
                    counted: np.ndarray) -> dict[str, np.ndarray]:
    """The (V, N) bool masks of the sighting groups of :func:`sighting_rows` (same arguments), by row name."""
    has = np.isfinite(np.asarray(s, dtype=np.float64))
    through = np.asarray(through, dtype=bool) & has
    moved = np.asarray(moved, dtype=bool)
    counted = np.asarray(counted, dtype=bool)
    static_v, moved_v = counted & ~moved, counted & moved
    return {"static": has & static_v, "moved": has & moved_v, "moved_through": through & moved_v,
            "moved_in_place": has & ~through & moved_v, "static_through": through & static_v}


def sighting_rows(s: np.ndarray, through: np.ndarray, moved: np.ndarray, counted: np.ndarray,
                  classes: np.ndarray) -> dict[str, Any]:
    """Mean S per group of sightings: the figures of ``safnet data stats --model`` under ``"per_view"``.

    s (V, N) from :func:`similarity_per_view` (NaN: no sighting); through
    (V, N) bool, sightings whose depth lies > 10 cm beyond the vertex (the view
    sees free space where the mesh has a surface); moved (N,) bool, vertices
    of moved objects; counted (N,) bool, vertices to count (annotated, in the
    benchmark classes); classes (N,) class indices. Rows: ``static``,
    ``moved``, ``moved_through`` / ``moved_in_place`` (moved sightings that
    see through the vertex / that do not), ``static_through``, and
    ``static_same_classes``: static sightings of the classes the moved
    sightings have, weighted to their class mix (moved objects are furniture,
    most static vertices walls and floors, and S differs by class; the
    per-vertex rule of :func:`~safnet_ros.data.stats.class_matched_similarity`
    applied to sightings).
    """
    # data.stats imports this module (S per view for its table): at the top this would be an import cycle
    from safnet_ros.data.stats import class_matched_similarity  # noqa: PLC0415

    s = np.asarray(s, dtype=np.float64)
    groups = sighting_groups(s, through, moved, counted)
    rows: dict[str, Any] = {name: _row(s, mask) for name, mask in groups.items()}
    seen = groups["static"] | groups["moved"]  # every counted sighting, flattened below: one entry each
    same = class_matched_similarity(np.broadcast_to(np.asarray(classes), s.shape)[seen], groups["moved"][seen],
                                    groups["static"][seen], {"s": s[seen]})
    rows["static_same_classes"] = {"classes": same["classes"], "moved_sightings": same["moved_vertices"],
                                   "s_mean": same["s_mean"], "s_moved_mean": same["s_moved_mean"]}
    return rows


def vertex_mean(s: np.ndarray) -> np.ndarray:
    """(N,) float32 each vertex's mean S over the views that see it (NaN when none does): for pictures."""
    s = np.asarray(s, dtype=np.float64)
    count = np.isfinite(s).sum(axis=0)
    total = np.where(np.isfinite(s), s, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
