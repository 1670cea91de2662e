"""Nothing lost, nothing silently wrong (issue 29): the CLI on a second campaign of bad inputs.

Fixtures are the real formats of test_bad_input_cli (a ScanNet scene with a .sens,
meshes and a split list; its preprocessed folder; a checkpoint; a converted bag).
The data-loss cases check that the user's files are still there, byte for byte
(:func:`tree`); the others that the command says what is wrong in one ``error:``
line (exit 2) instead of going on with wrong numbers or a traceback.
"""
# ruff: noqa: F811  (the fixture `good` is imported from test_bad_input_cli and used as a parameter)
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from test_bad_input_cli import NAME, OFF_FORMAT, _config, copy_scene, good, patch, run_bad  # noqa: F401

from safnet_ros import output_dir as od
from safnet_ros.cli import main


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (files), 'dir' (folders) or 'link -> target' of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_folder(path: Path, with_scene_from: Path | None = None) -> Path:
    """A folder of a user's own: notes and, optionally, a copy of a raw scene."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my notes, not yours\n")
    if with_scene_from is not None:
        shutil.copytree(with_scene_from, path / with_scene_from.name)
    return path


# ----------------------------------------------------------------------------- data loss
def test_preprocess_into_another_raw_root_touches_nothing(good, tmp_path, capsys):
    raw_b = user_folder(tmp_path / "raw_b", with_scene_from=good["scene"])
    before = tree(raw_b)
    for extra in ([], ["--overwrite"]):
        line = run_bad(capsys, ["data", "preprocess", good["raw"], raw_b, "--no-progress", *extra], raw_b)
        assert "not written by" in line
    assert tree(raw_b) == before


def test_preprocess_never_replaces_scene_folders_it_did_not_write(good, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress"]) == 0
    capsys.readouterr()
    # OUT is ours now; the user replaces the scene folder by a link to a raw scene, then by notes
    keep = copy_scene(good, tmp_path / "elsewhere") / NAME
    before = tree(keep)
    shutil.rmtree(out / NAME)
    os.symlink(keep, out / NAME)
    run_bad(capsys, ["data", "preprocess", good["raw"], out, "--no-progress", "--overwrite"], "symbolic link",
            "not replaced")
    assert tree(keep) == before and (out / NAME).is_symlink()
    (out / NAME).unlink()
    user_folder(out / NAME)  # a folder named like the scene, no meta.json, a user's file
    run_bad(capsys, ["data", "preprocess", good["raw"], out, "--no-progress"], "notes.txt", "not replaced")
    assert (out / NAME / "notes.txt").read_text() == "my notes, not yours\n"


@pytest.mark.parametrize("kind", ["output holds the input", "user folder"])
def test_bag_outputs_never_replace_what_safnet_did_not_write(kind, good, tmp_path, capsys):
    data = user_folder(tmp_path / "data", with_scene_from=good["scene"])
    shutil.copytree(good["bag"], data / "bag")
    before = tree(data)
    if kind == "output holds the input":
        run_bad(capsys, ["bag", "convert", data / NAME, data, "--overwrite", "--quiet"], "holds the input")
        run_bad(capsys, ["segment-bag", data / "bag", data, "--overwrite", "--quiet"], "holds the input")
    else:
        out = user_folder(tmp_path / "mine")
        mine = tree(out)
        run_bad(capsys, ["bag", "convert", data / NAME, out, "--overwrite", "--quiet"], out, "not written by safnet")
        run_bad(capsys, ["segment-bag", data / "bag", out, "--overwrite", "--quiet"], out, "not written by safnet")
        assert tree(out) == mine
    assert tree(data) == before


def test_synth_overwrite_interrupted_keeps_the_old_scene(tmp_path, monkeypatch, capsys):
    from safnet_ros.data.synth import generate

    args = ["data", "synth", str(tmp_path / "out"), "--frames", "4", "--color-size", "32x24", "--depth-size",
            "32x24", "--vertex-spacing", "0.1", "--quiet"]
    assert main(args) == 0
    before = tree(tmp_path / "out")
    real = generate._generate_into

    def interrupted(scene_dir, *a, **k):
        real(scene_dir, *a, **k)  # the new scene is complete in its hidden folder ...
        raise KeyboardInterrupt  # ... and Ctrl-C comes before it is swapped in

    monkeypatch.setattr(generate, "_generate_into", interrupted)
    assert main(args + ["--overwrite"]) == 130
    assert tree(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock or staging left
    monkeypatch.setattr(generate, "_generate_into", real)
    assert main(args + ["--overwrite"]) == 0  # replaced: our own scene
    # a user's file in our scene folder makes it not ours any more
    scene = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    (scene / "notes.txt").write_text("mine")
    capsys.readouterr()
    run_bad(capsys, args + ["--overwrite"], "notes.txt")
    assert (scene / "notes.txt").read_text() == "mine"


def test_eval_rerun_interrupted_leaves_the_old_outputs_whole(good, tmp_path, monkeypatch, capsys):
    from safnet_ros.engine import evaluate

    out = tmp_path / "eval"
    args = ["eval", "--model", str(good["model"]), "--data", str(good["pre"]), "--split", "train", "--out", str(out),
            "--no-progress", "--device", "cpu", "--views", "1"]
    assert main(args) == 0
    before = tree(out)
    assert "eval.json" in before and od.read_mark(out)["command"] == "eval"
    real = evaluate.write_outputs

    def interrupted(results, folder):
        real(results, folder)  # the new CSV and PNGs written ...
        raise KeyboardInterrupt  # ... Ctrl-C before eval.json

    monkeypatch.setattr(evaluate, "write_outputs", interrupted)
    assert main(args) == 130
    assert tree(out) == before  # no new PNG beside the old eval.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    monkeypatch.setattr(evaluate, "write_outputs", real)
    capsys.readouterr()
    # --out that holds a user's files is refused before the evaluation
    mine = user_folder(tmp_path / "mine")
    run_bad(capsys, args[:-6] + [str(mine)] + args[-5:], mine, "not written by safnet")
    assert (mine / "notes.txt").read_text() == "my notes, not yours\n"


def test_two_runs_into_one_output_are_refused_with_a_lock(good, tmp_path, capsys):
    out = tmp_path / "pre"
    with od.output_lock(out):  # another run holds OUT (flock: a second open file description conflicts)
        line = run_bad(capsys, ["data", "preprocess", good["raw"], out, "--no-progress"], out)
        assert "another safnet run" in line
        run_bad(capsys, ["bag", "convert", good["scene"], out, "--quiet"], "another safnet run")
        run_bad(capsys, ["train", _config(tmp_path, good), "--out", out], "another safnet run")
    assert not out.exists()
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress"]) == 0  # released


def test_output_inside_input_is_refused(good, tmp_path, capsys):
    raw = copy_scene(good, tmp_path)
    before = tree(raw)
    run_bad(capsys, ["data", "preprocess", raw, raw / "pre", "--no-progress"], "inside the input")
    run_bad(capsys, ["bag", "convert", raw / NAME, raw / NAME / "bag", "--quiet"], "inside the input")
    os.symlink(raw, tmp_path / "alias")  # the same folder through a link
    run_bad(capsys, ["data", "preprocess", tmp_path / "alias", raw, "--no-progress"], "is the input")
    assert tree(raw) == before


# ----------------------------------------------------------------------------- silently wrong
def _alignment(scene: Path, m: np.ndarray) -> None:
    (scene / f"{NAME}.txt").write_text("axisAlignment = " + " ".join(repr(float(v)) for v in m.ravel()) + "\n")


@pytest.mark.parametrize("kind", ["scaled", "mirror", "sheared"])
def test_non_rigid_alignments_are_refused(kind, good, tmp_path, capsys):
    scene = copy_scene(good, tmp_path) / NAME
    m = np.eye(4)
    if kind == "scaled":
        m[:3, :3] *= 0.5
    elif kind == "mirror":
        m[0, 0] = -1.0
    else:
        m[0, 1] = 0.3
    _alignment(scene, m)
    line = run_bad(capsys, ["bag", "convert", scene, tmp_path / "bag", "--quiet"], f"{NAME}.txt", "rigid")
    assert ("mirror" in line) == (kind == "mirror")
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize("shift", [1e-9, 0.0, float("nan"), 1e12])
def test_implausible_sens_depth_shift_names_the_file(shift, good, tmp_path, capsys):
    scene = copy_scene(good, tmp_path) / NAME
    sens = scene / f"{NAME}.sens"
    patch(sens, OFF_FORMAT + 24, "<f", shift)  # the header's depth shift (after 2 enums and 4 sizes)
    run_bad(capsys, ["bag", "convert", scene, tmp_path / "bag", "--quiet"], sens, "depth shift")


def test_8bit_depth_pngs_are_not_millimetres(good, tmp_path, capsys):
    from PIL import Image

    from safnet_ros.data.scannet import export_frames

    scene = copy_scene(good, tmp_path) / NAME
    export_frames(scene, scene)
    (scene / f"{NAME}.sens").unlink()
    for png in (scene / "depth").glob("*.png"):
        d = np.asarray(Image.open(png))
        Image.fromarray((d // 256).astype(np.uint8)).save(png)  # an 8-bit export (a visualisation)
    run_bad(capsys, ["bag", "convert", scene, tmp_path / "bag", "--quiet"], "depth", ".png", "8-bit")


def _saved_map(path: Path, frame: str = "map", far: float | None = None) -> Path:
    from safnet_ros.data.ply import read_ply, write_ply
    from safnet_ros.mapping import SemanticVoxelMap
    from safnet_ros.mapping.map_ply import save_map

    vmap = SemanticVoxelMap(voxel_size=0.1)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(20), 200).astype(np.float32)
    vmap.integrate(rng.uniform(0, 4, (200, 3)), probs)
    save_map(path, vmap.snapshot(with_scores=True), frame_id=frame)
    if far is not None:
        data = read_ply(path)
        v = data.elements["vertex"].copy()
        v["x"][0] = far
        write_ply(path, v, None, comments=data.comments)
    return path


def test_map_score_checks_keys_frame_and_what_the_path_is(good, tmp_path, capsys):
    far = _saved_map(tmp_path / "far.ply", far=1e30)
    run_bad(capsys, ["map", "score", far, good["scene"]], far, "grid")
    odom = _saved_map(tmp_path / "odom.ply", frame="odom")
    run_bad(capsys, ["map", "score", odom, good["scene"]], odom, "'odom'")
    assert main(["map", "score", str(odom), str(good["scene"]), "--frame", "odom", "--json"]) == 0
    capsys.readouterr()
    folder = tmp_path / "folder.ply"
    folder.mkdir()
    run_bad(capsys, ["map", "score", folder, good["scene"]], folder, "a folder")
    fifo = tmp_path / "fifo.ply"
    os.mkfifo(fifo)
    run_bad(capsys, ["map", "score", fifo, good["scene"]], fifo, "FIFO")


def test_preprocess_redoes_a_scene_whose_settings_changed(good, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress", "--frame-step", "3"]) == 0
    meta = json.loads((out / NAME / "meta.json").read_text())
    assert meta["settings"]["frame_step"] == 3
    capsys.readouterr()
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress", "--frame-step", "1"]) == 0
    text = capsys.readouterr().out
    assert "done: 1" in text and "frame_step 3 -> 1" in text
    meta2 = json.loads((out / NAME / "meta.json").read_text())
    assert meta2["num_frames"] > meta["num_frames"] and meta2["settings"]["frame_step"] == 1
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress", "--frame-step", "1"]) == 0
    assert "skipped (complete): 1" in capsys.readouterr().out


def test_empty_selections_are_refused(good, tmp_path, capsys):
    run_bad(capsys, ["data", "preprocess", good["raw"], tmp_path / "pre", "--scenes"], "--scenes")
    run_bad(capsys, ["eval", "--model", good["model"], "--data", good["pre"], "--split", "", "--out",
                     tmp_path / "e"], "--split")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,arg", [
    (["bench", "soak", "--map-max-voxels", "0"], "--map-max-voxels"),
    (["bench", "map", "--seed", "-1"], "--seed"),
    (["bench", "map", "--voxel-size", "1e-7"], "--voxel-size"),
    (["segment-bag", "B", "O", "--map-voxel-size", "1e-7"], "--map-voxel-size"),
    (["segment-bag", "B", "O", "--map-max-voxels", "0"], "--map-max-voxels"),
])
def test_map_numbers_out_of_range(argv, arg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_bad(capsys, argv, arg)
    assert list(tmp_path.iterdir()) == []


def test_data_stats_json_has_no_bare_nan(good, capsys):
    assert main(["data", "stats", str(good["scene"]), "--json"]) == 0

    def refuse(name):
        raise AssertionError(f"bare {name} in the JSON")
    stats = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert stats["vertices"] > 0


# ----------------------------------------------------------------------------- tracebacks and misleading messages
def test_label_and_mesh_vertex_counts_must_agree(good, tmp_path, capsys):
    from safnet_ros.data.ply import write_scannet_mesh

    scene = copy_scene(good, tmp_path) / NAME
    xyz = np.random.default_rng(0).uniform(0, 3, (50, 3)).astype(np.float32)
    labels = scene / f"{NAME}_vh_clean_2.labels.ply"
    write_scannet_mesh(labels, xyz, np.zeros((50, 3), np.uint8), None, labels=np.ones(50, np.uint16))
    run_bad(capsys, ["data", "stats", scene], labels, "50 vertex labels")
    run_bad(capsys, ["map", "score", _saved_map(tmp_path / "m.ply"), scene], labels, "50 vertex labels")


def test_a_mesh_without_faces_is_named(good, tmp_path, capsys):
    from safnet_ros.data.ply import read_mesh, write_scannet_mesh

    scene = copy_scene(good, tmp_path) / NAME
    mesh = scene / f"{NAME}_vh_clean_2.ply"
    xyz, rgb, _faces = read_mesh(mesh)
    write_scannet_mesh(mesh, xyz, rgb, np.zeros((0, 3), np.int32))
    run_bad(capsys, ["data", "stats", scene], mesh, "0 faces")


def test_a_ply_header_declaring_1e12_faces_names_the_file(good, tmp_path, capsys):
    scene = copy_scene(good, tmp_path) / NAME
    mesh = scene / f"{NAME}_vh_clean_2.ply"
    data = mesh.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = [b"element face 1000000000000" if ln.startswith(b"element face") else ln for ln in head.split(b"\n")]
    mesh.write_bytes(b"\n".join(lines) + b"end_header\n" + body)
    run_bad(capsys, ["data", "stats", scene], mesh, "1000000000000")


def test_a_bom_in_a_split_list_is_not_part_of_the_name(good, tmp_path, capsys):
    raw = copy_scene(good, tmp_path)
    (raw / "scannetv2_train.txt").write_bytes(b"\xef\xbb\xbf" + f"{NAME}\r\n".encode())
    assert main(["data", "preprocess", str(raw), str(tmp_path / "pre"), "--split", "train", "--no-progress"]) == 0
    assert (tmp_path / "pre" / NAME / "meta.json").is_file()
    (raw / "scannetv2_train.txt").write_text(f"{NAME}\u200b\n")  # an invisible character: named, with its line
    capsys.readouterr()
    run_bad(capsys, ["data", "preprocess", raw, tmp_path / "pre2", "--split", "train"], "scannetv2_train.txt",
            "line 1")


@pytest.mark.parametrize("classes", [13, 40])
def test_a_checkpoint_of_another_class_count_is_named(classes, good, tmp_path, capsys):
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model, save_checkpoint

    config = SafnetConfig.preset("lite", num_classes=classes)
    ckpt = tmp_path / f"c{classes}.pt"
    save_checkpoint(ckpt, build_model(config), config)
    run_bad(capsys, ["eval", "--model", ckpt, "--data", good["pre"], "--split", "train", "--out", tmp_path / "e",
                     "--no-progress", "--device", "cpu"], ckpt, f"num_classes {classes}")


@pytest.mark.parametrize("kind", ["index out of range", "short bits"])
def test_eval_names_a_broken_coverage_table(kind, good, tmp_path, capsys):
    pre = tmp_path / "pre"
    shutil.copytree(good["pre"], pre)
    os.remove(pre / od.MARK_NAME)  # a copy: not the same output any more
    if kind == "index out of range":
        index = np.load(pre / NAME / "coverage_index.npy")
        index[-1] = 10**9
        np.save(pre / NAME / "coverage_index.npy", index)
        name = "coverage_index.npy"
    else:
        bits = np.load(pre / NAME / "coverage_bits.npy")
        np.save(pre / NAME / "coverage_bits.npy", bits[:, :1])
        name = "coverage_bits.npy"
    run_bad(capsys, ["eval", "--model", good["model"], "--data", pre, "--split", "train", "--out", tmp_path / "e",
                     "--no-progress", "--device", "cpu", "--views", "1"], name)


def test_segment_bag_checks_the_map_path_before_the_run(good, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    run_bad(capsys, ["segment-bag", good["bag"], tmp_path / "out", "--map", tmp_path / "afile" / "map.ply",
                     "--quiet"], "afile")
    notes = user_folder(tmp_path / "u") / "notes.txt"
    run_bad(capsys, ["segment-bag", good["bag"], tmp_path / "out", "--map", notes, "--quiet"], notes,
            "not a safnet map")
    assert notes.read_text() == "my notes, not yours\n" and not (tmp_path / "out").exists()


@pytest.mark.ros
def test_bag_play_skips_an_invalid_topic_name_and_says_when_it_was_stopped(good, tmp_path, capsys):
    from rosbags.rosbag2 import Reader, Writer

    from safnet_ros.tools import bag_io as bio

    bag = tmp_path / "odd_names"
    with Reader(good["bag"]) as reader, Writer(bag, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=bio.TYPESTORE,
                                             offered_qos_profiles=c.ext.offered_qos_profiles)
                 for c in reader.connections}
        bad = writer.add_connection("/bad topic!", "std_msgs/msg/String", typestore=bio.TYPESTORE)
        for c, t, raw in reader.messages():
            writer.write(conns[c.id], t, raw)
        writer.write(bad, 1, b"\x00\x01\x00\x00\x03\x00\x00\x00hi\x00")
    assert main(["bag", "play", str(bag), "--wait-subscribers", "0", "--rate", "100"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "skipped /bad topic!: not a valid ROS 2 topic name" in out
    assert out.startswith("played 1 time(s)")

    import rclpy

    from safnet_ros.ros.bag_player import BagPlayer

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("stopper", context=context)
        player = BagPlayer(node, good["bag"], loop=True, rate=1.0)
        stop = threading.Event()
        timer = threading.Timer(0.5, stop.set)
        timer.start()
        summary = player.run(stop)
        line = summary.lines()[0]
        assert line.startswith("stopped after ") and summary.elapsed_s >= 0.4, line
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_struct_patch_helper_writes_where_the_header_says():
    """The depth-shift offset used above is the header's float (a guard for the fixture, not the code)."""
    from safnet_ros.data.sens import _FORMAT

    assert _FORMAT.format.endswith("f") and struct.calcsize(_FORMAT.format) == 28


