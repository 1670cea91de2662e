"""ScanNet scene folders: axis alignment, frames from .sens and the exported layout, label map, splits."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from safnet_ros.data.labels import IGNORE_INDEX, NYU40_IDS, nyu40_to_class
from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.scannet import (
    ExportedFrames,
    ScanNetScene,
    SensFrames,
    export_frames,
    find_scenes,
    read_label_map,
    read_split,
    write_label_map,
)
from safnet_ros.data.sens import SensWriter
from safnet_ros.errors import DataFormatError, MissingDataError
from safnet_ros.geometry.transforms import apply_transform

CW, CH, DW, DH = 32, 24, 16, 12
K_C = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
K_D = np.array([[15.0, 0, 7.5], [0, 15.0, 5.5], [0, 0, 1]])
ALIGN = np.array([[0, 1, 0, -1.5], [-1, 0, 0, 2.0], [0, 0, 1, 0.25], [0, 0, 0, 1]], dtype=np.float64)


def frame_data(k: int):
    y, x = np.mgrid[0:CH, 0:CW]
    rgb = np.stack([(4 * x + 10 * k) % 256, 8 * y, np.full_like(x, 128)], -1).astype(np.uint8)
    depth = (1000 + 50 * k + np.arange(DH * DW).reshape(DH, DW)).astype(np.uint16)
    pose = np.eye(4, dtype=np.float32)
    pose[:3, 3] = [0.1 * k, -0.2, 1.3]
    return pose, rgb, depth


def make_scene(root, name="scene0007_01", n=4, invalid=(2,), alignment=True, labels=True):
    d = root / name
    d.mkdir(parents=True)
    with SensWriter(d / f"{name}.sens", intrinsic_color=K_C, intrinsic_depth=K_D,
                    color_size=(CW, CH), depth_size=(DW, DH)) as w:
        for k in range(n):
            pose, rgb, depth = frame_data(k)
            if k in invalid:
                pose = np.full((4, 4), -np.inf, np.float32)
            w.write_frame(pose, rgb, depth, color_timestamp=100 * k, depth_timestamp=100 * k)
    xyz = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9], [1, 2, 3]], np.uint8)
    faces = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4]])
    write_scannet_mesh(d / f"{name}_vh_clean_2.ply", xyz, rgb, faces)
    if labels:
        write_scannet_mesh(d / f"{name}_vh_clean_2.labels.ply", xyz, rgb, faces,
                           labels=np.array([1, 2, 2, 40, 0], np.uint16))
    if alignment:
        (d / f"{name}.txt").write_text("colorHeight = 24\naxisAlignment = "
                                       + " ".join(f"{v:g}" for v in ALIGN.ravel()) + "\nnumColorFrames = 4\n")
    return d


def test_scene_paths_alignment_points_labels(tmp_path):
    scene = ScanNetScene(make_scene(tmp_path))
    assert scene.name == "scene0007_01"
    assert scene.sens_path.name == "scene0007_01.sens"
    assert scene.mesh_path.name == "scene0007_01_vh_clean_2.ply"
    assert scene.labels_path.name == "scene0007_01_vh_clean_2.labels.ply"
    np.testing.assert_array_equal(scene.axis_alignment, ALIGN)
    xyz, rgb = scene.load_points()
    np.testing.assert_array_equal(xyz[2], [0, 2, 0])
    aligned, _ = scene.load_points(aligned=True)
    np.testing.assert_allclose(aligned[2], [0 + 2 - 1.5, 0 + 2.0, 0.25])  # p' = M [x y z 1]
    np.testing.assert_array_equal(rgb[0], [255, 0, 0])
    np.testing.assert_array_equal(scene.load_nyu40(), [1, 2, 2, 40, 0])


def test_axis_alignment_absent_or_bad(tmp_path):
    scene = ScanNetScene(make_scene(tmp_path, alignment=False))
    np.testing.assert_array_equal(scene.axis_alignment, np.eye(4))
    (scene.dir / f"{scene.name}.txt").write_text("sceneType = Kitchen\n")
    np.testing.assert_array_equal(ScanNetScene(scene.dir).axis_alignment, np.eye(4))
    (scene.dir / f"{scene.name}.txt").write_text("axisAlignment = 1 0 0 0 1\n")
    with pytest.raises(DataFormatError, match=r"scene0007_01.txt: axisAlignment must be 16 finite numbers, got 5"):
        ScanNetScene(scene.dir).axis_alignment


def test_axis_alignment_applies_as_the_homogeneous_product():
    pts = np.random.default_rng(0).normal(size=(10, 3))
    expect = (ALIGN @ np.c_[pts, np.ones(10)].T).T[:, :3]
    np.testing.assert_allclose(apply_transform(ALIGN, pts), expect)


def test_frames_from_sens(tmp_path):
    scene = ScanNetScene(make_scene(tmp_path))
    with scene:
        frames = scene.frames
        assert isinstance(frames, SensFrames)
        assert len(frames) == 4 and frames.valid_indices == [0, 1, 3] and frames.num_invalid == 1
        assert frames.color_size == (CW, CH) and frames.depth_size == (DW, DH)
        np.testing.assert_allclose(frames.intrinsic_color, K_C, rtol=1e-6)
        np.testing.assert_allclose(frames.intrinsic_depth, K_D, rtol=1e-6)
        f = frames.get(3)
        pose, rgb, depth = frame_data(3)
        assert f.index == 3 and f.timestamp_us == 300
        assert f.depth.dtype == np.float32 and f.camera_to_world.dtype == np.float64
        np.testing.assert_allclose(f.depth, depth / 1000.0, rtol=1e-6)
        np.testing.assert_array_equal(f.camera_to_world, pose.astype(np.float64))
        assert np.abs(f.color.astype(int) - rgb).mean() < 3
        assert [frames.get(i).index for i in frames.valid_indices] == [0, 1, 3]


def test_exported_layout_round_trip(tmp_path):
    scene = ScanNetScene(make_scene(tmp_path))
    out = tmp_path / "export"
    assert export_frames(scene, out) == 4
    assert sorted(p.name for p in (out / "intrinsic").iterdir()) == [
        "extrinsic_color.txt", "extrinsic_depth.txt", "intrinsic_color.txt", "intrinsic_depth.txt"]
    png = Image.open(out / "depth" / "1.png")
    assert png.mode == "I;16"
    with ExportedFrames(out) as ex, scene.frames as sens:
        assert ex.indices == [0, 1, 2, 3] and ex.valid_indices == [0, 1, 3] and ex.num_invalid == 1
        assert ex.color_size == (CW, CH) and ex.depth_size == (DW, DH)
        np.testing.assert_allclose(ex.intrinsic_depth, sens.intrinsic_depth)
        for i in (0, 3):
            a, b = ex.get(i), sens.get(i)
            np.testing.assert_array_equal(a.color, b.color)  # JPEG bytes were copied as they are
            np.testing.assert_array_equal(a.depth, b.depth)
            np.testing.assert_array_equal(a.camera_to_world, b.camera_to_world)


def test_scene_without_sens_uses_exported_layout(tmp_path):
    src = ScanNetScene(make_scene(tmp_path / "a"))
    dst = make_scene(tmp_path / "b")
    (dst / f"{dst.name}.sens").unlink()
    export_frames(src, dst)
    frames = ScanNetScene(dst).frames
    assert isinstance(frames, ExportedFrames) and frames.valid_indices == [0, 1, 3]


def test_exported_layout_errors(tmp_path):
    out = tmp_path / "export"
    export_frames(ScanNetScene(make_scene(tmp_path)), out)
    (out / "pose" / "2.txt").unlink()
    with pytest.raises(MissingDataError, match=r"pose/2.txt: pose of frame 2 is missing"):
        ExportedFrames(out)
    (out / "pose" / "2.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(DataFormatError, match=r"pose/2.txt: holds 6 numbers, expected 4x4"):
        ExportedFrames(out)
    (out / "pose" / "2.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4))
    ex = ExportedFrames(out)
    assert ex.num_invalid == 1
    (out / "color" / "1.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataFormatError, match=r"color/1.jpg: unreadable colour image"):
        ex.get(1)
    (out / "depth" / "3.png").unlink()
    with pytest.raises(MissingDataError, match=r"depth/3.png: depth image of frame 3 is missing"):
        ExportedFrames(out)


def test_missing_scene_parts(tmp_path):
    with pytest.raises(MissingDataError, match="scene folder is missing"):
        ScanNetScene(tmp_path / "nope")
    d = make_scene(tmp_path, labels=False)
    (d / f"{d.name}.sens").unlink()
    scene = ScanNetScene(d)
    with pytest.raises(MissingDataError, match=r"scene0007_01.sens: RGB-D frames"):
        scene.frames
    with pytest.raises(MissingDataError, match=r"labels.ply: vertex labels"):
        scene.load_nyu40()


def test_label_map_to_benchmark_classes(tmp_path):
    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    header = "\t".join(["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyu40class",
                        "mpcat40index", "mpcat40", "wnsynsetid", "wnsynsetkey"])
    rows = [
        "1\twall\twall\t8277\t1\t12\twall\t1\twall\tn04546855\twall.n.01",
        "2\tchair\tchair\t4646\t5\t4\tchair\t3\tchair\tn03001627\tchair.n.01",
        "3\tbooks\tbook\t1678\t23\t2\tbooks\t39\tobjects\tn02870526\tbook.n.11",
        "13\tkitchen cabinet\tkitchen cabinet\t310\t3\t6\tcabinet\t7\tcabinet\tn02933112\tcabinet.n.01",
        "",
        "50\tshower curtain\tshower curtain\t25\t28\t6\tshower curtain\t12\tcurtain\tn04209239\tshower_curtain.n.01",
        "7\tceiling\tceiling\t806\t22\t3\tceiling\t17\tceiling\tn02990373\tceiling.n.01",
    ]
    tsv.write_text(header + "\n" + "\n".join(rows) + "\n")
    m = read_label_map(tsv)
    assert m == {"wall": 1, "chair": 5, "books": 23, "kitchen cabinet": 3, "shower curtain": 28, "ceiling": 22}
    classes = nyu40_to_class(np.array([m[k] for k in m]))
    np.testing.assert_array_equal(classes, [0, 4, IGNORE_INDEX, 2, 15, IGNORE_INDEX])

    # round trip through our writer, and all 20 benchmark ids survive
    full = {f"cat{i}": i for i in range(41)}
    write_label_map(tmp_path / "w.tsv", full)
    back = read_label_map(tmp_path / "w.tsv")
    assert back == full
    kept = sorted(v for v in back.values() if nyu40_to_class(np.array([v]))[0] != IGNORE_INDEX)
    assert tuple(kept) == NYU40_IDS

    # no header names: fall back to column 5
    (tmp_path / "nohead.tsv").write_text("a\tb\tc\td\te\n1\tlamp\tlamp\t3\t35\n")
    assert read_label_map(tmp_path / "nohead.tsv") == {"lamp": 35}
    (tmp_path / "bad.tsv").write_text(header + "\n1\twall\twall\t1\twall?\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv: line 2: nyu40id 'wall\?' is not an integer"):
        read_label_map(tmp_path / "bad.tsv")


def test_read_split_and_find_scenes(tmp_path):
    split = tmp_path / "scannetv2_train.txt"
    split.write_text("scene0000_00\n\nscene0000_01\n  scene0002_00  \n")
    assert read_split(split) == ["scene0000_00", "scene0000_01", "scene0002_00"]
    root = tmp_path / "scannet"
    for name in ("scene0002_00", "scene0000_01", "scene0000_00"):
        (root / "scans" / name).mkdir(parents=True)
    (root / "scans" / "notes").mkdir()
    assert [p.name for p in find_scenes(root)] == ["scene0000_00", "scene0000_01", "scene0002_00"]
    assert [p.name for p in find_scenes(root / "scans")] == ["scene0000_00", "scene0000_01", "scene0002_00"]
    single = make_scene(tmp_path / "one", name="room_a")
    assert find_scenes(single.parent) == [single]
    assert find_scenes(single) == [single]
