"""Summarise one ScanNet-format scene folder.

Reads the scene's frames (.sens, or the exported color/depth/pose layout), its
mesh (_vh_clean_2.ply) and, when present, its vertex labels (.labels.ply), and
prints frame counts (all / valid / lost tracking), image sizes, the number of
mesh vertices and how many vertices carry each of the 20 benchmark nyu40 ids.
With --json it prints one JSON object instead of a table.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from safnet_ros.data.labels import CLASS_NAMES, NYU40_IDS
from safnet_ros.data.scannet import ExportedFrames, ScanNetScene
from safnet_ros.errors import MissingDataError
from safnet_ros.json_out import json_safe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``safnet data info``."""
    parser.add_argument("scene_dir", metavar="SCENE_DIR", help="scene folder, e.g. scans/scene0000_00")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def scene_info(scene_dir: str) -> dict[str, Any]:
    """Collect the summary of ``scene_dir`` as a JSON-ready dict.

    Raises MissingDataError naming every missing required part (mesh, frames) at
    once; DataFormatError when the labels do not match the mesh.
    """
    scene = ScanNetScene(scene_dir)
    missing = []
    if not os.path.lexists(scene.mesh_path):  # a folder or FIFO there is named by load_mesh
        missing.append(f"mesh {scene.mesh_path.name}")
    if not scene.has_frames:
        missing.append(f"RGB-D frames ({scene.sens_path.name} or color/, depth/, pose/)")
    if missing:
        raise MissingDataError(scene.dir, "required " + " and ".join(missing))
    with scene:
        frames = scene.frames
        xyz, _, faces = scene.load_mesh()
        info: dict[str, Any] = {
            "scene": scene.name,
            "path": str(scene.dir),
            "frame_source": "exported" if isinstance(frames, ExportedFrames) else "sens",
            "frames": len(frames),
            "valid_frames": len(frames.valid_indices),
            "invalid_frames": frames.num_invalid,
            "points": int(len(xyz)),
            "faces": int(len(faces)),
            "color_wh": [int(v) for v in frames.color_size],
            "depth_wh": [int(v) for v in frames.depth_size],
            "depth_shift": float(frames.depth_shift),
            "intrinsic_color": _intrinsics(frames.intrinsic_color),
            "intrinsic_depth": _intrinsics(frames.intrinsic_depth),
            "axis_aligned": scene.has_axis_alignment and scene.axis_alignment is not None,  # reads and checks M
            "bbox_min": [round(float(v), 4) for v in xyz.min(axis=0)] if len(xyz) else None,
            "bbox_max": [round(float(v), 4) for v in xyz.max(axis=0)] if len(xyz) else None,
            "label_file": scene.labels_path.is_file(),
            "aggregation_file": scene.aggregation_path.is_file(),
            "segs_file": scene.segs_path.is_file(),
        }
        hist: dict[str, int] = {}
        if info["label_file"]:
            nyu40 = scene.load_nyu40()  # refuses labels that do not fit the mesh
            counts = np.bincount(nyu40.astype(np.int64), minlength=max(NYU40_IDS) + 1)
            hist = {str(i): int(counts[i]) for i in NYU40_IDS if counts[i] > 0}
            info["labelled_points"] = int(sum(hist.values()))
        info["nyu40_hist"] = hist
        info["nyu40_names"] = {str(i): n for i, n in zip(NYU40_IDS, CLASS_NAMES) if str(i) in hist}
    return info


def _intrinsics(k: np.ndarray) -> dict[str, float]:
    """fx, fy, cx, cy (pixels) of a (3, 3) or (4, 4) intrinsic matrix."""
    return {"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}


def format_table(info: dict[str, Any]) -> str:
    """Human-readable multi-line summary of :func:`scene_info`'s dict."""
    rows = [
        ("scene", info["scene"]),
        ("frames", f"{info['frames']} ({info['valid_frames']} valid, {info['invalid_frames']} lost tracking)"
                   f" from {info['frame_source']}"),
        ("colour size", "x".join(map(str, info["color_wh"]))),
        ("depth size", "x".join(map(str, info["depth_wh"])) + f" (shift {info['depth_shift']:g})"),
        ("mesh", f"{info['points']} vertices, {info['faces']} faces"),
        ("axis aligned", "yes" if info["axis_aligned"] else "no (identity)"),
        ("labels", "yes" if info["label_file"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if info["nyu40_hist"]:
        lines.append("")
        lines.append(f"{'nyu40':>5}  {'class':<16} {'vertices':>9}")
        for key, count in info["nyu40_hist"].items():
            lines.append(f"{key:>5}  {info['nyu40_names'][key]:<16} {count:>9}")
        lines.append(f"{'':>5}  {'total':<16} {info['labelled_points']:>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``safnet data info``: the table (or ``--json`` object) of ``args.scene_dir``."""
    info = scene_info(args.scene_dir)
    if args.json:
        print(json.dumps(json_safe(info), sort_keys=False, allow_nan=False))  # strict JSON: no NaN tokens
    else:
        print(format_table(info))
    return 0
