"""ScanNet scene folders: mesh, labels, axis alignment, RGB-D frames, label map, splits.

File names and formats: docs/design.md §2.1-2.3. Frames come from the ``.sens``
file when it exists, else from the exported layout in the scene folder (which
:func:`export_frames` writes); both are a :class:`FrameSource`. Poses are in the
mesh's original (not axis-aligned) frame, as ScanNet stores them.
"""
from __future__ import annotations

import abc
import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from safnet_ros.data.labels import CLASS_NAMES, NYU40_IDS
from safnet_ros.data.ply import read_mesh, read_ply_counts, read_vertex_labels
from safnet_ros.data.sens import (
    COLOR_JPEG,
    COLOR_PNG,
    COLOR_RAW,
    DEPTH_RAW_USHORT,
    DEPTH_ZLIB_USHORT,
    Closeable,
    SensReader,
    valid_pose_mask,
)
from safnet_ros.errors import DataFormatError, MissingDataError
from safnet_ros.geometry.transforms import apply_transform
from safnet_ros.io_boundary import read_text, reading
from safnet_ros.validation import require_dir, require_file

#: Folder names of ScanNet scenes, e.g. ``scene0000_00``.
SCENE_NAME = re.compile(r"^scene\d{4}_\d{2}$")
#: Column names of ``scannetv2-labels.combined.tsv`` in file order.
LABEL_MAP_COLUMNS: tuple[str, ...] = (
    "id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyu40class",
    "mpcat40index", "mpcat40", "wnsynsetid", "wnsynsetkey",
)


@dataclass
class Frame:
    """One decoded RGB-D frame.

    color (Hc, Wc, 3) uint8 RGB; depth (Hd, Wd) float32 metres (0 = no
    measurement); camera_to_world (4, 4) float64 (OpenCV optical frame);
    timestamp_us the colour timestamp in microseconds (0 when unknown).
    """

    index: int
    color: np.ndarray
    depth: np.ndarray
    camera_to_world: np.ndarray
    timestamp_us: int = 0


class FrameSource(Closeable, abc.ABC):
    """RGB-D frames of one scene, decoded one at a time.

    Frame ids (:attr:`indices`) are the ``.sens`` frame numbers (or the file
    numbers of the exported layout); :meth:`get` takes such an id.
    ``color_size`` / ``depth_size`` are (w, h) pixels, intrinsics (3, 3) float64.
    A subclass sets ``_ids`` (every frame id, ascending) and ``_valid`` (the valid ones).
    """

    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    intrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_color: np.ndarray
    extrinsic_depth: np.ndarray
    depth_shift: float
    _ids: Sequence[int]
    _valid: Sequence[int]

    @property
    def indices(self) -> list[int]:
        """Every frame id, ascending."""
        return list(self._ids)

    @property
    def valid_indices(self) -> list[int]:
        """Ids of the frames whose pose is finite (tracking not lost)."""
        return list(self._valid)

    @abc.abstractmethod
    def get(self, i: int) -> Frame:
        """Decode frame ``i``."""

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_invalid(self) -> int:
        """How many frames have a non-finite pose (they are left out of ``valid_indices``)."""
        return len(self.indices) - len(self.valid_indices)

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a source holds files
        """Release open files (no-op by default)."""


#: Largest image side accepted from a scene's header (ScanNet colour is 1296 x 968).
MAX_IMAGE_SIDE = 16384


def check_camera(path: str | os.PathLike, K: np.ndarray, size: tuple[int, int], what: str) -> None:
    """Refuse, naming ``path``, intrinsics that cannot project (fx, fy not finite and > 0, a
    non-finite centre) and an image size outside 1..MAX_IMAGE_SIDE pixels."""
    w, h = (int(v) for v in size)
    if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):
        raise DataFormatError(path, f"{what} image size is {w}x{h}; each side must be 1..{MAX_IMAGE_SIDE} pixels")
    k = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise DataFormatError(path, f"{what} intrinsics are unusable (fx {fx:g}, fy {fy:g}, cx {cx:g}, cy {cy:g}): "
                                    "fx and fy must be finite and > 0, cx and cy finite")