def test_outputs_written_before_marks_existed_are_still_replaceable(good, tmp_path, capsys):
    """An eval folder or a bag from a version without marks holds only our file names: replaced; one
    more file of the user's makes it theirs."""
    out = tmp_path / "bag"
    assert main(["bag", "convert", str(good["scene"]), str(out), "--quiet", "--cloud-rate", "0"]) == 0
    (out / od.MARK_NAME).unlink()  # as an older version wrote it
    assert main(["bag", "convert", str(good["scene"]), str(out), "--quiet", "--cloud-rate", "0", "--overwrite"]) == 0
    assert od.read_mark(out)["command"] == "bag convert"
    (out / od.MARK_NAME).unlink()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    run_bad(capsys, ["bag", "convert", good["scene"], out, "--quiet", "--overwrite"], out, "not written by safnet")
    assert (out / "notes.txt").read_text() == "mine"
    old_eval = tmp_path / "eval_out"
    old_eval.mkdir()
    (old_eval / "eval.json").write_text("{}")
    (old_eval / "per_class.csv").write_text("model\n")
    assert od.written_before_marks(old_eval, "eval") and not od.written_before_marks(old_eval, "bench soak")
    (old_eval / "thesis.tex").write_text("mine")
    assert not od.written_before_marks(old_eval, "eval")


