"""Training of SAFNet in two stages, on one process or many (torch.distributed).

* stage ``2d``: the ResNet-UNet alone on the preprocessed 160 x 120 frames
  (SGD, lr 0.005, random crop + horizontal flip, cross-entropy with ignore).
* stage ``3d``: the 3D branch, similarity modules and fusion head with the 2D net
  loaded from the stage-2d checkpoint and frozen (run under no_grad; its BN in
  eval mode). Adam lr 1e-3, divided by ``lr_gamma`` every ``lr_step_epochs``
  epochs (docs/design.md §1.10: 10x every 40 epochs, 150 epochs), random ``num_points``-point
  chunks with 1/3/5 greedily chosen views, augmentation.

Every epoch writes ``OUT/checkpoints/epoch_XXX.pt`` (a model checkpoint that
:func:`safnet_ros.model.safnet.load_checkpoint` reads), ``OUT/model_last.pt``,
``OUT/checkpoints/train_state.pt`` (optimizer, scheduler, epoch: what
``--resume`` needs), a row of ``OUT/metrics.csv`` and TensorBoard scalars under
``OUT/tensorboard``. Under ``torchrun`` (WORLD_SIZE > 1) it runs DDP: nccl on
GPUs, gloo on CPU; rank 0 writes the files and shows the tqdm bar.

The YAML config (docs/training.md lists every key)::

    stage: 3d
    out: runs/synth_3d
    data: {root: data/synth_pre, train_split: train, val_split: val}
    model: {preset: lite, variant: safnet, overrides: {}}
    init_2d: runs/synth_2d/model_last.pt
    train: {epochs: 150, batch_size: 32, lr: 0.001, lr_step_epochs: 40, lr_gamma: 0.1, ...}
    chunks: {num_points: 8192, views: 3, size: 1.5, chunks_per_scene: 8, ...}
"""
from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from safnet_ros.errors import ConfigError, MissingDataError

#: Defaults of every config key; a YAML file overrides any subset.
DEFAULTS: dict[str, Any] = {
    "stage": "3d",
    "out": "runs/train",
    "device": "auto",  # auto | cpu | cuda
    "seed": 0,
    "data": {"root": None, "train_split": "train", "val_split": None},
    "model": {"preset": "lite", "variant": "safnet", "overrides": {}},
    "init_2d": None,  # stage 3d: checkpoint whose 2D net is loaded and frozen
    "init_from": None,  # checkpoint whose matching weights start the run, either stage (see init_from_checkpoint)
    "train": {
        "epochs": 150,
        "batch_size": 32,
        "num_workers": 0,
        "optimizer": None,  # None: sgd for 2d, adam for 3d
        "lr": None,  # None: 0.005 (2d) / 0.001 (3d)
        "momentum": 0.9,
        "weight_decay": 0.0001,
        "lr_step_epochs": 40,
        "lr_gamma": 0.1,
        "max_steps_per_epoch": 0,  # 0 = the whole epoch
        "max_minutes": 0,  # wall-clock budget: stop after the epoch that passes it (0 = none)
        "class_weights": False,  # weight every cross-entropy by 1 / ln(1.2 + class frequency) of the train split
        "lr_2d_scale": 0.1,  # stage 3d: lr factor of the 2D tail that L_2Dunp fine-tunes (unproj_finetune_2d)
        "val_every": 1,
        "max_val_batches": 0,
        "find_unused_parameters": True,
    },
    "images": {"crop_wh": [144, 112], "flip": True, "color_jitter": 0.0},
    # min_views: None = every training chunk gets `views` views (the paper); k < views = each training
    # chunk draws its count uniformly from k..views (the rest blank), validation keeps `views`
    "chunks": {"num_points": 8192, "views": 3, "min_views": None, "size": 1.5, "chunks_per_scene": 8, "rotate": True,
               "flip": True, "color_jitter": 0.2, "min_points": 100, "centre_on_covered": True,
               "val_chunks_per_scene": 4},
}

