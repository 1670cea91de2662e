"""``safnet eval``: whole-scene evaluation of SAFNet checkpoints on preprocessed scenes.

For every model (``--model``, repeatable) and every number of test views
(``--views 1,3,5``), each scene of the split is segmented whole by
:class:`~safnet_ros.engine.inference.Segmenter` and one
:class:`~safnet_ros.engine.metrics.ConfusionMatrix` per (model, views) is
accumulated over all points of all scenes (ScanNet's benchmark definition).
Bad input is counted and reported, never silently dropped. What it computes,
its outputs, the JSON object and the bad-input rules: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.spatial import cKDTree
from tqdm import tqdm

from safnet_ros import output_dir as od
from safnet_ros.data.augment import (
    EFFECT_GROUPS,
    REAL_CAMERA_TEST,
    CameraAugment,
    camera_test_settings,
    degrade_view_arrays,
)
from safnet_ros.data.dataset import PreprocessedScene
from safnet_ros.data.labels import CLASS_NAMES, NUM_CLASSES, TABLE_ORDER
from safnet_ros.data.preprocess import TMP_PREFIX, scene_is_complete, unpack_coverage
from safnet_ros.data.scannet import read_split, split_list_path
from safnet_ros.engine.batching import PosedView
from safnet_ros.engine.inference import PRECISIONS, Segmenter
from safnet_ros.engine.metrics import ConfusionMatrix
from safnet_ros.errors import ConfigError, DataFormatError, MissingDataError, ModelLoadError, SafnetError
from safnet_ros.validation import MAX_COUNT, device_name, float_range, int_list, int_range, require_dir

#: Table III's switch columns: (config field, column title, variants the switch exists in).
ABLATION_SWITCHES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("gsm_forward", "GSM-FS", ("safnet",)),
    ("gsm_backward", "GSM-BS", ("safnet",)),
    ("csm", "CSM", ("safnet",)),
    ("aux_losses", "Aux sup", ("safnet", "concat")),
    ("unproj_loss", "2D unp. loss", ("safnet", "concat")),
    ("channel_attention", "Channel att", ("safnet",)),
)
#: ``safnet eval --camera-effects``: the test views as rendered (off), degraded as a real camera
#: might (real: every effect), or by one effect alone at the same strength (to measure each knob).
CAMERA_EFFECTS: tuple[str, ...] = ("off", "real", *EFFECT_GROUPS)
CHECK = "\u2713"


# --------------------------------------------------------------------------- scenes
@dataclass
class EvalScenes:
    """The scenes to evaluate and those of the split that were skipped (name -> reason)."""

    scenes: list  # list[PreprocessedScene]
    skipped: dict[str, str] = field(default_factory=dict)


def find_eval_scenes(root: str | Path, split: Optional[str], max_scenes: Optional[int] = None) -> EvalScenes:
    """The preprocessed scenes of ``split`` (a name -> ``ROOT/scannetv2_<split>.txt``, or a path).

    Unlike :func:`safnet_ros.data.dataset.list_scenes`, a split scene that is
    incomplete or absent is skipped with its reason instead of failing the
    whole evaluation (the reasons are reported). ``split`` None: every complete
    scene folder. ``max_scenes``: only the first N scenes to evaluate.

    Raises MissingDataError when ``root`` or the split list is missing, or when
    nothing is left to evaluate.
    """
    base = require_dir(root, "preprocessed data folder (run `safnet data preprocess`)")
    if split:
        split_path = split_list_path(base, split)
        if not os.path.lexists(split_path):
            raise MissingDataError(split_path, f"split list of {split!r}")
        names = read_split(split_path)
    else:
        names = sorted(p.name for p in base.iterdir()
                       if p.is_dir() and not p.name.startswith((".", TMP_PREFIX)) and (p / "meta.json").exists())
    result = EvalScenes(scenes=[])
    for name in names:
        folder = base / name
        if not folder.is_dir():
            result.skipped[name] = "not preprocessed (no folder)"
        elif not scene_is_complete(folder):
            result.skipped[name] = "incomplete (no complete meta.json: preprocessing was interrupted?)"
        else:
            try:
                result.scenes.append(PreprocessedScene(folder))
            except SafnetError as exc:
                result.skipped[name] = f"unreadable: {exc}"
    if max_scenes is not None:
        if max_scenes < 1:
            raise ConfigError(f"--scenes must be >= 1, got {max_scenes}")
        result.scenes = result.scenes[:max_scenes]
    if not result.scenes:
        what = f"any evaluable scene of split {split!r}" if split else "any complete preprocessed scene"
        if result.skipped:
            what += f" ({len(result.skipped)} skipped, e.g. {next(iter(result.skipped.items()))})"
        elif split:
            what += " (the split list is empty)"
        raise MissingDataError(base, what)
    return result


def scene_coverage(scene) -> Optional[np.ndarray]:
    """(F, N) bool coverage of all N points by the F frames of a preprocessed scene; None without frames.

    The stored table covers base points only: any other point takes the column of
    its nearest base point (docs/evaluation.md, "What it computes").
    """
    F = scene.num_frames
    if F == 0:
        return None
    points = np.asarray(scene.points)
    base = np.asarray(scene.coverage_index).astype(np.int64, copy=False).reshape(-1)
    n, nb = len(points), len(base)
    if nb == 0:
        return np.zeros((F, n), bool)
    if base.min() < 0 or base.max() >= n:  # a corrupt or foreign table: name the file, not an IndexError
        raise DataFormatError(scene.dir / "coverage_index.npy",
                              f"indices {int(base.min())}..{int(base.max())} lie outside the scene's {n} points")
    bits = np.asarray(scene.coverage_bits)
    if bits.ndim != 2 or bits.shape[0] != F or bits.shape[1] < (nb + 7) // 8:
        raise DataFormatError(scene.dir / "coverage_bits.npy",
                              f"shape {bits.shape}, expected ({F}, {(nb + 7) // 8}) for {F} frames x {nb} base points")
    if nb == n and np.array_equal(base, np.arange(n)):
        return unpack_coverage(scene.coverage_bits, np.arange(n))
    column = np.full(n, -1, np.int64)
    column[base] = np.arange(nb)
    others = np.flatnonzero(column < 0)
    if len(others):
        _, nearest = cKDTree(points[base]).query(points[others], k=1)
        column[others] = nearest
    return unpack_coverage(scene.coverage_bits, column)


# --------------------------------------------------------------------------- results
#: Upper edges (metres) of the distance bins of ``accuracy_by_view_distance``: how far a point
#: was from the nearest back-projected pixel of its chunks' views (then ">= 0.5 m" and "no view").
VIEW_DISTANCE_EDGES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5)
VIEW_DISTANCE_BINS: tuple[str, ...] = ("< 5 cm", "5-10 cm", "10-20 cm", "20-50 cm", ">= 50 cm", "no view")


def view_distance_counts(truth: np.ndarray, labels: np.ndarray, distance: Optional[np.ndarray]) -> np.ndarray:
    """(bins, 2) int64 [correct, points] per VIEW_DISTANCE_BINS over points with a benchmark truth
    and a prediction; ``distance`` (N,) metres (inf: no view reached the point; NaN: not segmented)."""
    out = np.zeros((len(VIEW_DISTANCE_BINS), 2), np.int64)
    if distance is None:
        return out
    truth = np.asarray(truth).astype(np.int64)
    labels = np.asarray(labels).astype(np.int64)
    d = np.asarray(distance, np.float64)
    ok = (truth >= 0) & (truth < NUM_CLASSES) & (labels >= 0) & (labels < NUM_CLASSES) & ~np.isnan(d)
    bins = np.where(np.isinf(d[ok]), len(VIEW_DISTANCE_BINS) - 1, np.digitize(d[ok], VIEW_DISTANCE_EDGES))
    out[:, 0] = np.bincount(bins, weights=labels[ok] == truth[ok], minlength=len(out)).astype(np.int64)
    out[:, 1] = np.bincount(bins, minlength=len(out))
    return out


@dataclass
class SceneStats:
    """What happened to one scene for one model and number of views."""

    scene: str
    views: int
    points: int
    frames: int
    chunks: int
    chunks_without_views: int
    ignored_points: int  # ground truth outside the 20 classes: not in the metric
    unsegmented_points: int  # valid truth but no prediction: false negatives
    seconds: float
    warnings: list[str] = field(default_factory=list)
    #: (bins, 2) [correct, points] by distance to the nearest view pixel (view_distance_counts)
    by_view_distance: Optional[np.ndarray] = None
    #: (C, C + 1) int64 this scene's own confusion matrix (rows truth, last column unpredicted): lets a
    #: report pool any subset of scenes or resample them (table3_report's bootstrap over rooms)
    confusion: Optional[np.ndarray] = None


@dataclass
class ModelResult:
    """One checkpoint's evaluation: a confusion matrix per number of test views."""

    path: str
    label: str
    config: dict[str, Any]
    views: list[int]
    matrices: dict[int, ConfusionMatrix]
    scenes: list[SceneStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def headline_views(self) -> int:
        """The number of views of the headline metrics: the largest evaluated."""
        return max(self.views)

    def switches(self) -> dict[str, Optional[bool]]:
        """Table III switches of the checkpoint (None where its variant has no such part)."""
        variant = self.config.get("variant", "safnet")
        return {key: (bool(self.config.get(key, False)) if variant in variants else None)
                for key, _title, variants in ABLATION_SWITCHES}

    def counts(self, views: Optional[int] = None) -> dict[str, Any]:
        """Bad-input counts over all scenes for ``views`` (default: the headline)."""
        k = self.headline_views if views is None else views
        rows = [s for s in self.scenes if s.views == k]
        return {
            "num_scenes": len(rows),
            "points": sum(s.points for s in rows),
            "scenes_without_frames": sorted(s.scene for s in rows if s.frames == 0),
            "chunks": sum(s.chunks for s in rows),
            "chunks_without_views": sum(s.chunks_without_views for s in rows),
            "ignored_points": sum(s.ignored_points for s in rows),
            "unsegmented_points": sum(s.unsegmented_points for s in rows),
            "segment_seconds": round(sum(s.seconds for s in rows), 3),
        }

    def accuracy_by_view_distance(self, views: int) -> list[dict[str, Any]]:
        """Accuracy over all scenes at ``views`` test views, per VIEW_DISTANCE_BINS: where 2D evidence
        was near, far or missing (3D-only models: every point is "no view")."""
        total = np.zeros((len(VIEW_DISTANCE_BINS), 2), np.int64)
        for s in self.scenes:
            if s.views == views and s.by_view_distance is not None:
                total += s.by_view_distance
        return [{"bin": name, "points": int(n), "accuracy": _num(c / n) if n else None}
                for name, (c, n) in zip(VIEW_DISTANCE_BINS, total)]

    def to_json(self) -> dict[str, Any]:
        head = self.matrices[self.headline_views]
        out: dict[str, Any] = {
            "model": self.path,
            "label": self.label,
            "variant": self.config.get("variant"),
            "preset": self.config.get("preset_name"),
            "switches": self.switches(),
            "views": self.headline_views,
            "miou": _num(head.miou()),
            "oa": _num(head.overall_accuracy()),
            "per_class": {k: _num(v) for k, v in head.per_class().items()},
            **self.counts(),
            "warnings": sorted({w for s in self.scenes for w in s.warnings}),
        }
        if len(self.views) > 1:
            out["by_views"] = {str(k): _num(self.matrices[k].miou()) for k in self.views}
            out["oa_by_views"] = {str(k): _num(self.matrices[k].overall_accuracy()) for k in self.views}
            out["per_class_by_views"] = {str(k): {c: _num(v) for c, v in self.matrices[k].per_class().items()}
                                         for k in self.views}
        out["accuracy_by_view_distance"] = {str(k): self.accuracy_by_view_distance(k) for k in self.views}
        # views -> scene -> (C, C + 1) confusion rows: pooled they give the matrices above
        out["per_scene_confusion"] = {str(k): {s.scene: s.confusion.tolist() for s in self.scenes
                                               if s.views == k and s.confusion is not None} for k in self.views}
        return out


def _num(x: float) -> Optional[float]:
    """A float for JSON (NaN -> None, so the output is strict JSON)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


# --------------------------------------------------------------------------- evaluation
def load_segmenter(path: str | Path, device: str = "auto", stride: float = 0.5, **kwargs):
    """A :class:`Segmenter` for checkpoint ``path`` set up for offline evaluation: whole scenes, no
    downsampling (``max_points=None``) and no crop (``crop_margin=inf``), as docs/evaluation.md says.

    Raises ModelLoadError naming the file when it is missing or corrupt.
    """
    if not path:
        raise ModelLoadError("no model given: pass --model CHECKPOINT")
    kwargs.setdefault("crop_margin", math.inf)  # evaluate every point, not only what the views cover
    segmenter = Segmenter.from_checkpoint(str(path), device=device, chunk_stride=stride, max_points=None, **kwargs)
    classes = segmenter.config.num_classes
    if classes != NUM_CLASSES:  # the scores would not fit the benchmark's classes: name the file and setting
        raise ModelLoadError(f"{path}: the checkpoint has num_classes {classes}; evaluation scores the "
                             f"{NUM_CLASSES} ScanNet benchmark classes (train with model.num_classes {NUM_CLASSES})")
    return segmenter


def model_label(config) -> str:
    """Legend / row name of a checkpoint: ``variant/preset``, plus the Table III parts it
    was trained without (``safnet/lite w/o CSM``)."""
    off = [title for key, title, variants in ABLATION_SWITCHES
           if config.variant in variants and not getattr(config, key, True)]
    return f"{config.variant}/{config.preset_name}" + (f" w/o {', '.join(off)}" if off else "")


def distinct_labels(labels: Sequence[str], paths: Sequence[str | Path]) -> list[str]:
    """``labels`` with the checkpoint named where two share one: its file stem, or its
    folder and stem when the stems coincide too (``runs/a/model_last.pt``, ``runs/b/model_last.pt``)."""
    out = []
    for lab, path in zip(labels, paths):
        if labels.count(lab) == 1:
            out.append(lab)
            continue
        p = Path(path)
        same_stem = sum(Path(q).stem == p.stem for q, other in zip(paths, labels) if other == lab) > 1
        out.append(f"{lab} ({p.parent.name}/{p.stem})" if same_stem else f"{lab} ({p.stem})")
    return out


def evaluate_scene(segmenter, scene, views_list: Sequence[int], cms: dict[int, ConfusionMatrix],
                   views=None, coverage=None) -> list[SceneStats]:
    """Segment ``scene`` once per number of views in ``views_list``; add to ``cms`` (views -> matrix).

    ``views`` (all of the scene's frames as PosedViews) and ``coverage`` ((F, N)
    bool) are computed when not given (pass them to share them between models).
    """
    points = np.asarray(scene.points, np.float32)
    truth = np.asarray(scene.labels).astype(np.int64)
    if views is None:
        views = [scene.view(f) for f in range(scene.num_frames)]
        coverage = scene_coverage(scene)
    ignored = int(np.count_nonzero((truth < 0) | (truth >= NUM_CLASSES)))
    valid_truth = (truth >= 0) & (truth < NUM_CLASSES)
    stats = []
    # A 3D-only model ignores the views it is given (only the crop to the covered
    # region uses them, the same for every k >= 1): segment once for all k >= 1.
    reuse = not segmenter.config.uses_2d
    done: dict = {}  # (k, or "has views" for a 3D-only model) -> (result, seconds)
    for k in views_list:
        key = k > 0 if reuse else k
        if key not in done:
            segmenter.num_views = int(k)
            t0 = time.perf_counter()
            done[key] = (segmenter.segment(points, views, coverage=coverage), time.perf_counter() - t0)
        result, seconds = done[key]
        scene_cm = ConfusionMatrix()
        scene_cm.add(truth, result.labels)
        cms[k].matrix += scene_cm.matrix
        stats.append(SceneStats(
            scene=scene.name, views=int(k), points=len(points), frames=scene.num_frames,
            chunks=int(result.num_chunks),
            chunks_without_views=int(result.chunks_without_views),
            ignored_points=ignored,
            unsegmented_points=int(np.count_nonzero(valid_truth & ~result.segmented)),
            seconds=seconds, warnings=list(result.warnings),
            by_view_distance=view_distance_counts(truth, result.labels, result.view_distance),
            confusion=scene_cm.matrix,
        ))
    return stats


def evaluate(models: Sequence[str | Path], root: str | Path, split: Optional[str] = "val",
             views: Sequence[int] = (3,), stride: float = 0.5, device: str = "auto",
             max_scenes: Optional[int] = None, progress: bool = True,
             precision: str = "fp32", camera_effects: str = "off") -> tuple[list[ModelResult], EvalScenes]:
    """Evaluate every checkpoint of ``models`` on the scenes of ``split`` for each number of ``views``.

    All checkpoints are loaded first (a bad one fails before any work). Each
    scene's frames and coverage are read once and shared by all models.
    Returns the per-model results and the scene list (with skipped scenes).
    ``precision``: the Segmenter's; ``camera_effects``: one of :data:`CAMERA_EFFECTS`
    (``--camera-effects`` in docs/evaluation.md).
    """
    if camera_effects not in CAMERA_EFFECTS:
        raise ConfigError(f"--camera-effects must be one of {CAMERA_EFFECTS}, got {camera_effects!r}")
    if not models:
        raise ConfigError("at least one --model is needed")
    views_list = sorted({int(v) for v in views})
    if not views_list or min(views_list) < 0:
        raise ConfigError(f"--views must be numbers >= 0, got {list(views)}")
    if stride <= 0:
        raise ConfigError(f"--stride must be > 0, got {stride}")
    segmenters = [load_segmenter(m, device, stride, precision=precision) for m in models]
    found = find_eval_scenes(root, split, max_scenes)
    most_frames = max(s.num_frames for s in found.scenes)
    if most_frames and max(views_list) > most_frames:  # the rows would claim views no chunk can get
        raise ConfigError(f"--views {max(views_list)}: the scenes of {root} have at most {most_frames} frames; "
                          f"ask for at most {most_frames} views")
    labels = distinct_labels([model_label(s.config) for s in segmenters], models)
    results = [ModelResult(path=str(m), label=lab, config=s.config.to_dict(), views=views_list,
                           matrices={k: ConfusionMatrix() for k in views_list})
               for m, lab, s in zip(models, labels, segmenters)]
    settings = camera_test_settings(camera_effects)
    bar = tqdm(total=len(found.scenes), desc="eval", unit="scene", file=sys.stderr, disable=not progress)
    for scene in found.scenes:
        frame_views = [scene.view(f) for f in range(scene.num_frames)]
        if settings is not None:
            frame_views = [degraded_view(v, scene.name, f, settings) for f, v in enumerate(frame_views)]
        coverage = scene_coverage(scene)
        for seg, res in zip(segmenters, results):
            t0 = time.perf_counter()
            res.scenes.extend(evaluate_scene(seg, scene, views_list, res.matrices, frame_views, coverage))
            res.seconds += time.perf_counter() - t0
            seg.clear_cache()
        bar.update(1)
    bar.close()
    return results, found


def degraded_view(view: PosedView, scene_name: str, frame: int,
                  settings: CameraAugment = REAL_CAMERA_TEST) -> PosedView:
    """``view`` with :func:`~safnet_ros.data.augment.degrade_view_arrays` applied to its colour and depth."""
    color, depth = degrade_view_arrays(view.color, view.depth, scene_name, frame, settings)
    return dataclasses.replace(view, color=color, depth=depth)


# --------------------------------------------------------------------------- reports
def format_table(results: Sequence[ModelResult]) -> str:
    """Table I: one row per model x views, mIoU, OA and the classes in Table I's order (percent)."""
    shorts = [short for _name, short in TABLE_ORDER]
    name_w = max([len("model")] + [len(r.label) for r in results])
    head = f"{'model':<{name_w}} {'views':>5} {'mIoU':>6} {'OA':>6} " + " ".join(f"{s:>6}" for s in shorts)
    lines = [head, "-" * len(head)]
    for r in results:
        for k in r.views:
            cm = r.matrices[k]
            cells = [_pct(cm.miou()), _pct(cm.overall_accuracy())] + [_pct(v) for v in cm.per_class().values()]
            lines.append(f"{r.label:<{name_w}} {k:>5} " + " ".join(f"{c:>6}" for c in cells))
    return "\n".join(lines)


def format_ablation(results: Sequence[ModelResult]) -> str:
    """Table III: one row per checkpoint, its switches (check mark = on, '-' = not in this variant), mIoU."""
    titles = [title for _key, title, _v in ABLATION_SWITCHES]
    name_w = max([len("model")] + [len(r.label) for r in results])
    head = f"{'model':<{name_w}} " + " ".join(f"{t:>{max(len(t), 3)}}" for t in titles) + f" {'views':>5} {'mIoU':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        on = r.switches()
        marks = [f"{'-' if on[key] is None else (CHECK if on[key] else ''):>{max(len(title), 3)}}"
                 for key, title, _v in ABLATION_SWITCHES]
        k = r.headline_views
        lines.append(f"{r.label:<{name_w}} " + " ".join(marks) + f" {k:>5} {_pct(r.matrices[k].miou()):>6}")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100.0 * x:.1f}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "model"


