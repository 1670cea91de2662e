"""Probability fields of ~/labeled_cloud (probabilities: none | top3 | all) and the ~/semantic_map layout."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from safnet_ros.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES  # noqa: E402
from safnet_ros.errors import MessageEncodeError  # noqa: E402
from safnet_ros.mapping import SemanticVoxelMap  # noqa: E402
from safnet_ros.ros import codecs  # noqa: E402
from safnet_ros.ros.semantic_map_component import SEMANTIC_MAP_DTYPE, semantic_map_cloud  # noqa: E402


def cloud(mode: str, n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, NUM_CLASSES))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    seg = rng.random(n) > 0.2
    labels = np.where(seg, probs.argmax(1), IGNORE_INDEX)
    conf = np.where(seg, probs.max(1), 0).astype(np.float32)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    extra = codecs.probability_columns(probs, seg, mode) if mode != "none" else None
    msg = codecs.make_labeled_cloud(xyz, labels.astype(np.uint16), np.zeros((n, 3), np.uint8), conf,
                                    np.zeros(n, np.float32), frame_id="lidar", probabilities=mode, extra=extra)
    return msg, probs, seg, labels


def test_none_keeps_the_28_byte_layout():
    msg, *_ = cloud("none")
    assert msg.point_step == 28 and [f.name for f in msg.fields][-1] == "similarity"


def test_top3_layout_offsets_and_values_survive_a_decode():
    msg, probs, seg, labels = cloud("top3")
    assert msg.point_step == 48
    assert [(f.name, f.offset) for f in msg.fields][7:] == [
        ("p_label1", 28), ("p_label2", 30), ("p_label3", 32), ("p1", 36), ("p2", 40), ("p3", 44)]
    arr = codecs.pointcloud2_to_array(msg)
    order = np.argsort(-probs, axis=1)[:, :3]
    for i in range(3):
        np.testing.assert_array_equal(arr[f"p_label{i + 1}"], np.where(seg, order[:, i], IGNORE_INDEX))
        np.testing.assert_allclose(arr[f"p{i + 1}"], np.where(seg, np.take_along_axis(probs, order, 1)[:, i], 0))
    np.testing.assert_array_equal(arr["p_label1"], labels)


def test_all_layout_has_one_named_float_per_class():
    msg, probs, seg, _ = cloud("all")
    names = [f.name for f in msg.fields][7:]
    assert names == ["p_" + n.replace(" ", "_") for n in CLASS_NAMES] and msg.point_step == 28 + 4 * NUM_CLASSES
    arr = codecs.pointcloud2_to_array(msg)
    got = np.stack([arr[n] for n in names], 1)
    np.testing.assert_allclose(got, np.where(seg[:, None], probs, 0), rtol=1e-6)
    assert codecs.labeled_cloud_dtype("all").itemsize == msg.point_step


def test_bad_modes_and_missing_columns_are_encode_errors():
    with pytest.raises(MessageEncodeError, match="none, top3 or all"):
        codecs.labeled_cloud_dtype("top5")
    with pytest.raises(MessageEncodeError, match="needs the columns"):
        codecs.make_labeled_cloud(np.zeros((1, 3)), np.zeros(1, np.uint16), np.zeros((1, 3), np.uint8),
                                  np.zeros(1), np.zeros(1), probabilities="top3")
    with pytest.raises(MessageEncodeError):
        codecs.probability_columns(np.zeros((3, 2)), np.ones(4, bool), "all")


def test_semantic_map_cloud_layout():
    m = SemanticVoxelMap(voxel_size=0.5)
    probs = np.full((3, NUM_CLASSES), 0.01, np.float32)
    probs[:, 4] = 0.81
    m.integrate(np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [2.0, 0.0, 0.0]]), probs)
    msg = semantic_map_cloud(m.snapshot(), "map")
    assert msg.header.frame_id == "map" and msg.point_step == SEMANTIC_MAP_DTYPE.itemsize == 28
    arr = codecs.pointcloud2_to_array(msg)
    assert sorted(arr["observations"].tolist()) == [1, 2] and (arr["label"] == 4).all()
    np.testing.assert_allclose(arr["confidence"], 0.81, rtol=1e-5)