class SensFrames(FrameSource):
    """Frames of a ``.sens`` file (see :class:`~safnet_ros.data.sens.SensReader`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.reader = SensReader(path)
        h = self.reader.header
        self.color_size = h.color_size
        self.depth_size = h.depth_size
        self.intrinsic_color = h.intrinsic_color[:3, :3].astype(np.float64)
        self.intrinsic_depth = h.intrinsic_depth[:3, :3].astype(np.float64)
        self.extrinsic_color = h.extrinsic_color.astype(np.float64)
        self.extrinsic_depth = h.extrinsic_depth.astype(np.float64)
        self.depth_shift = float(h.depth_shift)  # read_header refuses an implausible one
        if h.color_compression not in (COLOR_JPEG, COLOR_PNG, COLOR_RAW):
            raise DataFormatError(self.path, f"colour compression {h.color_compression} is unknown "
                                             "(supported: 0 raw, 1 png, 2 jpeg)")
        if h.depth_compression not in (DEPTH_RAW_USHORT, DEPTH_ZLIB_USHORT):
            raise DataFormatError(self.path, f"depth compression {h.depth_compression} is not supported "
                                             "(supported: 0 raw_ushort, 1 zlib_ushort)")
        check_camera(self.path, self.intrinsic_color, self.color_size, "colour")
        check_camera(self.path, self.intrinsic_depth, self.depth_size, "depth")
        self._ids = range(len(self.reader))
        self._valid = self.reader.valid_indices

    def get(self, i: int) -> Frame:
        f = self.reader.frame(i)
        depth = f.decode_depth().astype(np.float32) / np.float32(self.depth_shift)
        return Frame(index=f.index, color=f.decode_color(), depth=depth,
                     camera_to_world=f.camera_to_world.astype(np.float64), timestamp_us=f.color_timestamp)

    def close(self) -> None:
        self.reader.close()


def _read_matrix(path: Path, what: str = "matrix file", shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Whitespace-separated matrix text file -> float64 array (``-inf`` / ``nan`` allowed)."""
    text = read_text(require_file(path, what), what)  # a folder or FIFO there is named as such
    try:
        values = [float(v) for v in text.split()]
    except ValueError as exc:
        raise DataFormatError(path, f"not a matrix of numbers: {exc}") from exc
    if len(values) != shape[0] * shape[1]:
        raise DataFormatError(path, f"holds {len(values)} numbers, expected {shape[0]}x{shape[1]}")
    return np.array(values, dtype=np.float64).reshape(shape)


def _write_matrix(path: Path, m: np.ndarray) -> None:
    """Write a matrix as text rows, shortest exact float64 digits (``-inf`` kept)."""
    rows = [" ".join(repr(float(v)) for v in row) for row in np.asarray(m, dtype=np.float64)]
    path.write_text("\n".join(rows) + "\n")


