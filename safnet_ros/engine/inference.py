"""Whole-cloud inference: crop, downsample, chunk, pick views, run SAFNet, vote.

:class:`Segmenter` is the one inference path shared by the ROS node, offline bag
segmentation, the evaluator and the demo:

1. non-finite points are set aside (label IGNORE_INDEX, confidence 0);
2. beyond ``max_points`` the cloud is voxel-downsampled (voxel grown until it
   fits) and predictions are copied back to every point of a voxel;
3. the cloud is cropped to what the views cover plus ``crop_margin`` (points
   outside are not segmented: ``segmented`` is False there). When no view
   covers any point (a camera stream that stopped) the whole cloud is segmented
   3D-only;
4. the kept points are cut into ``chunk_size`` squares in xy at ``chunk_stride``
   (docs/design.md §2.5: 1.5 m, stride 0.5 m offline); each chunk gets up to ``num_views``
   views chosen greedily by coverage, and chunks of more than
   ``max_chunk_points`` are split into random disjoint parts; a part whose
   forward runs out of (GPU) memory is split in two and retried, and
   ``max_chunk_points`` is halved for the rest of the run (down to
   ``min_oom_chunk_points``, below which a SafnetError is raised);
5. per-point class probabilities are averaged over overlapping chunks (the
   vote), and so are the similarities S, S_geo and S_con.
"""
from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from safnet_ros.data.labels import IGNORE_INDEX, NUM_CLASSES
from safnet_ros.engine.batching import (
    NET_IMAGE_WH,
    PosedView,
    build_chunk_sample,
    collate,
    normalize_images,
    prepare_view,
)
from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
from safnet_ros.errors import ConfigError, ModelLoadError, SafnetError
from safnet_ros.geometry.chunks import VoteAccumulator, chunk_grid
from safnet_ros.geometry.views import coverage_matrix, greedy_select

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
        from ament_index_python.packages import get_package_share_directory  # type: ignore

        candidates.append(Path(get_package_share_directory("safnet_ros")) / "models" / DEFAULT_MODEL_NAME)
    except Exception:  # noqa: BLE001 - ament_index is optional
        pass
    for path in candidates:
        if path.is_file():
            return path
    return None


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


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and RuntimeErrors that report running out of memory."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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