CSV_FIELDS = ("epoch", "stage", "lr", "train_loss", "train_acc", "train_miou", "val_loss", "val_acc", "val_miou",
              "steps", "samples", "chunks_without_views", "seconds")


# --------------------------------------------------------------------------- config
def merge_config(base: Mapping[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Deep merge ``override`` into a deep copy of ``base``; unknown keys raise ConfigError (typos must not be
    silent).  The result shares no mutable value with ``base``, so filling a stage default into it never
    changes DEFAULTS for the next config."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            known = ", ".join(sorted(k for k in base if not k.startswith("_")))
            raise ConfigError(f"unknown training config key {where!r}; known keys"
                              f"{' under ' + path[:-1] if path else ''}: {known}")
        if isinstance(base[key], dict) and key != "overrides":
            if not isinstance(value, Mapping):
                raise ConfigError(f"training config key {where!r} must be a mapping, got {value!r}")
            out[key] = merge_config(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``["model.variant=concat", "train.epochs=5"]`` -> nested override dict.

    Values are parsed as YAML (``5`` int, ``0.1`` float, ``true`` bool, ``[1, 2]``
    list, anything else a string), as they would be in the config file.

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set wants KEY.PATH=VALUE (e.g. model.variant=concat), got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of {part!r}")
        node[parts[-1]] = value
    return out


def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any], sets: Sequence[str] = ()) -> dict[str, Any]:
    """The full training config: DEFAULTS overridden by a YAML file (or a dict), then by
    ``sets`` (``KEY.PATH=VALUE`` strings, the CLI's ``--set``), checked."""
    from safnet_ros.engine.config_schema import check_config

    if isinstance(path_or_dict, Mapping):
        raw = dict(path_or_dict)
        base_dir = Path.cwd()
        source = "training config"
    else:
        from safnet_ros.io_boundary import load_yaml
        from safnet_ros.validation import require_file

        p = require_file(path_or_dict, "training config")
        raw = load_yaml(p, "training config") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{p}: a training config must be a mapping")
        base_dir = p.parent
        source = str(p)
    try:  # one schema (engine/config_schema.py): types, ranges, allowed values, before any work
        cfg = merge_config(merge_config(DEFAULTS, raw), parse_sets(sets))
        check_config(cfg, DEFAULTS)
        if not cfg["data"]["root"]:
            raise ConfigError("data.root (the output of `safnet data preprocess`) is required")
        model_config(cfg)  # validates preset / variant / overrides
    except ConfigError as exc:
        raise ConfigError(f"{source}{' and --set' if sets else ''}: {exc}") from exc
    cfg["_base_dir"] = str(base_dir)
    stage = cfg["stage"]  # types and ranges were checked by check_config; here only what depends on the stage
    t = cfg["train"]
    if t["optimizer"] is None:
        t["optimizer"] = "sgd" if stage == "2d" else "adam"
    if t["lr"] is None:
        t["lr"] = 0.005 if stage == "2d" else 0.001
    return cfg


def resolve(cfg: Mapping[str, Any], path: Optional[str]) -> Optional[Path]:
    """A config path, relative to the current directory when it exists there, else to the YAML's folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(cfg["_base_dir"]) / p


def model_config(cfg: Mapping[str, Any]):
    """The :class:`SafnetConfig` of a training config (stage 3d freezes the 2D net)."""
    from safnet_ros.model.config import SafnetConfig

    m = cfg["model"]
    overrides = dict(m.get("overrides") or {})
    overrides.setdefault("variant", m.get("variant", "safnet"))
    if cfg["stage"] == "3d":
        overrides["freeze_2d"] = True
    return SafnetConfig.preset(m.get("preset", "lite"), **overrides)


# --------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
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
    import torch
    import torch.distributed as dist

    ws = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", 1))
    rk = int(rank if rank is not None else os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", rk if world_size is not None else 0))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no GPU")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", local % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    info = DistInfo(rank=rk, world_size=ws, local_rank=local, device=device)
    if ws > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": rk, "world_size": ws}
        if init_method:
            kwargs["init_method"] = init_method
        dist.init_process_group(**kwargs)
        info.initialised_here = True
    return info


def all_reduce_sum(values, dist_info: DistInfo):
    """Sum a float64 tensor over the processes (no-op on one process)."""
    import torch.distributed as dist

    if dist_info.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# --------------------------------------------------------------------------- metrics
class Confusion:
    """Running confusion matrix over labelled points/pixels (torch, on the batch's device)."""

    def __init__(self, num_classes: int, device):
        import torch

        self.k = num_classes
        self.m = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)

    def add(self, logits, labels) -> None:
        """logits (..., K) or (B, K, H, W) handled by the caller; here (n, K) and (n,)."""
        import torch

        ok = (labels >= 0) & (labels < self.k)
        pred = logits.argmax(-1)[ok]
        gt = labels[ok]
        self.m += torch.bincount(gt * self.k + pred, minlength=self.k * self.k).view(self.k, self.k).double()

    def summary(self) -> tuple[float, float]:
        """(overall accuracy, mean IoU over the classes that occur in labels or predictions)."""
        m = self.m
        total = float(m.sum())
        if total == 0:
            return float("nan"), float("nan")
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        iou = (tp[present] / union[present]).mean()
        return float(tp.sum()) / total, float(iou)


# --------------------------------------------------------------------------- the model wrapper
def _make_stage_module(stage: str, model, mconfig, class_weights=None):
    """A module whose forward returns (loss, logits (n, K) detached, labels (n,)) for one batch.

    Stage 2d wraps only the 2D net (so DDP synchronises only what trains);
    stage 3d wraps the whole model and :func:`safnet_loss`.
    """
    from torch import nn

    from safnet_ros.model.losses import masked_cross_entropy, safnet_loss

    class TwoD(nn.Module):
        def __init__(self):
            super().__init__()
            self.net2d = model.net2d

        def forward(self, images, labels):
            _, logits = self.net2d(images)
            loss = masked_cross_entropy(logits.movedim(1, -1), labels, class_weights)
            return loss, logits.detach().movedim(1, -1).reshape(-1, logits.shape[1]), labels.reshape(-1)

    class ThreeD(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch):
            out = self.model(batch)
            loss, parts = safnet_loss(out, batch, mconfig, class_weights)
            logits = out.logits.detach()
            return loss, logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1)

    if stage == "2d":
        if model.net2d is None:
            raise ConfigError(f"variant {mconfig.variant!r} has no 2D net to train in stage 2d")
        return TwoD()
    return ThreeD()


