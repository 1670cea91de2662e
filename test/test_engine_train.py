"""The datasets over preprocessed scenes and ``safnet train`` (stages 2d and 3d, resume, DDP on gloo)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.errors import ConfigError, MissingDataError

TINY_MODEL = {"preset": "lite", "overrides": {"pn_npoints": [128, 32, 16, 8], "pn_nsample": 8, "k": 8}}


@pytest.fixture(scope="module")
def pre_root(tmp_path_factory) -> Path:
    from safnet_ros.data.preprocess import preprocess
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset

    raw = tmp_path_factory.mktemp("raw")
    generate_dataset(raw, 2, 5, SynthConfig(frames=8, color_size=(160, 120), depth_size=(160, 120),
                                            vertex_spacing=0.1, room_types=("studio",), progress=False),
                     split="train")
    out = tmp_path_factory.mktemp("pre")
    summary = preprocess(str(raw), str(out), progress=False)
    assert summary["done"] == 2
    return out


def _cfg(pre_root: Path, stage: str, **train) -> dict:
    cfg = {
        "stage": stage,
        "device": "cpu",
        "data": {"root": str(pre_root), "train_split": "train"},
        "model": TINY_MODEL,
        "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, "lr_step_epochs": 1, **train},
        "images": {"crop_wh": [64, 48]},
        "chunks": {"num_points": 256, "views": 1, "chunks_per_scene": 1, "min_points": 50},
    }
    return cfg


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- datasets
def test_chunk_dataset_views_and_augmentation_are_consistent(pre_root):
    """Q (back-projected pixels of the chosen views, after augmentation) lies on P, and the
    views are what greedy selection on the coverage table gives."""
    from scipy.spatial import cKDTree

    from safnet_ros.data.dataset import ChunkDataset, list_scenes
    from safnet_ros.geometry.views import greedy_select

    scenes = list_scenes(pre_root, "train")
    plain = ChunkDataset(scenes, num_points=2048, num_views=3, chunks_per_scene=4, seed=3, train=False)
    aug = ChunkDataset(scenes, num_points=2048, num_views=3, chunks_per_scene=4, seed=3, train=True)
    near = total = 0
    rotations = []
    for i in range(len(plain)):
        sample, info = plain[i]
        a_sample, a_info = aug[i]
        assert sample.points.shape == (2048, 3) and sample.images.shape == (3, 3, 120, 160)
        assert sample.labels.shape == (2048,)
        assert np.abs(sample.points[:, :2]).max() <= 0.75 + 1e-4  # chunk-local 1.5 m box
        assert set(np.unique(sample.labels)) <= set(range(20)) | {IGNORE_INDEX}
        assert info["frames"] == a_info["frames"]  # same draw, augmentation comes last
        np.testing.assert_array_equal(sample.labels, a_sample.labels)
        np.testing.assert_allclose(sample.points[:, 2], a_sample.points[:, 2], atol=1e-5)
        # The augmentation is one rigid xy map (rotation, maybe a mirror) of P ...
        X = np.c_[sample.points[:, :2], np.ones(2048)]
        A, *_ = np.linalg.lstsq(X, a_sample.points[:, :2], rcond=None)
        np.testing.assert_allclose(X @ A, a_sample.points[:, :2], atol=1e-4)
        np.testing.assert_allclose(np.abs(np.linalg.det(A[:2])), 1.0, atol=1e-4)
        rotations.append(np.degrees(np.arctan2(A[0, 1], A[0, 0])))
        if info["views"] == 0:
            assert len(sample.q_points) == 0
            continue
        # ... and the same map moves Q: the views' poses were transformed with the points.
        common, ia, ib = np.intersect1d(sample.q_pixel, a_sample.q_pixel, return_indices=True)
        assert len(common) > 100
        q = np.c_[sample.q_points[ia, :2], np.ones(len(ia))] @ A
        np.testing.assert_allclose(q, a_sample.q_points[ib, :2], atol=2e-3)
        d, _ = cKDTree(sample.points).query(sample.q_points)
        near += int((d < 0.1).sum())
        total += len(d)
        assert sample.q_pixel.max() < info["views"] * 120 * 160
        assert len(info["frames"]) == len(set(info["frames"]))
    assert total > 0 and near / total > 0.5, "Q does not lie on P"
    assert np.ptp(rotations) > 10
    # Without subsampling, selection equals greedy_select on the chunk's coverage columns.
    scene = scenes[0]
    idx = np.flatnonzero(np.abs(scene.points[:, 0] - np.median(scene.points[:, 0])) < 0.75)
    expect = greedy_select(scene.coverage(idx), 3)
    assert scene.select_views(idx, 3, max_base=10**9) == expect


def test_chunks_centred_on_covered_points_always_get_a_view(pre_root):
    from safnet_ros.data.dataset import ChunkDataset, list_scenes
    from safnet_ros.data.preprocess import unpack_coverage

    scenes = list_scenes(pre_root, "train")
    s = scenes[0]
    covered = s.covered_points()
    table = unpack_coverage(s.coverage_bits, np.arange(len(s.coverage_index)))
    np.testing.assert_array_equal(covered, s.coverage_index[table.any(axis=0)])
    assert 0 < len(covered) < len(s.points)
    ds = ChunkDataset(scenes, num_points=256, num_views=3, chunks_per_scene=10, centre_on_covered=True, seed=2)
    assert all(ds[i][1]["views"] >= 1 for i in range(len(ds)))


def test_min_views_mixes_the_view_count_of_training_chunks_only(pre_root):
    from safnet_ros.data.dataset import ChunkDataset, list_scenes
    from safnet_ros.errors import ConfigError

    scenes = list_scenes(pre_root, "train")
    mixed = ChunkDataset(scenes, num_points=128, num_views=3, min_views=1, chunks_per_scene=24, seed=4)
    got = [mixed[i] for i in range(len(mixed))]
    counts = {info["views"] for _s, info in got}
    assert counts <= {1, 2, 3} and len(counts) >= 2  # drawn per chunk from 1..3 (select_views may give fewer)
    assert {s.images.shape[0] for s, _ in got} == {3}  # always 3 slots: a batch keeps one V
    assert any(info["views"] < 3 for _s, info in got)
    # validation keeps the full count, and a fixed-view dataset draws exactly as before min_views existed
    val = ChunkDataset(scenes, num_points=128, num_views=3, min_views=1, chunks_per_scene=4, train=False, seed=4)
    fixed_val = ChunkDataset(scenes, num_points=128, num_views=3, chunks_per_scene=4, train=False, seed=4)
    assert [val[i][1]["frames"] for i in range(4)] == [fixed_val[i][1]["frames"] for i in range(4)]
    fixed = ChunkDataset(scenes, num_points=128, num_views=3, min_views=3, chunks_per_scene=4, seed=4)
    plain = ChunkDataset(scenes, num_points=128, num_views=3, chunks_per_scene=4, seed=4)
    assert [fixed[i][1]["frames"] for i in range(4)] == [plain[i][1]["frames"] for i in range(4)]
    with pytest.raises(ConfigError, match="min_views"):
        ChunkDataset(scenes, num_views=3, min_views=4)


def test_chunk_dataset_blank_views_for_scene_without_frames(pre_root, tmp_path):
    import shutil

    from safnet_ros.data.dataset import ChunkDataset, PreprocessedScene
    from safnet_ros.engine.batching import collate

    src = next(p for p in pre_root.iterdir() if p.name.startswith("scene"))
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    # Same scene, zero frames (as preprocess writes a scene without a usable frame).
    for name, shape, dtype in (("color", (0, 120, 160, 3), np.uint8), ("depth", (0, 120, 160), np.uint16),
                               ("label2d", (0, 120, 160), np.uint8), ("poses", (0, 4, 4), np.float32),
                               ("coverage_bits", (0, (len(np.load(src / "points.npy")) + 7) // 8), np.uint8)):
        np.save(dst / f"{name}.npy", np.zeros(shape, dtype))
    meta = json.loads((dst / "meta.json").read_text())
    meta["num_frames"] = 0  # however many valid frames the generated scene had
    (dst / "meta.json").write_text(json.dumps(meta))
    ds = ChunkDataset([PreprocessedScene(dst)], num_points=128, num_views=3, chunks_per_scene=2)
    batch = collate([ds[0][0], ds[1][0]])
    assert ds[0][1]["views"] == 0
    assert batch.images.shape == (2, 3, 3, 120, 160)
    assert not batch.q_mask.any()


def test_image_dataset_crop_and_flip_keep_labels_aligned(pre_root):
    from safnet_ros.data.dataset import ImageDataset, list_scenes
    from safnet_ros.engine.batching import normalize_images

    scenes = list_scenes(pre_root, "train")
    plain = ImageDataset(scenes, train=False)
    img, lab = plain[3]
    s, f = plain.items[3]
    np.testing.assert_array_equal(lab.numpy(), scenes[s].label2d[f])
    aug = ImageDataset(scenes, train=True, crop_wh=(64, 48), flip=True, seed=1)
    flips = 0
    for i in range(len(aug)):
        a_img, a_lab = aug[i]
        assert a_img.shape == (3, 48, 64) and a_lab.shape == (48, 64)
        s, f = aug.items[i]
        full = normalize_images(np.asarray(scenes[s].color[f])[None])[0]
        full_lab = np.asarray(scenes[s].label2d[f])
        found = False
        for flipped in (False, True):
            ref = np.ascontiguousarray(full[:, :, ::-1] if flipped else full)
            ref_lab = full_lab[:, ::-1] if flipped else full_lab
            rows = np.lib.stride_tricks.sliding_window_view(ref[0], 64, axis=1)  # (120, 97, 64)
            cand = np.argwhere(np.isclose(rows, a_img.numpy()[0, 0]).all(axis=-1))
            for y, x in cand:
                if y + 48 <= 120 and np.allclose(ref[:, y:y + 48, x:x + 64], a_img.numpy()) and \
                        np.array_equal(ref_lab[y:y + 48, x:x + 64], a_lab.numpy()):
                    found, flips = True, flips + flipped
                    break
            if found:
                break
        assert found, f"item {i}: the crop is not a crop of its frame with its labels"
    assert 0 < flips < len(aug)


# --------------------------------------------------------------------------- trainer
@pytest.mark.slow
def test_train_2d_then_3d_frozen_and_resume(pre_root, tmp_path):
    from safnet_ros.engine.train import train
    from safnet_ros.model.safnet import load_checkpoint

    out2d = tmp_path / "run2d"
    r2 = train(_cfg(pre_root, "2d"), out2d, progress=False)
    assert r2.epochs_run == [0]
    rows = _csv(out2d / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0"] and rows[0]["stage"] == "2d"
    assert float(rows[0]["lr"]) == pytest.approx(0.005) and np.isfinite(float(rows[0]["train_loss"]))
    assert float(rows[0]["train_loss"]) > 0.1
    m2, c2, extra = load_checkpoint(out2d / "checkpoints" / "epoch_000.pt")
    assert extra["stage"] == "2d" and extra["epoch"] == 0
    assert list((out2d / "tensorboard").glob("events.out.tfevents.*"))

    cfg3 = _cfg(pre_root, "3d")
    cfg3["init_2d"] = str(out2d / "model_last.pt")
    cfg3["train"]["class_weights"] = True
    out3d = tmp_path / "run3d"
    train(cfg3, out3d, progress=False)
    m3, c3, _ = load_checkpoint(out3d / "checkpoints" / "epoch_000.pt")
    assert c3.freeze_2d and c3.unproj_finetune_2d
    tail = ("up1.", "classifier.")  # L_2Dunp fine-tunes the 2D tail; the rest stays frozen (BN statistics too)
    for (k, v2), (_, v3) in zip(m2.net2d.state_dict().items(), m3.net2d.state_dict().items()):
        assert k.startswith(tail) or torch.equal(v2, v3), f"frozen 2D net changed: {k}"
    assert any(not torch.equal(v2, v3) for (k, v2), (_, v3) in
               zip(m2.net2d.state_dict().items(), m3.net2d.state_dict().items()) if k.startswith(tail))
    fresh = m3.head.state_dict()
    trained_any = any(not torch.equal(a, b) for a, b in zip(fresh.values(), m2.head.state_dict().values()))
    assert trained_any, "the fusion head did not train"

    # Resume: one more epoch continues from the checkpoint epoch, with the schedule.
    cfg3["train"]["epochs"] = 2
    r = train(cfg3, out3d, resume=True, progress=False)
    assert r.epochs_run == [1]
    rows = _csv(out3d / "metrics.csv")
    assert [int(x["epoch"]) for x in rows] == [0, 1]
    lrs = [float(x["lr"]) for x in rows]
    np.testing.assert_allclose(lrs, [1e-3, 1e-4], rtol=1e-6)  # /10 every lr_step_epochs = 1 epoch
    state = torch.load(out3d / "checkpoints" / "train_state.pt", weights_only=False)
    assert state["epoch"] == 1 and (out3d / "checkpoints" / "epoch_001.pt").is_file()
    m_resumed, _, extra = load_checkpoint(out3d / "model_last.pt")
    assert extra["epoch"] == 1
    for (k, v2), (_, v3) in zip(m2.net2d.state_dict().items(), m_resumed.net2d.state_dict().items()):
        assert k.startswith(tail) or torch.equal(v2, v3), f"frozen 2D net changed after resume: {k}"
    # Nothing left to do.
    assert train(cfg3, out3d, resume=True, progress=False).epochs_run == []


def test_resume_without_state_and_bad_config(pre_root, tmp_path):
    from safnet_ros.cli import main
    from safnet_ros.engine.train import load_config, train

    with pytest.raises(MissingDataError):
        train(_cfg(pre_root, "2d"), tmp_path / "none", resume=True, progress=False)
    bad = _cfg(pre_root, "3d")
    bad["train"]["lrr"] = 1
    with pytest.raises(ConfigError, match="lrr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="stage"):
        load_config({**_cfg(pre_root, "3d"), "stage": "4d"})
    with pytest.raises(ConfigError):
        load_config({**_cfg(pre_root, "3d"), "model": {"preset": "huge"}})
    y = tmp_path / "bad.yaml"
    y.write_text("stage: 3d\ndata: {root: /nonexistent}\ntrain: {epochs: 0}\n")
    assert main(["train", str(y)]) == 2


def test_shipped_configs_load():
    from safnet_ros.engine.train import load_config

    root = Path(__file__).resolve().parents[1] / "config"
    c2 = load_config(root / "train_synth_2d.yaml")
    c3 = load_config(root / "train_synth_3d.yaml")
    assert c2.stage == "2d" and c2.train.optimizer == "sgd" and c2.train.lr == 0.005
    assert c3.stage == "3d" and c3.train.optimizer == "adam" and c3.train.lr == 0.001
    assert c3.chunks.num_points == 8192
    assert c2.train.class_weights and c3.train.class_weights  # issue 14: on in the shipped recipes
    assert (c3.chunks.min_views, c3.chunks.views) == (0, 5)  # issue 28: 0-5 views per training chunk


@pytest.mark.slow
def test_ddp_two_processes_gloo(pre_root, tmp_path):
    """Two CPU processes, gloo, file:// rendezvous: one synchronised step of stage 3d."""
    import torch.multiprocessing as mp

    from safnet_ros.engine.train import spawn_worker

    cfg = _cfg(pre_root, "3d")
    cfg["chunks"]["chunks_per_scene"] = 2
    cfg["train"]["batch_size"] = 1
    init = f"file://{tmp_path / 'rendezvous'}"
    out = tmp_path / "ddp"
    mp.spawn(spawn_worker, args=(2, init, cfg, str(out), False), nprocs=2, join=True)
    rows = _csv(out / "metrics.csv")
    assert len(rows) == 1
    assert int(rows[0]["samples"]) == 2  # one chunk per rank, summed over both ranks
    from safnet_ros.model.safnet import load_checkpoint

    load_checkpoint(out / "checkpoints" / "epoch_000.pt")


