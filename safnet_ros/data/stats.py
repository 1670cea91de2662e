"""``safnet data stats SCENE_DIR [--json]``: how much a scene looks like a ScanNet scan (the realism table).

What it measures, on the scene as written (mesh, labels, ``.sens`` frames at
their recorded poses; heights in the axis-aligned frame, floor at the lowest
vertex):

- mesh: vertices, faces, edge length percentiles (vertex spacing), and the
  *wall density CV*: the coefficient of variation over wall vertices (nyu40 1)
  of the local vertex density ``k / (pi r_k^2)`` (``r_k`` the distance to the
  6th nearest wall vertex). A regular grid gives ~0.1, a decimated scan more;
- seen: the share of annotated vertices (label != 0) that at least one valid
  frame sees (the depth test of :func:`safnet_ros.geometry.camera.visible`,
  0.1 m), the mean share one frame sees, and the share of all vertices more
  than 2 m above the floor that some frame sees;
- chunks: over the 1.5 m x 1.5 m (full height) chunks of the training
  pipeline, the share of up to 2000 base points all frames cover, and what the
  best 1, 3 and 5 greedy views cover, as a fraction of all frames' coverage
  (``best1_over_all``: ScanNet-like scans need several views per chunk);
- frames: valid poses, the valid depth share, the mean and median distance of
  back-projected depth (every 4th pixel) to the mesh; image statistics at
  160 x 120 (mean gradient magnitude and colour std of grey levels in 0..255);
- labels: the share of each nyu40 id, of unannotated (0) and of all ignored
  vertices (outside the 20 benchmark classes), the ceiling (22);
- moved: vertices on objects that moved during the scan (from the generator's
  ``<name>.synth_vertex_moved.npy`` sidecar, when present).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

#: Chunk size (metres) and base points per chunk, as training and evaluation use them (SPEC §2).
CHUNK = 1.5
BASE_POINTS = 2000
COVER_TOL = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", metavar="SCENE_DIR", help="a ScanNet-format scene folder (sceneXXXX_YY/)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--frame-step", type=int, default=1, metavar="N",
                        help="use every N-th frame (default 1: all; the greedy views come from these)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base-point sampling (default 0)")


def _edge_lengths(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    return np.linalg.norm(xyz[e[:, 0]] - xyz[e[:, 1]], axis=1)


def density_cv(points: np.ndarray, k: int = 6) -> float:
    """Coefficient of variation of the local density ``k / (pi r_k^2)`` over ``points`` (N, 3) metres."""
    from scipy.spatial import cKDTree

    if len(points) <= k + 1:
        return float("nan")
    tree = cKDTree(points)
    dist, _ = tree.query(points, k=k + 1)
    r = np.maximum(dist[:, -1], 1e-6)
    dens = k / (math.pi * r * r)
    return float(dens.std() / dens.mean())


def image_stats(color: np.ndarray) -> tuple[float, float]:
    """(mean gradient magnitude, std) of the grey image of ``color`` (H, W, 3) uint8 resized to 160x120."""
    from PIL import Image

    g = np.asarray(Image.fromarray(color).convert("L").resize((160, 120), Image.BILINEAR), dtype=np.float64)
    gx = np.diff(g, axis=1)[:-1]
    gy = np.diff(g, axis=0)[:, :-1]
    return float(np.sqrt(gx * gx + gy * gy).mean()), float(g.std())


def scene_stats(scene_dir: str | Path, frame_step: int = 1, seed: int = 0) -> dict[str, Any]:
    """The realism figures of one scene (see the module docstring), as a dict."""
    import open3d as o3d

    from safnet_ros.data.labels import NYU40_IDS
    from safnet_ros.data.scannet import ScanNetScene, transform_points
    from safnet_ros.geometry.camera import backproject, visible
    from safnet_ros.geometry.views import greedy_select
    from safnet_ros.errors import ConfigError

    if frame_step < 1:
        raise ConfigError(f"--frame-step must be >= 1, got {frame_step}")
    scene = ScanNetScene(scene_dir)
    try:
        xyz, _rgb, faces = scene.load_mesh()
        xyz = xyz.astype(np.float64)
        nyu = scene.load_nyu40().astype(np.int64)
        aligned = transform_points(scene.axis_alignment, xyz) if scene.has_axis_alignment else xyz
        height = aligned[:, 2] - aligned[:, 2].min()
        src = scene.frames
        indices = src.valid_indices[::frame_step]
        frames = [src.get(i) for i in indices]
        n_total, n_invalid = len(src), src.num_invalid
    finally:
        scene.close()
    if not frames:
        raise ConfigError(f"{scene_dir}: no frame with a valid pose")
    h, w = frames[0].depth.shape
    from safnet_ros.data.sens import SensReader

    K = None
    sens = Path(scene_dir) / f"{Path(scene_dir).name}.sens"
    if sens.is_file():
        with SensReader(sens) as r:
            K = np.asarray(r.header.intrinsic_depth[:3, :3], dtype=np.float64)
    if K is None:
        from safnet_ros.data.scannet import _read_matrix

        K = _read_matrix(Path(scene_dir) / "intrinsic" / "intrinsic_depth.txt")[:3, :3]

    # ---- mesh
    edges = _edge_lengths(xyz, faces)
    wall = xyz[nyu == 1]
    out: dict[str, Any] = {"scene": Path(scene_dir).name, "vertices": int(len(xyz)), "faces": int(len(faces))}
    out["spacing_cm"] = {f"p{q}": float(np.percentile(edges, q) * 100) for q in (10, 50, 90)}
    out["wall_density_cv"] = density_cv(wall)

    # ---- what the frames see
    seen_any = np.zeros(len(xyz), dtype=bool)
    per_frame = []
    for f in frames:
        vis = visible(xyz, f.depth, K, f.camera_to_world, tol=COVER_TOL)
        seen_any |= vis
        per_frame.append(vis)
    annotated = nyu > 0
    high = height > 2.0
    out["seen"] = {
        "annotated_any_frame": float(seen_any[annotated].mean()) if annotated.any() else float("nan"),
        "annotated_per_frame_mean": float(np.mean([v[annotated].mean() for v in per_frame])) if annotated.any()
        else float("nan"),
        "above_2m_any_frame": float(seen_any[high].mean()) if high.any() else float("nan"),
        "vertices_above_2m": int(high.sum()),
    }

    # ---- chunks: all frames vs the best 1/3/5 greedy views
    rng = np.random.default_rng(seed)
    cxy = np.floor((aligned[:, :2] - aligned[:, :2].min(0)) / CHUNK).astype(np.int64)
    keys, inv = np.unique(cxy, axis=0, return_inverse=True)
    inv = inv.ravel()
    vis_all = np.stack(per_frame)  # (F, N) bool
    ratios: dict[int, list[float]] = {1: [], 3: [], 5: []}
    cover_all = []
    for c in range(len(keys)):
        idx = np.flatnonzero(inv == c)
        if len(idx) < 200:
            continue
        base = rng.choice(idx, size=min(BASE_POINTS, len(idx)), replace=False)
        cov = vis_all[:, base]
        total = cov.any(axis=0).sum()
        cover_all.append(total / len(base))
        if total == 0:
            continue
        for k in ratios:
            sel = greedy_select(cov, k)
            ratios[k].append(float(cov[sel].any(axis=0).sum() / total))
    out["chunks"] = {"count": len(cover_all), "covered_by_all_frames": float(np.mean(cover_all)) if cover_all else 0.0,
                     **{f"best{k}_over_all": float(np.mean(v)) if v else float("nan") for k, v in ratios.items()}}

    # ---- frames: depth validity, distance of depth to the mesh, image statistics
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(xyz.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    dists, valid, grads, stds = [], [], [], []
    for f in frames:
        valid.append(float((f.depth > 0).mean()))
        pts, _ = backproject(f.depth, K, f.camera_to_world, stride=4)
        if len(pts):
            dists.append(rs.compute_distance(o3d.core.Tensor(np.asarray(pts, dtype=np.float32))).numpy())
        g, s = image_stats(f.color)
        grads.append(g)
        stds.append(s)
    d = np.concatenate(dists) if dists else np.zeros(0)
    out["frames"] = {
        "total": int(n_total), "invalid_poses": int(n_invalid), "used": len(frames),
        "valid_depth": float(np.mean(valid)),
        "depth_to_mesh_mean_cm": float(d.mean() * 100) if len(d) else float("nan"),
        "depth_to_mesh_median_cm": float(np.median(d) * 100) if len(d) else float("nan"),
        "depth_to_mesh_over_5cm": float((d > 0.05).mean()) if len(d) else float("nan"),
        "image_gradient_160": float(np.mean(grads)), "image_grey_std_160": float(np.mean(stds)),
    }

    # ---- labels
    ids, counts = np.unique(nyu, return_counts=True)
    n = max(len(nyu), 1)
    bench = np.isin(nyu, NYU40_IDS)
    out["labels"] = {
        "unannotated": float((nyu == 0).mean()), "ignored": float((~bench).mean()),
        "ceiling": float((nyu == 22).mean()), "classes_present": int(np.isin(ids, NYU40_IDS).sum()),
        "share": {int(k): round(float(c) / n, 5) for k, c in zip(ids, counts)},
    }
    moved = Path(scene_dir) / f"{Path(scene_dir).name}.synth_vertex_moved.npy"
    if moved.is_file():
        mv = np.load(moved)
        out["moved_vertices"] = int(mv.sum()) if len(mv) == len(xyz) else None
    return out


def format_table(s: dict[str, Any]) -> str:
    """The figures as an aligned two-column table."""
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    rows = [
        ("vertices / faces", f"{s['vertices']} / {s['faces']}"),
        ("vertex spacing p10/p50/p90", "{p10:.1f} / {p50:.1f} / {p90:.1f} cm".format(**s["spacing_cm"])),
        ("wall density CV", f"{s['wall_density_cv']:.3f}"),
        ("annotated vertices seen (any frame)", pct(s["seen"]["annotated_any_frame"])),
        ("annotated vertices seen per frame", pct(s["seen"]["annotated_per_frame_mean"])),
        ("vertices > 2 m seen (any frame)", f"{pct(s['seen']['above_2m_any_frame'])} of {s['seen']['vertices_above_2m']}"),
        ("chunks (1.5 m)", str(s["chunks"]["count"])),
        ("chunk points covered by all frames", pct(s["chunks"]["covered_by_all_frames"])),
        ("best 1 / 3 / 5 views over all frames", " / ".join(f"{s['chunks'][f'best{k}_over_all']:.2f}" for k in (1, 3, 5))),
        ("frames (invalid poses, used)", f"{s['frames']['total']} ({s['frames']['invalid_poses']}, {s['frames']['used']})"),
        ("valid depth", pct(s["frames"]["valid_depth"])),
        ("depth to mesh mean / median", f"{s['frames']['depth_to_mesh_mean_cm']:.2f} / "
                                         f"{s['frames']['depth_to_mesh_median_cm']:.2f} cm"),
        ("depth pixels > 5 cm from mesh", pct(s["frames"]["depth_to_mesh_over_5cm"])),
        ("image gradient / grey std (160x120)", f"{s['frames']['image_gradient_160']:.2f} / "
                                                f"{s['frames']['image_grey_std_160']:.1f}"),
        ("unannotated / ignored / ceiling", f"{pct(s['labels']['unannotated'])} / {pct(s['labels']['ignored'])} / "
                                            f"{pct(s['labels']['ceiling'])}"),
        ("benchmark classes present", str(s["labels"]["classes_present"])),
    ]
    if s.get("moved_vertices") is not None:
        rows.append(("vertices on moved objects", str(s["moved_vertices"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"scene {s['scene']}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def run(args: argparse.Namespace) -> int:
    stats = scene_stats(args.scene, frame_step=args.frame_step, seed=args.seed)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(format_table(stats))
    return 0