# --------------------------------------------------------------------------- data
def _datasets(cfg: Mapping[str, Any]):
    from safnet_ros.data.dataset import ChunkDataset, ImageDataset, list_scenes

    root = resolve(cfg, cfg["data"]["root"])
    train_scenes = list_scenes(root, cfg["data"]["train_split"])
    val_scenes = list_scenes(root, cfg["data"]["val_split"]) if cfg["data"]["val_split"] else None
    seed = int(cfg["seed"])
    if cfg["stage"] == "2d":
        im = cfg["images"]
        train = ImageDataset(train_scenes, train=True, crop_wh=im["crop_wh"], flip=im["flip"],
                             color_jitter=im["color_jitter"], seed=seed)
        val = ImageDataset(val_scenes, train=False) if val_scenes else None
        return train, val
    ch = cfg["chunks"]
    common = dict(num_points=ch["num_points"], num_views=ch["views"], chunk_size=ch["size"],
                  min_points=ch["min_points"], centre_on_covered=ch["centre_on_covered"])
    train = ChunkDataset(train_scenes, chunks_per_scene=ch["chunks_per_scene"], train=True, rotate=ch["rotate"],
                         flip=ch["flip"], color_jitter=ch["color_jitter"], seed=seed, min_views=ch.get("min_views"),
                         **common)
    val = ChunkDataset(val_scenes, chunks_per_scene=ch["val_chunks_per_scene"], train=False, seed=seed + 1,
                       **common) if val_scenes else None
    return train, val


