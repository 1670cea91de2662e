"""``safnet demo``: votes per vertex, rendering, and the whole chain end to end (slow).

The end-to-end test runs the real chain on a tiny synthetic scene (``--fast``:
24 frames, 80x60 images, 15 cm vertex spacing): ScanNet files -> rosbag2 (mcap)
-> BagPlayer -> SegmentNode over rclpy/DDS (loopback, the conftest's private
domain) -> labelled clouds -> PLY, PNG, summary.json.
"""
from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from safnet_ros.data.labels import NUM_CLASSES, class_to_nyu40
from safnet_ros.data.ply import read_mesh, read_vertex_labels
from safnet_ros.engine.inference import default_model_path
from safnet_ros.errors import ConfigError
from safnet_ros.json_out import json_safe
from safnet_ros.mapping import SemanticVoxelMap
from safnet_ros.mapping.map_ply import load_map, save_map
from safnet_ros.mapping.score import score_labels as score
from safnet_ros.tools.demo import score_map
from safnet_ros.tools.demo_command import add_arguments, run
from safnet_ros.tools.render import UNLABELLED_COLOR, label_colors, render_cloud_png
from safnet_ros.tools.vertex_votes import VertexVotes


def _grid(n: int = 5, step: float = 0.1) -> np.ndarray:
    g = np.arange(n) * step
    gx, gy = np.meshgrid(g, g)
    return np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)


# ----------------------------------------------------------------------------- VertexVotes


def test_votes_take_the_majority_per_vertex_and_leave_unseen_vertices_unlabelled():
    xyz = _grid()
    votes = VertexVotes(xyz, NUM_CLASSES)
    votes.add(xyz[:10], np.full(10, 3), np.full(10, 0.2))
    votes.add(xyz[:10] + 2e-4, np.full(10, 5), np.full(10, 0.6))  # within 1 mm: the same vertices
    votes.add(xyz[:4], np.full(4, 5), np.full(4, 1.0))
    labels = votes.labels()
    assert labels[:4].tolist() == [5] * 4  # 2 votes for 5, 1 for 3
    assert labels[4:10].tolist() == [3] * 6  # a 1-1 tie goes to the lower class
    assert (labels[10:] == -1).all() and (labels >= 0).sum() == 10
    assert np.allclose(votes.similarity()[:4], (0.2 + 0.6 + 1.0) / 3)
    assert np.allclose(votes.similarity()[4:10], 0.4)
    assert np.isnan(votes.similarity()[10:]).all()
    assert votes.points_matched == 24 and votes.points_unmatched == 0


def test_vote_ties_are_reported_and_can_be_broken_at_random():
    xyz = _grid()
    votes = VertexVotes(xyz, NUM_CLASSES)
    votes.add(xyz[:10], np.full(10, 3))
    votes.add(xyz[:10], np.full(10, 5))  # 1-1 ties on vertices 0..9
    votes.add(xyz[:4], np.full(4, 5))  # ... except 0..3, where 5 wins
    assert votes.tied().tolist() == [False] * 4 + [True] * 6 + [False] * 15
    assert (votes.labels(ties="lowest")[4:10] == 3).all()
    picks = np.stack([votes.labels(ties="random", seed=s) for s in range(20)])
    assert (picks[:, :4] == 5).all()  # no tie: the majority, whatever the seed
    assert set(np.unique(picks[:, 4:10])) == {3, 5}  # a tie: either tied class, never another
    assert (picks[:, 10:] == -1).all()
    np.testing.assert_array_equal(votes.labels(ties="random", seed=7), votes.labels(ties="random", seed=7))
    with pytest.raises(ValueError, match="ties must be"):
        votes.labels(ties="highest")


def test_votes_count_points_off_the_mesh_and_unsegmented_labels():
    xyz = _grid()
    votes = VertexVotes(xyz, NUM_CLASSES)
    far = xyz[:3] + np.array([0.0, 0.0, 0.002])  # 2 mm off: no vertex
    nan = np.full((1, 3), np.nan)
    votes.add(np.concatenate([far, nan, xyz[3:5]]), np.array([1, 1, 1, 1, 255, 7]))
    assert votes.points_unmatched == 4 and votes.points_matched == 2 and votes.points_not_segmented == 1
    assert votes.labels()[4] == 7 and (votes.labels() >= 0).sum() == 1


