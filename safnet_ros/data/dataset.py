"""torch Datasets over the output of ``safnet data preprocess``.

:class:`PreprocessedScene` (one scene folder, arrays memory-mapped),
:class:`ImageDataset` (stage ``2d``: frames) and :class:`ChunkDataset` (stage
``3d``: chunks with greedily chosen views, docs/design.md §2.5).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from safnet_ros.data.augment import CameraAugment, camera_augment
from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.data.preprocess import scene_is_complete, unpack_coverage
from safnet_ros.data.scannet import read_split, split_list_path
from safnet_ros.engine.batching import NET_IMAGE_WH, PosedView, build_chunk_sample, collate, normalize_images
from safnet_ros.errors import ConfigError, DataFormatError, MissingDataError
from safnet_ros.geometry.chunks import random_chunk, sample_points
from safnet_ros.geometry.views import greedy_select
from safnet_ros.io_boundary import load_json
from safnet_ros.validation import require_dir

#: MVPNet samples this many base points of a chunk for the greedy view selection.
SELECTION_BASE_POINTS = 2000


def _check_meta(path: Path, meta: dict[str, Any]) -> tuple[str, np.ndarray]:
    """(scene name, K (3, 3)) of a preprocessed scene's meta.json; DataFormatError naming the key otherwise."""
    for key in ("scene", "K", "num_points", "num_frames"):
        if key not in meta:
            raise DataFormatError(path, f"has no {key!r} (not written by `safnet data preprocess`?)")
    if not isinstance(meta["scene"], str) or not meta["scene"]:
        raise DataFormatError(path, f"'scene' must be a scene name, got {meta['scene']!r}")
    for key in ("num_points", "num_frames"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0:
            raise DataFormatError(path, f"{key!r} must be an integer >= 0, got {meta[key]!r}")
    try:
        K = np.asarray(meta["K"], dtype=np.float64)
    except (TypeError, ValueError):
        K = np.zeros(0)
    if K.shape != (3, 3) or not np.isfinite(K).all() or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise DataFormatError(path, f"'K' must be a 3x3 intrinsic matrix with fx, fy > 0, got {meta['K']!r}")
    return meta["scene"], K


class PreprocessedScene:
    """One scene written by :mod:`safnet_ros.data.preprocess` (arrays memory-mapped, read lazily).

    Attributes: ``name``; ``points`` (N, 3) float32 metres; ``colors`` (N, 3) uint8;
    ``labels`` (N,) uint8 class indices; ``color`` (F, H, W, 3) uint8; ``depth``
    (F, H, W) uint16 mm; ``label2d`` (F, H, W) uint8; ``poses`` (F, 4, 4) float32;
    ``K`` (3, 3) float64; ``coverage_index`` (Nb,) int64; ``coverage_bits`` (F, ceil(Nb/8)) uint8.
    """

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise MissingDataError(meta_path, "preprocessed scene (meta.json; run `safnet data preprocess`)")
        self.meta: dict[str, Any] = load_json(meta_path, "preprocessed scene meta.json")
        if not isinstance(self.meta, dict) or not self.meta.get("complete"):
            raise DataFormatError(meta_path, "scene is not complete")
        self.name, self.K = _check_meta(meta_path, self.meta)
        self._arrays: dict[str, np.ndarray] = {}
        # Position of each point in the base set (-1 = not a base point), built on first use.
        self._base_pos: Optional[np.ndarray] = None
        self.check_shapes()

    def check_shapes(self) -> None:
        """DataFormatError naming the file when an array's shape disagrees with meta.json or the
        other arrays (a labels.npy of another length, say): found before any work, not after.
        Only the .npy headers are read (memory-mapped)."""
        n, f = int(self.meta["num_points"]), int(self.meta["num_frames"])
        want = {"points": (n, 3), "colors": (n, 3), "labels": (n,), "poses": (f, 4, 4), "color": (f, None, None, 3),
                "depth": (f, None, None), "label2d": (f, None, None)}
        for name, shape in want.items():
            got = self._load(name).shape
            if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
                expect = "x".join("*" if w is None else str(w) for w in shape)
                raise DataFormatError(self.dir / f"{name}.npy", f"shape {'x'.join(map(str, got))} does not fit "
                                                                 f"meta.json ({expect})")
        if self._load("coverage_bits").shape[0] != f or self._load("coverage_index").ndim != 1:
            raise DataFormatError(self.dir / "coverage_bits.npy", f"does not have one row per frame ({f})")

    def _load(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            path = self.dir / f"{name}.npy"
            if not path.is_file():
                raise MissingDataError(path, "preprocessed array")
            try:
                self._arrays[name] = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError) as exc:
                raise DataFormatError(path, f"not a .npy array: {exc}") from exc
        return self._arrays[name]

    points = property(lambda self: self._load("points"))
    colors = property(lambda self: self._load("colors"))
    labels = property(lambda self: self._load("labels"))
    color = property(lambda self: self._load("color"))
    depth = property(lambda self: self._load("depth"))
    label2d = property(lambda self: self._load("label2d"))
    poses = property(lambda self: self._load("poses"))
    coverage_index = property(lambda self: self._load("coverage_index"))
    coverage_bits = property(lambda self: self._load("coverage_bits"))

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    def view(self, f: int, with_labels: bool = False):
        """Frame ``f`` as a :class:`~safnet_ros.engine.batching.PosedView` (depth in metres)."""
        return PosedView(
            color=np.array(self.color[f]),
            depth=self.depth[f].astype(np.float32) / 1000.0,
            K=self.K.copy(),
            camera_to_world=np.asarray(self.poses[f], np.float64),
            labels=np.asarray(self.label2d[f]).astype(np.int64) if with_labels else None,
        )

    def base_positions(self, point_index: np.ndarray) -> np.ndarray:
        """Columns of the coverage table for the base points among ``point_index`` (others dropped)."""
        if self._base_pos is None:
            pos = np.full(len(self.points), -1, np.int64)
            pos[np.asarray(self.coverage_index)] = np.arange(len(self.coverage_index))
            self._base_pos = pos
        cols = self._base_pos[np.asarray(point_index, np.int64)]
        return cols[cols >= 0]

    def covered_points(self) -> np.ndarray:
        """(n,) int64 indices of the base points that at least one frame covers (cached)."""
        if "_covered" not in self._arrays:
            bits = np.asarray(self.coverage_bits)
            if bits.shape[0] == 0:
                self._arrays["_covered"] = np.zeros(0, np.int64)
            else:
                any_frame = np.unpackbits(np.bitwise_or.reduce(bits, axis=0))[: len(self.coverage_index)]
                self._arrays["_covered"] = np.asarray(self.coverage_index)[any_frame.astype(bool)]
        return self._arrays["_covered"]

    def coverage(self, point_index: np.ndarray) -> np.ndarray:
        """(F, n) bool coverage of the base points among ``point_index``."""
        return unpack_coverage(self.coverage_bits, self.base_positions(point_index))

    def select_views(self, point_index: np.ndarray, k: int, rng: Optional[np.random.Generator] = None,
                     max_base: int = SELECTION_BASE_POINTS) -> list[int]:
        """Up to ``k`` frames for the chunk ``point_index``: greedy by not-yet-covered base points.

        At most ``max_base`` base points are used (a random subset, as MVPNet).
        Fewer than k frames when fewer frames see the chunk at all.
        """
        if self.num_frames == 0 or k <= 0:
            return []
        cols = self.base_positions(point_index)
        if len(cols) > max_base:
            rng = rng or np.random.default_rng(0)
            cols = rng.choice(cols, max_base, replace=False)
        if len(cols) == 0:
            return []
        cov = unpack_coverage(self.coverage_bits, cols)
        return [int(v) for v in greedy_select(cov, k)]


def list_scenes(root: str | os.PathLike, split: Optional[str] = None) -> list[PreprocessedScene]:
    """Complete preprocessed scenes under ``root``, in split-list order when ``split`` is given.

    ``split`` is a name (``train`` -> ``root/scannetv2_train.txt``) or a path. Names
    of the split list that were not preprocessed are a :class:`MissingDataError`
    (a silently smaller training set would be a wrong result).
    """
    base = require_dir(root, "preprocessed data folder")
    available = {p.name: p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                 and scene_is_complete(p)}
    if split:
        names = read_split(split_list_path(base, split))  # a folder or FIFO given as the list is named as such
        missing = [n for n in names if n not in available]
        if missing:
            raise MissingDataError(base / missing[0], f"{len(missing)} scene(s) of split {split!r} not "
                                                      f"preprocessed (first: {missing[0]})")
    else:
        names = sorted(available)
    if not names:
        raise MissingDataError(base, f"any preprocessed scene{' of split ' + split if split else ''}")
    return [PreprocessedScene(available[n]) for n in names]


# --------------------------------------------------------------------------- augmentation
def color_jitter(color: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter of a (H, W, 3) uint8 image by up to ``strength``."""
    if strength <= 0:
        return color
    x = color.astype(np.float32)
    b, c, s = 1.0 + rng.uniform(-strength, strength, size=3)
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


def rigid_augmentation(rng: np.random.Generator, center: np.ndarray, rotate: bool, flip: bool) -> np.ndarray:
    """(4, 4) transform about ``center`` (3,): random rotation about z, random mirror of x."""
    T = np.eye(4)
    if rotate:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        T[:2, :2] = [[c, -s], [s, c]]
    if flip and rng.random() < 0.5:
        T[:3, :3] = T[:3, :3] @ np.diag([-1.0, 1.0, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = -center
    back = np.eye(4)
    back[:3, 3] = center
    return back @ T @ shift


# --------------------------------------------------------------------------- 2D dataset
class ImageDataset:
    """Frames of the scenes for the 2D stage (torch map-style Dataset).

    crop_wh: random crop size (w, h) when training (None = full image);
    flip: random horizontal flip when training; camera: real-camera appearance
    (:mod:`safnet_ros.data.augment`) when training, None = off. Yields torch tensors
    ``(image (3, h, w) float32, labels (h, w) int64)``.
    """

    def __init__(self, scenes: Sequence[PreprocessedScene], train: bool = True,
                 crop_wh: Optional[Sequence[int]] = None, flip: bool = True, color_jitter: float = 0.0,
                 seed: int = 0, camera: Optional[CameraAugment] = None):
        self.scenes = list(scenes)
        self.items = [(s, f) for s, sc in enumerate(self.scenes) for f in range(sc.num_frames)]
        if not self.items:
            raise MissingDataError(self.scenes[0].dir if self.scenes else ".", "any frame for the 2D stage")
        self.train = train
        self.crop_wh = tuple(int(v) for v in crop_wh) if crop_wh else None
        self.flip = flip
        self.jitter = float(color_jitter)
        self.camera = camera
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        s, f = self.items[i]
        scene = self.scenes[s]
        color = np.array(scene.color[f])
        labels = np.asarray(scene.label2d[f]).astype(np.int64)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if self.crop_wh:
                cw, ch = self.crop_wh
                h, w = labels.shape
                if cw > w or ch > h:
                    raise ConfigError(f"crop {self.crop_wh} is larger than the images ({w}, {h})")
                x0 = int(rng.integers(0, w - cw + 1))
                y0 = int(rng.integers(0, h - ch + 1))
                color = color[y0:y0 + ch, x0:x0 + cw]
                labels = labels[y0:y0 + ch, x0:x0 + cw]
            if self.flip and rng.random() < 0.5:
                color = color[:, ::-1]
                labels = labels[:, ::-1]
            color = color_jitter(np.ascontiguousarray(color), rng, self.jitter)
            if self.camera is not None:
                color, _ = camera_augment(color, None, rng, self.camera)
        image = normalize_images(np.ascontiguousarray(color)[None])[0]
        return torch.from_numpy(image), torch.from_numpy(np.ascontiguousarray(labels))


# --------------------------------------------------------------------------- 3D dataset
def draw_chunk(points: np.ndarray, labels: np.ndarray, rng: np.random.Generator, size: float,
               min_points: int, centres: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n,) of a random ``size`` x ``size`` m xy chunk (full height) and its centre (2,).

    The centre is a random *labelled* point (as MVPNet), restricted to ``centres``
    (e.g. points some frame covers) when that leaves any; chunks with fewer than
    ``min_points`` points are redrawn (geometry.chunks.random_chunk); when every
    try fails the restrictions are dropped rather than failing the item.
    """
    labelled = np.flatnonzero(labels != IGNORE_INDEX)
    pool = labelled
    if centres is not None and len(labelled):
        both = np.intersect1d(labelled, centres, assume_unique=True)
        pool = both if len(both) else labelled
    chunk = random_chunk(points, size, rng, min_points=min_points, candidates=pool if len(pool) else None)
    if chunk is None:
        chunk = random_chunk(points, size, rng, min_points=1)
    if chunk is None:
        raise ConfigError("cannot draw a chunk from a scene without points")
    return chunk.index, np.asarray(chunk.center, np.float64)


class ChunkDataset:
    """Random chunks with views for the 3D stage (torch map-style Dataset).

    Each item draws a random chunk of scene ``i % len(scenes)``, centred on a
    labelled point that some frame covers (``centre_on_covered``; so few chunks
    lack views where the recording missed parts of the room); an epoch has
    ``len(scenes) * chunks_per_scene`` items. Randomness is a function of
    (seed, epoch, index) so DDP ranks and dataloader workers never repeat each
    other and a run is reproducible (call :meth:`set_epoch` each epoch).

    ``min_views`` (training only; None = ``num_views``): each chunk draws how many
    views it gets from ``min_views..num_views``, the other slots blank (docs/training.md).
    ``camera`` (training only; None = off): real-camera appearance of each view's
    colour and depth (:mod:`safnet_ros.data.augment`), after the rigid motion.
    """

    def __init__(self, scenes: Sequence[PreprocessedScene], num_points: int = 8192, num_views: int = 3,
                 chunk_size: float = 1.5, chunks_per_scene: int = 8, train: bool = True, rotate: bool = True,
                 flip: bool = True, color_jitter: float = 0.2, min_points: int = 100, seed: int = 0,
                 image_labels: bool = False, centre_on_covered: bool = True, min_views: Optional[int] = None,
                 camera: Optional[CameraAugment] = None):
        if not scenes:
            raise ConfigError("ChunkDataset needs at least one scene")
        if min_views is not None and not 0 <= int(min_views) <= int(num_views):
            raise ConfigError(f"chunks.min_views must be between 0 and chunks.views ({num_views}), got {min_views}")
        if num_points < 1 or num_views < 0 or chunk_size <= 0 or chunks_per_scene < 1:
            raise ConfigError("num_points >= 1, num_views >= 0, chunk_size > 0, chunks_per_scene >= 1 required")
        self.scenes = list(scenes)
        self.num_points = int(num_points)
        self.num_views = int(num_views)
        self.min_views = self.num_views if min_views is None else int(min_views)
        self.chunk_size = float(chunk_size)
        self.chunks_per_scene = int(chunks_per_scene)
        self.train = train
        self.rotate, self.flip, self.jitter = rotate, flip, float(color_jitter)
        self.min_points = int(min_points)
        self.seed = int(seed)
        self.image_labels = image_labels
        self.centre_on_covered = bool(centre_on_covered)
        self.camera = camera
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes) * self.chunks_per_scene

    def __getitem__(self, i: int):
        # Validation draws the same chunks every epoch.
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, int(i)))
        scene = self.scenes[i % len(self.scenes)]
        points = np.asarray(scene.points)
        labels = np.asarray(scene.labels)
        if len(points) == 0:
            raise DataFormatError(scene.dir / "points.npy", "scene has no points")
        centres = scene.covered_points() if (self.centre_on_covered and self.num_views > 0) else None
        idx, center = draw_chunk(points, labels, rng, self.chunk_size, self.min_points, centres)
        chosen = sample_points(idx, self.num_points, rng)
        k = self.num_views
        if self.train and self.min_views < k:  # drawn only when mixed: fixed-view runs keep their random stream
            k = int(rng.integers(self.min_views, k + 1))
        frames = scene.select_views(idx, k, rng)
        views = [scene.view(f, with_labels=self.image_labels) for f in frames]
        pts = points[chosen].astype(np.float64)
        centre3 = np.array([center[0], center[1], 0.0])
        if self.train:
            T = rigid_augmentation(rng, centre3, self.rotate, self.flip)
            pts = pts @ T[:3, :3].T + T[:3, 3]
            for v in views:
                v.camera_to_world = T @ v.camera_to_world
                v.color = color_jitter(v.color, rng, self.jitter)
                if self.camera is not None:
                    v.color, v.depth = camera_augment(v.color, v.depth, rng, self.camera)
        w, h = NET_IMAGE_WH
        real = len(views)
        while len(views) < self.num_views:  # blank views: no valid depth, so no Q points
            views.append(PosedView(color=np.zeros((h, w, 3), np.uint8), depth=np.zeros((h, w), np.float32),
                                   K=scene.K.copy(), camera_to_world=np.eye(4),
                                   labels=np.full((h, w), IGNORE_INDEX, np.int64) if self.image_labels else None))
        sample = build_chunk_sample(pts.astype(np.float32), views, labels[chosen].astype(np.int64),
                                    center_xy=centre3[:2])
        return sample, {"scene": scene.name, "views": real, "frames": frames}


def collate_chunks(items):
    """DataLoader collate for :class:`ChunkDataset`: ``(ChunkBatch, [info, ...])``."""
    samples = [s for s, _ in items]
    return collate(samples), [info for _, info in items]