def _loader(dataset, cfg, dist_info: DistInfo, shuffle: bool):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from safnet_ros.data.dataset import collate_chunks

    sampler = None
    if dist_info.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=shuffle, seed=int(cfg["seed"]), drop_last=False)
    t = cfg["train"]
    gen = torch.Generator()
    gen.manual_seed(int(cfg["seed"]) + dist_info.rank)
    return DataLoader(dataset, batch_size=int(t["batch_size"]), shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=int(t["num_workers"]), generator=gen,
                      collate_fn=collate_chunks if cfg["stage"] == "3d" else None,
                      drop_last=False, persistent_workers=False), sampler


def _to_device(batch, device, stage):
    if stage == "2d":
        images, labels = batch
        return (images.to(device, non_blocking=True), labels.to(device, non_blocking=True)), None
    chunk_batch, infos = batch
    return (chunk_batch.to(device),), infos


# --------------------------------------------------------------------------- checkpoints
def _load_2d_into(model, path: Path) -> None:
    """Copy the ``net2d.*`` weights of a checkpoint into ``model`` (ModelLoadError when they do not fit)."""
    from safnet_ros.errors import ModelLoadError
    from safnet_ros.model.safnet import load_checkpoint

    src, _, _ = load_checkpoint(path)
    if src.net2d is None or model.net2d is None:
        raise ModelLoadError(f"{path}: no 2D net to take over")
    try:
        model.net2d.load_state_dict(src.net2d.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: its 2D net does not fit this config: {' '.join(str(exc).split())[:300]}") \
            from exc
    for p in model.net2d.parameters():
        p.requires_grad_(False)
    del src


def init_from_checkpoint(model, path: Path) -> dict[str, int]:
    """Start ``model`` from the weights of checkpoint ``path`` wherever they fit.

    Every tensor with the same name and shape is copied. Two are widened: the first
    layers of PointNet++'s SA1 (``[xyz, attributes]`` inputs) and of its last FP level
    (``[coarse, attribute skip]``) take the source's leading columns when the source
    had no CSM attributes; the new attribute columns keep their initialisation (they
    are multiplied by ``attr_gain`` = 0 at the start, so the 3D path starts as the
    source's). Anything else (CSM, a head of another input size) starts fresh.

    Returns counts ``{"copied", "widened", "fresh"}`` of the model's tensors.
    """
    import torch

    from safnet_ros.model.safnet import load_checkpoint

    src, _, _ = load_checkpoint(path)
    source = src.state_dict()
    target = model.state_dict()
    widen = set()
    if getattr(model, "attr_gain", None) is not None and model.net3d is not None:
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
    del src
    return counts


# --------------------------------------------------------------------------- main loop
@dataclass
class TrainResult:
    out: Path
    epochs_run: list[int] = field(default_factory=list)
    last_checkpoint: Optional[Path] = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_time: bool = False  # train.max_minutes ended the run before train.epochs


def train(config: str | os.PathLike | Mapping[str, Any], out: Optional[str | os.PathLike] = None,
          resume: bool = False, *, rank: Optional[int] = None, world_size: Optional[int] = None,
          init_method: Optional[str] = None, progress: bool = True, sets: Sequence[str] = ()) -> TrainResult:
    """Run the training described by ``config`` (YAML path or dict) into ``out``.

    ``resume``: continue after the last finished epoch recorded in
    ``out/checkpoints/train_state.pt`` (MissingDataError when there is none).
    ``rank``/``world_size``/``init_method`` join a process group explicitly (tests,
    mp.spawn); under torchrun they come from the environment. ``sets``: config
    overrides as ``KEY.PATH=VALUE`` strings (see :func:`parse_sets`).
    """
    from safnet_ros.validation import check_output_dir

    cfg = load_config(config, sets)
    out_dir = Path(out) if out is not None else Path(cfg["out"])  # relative to the current directory
    check_output_dir(out_dir, "training output folder")  # a regular file there: refused before any work
    check_output_dir(out_dir / "checkpoints", "checkpoint folder")
    dist_info = setup_distributed(cfg["device"], init_method, rank, world_size)
    try:
        return _run_training(cfg, out_dir, resume, dist_info, progress)
    finally:
        if dist_info.initialised_here:
            import gc

            import torch.distributed as dist

            # _run_training has returned, so the DDP wrapper and everything else that
            # holds the group is released before the group goes (a rank whose DDP
            # reducer outlived the group could abort at exit).
            gc.collect()
            dist.destroy_process_group()


def _run_training(cfg: dict, out_dir: Path, resume: bool, dist_info: DistInfo, progress: bool) -> TrainResult:
    """The body of :func:`train` inside an initialised process group (if any)."""
    import numpy as np
    import torch

    from safnet_ros.model.safnet import build_model, save_checkpoint

    stage = cfg["stage"]
    t = cfg["train"]
    seed = int(cfg["seed"])
    torch.manual_seed(seed + dist_info.rank)
    np.random.seed((seed + dist_info.rank) % 2**32)
    mconfig = model_config(cfg)
    model = build_model(mconfig)
    init_from = resolve(cfg, cfg["init_from"])  # stage 2d too: fine-tune a 2D net on new data
    if init_from is not None:
        counts = init_from_checkpoint(model, init_from)
        if dist_info.is_main:
            print(f"init_from {init_from}: {counts['copied']} tensors copied, {counts['widened']} widened, "
                  f"{counts['fresh']} fresh", file=sys.stderr)
    if stage == "3d" and mconfig.uses_2d:
        init = resolve(cfg, cfg["init_2d"])
        if init is not None:
            _load_2d_into(model, init)
        else:
            for p in model.net2d.parameters():
                p.requires_grad_(False)
            if dist_info.is_main and init_from is None:
                print("warning: stage 3d without init_2d: the frozen 2D net keeps its random weights",
                      file=sys.stderr)
    ckpt_dir = out_dir / "checkpoints"
    state_path = ckpt_dir / "train_state.pt"
    start_epoch = 0
    resume_state = None
    if resume:
        if not state_path.is_file():
            raise MissingDataError(state_path, "training state to resume from")
        from safnet_ros.io_boundary import load_torch_file

        # weights_only: the state holds tensors, numbers and dicts only, and a hostile file cannot run code
        resume_state = load_torch_file(state_path, what="safnet training state")
        if not isinstance(resume_state, dict) or not {"epoch", "checkpoint", "optimizer", "scheduler"} <= set(
                resume_state):
            raise ConfigError(f"{state_path}: not a safnet training state (keys epoch, checkpoint, optimizer, "
                              "scheduler are missing)")
        if resume_state.get("stage") != stage:
            raise ConfigError(f"{state_path} is from stage {resume_state.get('stage')!r}, the config is stage "
                              f"{stage!r}: use another --out")
        from safnet_ros.model.safnet import load_checkpoint

        resumed, _, _ = load_checkpoint(out_dir / resume_state["checkpoint"])
        model.load_state_dict(resumed.state_dict())
        start_epoch = int(resume_state["epoch"]) + 1
    tail_2d = []
    if stage == "3d" and getattr(model, "finetunes_2d_tail", False):
        tail_2d = model.tail_2d_parameters()  # L_2Dunp fine-tunes them at lr * train.lr_2d_scale
        for p in tail_2d:
            p.requires_grad_(True)
    model.to(dist_info.device)
    class_weights = None
    if t["class_weights"]:
        from safnet_ros.data.class_weights import load_class_weights

        weights, source = load_class_weights(resolve(cfg, cfg["data"]["root"]), cfg["data"]["train_split"],
                                             mconfig.num_classes)
        class_weights = torch.from_numpy(weights).to(dist_info.device)
        if dist_info.is_main:
            print(f"class weights ({source}): min {weights.min():.2f} max {weights.max():.2f}", file=sys.stderr)
    module = _make_stage_module(stage, model, mconfig, class_weights).to(dist_info.device)
    tail_ids = {id(p) for p in tail_2d}
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in tail_ids]
    if not params:
        hint = " (the 2D-only baseline uses the stage-2d checkpoint as it is)" if mconfig.variant == "project2d" \
            else ""
        raise ConfigError(f"stage {stage} with variant {mconfig.variant!r} has nothing to train{hint}")
    groups = [{"params": params}]
    if tail_2d:
        groups.append({"params": tail_2d, "lr": float(t["lr"]) * float(t["lr_2d_scale"])})
    if t["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=float(t["lr"]), momentum=float(t["momentum"]),
                              weight_decay=float(t["weight_decay"]))
    else:
        opt = torch.optim.Adam(groups, lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(t["lr_step_epochs"]), gamma=float(t["lr_gamma"]))
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
    runner = module
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        runner = DDP(module, device_ids=ids, find_unused_parameters=bool(t["find_unused_parameters"]))

    train_set, val_set = _datasets(cfg)
    train_loader, train_sampler = _loader(train_set, cfg, dist_info, shuffle=True)
    val_loader = _loader(val_set, cfg, dist_info, shuffle=False)[0] if val_set is not None else None

    writer = None
    if dist_info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_epoch)
        _write_used_config(out_dir, cfg)
        _trim_csv(out_dir / "metrics.csv", start_epoch)
    result = TrainResult(out=out_dir)
    epochs = int(t["epochs"])
    global_step = int(resume_state["global_step"]) if resume_state else 0
    budget_s = float(t["max_minutes"]) * 60.0
    run_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        runner.train()
        model.train()
        conf = Confusion(mconfig.num_classes, dist_info.device)
        loss_sum = torch.zeros(3, dtype=torch.float64, device=dist_info.device)  # loss*n, n, no-view chunks
        max_steps = int(t["max_steps_per_epoch"]) or math.inf
        total = min(len(train_loader), max_steps)
        bar = None
        if progress and dist_info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"{stage} epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                       leave=False)
        lr = opt.param_groups[0]["lr"]
        for step, batch in enumerate(train_loader):
            if step >= max_steps:
                break
            inputs, infos = _to_device(batch, dist_info.device, stage)
            loss, logits, labels = runner(*inputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = inputs[0].batch_size if stage == "3d" else inputs[0].shape[0]
            loss_sum[0] += float(loss.detach()) * n
            loss_sum[1] += n
            if infos is not None:
                loss_sum[2] += sum(1 for i in infos if i["views"] == 0 and cfg["chunks"]["views"] > 0)
            conf.add(logits, labels)
            global_step += 1
            if writer is not None:
                writer.add_scalar(f"{stage}/loss_step", float(loss.detach()), global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        sched.step()
        all_reduce_sum(loss_sum, dist_info)
        all_reduce_sum(conf.m, dist_info)
        acc, miou = conf.summary()
        row = {"epoch": epoch, "stage": stage, "lr": lr,
               "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
               "train_acc": acc, "train_miou": miou, "val_loss": "", "val_acc": "", "val_miou": "",
               "steps": min(total, len(train_loader)), "samples": int(loss_sum[1]),
               "chunks_without_views": int(loss_sum[2])}
        if val_loader is not None and (epoch + 1) % int(t["val_every"]) == 0:
            row.update(_validate(runner, model, val_loader, mconfig, dist_info, stage, int(t["max_val_batches"])))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if dist_info.is_main:
            ckpt = ckpt_dir / f"epoch_{epoch:03d}.pt"
            extra = {"stage": stage, "epoch": epoch, "global_step": global_step,
                     "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))}}
            save_checkpoint(ckpt, model, mconfig, extra=extra)
            save_checkpoint(out_dir / "model_last.pt", model, mconfig, extra=extra)
            _append_csv(out_dir / "metrics.csv", row)
            tmp = state_path.with_suffix(".tmp")
            torch.save({"epoch": epoch, "global_step": global_step, "checkpoint": f"checkpoints/{ckpt.name}",
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "stage": stage}, tmp)
            os.replace(tmp, state_path)
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"{stage}/{k}", v, epoch)
            writer.flush()
            print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f} acc {acc:.3f} miou {miou:.3f}"
                  + (f" val_miou {row['val_miou']:.3f}" if row["val_miou"] != "" else "")
                  + f" ({row['seconds']:.1f} s)", file=sys.stderr)
            result.last_checkpoint = ckpt
        result.epochs_run.append(epoch)
        result.metrics.append(row)
        if dist_info.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        if budget_s > 0 and epoch + 1 < epochs:
            # Every rank must stop at the same epoch: any rank over budget stops all.
            over = torch.tensor([float(time.perf_counter() - run_start > budget_s)], dtype=torch.float64,
                                device=dist_info.device)
            if float(all_reduce_sum(over, dist_info)[0]) > 0:
                result.stopped_by_time = True
                if dist_info.is_main:
                    print(f"stopping after epoch {epoch + 1}/{epochs}: train.max_minutes "
                          f"({t['max_minutes']}) reached", file=sys.stderr)
                break
    if writer is not None:
        writer.close()
    if dist_info.initialised_here and dist_info.world_size > 1:
        import torch.distributed as dist

        # Every rank finishes its last collective before any tears the group down: a rank
        # that destroyed gloo while its peer was still talking aborted the peer (1 run in 14).
        dist.barrier()
    return result


