"""``safnet data stats SCENE_DIR [--json]``: how much a scene looks like a ScanNet scan (the realism table).

What it measures (``--model``: S on moved against static vertices, view by
view too): docs/synthetic_data.md. Heights are in the axis-aligned frame, the
floor at the lowest vertex; frames are used at their recorded poses.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from safnet_ros.data.dataset import SELECTION_BASE_POINTS
from safnet_ros.data.labels import CLASS_NAMES, IGNORE_INDEX, NYU40_IDS, nyu40_to_class
from safnet_ros.data.preprocess import COVERAGE_TOL, unpack_coverage
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.data.view_similarity import sighting_groups, sighting_rows, similarity_per_view, vertex_mean
from safnet_ros.engine.batching import prepare_view
from safnet_ros.engine.inference import Segmenter
from safnet_ros.errors import ConfigError, DataFormatError, MissingDataError
from safnet_ros.geometry.camera import backproject, nearest_pixel, project, visible
from safnet_ros.geometry.transforms import apply_transform
from safnet_ros.geometry.views import greedy_select
from safnet_ros.json_out import json_safe
from safnet_ros.tools.render import render_cloud_png, render_moved_similarity_png

#: Chunk size (metres), as training and evaluation use it (docs/design.md §2.5).
CHUNK = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", metavar="SCENE_DIR", help="a ScanNet-format scene folder (sceneXXXX_YY/)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--frame-step", type=int, default=1, metavar="N",
                        help="use every N-th frame (default 1: all; the greedy views come from these)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base-point sampling (default 0)")
    parser.add_argument("--model", default=None, metavar="CKPT",
                        help="also segment the scene with this checkpoint ('default': the shipped model) and report "
                             "the similarity S on vertices of objects that moved during the scan (the generator's "
                             "<name>.synth_vertex_moved.npy) against static ones")
    parser.add_argument("--view-step", type=int, default=5, metavar="N",
                        help="with --model: every N-th valid frame is a candidate view (default 5)")
    parser.add_argument("--device", default="cpu", help="with --model: auto, cpu or cuda (default cpu)")
    parser.add_argument("--chunk-stride", type=float, default=1.5, metavar="M",
                        help="with --model: chunk stride in metres (default 1.5: no overlap, as the node runs; "
                             "0.5 is the evaluator's, 9x slower)")
    parser.add_argument("--png", default=None, metavar="PATH",
                        help="with --model: draw labels, S and the truth to this PNG, a close-up of S "
                             "around the moved objects with S's histogram per group to PATH_moved.png, and the "
                             "same for S view by view to PATH_per_view.png")
    parser.add_argument("--no-per-view", dest="per_view", action="store_false",
                        help="with --model: skip S view by view (the model run once per candidate view with "
                             "that view alone: about a second per view on a CPU)")


def _edge_lengths(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    return np.linalg.norm(xyz[e[:, 0]] - xyz[e[:, 1]], axis=1)


def density_cv(points: np.ndarray, k: int = 6) -> float:
    """Coefficient of variation of the local density ``k / (pi r_k^2)`` over ``points`` (N, 3) metres."""
    if len(points) <= k + 1:
        return float("nan")
    tree = cKDTree(points)
    dist, _ = tree.query(points, k=k + 1)
    r = np.maximum(dist[:, -1], 1e-6)
    dens = k / (math.pi * r * r)
    return float(dens.std() / dens.mean())


def image_stats(color: np.ndarray) -> tuple[float, float]:
    """(mean gradient magnitude, std) of the grey image of ``color`` (H, W, 3) uint8 resized to 160x120."""
    g = np.asarray(Image.fromarray(color).convert("L").resize((160, 120), Image.BILINEAR), dtype=np.float64)
    gx = np.diff(g, axis=1)[:-1]
    gy = np.diff(g, axis=0)[:, :-1]
    return float(np.sqrt(gx * gx + gy * gy).mean()), float(g.std())


def scene_stats(scene_dir: str | Path, frame_step: int = 1, seed: int = 0) -> dict[str, Any]:
    """The realism figures of one scene (docs/synthetic_data.md), as a dict."""
    import open3d as o3d  # noqa: PLC0415 - open3d (not a ROS dependency) only for the mesh table; the similarity functions here run without it

    if frame_step < 1:
        raise ConfigError(f"--frame-step must be >= 1, got {frame_step}")
    with ScanNetScene(scene_dir) as scene:
        xyz, _rgb, faces = scene.load_mesh()
        if len(faces) == 0:
            raise DataFormatError(scene.mesh_path, "the mesh has 0 faces: the realism table needs a triangle mesh "
                                                   "(edge lengths, ray casting)")
        xyz = xyz.astype(np.float64)
        nyu = scene.load_nyu40().astype(np.int64)
        aligned = apply_transform(scene.axis_alignment, xyz) if scene.has_axis_alignment else xyz
        height = aligned[:, 2] - aligned[:, 2].min()
        src = scene.frames
        indices = src.valid_indices[::frame_step]
        n_total, n_invalid = len(src), src.num_invalid
        K = np.asarray(src.intrinsic_depth, dtype=np.float64)[:3, :3]
        if not indices:
            raise ConfigError(f"{scene_dir}: no frame with a valid pose")
        # One pass over the frames (streamed: a real scan has thousands): visibility of every vertex
        # (packed bits), distance of back-projected depth to the mesh, image statistics.
        rs = o3d.t.geometry.RaycastingScene()
        rs.add_triangles(o3d.core.Tensor(xyz.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
        packed, dists, valid, grads, stds = [], [], [], [], []
        for i in indices:
            f = src.get(i)
            packed.append(np.packbits(visible(xyz, f.depth, K, f.camera_to_world, tol=COVERAGE_TOL)))
            valid.append(float((f.depth > 0).mean()))
            pts, _ = backproject(f.depth, K, f.camera_to_world, stride=4)
            if len(pts):
                dists.append(rs.compute_distance(o3d.core.Tensor(np.asarray(pts, dtype=np.float32))).numpy())
            g, sd = image_stats(f.color)
            grads.append(g)
            stds.append(sd)
    bits = np.stack(packed)  # (F, ceil(N / 8)) uint8: unpack_coverage(bits, columns) = who sees the columns

    # ---- mesh
    edges = _edge_lengths(xyz, faces)
    wall = xyz[nyu == 1]
    out: dict[str, Any] = {"scene": Path(scene_dir).name, "vertices": int(len(xyz)), "faces": int(len(faces))}
    out["spacing_cm"] = {f"p{q}": float(np.percentile(edges, q) * 100) for q in (10, 50, 90)}
    out["wall_density_cv"] = density_cv(wall)

    # ---- what the frames see
    seen_any = np.unpackbits(np.bitwise_or.reduce(bits, axis=0))[: len(xyz)].astype(bool)
    annotated = nyu > 0
    high = height > 2.0
    ann_idx = np.flatnonzero(annotated)
    per_frame = unpack_coverage(bits, ann_idx).mean(axis=1) if len(ann_idx) else np.zeros(0)
    out["seen"] = {
        "annotated_any_frame": float(seen_any[annotated].mean()) if annotated.any() else float("nan"),
        "annotated_per_frame_mean": float(per_frame.mean()) if len(per_frame) else float("nan"),
        "above_2m_any_frame": float(seen_any[high].mean()) if high.any() else float("nan"),
        "vertices_above_2m": int(high.sum()),
    }

    # ---- chunks: all frames vs the best 1/3/5 greedy views
    rng = np.random.default_rng(seed)
    cxy = np.floor((aligned[:, :2] - aligned[:, :2].min(0)) / CHUNK).astype(np.int64)
    keys, inv = np.unique(cxy, axis=0, return_inverse=True)
    inv = inv.ravel()
    ratios: dict[int, list[float]] = {1: [], 3: [], 5: []}
    cover_all = []
    for c in range(len(keys)):
        idx = np.flatnonzero(inv == c)
        if len(idx) < 200:
            continue
        base = np.sort(rng.choice(idx, size=min(SELECTION_BASE_POINTS, len(idx)), replace=False))
        cov = unpack_coverage(bits, base)
        total = cov.any(axis=0).sum()
        cover_all.append(total / len(base))
        if total == 0:
            continue
        for k in ratios:
            sel = greedy_select(cov, k)
            ratios[k].append(float(cov[sel].any(axis=0).sum() / total))
    out["chunks"] = {"count": len(cover_all), "covered_by_all_frames": float(np.mean(cover_all)) if cover_all else 0.0,
                     **{f"best{k}_over_all": float(np.mean(v)) if v else float("nan") for k, v in ratios.items()}}

    # ---- frames
    d = np.concatenate(dists) if dists else np.zeros(0)
    out["frames"] = {
        "total": int(n_total), "invalid_poses": int(n_invalid), "used": len(indices),
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


def view_sightings(xyz: np.ndarray, views: list, tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(seen (V, N) bool, sees_through (V, N) bool): which view sees which vertex (N, 3) metres, aligned frame.

    A view sees a vertex when it projects inside the image in front of the camera
    onto valid depth; it sees *through* it when that depth lies more than
    ``tolerance`` metres beyond the vertex: free space where the mesh has a surface
    (the object moved away, or the pose is off). A nearer depth is mostly plain
    occlusion and is left out. This is the 2D-3D mismatch S is meant to detect.
    """
    xyz = np.asarray(xyz, np.float64)
    seen = np.zeros((len(views), len(xyz)), bool)
    through = np.zeros((len(views), len(xyz)), bool)
    for k, v in enumerate(views):
        h, w = v.depth.shape
        uv, z, in_image = project(xyz, v.K, v.camera_to_world, (w, h))
        idx = np.flatnonzero(in_image)
        d = v.depth.reshape(-1)[nearest_pixel(uv, in_image, (w, h))[idx]]
        valid = np.isfinite(d) & (d > 0)
        idx, d = idx[valid], d[valid]
        seen[k, idx] = True
        through[k, idx[d - z[idx] > tolerance]] = True
    return seen, through


