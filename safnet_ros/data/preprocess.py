"""``safnet data preprocess ROOT OUT``: ScanNet-format scenes -> compact arrays for training and evaluation.

The files written per scene (``OUT/<scene>/``), their shapes and the rules
(frames kept, 2D labels, coverage table, resumable runs): docs/training.md §1.
A scene is built in a hidden temporary folder and renamed into place when
complete (``meta.json`` with ``complete`` true, written last).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from safnet_ros import output_dir as od
from safnet_ros.data.labels import IGNORE_INDEX, lookup, nyu40_to_class
from safnet_ros.data.scannet import ScanNetScene, find_scenes, read_split, split_list_path
from safnet_ros.engine.batching import prepare_view
from safnet_ros.errors import ConfigError, DataFormatError, SafnetError
from safnet_ros.geometry.transforms import apply_transform
from safnet_ros.geometry.views import coverage_matrix
from safnet_ros.io_boundary import reading
from safnet_ros.validation import MAX_COUNT, int_range, require_dir

#: Version of the on-disk layout written here (stored in meta.json).
FORMAT_VERSION = 1
#: Network image size (width, height), as the paper.
IMAGE_WH: tuple[int, int] = (160, 120)
#: Coverage tolerance: a pixel covers a point when it back-projects within this distance (metres).
COVERAGE_TOL = 0.1
#: Prefix of temporary scene folders (never read as scenes).
TMP_PREFIX = ".tmp-"
SPLIT_FILES = ("scannetv2_train.txt", "scannetv2_val.txt", "scannetv2_test.txt")
LABEL_MAP_FILE = "scannetv2-labels.combined.tsv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="ScanNet root (with scans/) or a folder of scene folders")
    parser.add_argument("out", metavar="OUT", help="output folder (one sub-folder per scene)")
    parser.add_argument("--workers", type=int_range(1, 256), default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--split", default=None,
                        help="only the scenes of this split list (a name such as 'train' -> "
                             "ROOT/scannetv2_train.txt, or a path)")
    parser.add_argument("--scenes", nargs="+", default=None, help="only these scene names (at least one)")
    parser.add_argument("--frame-step", type=int_range(1, MAX_COUNT), default=1,
                        help="keep every k-th frame (ScanNet records 30 Hz; 20 is a common choice)")
    parser.add_argument("--max-frames", type=int_range(0, MAX_COUNT), default=0,
                        help="at most this many frames per scene (0 = all)")
    parser.add_argument("--coverage-points", type=int_range(0, MAX_COUNT), default=100000,
                        help="at most this many base points in the coverage table (random subset beyond)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="seed of the base-point subset")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo scenes that are already complete (only scene folders this command wrote)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


#: Every name a preprocessed scene folder holds (a folder holding anything else is not replaced).
SCENE_FILES = frozenset({"points.npy", "colors.npy", "labels.npy", "color.npy", "depth.npy", "label2d.npy",
                         "poses.npy", "frame_ids.npy", "coverage_bits.npy", "coverage_index.npy", "meta.json"})
#: The options that change what a scene's arrays hold: a complete scene made with others is redone.
SETTING_KEYS = ("frame_step", "max_frames", "coverage_points", "seed")


# --------------------------------------------------------------------------- helpers
def scene_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The settings recorded in meta.json (and compared on a rerun): SETTING_KEYS, the image size, tolerance."""
    out = {k: int(options[k]) for k in SETTING_KEYS}
    out.update(image_wh=list(IMAGE_WH), coverage_tol=COVERAGE_TOL, format_version=FORMAT_VERSION)
    return out


def scene_folder_problem(scene_out: Path) -> Optional[str]:
    """Why ``scene_out`` may not be replaced (None when it is absent or a scene folder this command
    wrote: a real folder holding only SCENE_FILES, with a meta.json of ours)."""
    if scene_out.is_symlink():
        return "is a symbolic link"
    if not scene_out.exists():
        return None
    if not scene_out.is_dir():
        return "is not a folder"
    names = {p.name for p in scene_out.iterdir()}
    if not names:
        return None
    foreign = sorted(names - SCENE_FILES)
    if foreign:
        return f"holds files preprocessing does not write ({', '.join(foreign[:3])})"
    if "meta.json" not in names:  # only our arrays, no meta.json yet: our own half-written scene
        return None
    meta = _read_meta(scene_out)
    if meta is None:
        return "has a meta.json that is not ours (not readable JSON)"
    if not isinstance(meta, dict) or "format_version" not in meta or "scene" not in meta:
        return "has a meta.json preprocessing did not write"
    return None