def _validate(runner, model, loader, mconfig, dist_info: DistInfo, stage: str, max_batches: int) -> dict[str, Any]:
    import torch

    runner.eval()
    model.eval()
    conf = Confusion(mconfig.num_classes, dist_info.device)
    sums = torch.zeros(2, dtype=torch.float64, device=dist_info.device)
    module = runner.module if hasattr(runner, "module") else runner
    with torch.no_grad():
        for step, batch in enumerate(loader):
            if max_batches and step >= max_batches:
                break
            inputs, _ = _to_device(batch, dist_info.device, stage)
            loss, logits, labels = module(*inputs)
            n = inputs[0].batch_size if stage == "3d" else inputs[0].shape[0]
            sums[0] += float(loss) * n
            sums[1] += n
            conf.add(logits, labels)
    all_reduce_sum(sums, dist_info)
    all_reduce_sum(conf.m, dist_info)
    acc, miou = conf.summary()
    return {"val_loss": float(sums[0] / max(1.0, float(sums[1]))), "val_acc": acc, "val_miou": miou}


def _append_csv(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in CSV_FIELDS})


def _trim_csv(path: Path, first_epoch: int) -> None:
    """Drop CSV rows of epochs >= ``first_epoch`` (written by a run killed before its state was saved)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < first_epoch]
    if len(keep) == len(rows):
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in keep)


def _write_used_config(out_dir: Path, cfg: Mapping[str, Any]) -> None:
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in cfg.items() if not k.startswith("_")}
    (out_dir / "config_used.yaml").write_text(yaml.safe_dump(clean, sort_keys=False))


def spawn_worker(rank: int, world_size: int, init_method: str, config: Any, out: str, resume: bool) -> None:
    """``torch.multiprocessing.spawn`` target: process ``rank`` of a ``world_size`` DDP run of :func:`train`
    joining through ``init_method`` (e.g. ``file:///tmp/rdv``); the CPU test of the DDP path uses it."""
    import torch

    torch.set_num_threads(1)
    train(config, out, resume, rank=rank, world_size=world_size, init_method=init_method, progress=False)
