"""``safnet eval`` on a tiny preprocessed synthetic scene with untrained lite models.

The fixture adds, next to the real scene, a copy without any frame (and with
labels outside the 20 classes) and a copy whose preprocessing never finished,
as ``safnet data preprocess`` leaves them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.cli import main
from safnet_ros.data.labels import TABLE_ORDER
from safnet_ros.engine.metrics import ConfusionMatrix

STRIDE = 1.5  # one pass of non-overlapping chunks: fast
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny forwards on a shared 2-core machine: one thread is many times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_config(variant: str = "safnet"):
    from safnet_ros.model.config import SafnetConfig

    return SafnetConfig.preset("lite", variant=variant, pn_npoints=(128, 32, 16, 8))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from safnet_ros.data.preprocess import preprocess
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset

    raw = tmp_path_factory.mktemp("raw")
    generate_dataset(raw, 1, 5, SynthConfig(frames=12, color_size=(80, 60), depth_size=(80, 60),
                                            vertex_spacing=0.2, progress=False), split="val")
    out = tmp_path_factory.mktemp("pre")
    preprocess(str(raw), str(out), progress=False)
    real = next(p for p in out.iterdir() if p.is_dir())
    # A scene without any frame (F = 0, as preprocess writes it), with labels outside the 20 classes.
    empty = out / "scene9998_00"
    shutil.copytree(real, empty)
    h, w = np.load(real / "depth.npy").shape[1:]
    np.save(empty / "color.npy", np.zeros((0, h, w, 3), np.uint8))
    np.save(empty / "depth.npy", np.zeros((0, h, w), np.uint16))
    np.save(empty / "label2d.npy", np.zeros((0, h, w), np.uint8))
    np.save(empty / "poses.npy", np.zeros((0, 4, 4), np.float32))
    np.save(empty / "frame_ids.npy", np.zeros(0, np.int32))
    nb = len(np.load(real / "coverage_index.npy"))
    np.save(empty / "coverage_bits.npy", np.zeros((0, (nb + 7) // 8), np.uint8))
    labels = np.load(empty / "labels.npy")
    labels[:7] = 40  # not a class index: must be ignored and counted
    np.save(empty / "labels.npy", labels)
    meta = json.loads((empty / "meta.json").read_text())
    meta.update(scene="scene9998_00", num_frames=0, no_frames_reason="test: no frame")
    (empty / "meta.json").write_text(json.dumps(meta))
    # A scene whose preprocessing was killed: no meta.json.
    broken = out / "scene9999_00"
    shutil.copytree(real, broken)
    (broken / "meta.json").unlink()
    (out / "scannetv2_val.txt").write_text(f"{real.name}\nscene9998_00\nscene9999_00\n")
    (out / "scannetv2_one.txt").write_text(f"{real.name}\n")
    (out / "scannetv2_nothing.txt").write_text("scene9999_00\n")
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import torch

    from safnet_ros.model.safnet import build_model, save_checkpoint

    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for variant in ("safnet", "pointnet2"):
        torch.manual_seed(0)
        config = _tiny_config(variant)
        paths[variant] = folder / f"{variant}.pt"
        save_checkpoint(paths[variant], build_model(config), config)
    return paths


def _run_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object on stdout


def test_json_by_views_matches_hand_built_confusion(data, models, tmp_path, capsys):
    from safnet_ros.data.dataset import PreprocessedScene
    from safnet_ros.data.preprocess import unpack_coverage
    from safnet_ros.engine.inference import Segmenter

    report = _run_json(capsys, ["eval", "--model", str(models["safnet"]), "--data", str(data), "--split", "one",
                                "--views", "1,3", "--json", "--stride", str(STRIDE), "--device", "cpu",
                                "--out", str(tmp_path / "out"), "--no-progress"])
    for key in ("miou", "oa", "per_class", "by_views"):
        assert key in report
    assert set(report["by_views"]) == {"1", "3"}
    assert list(report["per_class"]) == [name for name, _ in TABLE_ORDER]
    assert report["views"] == 3

    # The same scene through Segmenter and a ConfusionMatrix by hand.
    scene_dir = data / (data / "scannetv2_one.txt").read_text().split()[0]
    scene = PreprocessedScene(scene_dir)
    n = len(scene.points)
    assert len(scene.coverage_index) == n, "the tiny scene keeps every point as a base point"
    coverage = unpack_coverage(np.load(scene_dir / "coverage_bits.npy"), np.arange(n))
    views = [scene.view(f) for f in range(scene.num_frames)]
    seg = Segmenter.from_checkpoint(models["safnet"], device="cpu", chunk_stride=STRIDE, max_points=None,
                                    crop_margin=float("inf"))
    for k in (1, 3):
        seg.num_views = k
        result = seg.segment(np.asarray(scene.points), views, coverage=coverage)
        cm = ConfusionMatrix()
        cm.add(np.asarray(scene.labels), result.labels)
        assert report["by_views"][str(k)] == pytest.approx(cm.miou(), abs=1e-6)
        # the scene's own confusion rows (one scene: the pooled matrix itself)
        assert report["per_scene_confusion"][str(k)] == {scene_dir.name: cm.matrix.tolist()}
        # accuracy by distance to the nearest view pixel: the same points, binned by result.view_distance
        bins = report["accuracy_by_view_distance"][str(k)]
        truth = np.asarray(scene.labels).astype(np.int64)
        scored = (truth >= 0) & (truth < 20)
        assert [b["bin"] for b in bins] == ["< 5 cm", "5-10 cm", "10-20 cm", "20-50 cm", ">= 50 cm", "no view"]
        assert sum(b["points"] for b in bins) == scored.sum()
        near = scored & (result.view_distance < 0.05)
        assert bins[0]["points"] == near.sum()
        if near.any():
            assert bins[0]["accuracy"] == pytest.approx((result.labels[near] == truth[near]).mean(), abs=1e-6)
        correct = sum(b["accuracy"] * b["points"] for b in bins if b["points"])
        assert correct / scored.sum() == pytest.approx(cm.overall_accuracy(), abs=1e-6)
        if k == 3:
            assert report["oa"] == pytest.approx(cm.overall_accuracy(), abs=1e-6)
            for name, iou in cm.per_class().items():
                got = report["per_class"][name]
                assert (got is None and np.isnan(iou)) or got == pytest.approx(iou, abs=1e-6)
        assert result.segmented.all(), "whole-scene evaluation segments every point"
    assert report["points"] == n and report["chunks"] > 0 and report["unsegmented_points"] == 0


@pytest.fixture(scope="module")
def two_models_run(data, models, tmp_path_factory):
    """One CLI run comparing two models on the val split (with its bad scenes), tables printed."""
    out = tmp_path_factory.mktemp("two")
    argv = ["eval", "--model", str(models["safnet"]), "--model", str(models["pointnet2"]), "--data", str(data),
            "--split", "val", "--views", "1", "--ablation", "--stride", str(STRIDE), "--device", "cpu",
            "--out", str(out), "--no-progress"]
    return argv, out


def test_bad_scenes_counted_outputs_written(two_models_run, models, capsys):
    argv, out = two_models_run
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert set(report["models"]) == {str(models["safnet"]), str(models["pointnet2"])}
    assert report["skipped_scenes"].keys() == {"scene9999_00"}
    assert "incomplete" in report["skipped_scenes"]["scene9999_00"]
    fused = report["models"][str(models["safnet"])]
    assert fused["scenes_without_frames"] == ["scene9998_00"]
    assert fused["ignored_points"] >= 7
    assert fused["chunks_without_views"] >= 1  # every chunk of the frameless scene
    assert report["models"][str(models["pointnet2"])]["label"] == "pointnet2/lite"
    # a 3D-only model never had a view pixel near: every scored point is in the "no view" bin
    pn2_bins = report["models"][str(models["pointnet2"])]["accuracy_by_view_distance"]["1"]
    assert pn2_bins[-1]["points"] > 0 and all(b["points"] == 0 for b in pn2_bins[:-1])
    # the frameless scene's points are "no view" for the fused model too
    assert fused["accuracy_by_view_distance"]["1"][-1]["points"] > 0
    # Valid images: PNG signature and a decodable size.
    from PIL import Image

    pngs = [Path(report["outputs"]["views_sweep"])]
    pngs += [Path(p) for per_model in report["outputs"]["confusion"].values() for p in per_model.values()]
    assert len(pngs) == 1 + 2
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    rows = (out / "per_class.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[0].split(",")[5] == TABLE_ORDER[0][0]

    # The printed tables: Table I's column order, Table III's switches, the counts.
    header = next(line for line in text.splitlines() if line.startswith("model") and "mIoU" in line)
    positions = [header.index(f" {short}") for _, short in TABLE_ORDER]
    assert positions == sorted(positions), "classes must follow Table I's order"
    assert "Table III" in text and "GSM-FS" in text and "\u2713" in text
    assert "skipped scene9999_00" in text and "(segmented 3D-only): scene9998_00" in text


def test_missing_model_named(data, tmp_path, capsys):
    missing = tmp_path / "nope_model.pt"
    assert main(["eval", "--model", str(missing), "--data", str(data), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope_model.pt" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    from safnet_ros.engine.evaluate import evaluate
    from safnet_ros.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        evaluate([corrupt], data, "one", progress=False)


def test_empty_split_is_clear_error(data, models, tmp_path, capsys):
    from safnet_ros.engine.evaluate import evaluate
    from safnet_ros.errors import MissingDataError

    with pytest.raises(MissingDataError, match="scene9999_00"):
        evaluate([models["safnet"]], data, "nothing", progress=False)
    (tmp_path / "empty.txt").write_text("")
    assert main(["eval", "--model", str(models["safnet"]), "--data", str(data), "--split",
                 str(tmp_path / "empty.txt"), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_scene_coverage_extends_base_subset(data):
    """With a base subset, base points keep their stored column and others copy their nearest base point."""
    from scipy.spatial import cKDTree

    from safnet_ros.data.dataset import PreprocessedScene
    from safnet_ros.data.preprocess import coverage_bits, unpack_coverage
    from safnet_ros.engine.evaluate import scene_coverage

    src = data / (data / "scannetv2_one.txt").read_text().split()[0]
    scene = PreprocessedScene(src)
    points = np.asarray(scene.points)
    full = scene_coverage(scene)
    assert full.shape == (scene.num_frames, len(points)) and full.any()
    base = np.arange(0, len(points), 3)
    sub = src.parent / "subset_scene"
    shutil.copytree(src, sub)
    np.save(sub / "coverage_index.npy", base)
    bits = coverage_bits(points[base], np.asarray(scene.depth), scene.K, np.asarray(scene.poses))
    np.save(sub / "coverage_bits.npy", bits)
    try:
        got = scene_coverage(PreprocessedScene(sub))
        np.testing.assert_array_equal(got[:, base], unpack_coverage(bits, np.arange(len(base))))
        _, nearest = cKDTree(points[base]).query(points, k=1)
        np.testing.assert_array_equal(got, got[:, base[nearest]])
        assert (got == full).mean() > 0.9
    finally:
        shutil.rmtree(sub)


def test_view_distance_counts_bin_points_and_leave_out_what_is_not_scored():
    from safnet_ros.engine.evaluate import view_distance_counts

    truth = np.array([0, 0, 1, 1, 2, 2, -100, 3])
    labels = np.array([0, 1, 1, 1, 2, 0, 0, -100])
    dist = np.array([0.01, 0.07, 0.15, 0.3, 2.0, np.inf, 0.01, 0.01], np.float32)
    counts = view_distance_counts(truth, labels, dist)
    assert counts.tolist() == [[1, 1], [0, 1], [1, 1], [1, 1], [1, 1], [0, 1]]  # ignored truth, unlabelled: out
    dist[0] = np.nan  # not segmented
    assert view_distance_counts(truth, labels, dist)[0].tolist() == [0, 0]
    assert view_distance_counts(truth, labels, None).sum() == 0


def test_three_d_only_model_is_segmented_once_for_all_views(data, models):
    """pointnet2 ignores the views: one segmentation serves every k >= 1, with the
    result a fresh segmentation at each k gives."""
    from safnet_ros.data.dataset import PreprocessedScene
    from safnet_ros.engine.evaluate import evaluate_scene, load_segmenter

    scene = PreprocessedScene(data / (data / "scannetv2_one.txt").read_text().split()[0])
    seg = load_segmenter(str(models["pointnet2"]), "cpu", STRIDE)
    calls = []
    original = seg.segment
    seg.segment = lambda *a, **k: calls.append(seg.num_views) or original(*a, **k)
    cms = {k: ConfusionMatrix() for k in (0, 1, 3, 5)}
    stats = evaluate_scene(seg, scene, [0, 1, 3, 5], cms)
    assert calls == [0, 1]
    assert [s.views for s in stats] == [0, 1, 3, 5]
    for k in (3, 5):
        np.testing.assert_array_equal(cms[k].matrix, cms[1].matrix)
    seg.num_views = 5
    fresh = ConfusionMatrix()
    fresh.add(np.asarray(scene.labels), original(np.asarray(scene.points, np.float32),
                                                 [scene.view(f) for f in range(scene.num_frames)]).labels)
    np.testing.assert_array_equal(fresh.matrix, cms[5].matrix)


def test_labels_name_ablations_and_tell_same_named_checkpoints_apart():
    """Two `model_last.pt` of one variant/preset (a full model and a Table III row, or two
    runs) must not share a legend, a table row or a confusion-PNG name."""
    from safnet_ros.engine.evaluate import distinct_labels, model_label
    from safnet_ros.model.config import SafnetConfig

    full = SafnetConfig.preset("lite")
    no_csm = SafnetConfig.preset("lite", csm=False)
    assert model_label(full) == "safnet/lite"
    assert model_label(no_csm) == "safnet/lite w/o CSM"
    assert model_label(SafnetConfig.preset("lite", variant="concat", aux_losses=False)) == "concat/lite w/o Aux sup"
    assert model_label(SafnetConfig.preset("lite", variant="pointnet2", csm=False)) == "pointnet2/lite"
    labels = distinct_labels(["safnet/lite", "safnet/lite", "safnet/lite", "concat/lite"],
                             ["runs/a/model_last.pt", "runs/b/model_last.pt", "runs/c/epoch_003.pt", "x.pt"])
    assert labels == ["safnet/lite (a/model_last)", "safnet/lite (b/model_last)", "safnet/lite (epoch_003)",
                      "concat/lite"]
    assert len(set(labels)) == len(labels)


def test_scene_with_more_frames_than_the_feature_cache_holds(data, models):
    """Issue 14: the 2D-feature cache (LRU) evicted views needed by the same call
    (a KeyError) on any scene with more frames than it
    holds. With a cache of 2 views and 5 views per chunk, the evaluation must run
    and give the labels of a cache that never evicts."""
    from safnet_ros.data.dataset import PreprocessedScene
    from safnet_ros.engine.evaluate import evaluate_scene, load_segmenter

    scene = PreprocessedScene(data / (data / "scannetv2_one.txt").read_text().split()[0])
    assert scene.num_frames > 2
    results = {}
    for size in (2, 10_000):
        seg = load_segmenter(str(models["safnet"]), "cpu", STRIDE)
        seg.feature_cache_size = size
        cms = {k: ConfusionMatrix() for k in (1, 5)}
        evaluate_scene(seg, scene, [1, 5], cms)
        assert len(seg._features) <= size
        results[size] = cms
    for k in (1, 5):
        np.testing.assert_array_equal(results[2][k].matrix, results[10_000][k].matrix)


def test_preprocess_class_weights_are_log_frequency_of_the_split(data):
    """class_weights.json: 1 / ln(1.2 + f_c) from the split's labels.npy files; the
    trainer's loader reads it back for that split."""
    from safnet_ros.data.class_weights import load_class_weights, write_class_weights

    path = write_class_weights(data, "one")
    labels = np.load(data / (data / "scannetv2_one.txt").read_text().split()[0] / "labels.npy").astype(np.int64)
    counts = np.bincount(labels[labels < 20], minlength=20)
    expected = 1.0 / np.log(1.2 + counts / counts.sum())
    stored = json.loads(path.read_text())
    assert stored["split"] == "one" and stored["counts"] == counts.tolist()
    np.testing.assert_allclose(stored["weights"], expected, rtol=1e-5)
    weights, source = load_class_weights(data, "one", 20)
    assert source == str(path)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    (data / "scannetv2_other.txt").write_text((data / "scannetv2_one.txt").read_text())
    weights_other, source_other = load_class_weights(data, "other", 20)  # another split: computed, not the file
    assert source_other.startswith("computed")
    np.testing.assert_allclose(weights_other, expected, rtol=1e-5)
    path.unlink()
    (data / "scannetv2_other.txt").unlink()


