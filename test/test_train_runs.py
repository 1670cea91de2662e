"""`safnet train` runs as a user meets them: existing runs are kept, --resume checks, NaN stops, bf16, 0-5 views."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from safnet_ros.cli import main
from safnet_ros.engine.inference import autocast_context
from safnet_ros.engine.train import (
    DistInfo,
    Run,
    TrainingDivergedError,
    build_data,
    build_model,
    build_optimizer,
    load_config,
    save_state,
    train,
)

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
    assert preprocess(str(raw), str(out), progress=False)["done"] == 2
    return out


def _cfg(pre_root: Path, stage: str = "2d", **train) -> dict:
    return {"stage": stage, "device": "cpu", "data": {"root": str(pre_root), "train_split": "train"},
            "model": TINY_MODEL,
            "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, "lr_step_epochs": 1, **train},
            "images": {"crop_wh": [64, 48]},
            "chunks": {"num_points": 256, "views": 1, "chunks_per_scene": 1, "min_points": 50}}


def _yaml(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _error(capsys) -> str:
    _out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_not_overwritten_and_overwrite_removes_only_ours(pre_root, tmp_path, capsys):
    cfg = _yaml(tmp_path, _cfg(pre_root))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert (run / ".safnet-output.json").is_file() and (run / "checkpoints" / "epoch_000.pt").is_file()
    (run / "notes.txt").write_text("my notes\n")
    (run / "checkpoints" / "best_by_hand.pt").write_bytes(b"mine")
    before = _tree(run)
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 2
    line = _error(capsys)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert _tree(run) == before, "a refused run changed the folder"
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--overwrite"]) == 2
    assert "exclude" in _error(capsys)
    # --overwrite: a fresh run; the user's files stay byte for byte
    assert main(["train", str(cfg), "--out", str(run), "--no-progress", "--overwrite",
                 "--set", "train.epochs=2"]) == 0
    after = _tree(run)
    assert after["notes.txt"] == b"my notes\n" and after["checkpoints/best_by_hand.pt"] == b"mine"
    with open(run / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the old events went


def test_resume_checks_the_config_and_the_state(pre_root, tmp_path, capsys):
    cfg = _cfg(pre_root, "3d")
    run = tmp_path / "run"
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    # another variant: refused, naming the key and both values
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--resume", "--no-progress",
                 "--set", "model.variant=concat", "--set", "train.epochs=2"]) == 2
    line = _error(capsys)
    assert "model.variant: run 'safnet', now 'concat'" in line and "train.epochs" not in line
    # a model override too
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--resume", "--no-progress",
                 "--set", "model.overrides.k=4"]) == 2
    assert "model.overrides" in _error(capsys)
    # an old state without the config: the checkpoint's model config is compared
    state_path = run / "checkpoints" / "train_state.pt"
    good = torch.load(state_path, weights_only=True)
    torch.save({k: v for k, v in good.items() if k != "config"}, state_path)
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--resume", "--no-progress",
                 "--set", "model.variant=concat"]) == 2
    assert "variant" in _error(capsys)
    for change, words in (({"optimizer": {}}, "optimizer state is empty"),
                          ({"optimizer": {"state": {}, "param_groups": []}}, "optimizer state is empty"),
                          ({"epoch": 1.5}, "epoch must be an integer"),
                          ({"epoch": "3"}, "epoch must be an integer"),
                          ({"scheduler": {}}, "scheduler"),
                          ({"checkpoint": "../../elsewhere.pt"}, "inside the run")):
        torch.save({**good, **change}, state_path)
        assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--resume", "--no-progress",
                     "--set", "train.epochs=2"]) == 2, change
        line = _error(capsys)
        assert words in line and str(state_path) in line
    # the right state resumes (a budget key may change)
    torch.save(good, state_path)
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--resume", "--no-progress",
                 "--set", "train.epochs=2", "--set", "train.max_minutes=5"]) == 0


def test_nan_stops_at_the_first_non_finite_loss_and_writes_no_checkpoint(pre_root, tmp_path, capsys):
    """A loss weight of 1e38 overflows the gradients of step 1: step 2's loss is NaN, and the run stops there."""
    cfg = _cfg(pre_root, "3d", epochs=3, max_steps_per_epoch=0)
    cfg["chunks"]["chunks_per_scene"] = 3
    cfg["model"] = {**TINY_MODEL, "overrides": {**TINY_MODEL["overrides"], "w_3d": 1e38}}
    run = tmp_path / "run"
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--no-progress"]) == 2
    line = _error(capsys)
    assert "training loss is nan at step 2 (epoch 1, batch 2)" in line
    assert not list(run.rglob("*.pt")) and not (run / "metrics.csv").exists()
    # One step per epoch: the loss of each step is finite, the weights after it are not: no checkpoint.
    cfg["chunks"]["chunks_per_scene"] = 1
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--no-progress"]) == 2
    assert "non-finite after epoch 1" in _error(capsys)
    assert not list(run.rglob("*.pt")) and not (run / "metrics.csv").exists()