def test_votes_are_shared_by_vertices_at_the_same_position():
    """Mesh seams duplicate vertices; a cloud point labels every copy, not one at random."""
    xyz = np.concatenate([_grid(), _grid()[:5]])
    votes = VertexVotes(xyz, NUM_CLASSES)
    votes.add(xyz[:5], np.arange(5))
    labels = votes.labels()
    assert labels[:5].tolist() == list(range(5)) and labels[-5:].tolist() == list(range(5))


def test_score_is_over_labelled_vertices_only():
    truth = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array([0, 0, 1, -1, -1, -1])
    s = score(truth, labels)
    assert s["labelled_vertices"] == 3 and math.isclose(s["coverage"], 0.5)
    assert math.isclose(s["miou"], 1.0) and math.isclose(s["oa"], 1.0)


def test_summary_json_is_strict_json():
    value = json_safe({"miou": float("nan"), "n": np.int64(3), "per_class": {"wall": np.float32(0.5)},
                       "l": [float("inf"), 1.0]})
    text = json.dumps(value, allow_nan=False)  # raises on NaN / inf
    assert json.loads(text) == {"miou": None, "n": 3, "per_class": {"wall": 0.5}, "l": [None, 1.0]}


# ----------------------------------------------------------------------------- render


def test_label_colors_draw_unlabelled_points_grey():
    colors = label_colors(np.array([-1, 0, 1]))
    assert np.allclose(colors[0], UNLABELLED_COLOR)
    assert not np.allclose(colors[1], colors[2]) and (colors <= 1.0).all()


