"""``safnet data preprocess`` on tiny synthetic scenes in ScanNet's on-disk format."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.data.preprocess import preprocess, scene_is_complete, unpack_coverage
from safnet_ros.data.scannet import ScanNetScene

COLOR_WH = (640, 480)  # ScanNet-like: colour larger than depth, both resized to 160 x 120
DEPTH_WH = (320, 240)  # twice the network size, so the depth intrinsics must be scaled


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(frames=6, color_size=COLOR_WH, depth_size=DEPTH_WH, vertex_spacing=0.05,
                      invalid_poses=0.3, progress=False)
    generate_dataset(root, 2, 11, cfg)
    return root


@pytest.fixture(scope="module")
def pre(synth_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pre")
    summary = preprocess(str(synth_root), str(out), progress=False)
    return out, summary


def _scene_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("scene"))


def test_summary_counts_invalid_poses(synth_root, pre):
    out, summary = pre
    names = _scene_names(synth_root)
    assert summary["done"] == len(names) and not summary["failed"]
    invalid = 0
    kept = 0
    for n in names:
        with ScanNetScene(synth_root / n) as scene:
            invalid += scene.frames.num_invalid
            kept += len(scene.frames.valid_indices)
    assert invalid > 0, "the fixture should contain frames with lost tracking"
    assert summary["invalid_frames"] == invalid
    assert summary["frames"] == kept
    for n in names:
        meta = json.loads((out / n / "meta.json").read_text())
        ids = np.load(out / n / "frame_ids.npy")
        with ScanNetScene(synth_root / n) as scene:
            assert list(ids) == list(scene.frames.valid_indices)
        assert meta["num_frames"] == len(ids)
    assert (out / "scannetv2_train.txt").read_text() == (synth_root / "scannetv2_train.txt").read_text()


def test_resized_intrinsics_and_aligned_geometry(synth_root, pre):
    """K is the depth intrinsics scaled to 160x120, and depth back-projected with K and
    the stored (axis-aligned) pose lands on the stored (axis-aligned) points."""
    from scipy.spatial import cKDTree

    from safnet_ros.geometry.camera import backproject, scale_intrinsics

    out, _ = pre
    name = _scene_names(synth_root)[0]
    with ScanNetScene(synth_root / name) as scene:
        K_depth = scene.frames.intrinsic_depth
        M = scene.axis_alignment
    meta = json.loads((out / name / "meta.json").read_text())
    K = np.asarray(meta["K"])
    np.testing.assert_allclose(K, scale_intrinsics(K_depth, DEPTH_WH, (160, 120)), atol=1e-6)
    assert K[0, 0] == pytest.approx(K_depth[0, 0] / 2, rel=1e-6)
    assert not np.allclose(M, np.eye(4)), "synthetic scenes carry an axis alignment"
    points = np.load(out / name / "points.npy")
    depth = np.load(out / name / "depth.npy")
    poses = np.load(out / name / "poses.npy")
    color = np.load(out / name / "color.npy")
    assert depth.dtype == np.uint16 and depth.shape[1:] == (120, 160)
    assert color.dtype == np.uint8 and color.shape[1:] == (120, 160, 3)
    tree = cKDTree(points)
    for f in range(len(depth)):
        q, _ = backproject(depth[f].astype(np.float32) / 1000.0, K, poses[f].astype(np.float64))
        d, _ = tree.query(q)
        assert np.median(d) < 0.06, f"frame {f}: back-projection is {np.median(d):.3f} m from the mesh"


def test_label_images_agree_with_3d_labels(synth_root, pre):
    from safnet_ros.geometry.camera import project, visible

    out, _ = pre
    agree = total = 0
    for name in _scene_names(synth_root):
        d = out / name
        points = np.load(d / "points.npy")
        labels = np.load(d / "labels.npy")
        label2d = np.load(d / "label2d.npy")
        depth = np.load(d / "depth.npy")
        poses = np.load(d / "poses.npy")
        K = np.asarray(json.loads((d / "meta.json").read_text())["K"])
        assert json.loads((d / "meta.json").read_text())["label_images"] == "mesh-raycast"
        assert set(np.unique(label2d)) <= set(range(20)) | {IGNORE_INDEX}
        for f in range(len(label2d)):
            pose = poses[f].astype(np.float64)
            seen = visible(points, depth[f].astype(np.float32) / 1000.0, K, pose, tol=0.05)
            seen &= labels != IGNORE_INDEX
            uv, _, _ = project(points[seen], K, pose, (160, 120))
            u = np.clip(np.rint(uv[:, 0]).astype(int), 0, 159)
            v = np.clip(np.rint(uv[:, 1]).astype(int), 0, 119)
            pix = label2d[f][v, u]
            ok = pix != IGNORE_INDEX
            agree += int((pix[ok] == labels[seen][ok]).sum())
            total += int(ok.sum())
    assert total > 1000
    print(f"label image agreement {agree / total:.2%} over {total} points")
    assert agree / total >= 0.9, f"label images agree with the 3D labels at only {agree / total:.1%}"


def test_coverage_table_matches_coverage_matrix(synth_root, pre):
    from safnet_ros.geometry.views import coverage_matrix

    out, _ = pre
    d = out / _scene_names(synth_root)[1]
    points = np.load(d / "points.npy")
    base = np.load(d / "coverage_index.npy")
    bits = np.load(d / "coverage_bits.npy")
    depth = np.load(d / "depth.npy")
    poses = np.load(d / "poses.npy")
    K = np.asarray(json.loads((d / "meta.json").read_text())["K"])
    np.testing.assert_array_equal(base, np.arange(len(points)))
    views = [(depth[f].astype(np.float32) / 1000.0, K, poses[f].astype(np.float64)) for f in range(len(depth))]
    expected = coverage_matrix(points[base], views, tol=0.1)
    table = unpack_coverage(bits, np.arange(len(base)))
    assert table.shape == expected.shape == (len(depth), len(base))
    np.testing.assert_array_equal(table, expected)
    assert (table.sum(axis=1) > 50).all() and table.mean() < 0.5
    cols = np.array([5, 17, len(base) - 1])
    np.testing.assert_array_equal(unpack_coverage(bits, cols), expected[:, cols])


def test_coverage_subsample(synth_root, tmp_path):
    name = _scene_names(synth_root)[0]
    summary = preprocess(str(synth_root), str(tmp_path), scenes=[name], coverage_points=1000, progress=False)
    assert summary["done"] == 1
    base = np.load(tmp_path / name / "coverage_index.npy")
    assert len(base) == 1000 and len(np.unique(base)) == 1000
    assert np.load(tmp_path / name / "coverage_bits.npy").shape[1] == 125


def test_resume_skips_complete_and_redoes_half_written(synth_root, pre, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(pre[0], out)
    first, second = _scene_names(synth_root)
    # A run killed while writing `second`: its temp folder is left, the final one never appeared.
    shutil.rmtree(out / second)
    partial = out / f".tmp-{second}-4242"
    partial.mkdir()
    (partial / "points.npy").write_bytes(b"\x93NUMPY truncated")
    before = (out / first / "meta.json").stat().st_mtime_ns
    summary = preprocess(str(synth_root), str(out), progress=False)
    assert summary["skipped"] == 1 and summary["done"] == 1
    by_scene = {r["scene"]: r["status"] for r in summary["per_scene"]}
    assert by_scene == {first: "skipped", second: "done"}
    assert (out / first / "meta.json").stat().st_mtime_ns == before
    assert not partial.exists()
    assert scene_is_complete(out / second)
    np.testing.assert_array_equal(np.load(out / second / "label2d.npy"), np.load(pre[0] / second / "label2d.npy"))
    # A folder without its meta.json does not count as complete either.
    (out / first / "meta.json").unlink()
    assert not scene_is_complete(out / first)
    summary = preprocess(str(synth_root), str(out), progress=False)
    assert {r["scene"]: r["status"] for r in summary["per_scene"]} == {first: "done", second: "skipped"}


def test_scene_without_frames_is_reported_and_3d_only(synth_root, tmp_path):
    root = tmp_path / "root"
    name = _scene_names(synth_root)[0]
    shutil.copytree(synth_root / name, root / name, ignore=shutil.ignore_patterns("*.sens"))
    summary = preprocess(str(root), str(tmp_path / "out"), progress=False)
    assert summary["done"] == 1 and name in summary["no_frames"]
    d = tmp_path / "out" / name
    assert np.load(d / "color.npy").shape == (0, 120, 160, 3)
    assert np.load(d / "coverage_bits.npy").shape[0] == 0
    assert len(np.load(d / "points.npy")) > 1000


def test_label_filt_images_are_used_when_present(synth_root, pre, tmp_path):
    """ScanNet's own label images (label-filt, ScanNet label ids) win over ray casting."""
    from PIL import Image

    from safnet_ros.data.labels import NYU40_IDS
    from safnet_ros.data.preprocess import read_scannet_id_map

    name = _scene_names(synth_root)[0]
    root = tmp_path / "root"
    shutil.copytree(synth_root / name, root / name)
    shutil.copy(synth_root / "scannetv2-labels.combined.tsv", root)
    id_map = read_scannet_id_map(root / "scannetv2-labels.combined.tsv")
    first_id = {}
    for sid, nyu in sorted(id_map.items()):
        first_id.setdefault(nyu, sid)
    ray = np.load(pre[0] / name / "label2d.npy")
    ids = np.load(pre[0] / name / "frame_ids.npy")
    lut = np.zeros(256, np.uint16)  # class index -> a ScanNet id with that nyu40 id (0 = unannotated)
    for c, nyu in enumerate(NYU40_IDS):
        lut[c] = first_id.get(nyu, 0)
    (root / name / "label-filt").mkdir()
    present = set()
    for f, i in enumerate(ids):
        img = lut[ray[f]].repeat(4, axis=0).repeat(4, axis=1)  # at the colour size, 640x480
        Image.fromarray(img).save(root / name / "label-filt" / f"{i}.png")
        present |= set(np.unique(ray[f][lut[ray[f]] > 0]))
    preprocess(str(root), str(tmp_path / "out"), progress=False)
    d = tmp_path / "out" / name
    assert json.loads((d / "meta.json").read_text())["label_images"] == "label-filt"
    got = np.load(d / "label2d.npy")
    mask = lut[ray] > 0
    assert mask.mean() > 0.5
    np.testing.assert_array_equal(got[mask], ray[mask])


