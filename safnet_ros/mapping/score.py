"""Score a semantic map against a scene's labelled mesh (``safnet map score``, the demo).

Each mesh vertex takes the label of the nearest voxel centre within
``max_distance`` metres (default: one voxel edge; a vertex inside a voxel is at
most 0.87 edges from its centre); vertices with no voxel that near are
*uncovered*. With :class:`~safnet_ros.engine.metrics.ConfusionMatrix` (the
code of ``safnet eval``):

* ``miou`` / ``oa`` over the covered vertices (as the demo scores its votes),
* ``miou_all_vertices``: uncovered vertices counted as misses of their class,
* ``coverage``: covered vertices / all vertices (like the demo's coverage).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from safnet_ros.data.labels import IGNORE_INDEX, nyu40_to_class
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.engine.metrics import ConfusionMatrix
from safnet_ros.errors import ConfigError
from safnet_ros.mapping.voxel_map import MapSnapshot


def transfer_labels(snap: MapSnapshot, vertices: np.ndarray, max_distance: Optional[float] = None) -> np.ndarray:
    """(N,) int64 class of the nearest voxel within ``max_distance`` m of each vertex (N, 3); -1 where none."""
    vertices = np.asarray(vertices, np.float64).reshape(-1, 3)
    dist_max = snap.voxel_size if max_distance is None else float(max_distance)
    if not (np.isfinite(dist_max) and dist_max > 0):
        raise ConfigError(f"--max-distance must be a positive number of metres, got {max_distance}")
    out = np.full(len(vertices), -1, np.int64)
    if len(snap) == 0 or len(vertices) == 0:
        return out
    finite = np.isfinite(vertices).all(axis=1)
    dist, idx = cKDTree(snap.centres.astype(np.float64)).query(vertices[finite], distance_upper_bound=dist_max)
    hit = np.isfinite(dist)
    rows = np.flatnonzero(finite)[hit]
    out[rows] = snap.labels[idx[hit]]
    return out


def score_labels(truth: np.ndarray, labels: np.ndarray) -> dict:
    """mIoU / OA over the vertices with a label (labels >= 0), coverage and mIoU with misses; (N,) each."""
    truth = np.asarray(truth).astype(np.int64)
    labels = np.asarray(labels).astype(np.int64)
    has = labels >= 0
    cm = ConfusionMatrix()
    cm.add(truth[has], labels[has])
    out = cm.summary()
    full = ConfusionMatrix()
    full.add(truth, np.where(has, labels, IGNORE_INDEX))
    out["miou_all_vertices"] = full.miou()
    out["labelled_vertices"] = int(has.sum())
    out["vertices"] = int(len(has))
    out["coverage"] = float(has.mean()) if len(has) else 0.0
    return out


def score_map_on_scene(snap: MapSnapshot, scene_dir: str | os.PathLike, max_distance: Optional[float] = None) -> dict:
    """Score ``snap`` on the labelled mesh of a ScanNet scene folder (axis-aligned frame = the bags' ``map``)."""
    with ScanNetScene(scene_dir) as scene:
        xyz, _rgb = scene.load_points(aligned=True)
        truth = nyu40_to_class(scene.load_nyu40()).astype(np.int64)
    labels = transfer_labels(snap, xyz, max_distance)
    out = score_labels(truth, labels)
    out.update(voxels=len(snap), voxel_size=snap.voxel_size, fusion=snap.fusion, smoothing=snap.smoothing,
               smoothing_cell=snap.smoothing_cell,
               max_distance=snap.voxel_size if max_distance is None else float(max_distance))
    return out
