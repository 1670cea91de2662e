"""Which camera frames see which points, and greedy view selection per chunk.

docs/design.md §2.5 (after MVPNet): a point is *covered* by a frame when a pixel of that frame
back-projects within ``tol`` = 0.1 m of it; per chunk, up to k frames are chosen
greedily, each time the frame covering the most not-yet-covered base points.

Two ways to compute coverage (:func:`coverage_matrix`, ``method=``):

* ``"projection"`` (default, fast): the depth test of
  :func:`safnet_ros.geometry.camera.visible` on the point's nearest pixel, whose
  back-projected point lies on the point's own viewing ray up to half a pixel
  sideways, so on smooth surfaces the two criteria agree. They differ near the
  tolerance boundary, at depth discontinuities, grazing surfaces and the image
  border, where a *neighbouring* pixel may be within tol while the nearest one is not.
* ``"kdtree"`` (exact, slower): back-project every valid pixel and ask a KD-tree
  for the nearest one within ``tol``. Used by the tests to check the approximation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.spatial import cKDTree

from safnet_ros.errors import ConfigError, DataFormatError
from safnet_ros.geometry.camera import backproject, visible

__all__ = ["coverage_matrix", "greedy_select"]


def _unpack_view(view: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth, K, camera_to_world) from a tuple or an object with those attributes (PosedView)."""
    if hasattr(view, "depth") and hasattr(view, "K") and hasattr(view, "camera_to_world"):
        return view.depth, view.K, view.camera_to_world
    try:
        depth, K, pose = view
    except (TypeError, ValueError):
        raise ConfigError("a view must be (depth (H, W), K (3, 3), camera_to_world (4, 4))") from None
    return depth, K, pose


def coverage_matrix(
    points,
    views: Sequence[Any],
    tol: float = 0.1,
    method: str = "projection",
    min_depth: float = 0.1,
    max_depth: float = 10.0,
) -> np.ndarray:
    """(V, N) bool: ``[v, i]`` is True when view v covers point i (see the module docstring).

    points (N, 3) world metres; views: sequence of ``(depth (H, W) metres, K (3, 3),
    camera_to_world (4, 4))`` (or objects with ``.depth``, ``.K``, ``.camera_to_world``);
    ``tol`` metres; ``method`` "projection" (depth test) or "kdtree" (exact);
    depths outside ``[min_depth, max_depth]`` count as missing, as in back-projection.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataFormatError(None, f"points must be (N, 3), got shape {pts.shape}")
    if not tol >= 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    if method not in ("projection", "kdtree"):
        raise ConfigError(f"coverage method must be 'projection' or 'kdtree', got {method!r}")
    views = list(views)
    out = np.zeros((len(views), len(pts)), dtype=bool)
    if len(pts) == 0:
        return out
    for v, view in enumerate(views):
        depth, K, pose = _unpack_view(view)
        if method == "projection":
            out[v] = visible(pts, depth, K, pose, tol=tol, min_depth=min_depth, max_depth=max_depth)
        else:
            q, _ = backproject(depth, K, pose, min_depth=min_depth, max_depth=max_depth)
            if len(q) == 0:
                continue
            dist, _ = cKDTree(q.astype(np.float64)).query(pts, k=1, distance_upper_bound=tol * (1 + 1e-9) + 1e-12)
            # float32 storage of q moves points by ~1e-7 m: accept that slack at the boundary.
            out[v] = dist <= tol + 1e-6
    return out


def greedy_select(coverage, k: int) -> list[int]:
    """Greedy view selection: up to ``k`` view indices into ``coverage`` (V, N) bool.

    Each step takes the view covering the most not-yet-covered points (ties -> the
    lower index); stops early, returning fewer than k, when no view adds a new point
    (so a view that covers nothing is never chosen). The first pick is the best
    single view, and the union is at least (1 - 1/e) of the best k-view union.
    """
    cov = np.asarray(coverage)
    if cov.ndim != 2:
        raise ConfigError(f"coverage must be a (V, N) matrix, got shape {cov.shape}")
    cov = cov.astype(bool, copy=False)
    V, N = cov.shape
    chosen: list[int] = []
    if V == 0 or N == 0 or k <= 0:
        return chosen
    remaining = np.ones(N, dtype=bool)
    for _ in range(min(int(k), V)):
        gains = np.count_nonzero(cov & remaining, axis=1)
        best = int(np.argmax(gains))
        if gains[best] == 0:
            break
        chosen.append(best)
        remaining &= ~cov[best]
    return chosen
