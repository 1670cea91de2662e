"""Synthetic ScanNet scenes: contents, geometry of the rendered frames, knobs, determinism, CLI.

Scenes are small (tens of frames at 80x60) but go through the real writers and
are read back with the real ScanNet readers. The ``clean`` and ``moved`` scenes
switch the mismatch knobs off and write the exact mesh (``mesh="exact"``) where a
test needs exactness; the ``realistic`` scene keeps the defaults (TSDF-fused
mesh, handheld scan, moved objects, pose error, invalid poses, structured-light
depth, colour shift, exposure) at a small size.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open3d as o3d
import pytest

from safnet_ros.cli import main
from safnet_ros.data.labels import NYU40_IDS
from safnet_ros.data.ply import read_mesh, read_vertex_labels
from safnet_ros.data.scannet import ScanNetScene, read_label_map, read_split
from safnet_ros.data.sens import SensReader
from safnet_ros.data.stats import class_matched_similarity, scene_stats, view_sightings
from safnet_ros.data.synth import fusion
from safnet_ros.data.synth.generate import (
    SynthConfig,
    _streams,
    _trajectory,
    draw_room,
    generate_dataset,
    scene_name,
)
from safnet_ros.data.synth.perturb import invalid_frames, noisy_depth, recorded_poses, structured_light_depth
from safnet_ros.data.synth.rooms import ROOM_ZONES, SHELL_CATEGORIES, WALL_HUNG, footprint, generate_room
from safnet_ros.data.synth.trajectory import handheld_trajectory
from safnet_ros.errors import DataFormatError

CLEAN = dict(depth_noise=0.0, depth_dropout=0.0, pose_noise=0.0, pose_noise_deg=0.0, pose_drift=0.0,
             color_noise=0.0, progress=False, mesh="exact", moved_objects=0, invalid_poses=0.0, color_shift=0.0,
             exposure=0.0, room_types=("studio",), max_depth=20.0)


def small(**kw) -> SynthConfig:
    base = dict(frames=20, color_size=(80, 60), depth_size=(80, 60), vertex_spacing=0.08, progress=False)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def clean_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    generate_dataset(out, 1, 5, small(**CLEAN))
    return out / scene_name(5, 0)


@pytest.fixture(scope="module")
def moved_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("moved")
    generate_dataset(out, 1, 5, small(**{**CLEAN, "moved_objects": 4}))
    return out / scene_name(5, 0)


@pytest.fixture(scope="module")
def realistic_scene(tmp_path_factory) -> Path:
    """The defaults (TSDF mesh, scan trajectory, every mismatch knob on) at a small size, in a studio."""
    out = tmp_path_factory.mktemp("realistic")
    generate_dataset(out, 1, 3, small(frames=60, room_types=("studio",)))
    return out / scene_name(3, 0)


def _mesh_distance_fn(mesh_path: Path):
    xyz, _, faces = read_mesh(mesh_path)
    scene = o3d.t.geometry.RaycastingScene()
    m = o3d.t.geometry.TriangleMesh()
    m.vertex.positions = o3d.core.Tensor(xyz.astype(np.float32))
    m.triangle.indices = o3d.core.Tensor(faces.astype(np.int32))
    scene.add_triangles(m)
    return lambda pts: scene.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()


def _backproject(depth_m: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    h, w = depth_m.shape
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u]
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def _frame_distances(scene_dir: Path, frames=None) -> list[np.ndarray]:
    """Distance of every back-projected depth pixel to the scanned mesh, per frame."""
    dist = _mesh_distance_fn(scene_dir / f"{scene_dir.name}_vh_clean_2.ply")
    out = []
    with SensReader(scene_dir / f"{scene_dir.name}.sens") as r:
        K = r.header.intrinsic_depth[:3, :3].astype(np.float64)
        for i in (frames if frames is not None else r.valid_indices):
            f = r.frame(i)
            depth = f.decode_depth().astype(np.float64) / r.header.depth_shift
            out.append(dist(_backproject(depth, K, f.camera_to_world.astype(np.float64))))
    return out


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ scene contents


def test_every_benchmark_class_is_in_the_labels_ply(clean_scene: Path):
    labels = read_vertex_labels(clean_scene / f"{clean_scene.name}_vh_clean_2.labels.ply")
    present = set(np.unique(labels).tolist())
    missing = set(NYU40_IDS) - present
    assert not missing, f"classes missing from the mesh: {sorted(missing)}"
    # some ignored categories too (pillow 18, lamp 35, box 29, the ceiling 22, other props 40)
    assert {18, 35, 29, 22, 40} <= present
    counts = {k: int((labels == k).sum()) for k in NYU40_IDS}
    assert min(counts.values()) >= 20, counts


def test_scannet_scene_reads_labels_mesh_and_alignment(clean_scene: Path):
    scene = ScanNetScene(clean_scene)
    nyu = scene.load_nyu40()
    xyz, rgb = scene.load_points()
    assert nyu.shape == (len(xyz),) and rgb.dtype == np.uint8
    assert np.array_equal(np.sort(np.unique(nyu)), np.unique(read_vertex_labels(scene.labels_path)))
    # The mesh colours are the lit procedural appearance, not one flat colour.
    assert len(np.unique(rgb, axis=0)) > 1000
    # axisAlignment maps the rotated, shifted room back onto [0, W] x [0, D] x [0, H].
    meta = json.loads((clean_scene / f"{clean_scene.name}.synth.json").read_text())
    W, D, H = meta["room_size_m"]
    aligned = xyz.astype(np.float64) @ scene.axis_alignment[:3, :3].T + scene.axis_alignment[:3, 3]
    np.testing.assert_allclose(aligned.min(0), [0, 0, 0], atol=2e-3)
    np.testing.assert_allclose(aligned.max(0), [W, D, H], atol=2e-3)  # the ceiling is part of the scan
    assert not np.allclose(scene.axis_alignment, np.eye(4))  # a real rotation was applied
    # Frames through the shared FrameSource: metres, RGB, the render pose (no pose noise here).
    frame = scene.frames.get(7)
    true = np.load(clean_scene / f"{clean_scene.name}.synth_true_poses.npy")
    assert frame.color.shape == (60, 80, 3) and frame.depth.dtype == np.float32
    assert 0.3 < np.median(frame.depth[frame.depth > 0]) < 8.0
    np.testing.assert_allclose(frame.camera_to_world, true[7], atol=1e-5)
    scene.close()


def test_segments_and_aggregation_agree_with_vertex_labels(clean_scene: Path):
    name = clean_scene.name
    segs = json.loads((clean_scene / f"{name}_vh_clean_2.0.010000.segs.json").read_text())
    agg = json.loads((clean_scene / f"{name}.aggregation.json").read_text())
    labels = read_vertex_labels(clean_scene / f"{name}_vh_clean_2.labels.ply")
    seg_idx = np.asarray(segs["segIndices"])
    assert seg_idx.shape == labels.shape
    mapping = read_label_map(clean_scene.parent / "scannetv2-labels.combined.tsv")
    seg_label = {}
    for g in agg["segGroups"]:
        assert g["id"] == g["objectId"]
        for s in g["segments"]:
            assert s not in seg_label, "a segment belongs to two objects"
            seg_label[s] = mapping[g["label"]]
    lut = np.array([seg_label.get(s, 0) for s in seg_idx], dtype=np.uint16)
    assert np.array_equal(lut, labels)
    assert len(agg["segGroups"]) > 30 and len(np.unique(seg_idx)) > 100


def test_depth_agrees_with_the_mesh_when_noise_is_off(clean_scene: Path):
    with SensReader(clean_scene / f"{clean_scene.name}.sens") as r:
        assert r.num_invalid_poses == 0 and len(r) == 20
        poses = np.stack([r.frame(i).camera_to_world for i in range(len(r))])
        assert r.frame(3).color_timestamp == 100000  # 30 Hz in microseconds
    true = np.load(clean_scene / f"{clean_scene.name}.synth_true_poses.npy")
    np.testing.assert_allclose(poses, true, atol=1e-5)
    d = np.concatenate(_frame_distances(clean_scene))
    assert len(d) > 20 * 80 * 60 * 0.95  # almost every pixel has depth
    assert np.median(d) < 0.002
    assert np.quantile(d, 0.999) < 0.01, np.quantile(d, [0.5, 0.99, 0.999, 1.0])


def test_trajectory_is_handheld_like():
    rng = np.random.default_rng(0)
    poses = handheld_trajectory(rng, 7.0, 5.5, 300)
    pos = poses[:, :3, 3]
    assert pos[:, 2].min() > 1.2 and pos[:, 2].max() < 1.72
    assert (pos[:, 0] > 1.3).all() and (pos[:, 0] < 5.7).all() and (pos[:, 1] > 1.3).all()
    forward = poses[:, :3, 2]
    assert (forward[:, 2] < -0.05).mean() > 0.9  # mostly pitched down
    np.testing.assert_allclose(np.linalg.det(poses[:, :3, :3]), 1.0, atol=1e-9)
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    assert step.max() < 0.12  # smooth: one loop of ~12 m over 300 frames
    # --overlap sets the speed: less overlap, faster motion
    fast = handheld_trajectory(np.random.default_rng(0), 7.0, 5.5, 300, overlap=0.9)
    assert np.linalg.norm(np.diff(fast[:, :3, 3], axis=0), axis=1).mean() > 2 * step.mean()


def test_scan_trajectory_stays_in_free_space_and_looks_everywhere():
    for seed in (1, 2):
        room = draw_room(seed, 0, SynthConfig(room_types=("studio",)))
        poses = _trajectory(_streams(seed, 0)["trajectory"], room, SynthConfig(frames=300))
        pos = poses[:, :3, 3]
        furniture = np.array([footprint(o) for o in room.objects if o.category not in SHELL_CATEGORIES])
        x, y = pos[:, 0:1], pos[:, 1:2]
        inside = (x > furniture[:, 0]) & (x < furniture[:, 2]) & (y > furniture[:, 1]) & (y < furniture[:, 3])
        assert not inside.any(), "the camera is inside or over furniture"
        assert (pos[:, 0] > 0.35).all() and (pos[:, 0] < room.width - 0.35).all()
        assert (pos[:, 1] > 0.35).all() and (pos[:, 1] < room.depth - 0.35).all()
        assert 1.15 < pos[:, 2].min() and pos[:, 2].max() < 1.8
        forward = poses[:, :3, 2]
        pitch = np.degrees(np.arcsin(-forward[:, 2]))
        assert pitch.min() < -25 and pitch.max() > 45  # up to the upper walls, down to the floor by the walls
        # distance from the nearest wall varies (loops at several distances)
        wall_d = np.minimum.reduce([pos[:, 0], room.width - pos[:, 0], pos[:, 1], room.depth - pos[:, 1]])
        assert wall_d.max() - wall_d.min() > 0.8
        # inward views: the view points at the room's middle half the room away
        centre = np.array([room.width / 2, room.depth / 2])
        to_c = centre - pos[:, :2]
        cos_in = (forward[:, :2] * to_c).sum(1) / (np.linalg.norm(forward[:, :2], axis=1) * np.linalg.norm(to_c, axis=1))
        assert (cos_in > 0.8).mean() > 0.1 and (cos_in < -0.5).mean() > 0.2
        # close passes: furniture (not wall-hung) within 0.5-1.5 m while the view turns to it
        near = [footprint(o) for o in room.objects if o.category not in SHELL_CATEGORIES | WALL_HUNG]
        gap = np.min([np.hypot(np.maximum(0, np.maximum(f[0] - x, x - f[2])), np.maximum(0, np.maximum(f[1] - y, y - f[3])))
                      for f in near], axis=0)[:, 0]
        assert ((gap > 0.3) & (gap < 1.5)).mean() > 0.2
        # handheld motion: small steps, no jumps
        step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        assert step.max() < 0.2 and np.median(step) < 0.08
        turn = np.degrees(np.arccos(np.clip((forward[1:] * forward[:-1]).sum(1), -1, 1)))
        assert turn.max() < 60 and np.median(turn) < 8
        np.testing.assert_allclose(np.linalg.det(poses[:, :3, :3]), 1.0, atol=1e-9)


# ------------------------------------------------------------------ the realistic defaults


def test_realistic_scene_mesh_is_fused_from_the_frames(realistic_scene: Path):
    name = realistic_scene.name
    meta = json.loads((realistic_scene / f"{name}.synth.json").read_text())
    assert meta["config"]["mesh"] == "tsdf" and meta["config"]["trajectory"] == "scan"
    assert len(meta["moved_objects"]) == 2 and all(0 < m["frame"] < 60 for m in meta["moved_objects"])
    assert len(meta["invalid_frames"]) == 2  # 3 % of 60
    moved = np.load(realistic_scene / f"{name}.synth_vertex_moved.npy")
    labels = read_vertex_labels(realistic_scene / f"{name}_vh_clean_2.labels.ply")
    assert moved.shape == labels.shape and 0 < moved.sum() < 0.2 * len(moved)
    xyz, rgb, faces = read_mesh(realistic_scene / f"{name}_vh_clean_2.ply")
    # Not a grid: vertex spacing varies, no duplicated vertices.
    assert len(np.unique(xyz, axis=0)) == len(xyz)
    stats = scene_stats(realistic_scene)
    assert stats["spacing_cm"]["p90"] > 1.8 * stats["spacing_cm"]["p10"]
    assert stats["wall_density_cv"] > 0.2
    # Every vertex was seen (the mesh comes from the frames), some unannotated where labels are ambiguous.
    assert stats["seen"]["annotated_any_frame"] > 0.9
    assert stats["labels"]["ignored"] > 0.02 and stats["labels"]["unannotated"] < 0.1
    # The frames disagree with the mesh, but only locally.
    assert 0.3 < stats["frames"]["depth_to_mesh_median_cm"] < 5.0
    assert stats["frames"]["valid_depth"] < 0.99
    assert stats["chunks"]["best1_over_all"] < 0.95


def test_realistic_labels_follow_the_exact_scene(realistic_scene: Path, clean_scene: Path):
    """Labelled vertices lie on a surface of their class in the exact scene; pose error and fusion keep them close."""
    name = realistic_scene.name
    xyz, _, _ = read_mesh(realistic_scene / f"{name}_vh_clean_2.ply")
    labels = read_vertex_labels(realistic_scene / f"{name}_vh_clean_2.labels.ply")
    assert (labels > 0).mean() > 0.9
    walls = xyz[labels == 1]
    floor = xyz[labels == 2]
    ceiling = xyz[labels == 22]
    assert len(walls) and len(floor) and len(ceiling)
    meta = json.loads((realistic_scene / f"{name}.synth.json").read_text())
    world = np.array(meta["world_from_aligned"])
    z = lambda p: (p - world[:3, 3]) @ world[:3, :3][:, 2]  # noqa: E731
    H = meta["room_size_m"][2]
    assert np.abs(z(floor)).max() < 0.08 and np.abs(z(ceiling) - H).max() < 0.08


def main_table(scene: Path) -> str:
    """`safnet data stats SCENE --model default` as printed (the table, not JSON)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["data", "stats", str(scene), "--model", "default", "--view-step", "6"]) == 0
    return buf.getvalue()


