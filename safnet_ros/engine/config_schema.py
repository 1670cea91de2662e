"""The training config as a typed dataclass tree, loaded and checked in one pass.

:class:`TrainConfig` holds one dataclass per YAML section, each field's rule
(type, range, allowed values) in its ``metadata``; :func:`from_mapping` raises one
:class:`ConfigError` line naming the dotted key of an unknown key or a bad value.
:func:`load_yaml_config` refuses YAML aliases (an alias bomb of a few hundred
bytes would expand into gigabytes) and files over 1 MiB. Adding a key is one
line in its section's dataclass; docs/training.md lists every key.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from safnet_ros.errors import ConfigError, DataFormatError
from safnet_ros.io_boundary import read_text
from safnet_ros.model.config import PRESETS, VARIANTS  # the model's own lists: one source of truth
from safnet_ros.validation import bounds_text

#: Network frame size the preprocessed data has (images.crop_wh must fit inside).
FRAME_WH = (160, 120)
#: A training config is a few kB; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
BIG = 10**9
AMP_MODES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Rule:
    """What one config value may be.

    ``kind``: ``int`` | ``float`` | ``bool`` | ``str`` | ``choice`` | ``size`` (a
    ``[w, h]`` pair within the frames) | ``views`` (an int or a ``[min, max]`` pair)
    | ``mapping`` (free-form, checked by its consumer). ``lo`` / ``hi``: inclusive
    bounds (``lo_open``: lo excluded); ``choices``: allowed values; ``nullable``:
    ``null`` allowed (meaning "the default of the stage" or "none").
    """

    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False


def _f(default: Any, kind: str, lo: Optional[float] = None, hi: Optional[float] = None, **kw: Any) -> Any:
    """A dataclass field with its rule (mutable defaults copied per instance)."""
    rule = Rule(kind, lo, hi, **kw)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _choice(default: Any, *choices: Any, nullable: bool = False) -> Any:
    return field(default=default, metadata={"rule": Rule("choice", choices=tuple(choices), nullable=nullable)})


# --------------------------------------------------------------------------- sections
@dataclass
class DataSection:
    root: Optional[str] = _f(None, "str", nullable=True)  # the output of `safnet data preprocess` (required)
    train_split: str = _f("train", "str")
    val_split: Optional[str] = _f(None, "str", nullable=True)


@dataclass
class ModelSection:
    preset: str = _choice("lite", *PRESETS)
    variant: str = _choice("safnet", *VARIANTS)
    overrides: dict = _f({}, "mapping")  # SafnetConfig fields, checked (ranges too) by SafnetConfig.preset


@dataclass
class TrainSection:
    epochs: int = _f(150, "int", 1, 100_000)
    batch_size: int = _f(32, "int", 1, 65_536)
    num_workers: int = _f(0, "int", 0, 256)
    optimizer: Optional[str] = _choice(None, "sgd", "adam", nullable=True)  # None: sgd (2d), adam (3d)
    lr: Optional[float] = _f(None, "float", 0.0, 10.0, lo_open=True, nullable=True)  # None: 0.005 / 0.001
    momentum: float = _f(0.9, "float", 0.0, 1.0)
    weight_decay: float = _f(0.0001, "float", 0.0, 1.0)
    lr_step_epochs: int = _f(40, "int", 1, 100_000)
    lr_gamma: float = _f(0.1, "float", 0.0, 1.0, lo_open=True)
    max_steps_per_epoch: int = _f(0, "int", 0, BIG)  # 0 = the whole epoch
    max_minutes: float = _f(0.0, "float", 0.0, 10**7)  # stop after the epoch that passes it (0 = none)
    class_weights: bool = _f(False, "bool")
    lr_2d_scale: float = _f(0.1, "float", 0.0, 10.0)
    val_every: int = _f(1, "int", 1, 100_000)
    max_val_batches: int = _f(0, "int", 0, BIG)
    find_unused_parameters: bool = _f(True, "bool")
    amp: str = _choice("bf16", *AMP_MODES)  # autocast; fp16 on CUDA only (docs/training.md: why bf16)
    profile: bool = _f(False, "bool")  # OUT/profile.json: where each step's time goes (engine/step_profile.py)


@dataclass
class ImagesSection:  # stage 2d
    crop_wh: Optional[list] = _f([144, 112], "size", 1, nullable=True)
    flip: bool = _f(True, "bool")
    color_jitter: float = _f(0.0, "float", 0.0, 1.0)


@dataclass
class ChunksSection:  # stage 3d
    num_points: int = _f(8192, "int", 1, 10_000_000)
    views: Any = _f(3, "views", 0, 5)  # k, or [lo, hi] per training chunk (then views = hi, min_views = lo)
    min_views: Optional[int] = _f(None, "int", 0, 5, nullable=True)
    size: float = _f(1.5, "float", 0.0, 1000.0, lo_open=True)
    chunks_per_scene: int = _f(8, "int", 1, 1_000_000)
    rotate: bool = _f(True, "bool")
    flip: bool = _f(True, "bool")
    color_jitter: float = _f(0.2, "float", 0.0, 1.0)
    min_points: int = _f(100, "int", 0, 10_000_000)
    centre_on_covered: bool = _f(True, "bool")
    val_chunks_per_scene: int = _f(4, "int", 1, 1_000_000)


@dataclass
class CameraSection:
    """Real-camera appearance (data/augment.py), on stage-2d frames and stage-3d views (colour and depth).

    Each effect is applied to a training image with probability ``prob``, at a strength drawn uniformly
    up to its knob; a knob at 0 turns that effect off. docs/training.md explains each.
    """

    prob: float = _f(0.5, "float", 0.0, 1.0)
    exposure: float = _f(0.5, "float", 0.0, 3.0)  # max |log2 gain| of the whole image
    white_balance: float = _f(0.15, "float", 0.0, 1.0)  # max relative gain of red and blue against green
    noise: float = _f(0.02, "float", 0.0, 0.5)  # max read-noise std (fraction of full scale); shot noise scales
    motion_blur: int = _f(7, "int", 0, 63)  # max length in pixels of a straight motion-blur streak
    defocus_blur: float = _f(1.5, "float", 0.0, 15.0)  # max radius in pixels of the defocus disc
    jpeg_quality: int = _f(30, "int", 0, 100)  # lowest JPEG quality drawn (up to 95); 0 = no JPEG
    vignetting: float = _f(0.4, "float", 0.0, 1.0)  # max darkening at the corners
    depth_edge_holes: float = _f(0.1, "float", 0.0, 10.0)  # relative depth jump that drops the edge pixels
    depth_dark_holes: float = _f(0.06, "float", 0.0, 1.0)  # luminance below which depth is dropped
    depth_shiny_holes: float = _f(0.97, "float", 0.0, 1.0)  # luminance above which depth is dropped (1 = off)


@dataclass
class TrainConfig:
    """A whole training config (docs/training.md). Build it with :func:`from_mapping` or ``load_config``."""

    stage: str = _choice("3d", "2d", "3d")
    out: str = _f("runs/train", "str")
    device: str = _choice("auto", "auto", "cpu", "cuda")
    seed: int = _f(0, "int", 0, 2**32 - 1)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    init_2d: Optional[str] = _f(None, "str", nullable=True)  # stage 3d: checkpoint whose 2D net is frozen
    init_from: Optional[str] = _f(None, "str", nullable=True)  # either stage: matching weights start the run
    train: TrainSection = field(default_factory=TrainSection)
    images: ImagesSection = field(default_factory=ImagesSection)
    chunks: ChunksSection = field(default_factory=ChunksSection)
    camera: CameraSection = field(default_factory=CameraSection)
    base_dir: str = field(default=".", metadata={"internal": True})  # relative paths: the YAML's folder

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the user-visible keys (for config_used.yaml and the resume check)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "base_dir"}


# --------------------------------------------------------------------------- checking
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: Rule kinds that are one type check: (the type, what the error says is expected).
_TYPE_KINDS = {"bool": (bool, "true or false"), "str": (str, "a string"), "mapping": (Mapping, "a mapping (key: value)")}


def check_value(key: str, value: Any, rule: Rule) -> Any:
    """``value`` normalised for ``rule`` (ints, floats), or ConfigError naming ``key``."""
    if value is None:
        if rule.nullable:
            return None
        raise ConfigError(f"{key} must not be null")
    kind = rule.kind

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key} must be {expected}, got {_short(value)}")

    if kind in _TYPE_KINDS:
        expected_type, expected = _TYPE_KINDS[kind]
        if not isinstance(value, expected_type):
            raise bad(expected)
        return dict(value) if kind == "mapping" else value
    if kind == "choice":
        if isinstance(value, (bool, list, dict)) or value not in rule.choices:
            raise bad("one of " + ", ".join(repr(c) for c in rule.choices if c is not None)
                      + (" or null" if rule.nullable else ""))
        return value
    if kind == "size":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise bad(f"[width, height] in pixels (within the {FRAME_WH[0]}x{FRAME_WH[1]} frames)")
        w, h = value
        if not (1 <= w <= FRAME_WH[0] and 1 <= h <= FRAME_WH[1]):
            raise bad(f"[width, height] within the {FRAME_WH[0]}x{FRAME_WH[1]} frames")
        return [int(w), int(h)]
    if kind == "views":
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise bad("an integer or a [min, max] pair of view counts")
            lo, hi = (check_value(key, v, Rule("int", rule.lo, rule.hi)) for v in value)
            if lo > hi:
                raise bad("[min, max] with min <= max")
            return [lo, hi]
        return check_value(key, value, Rule("int", rule.lo, rule.hi))
    if kind == "int":
        if isinstance(value, bool):
            raise bad("an integer (not true/false)")
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad(f"an integer {bounds_text(rule.lo, rule.hi, rule.lo_open)}".rstrip())
    elif kind == "float":
        if isinstance(value, bool):
            raise bad("a number (not true/false)")
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("a finite number")
    else:  # pragma: no cover - a typo in a field's rule
        raise AssertionError(f"unknown rule kind {kind!r} for {key}")
    below = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    if below or (rule.hi is not None and value > rule.hi):
        raise bad(("an integer " if kind == "int" else "") + bounds_text(rule.lo, rule.hi, rule.lo_open))
    return value


def from_mapping(cls: type, data: Any, path: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data`` (a mapping), every value checked.

    Raises:
        ConfigError: one line naming the dotted key of the first unknown key or bad value.
    """
    where = path[:-1] if path else "the training config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping (key: value), got {_short(data)}")
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown training config key {path + str(key)!r}; known keys"
                              f"{' under ' + path[:-1] if path else ''}: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(f.default_factory):  # a section (MISSING is not a dataclass)
            values[name] = from_mapping(f.default_factory, data[name], f"{path}{name}.")
        else:
            values[name] = check_value(f"{path}{name}", data[name], f.metadata["rule"])
    return cls(**values)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two plain mappings (``--set`` over the YAML); ``model.overrides`` merges too."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- YAML