def _open_image(path: Path, what: str, read: Callable[[Image.Image], Any]) -> Any:
    """``read(img)`` of the image at ``path``; DataFormatError "unreadable <what>" when PIL cannot read it."""
    try:
        with Image.open(path) as img:
            return read(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataFormatError(path, f"unreadable {what}: {exc}") from exc


def check_depth_png(path: Path) -> None:
    """DataFormatError naming ``path`` unless it is a single-channel 16-bit PNG (ScanNet's exported depth
    is uint16 millimetres; an 8-bit image, e.g. a depth visualisation, would read as 0-255 mm)."""
    mode = _open_image(path, "depth image", lambda img: img.mode)
    if mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DataFormatError(path, f"depth PNG is mode {mode!r} ({'8-bit' if mode in ('L', 'P', '1') else 'not 16-bit'}"
                                    "); depth images must be single-channel 16-bit millimetres (an 8-bit depth "
                                    "image is not millimetres)")


class ExportedFrames(FrameSource):
    """Frames of the exported layout: ``color/{i}.jpg``, ``depth/{i}.png`` (uint16 mm),
    ``pose/{i}.txt`` and ``intrinsic/*.txt`` under ``root``.

    Every id present in ``color/`` needs a pose and a depth file (MissingDataError
    naming the file otherwise). A pose with non-finite entries makes that frame
    invalid (counted in :attr:`num_invalid`). Depth PNGs hold raw values with
    metres = raw / ``depth_shift`` (1000: millimetres).
    """

    def __init__(self, root: str | os.PathLike, depth_shift: float = 1000.0):
        self.root = Path(root)
        color_dir = self.root / "color"
        if not color_dir.is_dir():
            raise MissingDataError(color_dir, "exported colour folder")
        self._stems: dict[int, str] = {}
        for p in color_dir.iterdir():
            if p.suffix == ".jpg" and p.stem.isdigit():
                if int(p.stem) in self._stems:
                    raise DataFormatError(p, f"frame {int(p.stem)} has two colour images "
                                             f"({self._stems[int(p.stem)]}.jpg and {p.name})")
                self._stems[int(p.stem)] = p.stem
        ids = sorted(self._stems)
        if not ids:
            raise DataFormatError(color_dir, "no colour images named {i}.jpg")
        self._ids = ids
        depth_names = set(os.listdir(self.root / "depth")) if (self.root / "depth").is_dir() else set()
        for i in ids:
            if f"{self._stems[i]}.png" not in depth_names:
                raise MissingDataError(self.depth_path(i), f"depth image of frame {i}")
        self._poses = {i: _read_matrix(self.root / "pose" / f"{self._stems[i]}.txt", f"pose of frame {i}")
                       for i in ids}
        ok = valid_pose_mask(np.stack([self._poses[i] for i in ids]))
        self._valid = [i for i, good in zip(ids, ok) if good]
        intr = self.root / "intrinsic"
        self.intrinsic_color = _read_matrix(intr / "intrinsic_color.txt", "colour intrinsics")[:3, :3]
        self.intrinsic_depth = _read_matrix(intr / "intrinsic_depth.txt", "depth intrinsics")[:3, :3]
        ext_c, ext_d = intr / "extrinsic_color.txt", intr / "extrinsic_depth.txt"
        self.extrinsic_color = _read_matrix(ext_c) if ext_c.is_file() else np.eye(4)
        self.extrinsic_depth = _read_matrix(ext_d) if ext_d.is_file() else np.eye(4)
        self.depth_shift = float(depth_shift)
        self.color_size = _open_image(self.color_path(ids[0]), "image", lambda img: img.size)
        self.depth_size = _open_image(self.depth_path(ids[0]), "image", lambda img: img.size)
        check_depth_png(self.depth_path(ids[0]))  # once, at open: the file named, not every frame skipped
        check_camera(intr / "intrinsic_color.txt", self.intrinsic_color, self.color_size, "colour")
        check_camera(intr / "intrinsic_depth.txt", self.intrinsic_depth, self.depth_size, "depth")

    def color_path(self, i: int) -> Path:
        return self.root / "color" / f"{self._stems.get(int(i), str(i))}.jpg"

    def depth_path(self, i: int) -> Path:
        return self.root / "depth" / f"{self._stems.get(int(i), str(i))}.png"

    def get(self, i: int) -> Frame:
        if int(i) not in self._poses:
            raise IndexError(f"{self.root}: no frame {i}")
        cpath, dpath = self.color_path(i), self.depth_path(i)
        color = _open_image(cpath, "colour image", lambda img: np.asarray(img.convert("RGB")))
        raw = _open_image(dpath, "depth image", np.asarray)
        if raw.ndim != 2 or raw.dtype.kind not in "ui" or raw.dtype.itemsize < 2:
            raise DataFormatError(dpath, f"depth must be single-channel 16-bit millimetres, got {raw.dtype} "
                                         f"{raw.shape} (an 8-bit depth PNG is not millimetres: export uint16)")
        for p, pixels, (w, h) in ((cpath, color, self.color_size), (dpath, raw, self.depth_size)):
            if (pixels.shape[1], pixels.shape[0]) != (w, h):
                raise DataFormatError(p, f"image is {pixels.shape[1]}x{pixels.shape[0]}, other frames are {w}x{h}")
        depth = raw.astype(np.float32) / np.float32(self.depth_shift)
        return Frame(index=int(i), color=color, depth=depth, camera_to_world=self._poses[int(i)].copy())


def read_axis_alignment(path: str | os.PathLike) -> np.ndarray:
    """(4, 4) float64 ``axisAlignment`` of a scene ``.txt``; identity when the file or key is absent."""
    path = Path(path)
    if not path.is_file():
        return np.eye(4)
    meta = read_scene_meta(path)
    if "axisAlignment" not in meta:
        return np.eye(4)
    try:
        values = [float(v) for v in meta["axisAlignment"].split()]
    except ValueError as exc:
        raise DataFormatError(path, f"axisAlignment is not 16 numbers: {exc}") from exc
    if len(values) != 16 or not all(math.isfinite(v) for v in values):
        raise DataFormatError(path, f"axisAlignment must be 16 finite numbers, got {len(values)}")
    m = np.array(values, dtype=np.float64).reshape(4, 4)
    # A singular alignment (all zeros, say) maps the whole scene to one point: ray casting
    # against it never ends and poses lose their rotation. ScanNet's are rigid (det 1).
    check_rigid(m, path, "axisAlignment")
    return m


#: Tolerance of :func:`check_rigid` on R^T R - I and det R - 1 (ScanNet's files carry 6-8 digits).
RIGID_TOL = 1e-3


def check_rigid(m: np.ndarray, path: str | os.PathLike, what: str) -> None:
    """DataFormatError naming ``path`` unless the (4, 4) ``m`` is rigid: orthonormal rotation with
    det +1 (no scale, shear or mirror) and last row 0 0 0 1. A scaled or mirrored alignment would
    silently change every distance (voxel sizes, the coverage tolerance) or flip the scene."""
    m = np.asarray(m, np.float64)
    r = m[:3, :3]
    det = float(np.linalg.det(r))
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise DataFormatError(path, f"{what} is not a rigid transform: last row {m[3].tolist()}, expected 0 0 0 1")
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if not (err <= RIGID_TOL and abs(det - 1.0) <= RIGID_TOL):
        kind = "a mirror" if det < 0 and err <= RIGID_TOL else "not orthonormal (scale or shear)"
        raise DataFormatError(path, f"{what} is not a rigid transform: its rotation is {kind} (determinant "
                                    f"{det:g}, |R^T R - I| {err:.3g}); expected a rotation (det +1) and a "
                                    "translation")


def read_scene_meta(path: str | os.PathLike) -> dict[str, str]:
    """``key = value`` lines of a scene ``.txt`` as strings (e.g. axisAlignment, numColorFrames)."""
    meta: dict[str, str] = {}
    text = read_text(path, "scene .txt")
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    return meta


class ScanNetScene(Closeable):
    """One ScanNet scene folder (``sceneXXXX_YY/``); files are read on demand.

    Raises MissingDataError when the folder does not exist; the individual
    loaders raise MissingDataError naming the file they need.
    """

    def __init__(self, scene_dir: str | os.PathLike):
        self.dir = require_dir(scene_dir, "scene folder")
        self.name = self.dir.resolve().name
        n = self.name
        self.sens_path = self.dir / f"{n}.sens"
        self.mesh_path = self.dir / f"{n}_vh_clean_2.ply"
        self.labels_path = self.dir / f"{n}_vh_clean_2.labels.ply"
        self.meta_path = self.dir / f"{n}.txt"
        self.aggregation_path = self.dir / f"{n}.aggregation.json"
        self.segs_path = self.dir / f"{n}_vh_clean_2.0.010000.segs.json"
        self._frames: FrameSource | None = None
        self._axis_alignment: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"ScanNetScene({str(self.dir)!r})"

    @property
    def axis_alignment(self) -> np.ndarray:
        """(4, 4) float64 alignment from the scene ``.txt`` (identity when absent)."""
        if self._axis_alignment is None:
            self._axis_alignment = read_axis_alignment(self.meta_path)
        return self._axis_alignment.copy()

    @property
    def has_axis_alignment(self) -> bool:
        """True when the scene ``.txt`` declares an ``axisAlignment``."""
        return self.meta_path.is_file() and "axisAlignment" in read_scene_meta(self.meta_path)

    @property
    def has_exported_frames(self) -> bool:
        return (self.dir / "color").is_dir()

    @property
    def has_frames(self) -> bool:
        return os.path.lexists(self.sens_path) or self.has_exported_frames

    def load_points(self, aligned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mesh vertices: xyz (N, 3) float32 metres (axis-aligned when ``aligned``), rgb (N, 3) uint8."""
        xyz, rgb, _ = self.load_mesh()
        if aligned:
            xyz = apply_transform(self.axis_alignment, xyz)
        return xyz, rgb

    def load_mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xyz (N, 3) float32, rgb (N, 3) uint8, faces (F, 3) int32 of the scene mesh."""
        require_file(self.mesh_path, "scene mesh (_vh_clean_2.ply)")
        xyz, rgb, faces = read_mesh(self.mesh_path)
        if len(xyz) and not np.isfinite(xyz).all():
            bad = int((~np.isfinite(xyz).all(axis=1)).sum())
            raise DataFormatError(self.mesh_path, f"{bad} of {len(xyz)} vertices are not finite (NaN or inf)")
        return xyz, rgb, faces

    def load_nyu40(self) -> np.ndarray:
        """(N,) uint16 nyu40 id per mesh vertex from the ``.labels.ply``."""
        require_file(self.labels_path, "vertex labels (_vh_clean_2.labels.ply)")
        labels = read_vertex_labels(self.labels_path)
        if self.mesh_path.is_file():  # one label per mesh vertex, or every label lands on the wrong vertex
            n_mesh = read_ply_counts(self.mesh_path).get("vertex")
            if n_mesh is not None and n_mesh != len(labels):
                raise DataFormatError(self.labels_path, f"has {len(labels)} vertex labels, the mesh "
                                                        f"{self.mesh_path.name} has {n_mesh} vertices")
        return labels

    @property
    def frames(self) -> FrameSource:
        """RGB-D frames: the ``.sens`` when present, else the exported layout in the folder."""
        if self._frames is None:
            if os.path.lexists(self.sens_path):  # a folder or FIFO there is named by SensReader
                self._frames = SensFrames(self.sens_path)
            elif self.has_exported_frames:
                self._frames = ExportedFrames(self.dir)
            else:
                raise MissingDataError(self.sens_path, "RGB-D frames (.sens or exported color/ depth/ pose/)")
        return self._frames

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None


def export_frames(scene: ScanNetScene | str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Write every frame of ``scene`` in the exported layout under ``out_dir``; returns the frame count.

    Colour JPEGs from a ``.sens`` are copied byte for byte; depth is written as
    uint16 millimetre PNG; poses (``-inf`` kept, so invalid frames stay invalid)
    and intrinsics/extrinsics as 4x4 text.
    """
    source = (scene if isinstance(scene, ScanNetScene) else ScanNetScene(scene)).frames
    out = Path(out_dir)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, k in (("intrinsic_color", source.intrinsic_color), ("intrinsic_depth", source.intrinsic_depth)):
        m = np.eye(4)
        m[:3, :3] = k
        _write_matrix(out / "intrinsic" / f"{name}.txt", m)
    _write_matrix(out / "intrinsic" / "extrinsic_color.txt", source.extrinsic_color)
    _write_matrix(out / "intrinsic" / "extrinsic_depth.txt", source.extrinsic_depth)
    count = 0
    for i in source.indices:
        if isinstance(source, SensFrames) and source.reader.header.color_compression == COLOR_JPEG:
            f = source.reader.frame(i)
            f.decode_color()  # validate first
            (out / "color" / f"{i}.jpg").write_bytes(f.color_bytes)
            raw = f.decode_depth()
            pose = f.camera_to_world
        else:
            frame = source.get(i)
            Image.fromarray(frame.color).save(out / "color" / f"{i}.jpg", quality=95)
            raw = frame.depth * np.float32(source.depth_shift)
            pose = frame.camera_to_world
        if source.depth_shift != 1000.0:
            raw = np.round(np.asarray(raw, np.float64) * (1000.0 / source.depth_shift))
        mm = np.clip(np.round(raw), 0, 65535).astype(np.uint16)
        Image.fromarray(mm).save(out / "depth" / f"{i}.png")
        _write_matrix(out / "pose" / f"{i}.txt", pose)
        count += 1
    return count


def read_label_map(tsv: str | os.PathLike) -> dict[str, int]:
    """``scannetv2-labels.combined.tsv`` -> {raw_category: nyu40id}.

    Columns are found by header name (``raw_category``, ``nyu40id``), falling
    back to columns 2 and 5 (1-based). Raises DataFormatError naming the file and
    line for a row whose nyu40id is not an integer.
    """
    path = require_file(tsv, "label map (scannetv2-labels.combined.tsv)")
    with reading(path, "label map"), open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise DataFormatError(path, "empty label map")
    header = [h.strip() for h in rows[0]]
    raw_col = header.index("raw_category") if "raw_category" in header else 1
    nyu_col = header.index("nyu40id") if "nyu40id" in header else 4
    mapping: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(raw_col, nyu_col):
            raise DataFormatError(path, f"line {lineno} has {len(row)} columns, needs {max(raw_col, nyu_col) + 1}")
        try:
            nyu = int(row[nyu_col].strip())
        except ValueError:
            raise DataFormatError(path, f"line {lineno}: nyu40id {row[nyu_col]!r} is not an integer") from None
        if not 0 <= nyu <= 40:
            raise DataFormatError(path, f"line {lineno}: nyu40id {nyu} is outside 0..40")
        mapping.setdefault(row[raw_col].strip(), nyu)
    return mapping


def write_label_map(tsv: str | os.PathLike, mapping: Mapping[str, int]) -> None:
    """Write {raw_category: nyu40id} as a ``scannetv2-labels.combined.tsv`` with ScanNet's 11 columns."""
    names = dict(zip(NYU40_IDS, CLASS_NAMES))
    path = Path(tsv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(LABEL_MAP_COLUMNS)
        for k, (raw, nyu) in enumerate(mapping.items(), start=1):
            if "\t" in raw or "\n" in raw:
                raise DataFormatError(path, f"category {raw!r} contains a tab or newline")
            w.writerow([k, raw, raw, 1, int(nyu), "", names.get(int(nyu), ""), "", "", "", ""])


def split_list_path(root: Path, split: str) -> Path:
    """The split list ``split`` names: a path, or a name (``train`` -> ``root/scannetv2_train.txt``)."""
    p = Path(split)
    return p if p.is_file() or os.sep in split or split.endswith(".txt") else root / f"scannetv2_{split}.txt"


def read_split(path: str | os.PathLike) -> list[str]:
    """Scene names of a split list (``scannetv2_train.txt``): one per line, blanks and ``#`` comments ignored."""
    p = require_file(path, "split list")
    names = []
    text = read_text(p, "split list").lstrip("\ufeff")  # a BOM (Windows editors) is not part of the first name
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        odd = [c for c in line if not c.isprintable() or c.isspace() or c in "/\\"]
        if odd:
            raise DataFormatError(p, f"line {number}: scene name {line!r} holds {odd[0]!r}; one plain name a line")
        names.append(line)
    return names


def _is_scene_dir(p: Path) -> bool:
    return p.is_dir() and (SCENE_NAME.match(p.name) is not None
                           or (p / f"{p.name}.sens").is_file()
                           or (p / f"{p.name}_vh_clean_2.ply").is_file())


def find_scenes(root: str | os.PathLike) -> list[Path]:
    """Scene folders under a ScanNet root (``root/scans/*``) or directly under ``root``, sorted by name.

    A folder counts as a scene when it is named ``sceneXXXX_YY`` or holds
    ``<name>.sens`` / ``<name>_vh_clean_2.ply``. ``root`` itself may be a scene.
    """
    base = require_dir(root, "ScanNet root folder")
    if (base / "scans").is_dir():
        base = base / "scans"
    scenes = sorted((p for p in base.iterdir() if _is_scene_dir(p)), key=lambda p: p.name)
    if not scenes and _is_scene_dir(base):
        return [base]
    return scenes
