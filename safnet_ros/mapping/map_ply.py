"""Save a :class:`SemanticVoxelMap` as a PLY point cloud and load it back.

Layout (binary little endian, one ``vertex`` per voxel, no faces)::

    comment safnet_ros semantic voxel map
    comment voxel_size 0.05
    comment fusion count
    comment smoothing 1.0              read-out neighbourhood weight (absent in older files: 0)
    comment smoothing_cell 0.16        its coarse cell, metres
    comment frame map
    property float x, y, z             voxel centre, metres, in the map's fixed frame
    property uchar red, green, blue    ScanNet colour of the voxel's class
    property ushort label              nyu40 id of the class (as ScanNet's .labels.ply)
    property float confidence          0..1 (see voxel_map: mean probability / posterior)
    property uint observations         points fused into the voxel
    property float score_00 .. score_19  the fused evidence per class (restores the map exactly)

open3d (``read_point_cloud``: points and colours) and
:func:`safnet_ros.data.ply.read_ply` read it. :func:`load_map` needs
x, y, z, label, confidence and observations; without the ``score_*``
properties (a PLY from another tool) the evidence is rebuilt from label,
confidence and observations. The file is written next to its destination and
renamed into place, so a failed save never leaves a half-written map.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from safnet_ros.data.labels import IGNORE_INDEX, NUM_CLASSES, class_colors, class_to_nyu40, nyu40_to_class
from safnet_ros.data.ply import read_ply, write_ply
from safnet_ros.errors import ConfigError, DataFormatError, SafnetError
from safnet_ros.mapping.smoothing import DEFAULT_CELL_M
from safnet_ros.mapping.voxel_map import FUSION_RULES, LOG_CLAMP, LOG_FLOOR, MapSnapshot, SemanticVoxelMap

MAGIC_COMMENT = "safnet_ros semantic voxel map"
#: Vertex properties a map PLY must have.
REQUIRED_FIELDS = ("x", "y", "z", "label", "confidence", "observations")


class MapSaveError(SafnetError, OSError):
    """The map could not be written (the message says where and why)."""


def score_field(k: int) -> str:
    return f"score_{k:02d}"


def map_vertex_array(snap: MapSnapshot) -> np.ndarray:
    """Structured (V,) vertex array of a snapshot (with scores when the snapshot has them)."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("label", "<u2"), ("confidence", "<f4"), ("observations", "<u4")]
    if snap.scores is not None:
        fields += [(score_field(k), "<f4") for k in range(snap.scores.shape[1])]
    v = np.empty(len(snap), dtype=fields)
    v["x"], v["y"], v["z"] = snap.centres[:, 0], snap.centres[:, 1], snap.centres[:, 2]
    rgb = class_colors(snap.labels)
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v["label"] = class_to_nyu40(snap.labels)
    v["confidence"] = snap.confidence
    v["observations"] = np.minimum(snap.observations, np.iinfo(np.uint32).max)
    if snap.scores is not None:
        for k in range(snap.scores.shape[1]):
            v[score_field(k)] = snap.scores[:, k]
    return v


def save_map(path: str | os.PathLike, snap: MapSnapshot, frame_id: str = "map") -> Path:
    """Write ``snap`` to ``path`` (atomically); returns the path. MapSaveError with the reason on failure."""
    path = Path(os.fspath(path)).expanduser()
    if not str(path) or path.is_dir():
        raise MapSaveError(f"{path}: cannot save the map there: it is a folder, give a file name ending in .ply")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    comments = [MAGIC_COMMENT, f"voxel_size {snap.voxel_size!r}", f"fusion {snap.fusion}",
                f"smoothing {snap.smoothing!r}", f"smoothing_cell {snap.smoothing_cell!r}",
                f"frame {frame_id or 'map'}", f"voxels {len(snap)}"]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ply(tmp, map_vertex_array(snap), None, comments=comments)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise MapSaveError(f"{path}: cannot save the map: {exc.strerror or exc}") from None
    return path


def comment_value(comments: list[str], key: str) -> Optional[str]:
    """The first word after ``key`` in the PLY header comments ``comment KEY VALUE``; None when absent."""
    for c in comments:
        words = c.split()
        if len(words) >= 2 and words[0] == key:
            return words[1]
    return None