class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors' aliases (``*name``) before building anything."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                              "allowed in a training config")
        return super().compose_node(parent, index)


def parse_yaml_text(text: str, what: str) -> Any:
    """``yaml.safe_load`` of ``text`` without aliases; ConfigError naming ``what`` on malformed YAML."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML: {' '.join(str(exc).split())[:200]}") from None


def load_yaml_config(path: str | os.PathLike) -> Any:
    """The parsed YAML of a training config file (a regular file, :func:`~safnet_ros.validation.require_file`
    checked; size-capped, no aliases)."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise DataFormatError(p, f"is {size} bytes: a training config is a few kB (limit {MAX_CONFIG_BYTES})")
    return parse_yaml_text(read_text(p, "training config"), str(p))


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``["model.variant=concat", "train.epochs=5"]`` -> nested override dict.

    Values are parsed as YAML (``5`` int, ``0.1`` float, ``true`` bool, ``[1, 2]``
    list, anything else a string), as they would be in the config file.

    Raises:
        ConfigError: an item without ``=`` or with an empty key, or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set wants KEY.PATH=VALUE (e.g. model.variant=concat), got {item!r}")
        value = parse_yaml_text(text, f"--set {item!r}: the value") if text.strip() else ""
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of {part!r}")
        node[parts[-1]] = value
    return out