def test_stats_cli_prints_the_realism_table_and_s_on_moved_objects(realistic_scene: Path, tmp_path: Path, capsys):
    assert main(["data", "stats", str(realistic_scene)]) == 0
    table = capsys.readouterr().out
    for row in ("wall density CV", "best 1 / 3 / 5 views", "vertices > 2 m seen", "depth to mesh", "ceiling"):
        assert row in table
    png = tmp_path / "s.png"
    assert main(["data", "stats", str(realistic_scene), "--json", "--model", "default", "--view-step", "6",
                 "--png", str(png)]) == 0
    stats = json.loads(capsys.readouterr().out)
    ms = stats["moved_similarity"]
    assert ms["moved"]["vertices"] > 0 and ms["static"]["vertices"] > 10 * ms["moved"]["vertices"]
    assert np.isfinite(ms["moved"]["s_mean"]) and np.isfinite(ms["static"]["s_mean"])
    # the mismatch measured directly (default rooms of seeds 24 and 25: views see free space through moved objects
    # in 22-25 % of their sightings, through static surfaces in 1.2-1.3 %; this small 60-frame room may see none)
    assert 0.0 <= ms["moved"]["view_disagreement"] <= 1.0 and 0.0 < ms["static"]["view_disagreement"] < 0.1
    # moved vertices split by the views the model chose for their chunks: every one of them sees through
    # the vertex, or at least one sees it in place; each vertex is in at most one of the two groups
    split = ms["moved_chosen_through"]["vertices"] + ms["moved_chosen_sees"]["vertices"]
    assert 0 <= split <= ms["moved"]["vertices"]
    assert ms["moved_chosen_through"]["view_disagreement"] >= ms["moved_chosen_sees"]["view_disagreement"] or \
        ms["moved_chosen_through"]["vertices"] == 0
    # the chosen views' nearest back-projected pixel: static surfaces are seen, so it is close (cm)
    assert 0.0 <= ms["static"]["view_distance_median_cm"] < 10.0
    assert 0.5 < ms["static"]["view_distance_under_5cm"] <= 1.0
    same = ms["static_same_classes"]  # static vertices of the moved objects' classes, at their class mix
    assert same["moved_vertices"] <= ms["moved"]["vertices"] and same["vertices"] <= ms["static"]["vertices"]
    # S view by view: each sighting of a vertex, the model given that view alone
    pv = ms["per_view"]
    assert pv["static"]["sightings"] >= pv["static"]["vertices"] > 10 * pv["moved"]["vertices"] > 0
    assert pv["moved"]["sightings"] == pv["moved_in_place"]["sightings"] + pv["moved_through"]["sightings"]
    assert all(0.0 <= pv[k]["s_mean"] <= 2.0 for k in ("static", "moved"))
    table = main_table(realistic_scene)
    assert "views seeing > 10 cm beyond, moved" in table and "nearest view pixel" in table
    assert "S view by view, moved" in table
    per_view_png = tmp_path / "s_per_view.png"
    assert stats["moved_similarity"]["png_per_view"] == str(per_view_png) and per_view_png.stat().st_size > 10_000
    assert png.is_file() and png.stat().st_size > 10_000
    close_up = tmp_path / "s_moved.png"  # S around the moved objects and its histograms per group
    assert stats["moved_similarity"]["png_moved"] == str(close_up) and close_up.stat().st_size > 10_000
    assert 0 < stats["chunks"]["best1_over_all"] <= stats["chunks"]["best3_over_all"] <= 1.0
    # A folder that is no scene is one error line.
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_bad_knob_values_are_one_error_line(tmp_path: Path, capsys):
    out = tmp_path / "bad"
    for args, text in ((["--depth-noise", "-0.1"], "depth-noise"), (["--overlap", "1"], "overlap"),
                       (["--moved-objects", "50"], "movable"), (["--room-types", "garage"], "room type"),
                       (["--color-shift", "20"], "color-shift"), (["--voxel-size", "0"], "voxel")):
        assert main(["data", "synth", str(out), "--frames", "4", "--quiet", *args]) == 2, args
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
        assert len(err) == 1 and text in err[0], (args, err)  # argparse range errors come after the usage
        assert not out.exists() or not any(out.iterdir())