def write_csv(results: Sequence[ModelResult], path: Path) -> Path:
    """``per_class.csv``: model, label, views, miou, oa, then one IoU column per class (Table I order)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "label", "views", "miou", "oa"] + [name for name, _ in TABLE_ORDER])
        for r in results:
            for k in r.views:
                cm = r.matrices[k]
                row = [cm.miou(), cm.overall_accuracy()] + list(cm.per_class().values())
                w.writerow([r.path, r.label, k] + ["" if not math.isfinite(v) else f"{v:.6f}" for v in row])
    return path


def plot_confusion(cm: ConfusionMatrix, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (truth rows, prediction columns, Table I order) as a PNG."""
    order = [CLASS_NAMES.index(name) for name, _ in TABLE_ORDER]
    m = cm.square[np.ix_(order, order)].astype(np.float64)
    totals = cm.matrix[order].sum(axis=1, keepdims=True).astype(np.float64)  # incl. unsegmented
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, m / np.maximum(totals, 1), 0.0)
    names = [name for name, _ in TABLE_ORDER]
    fig = Figure(figsize=(9, 8))  # matplotlib's object API: no pyplot state, no backend to choose (Agg on save)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the truth row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_views_sweep(results: Sequence[ModelResult], path: Path) -> Path:
    """Fig. 5: mIoU (%) against the number of test views, one line per model."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for r in results:
        ys = [100.0 * r.matrices[k].miou() for k in r.views]
        ax.plot(r.views, ys, marker="o", label=r.label)
    ax.set_xlabel("number of test views")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(sorted({k for r in results for k in r.views}))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("mIoU vs test views")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_outputs(results: Sequence[ModelResult], out: Path) -> dict[str, Any]:
    """Write the CSV and the PNGs into ``out``; returns {kind: path(s)} as strings."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"csv": str(write_csv(results, out / "per_class.csv")), "confusion": {}}
    for r in results:
        for k in r.views:
            name = f"confusion_{_slug(r.label)}_v{k}.png"
            plot_confusion(r.matrices[k], out / name, f"{r.label}, {k} view(s): mIoU {_pct(r.matrices[k].miou())}%")
            files["confusion"].setdefault(r.label, {})[str(k)] = str(out / name)
    files["views_sweep"] = str(plot_views_sweep(results, out / "views_sweep.png"))
    return files


