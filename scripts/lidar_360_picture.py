#!/usr/bin/env python3
"""What a 360° LiDAR user gets: one scan around the robot, one forward camera, ``outside_views`` 3d vs ignore.

    make demo                                       # makes out/demo/data/scene0700_00 (the demo room)
    .venv/bin/python scripts/lidar_360_picture.py   # -> docs/images/lidar_360.png, and the shares it prints

A 360° scan is simulated from the demo room's labelled mesh: every vertex
within ``--radius`` m (horizontally) of a camera position along the scan,
seen from there (the sensor position is the camera's). The camera's views are
the ``--views`` most recent valid frames up to that moment (what the node's
buffer would hold), so they cover only what a forward camera saw. The shipped
model labels the scan twice through the Segmenter the node uses:
``outside_views="ignore"`` (points no view covers stay unlabelled) and
``"3d"`` (the default: they are labelled by the 3D branch alone, with
similarity 0). The picture shows both top views, the ground truth and the
similarity; the script prints the labelled share and the accuracy of the
image-backed and geometry-only points.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from safnet_ros.data.labels import CLASS_COLORS, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, nyu40_to_class
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.engine.batching import prepare_view
from safnet_ros.engine.inference import Segmenter
from safnet_ros.tools.render import label_colors

REPO = Path(__file__).resolve().parents[1]


def simulated_scan(xyz: np.ndarray, origin: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the vertices (N, 3) within ``radius`` m of ``origin`` (3,) in xy: a 360° scan's footprint."""
    return np.flatnonzero(np.linalg.norm(xyz[:, :2] - origin[None, :2], axis=1) <= radius)


def accuracy(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Share of annotated points in ``mask`` whose predicted class equals the truth (nan when none)."""
    m = mask & (truth != IGNORE_INDEX)
    return float((pred[m] == truth[m]).mean()) if m.any() else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=REPO / "out/demo/data/scene0700_00",
                    help="a ScanNet-format scene (default: the demo room; run `make demo` first)")
    ap.add_argument("--frame", type=int, default=150, help="valid frame whose camera position is the sensor's")
    ap.add_argument("--views", type=int, default=8, help="buffered views: the last N valid frames, every 5th")
    ap.add_argument("--radius", type=float, default=4.5, help="scan radius, metres (default 4.5)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--out", type=Path, default=REPO / "docs/images/lidar_360.png")
    args = ap.parse_args()
    if not args.scene.is_dir():
        ap.error(f"{args.scene} is not a scene folder (run `make demo` first, or give --scene)")

    with ScanNetScene(args.scene) as scene:
        xyz, _rgb = scene.load_points(aligned=True)
        truth_all = nyu40_to_class(scene.load_nyu40()).astype(np.int64)
        align, frames = scene.axis_alignment, scene.frames
        valid = list(frames.valid_indices)
        upto = valid[: max(1, min(args.frame, len(valid)))]
        chosen = upto[::-5][: args.views]
        views = []
        for i in chosen:
            f = frames.get(i)
            views.append(prepare_view(f.color, f.depth, frames.intrinsic_depth, align @ f.camera_to_world))
        origin = views[0].camera_to_world[:3, 3]
    idx = simulated_scan(np.asarray(xyz, np.float64), origin, args.radius)
    points, truth = np.asarray(xyz, np.float64)[idx], truth_all[idx]

    results = {}
    for mode in ("ignore", "3d"):
        seg = Segmenter.from_checkpoint(args.model, device="cpu", outside_views=mode, chunk_stride=1.5)
        results[mode] = seg.segment(points, views)
    ign, full = results["ignore"], results["3d"]
    image_backed = ign.segmented
    geometry_only = full.outside_views
    print(f"scan: {len(points)} points within {args.radius:g} m of the sensor, {len(views)} forward views")
    print(f"outside_views=ignore: {image_backed.mean():.1%} labelled, accuracy {accuracy(ign.labels, truth, image_backed):.1%}")
    print(f"outside_views=3d:     {full.segmented.mean():.1%} labelled; the {geometry_only.mean():.1%} no view covers "
          f"(similarity 0) at accuracy {accuracy(full.labels, truth, geometry_only):.1%}")

    fig = Figure(figsize=(16, 4.8), dpi=110)
    panels = [
        ("outside_views: ignore (black: not labelled)", label_colors(ign.labels)),
        ("outside_views: 3d (default)", label_colors(full.labels)),
        ("ground truth (black: not annotated)", label_colors(truth)),
        ("similarity S (0 = geometry only)", None),
    ]
    order = np.argsort(points[:, 2])  # floor first, so walls and furniture stay visible from above
    for k, (title, colors) in enumerate(panels):
        ax = fig.add_subplot(1, 4, k + 1)
        if colors is None:
            sc = ax.scatter(points[order, 0], points[order, 1], c=np.nan_to_num(full.s[order], nan=0.0), s=0.6,
                            cmap="inferno", vmin=0.0, vmax=1.0, linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        else:
            ax.scatter(points[order, 0], points[order, 1], c=colors[order], s=0.6, linewidths=0)
        cams = np.array([v.camera_to_world[:3, 3] for v in views])
        ax.plot(cams[:, 0], cams[:, 1], "c^", ms=5)
        ax.plot(*origin[:2], "k*", ms=10)
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set(np.unique(truth)) - {IGNORE_INDEX})
    handles = [Patch(color=np.asarray(CLASS_COLORS[c]) / 255.0, label=CLASS_NAMES[c]) for c in present
               if c < NUM_CLASSES]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"A {args.radius:g} m 360° scan (star: sensor) with {len(views)} views of one forward camera "
                 f"(triangles): ignore labels {image_backed.mean():.0%} of the points, 3d labels all", fontsize=11)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
