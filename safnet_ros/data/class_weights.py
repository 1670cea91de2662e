"""Class weights of the cross-entropy, ``w_c = 1 / ln(1.2 + f_c)`` from the training split's label frequencies.

Where they are written and when the trainer uses them: docs/training.md ("Class weights").
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from safnet_ros.data.dataset import list_scenes
from safnet_ros.data.labels import IGNORE_INDEX

CLASS_WEIGHTS_FILE = "class_weights.json"
LOG_OFFSET = 1.2  # w_c = 1 / ln(LOG_OFFSET + f_c), MVPNet's ScanNet value


def label_counts(label_files: Iterable[str | os.PathLike], num_classes: int) -> np.ndarray:
    """``(num_classes,)`` int64: labelled points per class over the ``labels.npy`` files
    (IGNORE_INDEX and out-of-range values are not counted)."""
    counts = np.zeros(num_classes, np.int64)
    for path in label_files:
        labels = np.load(path, mmap_mode="r").reshape(-1)
        labels = labels[labels != IGNORE_INDEX]
        counts += np.bincount(labels[labels < num_classes].astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


def log_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """``(C,)`` float32 weights ``1 / ln(1.2 + f_c)`` from per-class counts (all 1 when
    nothing is labelled). A class absent from the split gets the largest weight
    (1 / ln 1.2 = 5.48); the loss never sees it, so that value is inert."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return np.ones(len(counts), np.float32)
    return (1.0 / np.log(LOG_OFFSET + counts / total)).astype(np.float32)


def _scene_label_files(root: Path, split: str) -> list[Path]:
    """The ``labels.npy`` of every preprocessed scene of ``split`` under ``root``."""
    return [scene.dir / "labels.npy" for scene in list_scenes(root, split)]


def write_class_weights(root: str | os.PathLike, split: str = "train", num_classes: int = 20) -> Optional[Path]:
    """Write ``root/class_weights.json`` for ``split`` of the preprocessed ``root``.

    Returns the file, or None when ``root`` has no such split list.
    """
    base = Path(root)
    if not (base / f"scannetv2_{split}.txt").is_file():
        return None
    counts = label_counts(_scene_label_files(base, split), num_classes)
    payload = {"split": split, "num_classes": num_classes, "formula": f"1 / ln({LOG_OFFSET} + frequency)",
               "counts": counts.tolist(), "weights": [round(float(w), 6) for w in log_frequency_weights(counts)]}
    out = base / CLASS_WEIGHTS_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)
    return out


def load_class_weights(root: str | os.PathLike, split: str, num_classes: int) -> tuple[np.ndarray, str]:
    """``((num_classes,) float32 weights, where they came from)`` for ``split`` of ``root``:
    ``root/class_weights.json`` when it was made for that split and class count,
    else computed from the split's ``labels.npy`` files."""
    base = Path(root)
    path = base / CLASS_WEIGHTS_FILE
    if path.is_file():
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            weights = np.asarray(data["weights"], np.float32)
            if data.get("split") == split and weights.shape == (num_classes,) and np.isfinite(weights).all():
                return weights, str(path)
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: recompute below
    counts = label_counts(_scene_label_files(base, split), num_classes)
    return log_frequency_weights(counts), f"computed from the {split!r} split of {base}"
