"""From posed RGB-D views and a chunk of points to the model's :class:`ChunkBatch`.

One code path for the trainer, the evaluator, the ROS node and the demo:

1. :func:`prepare_view` resizes a frame to the network resolution (160 x 120 by
   default): colour bilinear, depth and label images nearest-neighbour, and the
   intrinsics scaled to match (docs/design.md §2.5).
2. :func:`build_chunk_sample` back-projects every valid pixel of the chosen views
   into Q (keeping each point's pixel index into the stacked ``(V*H*W)`` grid),
   keeps the Q points near the chunk, and moves P and Q into chunk-local
   coordinates (xy centred on the chunk centre, z unchanged).
3. :func:`collate` pads Q to the longest sample of the batch and returns torch
   tensors in a :class:`~safnet_ros.model.batch.ChunkBatch`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from safnet_ros.errors import ConfigError
from safnet_ros.geometry.camera import backproject, resize_nearest, scale_intrinsics

#: The network's image size (width, height), as the paper and MVPNet.
NET_IMAGE_WH: tuple[int, int] = (160, 120)

#: ImageNet normalisation, which the ResNet encoder was pretrained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: Q points farther than this outside the chunk's xy box are dropped (metres);
#: they cannot be a neighbour of any chunk point at the radii the model uses.
DEFAULT_Q_MARGIN = 0.3


@dataclass
class PosedView:
    """One RGB-D view at network resolution, registered colour and depth.

    color: (H, W, 3) uint8 RGB; depth: (H, W) float32 metres, 0 = invalid;
    K: (3, 3) intrinsics at this resolution; camera_to_world: (4, 4) pose
    (optical frame: z forward, x right, y down); labels: optional (H, W) class
    indices (IGNORE_INDEX where unknown) for the 2D loss; stamp: seconds;
    camera: the name of the camera that took it ('' = the only one).
    """

    color: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    camera_to_world: np.ndarray
    labels: Optional[np.ndarray] = None
    stamp: float = 0.0
    camera: str = ""

    @property
    def wh(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[0])


def _resize_color(color: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    if (color.shape[1], color.shape[0]) == tuple(wh):
        return np.ascontiguousarray(color)
    return np.asarray(Image.fromarray(color).resize(wh, Image.BILINEAR))


def prepare_view(
    color: np.ndarray,
    depth: np.ndarray,
    K_depth: np.ndarray,
    camera_to_world: np.ndarray,
    wh: tuple[int, int] = NET_IMAGE_WH,
    labels: Optional[np.ndarray] = None,
    stamp: float = 0.0,
) -> PosedView:
    """Resize a registered colour/depth pair to ``wh`` and scale the depth intrinsics.

    color: (Hc, Wc, 3) uint8 RGB; depth: (Hd, Wd) float32 metres; K_depth: (3, 3)
    intrinsics of the depth image; labels (optional) at the colour or depth size.
    Colour and depth may differ in size (ScanNet: 1296x968 and 640x480) because
    they are registered: both cover the same field of view.
    """
    if color.ndim != 3 or color.shape[2] != 3:
        raise ConfigError(f"colour image must be (H, W, 3), got {color.shape}")
    if depth.ndim != 2:
        raise ConfigError(f"depth image must be (H, W), got {depth.shape}")
    depth_wh = (depth.shape[1], depth.shape[0])
    return PosedView(
        color=_resize_color(np.asarray(color, dtype=np.uint8), wh),
        depth=resize_nearest(np.asarray(depth, dtype=np.float32), wh),
        K=scale_intrinsics(np.asarray(K_depth, dtype=np.float64)[:3, :3], depth_wh, wh),
        camera_to_world=np.asarray(camera_to_world, dtype=np.float64),
        labels=None if labels is None else resize_nearest(np.asarray(labels), wh).astype(np.int64),
        stamp=stamp,
    )


def normalize_images(colors: np.ndarray) -> np.ndarray:
    """(V, H, W, 3) uint8 RGB -> (V, 3, H, W) float32, ImageNet mean/std."""
    x = colors.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class ChunkSample:
    """One chunk ready for collation (numpy, chunk-local metres).

    points (N, 3); labels (N,) int64 or None; images (V, 3, H, W) float32
    normalised; q_points (M, 3); q_pixel (M,) int64 into the (V*H*W) grid;
    image_labels (V, H, W) int64 or None; shift (3,) world = local + shift.
    """

    points: np.ndarray
    images: np.ndarray
    q_points: np.ndarray
    q_pixel: np.ndarray
    shift: np.ndarray
    labels: Optional[np.ndarray] = None
    image_labels: Optional[np.ndarray] = None


def backproject_views(views: Sequence[PosedView], max_depth: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Back-project every valid pixel of ``views`` into world points.

    Returns (points (M, 3) float32 world metres, pixel (M,) int64 index into the
    stacked (V*H*W) grid of the views, all views at one size).
    """
    pts, pix = [], []
    offset = 0
    for view in views:
        p, idx = backproject(view.depth, view.K, view.camera_to_world, max_depth=max_depth)
        pts.append(p.astype(np.float32, copy=False))
        pix.append(idx.astype(np.int64, copy=False) + offset)
        offset += view.depth.size
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(pts), np.concatenate(pix)


