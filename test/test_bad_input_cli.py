"""Bad input through the ``safnet`` CLI: one ``error:`` line naming the file or argument, exit 2.

The README promises: "Bad input gives one ``error: ...`` line naming the file
and what is wrong, and exit status 2." Every case here runs a real command
(``safnet_ros.cli.main`` in-process, a few in a subprocess) on a tiny real
scene in ScanNet's on-disk format (SensWriter, write_scannet_mesh), its
preprocessed folder, an untrained checkpoint and a converted bag, each broken
in one way a careless user (or a disk) would break it. Each case asserts: exit
status 2, exactly one line with ``error:``, the file or argument named in it,
no traceback, and no output left behind that a later run would take as complete.

Issue 17 lists the classes: bags, training configs, resuming, output paths that
are regular files, scene files, preprocessed data, absurd numbers, silent
successes and bad checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.cli import main
from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.sens import SensWriter

NAME = "scene0001_00"
N_FRAMES = 6
WH = (40, 30)
ALIGN = np.array([[0.0, -1.0, 0.0, 2.0], [1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.1], [0.0, 0.0, 0.0, 1.0]])
SENSOR = b"StructureSensor"
#: Byte offsets in a .sens written by SensWriter (version u32, name length u64, name, 4 matrices, format).
OFF_INTR_COLOR = 4 + 8 + len(SENSOR)
OFF_INTR_DEPTH = OFF_INTR_COLOR + 2 * 64
OFF_FORMAT = OFF_INTR_COLOR + 4 * 64
OFF_FIRST_FRAME = OFF_FORMAT + 28 + 8


# ----------------------------------------------------------------------------- fixtures
def _pinhole(wh):
    f = wh[0] / 2 / math.tan(math.radians(30))
    return np.array([[f, 0, wh[0] / 2], [0, f, wh[1] / 2], [0, 0, 1.0]])


def _look_at(eye, target):
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, eye
    return m


def write_sens(path: Path, pose_fn=None) -> None:
    rng = np.random.default_rng(3)
    with SensWriter(path, intrinsic_color=_pinhole(WH), intrinsic_depth=_pinhole(WH), color_size=WH,
                    depth_size=WH) as w:
        for i in range(N_FRAMES):
            a = 2 * math.pi * i / N_FRAMES
            pose = _look_at(np.array([2 + 0.3 * math.cos(a), 2 + 0.3 * math.sin(a), 1.2]), np.array([0.5, 0.5, 0.6]))
            if pose_fn is not None:
                pose = pose_fn(pose)
            depth = rng.integers(500, 3000, (WH[1], WH[0])).astype(np.uint16)
            w.write_frame(pose, rng.integers(0, 256, (WH[1], WH[0], 3), dtype=np.uint8), depth,
                          color_timestamp=1_000_000 + 33_333 * i, depth_timestamp=1_000_000 + 33_333 * i)


def write_mesh(scene: Path, xyz=None) -> None:
    g = np.linspace(0.0, 4.0, 9)
    gx, gy = np.meshgrid(g, g)
    floor = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
    wall = np.stack([gx.ravel(), np.zeros(gx.size), gy.ravel() * 0.6], 1)
    pts = np.concatenate([floor, wall]).astype(np.float32) if xyz is None else xyz
    idx = np.arange(81).reshape(9, 9)
    quads = np.stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()], 1)
    faces = np.concatenate([quads, quads + 81]).astype(np.int32)
    rgb = np.full((len(pts), 3), 128, np.uint8)
    labels = np.r_[np.full(81, 2), np.full(81, 1)].astype(np.uint16)  # floor, wall (nyu40)
    write_scannet_mesh(scene / f"{NAME}_vh_clean_2.ply", pts, rgb, faces)
    write_scannet_mesh(scene / f"{NAME}_vh_clean_2.labels.ply", pts, rgb, faces, labels=labels)


def write_scene(root: Path, pose_fn=None) -> Path:
    scene = root / NAME
    scene.mkdir(parents=True)
    write_sens(scene / f"{NAME}.sens", pose_fn)
    write_mesh(scene)
    (scene / f"{NAME}.txt").write_text("axisAlignment = " + " ".join(repr(float(v)) for v in ALIGN.ravel()) + "\n")
    (root / "scannetv2_train.txt").write_text(f"{NAME}\n")
    return scene


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A raw root with one scene, its preprocessed folder, an untrained checkpoint and a bag."""
    from safnet_ros.data.preprocess import preprocess
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model, save_checkpoint
    from safnet_ros.tools.bag_convert import convert_scene

    base = tmp_path_factory.mktemp("good")
    raw = base / "raw"
    scene = write_scene(raw)
    preprocess(str(raw), str(base / "pre"), progress=False)
    config = SafnetConfig.preset("lite")
    save_checkpoint(base / "model.pt", build_model(config), config)
    convert_scene(scene, base / "bag", progress=False)
    return {"raw": raw, "scene": scene, "pre": base / "pre", "model": base / "model.pt", "bag": base / "bag"}