# --------------------------------------------------------------------------- --set and the time budget
def test_set_overrides_parse_as_yaml_and_are_checked(pre_root, tmp_path):
    from safnet_ros.engine.train import load_config, parse_sets

    assert parse_sets(["model.variant=concat", "train.epochs=5", "train.lr=0.01", "chunks.rotate=false",
                       "images.crop_wh=[64, 48]", "out=runs/x"]) == {
        "model": {"variant": "concat"}, "train": {"epochs": 5, "lr": 0.01}, "chunks": {"rotate": False},
        "images": {"crop_wh": [64, 48]}, "out": "runs/x"}
    cfg = load_config(_cfg(pre_root, "3d"), sets=["model.variant=pointnet2", "train.max_minutes=2.5",
                                                  "model.overrides={csm: false}"])
    assert cfg.model.variant == "pointnet2" and cfg.train.max_minutes == 2.5
    assert cfg.model.overrides == {**TINY_MODEL["overrides"], "csm": False}  # --set merges into the mapping
    assert cfg.train.epochs == 1  # untouched keys keep the config's value
    for bad, match in (("train.epochs", "KEY.PATH=VALUE"), ("=3", "KEY.PATH=VALUE"), ("train..lr=1", "KEY"),
                       ("train.lrr=1", "lrr"), ("train.epochs=0", "epochs"), ("train.max_minutes=-1", "max_minutes"),
                       ("model.variant=[", "YAML")):
        with pytest.raises(ConfigError, match=match):
            load_config(_cfg(pre_root, "3d"), sets=[bad])
    # The CLI passes --set through.
    y = tmp_path / "c.yaml"
    import yaml

    y.write_text(yaml.safe_dump(_cfg(pre_root, "2d")))
    from safnet_ros.cli import main

    assert main(["train", str(y), "--no-progress", "--out", str(tmp_path / "r"), "--set", "train.epochs=2",
                 "--set", "train.max_steps_per_epoch=1", "--set", "train.max_val_batches=1"]) == 0
    assert [int(r["epoch"]) for r in _csv(tmp_path / "r" / "metrics.csv")] == [0, 1]


