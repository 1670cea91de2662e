"""The schema of training configs: type, range and allowed values of every key, in one place.

:data:`SCHEMA` maps each dotted key (``train.epochs``) to a :class:`Rule`.
:func:`check_config` runs over a merged config (the trainer's ``DEFAULTS``
overridden by the YAML file and ``--set``) before any work starts, and returns
it with numbers normalised (``lr: 1e-3``, which YAML reads as a string, becomes
a float; ``epochs: 3.0`` becomes 3). Wrong types, out-of-range numbers,
unknown choices raise one :class:`ConfigError` naming the key, the file and the
accepted values (an unknown key is refused by ``train.merge_config``, which names
the known keys at its level).

Adding a config key is one line: its default in ``engine/train.py``'s
``DEFAULTS`` and, for a range or allowed values, its rule here. A key with a
default but no rule is still type-checked against its default's type (int,
float, bool, str, list, mapping), so a new key is never unchecked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping, Optional, Sequence

from safnet_ros.errors import ConfigError
from safnet_ros.model.config import PRESETS, VARIANTS  # the model's own lists: one source of truth

#: Network frame size the preprocessed data has (images.crop_wh must fit inside).
FRAME_WH = (160, 120)


@dataclass(frozen=True)
class Rule:
    """What one config value may be.

    ``kind``: ``int`` | ``float`` | ``bool`` | ``str`` | ``choice`` | ``size`` (a
    ``[w, h]`` pair) | ``list`` | ``mapping`` (free-form, checked elsewhere).
    ``lo`` / ``hi``: inclusive bounds (``lo_open``: lo excluded); ``choices``: allowed
    values; ``nullable``: ``null`` allowed (meaning "the default of the stage").
    """

    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    help: str = ""


def i(lo: Optional[int] = None, hi: Optional[int] = None, **kw: Any) -> Rule:
    return Rule("int", lo, hi, **kw)


def f(lo: Optional[float] = None, hi: Optional[float] = None, **kw: Any) -> Rule:
    return Rule("float", lo, hi, **kw)


def one_of(*choices: Any, **kw: Any) -> Rule:
    return Rule("choice", choices=tuple(choices), **kw)


BOOL = Rule("bool")
TEXT = Rule("str")
PATH = Rule("str", nullable=True)
BIG = 10**9

#: Every training-config key with its rule (docs/training.md explains what each does).
SCHEMA: dict[str, Rule] = {
    "stage": one_of("2d", "3d"),
    "out": TEXT,
    "device": one_of("auto", "cpu", "cuda"),
    "seed": i(0, 2**32 - 1),
    "data": Rule("mapping"),
    "data.root": PATH,
    "data.train_split": TEXT,
    "data.val_split": PATH,
    "model": Rule("mapping"),
    "model.preset": one_of(*PRESETS),
    "model.variant": one_of(*VARIANTS),
    "model.overrides": Rule("mapping"),  # SafnetConfig fields, checked by SafnetConfig.preset
    "init_2d": PATH,
    "init_from": PATH,
    "train": Rule("mapping"),
    "train.epochs": i(1, 100_000),
    "train.batch_size": i(1, 65_536),
    "train.num_workers": i(0, 256),
    "train.optimizer": one_of("sgd", "adam", nullable=True),
    "train.lr": f(0.0, 10.0, lo_open=True, nullable=True),
    "train.momentum": f(0.0, 1.0),
    "train.weight_decay": f(0.0, 1.0),
    "train.lr_step_epochs": i(1, 100_000),
    "train.lr_gamma": f(0.0, 1.0, lo_open=True),
    "train.max_steps_per_epoch": i(0, BIG),
    "train.max_minutes": f(0.0, 10**7),
    "train.val_every": i(1, 100_000),
    "train.max_val_batches": i(0, BIG),
    "train.find_unused_parameters": BOOL,
    "train.class_weights": BOOL,
    "train.lr_2d_scale": f(0.0, 10.0),
    "images": Rule("mapping"),
    "images.crop_wh": Rule("size", 1, None, nullable=True),
    "images.flip": BOOL,
    "images.color_jitter": f(0.0, 1.0),
    "chunks": Rule("mapping"),
    "chunks.num_points": i(1, 10_000_000),
    "chunks.views": i(0, 5),
    "chunks.min_views": i(0, 5, nullable=True),
    "chunks.size": f(0.0, 1000.0, lo_open=True),
    "chunks.chunks_per_scene": i(1, 1_000_000),
    "chunks.rotate": BOOL,
    "chunks.flip": BOOL,
    "chunks.color_jitter": f(0.0, 1.0),
    "chunks.min_points": i(0, 10_000_000),
    "chunks.centre_on_covered": BOOL,
    "chunks.val_chunks_per_scene": i(1, 1_000_000),
}


def rule_from_default(default: Any) -> Rule:
    """The rule of a key that has a default but no entry in :data:`SCHEMA`: its default's type."""
    if default is None:
        return Rule("any")
    if isinstance(default, bool):
        return BOOL
    if isinstance(default, int):
        return Rule("int")
    if isinstance(default, float):
        return Rule("float")
    if isinstance(default, str):
        return TEXT
    if isinstance(default, (list, tuple)):
        return Rule("list")
    if isinstance(default, Mapping):
        return Rule("mapping")
    return Rule("any")