def test_render_writes_a_png_with_both_views(tmp_path):
    xyz = np.random.default_rng(0).uniform(0, 3, (500, 3))
    labels = np.repeat(np.arange(5), 100) - 1  # includes unlabelled points
    path = render_cloud_png(tmp_path / "r.png", xyz, labels, similarity=np.linspace(0, 1, 500),
                            truth=np.repeat(np.arange(5), 100), title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height  # 3 columns beside each other, 2 rows
        px = np.asarray(im.convert("RGB"))
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20  # not a blank canvas


@pytest.mark.parametrize("argv", [("--rate", "0"), ("--cloud-rate", "-1"), ("--frames", "0"), ("--rate", "nan")])
def test_bad_arguments_fail_before_any_work(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the argparse ranges (safnet_ros.validation)
        _demo_args("--out", str(tmp_path / "d"), *argv)
    assert exit_info.value.code == 2 and f"argument {argv[0]}" in capsys.readouterr().err
    args = _demo_args("--out", str(tmp_path / "d"))  # and run() itself, called from Python
    setattr(args, argv[0][2:].replace("-", "_"), int(argv[1]) if argv[0] == "--frames" else float(argv[1]))
    with pytest.raises(ConfigError, match=argv[0]):
        run(args)
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- end to end


def _demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_fast_demo_runs_the_whole_chain_through_the_node(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(_demo_args("--fast", "--out", str(out), "--no-progress")) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "bag+node"
    # the labelled clouds came through the node over DDS
    c = summary["node_counters"]
    assert summary["labeled_clouds_received"] > 0
    assert c["clouds_segmented"] == summary["labeled_clouds_received"]
    assert c["frames_synced"] > 0 and c["views_kept"] > 0 and c["worker_errors"] == 0
    assert summary["published"]["/points"] == summary["bag_clouds"] > 0
    assert summary["points_matched"] > 0 and summary["points_unmatched"] == 0  # /points are mesh vertices
    assert summary["clouds_not_in_map"] == 0
    # scored over > 0 labelled vertices
    assert 0 < summary["labelled_vertices"] < summary["vertices"]
    assert math.isclose(summary["coverage"], summary["labelled_vertices"] / summary["vertices"])
    assert 0.0 <= summary["miou"] <= 1.0
    assert 0.0 <= summary["miou_random_ties"] <= 1.0
    assert 0 <= summary["vote_tied_vertices"] <= summary["labelled_vertices"]
    assert summary["latency_clouds"] > 0 and 0 < summary["latency_mean_s"] < 60
    # PLY: every scene vertex, labelled ones with a nyu40 id, the rest 0
    xyz, rgb, faces = read_mesh(summary["ply"])
    nyu = read_vertex_labels(summary["ply"])
    assert len(xyz) == summary["vertices"] and len(faces) > 0
    assert (nyu > 0).sum() == summary["labelled_vertices"]
    assert set(np.unique(nyu[nyu > 0])) <= set(class_to_nyu40(np.arange(NUM_CLASSES)).tolist())
    with Image.open(summary["png"]) as im:
        im.verify()
        assert im.format == "PNG" and im.width > 500
    # the node's semantic map: saved through ~/save_map, scored on the same vertices
    m = summary["map"]
    assert m["voxels"] > 0 and 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["oa"] <= 1.0
    assert m["coverage"] >= summary["coverage"] - 0.02  # voxels cover what the clouds covered
    assert m["update_ms_mean"] > 0 and m["single_clouds_scored"] > 0
    assert 0.0 <= m["map_on_cloud_vertices_miou_mean"] <= 1.0

    assert len(load_map(m["ply"])) == m["voxels"]
    assert "semantic map" in printed
    # the untrained model is reported when none is shipped
    shipped = default_model_path() is not None
    assert summary["untrained_model"] is (not shipped)
    assert ("UNTRAINED" in printed) is (not shipped)
    assert "[demo] 6/6" in printed and "mIoU" in printed


@pytest.mark.slow
def test_fast_demo_with_a_second_camera_reports_the_evidence_it_adds(tmp_path, capsys):
    out = tmp_path / "demo"
    args = _demo_args("--fast", "--second-camera", "--out", str(out), "--no-progress")
    assert args.second_camera == 3.0  # SEC defaults to 3 s
    assert run(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    sc = summary["second_camera"]
    one, two = sc["one_camera"], sc["two_cameras"]
    assert sc["offset_s"] == 3.0 and sc["offset_frames"] >= 1
    # the first run is the usual one (scored and rendered): its node saw the first camera only
    assert one["views_kept"] == summary["node_counters"]["views_kept"] > 0
    assert set(one["views_kept_per_camera"]) <= {""} and summary["published"].get("/camera2/color/image_raw") is None
    # the second run kept views of both cameras
    assert two["views_kept_per_camera"].keys() == {"camera", "camera2"}
    assert min(two["views_kept_per_camera"].values()) > 0 and two["views_kept"] > one["views_kept"]
    for run_ in (one, two):
        assert run_["labelled_points"] > 0 and run_["labeled_clouds"] > 0
        assert 0 < run_["evidence_share"] <= 1
        assert run_["evidence_share"] == run_["points_with_evidence"] / run_["labelled_points"]
    assert two["evidence_share"] >= one["evidence_share"]
    assert sc["gain_points"] == two["points_with_evidence"] - one["points_with_evidence"]
    assert (f"image evidence on {100 * one['evidence_share']:.1f} % of the labelled points with one camera, "
            f"{100 * two['evidence_share']:.1f} % with two ({sc['gain_points']:+d} points)") in printed


def test_second_camera_needs_the_node(tmp_path):
    with pytest.raises(ConfigError, match="--second-camera"):
        run(_demo_args("--fast", "--offline", "--second-camera", "2", "--out", str(tmp_path / "d")))
    assert not (tmp_path / "d").exists()


def test_score_map_compares_the_map_with_each_cloud_on_that_cloud_s_vertices(tmp_path):
    """The like-for-like figure: the map scored on exactly the vertices each cloud labelled.

    Two clouds each see half of a two-class strip and get a quarter of their
    points wrong; the map (the truth here) is right everywhere, so it scores 1.0
    on each cloud's vertices while each cloud alone scores below it.
    """
    xyz = np.stack([np.arange(40) * 0.1 + 0.05, np.full(40, 0.05), np.full(40, 0.05)], axis=1)
    truth = (np.arange(40) % 4 < 2).astype(np.int64)  # classes 0 and 1 alternate in pairs
    vmap = SemanticVoxelMap(voxel_size=0.1)
    vmap.integrate(xyz, np.eye(NUM_CLASSES, dtype=np.float32)[truth])
    ply = save_map(tmp_path / "map.ply", vmap.snapshot(with_scores=True))
    clouds = []
    for half in (slice(0, 20), slice(20, 40)):
        labels = np.full(40, -1, np.int64)
        labels[half] = truth[half]
        wrong = np.arange(40)[half][::4]
        labels[wrong] = 1 - truth[wrong]
        clouds.append(labels)
    replay = SimpleNamespace(map_ply=str(ply), map_update_ms_mean=1.0, map_saved_via="test")
    block, map_labels = score_map(SimpleNamespace(xyz=xyz, truth=truth), replay, clouds)
    np.testing.assert_array_equal(map_labels, truth)
    assert block["map_on_cloud_vertices_miou_mean"] == pytest.approx(1.0)
    assert block["single_cloud_miou_mean"] < 0.8
    assert block["single_clouds_scored"] == 2
