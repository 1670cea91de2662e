"""The 20 ScanNet benchmark classes, their nyu40 ids, colours and index mapping.

Training/evaluation labels are *class indices* 0..19 in nyu40-id order (wall=0 ...
otherfurniture=19); every other nyu40 id, and 0 (unannotated), maps to
:data:`IGNORE_INDEX`. The paper's tables list classes alphabetically: use
:data:`TABLE_ORDER` for reports.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Label value of points/pixels that are ignored in losses and metrics.
IGNORE_INDEX: int = 255

#: nyu40 ids of the 20 benchmark classes, in class-index order.
NYU40_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

#: Class names in class-index order.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator",
    "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)

NUM_CLASSES: int = len(CLASS_NAMES)

#: Column order and short names of the paper's Table I (alphabetical).
TABLE_ORDER: tuple[tuple[str, str], ...] = (
    ("bathtub", "bath"), ("bed", "bed"), ("bookshelf", "bkshf"), ("cabinet", "cab"),
    ("chair", "chair"), ("counter", "cntr"), ("curtain", "curt"), ("desk", "desk"),
    ("door", "door"), ("floor", "floor"), ("otherfurniture", "other"), ("picture", "pic"),
    ("refrigerator", "fridge"), ("shower curtain", "shower"), ("sink", "sink"),
    ("sofa", "sofa"), ("table", "table"), ("toilet", "toilet"), ("wall", "wall"),
    ("window", "window"),
)

#: ScanNet's benchmark colour palette (RGB, 0..255) per class index.
CLASS_COLORS: np.ndarray = np.array(
    [
        (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
        (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
        (196, 156, 148), (23, 190, 207), (247, 182, 210), (219, 219, 141), (255, 127, 14),
        (158, 218, 229), (44, 160, 44), (112, 128, 144), (227, 119, 194), (82, 84, 163),
    ],
    dtype=np.uint8,
)
#: Colour of ignored / unlabelled points.
IGNORE_COLOR: tuple[int, int, int] = (0, 0, 0)

# Lookup table nyu40 id (0..255) -> class index or IGNORE_INDEX.
_NYU40_TO_CLASS = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_NYU40_TO_CLASS[list(NYU40_IDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)


def lookup(table: np.ndarray, ids: np.ndarray, default: Any) -> np.ndarray:
    """``table[ids]`` for ids in ``0..len(table) - 1``, ``default`` for any other id (shape: ids' + table rows')."""
    ids = np.asarray(ids).astype(np.int64)
    out = np.full(ids.shape + table.shape[1:], default, dtype=table.dtype)
    ok = (ids >= 0) & (ids < len(table))
    out[ok] = table[ids[ok]]
    return out


def nyu40_to_class(nyu40: np.ndarray) -> np.ndarray:
    """Map nyu40 ids (any int array) to class indices 0..19, others to IGNORE_INDEX.

    Ids outside 0..255 (corrupt files) are ignored too. Returns uint8, same shape.
    """
    return lookup(_NYU40_TO_CLASS, nyu40, IGNORE_INDEX)


def class_to_nyu40(classes: np.ndarray) -> np.ndarray:
    """Map class indices 0..19 back to nyu40 ids; IGNORE_INDEX (or any other value) -> 0."""
    return lookup(np.asarray(NYU40_IDS, dtype=np.uint16), classes, 0)


#: Id spaces labels are written in: class indices (0..19, 255 = not labelled) or nyu40 ids (0 = not labelled).
LABEL_SPACES: tuple[str, ...] = ("index", "nyu40")


def encode_label_ids(classes: np.ndarray, space: str = "index") -> np.ndarray:
    """(N,) class indices (255 = not labelled) -> (N,) uint16 ids of ``space`` (:data:`LABEL_SPACES`)."""
    if space == "index":
        return np.asarray(classes).astype(np.uint16)
    if space == "nyu40":
        return class_to_nyu40(classes)
    raise ValueError(f"label id space must be one of {LABEL_SPACES}, got {space!r}")


def class_colors(classes: np.ndarray) -> np.ndarray:
    """(N,) class indices -> (N, 3) uint8 RGB; ignored/unknown -> IGNORE_COLOR."""
    return lookup(CLASS_COLORS, classes, IGNORE_COLOR)