def moved_similarity(scene_dir: str | Path, model: str | None, view_step: int = 5, device: str = "cpu",
                     png: str | Path | None = None, chunk_stride: float = 1.5,
                     per_view: bool = True) -> dict[str, Any]:
    """Segment the scene's mesh with a checkpoint and compare S on moved and static annotated vertices.

    The views are every ``view_step``-th valid frame (the model picks its views
    per chunk). Returns mean/median S (and its geometric and contextual parts)
    over segmented annotated vertices that lie on moved objects (the
    generator's sidecar) and over the others, with their counts. With
    ``per_view``, also S view by view (``"per_view"``: the model given each
    view alone, per sighting; :mod:`safnet_ros.data.view_similarity`).
    """
    scene_dir = Path(scene_dir)
    sidecar = scene_dir / f"{scene_dir.name}.synth_vertex_moved.npy"
    if not sidecar.is_file():
        raise MissingDataError(sidecar, "moved-vertex sidecar (written by safnet data synth)")
    if view_step < 1:
        raise ConfigError(f"--view-step must be >= 1, got {view_step}")
    with ScanNetScene(scene_dir) as scene:
        align = scene.axis_alignment
        xyz, _ = scene.load_points(aligned=True)
        truth = nyu40_to_class(scene.load_nyu40()).astype(np.int64)
        frames = scene.frames
        views = [prepare_view(f.color, f.depth, frames.intrinsic_depth, align @ f.camera_to_world)
                 for f in (frames.get(i) for i in frames.valid_indices[::view_step])]
    moved = np.load(sidecar).astype(bool)
    if len(moved) != len(xyz):
        raise ConfigError(f"{sidecar}: {len(moved)} entries for {len(xyz)} vertices")
    if not (math.isfinite(chunk_stride) and 0.1 <= chunk_stride <= 3.0):
        raise ConfigError(f"--chunk-stride must be in [0.1, 3] m, got {chunk_stride}")
    seg = Segmenter.from_checkpoint(None if model in (None, "", "default") else model, device=device,
                                    chunk_stride=chunk_stride)
    result = seg.segment(np.asarray(xyz, dtype=np.float32), views, record_views=True)
    ok = result.segmented & (truth != IGNORE_INDEX) & np.isfinite(result.s)
    out: dict[str, Any] = {"model": str(model or "default"), "views": len(views), "untrained": bool(seg.untrained)}
    sees, sees_through = view_sightings(xyz, views)
    seen, disagree = sees.sum(axis=0), sees_through.sum(axis=0)
    # S pools the back-projected points of all of a chunk's views: one view that still sees the object in
    # place gives a moved vertex its neighbours. "moved_unseen": moved vertices that most views see through;
    # "moved_chosen_through": moved vertices that every view the model chose (and that sees them) sees
    # through; "moved_chosen_sees": moved vertices that at least one chosen view sees in place.
    mostly = disagree * 2 > seen
    pv = result.point_views  # (N, K) the views each vertex's chunks used, -1 padded
    cols = np.arange(len(xyz))[:, None]
    chosen_sees = (sees[pv.clip(0), cols] & (pv >= 0)).sum(axis=1)
    chosen_through = (sees_through[pv.clip(0), cols] & (pv >= 0)).sum(axis=1)
    all_chosen_through = (chosen_sees > 0) & (chosen_through == chosen_sees)
    some_chosen_sees = chosen_through < chosen_sees
    ok &= seen > 0  # compare vertices that some view sees (a chunk without views has S = 0 by definition)
    for name, mask in (("moved", ok & moved), ("static", ok & ~moved), ("moved_unseen", ok & moved & mostly),
                       ("moved_chosen_through", ok & moved & all_chosen_through),
                       ("moved_chosen_sees", ok & moved & some_chosen_sees)):
        row = {"vertices": int(mask.sum())}
        # the mismatch itself: share of (vertex, view) sightings that see > 10 cm beyond the vertex
        row["view_disagreement"] = float(disagree[mask].sum() / max(seen[mask].sum(), 1))
        # the same over the sightings of the views the model chose for the vertex's chunks
        row["chosen_view_disagreement"] = float(chosen_through[mask].sum() / max(chosen_sees[mask].sum(), 1))
        for key, arr in (("s", result.s), ("s_geo", result.s_geo), ("s_con", result.s_con)):
            vals = np.asarray(arr)[mask]
            row[f"{key}_mean"] = float(np.nanmean(vals)) if len(vals) else float("nan")
        row["s_median"] = float(np.nanmedian(np.asarray(result.s)[mask])) if mask.any() else float("nan")
        # how far the chosen views' back-projected pixels come to these vertices (the model's own N_Q search):
        # near pixels on another surface (the object in its other place, the floor under it) give S_geo support
        near = result.view_distance[mask]
        near = near[np.isfinite(near)]
        row["view_distance_median_cm"] = float(100 * np.median(near)) if len(near) else float("nan")
        row["view_distance_under_5cm"] = float((near < 0.05).mean()) if len(near) else float("nan")
        out[name] = row
    out["static_same_classes"] = class_matched_similarity(truth, ok & moved, ok & ~moved,
                                                          {"s": result.s, "s_geo": result.s_geo,
                                                           "s_con": result.s_con})
    s_views = None
    if per_view:  # S of each (vertex, view) sighting with that view alone: pooling cannot hide a mismatch
        s_views = similarity_per_view(seg, xyz, views, sees)
        out["per_view"] = sighting_rows(s_views, sees_through, moved, truth != IGNORE_INDEX, truth)
    if png is not None:
        title = (f"{scene_dir.name}: S moved {out['moved']['s_mean']:.3f} ({out['moved']['vertices']} vertices) "
                 f"vs static {out['static']['s_mean']:.3f}")
        s_draw = np.asarray(result.s, dtype=np.float32).copy()
        out["png"] = str(render_cloud_png(png, np.asarray(xyz), np.asarray(result.labels), similarity=s_draw,
                                          truth=truth, title=title))
        # the close-up: where the moved objects are, S there, and S's distribution per group
        png = Path(png)
        s_all = np.where(ok, s_draw, np.nan)  # the vertices the groups above count
        out["png_moved"] = str(render_moved_similarity_png(
            png.with_name(f"{png.stem}_moved{png.suffix or '.png'}"), np.asarray(xyz), s_all, moved & ok,
            [("static", ok & ~moved), ("moved, a chosen view sees it in place", ok & moved & some_chosen_sees),
             ("moved, every chosen view sees through it", ok & moved & all_chosen_through)],
            title=f"{scene_dir.name}: S where the views and the mesh disagree"))
        if s_views is not None:
            groups = sighting_groups(s_views, sees_through, moved, truth != IGNORE_INDEX)
            pv = out["per_view"]
            out["png_per_view"] = str(render_moved_similarity_png(
                png.with_name(f"{png.stem}_per_view{png.suffix or '.png'}"), np.asarray(xyz),
                np.where(truth != IGNORE_INDEX, vertex_mean(s_views), np.nan), moved, [],
                histograms=[("static", s_views[groups["static"]]),
                            ("moved, the view sees it in place", s_views[groups["moved_in_place"]]),
                            ("moved, the view sees through it", s_views[groups["moved_through"]])],
                unit="sightings", map_title="S view by view, each vertex's mean over the views that see it",
                title=f"{scene_dir.name}: S with each view alone: moved {pv['moved']['s_mean']:.3f} "
                      f"vs static {pv['static']['s_mean']:.3f} over the sightings"))
    return out


