"""Render labelled point clouds to PNG: a top view and a perspective view.

Rows are the two views; columns are the predicted classes (ScanNet colours),
the ground truth when given, and a similarity heat map (S in [0, 1+]: where the
image features were trusted). Points without a prediction (a negative label,
e.g. never seen by the node) are drawn light grey, and so is an unknown S.
Points are splatted far-to-near so nearer points cover farther ones.

Figures are drawn with matplotlib's object API (``Figure``, Agg on save), not
pyplot: no global backend switch, no figure registry to close.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from safnet_ros.data.labels import CLASS_COLORS, CLASS_NAMES, NUM_CLASSES, class_colors

#: Colour of points without a prediction (RGB 0..1).
UNLABELLED_COLOR = (0.82, 0.82, 0.82)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """(N,) class indices -> (N, 3) RGB in [0, 1]: ScanNet colours, negatives (no label) light grey."""
    labels = np.asarray(labels).astype(np.int64)
    colors = class_colors(np.clip(labels, 0, None)) / 255.0
    colors[labels < 0] = UNLABELLED_COLOR
    return colors


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _perspective(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) z-up metres from a virtual camera at a high corner.

    Returns (uv (N, 2) image-plane coordinates, depth (N,) along the view axis).
    """
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    center = (lo + hi) / 2.0
    extent = float(np.linalg.norm(hi - lo)) or 1.0
    eye = center + np.array([-0.55, -0.75, 0.75]) * extent
    forward = center - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = xyz - eye
    depth = rel @ forward
    depth = np.maximum(depth, 1e-3)
    uv = np.stack([rel @ right / depth, rel @ up / depth], axis=1)
    return uv, depth