def test_real_camera_effects_score_the_same_degraded_views_every_run(data, models, tmp_path, capsys):
    """`--camera-effects real`: the views are degraded (the scores move), and by one fixed draw
    (two runs agree to the last digit, so models compared in separate runs saw the same views)."""
    from safnet_ros.data.dataset import PreprocessedScene
    from safnet_ros.engine.evaluate import degraded_view

    shipped = Path(__file__).resolve().parents[1] / "models" / "safnet_lite_synth.pt"  # a model that uses its views
    argv = ["eval", "--model", str(shipped), "--data", str(data), "--split", "one", "--views", "1,3",
            "--json", "--stride", str(STRIDE), "--device", "cpu", "--no-progress"]
    plain = _run_json(capsys, argv + ["--out", str(tmp_path / "plain")])
    real_a = _run_json(capsys, argv + ["--out", str(tmp_path / "a"), "--camera-effects", "real"])
    real_b = _run_json(capsys, argv + ["--out", str(tmp_path / "b"), "--camera-effects", "real"])
    assert real_a["per_scene_confusion"] == real_b["per_scene_confusion"]
    assert real_a["per_scene_confusion"] != plain["per_scene_confusion"]
    holes = _run_json(capsys, argv + ["--out", str(tmp_path / "holes"), "--camera-effects", "depth_holes"])
    assert holes["per_scene_confusion"] not in (plain["per_scene_confusion"], real_a["per_scene_confusion"])

    scene_dir = data / (data / "scannetv2_one.txt").read_text().split()[0]
    view = PreprocessedScene(scene_dir).view(0)
    again = degraded_view(view, scene_dir.name, 0)
    degraded = degraded_view(view, scene_dir.name, 0)
    assert np.array_equal(again.color, degraded.color) and np.array_equal(again.depth, degraded.depth)
    assert not np.array_equal(degraded.color, view.color)
    assert (degraded.depth == 0).sum() >= (view.depth == 0).sum()  # holes are only added
    assert np.array_equal(degraded.K, view.K) and np.array_equal(degraded.camera_to_world, view.camera_to_world)