def class_matched_similarity(classes: np.ndarray, moved: np.ndarray, static: np.ndarray,
                             values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Static vertices weighted to the class mix of the moved ones: a like-for-like baseline for S.

    Moved objects are furniture (chairs, boxes, tables, ...), while most static
    vertices are walls and floors, whose S differs by class. For every class c
    that both groups hold, static vertices of c count with the share of the
    moved vertices in c. Returns the moved vertices of those classes
    (``moved_vertices``), the static vertices drawn on (``vertices``), the
    class names, and per value name (``s``, ``s_geo``, ``s_con``) the moved
    mean ``<name>_moved_mean`` and the matched static mean ``<name>_mean``
    (NaN when no class is shared). classes (N,) class indices; moved / static
    (N,) bool; values: name -> (N,) float.
    """
    moved_classes, moved_counts = np.unique(classes[moved], return_counts=True)
    static_of = {int(c): static & (classes == c) for c in moved_classes}  # each class's static vertices
    shared = [(int(c), int(n)) for c, n in zip(moved_classes, moved_counts) if static_of[int(c)].any()]
    total = sum(n for _c, n in shared)
    row: dict[str, Any] = {"classes": [CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else str(c) for c, _n in shared],
                           "moved_vertices": total,
                           "vertices": int(sum(int(static_of[c].sum()) for c, _n in shared))}
    in_shared = moved & np.isin(classes, [c for c, _n in shared])
    for name, arr in values.items():
        arr = np.asarray(arr, dtype=np.float64)
        if not total:
            row[f"{name}_mean"] = row[f"{name}_moved_mean"] = float("nan")
            continue
        row[f"{name}_mean"] = float(sum(n * np.nanmean(arr[static_of[c]]) for c, n in shared) / total)
        row[f"{name}_moved_mean"] = float(np.nanmean(arr[in_shared]))
    return row


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
    ms = s.get("moved_similarity")
    if ms:
        for key in ("moved", "static", "moved_unseen", "moved_chosen_through", "moved_chosen_sees"):
            r = ms[key]
            what = {"moved_unseen": "moved vertices most views see through",
                    "moved_chosen_through": "moved vertices every chosen view sees through",
                    "moved_chosen_sees": "moved vertices a chosen view sees in place"}.get(key, f"{key} vertices")
            rows.append((f"S on {what} (mean/median)",
                         f"{r['s_mean']:.3f} / {r['s_median']:.3f} over {r['vertices']} "
                         f"(S_geo {r['s_geo_mean']:.3f}, S_con {r['s_con_mean']:.3f})"
                         + (f"; nearest view pixel {r['view_distance_median_cm']:.1f} cm (median)"
                            if math.isfinite(r["view_distance_median_cm"]) else "")))
        sc = ms["static_same_classes"]
        if sc["moved_vertices"]:
            rows.append(("S, moved vs static of the same classes",
                         f"{sc['s_moved_mean']:.3f} vs {sc['s_mean']:.3f} (S_geo {sc['s_geo_moved_mean']:.3f} vs "
                         f"{sc['s_geo_mean']:.3f}; {', '.join(sc['classes'])})"))
        pv = ms.get("per_view")  # absent with --no-per-view
        if pv:
            for key, what in (("static", "static"), ("moved", "moved"), ("moved_in_place", "moved, seen in place"),
                              ("moved_through", "moved, seen through")):
                r = pv[key]
                rows.append((f"S view by view, {what}", f"{r['s_mean']:.3f} over {r['sightings']} sightings "
                                                         f"of {r['vertices']} vertices"))
            sc = pv["static_same_classes"]
            if sc["moved_sightings"]:
                rows.append(("S view by view, moved vs static same classes",
                             f"{sc['s_moved_mean']:.3f} vs {sc['s_mean']:.3f} ({', '.join(sc['classes'])})"))
        for key in ("moved", "static"):
            r = ms[key]
            rows.append((f"views seeing > 10 cm beyond, {key}", f"{pct(r['view_disagreement'])} "
                         f"(chosen views: {pct(r['chosen_view_disagreement'])})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"scene {s['scene']}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def run(args: argparse.Namespace) -> int:
    stats = scene_stats(args.scene, frame_step=args.frame_step, seed=args.seed)
    if args.model is not None:
        stats["moved_similarity"] = moved_similarity(args.scene, args.model, args.view_step, args.device, args.png,
                                                     args.chunk_stride, per_view=args.per_view)
    if args.json:  # strict JSON: a figure without data is null, never a bare NaN
        print(json.dumps(json_safe(stats), indent=1, allow_nan=False))
    else:
        print(format_table(stats))
    return 0