def render_cloud_png(
    path: str | Path,
    xyz: np.ndarray,
    labels: np.ndarray,
    similarity: Optional[np.ndarray] = None,
    truth: Optional[np.ndarray] = None,
    title: str = "",
    max_points: int = 120_000,
    seed: int = 0,
    extra_labels: Optional[list[tuple[str, np.ndarray]]] = None,
    labels_title: str = "prediction",
) -> Path:
    """Write a PNG with top and perspective views of a labelled cloud.

    xyz (N, 3) metres, z up; labels (N,) class indices (others drawn black);
    similarity (N,) float, NaN where unknown; truth (N,) class indices;
    extra_labels: more (column title, (N,) class indices) columns, e.g. the semantic map's;
    labels_title: the first column's title.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(xyz).all(axis=1))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    xyz = xyz[idx]
    columns: list[tuple[str, np.ndarray]] = [(labels_title, label_colors(np.asarray(labels)[idx]))]
    for name, extra in extra_labels or ():
        columns.append((name, label_colors(np.asarray(extra)[idx])))
    if truth is not None:
        columns.append(("ground truth", label_colors(np.asarray(truth)[idx])))
    if similarity is not None:
        sim = np.asarray(similarity, dtype=np.float64)[idx]
        rgba = colormaps["inferno"](np.clip(np.nan_to_num(sim), 0.0, 1.0))
        rgba[~np.isfinite(sim)] = (*UNLABELLED_COLOR, 1.0)
        columns.append(("similarity S (2D weight)", rgba[:, :3]))

    uv, depth = _perspective(xyz)
    views = [
        ("top view", xyz[:, :2], np.argsort(xyz[:, 2])),  # low first: high points on top
        ("perspective", uv, np.argsort(-depth)),  # far first
    ]
    # rows as tall as their views are (equal aspect), so no band of white between them
    aspects = [float(np.clip(np.ptp(c[:, 1]) / max(np.ptp(c[:, 0]), 1e-9), 0.3, 1.5)) if len(c) else 0.75
               for _n, c, _o in views]
    panel_w = 4.6
    fig = Figure(figsize=(5.2 * len(columns), panel_w * sum(aspects) + 2.2))
    axes = fig.subplots(2, len(columns), squeeze=False, gridspec_kw={"height_ratios": aspects})
    size = float(np.clip(40000.0 / max(len(xyz), 1), 0.3, 6.0))
    for r, (vname, coords, order) in enumerate(views):
        for c, (cname, colors) in enumerate(columns):
            ax = axes[r, c]
            ax.scatter(coords[order, 0], coords[order, 1], c=colors[order], s=size, marker="s",
                       linewidths=0, rasterized=True)
            ax.set(aspect="equal", xticks=[], yticks=[])
            ax.set_title(f"{cname} — {vname}", fontsize=10)
    present = np.unique(np.asarray(labels)[idx])
    if truth is not None:
        present = np.union1d(present, np.unique(np.asarray(truth)[idx]))
    handles = [Patch(color=CLASS_COLORS[k] / 255.0, label=CLASS_NAMES[k]) for k in present if 0 <= k < NUM_CLASSES]
    if (np.asarray(labels)[idx] < 0).any():
        handles.append(Patch(color=UNLABELLED_COLOR, label="no label received"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8, frameon=False)
    if similarity is not None:
        sm = ScalarMappable(cmap="inferno", norm=Normalize(0.0, 1.0))
        fig.colorbar(sm, ax=axes[:, -1].tolist(), fraction=0.04, pad=0.02, label="S")
    if title:
        fig.suptitle(title, fontsize=12)
    height = fig.get_figheight()
    fig.subplots_adjust(bottom=1.0 / height, top=1.0 - 0.75 / height, wspace=0.05, hspace=0.12)
    return _save(fig, path)


def render_moved_similarity_png(
    path: str | Path,
    xyz: np.ndarray,
    similarity: np.ndarray,
    moved: np.ndarray,
    groups: list[tuple[str, np.ndarray]],
    title: str = "",
    margin: float = 0.6,
    histograms: Optional[list[tuple[str, np.ndarray]]] = None,
    unit: str = "vertices",
    map_title: str = "S around the moved objects (top view; moved vertices ringed cyan)",
) -> Path:
    """Close-up of S around moved objects, and S's distribution per group of vertices.

    xyz (N, 3) metres z up; similarity (N,) S, NaN where unknown; moved (N,)
    bool, the vertices of moved objects; groups: (legend name, (N,) bool mask)
    whose S histograms are drawn (e.g. static, moved and seen in place, moved
    and seen through). Left: the top view of the moved vertices' xy bounding
    box widened by ``margin`` metres, every vertex in it coloured by S, the
    moved ones drawn larger with a cyan rim so that the eye finds them. Right: the histograms, normalised per
    group, with each group's mean and count in the legend. ``histograms``: (legend name, values) drawn
    instead of ``groups`` (e.g. S per view sighting, ``unit`` "sightings"); ``map_title`` names the left panel.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    sim = np.asarray(similarity, dtype=np.float64)
    moved = np.asarray(moved, dtype=bool)
    fig = Figure(figsize=(12.5, 5.4))
    ax_map, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1.0]})
    cmap = colormaps["inferno"]
    finite = np.isfinite(xyz).all(axis=1) & np.isfinite(sim)
    show = finite & moved
    if show.any():
        lo = xyz[show, :2].min(axis=0) - margin
        hi = xyz[show, :2].max(axis=0) + margin
        near = finite & (xyz[:, :2] >= lo).all(axis=1) & (xyz[:, :2] <= hi).all(axis=1)
        static = near & ~moved
        order = np.flatnonzero(static)[np.argsort(xyz[static, 2])]
        ax_map.scatter(xyz[order, 0], xyz[order, 1], c=cmap(np.clip(sim[order], 0, 1)), s=4, marker="s",
                       linewidths=0, rasterized=True)
        order = np.flatnonzero(show)[np.argsort(xyz[show, 2])]
        ax_map.scatter(xyz[order, 0], xyz[order, 1], c=cmap(np.clip(sim[order], 0, 1)), s=16, marker="o",
                       edgecolors="cyan", linewidths=0.5, rasterized=True)
        ax_map.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]))
        sm = ScalarMappable(cmap="inferno", norm=Normalize(0.0, 1.0))
        fig.colorbar(sm, ax=ax_map, fraction=0.046, pad=0.02, label="S (2D weight)")
    else:
        ax_map.text(0.5, 0.5, "no moved vertex with an S", ha="center", va="center", transform=ax_map.transAxes)
    ax_map.set(aspect="equal", xlabel="x (m)", ylabel="y (m)")
    ax_map.set_title(map_title, fontsize=10)
    if histograms is None:
        histograms = [(name, sim[m & np.isfinite(sim)]) for name, m in groups]
    values = [(name, np.asarray(v, dtype=np.float64)) for name, v in histograms]
    values = [(name, v[np.isfinite(v)]) for name, v in values]
    top = max([float(np.max(v)) for _n, v in values if len(v)] + [1.0])
    bins = np.linspace(0.0, max(1.2, top), 31)
    for name, v in values:
        if len(v):
            ax_hist.hist(v, bins=bins, density=True, histtype="step", linewidth=1.8,
                         label=f"{name}: mean {v.mean():.2f} ({len(v):,} {unit})")
    ax_hist.set(xlabel="S", ylabel="density (each group sums to 1)")
    ax_hist.set_title(f"S per group of {unit}", fontsize=10)
    if any(len(v) for _n, v in values):
        ax_hist.legend(fontsize=8, loc="upper left")
    ax_hist.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