def _read_meta(scene_out: Path) -> Any:
    """The parsed ``scene_out/meta.json``; None when it is absent, unreadable or not JSON."""
    try:
        return json.loads((scene_out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def settings_change(scene_out: Path, settings: dict[str, Any]) -> Optional[str]:
    """How the settings recorded in ``scene_out/meta.json`` differ from ``settings`` (None: same)."""
    meta = _read_meta(scene_out)
    if meta is None:
        return "no readable meta.json"
    old = meta.get("settings") if isinstance(meta, dict) else None
    if not isinstance(old, dict):
        return "made before settings were recorded"
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    return ", ".join(diff) or None


def scene_is_complete(scene_out: Path) -> bool:
    """True when ``scene_out`` holds a finished scene (meta.json with ``complete`` true)."""
    meta = _read_meta(scene_out)
    return isinstance(meta, dict) and bool(meta.get("complete"))


def read_scannet_id_map(tsv: Path) -> dict[int, int]:
    """ScanNet label id (column ``id``) -> nyu40 id, for the label-filt images. Empty when absent."""
    if not tsv.is_file():
        return {}
    with reading(tsv, "label map"), open(tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        return {}
    header = [h.strip() for h in rows[0]]
    id_col = header.index("id") if "id" in header else 0
    nyu_col = header.index("nyu40id") if "nyu40id" in header else 4
    out: dict[int, int] = {}
    for row in rows[1:]:
        try:
            out[int(row[id_col])] = int(row[nyu_col])
        except (ValueError, IndexError):
            continue
    return out


def _label_filt_source(scene_dir: Path, name: str):
    """A callable frame_id -> (H, W) uint16 ScanNet label ids, or None when the scene has no label images."""
    folder = scene_dir / "label-filt"
    if folder.is_dir():
        def from_folder(i: int):
            p = folder / f"{i}.png"
            return None if not p.is_file() else np.asarray(Image.open(p))
        return from_folder, None
    zpath = scene_dir / f"{name}_2d-label-filt.zip"
    if zpath.is_file():
        zf = zipfile.ZipFile(zpath)
        names = set(zf.namelist())

        def from_zip(i: int):
            member = f"label-filt/{i}.png"
            if member not in names:
                return None
            return np.asarray(Image.open(io.BytesIO(zf.read(member))))
        return from_zip, zf
    return None, None


class MeshLabelRenderer:
    """Label images by ray casting against the labelled mesh (open3d RaycastingScene).

    Each pixel takes the class of the hit triangle's vertex nearest to the hit
    (largest barycentric weight); rays that hit nothing get IGNORE_INDEX.
    """

    def __init__(self, xyz, faces, vertex_classes):
        import open3d as o3d  # noqa: PLC0415 - open3d is optional: only scenes without label images are ray cast

        self.faces = np.asarray(faces, dtype=np.int64)
        self.vertex_classes = np.asarray(vertex_classes, dtype=np.uint8)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(xyz, dtype=np.float32)),
                                 o3d.core.Tensor(np.ascontiguousarray(self.faces, dtype=np.uint32)))
        self.o3d = o3d

    def render(self, K, camera_to_world, wh: tuple[int, int]):
        """(H, W) uint8 class image for pose ``camera_to_world`` (4, 4) and intrinsics K (3, 3) at ``wh``."""
        w, h = wh
        R = np.asarray(camera_to_world, np.float64)[:3, :3]
        if not (np.isfinite(camera_to_world).all() and np.isfinite(K).all() and abs(np.linalg.det(R)) > 1e-6
                and K[0, 0] > 0 and K[1, 1] > 0):  # zero-direction rays would never finish in open3d
            raise DataFormatError(None, "degenerate camera (singular rotation or zero/NaN intrinsics): "
                                        "refusing to ray cast")
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        R, t = camera_to_world[:3, :3], camera_to_world[:3, 3]
        rays = np.empty((h * w, 6), np.float32)
        rays[:, :3] = t
        rays[:, 3:] = d_cam @ R.T
        ans = self.scene.cast_rays(self.o3d.core.Tensor(rays))
        prim = ans["primitive_ids"].numpy().astype(np.int64)
        uvs = ans["primitive_uvs"].numpy()
        hit = prim != self.o3d.t.geometry.RaycastingScene.INVALID_ID
        out = np.full(h * w, IGNORE_INDEX, np.uint8)
        if hit.any():
            tri = self.faces[prim[hit]]  # (n, 3)
            bary = np.stack([1.0 - uvs[hit, 0] - uvs[hit, 1], uvs[hit, 0], uvs[hit, 1]], -1)
            corner = np.argmax(bary, axis=1)
            out[hit] = self.vertex_classes[tri[np.arange(len(tri)), corner]]
        return out.reshape(h, w)


# --------------------------------------------------------------------------- one scene
def preprocess_scene(scene_dir: str, out_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    """Preprocess one scene into ``out_dir/<name>``; returns a result record (never raises).

    The record has ``scene``, ``status`` ("done", "skipped" or "failed"),
    ``reason`` (failed), ``frames``, ``invalid_frames``, ``points`` and ``seconds``.
    """
    start = time.perf_counter()
    scene_dir_p = Path(scene_dir)
    name = scene_dir_p.name
    final = Path(out_dir) / name
    record: dict[str, Any] = {"scene": name, "status": "done"}
    problem = scene_folder_problem(final)
    if problem is not None:  # never replace what preprocessing did not write (a raw scene, a link, notes)
        record["status"] = "failed"
        record["reason"] = f"{final} {problem}: not replaced; move it away or choose another OUT"
        return record
    settings = scene_settings(options)
    if scene_is_complete(final):
        change = settings_change(final, settings)
        if change is None and not options.get("overwrite"):
            record["status"] = "skipped"
            record["reason"] = "already complete"
            return record
        if change is not None:
            record["redone"] = f"settings changed: {change}"
    tmp = Path(out_dir) / f"{TMP_PREFIX}{name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        record.update(_write_scene(scene_dir_p, tmp, settings, options["label_map"]))
        problem = scene_folder_problem(final)  # again, just before: it may have changed meanwhile
        if problem is not None:
            raise SafnetError(f"{final} {problem}: not replaced")
        # the old folder is moved aside first and deleted last: an interrupt leaves one scene, whole
        od.replace_folder(tmp, final, old=final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
    except Exception as exc:  # one bad scene must not end a multi-hour run: report it, go on
        record["status"] = "failed"
        kind = "" if isinstance(exc, SafnetError) else " (unexpected; please report)"
        record["reason"] = f"{type(exc).__name__}{kind}: {exc}"
        shutil.rmtree(tmp, ignore_errors=True)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _write_scene(scene_dir: Path, tmp: Path, settings: dict[str, Any],
                 label_map: Optional[str]) -> dict[str, Any]:
    """Write every array of one scene into ``tmp`` (meta.json last); returns counts for the summary."""
    wh = IMAGE_WH
    w, h = wh
    with ScanNetScene(scene_dir) as scene:
        M = scene.axis_alignment
        xyz, rgb, faces = scene.load_mesh()
        xyz = apply_transform(M, xyz).astype(np.float32)
        has_labels = scene.labels_path.is_file()
        # load_nyu40 refuses labels that do not fit the mesh
        labels = nyu40_to_class(scene.load_nyu40()) if has_labels else np.full(len(xyz), IGNORE_INDEX, np.uint8)
        np.save(tmp / "points.npy", xyz)
        np.save(tmp / "colors.npy", np.asarray(rgb, np.uint8))
        np.save(tmp / "labels.npy", labels)

        # ---- frames
        counts = {"invalid_frames": 0, "unreadable_frames": 0, "empty_depth_frames": 0}
        K_net = np.eye(3)
        label_source = "none"
        frame_ids: list[int] = []
        colors, depths, poses, label_imgs = [], [], [], []
        no_frames_reason = None
        frames_in_source = 0
        source = None
        if not scene.has_frames:
            no_frames_reason = "no RGB-D frames (.sens or exported layout)"
        else:
            try:
                source = scene.frames
            except SafnetError as exc:  # a corrupt .sens: the scene stays usable for 3D-only
                no_frames_reason = f"unreadable frames: {exc}"
        if source is not None:
            frames_in_source = len(source)
            counts["invalid_frames"] = int(source.num_invalid)
            valid = source.valid_indices[:: settings["frame_step"]]
            if settings["max_frames"]:
                valid = valid[: settings["max_frames"]]
            filt, zf = _label_filt_source(scene_dir, scene.name)
            id_map = read_scannet_id_map(Path(label_map)) if filt is not None and label_map else {}
            if filt is not None and id_map:
                label_source = "label-filt"
                lut = np.zeros(max(id_map) + 1, np.int64)  # ScanNet label id -> nyu40 id -> class index
                lut[list(id_map)] = list(id_map.values())
                lut = nyu40_to_class(lut)
            elif has_labels and len(faces):
                label_source = "mesh-raycast"
            renderer = MeshLabelRenderer(xyz, faces, labels) if label_source == "mesh-raycast" else None
            try:
                for i in valid:
                    try:
                        frame = source.get(i)
                    except SafnetError:
                        counts["unreadable_frames"] += 1
                        continue
                    pose = M @ np.asarray(frame.camera_to_world, np.float64)
                    raw_labels = None
                    if label_source == "label-filt":
                        ids = filt(i)
                        if ids is not None:
                            raw_labels = lookup(lut, ids, IGNORE_INDEX)
                    view = prepare_view(frame.color, frame.depth, source.intrinsic_depth, pose, wh=wh,
                                        labels=raw_labels)
                    if not (view.depth > 0).any():
                        counts["empty_depth_frames"] += 1
                    K_net = view.K
                    if renderer is not None:
                        lab = renderer.render(view.K, pose, wh)
                    elif view.labels is not None:
                        lab = view.labels.astype(np.uint8)
                    else:
                        lab = np.full((h, w), IGNORE_INDEX, np.uint8)
                    frame_ids.append(int(i))
                    colors.append(view.color)
                    depths.append(np.clip(np.round(view.depth * 1000.0), 0, 65535).astype(np.uint16))
                    poses.append(pose.astype(np.float32))
                    label_imgs.append(lab)
            finally:
                if zf is not None:
                    zf.close()
            if not frame_ids:
                no_frames_reason = "no frame with a valid pose and readable images"

        F = len(frame_ids)
        depth_a = np.asarray(depths, np.uint16).reshape(F, h, w)
        pose_a = np.asarray(poses, np.float32).reshape(F, 4, 4)
        np.save(tmp / "color.npy", np.asarray(colors, np.uint8).reshape(F, h, w, 3))
        np.save(tmp / "depth.npy", depth_a)
        np.save(tmp / "poses.npy", pose_a)
        np.save(tmp / "label2d.npy", np.asarray(label_imgs, np.uint8).reshape(F, h, w))
        np.save(tmp / "frame_ids.npy", np.asarray(frame_ids, np.int32))
        del colors, depths, label_imgs

        # ---- coverage table
        rng = np.random.default_rng(settings["seed"])
        max_base = settings["coverage_points"]
        if max_base and len(xyz) > max_base:
            base = np.sort(rng.choice(len(xyz), max_base, replace=False)).astype(np.int64)
        else:
            base = np.arange(len(xyz), dtype=np.int64)
        bits = coverage_bits(xyz[base], depth_a, K_net, pose_a)
        np.save(tmp / "coverage_index.npy", base)
        np.save(tmp / "coverage_bits.npy", bits)

        meta = {
            "format_version": FORMAT_VERSION,
            "scene": scene.name,
            "source": str(scene_dir),
            "image_wh": list(wh),
            "K": np.asarray(K_net, np.float64).tolist(),
            "axis_alignment": np.asarray(M, np.float64).tolist(),
            "num_points": int(len(xyz)),
            "num_faces": int(len(faces)),
            "has_labels": bool(has_labels),
            "labelled_points": int((labels != IGNORE_INDEX).sum()),
            "num_frames": F,
            "frames_in_source": int(frames_in_source),
            "label_images": label_source,
            "coverage_points": int(len(base)),
            "coverage_tol": COVERAGE_TOL,
            "no_frames_reason": no_frames_reason,
            "settings": settings,
            **counts,
            "complete": True,
        }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"frames": F, "points": int(len(xyz)), "no_frames_reason": no_frames_reason, **counts}


def coverage_bits(base_xyz, depth_mm, K, poses, tol: float = COVERAGE_TOL, block: int = 16):
    """Packed coverage table: (F, ceil(Nb / 8)) uint8, np.packbits over base points of
    :func:`safnet_ros.geometry.views.coverage_matrix` (a pixel of frame f back-projects
    within ``tol`` metres of base point b). ``base_xyz`` (Nb, 3) metres, ``depth_mm``
    (F, H, W) uint16, K (3, 3), ``poses`` (F, 4, 4) camera-to-world.
    """
    F = len(depth_mm)
    nb = len(base_xyz)
    out = np.zeros((F, (nb + 7) // 8), np.uint8)
    for s in range(0, F, block):
        views = [(depth_mm[f].astype(np.float32) / 1000.0, np.asarray(K, np.float64), np.asarray(poses[f], np.float64))
                 for f in range(s, min(F, s + block))]
        cov = np.asarray(coverage_matrix(base_xyz, views, tol=tol), dtype=bool)
        out[s:s + len(views)] = np.packbits(cov, axis=1)
    return out


def unpack_coverage(bits, columns):
    """(F, len(columns)) bool: the coverage of the base points ``columns`` (indices into the base set)."""
    cols = np.asarray(columns, dtype=np.int64)
    byte = np.asarray(bits)[:, cols >> 3]
    return ((byte >> (7 - (cols & 7)).astype(np.uint8)) & 1).astype(bool)


# --------------------------------------------------------------------------- the command
def select_scenes(root: Path, split: Optional[str], names: Optional[Sequence[str]]) -> tuple[list[Path], list[str]]:
    """Scene folders to process and the names asked for but not found."""
    scenes = find_scenes(root)
    wanted: Optional[list[str]] = None
    if split:
        wanted = read_split(split_list_path(root, split))  # a folder or FIFO given as the list is named as such
    if names:
        wanted = list(names) if wanted is None else [n for n in wanted if n in set(names)]
    if wanted is None:
        return scenes, []
    by_name = {s.name: s for s in scenes}
    return [by_name[n] for n in wanted if n in by_name], [n for n in wanted if n not in by_name]


def preprocess(root: str, out: str, *, workers: int = 1, split: Optional[str] = None,
               scenes: Optional[Sequence[str]] = None, frame_step: int = 1, max_frames: int = 0,
               coverage_points: int = 100000, seed: int = 0, overwrite: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Preprocess the scenes of ``root`` into ``out``; returns the summary dict (also written to
    ``out/preprocess_summary.json``).

    Raises MissingDataError when ``root`` does not exist, ConfigError on bad options (an
    unknown ``--scenes`` name, OUT a regular file), DataFormatError when nothing is left to
    preprocess (an empty root, a split naming only absent scenes), and SafnetError naming
    the first failure when every selected scene failed (the summary is written first).
    """
    if workers < 1 or frame_step < 1 or max_frames < 0 or coverage_points < 0:
        raise ConfigError("--workers and --frame-step must be >= 1, --max-frames and --coverage-points >= 0")
    if scenes is not None and not [n for n in scenes if str(n).strip()]:
        raise ConfigError("--scenes: no scene names given (leave it out to preprocess every scene)")
    if split is not None and not str(split).strip():
        raise ConfigError("--split: empty; give a split name such as train, or a split-list path")
    root_p, out_p = require_dir(root, "ScanNet root folder"), Path(out)
    with od.output_lock(out_p, "preprocessing output folder"):
        # OUT: new, empty, or written by an earlier `safnet data preprocess` (scenes are added or redone);
        # never the raw root, inside it, or holding it (symlinks resolved)
        od.claim(out_p, "data preprocess", overwrite=overwrite, inputs=[root_p], incremental=True,
                 what="preprocessing output folder")
        todo, missing = select_scenes(root_p, split, scenes)
        unknown = [n for n in (scenes or ()) if n not in {s.name for s in todo}]
        if unknown:  # a typo in --scenes must not shrink the run silently
            raise ConfigError(f"--scenes {' '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}: no such scene "
                              f"under {root_p}{f' in split {split!r}' if split else ''}")
        if not todo:
            what = (f"none of the {len(missing)} scene(s) of split {split!r} is here "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})" if split
                    else "no scene folders here (sceneXXXX_YY/, or folders with <name>.sens or <name>_vh_clean_2.ply)")
            raise DataFormatError(root_p, f"nothing to preprocess: {what}")
        od.check_separate(out_p, [s.resolve() for s in todo], "preprocessing output folder")
        out_p.mkdir(parents=True, exist_ok=True)
        if od.read_mark(out_p) is None:
            od.write_mark(out_p, "data preprocess", {"root": str(root_p.resolve())}, files=[])
        for stale in out_p.glob(f"{TMP_PREFIX}*"):  # left by a killed run of ours (we hold OUT's lock)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        base = root_p / "scans" if (root_p / "scans").is_dir() else root_p
        label_map = next((p for p in (root_p / LABEL_MAP_FILE, base / LABEL_MAP_FILE) if p.is_file()), None)
        for name in SPLIT_FILES + (LABEL_MAP_FILE,):
            src = root_p / name
            if src.is_file():
                shutil.copyfile(src, out_p / name)
        options = {"frame_step": frame_step, "max_frames": max_frames, "coverage_points": coverage_points,
                   "seed": seed, "overwrite": overwrite, "label_map": str(label_map) if label_map else None}
        start = time.perf_counter()
        results: list[dict[str, Any]] = []
        args = [(str(s), str(out_p), options) for s in todo]
        bar = tqdm(total=len(args), desc="preprocess", unit="scene", file=sys.stderr, disable=not progress)
        if workers == 1 or len(args) <= 1:
            for a in args:
                results.append(preprocess_scene(*a))
                bar.update(1)
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap_unordered(_star_preprocess, args):
                    results.append(r)
                    bar.update(1)
        bar.close()
        results.sort(key=lambda r: r["scene"])
        summary = {
            "root": str(root_p),
            "out": str(out_p),
            "scenes": len(results),
            "done": sum(r["status"] == "done" for r in results),
            "skipped": sum(r["status"] == "skipped" for r in results),
            "failed": {r["scene"]: r["reason"] for r in results if r["status"] == "failed"},
            "not_found": missing,
            "no_frames": {r["scene"]: r["no_frames_reason"] for r in results if r.get("no_frames_reason")},
            "redone": {r["scene"]: r["redone"] for r in results if r.get("redone")},
            **{k: sum(r.get(k, 0) for r in results)
               for k in ("invalid_frames", "unreadable_frames", "empty_depth_frames", "frames")},
            "seconds": round(time.perf_counter() - start, 2),
            "per_scene": results,
        }
        from safnet_ros.data.class_weights import write_class_weights  # noqa: PLC0415 - cycle: class_weights -> dataset -> here

        try:  # the cross-entropy's class weights (train.class_weights): from the training split
            weights_file = write_class_weights(out_p, "train")
            summary["class_weights"] = str(weights_file) if weights_file else None
        except (OSError, ValueError) as exc:  # e.g. a train-split scene that failed: the trainer recomputes
            summary["class_weights"] = f"not written: {exc}"
        (out_p / "preprocess_summary.json").write_text(json.dumps(summary, indent=1))
        if summary["failed"] and not summary["done"] and not summary["skipped"]:
            name, reason = next(iter(summary["failed"].items()))
            more = f" (and {len(summary['failed']) - 1} more scene(s); see {out_p / 'preprocess_summary.json'})" \
                if len(summary["failed"]) > 1 else ""
            raise SafnetError(f"no scene could be preprocessed: {name}: {reason}{more}")
        return summary


def _star_preprocess(a: tuple) -> dict[str, Any]:
    return preprocess_scene(*a)


def run(args: argparse.Namespace) -> int:
    summary = preprocess(args.root, args.out, workers=args.workers, split=args.split, scenes=args.scenes,
                         frame_step=args.frame_step, max_frames=args.max_frames,
                         coverage_points=args.coverage_points, seed=args.seed, overwrite=args.overwrite,
                         progress=not args.no_progress)
    print(f"scenes: {summary['scenes']}  done: {summary['done']}  skipped (complete): {summary['skipped']}  "
          f"failed: {len(summary['failed'])}  not found: {len(summary['not_found'])}")
    print(f"frames kept: {summary['frames']}  invalid poses skipped: {summary['invalid_frames']}  "
          f"unreadable: {summary['unreadable_frames']}  empty depth: {summary['empty_depth_frames']}")
    for what, key in (("no frames (3D-only)", "no_frames"), ("redone", "redone"), ("failed", "failed")):
        for name, reason in summary[key].items():
            print(f"{what}: {name}: {reason}")
    for name in summary["not_found"]:
        print(f"not found: {name}")
    print(f"summary: {Path(args.out) / 'preprocess_summary.json'}  ({summary['seconds']} s)")
    return 1 if summary["failed"] else 0