def view_key(view: PosedView) -> str:
    """A stable key of a view's content (colour, depth, intrinsics, pose): equal views
    share it, and it does not change while the view does not (unlike ``id()``, which
    Python reuses for a new object once the old one is freed). Caches of per-view
    work (2D features, back-projection) are keyed by it."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (view.color, view.depth, view.K, view.camera_to_world):
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def chunk_box(points: np.ndarray, q_margin: float = DEFAULT_Q_MARGIN) -> Optional[np.ndarray]:
    """``(2, 3)`` float32: the low and high corners of the bounding box of the finite chunk
    points ``(N, 3)`` grown by ``q_margin`` metres (None when no point is finite)."""
    finite = np.isfinite(points)
    if not finite.all():
        points = points[finite.all(axis=1)]
        if len(points) == 0:
            return None
    return np.stack([points.min(axis=0) - q_margin, points.max(axis=0) + q_margin])


def in_box(q_rows: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """(M,) bool: the Q points inside ``box`` (:func:`chunk_box`; None: none is).

    ``q_rows (3, M)``: the points as three contiguous coordinate rows, which is
    far faster than a test on ``(M, 3)`` rows (docs/benchmarks.md).
    """
    if box is None:
        return np.zeros(q_rows.shape[1], bool)
    (x0, y0, z0), (x1, y1, z1) = box
    x, y, z = q_rows
    inside = x >= x0
    inside &= x <= x1
    inside &= y >= y0
    inside &= y <= y1
    inside &= z >= z0
    inside &= z <= z1
    return inside


def build_chunk_sample(
    points: np.ndarray,
    views: Sequence[PosedView],
    labels: Optional[np.ndarray] = None,
    center_xy: Optional[np.ndarray] = None,
    q_margin: float = DEFAULT_Q_MARGIN,
    image_wh: tuple[int, int] = NET_IMAGE_WH,
) -> ChunkSample:
    """Assemble one chunk: P, the views' back-projection Q, and the images.

    points: (N, 3) world metres; views: zero or more :class:`PosedView` at
    ``image_wh``; labels: (N,) class indices or None; center_xy: the chunk centre
    (default: the xy centre of the points' bounding box). With no views the
    sample has zero images and an empty Q (the model then runs 3D-only).
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ConfigError(f"points must be (N, 3), got {points.shape}")
    w, h = image_wh
    for view in views:
        if view.wh != (w, h):
            raise ConfigError(f"view of size {view.wh} in a batch of {image_wh} images")
    finite = np.isfinite(points).all(axis=1)
    if center_xy is None:
        if finite.any():
            lo, hi = points[finite, :2].min(axis=0), points[finite, :2].max(axis=0)
            center_xy = (lo + hi) / 2.0
        else:
            center_xy = np.zeros(2, np.float32)
    shift = np.array([center_xy[0], center_xy[1], 0.0], dtype=np.float32)

    q_points, q_pixel = backproject_views(views)
    near = in_box(np.ascontiguousarray(q_points.T), chunk_box(points, q_margin))  # the possible neighbours
    q_points, q_pixel = q_points[near], q_pixel[near]

    if views:
        images = normalize_images(np.stack([v.color for v in views]))
    else:
        images = np.zeros((0, 3, h, w), np.float32)
    labelled = bool(views) and all(v.labels is not None for v in views)
    image_labels = np.stack([v.labels for v in views]).astype(np.int64) if labelled else None

    return ChunkSample(
        points=points - shift,
        images=images,
        q_points=(q_points - shift).astype(np.float32),
        q_pixel=q_pixel,
        shift=shift,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        image_labels=image_labels,
    )


def pad_q(q_points: Sequence[np.ndarray], q_pixel: Sequence[np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Q points (M_i, 3) and pixels (M_i,) of B chunks padded to the largest M (1 at least):
    (B, M, 3) float32, (B, M) int64 and the (B, M) bool ``q_mask``, False on the padding. Padding
    coordinates are far away (1e4 m) so they can never be a neighbour even without the mask."""
    m = max(1, max(len(q) for q in q_points))
    points = np.full((len(q_points), m, 3), 1e4, dtype=np.float32)
    pixel = np.zeros((len(q_points), m), dtype=np.int64)
    mask = np.zeros((len(q_points), m), dtype=bool)
    for i, (q, pix) in enumerate(zip(q_points, q_pixel)):
        points[i, :len(q)], pixel[i, :len(q)], mask[i, :len(q)] = q, pix, True
    return points, pixel, mask


def collate(samples: Sequence[ChunkSample], device: str = "cpu"):
    """Stack samples into a :class:`~safnet_ros.model.batch.ChunkBatch`, Q padded by :func:`pad_q`.

    All samples must have the same number of points N and of views V (the
    trainer samples a fixed N per chunk; the node batches one cloud at a time).
    """
    import torch  # noqa: PLC0415 - torch only for collation: preprocess's spawned workers import this module without it

    from safnet_ros.model.batch import ChunkBatch  # noqa: PLC0415 - imports torch (see above)

    if not samples:
        raise ConfigError("collate needs at least one sample")
    n = {s.points.shape[0] for s in samples}
    v = {s.images.shape[0] for s in samples}
    if len(n) != 1 or len(v) != 1:
        raise ConfigError(f"samples differ in points {sorted(n)} or views {sorted(v)}")
    q_points, q_pixel, q_mask = pad_q([s.q_points for s in samples], [s.q_pixel for s in samples])

    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)

    def stacked(name: str):  # None unless every sample has the array
        arrays = [getattr(s, name) for s in samples]
        return None if any(a is None for a in arrays) else t(np.stack(arrays))

    return ChunkBatch(
        points=stacked("points"),
        images=stacked("images"),
        q_points=t(q_points),
        q_mask=t(q_mask),
        q_pixel=t(q_pixel),
        labels=stacked("labels"),
        image_labels=stacked("image_labels"),
    )

