"""Whole-cloud inference: crop, downsample, chunk, pick views, run SAFNet, vote.

:class:`Segmenter` is the one inference path shared by the ROS node, offline bag
segmentation, the evaluator and the demo:

1. non-finite points are set aside (label IGNORE_INDEX, confidence 0);
2. beyond ``max_points`` the cloud is voxel-downsampled (voxel grown until it
   fits) and predictions are copied back to every point of a voxel;
3. the cloud is cropped to what the views cover plus ``crop_margin``. Points
   outside are, with ``outside_views="3d"`` (default), chunked on their own and
   labelled by the 3D branch alone (S = 0, ``SegmentResult.outside_views``);
   such a chunk under ``min_3d_chunk_points`` (default ``pn_npoints[0]``:
   below it PointNet++ takes every point as a centroid, and a small chunk costs
   as much as a full one) is merged into its nearest full one
   (:func:`~safnet_ros.geometry.chunks.chunk_grid`). With ``"ignore"`` they are
   not segmented. When no view covers any point the whole cloud is 3D-only;
4. the kept points are cut into ``chunk_size`` squares in xy at ``chunk_stride``
   (docs/design.md §2.5); each chunk gets up to ``num_views`` views chosen
   greedily by coverage, and chunks of more than ``max_chunk_points`` are split
   into random disjoint parts;
5. the parts go through the model in padded, masked batches of at most
   ``batch_points`` points (a part gets what it gets alone), each view
   back-projected and encoded once per cloud and cached by :func:`view_key`. A
   batch that runs out of memory is split in two; a single part is split and
   ``max_chunk_points`` halved for the rest of the run (down to
   ``min_oom_chunk_points``, below which a SafnetError is raised);
6. per-point class probabilities and the similarities S, S_geo, S_con are
   averaged over overlapping chunks (the vote) and copied back to every input point.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from safnet_ros.data.labels import IGNORE_INDEX, NUM_CLASSES
from safnet_ros.engine.batching import (
    NET_IMAGE_WH,
    PosedView,
    backproject_views,
    chunk_box,
    in_box,
    normalize_images,
    pad_q,
    prepare_view,
    view_key,
)
from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
from safnet_ros.errors import ConfigError, ModelLoadError, SafnetError
from safnet_ros.geometry.camera import backproject
from safnet_ros.geometry.chunks import VoteAccumulator, chunk_grid
from safnet_ros.geometry.views import coverage_matrix, greedy_select
from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.safnet import build_model, load_checkpoint

LOG = logging.getLogger("safnet_ros.inference")

#: Where the shipped default model lives in a source checkout or an installed share/.
DEFAULT_MODEL_NAME = "safnet_lite_synth.pt"


def default_model_path() -> Optional[Path]:
    """The shipped default model file, or None when none is installed.

    Looks in the source checkout's ``models/`` and in the colcon install's
    ``share/safnet_ros/models``.
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "models" / DEFAULT_MODEL_NAME]
    try:  # a colcon / ament install
        from ament_index_python.packages import get_package_share_directory  # type: ignore  # noqa: PLC0415 - optional: only in a ROS install

        candidates.append(Path(get_package_share_directory("safnet_ros")) / "models" / DEFAULT_MODEL_NAME)
    except Exception:  # noqa: BLE001 - ament_index is optional
        pass
    return next((path for path in candidates if path.is_file()), None)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU (logged once); 'cuda' without CUDA -> CPU with a warning."""
    if device in ("auto", "", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        LOG.info("no CUDA device: running SAFNet on the CPU")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        LOG.warning("device '%s' requested but CUDA is not available: using the CPU", device)
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{device}': {exc}") from None


@dataclass
class SegmentResult:
    """Per-point output of :meth:`Segmenter.segment` for an input of N points.

    labels (N,) int64 class indices (IGNORE_INDEX where not segmented);
    confidence (N,) float32 mean probability of the winning class (0 where not
    segmented); chunks_without_views counts chunks that ran 3D-only;
    s, s_geo, s_con (N,) float32 similarities averaged over chunks
    (NaN where not segmented); segmented (N,) bool; views_used: indices into
    the ``views`` argument; timings in seconds.
    """

    labels: np.ndarray
    confidence: np.ndarray
    s: np.ndarray
    s_geo: np.ndarray
    s_con: np.ndarray
    segmented: np.ndarray
    views_used: list[int] = field(default_factory=list)
    num_chunks: int = 0
    chunks_without_views: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: chunk parts re-run in smaller pieces after running out of memory
    oom_retries: int = 0
    #: (N, C) float32 class probabilities averaged over the chunks that voted (zeros where not
    #: segmented): what the semantic map fuses and ~/labeled_cloud's optional probability fields carry
    probs: Optional[np.ndarray] = None
    #: (N,) float32 metres from each point to the nearest back-projected pixel of the views its
    #: chunks used (the minimum over those chunks): how near 2D evidence came. inf where no chunk
    #: of the point had a view (or the model has no 2D branch), NaN where not segmented
    view_distance: Optional[np.ndarray] = None
    #: (N, K) int32 indices into ``views`` of the views the chunks of each point used, -1 padded
    #: (only with ``segment(..., record_views=True)``; K = views per chunk x chunks per point at most)
    point_views: Optional[np.ndarray] = None
    #: (N,) bool: labelled by the 3D branch alone because no view came near (beyond the views plus
    #: ``crop_margin``, ``outside_views="3d"``); S is 0 there
    outside_views: Optional[np.ndarray] = None


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and RuntimeErrors that report running out of memory."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def voxel_downsample(points: np.ndarray, voxel: float, max_points: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One representative per voxel, the voxel grown (x1.5) until at most ``max_points``.

    points: (N, 3) metres. Returns (keep (K,) indices of representatives,
    inverse (N,) index of each point's representative within ``keep``, the
    voxel size used).
    """
    voxel = max(float(voxel), 1e-3)
    while True:
        keys = np.floor(points / voxel).astype(np.int64)
        _, keep, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        if len(keep) <= max_points:
            return keep, inverse.reshape(-1), voxel
        voxel *= 1.5


PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
OUTSIDE_VIEWS: tuple[str, ...] = ("ignore", "3d")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` resolved for ``device``: ``fp32``, ``bf16`` or ``fp16``; ConfigError if it cannot run there.

    ``auto`` is bf16 on a CUDA device that has it and fp32 elsewhere (on a CPU, bf16
    made the node's stream slower: docs/ros_node.md). ``fp16`` autocast is for CUDA only.
    """
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if value == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs a CUDA device (this one is {device.type}): use bf16 or fp32")
    if value == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return value


def autocast_context(precision: str, device: torch.device):
    """``torch.autocast`` at a resolved ``precision`` (bf16 | fp16) on ``device``; a no-op at fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


@dataclass
class _Part:
    """One forward's worth of a chunk: ``index`` (n,) into the working points, the
    chunk's chosen views (indices into the call's views) and its xy centre (metres)."""

    index: np.ndarray
    views: tuple[int, ...]
    center: np.ndarray


@dataclass
class _Accumulator:
    """Per working point: class-probability votes, similarity sums, vote counts, the
    nearest view distance and (optionally) the views its chunks used."""

    votes: VoteAccumulator
    sim_sum: np.ndarray  # (3, n) float64: s, s_geo, s_con
    sim_cnt: np.ndarray  # (n,) int64
    nearest_view: np.ndarray  # (n,) float32 metres
    views: Optional[np.ndarray] = None  # (n, K) int32, -1 padded
    view_count: Optional[np.ndarray] = None  # (n,) int64

    def add(self, pidx: np.ndarray, probs: np.ndarray, sims: np.ndarray, view_dist: np.ndarray) -> None:
        """One forward's outputs for the points ``pidx``: probs (n, C), sims (3, n), view_dist (n,)."""
        self.votes.add(pidx, probs, kind="probs")  # softmax outputs: no need to test the rows
        self.sim_sum[:, pidx] += sims
        self.sim_cnt[pidx] += 1
        self.nearest_view[pidx] = np.minimum(self.nearest_view[pidx], view_dist)


class Segmenter:
    """Runs a SAFNet model over whole clouds with posed views (the steps: module docstring).

    ``precision``: :func:`check_precision` (``self.precision`` holds the resolved
    value). ``outside_views``: ``3d`` or ``ignore`` (module docstring, step 3).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config,
        device: str | torch.device = "cpu",
        num_views: int = 3,
        chunk_size: float = 1.5,
        chunk_stride: float = 0.5,
        max_points: Optional[int] = None,
        voxel_size: float = 0.02,
        crop_margin: float = 0.3,
        max_chunk_points: int = 30000,
        min_chunk_points: int = 32,
        min_3d_chunk_points: Optional[int] = None,
        min_oom_chunk_points: int = 512,
        seed: int = 0,
        batch_points: int = 60000,
        precision: str = "fp32",
        outside_views: str = "3d",
    ):
        if num_views < 0:
            raise ConfigError(f"num_views must be >= 0, got {num_views}")
        if chunk_size <= 0 or chunk_stride <= 0:
            raise ConfigError("chunk_size and chunk_stride must be positive")
        if str(outside_views) not in OUTSIDE_VIEWS:
            raise ConfigError(f"outside_views must be one of {', '.join(OUTSIDE_VIEWS)}, got {outside_views!r}")
        if int(batch_points) < 1:
            raise ConfigError(f"batch_points must be >= 1, got {batch_points}")
        tune_cpu_allocator()  # a forward's large temporaries are reused, not page-faulted in again
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.num_views = int(num_views)
        self.chunk_size = float(chunk_size)
        self.chunk_stride = float(chunk_stride)
        self.max_points = max_points
        self.voxel_size = float(voxel_size)
        self.crop_margin = float(crop_margin)
        self.max_chunk_points = int(max_chunk_points)
        self.min_chunk_points = int(min_chunk_points)
        if min_3d_chunk_points is None:  # the first SA level's centroids (models without PointNet++: no merging)
            npoints = getattr(config, "pn_npoints", None) or (0,)
            min_3d_chunk_points = int(npoints[0])
        self.min_3d_chunk_points = max(self.min_chunk_points, int(min_3d_chunk_points))
        self.min_oom_chunk_points = max(1, int(min_oom_chunk_points))
        self.seed = int(seed)
        self.batch_points = int(batch_points)
        self.outside_views = str(outside_views)
        self.untrained = False
        # Per view (by view_key): its 2D features (the 2D net is frozen at inference) and
        # back-projection, so a view used by several chunks, or kept in the node's buffer
        # across clouds, is encoded and back-projected once.
        self.feature_cache_size = 64
        self._features: OrderedDict[str, tuple] = OrderedDict()
        self._backprojected: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        path: Optional[str | Path] = None,
        device: str = "auto",
        preset: Optional[str] = None,
        **kwargs,
    ) -> "Segmenter":
        """Load a checkpoint (None: the shipped default model).

        When no path is given and no model is shipped, an untrained ``lite``
        model is built and a loud warning logged: its labels are meaningless.
        A missing or corrupt file, or one saved for another preset than
        ``preset``, raises :class:`ModelLoadError` naming the file.
        """
        dev = resolve_device(device)
        if path in (None, ""):
            path = default_model_path()
            if path is None:
                LOG.warning(
                    "NO TRAINED MODEL: no model given and none shipped in models/%s; "
                    "using an UNTRAINED '%s' SAFNet — its labels are meaningless",
                    DEFAULT_MODEL_NAME, preset or "lite",
                )
                torch.manual_seed(0)
                config = SafnetConfig.preset(preset or "lite")
                seg = cls(build_model(config), config, dev, **kwargs)
                seg.untrained = True
                return seg
        path = Path(path)
        if not path.exists():  # a folder or FIFO there is named by load_checkpoint
            raise ModelLoadError(f"{path}: model file not found")
        model, config, _extra = load_checkpoint(path, map_location=dev, expected_preset=preset)
        return cls(model, config, dev, **kwargs)

    # ---------------------------------------------------------------- per-view caches
    def _evict(self) -> None:
        """Least recently used views out, down to ``feature_cache_size`` (after a call
        has collected every view it needs, so a call never loses its own views)."""
        for cache in (self._features, self._backprojected):
            while len(cache) > self.feature_cache_size:
                cache.popitem(last=False)

    def _encoded(self, views: Sequence[PosedView], keys: Sequence[str]
                 ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The views' cached 2D features (1, V*H*W, C) and logits (1, V, K, H, W), encoding the
        missing ones in one 2D forward; (None, None) for a model without a 2D branch."""
        if not hasattr(self.model, "encode_views"):
            return None, None
        missing = {k: v for k, v in zip(keys, views) if k not in self._features}
        if missing:
            images = torch.from_numpy(normalize_images(np.stack([v.color for v in missing.values()])))
            with torch.no_grad(), autocast_context(self.precision, self.device):
                feats, logits = self.model.encode_views(images.to(self.device))
            if feats is None:
                return None, None
            for i, key in enumerate(missing):
                self._features[key] = (feats[i], logits[i])
        for key in keys:
            self._features.move_to_end(key)
        cached = [self._features[k] for k in keys]
        features = torch.cat([f for f, _ in cached]).unsqueeze(0)
        return features, torch.stack([lg for _, lg in cached]).unsqueeze(0)

    def _backprojection(self, view: PosedView, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The view's back-projected pixels: (points (M, 3) float32 world, pixel (M,) int64, the
        points again as coordinate rows (3, M) for :func:`in_box`)."""
        found = self._backprojected.get(key)
        if found is None:
            q, pixel = backproject_views([view])
            found = self._backprojected[key] = (q, pixel, np.ascontiguousarray(q.T))
        self._backprojected.move_to_end(key)
        return found

    def prepare_views(self, views: Sequence[PosedView]) -> int:
        """Encode and back-project those of ``views`` not cached yet (one 2D forward), so that a cloud
        using them later finds their 2D features and pixels ready; returns how many it prepared.

        The node calls it for newly kept keyframes while no cloud waits: per-view work then runs
        between clouds instead of inside the next cloud's latency. Its outputs are the ones
        :meth:`segment` would compute, so labels do not change.
        """
        if self.num_views <= 0 or not views:
            return 0
        keys = [view_key(v) for v in views]
        todo = [(k, v) for k, v in zip(keys, views) if k not in self._features or k not in self._backprojected]
        if not todo:
            return 0
        self._encoded([v for _, v in todo], [k for k, _ in todo])
        for key, view in todo:
            self._backprojection(view, key)
        self._evict()
        return len(todo)

    def clear_cache(self) -> None:
        """Forget cached 2D features and back-projections (e.g. after the model changed)."""
        self._features.clear()
        self._backprojected.clear()

    def warm_up(self, points: int = 2000) -> float:
        """Segment ``points`` points on a wall 2 m in front of one view once; returns the seconds it took.

        The first forward of a process pays one-time costs (oneDNN kernel choice,
        lazy imports, the CUDA context) of several normal forwards: paid here, they
        stay out of the first real cloud's latency (which, in the node, would also
        starve the executor and lose sensor frames).
        """
        t0 = time.perf_counter()
        w, h = NET_IMAGE_WH
        K = np.array([[100.0, 0.0, w / 2.0], [0.0, 100.0, h / 2.0], [0.0, 0.0, 1.0]])
        rng = np.random.default_rng(0)
        color = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = np.full((h, w), 2.0, np.float32)
        view = prepare_view(color, depth, K, np.eye(4), stamp=0.0)
        wall, _ = backproject(depth, K, np.eye(4))  # (h * w, 3): the wall the view sees
        pick = rng.choice(len(wall), min(max(1, int(points)), len(wall)), replace=False)
        self.segment(wall[pick].astype(np.float32), [view] if self.num_views > 0 else [])
        key = view_key(view)
        self._features.pop(key, None)
        self._backprojected.pop(key, None)
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- forwards
    def _outputs(self, out, b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``b``'s first ``n`` rows of a model output: probs (n, C), sims (3, n), view distance (n,)."""
        probs = torch.softmax(out.logits[b, :n].float(), dim=-1).cpu().numpy()
        sims = torch.stack([out.s[b, :n], out.s_geo[b, :n], out.s_con[b, :n]]).float().cpu().numpy()
        view_dist = (np.full(n, np.inf, np.float32) if out.nearest_q_dist is None
                     else out.nearest_q_dist[b, :n].float().cpu().numpy())
        return probs, sims, view_dist

    @torch.no_grad()
    def _run_batch(self, work: np.ndarray, views: Sequence[PosedView], keys: Sequence[str],
                   parts: Sequence[_Part]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Forward several chunk parts as one padded batch: per part, probs (n, C), sims (3, n) (s, s_geo,
        s_con) and view_distance (n,) numpy.

        P is padded with non-finite rows (the model masks them out); Q is each
        part's chosen views' back-projection near the part (as
        :func:`build_chunk_sample` selects it, in the same order), padded with
        ``q_mask`` False; the 2D features of the batch's views form one table
        shared by all parts (``ChunkBatch.pixel_features`` of batch 1).
        """
        used = sorted({v for part in parts for v in part.views})
        slot = {v: i for i, v in enumerate(used)}
        w, h = NET_IMAGE_WH if not used else views[used[0]].wh
        for v in used:
            if views[v].wh != (w, h):
                raise ConfigError(f"view of size {views[v].wh} in a batch of {(w, h)} images")
        pixels = w * h
        features, logits = (self._encoded([views[v] for v in used], [keys[v] for v in used]) if used
                            else (None, None))
        n_max = max(len(p.index) for p in parts)
        b = len(parts)
        p_np = np.full((b, n_max, 3), np.nan, np.float32)
        q_list, pix_list = [], []
        for i, part in enumerate(parts):
            pts = work[part.index]
            shift = np.array([part.center[0], part.center[1], 0.0], dtype=np.float32)
            p_np[i, :len(pts)] = pts - shift
            qs, pix = [], []
            box = chunk_box(pts)
            for v in part.views:  # each view's Q near the part, in view order (build_chunk_sample's order)
                q, local, q_rows = self._backprojection(views[v], keys[v])
                near = in_box(q_rows, box)
                qs.append(q[near])
                pix.append(local[near] + slot[v] * pixels)
            if qs:
                q_list.append((np.concatenate(qs) - shift).astype(np.float32))
                pix_list.append(np.concatenate(pix))
            else:
                q_list.append(np.zeros((0, 3), np.float32))
                pix_list.append(np.zeros(0, np.int64))
        q_np, pix_np, mask_np = pad_q(q_list, pix_list)
        dev = self.device
        batch = ChunkBatch(
            points=torch.from_numpy(p_np).to(dev),
            images=torch.zeros(b, 0, 3, h, w, device=dev),
            q_points=torch.from_numpy(q_np).to(dev),
            q_mask=torch.from_numpy(mask_np).to(dev),
            q_pixel=torch.from_numpy(pix_np).to(dev),
            pixel_features=features,
            pixel_logits=logits,
        )
        with autocast_context(self.precision, self.device):
            out = self.model(batch)
        return [self._outputs(out, i, len(part.index)) for i, part in enumerate(parts)]

    def _split_after_oom(self, pidx: np.ndarray, rng: np.random.Generator, result: SegmentResult,
                         exc: BaseException) -> list[np.ndarray]:
        """Halve ``max_chunk_points`` after an out-of-memory forward of ``pidx``; returns its smaller parts.

        Raises SafnetError when the part is already at ``min_oom_chunk_points``.
        """
        smaller = len(pidx) // 2
        if smaller < self.min_oom_chunk_points:
            raise SafnetError(
                f"out of memory on {self.device} even for a chunk of {len(pidx)} points "
                f"(floor min_oom_chunk_points={self.min_oom_chunk_points}): {exc}"
            ) from exc
        self.max_chunk_points = min(self.max_chunk_points, smaller)
        result.oom_retries += 1
        message = (f"out of memory on {self.device} for a chunk of {len(pidx)} points: retrying in parts of "
                   f"<= {self.max_chunk_points} (max_chunk_points lowered for the following clouds)")
        LOG.warning(message)
        result.warnings.append(message)
        pieces = int(np.ceil(len(pidx) / self.max_chunk_points))
        shuffled = pidx[rng.permutation(len(pidx))]
        return list(np.array_split(shuffled, pieces))

    # ---------------------------------------------------------------- the steps of segment()
    def _downsample(self, points: np.ndarray, finite: np.ndarray, result: SegmentResult
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Step 2: (work_index (K,) into ``points``, inverse (len(finite),) into work_index)."""
        if self.max_points is None or len(finite) <= self.max_points:
            return finite, np.arange(len(finite))
        keep, inverse, used = voxel_downsample(points[finite], self.voxel_size, self.max_points)
        result.warnings.append(
            f"{len(finite)} points > max_points {self.max_points}: voxel-downsampled at {used:.3f} m to {len(keep)}"
        )
        return finite[keep], inverse

    def _crop(self, work: np.ndarray, work_index: np.ndarray, views: Sequence[PosedView],
              coverage: Optional[np.ndarray], result: SegmentResult) -> tuple[np.ndarray, np.ndarray]:
        """Step 3: (coverage (V, K) bool of the working points, inside (K,) bool: within
        the covered points' box plus ``crop_margin``; all True when no view covers any)."""
        if not views:
            cov = np.zeros((0, len(work)), bool)
        elif coverage is not None:
            cov = np.asarray(coverage, bool)[:, work_index]
        else:
            cov = coverage_matrix(work, [(v.depth, v.K, v.camera_to_world) for v in views])
        covered = cov.any(axis=0)
        if not covered.any():
            if views:
                result.warnings.append("no view covers the cloud: segmented 3D-only")
            return cov, np.ones(len(work), bool)
        return cov, in_box(np.ascontiguousarray(work.T), chunk_box(work[covered], self.crop_margin))

    def _plan(self, work: np.ndarray, kept: np.ndarray, views: Sequence[PosedView], cov: np.ndarray,
              rng: np.random.Generator, acc: _Accumulator, result: SegmentResult) -> list[_Part]:
        """Step 4: the chunks of the points ``kept``, their views and their parts of at most
        ``max_chunk_points`` (``views`` empty: 3D-only chunks, merged below ``min_3d_chunk_points``)."""
        if len(kept) == 0:
            return []
        chunks = chunk_grid(work[kept], size=self.chunk_size, stride=self.chunk_stride,
                            min_points=self.min_chunk_points if views else self.min_3d_chunk_points)
        parts: list[_Part] = []
        for chunk in chunks:
            idx = kept[chunk.index]
            chosen: list[int] = []
            if views and self.num_views > 0:
                chunk_cov = cov[:, idx]
                if chunk_cov.shape[1] > 2000:  # MVPNet's 2000 base points
                    base = rng.choice(chunk_cov.shape[1], 2000, replace=False)
                    chunk_cov = chunk_cov[:, base]
                chosen = greedy_select(chunk_cov, self.num_views)
            result.views_used = sorted(set(result.views_used) | set(chosen))
            if acc.views is not None and chosen:
                slots = acc.view_count[idx][:, None] + np.arange(len(chosen))
                fits = slots[:, -1] < acc.views.shape[1]
                acc.views[idx[fits, None], slots[fits]] = np.asarray(chosen, np.int32)
                acc.view_count[idx] += len(chosen)
            result.chunks_without_views += not chosen
            pieces = max(1, int(np.ceil(len(idx) / self.max_chunk_points)))
            order = rng.permutation(len(idx)) if pieces > 1 else np.arange(len(idx))
            parts += [_Part(idx[piece], tuple(chosen), chunk.center) for piece in np.array_split(order, pieces)]
        result.num_chunks += len(chunks)
        return parts

    def _batches(self, parts: list[_Part]) -> list[list[_Part]]:
        """Parts grouped for batched forwards: largest first; a batch holds at most
        ``batch_points`` points once padded to its largest part (one part at least),
        and only parts of at least half its largest (padding costs about as much as
        points, so a small part waits for a batch of small parts). Parts with views
        and 3D-only parts never share a batch: a 3D-only part in a batch with views
        would pay for the batch's Q points (the CSM maps N_Q of every row)."""
        batches: list[list[_Part]] = []
        for group in ([p for p in parts if p.views], [p for p in parts if not p.views]):
            start = len(batches)
            for part in sorted(group, key=lambda p: -len(p.index)):
                largest = len(batches[-1][0].index) if len(batches) > start else 0
                if (len(batches) > start and (len(batches[-1]) + 1) * largest <= self.batch_points
                        and 2 * len(part.index) >= largest):
                    batches[-1].append(part)
                else:
                    batches.append([part])
        return batches

    def _forward(self, work: np.ndarray, views: Sequence[PosedView], parts: list[_Part],
                 rng: np.random.Generator, acc: _Accumulator, result: SegmentResult) -> None:
        """Step 5: run the model on every part and vote. A forward that runs out of
        memory is retried with the batch split in two, or, for one part, with the
        part split (:meth:`_split_after_oom`)."""
        keys = [view_key(v) for v in views]
        pending = self._batches(parts)
        while pending:
            batch = pending.pop()
            try:
                outputs = self._run_batch(work, views, keys, batch)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(batch) > 1:
                    self.batch_points = max(1, min(self.batch_points, sum(len(p.index) for p in batch) // 2))
                    half = len(batch) // 2
                    pending += [batch[:half], batch[half:]]
                    continue
                part = batch[0]
                pending += [[_Part(p, part.views, part.center)]
                            for p in self._split_after_oom(part.index, rng, result, exc)]
                continue
            for part, (probs, sims, view_dist) in zip(batch, outputs):
                acc.add(part.index, probs, sims, view_dist)
        self._evict()

    def _copy_back(self, result: SegmentResult, acc: _Accumulator, finite: np.ndarray, inverse: np.ndarray,
                   outside: np.ndarray) -> None:
        """Step 6: the working points' votes to every input point through ``inverse``."""
        n = len(result.labels)
        voted = acc.sim_cnt > 0
        work_labels = acc.votes.labels()
        work_conf = acc.votes.confidence().astype(np.float32)
        work_probs = acc.votes.probabilities()
        with np.errstate(invalid="ignore", divide="ignore"):
            work_sims = (acc.sim_sum / np.maximum(acc.sim_cnt, 1)).astype(np.float32)
        work_sims[:, ~voted] = np.nan
        target, src = finite, inverse
        result.labels[target] = np.where(voted[src], work_labels[src], IGNORE_INDEX)
        result.confidence[target] = np.where(voted[src], work_conf[src], 0.0)
        result.s[target], result.s_geo[target], result.s_con[target] = work_sims[:, src]
        result.segmented[target] = voted[src]
        result.outside_views[target] = outside[src] & voted[src]
        result.view_distance = np.full(n, np.nan, np.float32)
        result.view_distance[target] = np.where(voted[src], acc.nearest_view[src], np.float32(np.nan))
        if acc.views is not None:
            result.point_views = np.full((n, acc.views.shape[1]), -1, np.int32)
            result.point_views[target] = acc.views[src]
        result.probs = np.zeros((n, NUM_CLASSES), np.float32)
        result.probs[target] = np.where(voted[src, None], work_probs[src], np.float32(0.0))

    def segment(
        self,
        points: np.ndarray,
        views: Sequence[PosedView] = (),
        coverage: Optional[np.ndarray] = None,
        record_views: bool = False,
    ) -> SegmentResult:
        """Label ``points`` (N, 3) world metres using ``views`` (see module docstring).

        coverage: optional precomputed (V, N) bool coverage of the points by the
        views (the offline evaluator has it from preprocessing). record_views:
        also fill ``SegmentResult.point_views`` (which views each point's chunks
        used; for analysis such as ``safnet data stats --model``).
        """
        t0 = time.perf_counter()
        points = np.asarray(points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ConfigError(f"points must be (N, 3), got {points.shape}")
        n = len(points)
        result = SegmentResult(
            labels=np.full(n, IGNORE_INDEX, np.int64),
            confidence=np.zeros(n, np.float32),
            s=np.full(n, np.nan, np.float32),
            s_geo=np.full(n, np.nan, np.float32),
            s_con=np.full(n, np.nan, np.float32),
            segmented=np.zeros(n, bool),
            outside_views=np.zeros(n, bool),
        )
        finite = np.flatnonzero(np.isfinite(points).all(axis=1))
        if len(finite) < n:
            result.warnings.append(f"{n - len(finite)} non-finite points not segmented")
        if len(finite) == 0:
            result.timings["total"] = time.perf_counter() - t0
            return result

        work_index, inverse = self._downsample(points, finite, result)
        work = points[work_index]

        t1 = time.perf_counter()
        views = list(views) if self.num_views > 0 else []
        cov, inside = self._crop(work, work_index, views, coverage, result)
        result.timings["coverage"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        acc = _Accumulator(VoteAccumulator(len(work), NUM_CLASSES), np.zeros((3, len(work)), np.float64),
                           np.zeros(len(work), np.int64), np.full(len(work), np.inf, np.float32))
        if record_views:  # a point lies in at most ceil(size / stride)^2 chunks
            per_point = int(np.ceil(self.chunk_size / self.chunk_stride - 1e-9)) ** 2 * max(self.num_views, 1)
            acc.views = np.full((len(work), per_point), -1, np.int32)
            acc.view_count = np.zeros(len(work), np.int64)
        rng = np.random.default_rng(self.seed)
        parts = self._plan(work, np.flatnonzero(inside), views, cov, rng, acc, result)
        outside = ~inside
        if self.outside_views == "3d" and outside.any():  # beyond every view: 3D-only chunks
            parts += self._plan(work, np.flatnonzero(outside), [], cov, rng, acc, result)
        self._forward(work, views, parts, rng, acc, result)
        result.timings["model"] = time.perf_counter() - t2

        self._copy_back(result, acc, finite, inverse, outside)
        result.timings["total"] = time.perf_counter() - t0
        return result