def test_a_checkpoint_with_non_finite_weights_is_never_written(pre_root, tmp_path):
    cfg = load_config(_cfg(pre_root))
    info = DistInfo()
    parts = build_model(cfg, info)
    opt, sched = build_optimizer(cfg, parts)
    run = Run(cfg, info, tmp_path, parts, build_data(cfg, info), parts.module, opt, sched,
              torch.amp.GradScaler("cuda", enabled=False))
    (tmp_path / "checkpoints").mkdir()
    with torch.no_grad():
        next(parts.model.net2d.parameters())[0].fill_(float("inf"))
    with pytest.raises(TrainingDivergedError, match="non-finite after epoch 1"):
        save_state(run, 0, {"epoch": 0})
    assert list(tmp_path.rglob("*")) == [tmp_path / "checkpoints"]


@pytest.mark.parametrize("stage", ["2d", "3d"])
def test_a_bf16_training_step_lowers_the_loss(pre_root, stage):
    """train.amp: bf16 on the CPU: a few autocast steps on one batch lower its loss."""
    torch.manual_seed(0)
    cfg = load_config(_cfg(pre_root, stage, amp="bf16", lr=0.002 if stage == "3d" else 0.01))
    info = DistInfo(device=torch.device("cpu"))
    parts = build_model(cfg, info)
    opt, _ = build_optimizer(cfg, parts)
    batch = next(iter(build_data(cfg, info).train_loader))
    inputs = batch if stage == "2d" else (batch[0],)
    parts.module.train()
    losses = []
    for _ in range(6):
        with autocast_context("bf16", info.device):
            loss, logits, _labels = parts.module(*inputs)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(np.isfinite(losses))
    assert min(losses[-2:]) < losses[0], losses
    if stage == "2d":
        with autocast_context("bf16", info.device):
            _, raw = parts.model.net2d(inputs[0])
        assert raw.dtype == torch.bfloat16  # autocast did run the convolutions in bf16


def test_training_chunks_draw_0_to_5_views(pre_root, tmp_path):
    from safnet_ros.data.dataset import ChunkDataset, list_scenes
    scenes = list_scenes(pre_root, "train")
    ds = ChunkDataset(scenes, num_points=128, num_views=5, min_views=0, chunks_per_scene=20, seed=1)
    counts = [ds[i][1]["views"] for i in range(len(ds))]
    assert 0 in counts and max(counts) >= 3 and {ds[i][0].images.shape[0] for i in range(3)} == {5}
    cfg = _cfg(pre_root, "3d", max_steps_per_epoch=0)
    cfg["chunks"].update(views=[0, 5], chunks_per_scene=6)
    r = train(cfg, tmp_path / "run", progress=False)
    assert r.metrics[0]["chunks_without_views"] > 0  # the 3D-only path trained
    assert yaml.safe_load((tmp_path / "run" / "config_used.yaml").read_text())["chunks"]["min_views"] == 0


def test_camera_augmentation_reaches_the_views_colour_and_depth(pre_root):
    from safnet_ros.data.augment import CameraAugment
    from safnet_ros.data.dataset import ChunkDataset, ImageDataset, list_scenes

    scenes = list_scenes(pre_root, "train")
    kw = dict(num_points=2048, num_views=3, chunks_per_scene=3, seed=5, color_jitter=0.0)
    plain = ChunkDataset(scenes, **kw)
    real = ChunkDataset(scenes, camera=CameraAugment(prob=1.0, depth_dark_holes=0.3), **kw)
    fewer = changed = 0
    for i in range(len(plain)):
        (a, ia), (b, ib) = plain[i], real[i]
        assert ia["frames"] == ib["frames"]
        fewer += len(b.q_points) < len(a.q_points)  # depth holes: fewer back-projected pixels
        changed += not np.array_equal(a.images, b.images)
    assert fewer == changed == len(plain)
    off = ChunkDataset(scenes, camera=CameraAugment(prob=0.0), **kw)  # off: the very items of a run without it
    assert all(np.array_equal(plain[i][0].images, off[i][0].images) for i in range(len(plain)))
    img_plain = ImageDataset(scenes, train=True, crop_wh=None, flip=False, seed=0)[0][0]
    img_real = ImageDataset(scenes, train=True, crop_wh=None, flip=False, seed=0,
                            camera=CameraAugment(prob=1.0))[0][0]
    assert img_plain.shape == img_real.shape and not torch.equal(img_plain, img_real)


def test_train_profile_says_where_a_step_goes(pre_root, tmp_path, capsys):
    """`train.profile: true`: a table on stderr and OUT/profile.json (data, forward per model stage, backward,
    optimizer; chunks/s); each epoch line carries chunks/s in any case."""
    import json

    cfg = _cfg(pre_root, "3d", max_steps_per_epoch=2, profile=True)
    cfg["chunks"]["chunks_per_scene"] = 2
    run = tmp_path / "run"
    assert main(["train", str(_yaml(tmp_path, cfg)), "--out", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "chunks/s)" in err and "step profile: 2 steps, 4 chunks" in err
    prof = json.loads((run / "profile.json").read_text())
    assert prof["steps"] == 2 and prof["chunks"] == 4 and prof["chunks_per_s"] > 0
    assert all(prof["ms_per_step"][p] > 0 for p in ("data", "forward", "backward", "optimizer"))
    stages = prof["forward_stages_ms_per_step"]
    assert {"fps", "neighbours", "csm", "fusion"} <= set(stages) and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) == pytest.approx(prof["ms_per_step"]["forward"])