def test_max_minutes_stops_after_the_epoch_that_passes_it(pre_root, tmp_path):
    from safnet_ros.engine.train import train

    cfg = _cfg(pre_root, "2d", epochs=4, max_minutes=1e-6)  # over budget after the first epoch
    r = train(cfg, tmp_path / "t", progress=False)
    assert r.stopped_by_time and r.epochs_run == [0]
    assert (tmp_path / "t" / "model_last.pt").is_file()
    # The budget counts this run only: --resume gets a fresh one and stops again after one epoch.
    r2 = train(cfg, tmp_path / "t", resume=True, progress=False)
    assert r2.stopped_by_time and r2.epochs_run == [1]
    # No budget: all epochs.
    cfg["train"].update(max_minutes=0, epochs=2)
    r3 = train(cfg, tmp_path / "u", progress=False)
    assert not r3.stopped_by_time and r3.epochs_run == [0, 1]


@pytest.mark.slow
def test_full_model_overfits_a_chunk_from_the_generator(pre_root, overfit):
    """Issue 3's learning test on the product's own data path: one chunk of a generated,
    preprocessed synthetic scene (views chosen greedily, back-projected as in training),
    learnt to >= 95 % point accuracy within a few hundred CPU steps."""
    from safnet_ros.data.dataset import ChunkDataset, collate_chunks, list_scenes
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = ChunkDataset(list_scenes(pre_root, "train"), num_points=1024, num_views=3, chunks_per_scene=4,
                            train=False, seed=0)
        # The first chunk of the scenes that holds several classes (a scanned room has bare corners too).
        for k in range(len(data)):
            batch, infos = collate_chunks([data[k]])
            labels = batch.labels[batch.labels != IGNORE_INDEX]
            if len(torch.unique(labels)) >= 3:
                break
        assert infos[0]["views"] >= 1 and int(batch.q_mask.sum()) > 1000
        assert len(torch.unique(labels)) >= 3, "the chunk should hold several classes"
        cfg = SafnetConfig.preset("lite", pn_npoints=(256, 64, 16, 8))
        accuracy, _, steps = overfit(build_model(cfg), batch, cfg, steps=400)
        assert accuracy >= 0.95, f"accuracy {accuracy:.3f} after {steps} steps"
    finally:
        torch.set_num_threads(before)


def test_stage_defaults_do_not_leak_between_configs(tmp_path):
    """A config without a ``train`` section gets the stage's lr filled in without changing DEFAULTS: a later
    stage-3d config still gets Adam's 1e-3 (this leaked once and made a whole test session's 3d runs use 0.005)."""
    from safnet_ros.engine.train import DEFAULTS, load_config

    c2 = load_config({"stage": "2d", "data": {"root": str(tmp_path)}})
    c3 = load_config({"stage": "3d", "data": {"root": str(tmp_path)}})
    assert (c2.train.lr, c3.train.lr) == (0.005, 0.001)
    assert DEFAULTS["train"]["lr"] is None and DEFAULTS["train"]["optimizer"] is None
