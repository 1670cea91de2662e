"""Training of SAFNet in two stages, on one process or many (torch.distributed).

Stage ``2d`` trains the 2D net alone; stage ``3d`` the rest, with the 2D net
loaded from the stage-2d checkpoint and frozen. The run is built as
torchvision's segmentation reference and Pointcept's Trainer do it:
:func:`build_data`, :func:`build_model`, :func:`build_optimizer`, then per
epoch :func:`train_one_epoch`, :func:`validate` and :func:`save_state`. Under
``torchrun`` (WORLD_SIZE > 1) it runs DDP; rank 0 writes the files.
The config keys, the stages and the run folder: docs/training.md.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from safnet_ros import __version__
from safnet_ros.data.augment import CameraAugment
from safnet_ros.data.class_weights import load_class_weights
from safnet_ros.data.dataset import ChunkDataset, ImageDataset, collate_chunks, list_scenes
from safnet_ros.engine.config_schema import TrainConfig, from_mapping, load_yaml_config, merge, parse_sets
from safnet_ros.engine.inference import autocast_context
from safnet_ros.engine.metrics import ConfusionMatrix
from safnet_ros.engine.step_profile import StepProfile
from safnet_ros.errors import ConfigError, MissingDataError, ModelLoadError, SafnetError
from safnet_ros.io_boundary import load_torch_file
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.losses import masked_cross_entropy, safnet_loss
from safnet_ros.model.safnet import build_model as build_safnet
from safnet_ros.model.safnet import load_checkpoint, save_checkpoint
from safnet_ros.output_dir import output_lock
from safnet_ros.validation import check_output_dir, require_file

__all__ = ["TrainConfig", "load_config", "parse_sets", "train", "TrainResult", "TrainingDivergedError",
           "build_data", "build_model", "build_optimizer", "train_one_epoch", "validate", "save_state",
           "init_from_checkpoint", "DEFAULTS"]

#: The default value of every key, as a plain nested dict (docs, tests).
DEFAULTS: dict[str, Any] = TrainConfig().to_dict()

CSV_FIELDS = ("epoch", "stage", "lr", "train_loss", "train_acc", "train_miou", "val_loss", "val_acc", "val_miou",
              "steps", "samples", "chunks_without_views", "seconds")

#: Keys that may change between a run and its ``--resume`` (budgets, paths, logging); any other
#: difference from the config recorded in train_state.pt is refused, naming the keys.
RESUMABLE_KEYS = frozenset({
    "out", "device", "data.root", "data.val_split", "init_2d", "init_from", "train.epochs", "train.max_minutes",
    "train.max_steps_per_epoch", "train.num_workers", "train.val_every", "train.max_val_batches",
    "train.find_unused_parameters", "train.amp", "train.profile", "chunks.val_chunks_per_scene"})

#: What the trainer writes in its output folder (``--overwrite`` removes these and nothing else).
MANIFEST = ".safnet-output.json"
RUN_FILES = ("model_last.pt", "model_last.pt.tmp", "metrics.csv", "config_used.yaml", "profile.json", MANIFEST)
RUN_GLOBS = (("checkpoints", "epoch_[0-9][0-9][0-9]*.pt"), ("checkpoints", "epoch_[0-9][0-9][0-9]*.pt.tmp"),
             ("checkpoints", "train_state.pt"), ("checkpoints", "train_state.tmp"),
             ("tensorboard", "events.out.tfevents.*"))


class TrainingDivergedError(SafnetError, RuntimeError):
    """The loss or the weights became non-finite: the run stops and nothing non-finite is saved."""


# --------------------------------------------------------------------------- config
def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any], sets: Sequence[str] = ()) -> TrainConfig:
    """The full training config: defaults overridden by a YAML file (or a dict), then by
    ``sets`` (``KEY.PATH=VALUE`` strings, the CLI's ``--set``), checked.

    Raises:
        ConfigError: one line naming the file (or "training config") and the first bad key.
    """
    if isinstance(path_or_dict, Mapping):
        raw: Any = dict(path_or_dict)
        base_dir = Path.cwd()
        source = "training config"
    else:
        p = require_file(path_or_dict, "training config")
        raw = load_yaml_config(p)
        raw = {} if raw is None else raw
        base_dir = p.parent
        source = str(p)
    try:
        overrides = parse_sets(sets)
        if isinstance(raw, Mapping):
            raw = merge(raw, overrides)
        cfg = from_mapping(TrainConfig, raw)
        if not cfg.data.root:
            raise ConfigError("data.root (the output of `safnet data preprocess`) is required")
        _normalise_views(cfg)
        model_config(cfg)  # validates preset / variant / overrides (ranges included)
    except ConfigError as exc:
        raise ConfigError(f"{source}{' and --set' if sets else ''}: {exc}") from None
    cfg.base_dir = str(base_dir)
    if cfg.train.optimizer is None:
        cfg.train.optimizer = "sgd" if cfg.stage == "2d" else "adam"
    if cfg.train.lr is None:
        cfg.train.lr = 0.005 if cfg.stage == "2d" else 0.001
    return cfg


def _normalise_views(cfg: TrainConfig) -> None:
    """``chunks.views: [lo, hi]`` -> ``views = hi``, ``min_views = lo``; checks min_views <= views."""
    ch = cfg.chunks
    if isinstance(ch.views, list):
        lo, hi = ch.views
        if ch.min_views is not None and ch.min_views != lo:
            raise ConfigError(f"chunks.min_views ({ch.min_views}) contradicts chunks.views {ch.views}: give one")
        ch.views, ch.min_views = hi, lo
    if ch.min_views is not None and ch.min_views > ch.views:
        raise ConfigError(f"chunks.min_views must be <= chunks.views ({ch.views}), got {ch.min_views}")


def resolve(cfg: TrainConfig, path: Optional[str]) -> Optional[Path]:
    """A config path, relative to the current directory when it exists there, else to the YAML's folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(cfg.base_dir) / p


def model_config(cfg: TrainConfig) -> SafnetConfig:
    """The :class:`SafnetConfig` of a training config (stage 3d freezes the 2D net)."""
    overrides = dict(cfg.model.overrides)
    overrides.setdefault("variant", cfg.model.variant)
    if cfg.stage == "3d":
        overrides["freeze_2d"] = True
    try:
        return SafnetConfig.preset(cfg.model.preset, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"model.overrides: {exc}") from None


# --------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    """This process's place in the process group and its device."""

    rank: int = 0
    world_size: int = 1
    device: Any = "cpu"
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str, init_method: Optional[str] = None, rank: Optional[int] = None,
                      world_size: Optional[int] = None) -> DistInfo:
    """Join the process group when there is more than one process (torchrun env or explicit args).

    Backend nccl on CUDA, gloo on CPU. Returns the rank and device of this process.
    """
    ws = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", 1))
    rk = int(rank if rank is not None else os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", rk if world_size is not None else 0))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no GPU")
    device = torch.device("cuda", local % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    info = DistInfo(rank=rk, world_size=ws, device=device)
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=init_method or None,
                                rank=rk, world_size=ws)
        info.initialised_here = True
    return info