def run_bad(capsys, argv, *named: str) -> str:
    """Run ``safnet argv`` in-process; assert exit 2, one error line naming each of ``named``,
    no traceback. Returns the error line."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2, f"exit {rc}; stderr:\n{err}\nstdout:\n{out}"
    assert len(lines) == 1, err
    for text in named:
        assert str(text) in lines[0], f"{text!r} not named in {lines[0]!r}"
    return lines[0]


def copy_scene(good, tmp_path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(good["raw"], root)
    return root


def patch(path: Path, offset: int, fmt: str, *values) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def leftovers(folder: Path) -> list[str]:
    """Names under ``folder`` (recursively) of anything a later run could take for output."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------- absurd numbers
ABSURD = [
    # (argv after `safnet`, the argument that must be named)
    (["bench", "model", "--width", "0"], "--width"),
    (["bench", "model", "--height", "-5"], "--height"),
    (["bench", "model", "--points", str(10**12)], "--points"),
    (["bench", "model", "--views", "0"], "--views"),
    (["bench", "model", "--repeats", "0"], "--repeats"),
    (["bench", "model", "--threads", "0"], "--threads"),
    (["bench", "model", "--precision", "fp32,fp8"], "--precision"),
    (["bench", "soak", "--minutes", "0"], "--minutes"),
    (["bench", "soak", "--rate", "nan"], "--rate"),
    (["bench", "soak", "--sample-period", "-1"], "--sample-period"),
    (["bench", "soak", "--device", "tpu"], "--device"),
    (["data", "synth", "OUT", "--frames", str(10**12)], "--frames"),
    (["data", "synth", "OUT", "--scenes", "0"], "--scenes"),
    (["data", "synth", "OUT", "--color-size", "0x0"], "--color-size"),
    (["data", "synth", "OUT", "--depth-size", "100000x100000"], "--depth-size"),
    (["data", "synth", "OUT", "--vertex-spacing", "nan"], "--vertex-spacing"),
    (["data", "synth", "OUT", "--depth-noise", "-1"], "--depth-noise"),
    (["data", "synth", "OUT", "--invalid-poses", "1"], "--invalid-poses"),
    (["data", "synth", "OUT", "--max-rotation", "inf"], "--max-rotation"),
    (["data", "preprocess", "R", "O", "--workers", "0"], "--workers"),
    (["data", "preprocess", "R", "O", "--frame-step", "0"], "--frame-step"),
    (["data", "preprocess", "R", "O", "--max-frames", "-1"], "--max-frames"),
    (["data", "preprocess", "R", "O", "--coverage-points", str(10**12)], "--coverage-points"),
    (["data", "preprocess", "R", "O", "--seed", "-1"], "--seed"),
    (["bag", "convert", "S", "O", "--resize", "100000x100000"], "--resize"),
    (["bag", "convert", "S", "O", "--resize", "0x10"], "--resize"),
    (["bag", "convert", "S", "O", "--rate", "1e-300"], "--rate"),
    (["bag", "convert", "S", "O", "--cloud-rate", "nan"], "--cloud-rate"),
    (["bag", "convert", "S", "O", "--cloud-rate", "-1"], "--cloud-rate"),
    (["bag", "convert", "S", "O", "--skip", "0"], "--skip"),
    (["bag", "convert", "S", "O", "--max-range", "0"], "--max-range"),
    (["bag", "play", "B", "--rate", "1e-300"], "--rate"),
    (["bag", "play", "B", "--rate", "nan"], "--rate"),
    (["bag", "play", "B", "--wait-subscribers", "inf"], "--wait-subscribers"),
    (["segment-bag", "B", "O", "--num-views", "-1"], "--num-views"),
    (["segment-bag", "B", "O", "--max-views", "0"], "--max-views"),
    (["segment-bag", "B", "O", "--device", "tpu"], "--device"),
    (["eval", "--model", "M", "--data", "D", "--views", "99999"], "--views"),
    (["eval", "--model", "M", "--data", "D", "--stride", "0"], "--stride"),
    (["eval", "--model", "M", "--data", "D", "--threads", "-1"], "--threads"),
    (["eval", "--model", "M", "--data", "D", "--scenes", "0"], "--scenes"),
    (["eval", "--model", "M", "--data", "D", "--device", "tpu"], "--device"),
    (["demo", "--frames", "0"], "--frames"),
    (["demo", "--rate", "0"], "--rate"),
    (["demo", "--cloud-rate", "nan"], "--cloud-rate"),
    (["demo", "--seed", "-3"], "--seed"),
]