def report_json(results: Sequence[ModelResult], found: EvalScenes, split: Optional[str],
                stride: float, files: dict[str, Any]) -> dict[str, Any]:
    """The one JSON object of ``--json``: the model's metrics at top level, or ``models`` for several."""
    common = {
        "split": split,
        "stride": stride,
        "scenes": [s.name for s in found.scenes],
        "skipped_scenes": dict(found.skipped),
        "outputs": files,
    }
    if len(results) == 1:
        return {**results[0].to_json(), "scenes": common["scenes"], "num_scenes": len(found.scenes),
                **{k: v for k, v in common.items() if k != "scenes"}}
    paths = [r.path for r in results]
    keys = [p if paths.count(p) == 1 else f"{p}#{i + 1}" for i, p in enumerate(paths)]  # the same file twice
    return {"models": {k: r.to_json() for k, r in zip(keys, results)}, "num_scenes": len(found.scenes), **common}


def format_counts(results: Sequence[ModelResult], found: EvalScenes) -> str:
    """The bad-input lines printed under the table."""
    c = results[0].counts()
    lines = [f"scenes: {len(found.scenes)} evaluated, {len(found.skipped)} skipped; points {c['points']}; "
             f"ignored (truth outside the 20 classes): {c['ignored_points']}"]
    for name, reason in found.skipped.items():
        lines.append(f"  skipped {name}: {reason}")
    if c["scenes_without_frames"]:
        lines.append(f"scenes without any frame (segmented 3D-only): {', '.join(c['scenes_without_frames'])}")
    for r in results:
        for k in r.views:
            ck = r.counts(k)
            lines.append(f"{r.label}, {k} view(s): chunks {ck['chunks']} ({ck['chunks_without_views']} without "
                         f"views), unsegmented points {ck['unsegmented_points']}, {ck['segment_seconds']:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command
#: Most test views per chunk that --views accepts (the paper sweeps 1..5).
MAX_VIEWS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="CHECKPOINT",
                        help="checkpoint to evaluate; repeat to compare models (e.g. safnet, concat, "
                             "pointnet2) in one table and one views-sweep plot")
    parser.add_argument("--data", required=True, metavar="ROOT", help="folder written by `safnet data preprocess`")
    parser.add_argument("--split", default="val",
                        help="split name (ROOT/scannetv2_<split>.txt) or a split-list path (default val)")
    parser.add_argument("--views", type=int_list(0, MAX_VIEWS), default=[3], metavar="K[,K...]",
                        help="numbers of test views per chunk, e.g. 1,3,5 (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--ablation", action="store_true",
                        help="print the models as Table III rows (switches from each checkpoint's config, "
                             "mIoU). Only tabulates the checkpoints given: each row of Table III is a "
                             "separately trained model")
    parser.add_argument("--out", default="eval_out", metavar="DIR",
                        help="folder for per_class.csv, the confusion-matrix and views-sweep PNGs and "
                             "eval.json (default ./eval_out)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--scenes", type=int_range(1, MAX_COUNT), default=None, metavar="N",
                        help="only the first N scenes")
    parser.add_argument("--stride", type=float_range(0.0, 100.0, lo_open=True), default=0.5,
                        help="sliding-window stride in metres (default 0.5)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="forward precision (torch.autocast): fp32 (default: scores that do not depend on the "
                             "CPU), bf16, fp16 (CUDA only) or auto (the node's: bf16 on CUDA, else fp32)")
    parser.add_argument("--camera-effects", choices=CAMERA_EFFECTS, default="off",
                        help="real: degrade every test view as a real camera might (exposure, white balance, noise, "
                             "blur, JPEG, vignetting, depth holes; the same draw for every model); one effect's "
                             "name: that effect alone at the same strength; off (default)")
    parser.add_argument("--threads", type=int_range(0, 1024), default=0,
                        help="CPU threads for torch (default 0: torch's default, one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.split is not None and not args.split.strip():  # '' must not mean "every scene"
        raise ConfigError("--split: empty; give a split name such as val, or a split-list path")
    out = Path(args.out)
    with od.output_lock(out, "--out folder"):
        # before the evaluation, not after it: --out is new, empty, or an earlier `safnet eval` output
        # holding only what eval wrote (then replaced as a whole: never old eval.json beside new PNGs)
        od.claim(out, "eval", overwrite=True, inputs=[args.data, *args.model], what="--out folder")
        results, found = evaluate(args.model, args.data, args.split, args.views, stride=args.stride,
                                  device=args.device, max_scenes=args.scenes, progress=not args.no_progress,
                                  precision=args.precision, camera_effects=args.camera_effects)
        with od.staged_folder(out, "eval", {"models": [str(m) for m in args.model], "data": str(args.data),
                                            "split": args.split, "views": list(args.views), "stride": args.stride,
                                            "camera_effects": args.camera_effects},
                              overwrite=True) as stage:
            files = write_outputs(results, stage)
            report = report_json(results, found, args.split, args.stride, files)
            report = json.loads(json.dumps(report, ensure_ascii=False).replace(
                json.dumps(str(stage))[1:-1], json.dumps(str(out))[1:-1]))  # paths as they will be after the swap
            (stage / "eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(format_table(results))
    if args.ablation:
        print()
        print("Table III (ablation; only the checkpoints given)")
        print(format_ablation(results))
    print()
    print(format_counts(results, found))
    print(f"outputs in {out}: per_class.csv, views_sweep.png, confusion_*.png, eval.json")
    return 0
