"""The files of a synthetic scene besides the ``.sens``, in ScanNet's shapes (meshes, segmentation,
``<name>.txt``), our ground truth beside them (``<name>.synth.json``, ``<name>.synth_true_poses.npy``)
and the dataset-level label map and split lists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from safnet_ros.data.labels import class_colors, nyu40_to_class
from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.scannet import write_label_map
from safnet_ros.data.synth.rooms import CATEGORY_NYU40

#: ScanNet's over-segmentation parameters as they appear in ``segs.json``.
SEGS_PARAMS = {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "5000",
               "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"}


def write_meshes(scene_dir: Path, name: str, xyz: np.ndarray, rgb: np.ndarray, faces: np.ndarray,
                 nyu40: np.ndarray) -> None:
    """``_vh_clean_2.ply`` (xyz, RGBA, faces) and ``_vh_clean_2.labels.ply`` (same geometry, the benchmark
    palette's colours with ignored ids black, label)."""
    write_scannet_mesh(scene_dir / f"{name}_vh_clean_2.ply", xyz, rgb, faces)
    write_scannet_mesh(scene_dir / f"{name}_vh_clean_2.labels.ply", xyz, class_colors(nyu40_to_class(nyu40)), faces,
                       labels=nyu40.astype(np.uint16))


def write_segmentation(scene_dir: Path, name: str, segment: np.ndarray, vertex_object: np.ndarray,
                       categories: list[str]) -> None:
    """``segs.json`` (segIndices per vertex) and ``aggregation.json`` (one segGroup per object).

    ``segment`` (V,) segment id per vertex, ``vertex_object`` (V,) object index,
    ``categories`` raw category per object index. Every segment lies on one object.
    """
    segs_file = f"{name}_vh_clean_2.0.010000.segs.json"
    _dump(scene_dir / segs_file, {"params": SEGS_PARAMS, "sceneId": name,
                                  "segIndices": [int(s) for s in segment]})
    seg_ids, first = np.unique(segment, return_index=True)
    seg_object = vertex_object[first]
    groups = [{"id": k, "objectId": k, "segments": [int(s) for s in seg_ids[seg_object == k]], "label": category}
              for k, category in enumerate(categories) if (seg_object == k).any()]
    _dump(scene_dir / f"{name}.aggregation.json",
          {"sceneId": f"scannet.{name}", "appId": "Aggregator.v2", "segGroups": groups,
           "segmentsFile": f"scannet.{segs_file}"})


def write_scene_txt(scene_dir: Path, name: str, axis_alignment: np.ndarray, K_color: np.ndarray,
                    K_depth: np.ndarray, color_size: tuple[int, int], depth_size: tuple[int, int],
                    num_frames: int) -> None:
    """``<name>.txt`` with ``axisAlignment = 16 floats`` (row-major world -> aligned) and ScanNet's camera lines."""
    m = " ".join(_fmt(v) for v in np.asarray(axis_alignment, dtype=np.float64).ravel())
    lines = [
        f"axisAlignment = {m}",
        f"colorHeight = {color_size[1]}",
        "colorToDepthExtrinsics = " + " ".join(_fmt(v) for v in np.eye(4).ravel()),
        f"colorWidth = {color_size[0]}",
        f"depthHeight = {depth_size[1]}",
        f"depthWidth = {depth_size[0]}",
        f"fx_color = {K_color[0, 0]:.6f}", f"fx_depth = {K_depth[0, 0]:.6f}",
        f"fy_color = {K_color[1, 1]:.6f}", f"fy_depth = {K_depth[1, 1]:.6f}",
        f"mx_color = {K_color[0, 2]:.6f}", f"mx_depth = {K_depth[0, 2]:.6f}",
        f"my_color = {K_color[1, 2]:.6f}", f"my_depth = {K_depth[1, 2]:.6f}",
        f"numColorFrames = {num_frames}",
        f"numDepthFrames = {num_frames}",
        "numIMUmeasurements = 0",
        "sceneType = Apartment",
    ]
    (scene_dir / f"{name}.txt").write_text("\n".join(lines) + "\n")


def write_synth_meta(scene_dir: Path, name: str, meta: dict, true_poses: np.ndarray) -> None:
    """Our ground truth beside the ScanNet files: ``<name>.synth.json`` and ``<name>.synth_true_poses.npy``."""
    _dump(scene_dir / f"{name}.synth.json", meta, indent=1)
    np.save(scene_dir / f"{name}.synth_true_poses.npy", np.asarray(true_poses, dtype=np.float64))


def write_dataset_files(out: Path, names: list[str], split: str | None) -> None:
    """``OUT/scannetv2-labels.combined.tsv`` (every category the generator uses) and the split lists
    ``OUT/scannetv2_<split>.txt``.

    With ``split`` None every 5th scene of this run (index 4, 9, ...) goes to
    ``val`` and the rest to ``train`` (80/20, deterministic); otherwise all go to
    that split. Scenes listed by earlier runs in ``OUT/scannetv2_*.txt`` whose
    folders still exist are kept (so several seeds can share one OUT); this run's
    names are moved to where this run puts them.
    """
    write_label_map(out / "scannetv2-labels.combined.tsv", CATEGORY_NYU40)
    if split is None:
        new = {"train": [n for i, n in enumerate(names) if i % 5 != 4],
               "val": [n for i, n in enumerate(names) if i % 5 == 4]}
    else:
        new = {split: list(names)}
    ours = set(names)
    lists: dict[str, list[str]] = {}
    for path in sorted(out.glob("scannetv2_*.txt")):
        key = path.name[len("scannetv2_"):-len(".txt")]
        lists[key] = [n for n in path.read_text().split() if n not in ours and (out / n).is_dir()]
    for key, values in new.items():
        lists[key] = sorted(set(lists.get(key, [])) | set(values))
    for key, values in lists.items():
        (out / f"scannetv2_{key}.txt").write_text("".join(f"{n}\n" for n in values))


def _fmt(v: float) -> str:
    s = f"{float(v):.9g}"
    return "0" if s == "-0" else s


def _dump(path: str | os.PathLike, obj: object, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")