@pytest.mark.parametrize("argv,arg", ABSURD, ids=[" ".join(a[:2] + a[-2:]) for a, _ in ABSURD])
def test_absurd_numbers_are_range_errors(argv, arg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = run_bad(capsys, argv, arg)
    assert line.startswith("safnet ") and "argument" in line
    assert leftovers(tmp_path) == []  # refused before any work: nothing written


# ----------------------------------------------------------------------------- training configs
BAD_CONFIG_VALUES = [
    ("train: {epochs: ten}", "train.epochs"),
    ("train: {epochs: true}", "train.epochs"),
    ("train: {epochs: 1.9}", "train.epochs"),
    ("train: {epochs: 0}", "train.epochs"),
    ("train: {lr: abc}", "train.lr"),
    ("train: {lr: .nan}", "train.lr"),
    ("train: {num_workers: -1}", "train.num_workers"),
    ("train: {optimizer: rmsprop}", "train.optimizer"),
    ("images: {crop_wh: 5}", "images.crop_wh"),
    ("images: {crop_wh: [500, 20]}", "images.crop_wh"),
    ("chunks: {size: big}", "chunks.size"),
    ("chunks: {views: 9}", "chunks.views"),
    ("seed: abc", "seed"),
    ("device: tpu", "device"),
    ("stage: 4d", "stage"),
    ("model: {variant: magic}", "model.variant"),
    ("trian: {epochs: 1}", "'trian'"),
    ("train: {epoch: 1}", "'train.epoch'"),
    ("train: 5", "train"),
]


def _config(tmp_path: Path, good, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"stage: 2d\ndata: {{root: {good['pre']}, train_split: train}}\n{extra}\n")
    return cfg


@pytest.mark.parametrize("extra,key", BAD_CONFIG_VALUES, ids=[k for _, k in BAD_CONFIG_VALUES])
def test_bad_training_config_values_name_key_and_file(extra, key, good, tmp_path, capsys):
    cfg = _config(tmp_path, good, extra)
    line = run_bad(capsys, ["train", cfg, "--out", tmp_path / "run", "--no-progress"], key, cfg)
    if key.startswith("'"):  # unknown key: the known keys are listed
        assert "known keys" in line
    assert not (tmp_path / "run").exists()


def test_set_override_of_the_wrong_type_names_the_key(good, tmp_path, capsys):
    cfg = _config(tmp_path, good)
    run_bad(capsys, ["train", cfg, "--out", tmp_path / "run", "--set", "train.batch_size=abc"],
            "train.batch_size", "--set")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["binary", "not-yaml", "folder", "fifo", "missing", "list"])