def test_a_scene_without_surface_is_reported_and_not_written(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(fusion.TSDFFusion, "integrate", lambda self, *a: None)  # no frame reaches the volume
    with pytest.raises(DataFormatError, match="no surface|nothing to fuse"):
        generate_dataset(tmp_path, 1, 4, small(frames=4, color_size=(32, 24), depth_size=(32, 24)))
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


# ------------------------------------------------------------------ knobs


def test_moved_objects_really_move(clean_scene: Path, moved_scene: Path):
    meta = json.loads((moved_scene / f"{moved_scene.name}.synth.json").read_text())
    moved = meta["moved_objects"]
    assert len(moved) == 4
    assert all(0.29 < np.hypot(m["dx"], m["dy"]) < 0.81 for m in moved)
    first = min(m["frame"] for m in moved)
    assert 5 <= first < 15  # partway through the 20 frames
    # Same mesh in both scenes (the exact mesh keeps the original placement) ...
    assert (moved_scene / f"{moved_scene.name}_vh_clean_2.ply").read_bytes() == \
           (clean_scene / f"{clean_scene.name}_vh_clean_2.ply").read_bytes()
    # ... but after the move the frames show the objects elsewhere: depth points far from the mesh appear.
    far_clean = np.mean(np.concatenate(_frame_distances(clean_scene)) > 0.05)
    far_before = np.mean(np.concatenate(_frame_distances(moved_scene, range(first))) > 0.05)
    far_after = np.mean(np.concatenate(_frame_distances(moved_scene, range(first, 20))) > 0.05)
    assert far_clean < 1e-4 and far_before < 1e-4
    assert far_after > 0.003, far_after
    # The sidecar marks the mesh vertices on moved objects.
    mv = np.load(moved_scene / f"{moved_scene.name}.synth_vertex_moved.npy")
    assert 0 < mv.sum() == meta["moved_vertices"]


def test_invalid_poses_are_minus_inf_in_the_sens(tmp_path: Path):
    generate_dataset(tmp_path, 1, 2, small(frames=20, color_size=(40, 30), depth_size=(40, 30),
                                           invalid_poses=0.2))
    name = scene_name(2, 0)
    meta = json.loads((tmp_path / name / f"{name}.synth.json").read_text())
    with SensReader(tmp_path / name / f"{name}.sens") as r:
        assert r.num_invalid_poses == 4
        bad = [i for i in range(len(r)) if not r.frame(i).pose_valid]
        assert bad == meta["invalid_frames"]
        assert all(np.isneginf(r.frame(i).camera_to_world).all() for i in bad)
        assert r.valid_indices == [i for i in range(20) if i not in bad]
    with ScanNetScene(tmp_path / name) as scene:
        assert scene.frames.num_invalid == 4


def test_invalid_frames_count_and_bursts():
    m = invalid_frames(np.random.default_rng(1), 1000, 0.05)
    assert m.sum() == 50 and not m[0]
    assert invalid_frames(np.random.default_rng(1), 10, 0.0).sum() == 0
    assert invalid_frames(np.random.default_rng(1), 10, 0.01).sum() == 1


def test_depth_noise_grows_with_depth_and_dropout_makes_holes():
    rng = np.random.default_rng(0)
    depth = np.full((240, 320), 2.0, np.float32)
    depth[:, 160:] = 4.0
    inc = np.ones_like(depth)
    noisy = noisy_depth(rng, depth, inc, 0.01, 0.0)
    s_near = (noisy[:, :160] - 2.0).std()
    s_far = (noisy[:, 160:] - 4.0).std()
    assert 0.018 < s_near < 0.022 and 0.045 < s_far < 0.055  # 0.01 * (1 + (z/2)^2)
    inc[:10] = 0.05  # grazing rows
    holes = noisy_depth(rng, depth, inc, 0.0, 0.05) == 0
    assert holes[:10].all()
    frac = holes[10:].mean()
    assert 0.02 < frac < 0.1
    assert np.array_equal(noisy_depth(rng, depth, inc, 0.0, 0.0), depth)


def test_structured_light_depth_model():
    rng = np.random.default_rng(0)
    h, w = 240, 320
    depth = np.full((h, w), 1.5, np.float32)
    depth[:, 160:] = 3.5  # a depth edge at column 160
    inc = np.ones_like(depth)
    lum = np.full((h, w), 0.5, np.float32)
    noisy = structured_light_depth(rng, depth, inc, lum, 0.01, 0.0)
    err_near = (noisy[:, :150] - 1.5).std()
    err_far = (noisy[:, 170:] - 3.5).std()
    assert err_far > 2.5 * err_near  # error grows with range
    assert (noisy > 0).all()  # no holes without dropout
    lum[:100, :40] = 0.01  # dark patch
    inc[200:, :40] = 0.1  # grazing
    glass = np.zeros((h, w), bool)
    glass[:100, 60:120] = True
    holes = structured_light_depth(rng, depth, inc, lum, 0.0, 0.01, glass=glass) == 0
    # the far side of the edge is in the projector's shadow: one pixel, half of the time two
    assert holes[:, 160].all() and 0.3 < holes[:, 161].mean() < 0.7 and holes[:, 150:158].mean() < 0.1
    assert holes[:100, :40].mean() > 0.6 and holes[200:, :40].all() and holes[:100, 60:120].mean() > 0.8
    assert holes[110:190, 60:150].mean() < 0.05
    # out of range: nothing nearer than 0.4 m or beyond max_depth
    assert (structured_light_depth(rng, np.full((8, 8), 0.3, np.float32), np.ones((8, 8)), None, 0.0, 0.0) == 0).all()
    assert (structured_light_depth(rng, np.full((8, 8), 5.0, np.float32), np.ones((8, 8)), None, 0.0, 0.0) == 0).all()


def test_recorded_poses_jitter_and_drift():
    true = np.tile(np.eye(4), (4000, 1, 1))
    jit = recorded_poses(np.random.default_rng(0), true, 0.01, 0.5, 0.0)
    assert abs(jit[:, :3, 3].std() - 0.01) < 0.001
    ang = np.degrees(np.arccos(np.clip((np.trace(jit[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert 0.5 < np.median(ang) < 1.0  # |rotvec| with 0.5 deg per axis: median ~0.77 deg
    drift = recorded_poses(np.random.default_rng(0), true, 0.0, 0.0, 0.1)
    steps = np.linalg.norm(np.diff(drift[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.01  # drift is local: consecutive frames nearly agree
    assert np.abs(drift[-1, :3, 3]).max() > 0.01  # ... but it accumulates
    assert np.array_equal(recorded_poses(np.random.default_rng(0), true[:5], 0, 0, 0), true[:5])
    # correlated error: consecutive frames err alike, the spread stays the same
    cor = recorded_poses(np.random.default_rng(0), true, 0.01, 0.0, 0.0, corr_frames=15)
    t = cor[:, :3, 3]
    assert abs(t.std() - 0.01) < 0.002
    lag1 = np.mean([np.corrcoef(t[:-1, k], t[1:, k])[0, 1] for k in range(3)])
    assert lag1 > 0.85 and np.corrcoef(jit[:-1, 0, 3], jit[1:, 0, 3])[0, 1] < 0.1


# ------------------------------------------------------------------ determinism and CLI


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path: Path):
    cfg = small(frames=4, color_size=(48, 36), depth_size=(24, 18), moved_objects=0.5, invalid_poses=0.25)  # defaults: TSDF
    for sub, seed in (("a", 11), ("b", 11), ("c", 12)):
        generate_dataset(tmp_path / sub, 1, seed, cfg)
    a, b, c = (_tree_digest(tmp_path / s) for s in "abc")
    assert a == b
    assert set(a) != set(c)  # different scene names
    name_a, name_c = scene_name(11, 0), scene_name(12, 0)
    assert a[f"{name_a}/{name_a}.sens"] != c[f"{name_c}/{name_c}.sens"]
    assert a[f"{name_a}/{name_a}_vh_clean_2.ply"] != c[f"{name_c}/{name_c}_vh_clean_2.ply"]


def test_cli_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "synth"
    args = ["data", "synth", str(out), "--scenes", "2", "--seed", "7", "--frames", "4",
            "--color-size", "64x48", "--depth-size", "32x24", "--vertex-spacing", "0.1", "--quiet"]
    assert main(args) == 0
    names = ["scene0700_00", "scene0701_00"]
    for n in names:
        d = out / n
        for suffix in (".sens", "_vh_clean_2.ply", "_vh_clean_2.labels.ply", ".aggregation.json",
                       "_vh_clean_2.0.010000.segs.json", ".txt"):
            assert (d / f"{n}{suffix}").is_file(), suffix
        with SensReader(d / f"{n}.sens") as r:
            assert r.header.color_size == (64, 48) and r.header.depth_size == (32, 24)
            np.testing.assert_allclose(r.header.intrinsic_depth[:2, :3] * 2, r.header.intrinsic_color[:2, :3],
                                       rtol=1e-6)
            assert r.frame(0).decode_color().shape == (48, 64, 3)
    assert read_split(out / "scannetv2_train.txt") == names and read_split(out / "scannetv2_val.txt") == []
    mapping = read_label_map(out / "scannetv2-labels.combined.tsv")
    assert mapping["shower curtain"] == 28 and mapping["lamp"] == 35 and mapping["pillow"] == 18
    assert "scene0700_00" in capsys.readouterr().out

    # An existing scene is not silently replaced ...
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ... unless asked; --split puts every scene into one list.
    assert main(args + ["--overwrite", "--split", "test"]) == 0
    assert read_split(out / "scannetv2_test.txt") == names
    assert read_split(out / "scannetv2_train.txt") == []
    # bad values are one error line
    assert main(["data", "synth", str(out), "--overlap", "1.5", "--quiet"]) == 2


def test_split_lists_accumulate_over_seeds(tmp_path: Path):
    cfg = small(frames=2, color_size=(16, 12), depth_size=(16, 12), vertex_spacing=0.2)
    generate_dataset(tmp_path, 5, 1, cfg)
    assert read_split(tmp_path / "scannetv2_val.txt") == ["scene0104_00"]
    generate_dataset(tmp_path, 1, 2, cfg)
    train = read_split(tmp_path / "scannetv2_train.txt")
    assert train == ["scene0100_00", "scene0101_00", "scene0102_00", "scene0103_00", "scene0200_00"]
    assert read_split(tmp_path / "scannetv2_val.txt") == ["scene0104_00"]


@pytest.mark.parametrize("seed", range(8))
def test_every_layout_has_all_classes_inside_the_room(seed: int):
    room = generate_room(np.random.default_rng(seed), room_types=("studio",))
    assert set(NYU40_IDS) <= {o.nyu40 for o in room.objects}
    assert {22, 40, 18} <= {o.nyu40 for o in room.objects}  # ceiling, props, pillows: outside the 20 classes
    # The other room types hold their own class mix (fewer classes), plus the shell and non-benchmark things.
    for kind in ROOM_ZONES:
        other = generate_room(np.random.default_rng(seed), room_types=(kind,))
        ids = {o.nyu40 for o in other.objects}
        assert {1, 2, 8, 9, 22} <= ids and other.room_type == kind
        if kind != "studio":
            assert len(ids & set(NYU40_IDS)) < 20
        for o in other.objects:
            fp = footprint(o)
            assert fp[0] > -1e-6 and fp[1] > -1e-6 and fp[2] < other.width + 1e-6 and fp[3] < other.depth + 1e-6
    assert 2.5 <= room.height <= 3.0
    for o in room.objects:
        fp = footprint(o)
        assert fp[0] > -1e-6 and fp[1] > -1e-6 and fp[2] < room.width + 1e-6 and fp[3] < room.depth + 1e-6, o.category
    # the placement in the world is a rotation about z plus a shift (floor stays at z = 0)
    m = room.world_from_aligned
    np.testing.assert_allclose(m[2], [0, 0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)


def test_view_sightings_count_views_that_see_beyond_a_vertex():
    """A camera at the origin looking down +z at a wall 2 m away: a vertex on the wall agrees, one floating at
    1.5 m (the wall seen 0.5 m beyond it: free space where the mesh has a surface) disagrees, one behind the wall
    (occluded: the depth is nearer) is seen but does not count as a disagreement, one outside the image is unseen."""
    K = np.array([[50.0, 0, 40], [0, 50.0, 30], [0, 0, 1]])
    view = SimpleNamespace(camera_to_world=np.eye(4), K=K, depth=np.full((60, 80), 2.0, np.float32))
    xyz = np.array([[0.0, 0.0, 2.0], [0.1, 0.0, 1.5], [0.0, 0.1, 2.5], [10.0, 0.0, 1.0]])
    seen, through = view_sightings(xyz, [view, view])
    np.testing.assert_array_equal(seen.sum(axis=0), [2, 2, 2, 0])
    np.testing.assert_array_equal(through.sum(axis=0), [0, 2, 0, 0])


def test_class_matched_similarity_weights_static_vertices_by_the_moved_class_mix():
    # class 0 (wall): static only, S 0.5; class 4 (chair): moved S 0.8, static S 1.0; class 6: moved only
    classes = np.array([0, 0, 0, 4, 4, 4, 4, 6])
    moved = np.array([False, False, False, True, True, False, False, True])
    static = ~moved
    s = np.array([0.5, 0.5, 0.5, 0.8, 0.8, 1.0, 1.0, 0.1])
    row = class_matched_similarity(classes, moved, static, {"s": s})
    assert row["classes"] == ["chair"] and row["moved_vertices"] == 2 and row["vertices"] == 2
    assert row["s_mean"] == pytest.approx(1.0)  # the static chairs, not the walls
    assert row["s_moved_mean"] == pytest.approx(0.8)  # class 6 has no static counterpart: left out
    empty = class_matched_similarity(classes, moved & (classes == 6), static, {"s": s})
    assert empty["moved_vertices"] == 0 and np.isnan(empty["s_mean"])
