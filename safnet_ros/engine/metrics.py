"""Segmentation metrics as ScanNet's benchmark defines them (docs/design.md §2.6, docs/evaluation.md).

One accumulated confusion matrix; points whose truth is outside 0..19 do not count, and a point
without a prediction is a false negative of its class, so unsegmented points lower the score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from safnet_ros.data.labels import CLASS_NAMES, NUM_CLASSES, TABLE_ORDER


@dataclass
class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix, rows = ground truth, cols = prediction.

    Column C (one extra) counts points with a valid truth but no prediction.
    """

    num_classes: int = NUM_CLASSES
    matrix: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        """Add (N,) ground-truth and predicted class indices."""
        truth = np.asarray(truth).reshape(-1).astype(np.int64)
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        if truth.shape != pred.shape:
            raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in length")
        c = self.num_classes
        ok = (truth >= 0) & (truth < c)
        t, p = truth[ok], pred[ok]
        p = np.where((p >= 0) & (p < c), p, c)  # unpredicted -> extra column
        self.matrix += np.bincount(t * (c + 1) + p, minlength=c * (c + 1)).reshape(c, c + 1)

    @property
    def square(self) -> np.ndarray:
        """(C, C) matrix without the 'unpredicted' column."""
        return self.matrix[:, : self.num_classes]

    def iou(self) -> np.ndarray:
        """(C,) IoU per class; NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.square).astype(np.float64)
        gt = self.matrix.sum(axis=1).astype(np.float64)  # TP + FN (incl. unpredicted)
        pr = self.square.sum(axis=0).astype(np.float64)  # TP + FP
        denom = gt + pr - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (in truth or prediction)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def overall_accuracy(self) -> float:
        """Fraction of the counted points whose prediction is their truth (NaN when none was counted)."""
        total = self.matrix.sum()
        return float(np.trace(self.square) / total) if total else float("nan")

    def per_class(self) -> dict[str, float]:
        """Class name -> IoU, in Table I's (alphabetical) column order."""
        iou = dict(zip(CLASS_NAMES, self.iou()))
        return {name: float(iou[name]) for name, _short in TABLE_ORDER}

    def summary(self) -> dict:
        """``miou``, ``oa`` (fractions in [0, 1]), ``per_class`` (:meth:`per_class`) and ``points`` counted."""
        return {"miou": self.miou(), "oa": self.overall_accuracy(), "per_class": self.per_class(),
                "points": int(self.matrix.sum())}