def test_a_preprocessed_folder_from_before_marks_is_resumed_not_refused(good, tmp_path, capsys):
    out = tmp_path / "pre"
    shutil.copytree(good["pre"], out)
    (out / od.MARK_NAME).unlink()  # as an older version wrote it
    assert main(["data", "preprocess", str(good["raw"]), str(out), "--no-progress"]) == 0
    assert od.read_mark(out)["command"] == "data preprocess"
    # but a raw scene among its folders makes it not ours
    (out / od.MARK_NAME).unlink()
    shutil.copytree(good["scene"], out / "scene0002_00")
    before = tree(out / "scene0002_00")
    capsys.readouterr()
    run_bad(capsys, ["data", "preprocess", good["raw"], out, "--no-progress"], out, "was not written by")
    assert tree(out / "scene0002_00") == before


def test_segment_bag_marks_its_bag_and_replaces_only_its_own(good, tmp_path, capsys):
    out = tmp_path / "seg"
    args = ["segment-bag", str(good["bag"]), str(out), "--model", str(good["model"]), "--device", "cpu", "--quiet",
            "--map", str(tmp_path / "map.ply")]
    assert main(args) == 0
    assert od.read_mark(out)["command"] == "segment-bag" and (tmp_path / "map.ply").is_file()
    capsys.readouterr()
    run_bad(capsys, args, out, "--overwrite")  # exists: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0  # its own bag, and its own map file, replaced
    assert od.read_mark(out)["command"] == "segment-bag"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.ply", "seg"]