def test_unreadable_training_config_is_named(kind, good, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    if kind == "binary":
        cfg.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    elif kind == "not-yaml":
        cfg.write_text("train: {epochs: [1,\n")
    elif kind == "folder":
        cfg.mkdir()
    elif kind == "fifo":
        os.mkfifo(cfg)
    elif kind == "list":
        cfg.write_text("- 1\n- 2\n")
    run_bad(capsys, ["train", cfg, "--out", tmp_path / "run"], cfg)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- resuming and checkpoints
def _hostile_pickle(path: Path, marker: Path) -> None:
    """A torch file whose unpickling would create ``marker`` (as a hostile file would run code)."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"epoch": 0, "payload": Evil()}, path)


@pytest.mark.parametrize("kind", ["text", "random", "hostile", "empty", "not-ours"])
def test_resume_from_a_bad_training_state(kind, good, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    state = out / "checkpoints" / "train_state.pt"
    state.parent.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    if kind == "text":
        state.write_text("epoch: 3\n")
    elif kind == "random":
        state.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "hostile":
        _hostile_pickle(state, marker)
    elif kind == "empty":
        state.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, state)
    line = run_bad(capsys, ["train", _config(tmp_path, good), "--out", out, "--resume", "--no-progress"], state)
    assert "not a safnet training state" in line
    assert not marker.exists(), "loading the training state ran code from the file"
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "train_state.pt"]


@pytest.mark.parametrize("kind", ["random", "text", "hostile", "folder", "fifo"])
def test_bad_checkpoint_is_one_line(kind, good, tmp_path, capsys):
    model = tmp_path / "model.pt"
    marker = tmp_path / "code_ran"
    if kind == "random":
        model.write_bytes(np.random.default_rng(1).bytes(10_000))
    elif kind == "text":
        model.write_text("this is not a model\n")
    elif kind == "hostile":
        _hostile_pickle(model, marker)
    elif kind == "folder":
        model.mkdir()
    else:
        os.mkfifo(model)
    line = run_bad(capsys, ["eval", "--model", model, "--data", good["pre"], "--split", "train",
                            "--out", tmp_path / "eval", "--no-progress", "--device", "cpu"], model)
    if kind in ("random", "text", "hostile"):
        assert "not a safnet checkpoint" in line
    assert "weights_only" not in line and "file an issue" not in line
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------- output paths that are files
def test_output_paths_that_are_regular_files_fail_before_any_work(good, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    run_bad(capsys, ["train", _config(tmp_path, good), "--out", blocker], blocker)
    run_bad(capsys, ["train", _config(tmp_path, good), "--out", blocker / "sub"], blocker)
    run_bad(capsys, ["data", "preprocess", good["raw"], blocker], blocker)
    run_bad(capsys, ["demo", "--out", blocker, "--fast"], blocker)
    t0 = time.perf_counter()
    run_bad(capsys, ["eval", "--model", good["model"], "--data", good["pre"], "--split", "train",
                     "--out", blocker, "--no-progress", "--device", "cpu"], blocker)
    assert time.perf_counter() - t0 < 20  # refused up front, not after evaluating
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------------------- scene files
def _zero_alignment(root):
    (root / NAME / f"{NAME}.txt").write_text("axisAlignment = " + " ".join(["0"] * 16) + "\n")
    return root / NAME / f"{NAME}.txt"


def _mesh_nan(root):
    xyz = np.zeros((162, 3), np.float32)
    xyz[5] = np.nan
    write_mesh(root / NAME, xyz)
    return root / NAME / f"{NAME}_vh_clean_2.ply"


def _duplicate_property(root):
    p = root / NAME / f"{NAME}_vh_clean_2.ply"
    data = p.read_bytes()
    end = data.index(b"end_header")
    p.write_bytes(data[:end].replace(b"property float y\n", b"property float x\n", 1) + data[end:])
    return p


def _sens(root):
    return root / NAME / f"{NAME}.sens"


def _sens_sizes_zero(root):
    patch(_sens(root), OFF_FORMAT + 8, "<2I", 0, 0)
    return _sens(root)


def _sens_unknown_compression(root):
    patch(_sens(root), OFF_FORMAT, "<i", 7)
    return _sens(root)


def _sens_fx_zero(root):
    patch(_sens(root), OFF_INTR_DEPTH, "<f", 0.0)
    return _sens(root)


def _sens_fx_nan(root):
    patch(_sens(root), OFF_INTR_COLOR, "<f", float("nan"))
    return _sens(root)


def _zero_rotation(root):
    _sens(root).unlink()

    def zero(pose):
        pose = pose.copy()
        pose[:3, :3] = 0.0
        return pose
    write_sens(_sens(root), zero)
    return _sens(root)


def _mesh_is_folder(root):
    p = root / NAME / f"{NAME}_vh_clean_2.ply"
    p.unlink()
    p.mkdir()
    return p


def _mesh_is_fifo(root):
    p = root / NAME / f"{NAME}_vh_clean_2.ply"
    p.unlink()
    os.mkfifo(p)
    return p


def _sens_is_folder(root):
    _sens(root).unlink()
    _sens(root).mkdir()
    return _sens(root)


def _scene_txt_binary(root):
    p = root / NAME / f"{NAME}.txt"
    p.write_bytes(b"axisAlignment = \xff\xfe\x80 1 2 3\n")
    return p


SCENE_BREAKS = {
    "zero-axis-alignment": (_zero_alignment, "axisAlignment"),
    "nan-vertices": (_mesh_nan, "not finite"),
    "duplicate-ply-property": (_duplicate_property, "twice"),
    "sens-0x0": (_sens_sizes_zero, "0x0"),
    "sens-unknown-compression": (_sens_unknown_compression, "compression"),
    "sens-fx-0": (_sens_fx_zero, "intrinsics"),
    "sens-fx-nan": (_sens_fx_nan, "intrinsics"),
    "zero-rotation-poses": (_zero_rotation, "valid pose"),
    "mesh-is-a-folder": (_mesh_is_folder, "folder"),
    "mesh-is-a-fifo": (_mesh_is_fifo, "FIFO"),
    "sens-is-a-folder": (_sens_is_folder, "folder"),
    "scene-txt-binary": (_scene_txt_binary, "UnicodeDecodeError"),
}


@pytest.mark.parametrize("case", sorted(SCENE_BREAKS))
def test_broken_scene_files_are_named_by_info_and_bag_convert(case, good, tmp_path, capsys):
    root = copy_scene(good, tmp_path)
    breaker, problem = SCENE_BREAKS[case]
    path = breaker(root)
    scene = root / NAME
    if case != "zero-rotation-poses":  # data info reports those frames as invalid (see below)
        run_bad(capsys, ["data", "info", scene], path, problem)
    out = tmp_path / "out_bag"
    run_bad(capsys, ["bag", "convert", scene, out, "--quiet"], path, problem)
    assert leftovers(tmp_path).count("out_bag") == 0 and not any(".partial" in n for n in leftovers(tmp_path))


def test_zero_rotation_poses_are_reported_as_invalid_frames(good, tmp_path, capsys):
    root = copy_scene(good, tmp_path)
    _zero_rotation(root)
    assert main(["data", "info", str(root / NAME), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["valid_frames"] == 0 and info["invalid_frames"] == N_FRAMES


def test_corrupt_sens_timestamp_is_synthesised_not_a_crash(good, tmp_path, capsys):
    root = copy_scene(good, tmp_path)
    # frame 0's header starts at OFF_FIRST_FRAME: 16 float32 pose values, then its colour timestamp
    patch(_sens(root), OFF_FIRST_FRAME + 64, "<Q", 2**64 - 1)
    assert main(["bag", "convert", str(root / NAME), str(tmp_path / "bag"), "--quiet", "--cloud-rate", "0"]) == 0
    out = capsys.readouterr().out
    assert "stamps synthesised" in out and " 0 stamps synthesised" not in out


def test_preprocess_refuses_a_degenerate_scene_without_hanging(good, tmp_path):
    """The worst case of the sweep: an all-zero axisAlignment made open3d's ray casting hang."""
    root = copy_scene(good, tmp_path)
    txt = _zero_alignment(root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "safnet_ros.cli", "data", "preprocess", str(root),
                           str(tmp_path / "pre"), "--no-progress"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and str(txt) in lines[0] and "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "pre").iterdir() if p.is_dir()] == []  # no scene folder, no temp


@pytest.mark.parametrize("case", ["nan-vertices", "duplicate-ply-property"])
def test_preprocess_of_a_broken_scene_leaves_no_scene(case, good, tmp_path, capsys):
    root = copy_scene(good, tmp_path)
    path = SCENE_BREAKS[case][0](root)
    run_bad(capsys, ["data", "preprocess", root, tmp_path / "pre", "--no-progress"], path)
    assert [p.name for p in (tmp_path / "pre").iterdir() if p.is_dir()] == []


def test_exported_layout_with_zero_intrinsics_names_the_file(good, tmp_path, capsys):
    from safnet_ros.data.scannet import ScanNetScene, export_frames

    root = tmp_path / "exp"
    scene = root / NAME
    shutil.copytree(good["scene"], scene)
    export_frames(ScanNetScene(scene), scene)
    (scene / f"{NAME}.sens").unlink()
    intr = scene / "intrinsic" / "intrinsic_depth.txt"
    intr.write_text("0 0 20 0\n0 0 15 0\n0 0 1 0\n0 0 0 1\n")
    run_bad(capsys, ["data", "info", scene], intr, "intrinsics")


def test_exported_pose_that_is_a_folder_is_named_as_such(good, tmp_path, capsys):
    from safnet_ros.data.scannet import ScanNetScene, export_frames

    scene = tmp_path / "exp" / NAME
    shutil.copytree(good["scene"], scene)
    export_frames(ScanNetScene(scene), scene)
    (scene / f"{NAME}.sens").unlink()
    pose = scene / "pose" / "2.txt"
    pose.unlink()
    pose.mkdir()
    run_bad(capsys, ["data", "info", scene], pose, "folder")


def test_non_utf8_split_list_is_named(good, tmp_path, capsys):
    root = copy_scene(good, tmp_path)
    split = root / "scannetv2_train.txt"
    split.write_bytes(b"scene0001_00\n\xff\xfe\x80\n")
    run_bad(capsys, ["data", "preprocess", root, tmp_path / "pre", "--split", "train"], split)


# ----------------------------------------------------------------------------- silent successes
def test_preprocess_with_nothing_to_do_is_an_error(good, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_bad(capsys, ["data", "preprocess", empty, tmp_path / "p1"], empty)
    root = copy_scene(good, tmp_path)
    (root / "scannetv2_val.txt").write_text("scene0999_00\nscene0998_00\n")
    run_bad(capsys, ["data", "preprocess", root, tmp_path / "p2", "--split", "val"], root, "split 'val'")
    run_bad(capsys, ["data", "preprocess", root, tmp_path / "p3", "--scenes", "scene0001_00", "scene0001_01"],
            "scene0001_01", "--scenes")
    assert not (tmp_path / "p3").exists() or leftovers(tmp_path / "p3") == []


def test_info_json_is_strict_json(good, capsys):
    assert main(["data", "info", str(good["scene"]), "--json"]) == 0
    out = capsys.readouterr().out

    def no_constants(name):
        raise AssertionError(f"{name} in --json output")
    json.loads(out, parse_constant=no_constants)


def test_eval_views_beyond_the_frames_is_an_error(good, tmp_path, capsys):
    run_bad(capsys, ["eval", "--model", good["model"], "--data", good["pre"], "--split", "train", "--views", "50",
                     "--out", tmp_path / "eval", "--no-progress", "--device", "cpu"], "--views 50", "frames")
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------- preprocessed data
def _pre_copy(good, tmp_path) -> Path:
    pre = tmp_path / "pre"
    shutil.copytree(good["pre"], pre)
    return pre


@pytest.mark.parametrize("kind", ["meta-without-scene", "meta-binary", "labels-wrong-length", "K-zero"])
def test_broken_preprocessed_scene_is_named_before_work(kind, good, tmp_path, capsys):
    pre = _pre_copy(good, tmp_path)
    scene = pre / NAME
    meta_path = scene / "meta.json"
    meta = json.loads(meta_path.read_text())
    named = meta_path
    if kind == "meta-without-scene":
        del meta["scene"]
        meta_path.write_text(json.dumps(meta))
    elif kind == "meta-binary":
        meta_path.write_bytes(b"\xff\xfe{\x80")
    elif kind == "labels-wrong-length":
        np.save(scene / "labels.npy", np.zeros(7, np.uint8))
        named = scene / "labels.npy"
    else:
        meta["K"] = [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
        meta_path.write_text(json.dumps(meta))
    if kind != "meta-binary":  # a meta.json that is not JSON reads as an incomplete scene for eval
        run_bad(capsys, ["eval", "--model", good["model"], "--data", pre, "--split", "train",
                         "--out", tmp_path / "eval", "--no-progress", "--device", "cpu"], named)
        assert not (tmp_path / "eval").exists()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"stage: 2d\ndata: {{root: {pre}, train_split: train}}\n")
    run_bad(capsys, ["train", cfg, "--out", tmp_path / "run", "--no-progress"], scene)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bags
def _break_bag(bag: Path, kind: str) -> Path:
    storage = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    if kind == "truncated":
        storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    elif kind == "zero-bytes":
        storage.write_bytes(b"")
    elif kind == "garbage":
        storage.write_bytes(np.random.default_rng(2).bytes(storage.stat().st_size))
    elif kind == "metadata-not-yaml":
        (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: [\n")
    elif kind == "metadata-binary":
        (bag / "metadata.yaml").write_bytes(np.random.default_rng(3).bytes(2000))
    return bag


BAG_BREAKS = ["truncated", "zero-bytes", "garbage", "metadata-not-yaml", "metadata-binary"]


@pytest.mark.parametrize("kind", BAG_BREAKS)
def test_broken_bags_are_named_by_segment_bag(kind, good, tmp_path, capsys):
    bag = _break_bag(Path(shutil.copytree(good["bag"], tmp_path / "bag")), kind)
    run_bad(capsys, ["segment-bag", bag, tmp_path / "out", "--model", good["model"], "--device", "cpu", "--quiet"],
            bag)
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]  # no output bag, no staging folder



def _rewrite_bag(good, out: Path, *, retype: str = "", empty_image: str = "") -> Path:
    """The good bag rewritten with rosbags: topic ``retype`` recorded as std_msgs/String instead, or the first
    message of image topic ``empty_image`` ("topic:WxH") replaced by a valid Image of that size with no pixels."""
    from rosbags.rosbag2 import Reader, Writer

    from safnet_ros.tools import bag_io as bio

    image_topic, _, size = empty_image.partition(":")
    with Reader(good["bag"]) as reader, Writer(out, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, "std_msgs/msg/String" if c.topic == retype else c.msgtype,
                                             typestore=bio.TYPESTORE, offered_qos_profiles=c.ext.offered_qos_profiles)
                 for c in reader.connections}
        for c, t, raw in reader.messages():
            if c.topic == retype:
                raw = bio.serialize(bio.TYPESTORE.types["std_msgs/msg/String"](data="not a transform"))
            elif c.topic == image_topic:
                msg = bio.deserialize(raw, c.msgtype)
                w, h = (int(v) if v != "W" else int(msg.width) for v in size.split("x"))
                raw = bio.serialize(dataclasses.replace(msg, width=w, height=h, step=msg.step if w else 0,
                                                        data=np.zeros(0, np.uint8)))
                image_topic = ""  # the first message only
            writer.write(conns[c.id], t, raw)
    return out


@pytest.mark.parametrize("topic", ["/tf_static", "/tf"])
def test_a_tf_topic_of_another_type_is_one_error_line(topic, good, tmp_path, capsys):
    bag = _rewrite_bag(good, tmp_path / "bag", retype=topic)
    line = run_bad(capsys, ["segment-bag", bag, tmp_path / "out", "--model", good["model"], "--device", "cpu",
                            "--quiet"], bag, f"topic {topic} is std_msgs/msg/String", "tf2_msgs/msg/TFMessage")
    assert "missing" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("image", ["/camera/color/image_raw:0x0", "/camera/color/image_raw:Wx0",
                                   "/camera/color/image_raw:0x48", "/camera/depth/image_rect_raw:0x0"])
def test_an_image_without_pixels_is_counted_and_skipped_by_segment_bag(image, good, tmp_path, capsys):
    bag = _rewrite_bag(good, tmp_path / "bag", empty_image=image)
    rc = main(["segment-bag", str(bag), str(tmp_path / "out"), "--model", str(good["model"]), "--device", "cpu",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    assert "6 paired" in out and "; 1 undecodable messages" in out, out  # the run went on past the bad frame
    assert "1 labelled clouds" in out

@pytest.mark.ros
@pytest.mark.parametrize("kind", ["garbage", "metadata-binary"])
def test_broken_bags_are_named_by_bag_play(kind, good, tmp_path, capsys):
    bag = _break_bag(Path(shutil.copytree(good["bag"], tmp_path / "bag")), kind)
    run_bad(capsys, ["bag", "play", bag, "--wait-subscribers", "0"], bag)


def test_soak_names_a_broken_bag_before_starting(good, tmp_path, capsys):
    bag = _break_bag(Path(shutil.copytree(good["bag"], tmp_path / "bag")), "garbage")
    t0 = time.perf_counter()
    run_bad(capsys, ["bench", "soak", "--bag", bag, "--minutes", "0.5", "--out", tmp_path / "soak"], bag)
    assert time.perf_counter() - t0 < 20  # not after half a minute of looping nothing
    assert not (tmp_path / "soak").exists()


def test_empty_training_config_is_named(tmp_path, capsys):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    run_bad(capsys, ["train", cfg, "--out", tmp_path / "run"], cfg, "data.root")


def test_corrupt_sqlite_bag_is_named(good, tmp_path, capsys):
    from safnet_ros.tools.bag_convert import convert_scene

    bag = tmp_path / "bag"
    convert_scene(good["scene"], bag, storage="sqlite3", cloud_rate=0, progress=False)
    db = next(bag.glob("*.db3"))
    db.write_bytes(np.random.default_rng(4).bytes(db.stat().st_size))
    run_bad(capsys, ["segment-bag", bag, tmp_path / "out", "--model", good["model"], "--device", "cpu", "--quiet"],
            bag)
    assert not (tmp_path / "out").exists()


def _bag_with_a_broken_cloud(good, tmp_path) -> Path:
    """The good bag's messages plus one /points message whose CDR bytes are garbage."""
    from rosbags.rosbag2 import Reader, Writer

    from safnet_ros.tools import bag_io as bio

    out = tmp_path / "broken_cloud"
    with Reader(good["bag"]) as reader, Writer(out, version=9) as writer:
        conns = {}
        for c in reader.connections:
            conns[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=bio.TYPESTORE,
                                                offered_qos_profiles=c.ext.offered_qos_profiles)
        points = next(c for c in reader.connections if c.topic == bio.POINTS_TOPIC)
        first = True
        for c, t, raw in reader.messages():
            if c.id == points.id and first:
                writer.write(conns[c.id], t - 1, b"\x00\x01\x00\x00garbage")
                first = False
            writer.write(conns[c.id], t, raw)
    return out


@pytest.mark.ros
def test_bag_play_skips_an_undeserialisable_message_and_goes_on(good, tmp_path, capsys):
    bag = _bag_with_a_broken_cloud(good, tmp_path)
    assert main(["bag", "play", str(bag), "--wait-subscribers", "0", "--rate", "100"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "undecodable /points: 1 message(s) skipped" in out
    assert "/points: " in out.replace("undecodable /points", "")  # the good clouds were published


@pytest.mark.ros
def test_sigterm_during_bag_play_loop_stops_cleanly(good, tmp_path):
    import threading

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "safnet_ros.cli", "bag", "play", str(good["bag"]), "--loop",
                             "--wait-subscribers", "0", "--rate", "5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("playing" in ln for ln in err_lines):  # the player is up (SIGTERM handler installed)
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err_lines)
            time.sleep(0.1)
        time.sleep(1.0)  # a few messages into the loop
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=30)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(err_lines)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "RCLError" not in err
    assert out.startswith("stopped by a signal after "), out  # says it stopped early, not "played N times"


# ----------------------------------------------------------------------------- paths of the wrong kind, our own bugs
def test_a_file_where_a_folder_is_expected_is_named_as_such(good, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    run_bad(capsys, ["segment-bag", blocker, tmp_path / "out", "--quiet"], blocker, "regular file")
    run_bad(capsys, ["bag", "play", blocker, "--wait-subscribers", "0"], blocker, "regular file")
    run_bad(capsys, ["eval", "--model", good["model"], "--data", blocker, "--out", tmp_path / "eval"],
            blocker, "regular file")
    run_bad(capsys, ["data", "preprocess", blocker, tmp_path / "pre"], blocker, "regular file")
    run_bad(capsys, ["data", "info", blocker], blocker, "regular file")
    run_bad(capsys, ["bag", "convert", blocker, tmp_path / "bag"], blocker, "regular file")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    run_bad(capsys, ["data", "preprocess", good["raw"], tmp_path / "pre", "--split", folder], folder, "folder")
    run_bad(capsys, ["eval", "--model", folder, "--data", good["pre"], "--out", tmp_path / "eval"], folder, "folder")
    run_bad(capsys, ["bench", "model", "--presets", ",,"], "--presets")
    run_bad(capsys, ["demo", "--model", folder, "--out", tmp_path / "demo"], folder, "folder")  # before the scene
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]


def test_an_internal_error_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    """Reader errors are translated at the I/O boundary only: a bug of ours is not hidden."""
    from safnet_ros.data import info

    def broken(_args):
        raise TypeError("an internal bug")
    monkeypatch.setattr(info, "run", broken)
    assert main(["data", "info", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError: an internal bug" in err
    assert "this is a bug in safnet_ros" in err and "please report" in err


def test_a_reader_error_outside_the_boundary_is_not_disguised(monkeypatch, capsys):
    """A UnicodeDecodeError raised by our own code (not inside ``reading``) stays a bug report."""
    from safnet_ros.data import info

    def broken(_args):
        b"\xff".decode("utf-8")
    monkeypatch.setattr(info, "run", broken)
    assert main(["data", "info", "anywhere"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_synth_failing_mid_scene_leaves_no_half_written_scene(tmp_path, monkeypatch, capsys):
    from safnet_ros.data.synth import render

    class OutOfMemory:
        def __init__(self, *a, **k):
            raise MemoryError

    monkeypatch.setattr(render, "Renderer", OutOfMemory)
    rc = main(["data", "synth", str(tmp_path / "s"), "--frames", "3", "--color-size", "16x12", "--depth-size",
               "16x12", "--vertex-spacing", "0.3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "out of memory" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == []  # the mesh written before the failure, and OUT, are gone


# ----------------------------------------------------------------------------- every path argument x wrong kinds
PATH_ARGS = {
    "data info SCENE": lambda g, w, x: ["data", "info", x],
    "data preprocess ROOT": lambda g, w, x: ["data", "preprocess", x, w / "out", "--no-progress"],
    "data preprocess --split": lambda g, w, x: ["data", "preprocess", g["raw"], w / "out", "--split", x],
    "bag convert SCENE": lambda g, w, x: ["bag", "convert", x, w / "out", "--quiet"],
    "bag play BAG": lambda g, w, x: ["bag", "play", x, "--wait-subscribers", "0"],
    "segment-bag BAG": lambda g, w, x: ["segment-bag", x, w / "out", "--model", g["model"], "--quiet"],
    "segment-bag --model": lambda g, w, x: ["segment-bag", g["bag"], w / "out", "--model", x, "--quiet"],
    "train CONFIG": lambda g, w, x: ["train", x, "--out", w / "out"],
    "eval --model": lambda g, w, x: ["eval", "--model", x, "--data", g["pre"], "--out", w / "out"],
    "eval --data": lambda g, w, x: ["eval", "--model", g["model"], "--data", x, "--out", w / "out"],
    "eval --split": lambda g, w, x: ["eval", "--model", g["model"], "--data", g["pre"], "--split", x,
                                     "--out", w / "out"],
    "demo --model": lambda g, w, x: ["demo", "--model", x, "--out", w / "out"],
    "bench soak --bag": lambda g, w, x: ["bench", "soak", "--bag", x, "--minutes", "0.05", "--out", w / "out"],
}
WRONG_KINDS = ("missing", "empty-folder", "text", "random-bytes", "empty-file", "fifo")


def _wrong(path: Path, kind: str) -> Path:
    if kind == "empty-folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("hello\nworld\n")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(5).bytes(3000))
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    return path


class _Hang(Exception):
    pass


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize("command", sorted(PATH_ARGS))
def test_every_path_argument_refuses_a_wrong_path_in_one_line(command, kind, good, tmp_path, capsys):
    """78 cases: no traceback, no hang (a FIFO is never opened), the path named, nothing written."""
    x = _wrong(tmp_path / "x", kind)

    def hang(*_):
        raise _Hang(f"{command} with {kind} did not return within 60 s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        run_bad(capsys, PATH_ARGS[command](good, tmp_path, x), x)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (tmp_path / "out").exists()


def test_binary_demo_settings_stamp_means_regenerate_not_a_crash(tmp_path, monkeypatch):
    """A ``demo_settings.json`` that is not ours (binary) does not match: the scene is regenerated."""
    from safnet_ros.data.synth import generate
    from safnet_ros.tools import demo

    name = generate.scene_name(7, 0)
    (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "data" / name / f"{name}.sens").write_bytes(b"x")
    (tmp_path / "data" / "demo_settings.json").write_bytes(b"\xff\xfe\x80 not json")

    class Regenerating(Exception):
        pass

    def regenerate(*_a, **_k):
        raise Regenerating
    monkeypatch.setattr(generate, "generate_dataset", regenerate)
    with pytest.raises(Regenerating):
        demo.make_scene(tmp_path, 7, 24, True, False)
