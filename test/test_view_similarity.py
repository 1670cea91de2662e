"""S view by view (safnet_ros.data.view_similarity): the sighting groups and their means, against hand sums."""
from __future__ import annotations

import numpy as np
import pytest

from safnet_ros.data.labels import CLASS_NAMES
from safnet_ros.data.view_similarity import sighting_rows, similarity_per_view, vertex_mean
from safnet_ros.engine.batching import prepare_view
from safnet_ros.engine.inference import Segmenter

nan = np.nan


def test_sighting_rows_average_each_group_and_match_static_sightings_to_the_moved_class_mix():
    # 3 views x 5 vertices; vertices 0, 1 static (classes 0 and 4), 2, 3 moved (class 4, 5), 4 unannotated
    s = np.array([[1.0, 0.8, 0.2, 0.9, 0.5],
                  [0.9, nan, 0.4, nan, 0.5],
                  [nan, 0.6, 1.0, 0.7, nan]])
    through = np.zeros_like(s, bool)
    through[0, 2] = through[1, 2] = True  # two views see through vertex 2
    through[1, 1] = True  # not a sighting (NaN): must not count
    moved = np.array([False, False, True, True, False])
    counted = np.array([True, True, True, True, False])
    classes = np.array([0, 4, 4, 5, 3])
    rows = sighting_rows(s, through, moved, counted, classes)
    assert rows["static"] == {"sightings": 4, "vertices": 2, "s_mean": pytest.approx((1.0 + 0.8 + 0.9 + 0.6) / 4)}
    assert rows["moved"] == {"sightings": 5, "vertices": 2, "s_mean": pytest.approx((0.2 + 0.9 + 0.4 + 1.0 + 0.7) / 5)}
    assert rows["moved_through"] == {"sightings": 2, "vertices": 1, "s_mean": pytest.approx(0.3)}
    assert rows["moved_in_place"]["sightings"] == 3 and rows["moved_in_place"]["s_mean"] == pytest.approx(2.6 / 3)
    assert rows["static_through"]["sightings"] == 0 and np.isnan(rows["static_through"]["s_mean"])
    same = rows["static_same_classes"]  # only class 4 has static sightings: vertex 1's (0.8, 0.6)
    assert same["classes"] == [CLASS_NAMES[4]] and same["moved_sightings"] == 3
    assert same["s_mean"] == pytest.approx(0.7) and same["s_moved_mean"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    np.testing.assert_allclose(vertex_mean(s), [0.95, 0.7, 1.6 / 3, 0.8, 0.5], rtol=1e-6)
    assert np.isnan(vertex_mean(np.full((2, 1), nan)))[0]


def test_no_shared_class_gives_nan_not_a_number_out_of_nothing():
    s = np.array([[0.5, 0.9]])
    rows = sighting_rows(s, np.zeros((1, 2), bool), np.array([True, False]), np.ones(2, bool), np.array([3, 1]))
    same = rows["static_same_classes"]
    assert same["moved_sightings"] == 0 and np.isnan(same["s_mean"]) and np.isnan(same["s_moved_mean"])


def test_similarity_per_view_keeps_only_the_sightings_of_each_view_and_checks_shapes():
    rng = np.random.default_rng(0)
    # a 2 x 2 m floor patch seen from 1.5 m above by two downward cameras, one over each half
    xyz = np.c_[rng.uniform(0, 2, 3000), rng.uniform(0, 2, 3000), np.zeros(3000)].astype(np.float32)
    K = np.array([[80.0, 0, 80], [0, 80.0, 60], [0, 0, 1]])
    views = []
    for x in (0.5, 1.5):
        pose = np.eye(4)
        pose[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking down (z of the camera = -z of the world)
        pose[:3, 3] = [x, 1.0, 1.5]
        views.append(prepare_view(np.full((120, 160, 3), 128, np.uint8), np.full((120, 160), 1.5, np.float32), K, pose))
    seen = np.zeros((2, len(xyz)), bool)
    seen[0] = xyz[:, 0] < 0.9
    seen[1] = xyz[:, 0] > 1.1
    seg = Segmenter.from_checkpoint(None, device="cpu", chunk_stride=1.5)
    s = similarity_per_view(seg, xyz, views, seen)
    assert s.shape == (2, len(xyz))
    assert np.isnan(s[~seen]).all()  # nothing outside a view's sightings
    assert np.isfinite(s[seen]).mean() > 0.9
    with pytest.raises(ValueError, match="seen must be"):
        similarity_per_view(seg, xyz, views, seen[:1])