def _range_text(rule: Rule) -> str:
    parts = []
    if rule.lo is not None:
        parts.append(f"{'>' if rule.lo_open else '>='} {rule.lo:g}")
    if rule.hi is not None:
        parts.append(f"<= {rule.hi:g}")
    return " and ".join(parts)


def check_value(key: str, value: Any, rule: Rule) -> Any:
    """``value`` normalised for ``rule`` (ints, floats), or ConfigError naming ``key``."""
    if value is None:
        if rule.nullable or rule.kind == "any":
            return None
        raise ConfigError(f"{key} must not be null")
    kind = rule.kind

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key} must be {expected}, got {value!r}")

    if kind == "any":
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "choice":
        if value not in rule.choices or isinstance(value, bool) != any(isinstance(c, bool) for c in rule.choices):
            raise bad("one of " + ", ".join(repr(c) for c in rule.choices) + (" or null" if rule.nullable else ""))
        return value
    if kind == "mapping":
        if not isinstance(value, Mapping):
            raise bad("a mapping (key: value)")
        return value
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        return list(value)
    if kind == "size":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise bad(f"[width, height] in pixels (within the {FRAME_WH[0]}x{FRAME_WH[1]} frames)")
        w, h = value
        if not (1 <= w <= FRAME_WH[0] and 1 <= h <= FRAME_WH[1]):
            raise bad(f"[width, height] within the {FRAME_WH[0]}x{FRAME_WH[1]} frames")
        return [int(w), int(h)]
    if kind == "int":
        if isinstance(value, bool):
            raise bad("an integer (not true/false)")
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad("an integer" + (f" {_range_text(rule)}" if _range_text(rule) else ""))
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
    else:  # pragma: no cover - a typo in SCHEMA
        raise AssertionError(f"unknown rule kind {kind!r} for {key}")
    below = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    if below or (rule.hi is not None and value > rule.hi):
        raise bad(("an integer " if kind == "int" else "") + _range_text(rule))
    return value


#: Mappings whose keys are not listed in the defaults (checked by their consumer).
FREE_MAPPINGS: frozenset[str] = frozenset({"model.overrides"})


def check_config(cfg: MutableMapping[str, Any], defaults: Mapping[str, Any], path: str = "") -> None:
    """Check every value of the merged ``cfg`` against :data:`SCHEMA` (or its default's type) in place."""
    for key, default in defaults.items():
        if str(key).startswith("_") or key not in cfg:
            continue
        where = f"{path}{key}"
        rule = SCHEMA.get(where) or rule_from_default(default)
        cfg[key] = check_value(where, cfg[key], rule)
        if rule.kind == "mapping" and isinstance(default, Mapping) and where not in FREE_MAPPINGS:
            check_config(cfg[key], default, where + ".")


def known_keys(defaults: Mapping[str, Any], path: str = "") -> Sequence[str]:
    """Every dotted leaf key of ``defaults`` (for docs and error messages)."""
    out: list[str] = []
    for key, value in defaults.items():
        where = f"{path}{key}"
        if isinstance(value, Mapping) and where not in FREE_MAPPINGS:
            out.extend(known_keys(value, where + "."))
        else:
            out.append(where)
    return out