def all_reduce_sum(values: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """Sum a tensor over the processes, in place (no-op on one process)."""
    if dist_info.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# --------------------------------------------------------------------------- metrics
def _add_confusion(counts: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add argmax(logits (n, K)) against labels (n,) to the (K, K) int64 ``counts`` on their device, so
    no step waits for the host (labels outside 0..K-1 are ignored)."""
    k = counts.shape[0]
    ok = (labels >= 0) & (labels < k)
    counts += torch.bincount(labels[ok] * k + logits.argmax(-1)[ok], minlength=k * k).view(k, k)


def _epoch_metrics(sums: torch.Tensor, counts: torch.Tensor, dist_info: DistInfo
                   ) -> tuple[float, float, float]:
    """Sum ``sums`` (loss * n, n, ...) and the confusion ``counts`` over the processes, in place; returns
    (mean loss, overall accuracy, mIoU), the last two as :class:`~safnet_ros.engine.metrics.ConfusionMatrix`
    defines them."""
    all_reduce_sum(sums, dist_info)
    cm = ConfusionMatrix(len(counts))
    cm.square[:] = all_reduce_sum(counts, dist_info).cpu().numpy()
    return float(sums[0] / max(1.0, float(sums[1]))), cm.overall_accuracy(), cm.miou()


# --------------------------------------------------------------------------- the per-stage step modules
class TwoDStep(nn.Module):
    """Stage 2d: the 2D net alone (so DDP synchronises only what trains).

    forward(images (B, 3, H, W), labels (B, H, W)) -> (loss, logits (n, K) detached, labels (n,)).
    """

    def __init__(self, net2d: nn.Module, class_weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.net2d = net2d
        self.class_weights = class_weights

    def forward(self, images, labels):
        _, logits = self.net2d(images)
        logits = logits.float()
        loss = masked_cross_entropy(logits.movedim(1, -1), labels, self.class_weights)
        return loss, logits.detach().movedim(1, -1).reshape(-1, logits.shape[1]), labels.reshape(-1)


class ThreeDStep(nn.Module):
    """Stage 3d: the whole model and :func:`safnet_loss` (eq. 11) on a ChunkBatch.

    forward(batch) -> (loss, logits (n, K) detached, labels (n,)).
    """

    def __init__(self, model: nn.Module, mconfig: SafnetConfig, class_weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.model = model
        self.mconfig = mconfig
        self.class_weights = class_weights

    def forward(self, batch):
        out = self.model(batch)
        loss, _parts = safnet_loss(out, batch, self.mconfig, self.class_weights)
        logits = out.logits.detach()
        return loss, logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1)


# --------------------------------------------------------------------------- build: data
@dataclass
class DataParts:
    train_loader: DataLoader
    val_loader: Optional[DataLoader]


def _datasets(cfg: TrainConfig):
    root = resolve(cfg, cfg.data.root)
    train_scenes = list_scenes(root, cfg.data.train_split)
    val_scenes = list_scenes(root, cfg.data.val_split) if cfg.data.val_split else None
    camera = CameraAugment.from_section(cfg.camera)
    if cfg.stage == "2d":
        im = cfg.images
        train_set = ImageDataset(train_scenes, train=True, crop_wh=im.crop_wh, flip=im.flip,
                                 color_jitter=im.color_jitter, seed=cfg.seed, camera=camera)
        val_set = ImageDataset(val_scenes, train=False) if val_scenes else None
        return train_set, val_set
    ch = cfg.chunks
    common = dict(num_points=ch.num_points, num_views=ch.views, chunk_size=ch.size, min_points=ch.min_points,
                  centre_on_covered=ch.centre_on_covered)
    train_set = ChunkDataset(train_scenes, chunks_per_scene=ch.chunks_per_scene, train=True, rotate=ch.rotate,
                             flip=ch.flip, color_jitter=ch.color_jitter, seed=cfg.seed, min_views=ch.min_views,
                             camera=camera, **common)
    val_set = ChunkDataset(val_scenes, chunks_per_scene=ch.val_chunks_per_scene, train=False, seed=cfg.seed + 1,
                           **common) if val_scenes else None
    return train_set, val_set


def _loader(dataset, cfg: TrainConfig, dist_info: DistInfo, shuffle: bool) -> DataLoader:
    sampler = None
    if dist_info.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=shuffle, seed=cfg.seed, drop_last=False)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=cfg.train.num_workers,
                      generator=torch.Generator().manual_seed(cfg.seed + dist_info.rank),
                      collate_fn=collate_chunks if cfg.stage == "3d" else None)


def build_data(cfg: TrainConfig, dist_info: DistInfo) -> DataParts:
    """The training and validation loaders of the config's stage (under DDP with a DistributedSampler)."""
    train_set, val_set = _datasets(cfg)
    return DataParts(_loader(train_set, cfg, dist_info, shuffle=True),
                     _loader(val_set, cfg, dist_info, shuffle=False) if val_set is not None else None)


def _to_device(batch, device: torch.device, stage: str):
    """(the step module's inputs on ``device``, the chunk infos (stage 3d) or None, the batch size)."""
    if stage == "2d":
        images, labels = batch
        return (images.to(device, non_blocking=True), labels.to(device, non_blocking=True)), None, len(images)
    chunk_batch, infos = batch
    return (chunk_batch.to(device),), infos, chunk_batch.batch_size


# --------------------------------------------------------------------------- build: model
@dataclass
class ModelParts:
    model: nn.Module  # the SafnetModel (what checkpoints hold)
    mconfig: SafnetConfig
    module: nn.Module  # the stage's step module (TwoDStep / ThreeDStep) on the device
    tail_2d: list  # stage 3d: the 2D tail that L_2Dunp fine-tunes at lr * train.lr_2d_scale


def _load_2d_into(model: nn.Module, path: Path) -> None:
    """Copy the ``net2d.*`` weights of a checkpoint into ``model`` (ModelLoadError when they do not fit)."""
    src, _, _ = load_checkpoint(path)
    if src.net2d is None or model.net2d is None:
        raise ModelLoadError(f"{path}: no 2D net to take over")
    try:
        model.net2d.load_state_dict(src.net2d.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: its 2D net does not fit this config: {' '.join(str(exc).split())[:300]}") \
            from exc


def init_from_checkpoint(model: nn.Module, path: Path) -> dict[str, int]:
    """Start ``model`` from the weights of checkpoint ``path`` wherever they fit.

    Every tensor with the same name and shape is copied. Two are widened: the first
    layers of PointNet++'s SA1 (``[xyz, attributes]`` inputs) and of its last FP level
    (``[coarse, attribute skip]``) take the source's leading columns when the source
    had no CSM attributes; the new attribute columns keep their initialisation (they
    are multiplied by ``attr_gain`` = 0 at the start, so the 3D path starts as the
    source's). Anything else (CSM, a head of another input size) starts fresh.

    Returns counts ``{"copied", "widened", "fresh"}`` of the model's tensors.
    """
    src, _, _ = load_checkpoint(path)
    source = src.state_dict()
    target = model.state_dict()
    widen = set()
    if model.attr_gain is not None and model.net3d is not None:
        widen = {"net3d.sa.0.mlp.0.weight", f"net3d.fp.{len(model.net3d.fp) - 1}.mlp.0.weight"}
    counts = {"copied": 0, "widened": 0, "fresh": 0}
    with torch.no_grad():
        for name, value in target.items():
            old = source.get(name)
            if old is not None and old.shape == value.shape:
                value.copy_(old)
                counts["copied"] += 1
            elif (old is not None and name in widen and old.dim() == value.dim() and old.shape[0] == value.shape[0]
                  and old.shape[1] < value.shape[1] and old.shape[2:] == value.shape[2:]):
                value[:, : old.shape[1]].copy_(old)
                counts["widened"] += 1
            else:
                counts["fresh"] += 1
    return counts


def build_model(cfg: TrainConfig, dist_info: DistInfo) -> ModelParts:
    """The model of the config (init_from / init_2d loaded, 2D net frozen in stage 3d), on the device,
    wrapped in the stage's step module (class weights included)."""
    mconfig = model_config(cfg)
    model = build_safnet(mconfig)
    init_from = resolve(cfg, cfg.init_from)  # stage 2d too: fine-tune a 2D net on new data
    if init_from is not None:
        counts = init_from_checkpoint(model, init_from)
        if dist_info.is_main:
            print(f"init_from {init_from}: {counts['copied']} tensors copied, {counts['widened']} widened, "
                  f"{counts['fresh']} fresh", file=sys.stderr)
    if cfg.stage == "3d" and mconfig.uses_2d:
        init = resolve(cfg, cfg.init_2d)
        if init is not None:
            _load_2d_into(model, init)
        elif dist_info.is_main and init_from is None:
            print("warning: stage 3d without init_2d: the frozen 2D net keeps its random weights", file=sys.stderr)
        for p in model.net2d.parameters():
            p.requires_grad_(False)
    tail_2d: list = []
    if cfg.stage == "3d" and model.finetunes_2d_tail:
        tail_2d = model.tail_2d_parameters()
        for p in tail_2d:
            p.requires_grad_(True)
    model.to(dist_info.device)
    class_weights = None
    if cfg.train.class_weights:
        weights, source = load_class_weights(resolve(cfg, cfg.data.root), cfg.data.train_split,
                                             mconfig.num_classes)
        class_weights = torch.from_numpy(weights).to(dist_info.device)
        if dist_info.is_main:
            print(f"class weights ({source}): min {weights.min():.2f} max {weights.max():.2f}", file=sys.stderr)
    if cfg.stage == "2d":
        if model.net2d is None:
            raise ConfigError(f"variant {mconfig.variant!r} has no 2D net to train in stage 2d")
        module: nn.Module = TwoDStep(model.net2d, class_weights)
    else:
        module = ThreeDStep(model, mconfig, class_weights)
    return ModelParts(model, mconfig, module.to(dist_info.device), tail_2d)


# --------------------------------------------------------------------------- build: optimizer
def build_optimizer(cfg: TrainConfig, parts: ModelParts):
    """(optimizer, StepLR scheduler) over the trainable parameters (the 2D tail in its own group)."""
    t = cfg.train
    tail_ids = {id(p) for p in parts.tail_2d}
    params = [p for p in parts.module.parameters() if p.requires_grad and id(p) not in tail_ids]
    if not params:
        hint = " (the 2D-only baseline uses the stage-2d checkpoint as it is)" \
            if parts.mconfig.variant == "project2d" else ""
        raise ConfigError(f"stage {cfg.stage} with variant {parts.mconfig.variant!r} has nothing to train{hint}")
    groups = [{"params": params}]
    if parts.tail_2d:
        groups.append({"params": parts.tail_2d, "lr": t.lr * t.lr_2d_scale})
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step_epochs, gamma=t.lr_gamma)
    return opt, sched


# --------------------------------------------------------------------------- the output folder
def run_has_checkpoints(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a training run's checkpoints or state."""
    ckpt = out_dir / "checkpoints"
    return (out_dir / "model_last.pt").is_file() or (ckpt.is_dir() and (
        (ckpt / "train_state.pt").is_file() or any(ckpt.glob("epoch_*.pt"))))


def trainer_files(out_dir: Path) -> list[Path]:
    """The files in ``out_dir`` that the trainer writes (by name; nothing else is ever removed)."""
    found = [out_dir / name for name in RUN_FILES if (out_dir / name).is_file()]
    for sub, pattern in RUN_GLOBS:
        if (out_dir / sub).is_dir():
            found.extend(p for p in sorted((out_dir / sub).glob(pattern)) if p.is_file() and not p.is_symlink())
    return found


def prepare_output(out_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse to train over an existing run unless told how (``--resume`` or ``--overwrite``).

    ``--overwrite`` removes only :func:`trainer_files` (and the trainer's sub-folders when that
    leaves them empty); a user's notes or any other file in the folder stay.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if resume or not run_has_checkpoints(out_dir):
        return
    if not overwrite:
        raise ConfigError(f"{out_dir} holds a training run (checkpoints): continue it with --resume, replace it "
                          "with --overwrite, or choose another --out")
    if not is_main:
        return
    for p in trainer_files(out_dir):
        p.unlink()
    for sub in ("checkpoints", "tensorboard"):
        d = out_dir / sub
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()


# --------------------------------------------------------------------------- resume
def _flatten(d: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and path + k != "model.overrides":
            out.update(_flatten(v, f"{path}{k}."))
        else:
            out[path + k] = v
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: frozenset = RESUMABLE_KEYS,
                       prefix: str = "") -> list[str]:
    """``key: run X, now Y`` for every flattened key whose value differs (``ignore``d keys aside)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or key.startswith("_"):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{prefix}{key}: run {a.get(key)!r}, now {b.get(key)!r}")
    return diffs


def _check_state(state: Any, state_path: Path, stage: str) -> None:
    """ConfigError (one line naming the file) for a training state that cannot be resumed from."""
    if not isinstance(state, dict) or not {"epoch", "checkpoint", "optimizer", "scheduler"} <= set(state):
        raise ConfigError(f"{state_path}: not a safnet training state (keys epoch, checkpoint, optimizer, "
                          "scheduler are missing)")
    if state.get("stage") != stage:
        raise ConfigError(f"{state_path} is from stage {state.get('stage')!r}, the config is stage {stage!r}: "
                          "use another --out")
    for key in ("epoch", "global_step"):
        v = state.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{state_path}: {key} must be an integer >= 0, got {v!r}")
    if not isinstance(state["checkpoint"], str) or Path(state["checkpoint"]).is_absolute() \
            or ".." in Path(state["checkpoint"]).parts:
        raise ConfigError(f"{state_path}: checkpoint must be a path inside the run, got {state['checkpoint']!r}")
    opt = state["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list) or not opt["param_groups"]:
        raise ConfigError(f"{state_path}: the optimizer state is empty or malformed (no param_groups)")
    if not isinstance(state["scheduler"], dict) or "last_epoch" not in state["scheduler"]:
        raise ConfigError(f"{state_path}: the scheduler state is empty or malformed (no last_epoch)")


def restore_state(cfg: TrainConfig, out_dir: Path, parts: ModelParts, opt, sched) -> tuple[int, int]:
    """Load ``OUT/checkpoints/train_state.pt`` and its checkpoint into the model, optimizer and scheduler.

    Returns (first epoch to run, global step). Refuses (ConfigError naming what differs) a config that
    differs from the run's in anything but :data:`RESUMABLE_KEYS`, a model of another configuration,
    and a malformed state (empty optimizer, non-integer epoch, ...).
    """
    state_path = out_dir / "checkpoints" / "train_state.pt"
    if not state_path.is_file():
        raise MissingDataError(state_path, "training state to resume from")
    state = load_torch_file(state_path, what="safnet training state")
    _check_state(state, state_path, cfg.stage)
    if isinstance(state.get("config"), dict):
        diffs = config_differences(state["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(f"--resume: the config differs from the run's ({state_path}): " + "; ".join(diffs)
                              + ". Resume with the run's config (OUT/config_used.yaml) or train into another --out")
    ckpt_path = out_dir / state["checkpoint"]
    resumed, resumed_config, _ = load_checkpoint(ckpt_path)
    diffs = config_differences({k: v for k, v in resumed_config.to_dict().items() if k != "extra"},
                               {k: v for k, v in parts.mconfig.to_dict().items() if k != "extra"},
                               ignore=frozenset(), prefix="model ")
    if diffs:
        raise ConfigError(f"--resume: {ckpt_path} was trained with another model: " + "; ".join(diffs)
                          + ". Resume with the run's config or train into another --out")
    parts.model.load_state_dict(resumed.state_dict())
    del resumed
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise ConfigError(f"{state_path}: its optimizer or scheduler state does not fit this model: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    return state["epoch"] + 1, int(state.get("global_step", 0))


# --------------------------------------------------------------------------- one epoch
@dataclass
class Run:
    """Everything one training run holds between epochs."""

    cfg: TrainConfig
    dist_info: DistInfo
    out_dir: Path
    parts: ModelParts
    data: DataParts
    runner: nn.Module  # parts.module, or its DDP wrapper
    opt: Any
    sched: Any
    scaler: Any
    writer: Any = None
    global_step: int = 0
    profile: Optional[StepProfile] = None  # train.profile: where each step's time goes

    @property
    def stage(self) -> str:
        return self.cfg.stage


def _phase(run: Run, name: str):
    """The :class:`StepProfile` phase ``name`` (a no-op with ``train.profile`` off)."""
    return run.profile.phase(name) if run.profile is not None else contextlib.nullcontext()


def _all_finite(loss: torch.Tensor, dist_info: DistInfo) -> bool:
    ok = torch.isfinite(loss.detach()).all().to(torch.float64).reshape(1)
    if dist_info.world_size > 1:  # every rank stops at the same step
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def train_one_epoch(run: Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training loader (at most ``train.max_steps_per_epoch`` steps): the CSV row's
    training columns. Raises TrainingDivergedError at the first non-finite loss, naming the step."""
    cfg, dist_info, stage = run.cfg, run.dist_info, run.stage
    device = dist_info.device
    loader = run.data.train_loader
    loader.dataset.set_epoch(epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    run.runner.train()
    run.parts.model.train()
    k = run.parts.mconfig.num_classes
    counts = torch.zeros(k, k, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, n, no-view chunks
    max_steps = cfg.train.max_steps_per_epoch or math.inf
    total = min(len(loader), max_steps)
    bar = tqdm(total=total, desc=f"{stage} epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
               file=sys.stderr, leave=False, disable=not (progress and dist_info.is_main))
    lr = run.opt.param_groups[0]["lr"]
    batches = iter(loader)
    for step in range(total):
        with _phase(run, "data"):
            batch = next(batches, None)
            if batch is None:
                break
            inputs, infos, n = _to_device(batch, device, stage)
        with _phase(run, "forward"), autocast_context(cfg.train.amp, device):
            loss, logits, labels = run.runner(*inputs)
        if not _all_finite(loss, dist_info):
            bar.close()
            raise TrainingDivergedError(
                f"training loss is {float(loss.detach())} at step {run.global_step + 1} (epoch {epoch + 1}, "
                f"batch {step + 1}): stopped, nothing of this epoch was saved (lower train.lr, use train.amp: "
                "fp32, or check model.overrides and the data)")
        run.opt.zero_grad(set_to_none=True)
        with _phase(run, "backward"):
            run.scaler.scale(loss).backward()
        with _phase(run, "optimizer"):
            run.scaler.step(run.opt)
            run.scaler.update()
        if run.profile is not None:
            run.profile.end_step(n)
        value = float(loss.detach())
        sums[0] += value * n
        sums[1] += n
        if infos is not None and cfg.chunks.views > 0:
            sums[2] += sum(1 for i in infos if i["views"] == 0)
        _add_confusion(counts, logits, labels)
        run.global_step += 1
        if run.writer is not None:
            run.writer.add_scalar(f"{stage}/loss_step", value, run.global_step)
        bar.set_postfix(loss=f"{value:.3f}")
        bar.update(1)
    bar.close()
    run.sched.step()
    loss, acc, miou = _epoch_metrics(sums, counts, dist_info)
    return {"epoch": epoch, "stage": stage, "lr": lr, "train_loss": loss, "train_acc": acc,
            "train_miou": miou, "val_loss": "", "val_acc": "", "val_miou": "",
            "steps": min(total, len(loader)), "samples": int(sums[1]), "chunks_without_views": int(sums[2])}


def validate(run: Run) -> dict[str, Any]:
    """Loss, accuracy and mIoU on the validation loader (at most ``train.max_val_batches`` batches)."""
    dist_info, stage = run.dist_info, run.stage
    device = dist_info.device
    run.runner.eval()
    run.parts.model.eval()
    k = run.parts.mconfig.num_classes
    counts = torch.zeros(k, k, dtype=torch.int64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    module = run.parts.module  # not the DDP wrapper: no gradient sync in evaluation
    max_batches = run.cfg.train.max_val_batches
    with torch.no_grad():
        for step, batch in enumerate(run.data.val_loader):
            if max_batches and step >= max_batches:
                break
            inputs, _, n = _to_device(batch, device, stage)
            with autocast_context(run.cfg.train.amp, device):
                loss, logits, labels = module(*inputs)
            sums[0] += float(loss) * n
            sums[1] += n
            _add_confusion(counts, logits, labels)
    loss, acc, miou = _epoch_metrics(sums, counts, dist_info)
    return {"val_loss": loss, "val_acc": acc, "val_miou": miou}


def non_finite_weights(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` that hold NaN or inf."""
    return [name for name, v in model.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_state(run: Run, epoch: int, row: Mapping[str, Any]) -> Path:
    """Write the epoch checkpoint, ``model_last.pt``, the CSV row and ``train_state.pt`` (rank 0 only).

    Raises TrainingDivergedError, writing nothing, when a weight is non-finite.
    """
    bad = non_finite_weights(run.parts.model)
    if bad:
        raise TrainingDivergedError(f"{len(bad)} weight tensor(s) are non-finite after epoch {epoch + 1} "
                                    f"(first: {bad[0]}): no checkpoint written")
    ckpt_dir = run.out_dir / "checkpoints"
    ckpt = ckpt_dir / f"epoch_{epoch:03d}.pt"
    extra = {"stage": run.stage, "epoch": epoch, "global_step": run.global_step,
             "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))}}
    save_checkpoint(ckpt, run.parts.model, run.parts.mconfig, extra=extra)
    save_checkpoint(run.out_dir / "model_last.pt", run.parts.model, run.parts.mconfig, extra=extra)
    _write_csv(run.out_dir / "metrics.csv", [row])
    state_path = ckpt_dir / "train_state.pt"
    tmp = state_path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "global_step": run.global_step, "checkpoint": f"checkpoints/{ckpt.name}",
                "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "stage": run.stage,
                "config": run.cfg.to_dict()}, tmp)
    os.replace(tmp, state_path)
    if run.writer is not None:
        for k, v in row.items():
            if isinstance(v, float) and math.isfinite(v):
                run.writer.add_scalar(f"{run.stage}/{k}", v, epoch)
        run.writer.flush()
    return ckpt


# --------------------------------------------------------------------------- the run
@dataclass
class TrainResult:
    out: Path
    epochs_run: list[int] = field(default_factory=list)
    last_checkpoint: Optional[Path] = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_time: bool = False  # train.max_minutes ended the run before train.epochs


def train(config: str | os.PathLike | Mapping[str, Any] | TrainConfig, out: Optional[str | os.PathLike] = None,
          resume: bool = False, *, overwrite: bool = False, rank: Optional[int] = None,
          world_size: Optional[int] = None, init_method: Optional[str] = None, progress: bool = True,
          sets: Sequence[str] = ()) -> TrainResult:
    """Run the training described by ``config`` (YAML path, dict or TrainConfig) into ``out``.

    ``resume``: continue after the last finished epoch recorded in
    ``out/checkpoints/train_state.pt`` (MissingDataError when there is none; ConfigError
    naming what differs when the config does not match the run's). ``overwrite``:
    replace a run that ``out`` holds (only the trainer's files are removed); without
    either, a folder holding checkpoints is refused. ``rank``/``world_size``/
    ``init_method`` join a process group explicitly (tests, mp.spawn); under torchrun
    they come from the environment. ``sets``: config overrides as ``KEY.PATH=VALUE``
    strings (see :func:`parse_sets`).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config, sets)
    out_dir = Path(out) if out is not None else Path(cfg.out)  # relative to the current directory
    check_output_dir(out_dir, "training output folder")  # a regular file there: refused before any work
    check_output_dir(out_dir / "checkpoints", "checkpoint folder")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.train.amp == "fp16" and not cuda:
        raise ConfigError("train.amp: fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    if cfg.train.amp == "bf16" and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp: this GPU has no bf16; use fp16 or fp32")
    dist_info = setup_distributed(cfg.device, init_method, rank, world_size)
    try:
        # one run per output folder: a second one is refused, not raced (the main rank holds the lock)
        with output_lock(out_dir, "training run") if dist_info.is_main else contextlib.nullcontext():
            prepare_output(out_dir, resume, overwrite, dist_info.is_main)
            return _run_training(cfg, out_dir, resume, dist_info, progress)
    finally:
        if dist_info.initialised_here:
            # the DDP wrapper goes before the group (a DDP reducer that outlives it can abort at exit)
            gc.collect()
            dist.destroy_process_group()


def _open_writer(out_dir: Path, start_epoch: int):
    """TensorBoard writer (an optional dependency: None, with a warning, when it is missing)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard is optional (None with a warning)
    except ImportError:
        print("warning: tensorboard is not installed: no TensorBoard scalars (metrics.csv has them)",
              file=sys.stderr)
        return None
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_epoch)


def _run_training(cfg: TrainConfig, out_dir: Path, resume: bool, dist_info: DistInfo, progress: bool
                  ) -> TrainResult:
    """The body of :func:`train` inside an initialised process group (if any)."""
    torch.manual_seed(cfg.seed + dist_info.rank)
    np.random.seed((cfg.seed + dist_info.rank) % 2**32)
    parts = build_model(cfg, dist_info)
    opt, sched = build_optimizer(cfg, parts)
    start_epoch, global_step = restore_state(cfg, out_dir, parts, opt, sched) if resume else (0, 0)
    runner = parts.module
    if dist_info.world_size > 1:
        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        runner = DistributedDataParallel(parts.module, device_ids=ids,
                                         find_unused_parameters=cfg.train.find_unused_parameters)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16")
    run = Run(cfg, dist_info, out_dir, parts, build_data(cfg, dist_info), runner, opt, sched, scaler,
              global_step=global_step, profile=StepProfile(dist_info.device) if cfg.train.profile else None)
    if dist_info.is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out_dir / MANIFEST).write_text(json.dumps({"command": "safnet train", "version": __version__}) + "\n")
        (out_dir / "config_used.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _trim_csv(out_dir / "metrics.csv", start_epoch)
        run.writer = _open_writer(out_dir, start_epoch)
    result = TrainResult(out=out_dir)
    try:
        _fit(run, start_epoch, progress, result)
    finally:
        if run.writer is not None:
            run.writer.close()
    if run.profile is not None and dist_info.is_main:
        print(run.profile.table(), file=sys.stderr)
        (out_dir / "profile.json").write_text(json.dumps(run.profile.to_dict(), indent=2))
    if dist_info.initialised_here:
        # every rank finishes its last collective before any tears the group down
        dist.barrier()
    return result


def _fit(run: Run, start_epoch: int, progress: bool, result: TrainResult) -> None:
    """The epoch loop: train, validate, save, and the wall-clock budget."""
    cfg, dist_info = run.cfg, run.dist_info
    epochs = cfg.train.epochs
    budget_s = cfg.train.max_minutes * 60.0
    run_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        row = train_one_epoch(run, epoch, progress)
        if run.data.val_loader is not None and (epoch + 1) % cfg.train.val_every == 0:
            row.update(validate(run))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if dist_info.is_main:
            result.last_checkpoint = save_state(run, epoch, row)
            print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
                  f"miou {row['train_miou']:.3f}"
                  + (f" val_miou {row['val_miou']:.3f}" if row["val_miou"] != "" else "")
                  + f" ({row['seconds']:.1f} s, {row['samples'] / max(row['seconds'], 1e-9):.2f} "
                  + ("chunks" if run.stage == "3d" else "crops") + "/s)", file=sys.stderr)
        result.epochs_run.append(epoch)
        result.metrics.append(row)
        if dist_info.world_size > 1:
            dist.barrier()
        if budget_s > 0 and epoch + 1 < epochs:
            # Every rank must stop at the same epoch: any rank over budget stops all.
            over = torch.tensor([float(time.perf_counter() - run_start > budget_s)], dtype=torch.float64,
                                device=dist_info.device)
            if float(all_reduce_sum(over, dist_info)[0]) > 0:
                result.stopped_by_time = True
                if dist_info.is_main:
                    print(f"stopping after epoch {epoch + 1}/{epochs}: train.max_minutes "
                          f"({cfg.train.max_minutes}) reached", file=sys.stderr)
                break


# --------------------------------------------------------------------------- files
def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], mode: str = "a") -> None:
    """Append (``mode`` "a") or write ("w") the :data:`CSV_FIELDS` of ``rows``; a new file gets the header."""
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if f.tell() == 0:
            w.writeheader()
        w.writerows(rows)


def _trim_csv(path: Path, first_epoch: int) -> None:
    """Drop CSV rows of epochs >= ``first_epoch`` (written by a run killed before its state was saved)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < first_epoch]
    if len(keep) == len(rows):
        return
    _write_csv(path, keep, "w")