def test_cli_and_bad_root(synth_root, tmp_path, capsys):
    from safnet_ros.cli import main

    name = _scene_names(synth_root)[0]
    rc = main(["data", "preprocess", str(synth_root), str(tmp_path / "o"), "--scenes", name, "--no-progress",
               "--frame-step", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "done: 1" in text and "invalid poses skipped" in text
    meta = json.loads((tmp_path / "o" / name / "meta.json").read_text())
    with ScanNetScene(synth_root / name) as scene:
        assert meta["num_frames"] == len(scene.frames.valid_indices[::2])
    assert main(["data", "preprocess", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    assert "nope" in capsys.readouterr().err
    before = sorted(p.name for p in synth_root.iterdir())
    assert main(["data", "preprocess", str(synth_root), str(synth_root), "--no-progress"]) == 2
    assert "output folder is the input" in capsys.readouterr().err
    assert sorted(p.name for p in synth_root.iterdir()) == before


def test_parallel_workers_match_serial(synth_root, pre, tmp_path):
    summary = preprocess(str(synth_root), str(tmp_path), workers=2, progress=False)
    assert summary["done"] == 2
    for name in _scene_names(synth_root):
        for array in ("points", "labels", "color", "depth", "label2d", "poses", "coverage_bits"):
            np.testing.assert_array_equal(np.load(tmp_path / name / f"{array}.npy"),
                                          np.load(pre[0] / name / f"{array}.npy"))


def test_killed_run_leaves_nothing_that_looks_complete(synth_root, tmp_path):
    """SIGKILL while a scene is being written; the rerun finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "safnet_ros.cli", "data", "preprocess", str(synth_root), str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        if out.is_dir() and any(p.name.startswith(".tmp-") for p in out.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait()
    if killed:
        assert any(p.name.startswith(".tmp-") for p in out.iterdir())
    finals = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert all(scene_is_complete(p) for p in finals), "a killed run left an incomplete scene folder"
    summary = preprocess(str(synth_root), str(out), progress=False)
    assert summary["done"] + summary["skipped"] == 2 and not summary["failed"]
    assert summary["done"] >= (1 if killed else 0)
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert all(scene_is_complete(out / n) for n in _scene_names(synth_root))


def test_scannet_root_layout_with_split(synth_root, tmp_path):
    """ROOT/scans/<scene>, the label map and split lists at ROOT; --split picks the scenes."""
    first, second = _scene_names(synth_root)
    root = tmp_path / "scannet"
    (root / "scans").mkdir(parents=True)
    shutil.copytree(synth_root / first, root / "scans" / first)
    shutil.copytree(synth_root / second, root / "scans" / second)
    shutil.copy(synth_root / "scannetv2-labels.combined.tsv", root)
    (root / "scannetv2_train.txt").write_text(f"{first}\nscene0999_00\n")
    (root / "scannetv2_val.txt").write_text(f"{second}\n")
    summary = preprocess(str(root), str(tmp_path / "out"), split="train", progress=False)
    assert [r["scene"] for r in summary["per_scene"]] == [first]
    assert summary["not_found"] == ["scene0999_00"]
    assert scene_is_complete(tmp_path / "out" / first) and not (tmp_path / "out" / second).exists()
    assert (tmp_path / "out" / "scannetv2_val.txt").read_text() == f"{second}\n"


def test_bad_scenes_are_counted_not_fatal(synth_root, tmp_path, capsys):
    """A corrupt .sens -> 3D-only scene with the reason; labels that do not fit the mesh -> failed with
    the reason and exit status 1; the other scenes are still done."""
    from safnet_ros.cli import main
    from safnet_ros.data.ply import read_ply, write_ply

    first, second = _scene_names(synth_root)
    root = tmp_path / "root"
    shutil.copytree(synth_root / first, root / first)
    shutil.copytree(synth_root / second, root / second)
    sens = root / first / f"{first}.sens"
    sens.write_bytes(sens.read_bytes()[:100])  # truncated inside the header
    labels_ply = root / second / f"{second}_vh_clean_2.labels.ply"
    ply = read_ply(labels_ply)
    write_ply(labels_ply, ply.elements["vertex"][:-5], ply.faces[:10])
    rc = main(["data", "preprocess", str(root), str(tmp_path / "out"), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "preprocess_summary.json").read_text())
    assert summary["done"] == 1 and list(summary["failed"]) == [second]
    assert "labels.ply" in summary["failed"][second]
    assert first in summary["no_frames"] and "unreadable frames" in summary["no_frames"][first]
    assert f"failed: {second}" in text and f"no frames (3D-only): {first}" in text
    assert scene_is_complete(tmp_path / "out" / first) and not (tmp_path / "out" / second).exists()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("text", ["[]", "3", "not json", '{"complete": false}'])
def test_a_meta_json_that_is_not_a_finished_scene_is_not_complete(tmp_path, text):
    (tmp_path / "meta.json").write_text(text)
    assert not scene_is_complete(tmp_path)