class Segmenter:
    """Runs a SAFNet model over whole clouds with posed views (see module docstring)."""

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
        min_oom_chunk_points: int = 512,
        coverage_tol: float = 0.1,
        seed: int = 0,
    ):
        if num_views < 0:
            raise ConfigError(f"num_views must be >= 0, got {num_views}")
        if chunk_size <= 0 or chunk_stride <= 0:
            raise ConfigError("chunk_size and chunk_stride must be positive")
        tune_cpu_allocator()  # a forward's large temporaries are reused, not page-faulted in again
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
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
        self.min_oom_chunk_points = max(1, int(min_oom_chunk_points))
        self.coverage_tol = float(coverage_tol)
        self.seed = int(seed)
        self.untrained = False
        # 2D features per view (the 2D net is frozen at inference): a view used by
        # several chunks, or kept in the node's buffer across clouds, is encoded once.
        self.feature_cache_size = 64
        self._features: OrderedDict[int, tuple] = OrderedDict()

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
        from safnet_ros.model.config import SafnetConfig
        from safnet_ros.model.safnet import build_model, load_checkpoint

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

    # ---------------------------------------------------------------- inference
    def _view_features(self, views: Sequence[PosedView]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Cached 2D features of ``views``: ((1, V*H*W, C), (1, V, K, H, W)) or (None, None).

        The cache holds at most ``feature_cache_size`` views (least recently used
        first out); eviction runs after this call has collected every view it
        needs, so a call never loses its own views (a whole ScanNet scene has
        thousands of frames: issue 14).
        """
        if not views or not hasattr(self.model, "encode_views"):
            return None, None
        found = {id(v): self._features[id(v)] for v in views if id(v) in self._features}
        missing = list({id(v): v for v in views if id(v) not in found}.values())
        if missing:
            images = torch.from_numpy(normalize_images(np.stack([v.color for v in missing]))).to(self.device)
            feats, logits = self.model.encode_views(images)
            if feats is None:
                return None, None
            for i, view in enumerate(missing):
                key = id(view)
                found[key] = self._features[key] = (feats[i], logits[i])
                weakref.finalize(view, self._features.pop, key, None)
        cached = [found[id(v)] for v in views]
        for v in views:
            self._features.move_to_end(id(v))
        while len(self._features) > self.feature_cache_size:
            self._features.popitem(last=False)
        feats = torch.cat([f for f, _ in cached]).unsqueeze(0)
        logits = torch.stack([lg for _, lg in cached]).unsqueeze(0)
        return feats, logits

    def clear_cache(self) -> None:
        """Forget cached 2D features (e.g. after the model changed)."""
        self._features.clear()

    def warm_up(self, points: int = 2000) -> float:
        """Segment a small synthetic scene once; returns the seconds it took.

        The first forward of a process pays one-time costs (oneDNN picks and
        compiles its convolution kernels, lazy imports, CUDA context and kernels)
        that can be several times a normal forward. Paying them here, before data
        flows, keeps them out of the first real cloud's latency; in the node, a
        stalled first cloud would also starve the executor and lose sensor frames.
        The scene: ``points`` points on a wall 2 m in front of one 160 x 120 view.
        """
        from safnet_ros.geometry.camera import backproject

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
        self._features.pop(id(view), None)
        return time.perf_counter() - t0

    @torch.no_grad()
    def _run_chunk(self, points: np.ndarray, views: Sequence[PosedView], center_xy: np.ndarray):
        """Forward one chunk part. Returns probs (n, C), s, s_geo, s_con, view_distance (n,) numpy."""
        sample = build_chunk_sample(points, views, center_xy=center_xy)
        batch = collate([sample], device=str(self.device))
        batch.pixel_features, batch.pixel_logits = self._view_features(views)
        out = self.model(batch)
        probs = torch.softmax(out.logits[0].float(), dim=-1).cpu().numpy()
        sims = [getattr(out, name)[0].float().cpu().numpy() for name in ("s", "s_geo", "s_con")]
        n = len(probs)
        view_distance = (np.full(n, np.inf, np.float32) if out.nearest_q_dist is None
                         else out.nearest_q_dist[0].float().cpu().numpy())
        return probs, sims[0], sims[1], sims[2], view_distance

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
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.max_chunk_points = min(self.max_chunk_points, smaller)
        result.oom_retries += 1
        message = (f"out of memory on {self.device} for a chunk of {len(pidx)} points: retrying in parts of "
                   f"<= {self.max_chunk_points} (max_chunk_points lowered for the following clouds)")
        LOG.warning(message)
        result.warnings.append(message)
        pieces = int(np.ceil(len(pidx) / self.max_chunk_points))
        shuffled = pidx[rng.permutation(len(pidx))]
        return list(np.array_split(shuffled, pieces))

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
        )
        finite = np.flatnonzero(np.isfinite(points).all(axis=1))
        if len(finite) < n:
            result.warnings.append(f"{n - len(finite)} non-finite points not segmented")
        if len(finite) == 0:
            result.timings["total"] = time.perf_counter() - t0
            return result

        # 2. downsample: work on representatives, copy back through `inverse`.
        work_index = finite
        inverse = np.arange(len(finite))
        if self.max_points is not None and len(finite) > self.max_points:
            keep, inverse, used = voxel_downsample(points[finite], self.voxel_size, self.max_points)
            work_index = finite[keep]
            result.warnings.append(
                f"{len(finite)} points > max_points {self.max_points}: voxel-downsampled "
                f"at {used:.3f} m to {len(keep)}"
            )
        work = points[work_index]

        # 3. coverage and crop.
        t1 = time.perf_counter()
        views = list(views) if self.num_views > 0 else []
        if views:
            if coverage is not None:
                cov = np.asarray(coverage, bool)[:, work_index]
            else:
                cov = coverage_matrix(
                    work, [(v.depth, v.K, v.camera_to_world) for v in views], tol=self.coverage_tol
                )
        else:
            cov = np.zeros((0, len(work)), bool)
        covered = cov.any(axis=0) if len(views) else np.zeros(len(work), bool)
        if covered.any():
            lo = work[covered].min(axis=0) - self.crop_margin
            hi = work[covered].max(axis=0) + self.crop_margin
            inside = np.all((work >= lo) & (work <= hi), axis=1)
        else:
            inside = np.ones(len(work), bool)
            if views:
                result.warnings.append("no view covers the cloud: segmented 3D-only")
        result.timings["coverage"] = time.perf_counter() - t1

        # 4. chunks, views per chunk, forward, vote.
        t2 = time.perf_counter()
        kept = np.flatnonzero(inside)
        votes = VoteAccumulator(len(work), NUM_CLASSES)
        sim_sum = np.zeros((3, len(work)), np.float64)
        sim_cnt = np.zeros(len(work), np.int64)
        nearest_view = np.full(len(work), np.inf, np.float32)
        if record_views:  # a point lies in at most ceil(size / stride)^2 chunks
            per_point = int(np.ceil(self.chunk_size / self.chunk_stride - 1e-9)) ** 2 * max(self.num_views, 1)
            work_views = np.full((len(work), per_point), -1, np.int32)
            work_view_count = np.zeros(len(work), np.int64)
        rng = np.random.default_rng(self.seed)
        used: set[int] = set()
        chunks = chunk_grid(work[kept], size=self.chunk_size, stride=self.chunk_stride,
                            min_points=self.min_chunk_points)
        for chunk in chunks:
            idx = kept[chunk.index]
            chosen: list[int] = []
            if views and self.num_views > 0:
                chunk_cov = cov[:, idx]
                if chunk_cov.shape[1] > 2000:  # MVPNet's 2000 base points
                    base = rng.choice(chunk_cov.shape[1], 2000, replace=False)
                    chunk_cov = chunk_cov[:, base]
                chosen = greedy_select(chunk_cov, self.num_views)
            used.update(chosen)
            if record_views and chosen:
                slots = work_view_count[idx][:, None] + np.arange(len(chosen))
                fits = slots[:, -1] < work_views.shape[1]
                work_views[idx[fits, None], slots[fits]] = np.asarray(chosen, np.int32)
                work_view_count[idx] += len(chosen)
            result.chunks_without_views += not chosen
            chunk_views = [views[i] for i in chosen]
            parts = max(1, int(np.ceil(len(idx) / self.max_chunk_points)))
            order = rng.permutation(len(idx)) if parts > 1 else np.arange(len(idx))
            pending = [idx[part] for part in np.array_split(order, parts)]
            while pending:
                pidx = pending.pop()
                try:
                    probs, s, s_geo, s_con, view_dist = self._run_chunk(work[pidx], chunk_views, chunk.center)
                except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                    if not is_out_of_memory(exc):
                        raise
                    pending.extend(self._split_after_oom(pidx, rng, result, exc))
                    continue
                votes.add(pidx, probs)
                sim_sum[:, pidx] += np.stack([s, s_geo, s_con])
                sim_cnt[pidx] += 1
                nearest_view[pidx] = np.minimum(nearest_view[pidx], view_dist)
        result.num_chunks = len(chunks)
        result.views_used = sorted(used)
        result.timings["model"] = time.perf_counter() - t2

        # 5. copy back to all points.
        voted = sim_cnt > 0
        work_labels = votes.labels()
        work_conf = votes.confidence().astype(np.float32)
        work_probs = votes.probabilities()
        with np.errstate(invalid="ignore", divide="ignore"):
            work_sims = (sim_sum / np.maximum(sim_cnt, 1)).astype(np.float32)
        work_sims[:, ~voted] = np.nan
        target = finite
        src = inverse
        result.labels[target] = np.where(voted[src], work_labels[src], IGNORE_INDEX)
        result.confidence[target] = np.where(voted[src], work_conf[src], 0.0)
        result.s[target], result.s_geo[target], result.s_con[target] = work_sims[:, src]
        result.segmented[target] = voted[src]
        result.view_distance = np.full(n, np.nan, np.float32)
        result.view_distance[target] = np.where(voted[src], nearest_view[src], np.float32(np.nan))
        if record_views:
            result.point_views = np.full((n, work_views.shape[1]), -1, np.int32)
            result.point_views[target] = work_views[src]
        result.probs = np.zeros((n, NUM_CLASSES), np.float32)
        result.probs[target] = np.where(voted[src, None], work_probs[src], np.float32(0.0))
        result.timings["total"] = time.perf_counter() - t0
        return result