def load_map(path: str | os.PathLike, voxel_size: Optional[float] = None, max_voxels: Optional[int] = None,
             fusion: Optional[str] = None, smoothing: Optional[float] = None,
             smoothing_cell: Optional[float] = None) -> SemanticVoxelMap:
    """A :class:`SemanticVoxelMap` from a map PLY (see the module docstring).

    voxel_size / fusion / smoothing / smoothing_cell: override (or supply,
    for PLYs without the comments) the file's; a file without a smoothing
    comment (saved before read-out smoothing existed) is read with none, so
    its labels stay those it was saved with; max_voxels: default the file's
    voxel count (at least 1).
    Raises MissingDataError for a missing file and DataFormatError naming the
    file for a PLY that is not a map (missing properties, no voxel size,
    NaN values, labels outside the 20 classes).
    """
    path = os.fspath(path)
    data = read_ply(path)
    if "vertex" not in data.elements:
        raise DataFormatError(path, "PLY file has no 'vertex' element: not a semantic map")
    v = data.elements["vertex"]
    names = v.dtype.names or ()
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise DataFormatError(path, f"not a semantic map PLY: vertex properties {', '.join(missing)} are missing "
                                    f"(it has {', '.join(names) or 'none'})")

    def number(key: str, given: Optional[float], default: Optional[float]) -> Optional[float]:
        """``given``, else the file's ``comment KEY VALUE``, else ``default``."""
        text = comment_value(data.comments, key)
        if given is not None or text is None:
            return default if given is None else given
        try:
            return float(text)
        except ValueError:
            raise DataFormatError(path, f"{key} comment {text!r} is not a number") from None

    voxel_size = number("voxel_size", voxel_size, None)
    if voxel_size is None:
        raise DataFormatError(path, "no 'comment voxel_size ...' line: pass the voxel size explicitly")
    fusion = fusion or comment_value(data.comments, "fusion") or "count"
    if fusion not in FUSION_RULES:
        raise DataFormatError(path, f"fusion rule {fusion!r} is not one of {', '.join(FUSION_RULES)}")
    readout = {"smoothing": number("smoothing", smoothing, 0.0),
               "smoothing_cell": number("smoothing_cell", smoothing_cell, DEFAULT_CELL_M)}
    centres = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    classes = nyu40_to_class(v["label"]).astype(np.int64)
    confidence = v["confidence"].astype(np.float64)
    observations = v["observations"].astype(np.int64)
    if not (np.isfinite(centres).all() and np.isfinite(confidence).all()):
        raise DataFormatError(path, "voxel centres or confidences hold NaN or inf")
    if (classes == IGNORE_INDEX).any():
        bad = np.unique(v["label"][classes == IGNORE_INDEX])[:5]
        raise DataFormatError(path, f"labels {bad.tolist()} are not nyu40 ids of the {NUM_CLASSES} classes")
    score_names = [score_field(k) for k in range(NUM_CLASSES)]
    if all(n in names for n in score_names):
        scores = np.stack([v[n] for n in score_names], axis=1).astype(np.float32)
    else:
        scores = _scores_from_labels(classes, np.clip(confidence, 0.0, 1.0), observations, fusion)
    try:
        vmap = SemanticVoxelMap(voxel_size=voxel_size, max_voxels=int(max_voxels or max(len(v), 1)), fusion=fusion,
                                **readout)
        vmap.load_voxels(centres, scores, observations)
    except ConfigError as exc:
        raise DataFormatError(path, str(exc)) from None
    return vmap


def _scores_from_labels(classes: np.ndarray, confidence: np.ndarray, observations: np.ndarray,
                        fusion: str) -> np.ndarray:
    """Evidence that reproduces label and confidence: the rest of the mass spread over the other classes."""
    v, c = len(classes), NUM_CLASSES
    rest = (1.0 - confidence) / (c - 1)
    p = np.repeat(rest[:, None], c, axis=1)
    p[np.arange(v), classes] = confidence
    if fusion == "count":
        return (p * np.maximum(observations, 1)[:, None]).astype(np.float32)
    logp = np.log(np.maximum(p, LOG_FLOOR))
    return np.maximum(logp - logp.max(axis=1, keepdims=True), LOG_CLAMP).astype(np.float32)
