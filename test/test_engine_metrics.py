"""IoU / mIoU / OA as ScanNet's benchmark defines them, checked against hand counts."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.data.labels import CLASS_NAMES, IGNORE_INDEX, TABLE_ORDER
from safnet_ros.engine.metrics import ConfusionMatrix


def test_iou_matches_hand_count():
    # class 0: truth 4 points, predicted 0 on 3 of them and once on a class-1 point.
    truth = np.array([0, 0, 0, 0, 1, 1, 1, IGNORE_INDEX])
    pred = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    cm = ConfusionMatrix()
    cm.add(truth, pred)
    iou = cm.iou()
    # class 0: TP 3, FP 1, FN 1 -> 3/5 ; class 1: TP 2, FP 1, FN 1 -> 2/4
    assert iou[0] == pytest.approx(3 / 5)
    assert iou[1] == pytest.approx(2 / 4)
    assert np.isnan(iou[2:]).all()  # absent classes do not count in the mean
    assert cm.miou() == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert cm.overall_accuracy() == pytest.approx(5 / 7)  # the ignored point does not count


def test_unpredicted_points_are_false_negatives():
    cm = ConfusionMatrix()
    cm.add(np.array([3, 3, 3, 3]), np.array([3, 3, IGNORE_INDEX, IGNORE_INDEX]))
    assert cm.iou()[3] == pytest.approx(0.5)
    assert cm.overall_accuracy() == pytest.approx(0.5)


def test_accumulates_over_scenes_not_averaged_per_scene():
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.add(np.array([0] * 9 + [1]), np.array([0] * 9 + [0]))
    a.add(np.array([1]), np.array([1]))
    b.add(np.concatenate([[0] * 9 + [1], [1]]), np.concatenate([[0] * 9 + [0], [1]]))
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_per_class_in_table_order():
    cm = ConfusionMatrix()
    cm.add(np.arange(20), np.arange(20))
    per = cm.per_class()
    assert list(per) == [name for name, _ in TABLE_ORDER]
    assert set(per) == set(CLASS_NAMES)
    assert all(v == 1.0 for v in per.values())


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        ConfusionMatrix().add(np.zeros(3), np.zeros(4))
