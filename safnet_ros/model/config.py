"""SAFNet configuration: one dataclass, two presets, the Table III switches.

* ``paper``: the numbers of docs/design.md §1.
* ``lite``: a smaller model for real time on a CPU (docs/model.md lists every
  difference and why).

``variant`` selects the model :func:`safnet_ros.model.safnet.build_model` builds
(docs/model.md, "Switches and variants"). A config survives ``to_dict`` /
``from_dict``; :meth:`SafnetConfig.validate` raises :class:`ConfigError` for any
out-of-range or inconsistent value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from safnet_ros.errors import ConfigError

__all__ = ["SafnetConfig", "PRESETS", "VARIANTS", "LAYOUT", "LEGACY_LAYOUT", "NQ_MODES", "CSM_CENTRES"]

VARIANTS: tuple[str, ...] = ("safnet", "pointnet2", "project2d", "concat")
PRESETS: tuple[str, ...] = ("paper", "lite")
NQ_MODES: tuple[str, ...] = ("knn", "ball")
CSM_CENTRES: tuple[str, ...] = ("height", "xyz")

#: Upper bounds of the sizes (a typo such as resnet_width=1000000 is one error, not a 36 TB allocation).
MAX_WIDTH = 4096
MAX_CLASSES = 1000
MAX_NEIGHBOURS = 1024
MAX_POINTS = 1_000_000
#: The float fields (each must be finite: a NaN initial value trains NaN weights).
FLOAT_FIELDS: tuple[str, ...] = ("radius", "a1", "a2", "b1", "b2", "a3", "a4", "b3", "dropout", "w_2d", "w_3d",
                                 "w_unproj", "unproj_radius")

#: The model layout this code builds (layout 1, checkpoints without a ``layout`` key:
#: docs/model.md, "Checkpoint layouts").
LAYOUT = 2
#: The values of the new keys that reproduce a layout-1 model without CSM
#: (:func:`safnet_ros.model.safnet.load_checkpoint` converts such checkpoints; a
#: layout-1 model WITH CSM cannot be converted and is refused).
LEGACY_LAYOUT: dict[str, Any] = {"layout": 2, "nq_mode": "ball", "csm_attr_gain": False,
                                 "unproj_finetune_2d": False}


@dataclass
class SafnetConfig:
    """Every hyper-parameter of SAFNet. Lengths in metres.

    Build one with :meth:`preset`; direct construction gives the ``paper`` values.
    """

    preset_name: str = "paper"  # which preset this config started from
    layout: int = 2  # model layout version (checkpoints of layout 1 lack the key; see LEGACY_LAYOUT)
    variant: str = "safnet"
    num_classes: int = 20

    # 2D branch (ResNet-UNet); images 160x120 in the paper.
    resnet_depth: int = 34
    stem_stride: int = 1
    resnet_width: int = 64  # base width of the ResNet (64 = torchvision, loads ImageNet weights)
    feat_2d: int = 64
    freeze_2d: bool = False  # frozen: no L_2D, 2D net in eval mode and without gradients

    # 2D -> 3D aggregation (MVPNet): k nearest Q points per input point.
    agg_k: int = 3
    agg_mlp: tuple[int, ...] = (64, 64, 64)

    # Neighbourhoods N_P(i) (up to k points within radius) and N_Q(i) (nq_mode: docs/model.md step 2).
    k: int = 64
    radius: float = 0.15
    nq_mode: str = "knn"

    # GSM (eqs. 3-5): initial values of the learnable scalars.
    a1: float = 0.25
    a2: float = 0.25
    b1: float = 0.0
    b2: float = 0.0
    a3: float = 1.0
    a4: float = 0.1
    b3: float = 0.0
    gsm_forward: bool = True
    gsm_backward: bool = True
    gsm_block: int = 4096  # points per block for the backward (N, Kq, Kp) distances

    # CSM (eqs. 6-8).
    csm: bool = True
    csm_point_width: int = 64  # width of the per-neighbour sigma(W [x_i, f_c]) of eq. 7
    csm_oe_width: int = 64  # channels of each orientation-encoding convolution
    csm_mlp: tuple[int, ...] = (64, 64, 64)
    csm_out: int = 64  # the linear layer giving the contextual feature f
    csm_centre: str = "height"  # centre term of the enrichment: "height" | "xyz" (model/csm.py)
    csm_attr_gain: bool = True  # M(N_P) enters PointNet++ times a learnable per-channel gain, 0 at init

    # 3D branch (PointNet++ SSG).
    pn_npoints: tuple[int, ...] = (2048, 512, 128, 32)
    pn_radii: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    pn_nsample: int = 32
    pn_mlps: tuple[tuple[int, ...], ...] = ((32, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 512))
    pn_fp_mlps: tuple[tuple[int, ...], ...] = ((256, 256), (256, 256), (256, 128), (128, 128, 128))
    feat_3d: int = 128

    # Fusion head.
    channel_attention: bool = True
    se_reduction: int = 4
    confidence_gate: bool = False  # our extension: F2D weighted by the 2D net's confidence (design.md §1.8)
    head_mlp: tuple[int, ...] = (192, 192, 192)
    dropout: float = 0.5

    # Losses (eq. 11).
    aux_losses: bool = True
    unproj_loss: bool = True
    w_2d: float = 0.2
    w_3d: float = 0.8
    w_unproj: float = 0.8
    unproj_radius: float = 0.05  # r': a Q point takes the label of the nearest P point within r'
    unproj_finetune_2d: bool = True  # stage 3d: L_2Dunp fine-tunes the 2D net's up1 + classifier (model.md step 8)

    extra: dict = field(default_factory=dict)  # free-form notes kept with checkpoints

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str = "paper", **overrides: Any) -> "SafnetConfig":
        """The named preset with ``overrides`` applied, validated.

        Raises:
            ConfigError: unknown preset, unknown field or invalid value.
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown SAFNet preset {name!r}; choose one of {PRESETS}")
        return cls.from_dict({"preset_name": name, **(_LITE if name == "lite" else {}), **overrides})

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SafnetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a SAFNet config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown SAFNet config field(s): {', '.join(unknown)}")
        try:
            config = cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"bad SAFNet config: {exc}") from exc
        config.normalise()
        config.validate()
        return config

    def normalise(self) -> None:
        """Lists (from JSON/YAML) back to tuples, numbers to their types.

        Raises:
            ConfigError: a value that is not a (nested) list of numbers where one is needed.
        """
        def number(name: str, v: Any, kind: type) -> Any:
            x = None
            if not isinstance(v, bool) and isinstance(v, (int, float, str)):
                try:
                    x = float(v)
                except (ValueError, OverflowError):
                    pass
            if x is None or (kind is int and not (math.isfinite(x) and x.is_integer())):
                raise ConfigError(f"SAFNet config ({self.preset_name}): {name} is malformed: must be "
                                  f"{'an integer' if kind is int else 'a number'}, got {str(v)[:60]!r}")
            if kind is float:
                return x
            return int(v) if isinstance(v, int) else int(x)

        def seq(name: str, v: Any) -> tuple:
            if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
                raise ConfigError(f"SAFNet config ({self.preset_name}): {name} is malformed: must be a list, got {str(v)[:60]!r}")
            return tuple(v)

        for name in ("agg_mlp", "csm_mlp", "head_mlp", "pn_npoints"):
            setattr(self, name, tuple(number(name, v, int) for v in seq(name, getattr(self, name))))
        self.pn_radii = tuple(number("pn_radii", v, float) for v in seq("pn_radii", self.pn_radii))
        for name in ("pn_mlps", "pn_fp_mlps"):
            setattr(self, name, tuple(tuple(number(name, v, int) for v in seq(name, m))
                                      for m in seq(name, getattr(self, name))))
        for name in ("layout", "num_classes", "resnet_depth", "stem_stride", "resnet_width", "feat_2d", "agg_k", "k",
                     "gsm_block", "csm_point_width", "csm_oe_width", "csm_out", "pn_nsample", "feat_3d",
                     "se_reduction"):
            setattr(self, name, number(name, getattr(self, name), int))
        for name in FLOAT_FIELDS:
            setattr(self, name, number(name, getattr(self, name), float))

    # ------------------------------------------------------------------ checks
    @property
    def uses_2d(self) -> bool:
        return self.variant != "pointnet2"

    @property
    def uses_3d(self) -> bool:
        return self.variant != "project2d"

    @property
    def pn_in_channels(self) -> int:
        """Per-point attributes fed to PointNet++ besides xyz (the CSM output, or 0)."""
        return self.csm_mlp[-1] if (self.variant == "safnet" and self.csm) else 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"SAFNet config ({self.preset_name}): {what}")

        need(self.layout == LAYOUT, f"layout must be {LAYOUT} (this code's model layout), got {self.layout}")
        need(self.nq_mode in NQ_MODES, f"nq_mode must be one of {NQ_MODES}, got {self.nq_mode!r}")
        need(self.csm_centre in CSM_CENTRES, f"csm_centre must be one of {CSM_CENTRES}, got {self.csm_centre!r}")
        need(self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}")
        need(self.preset_name in PRESETS, f"preset_name must be one of {PRESETS}, got {self.preset_name!r}")
        need(2 <= self.num_classes <= MAX_CLASSES, f"num_classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        need(self.resnet_depth in (18, 34), f"resnet_depth must be 18 or 34, got {self.resnet_depth}")
        need(self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {self.stem_stride}")
        for name in FLOAT_FIELDS:
            need(math.isfinite(getattr(self, name)), f"{name} must be a finite number, got {getattr(self, name)}")
        need(all(math.isfinite(r) for r in self.pn_radii), f"pn_radii must be finite, got {self.pn_radii}")
        need(8 <= self.resnet_width <= MAX_WIDTH, f"resnet_width must be in [8, {MAX_WIDTH}], got {self.resnet_width}")
        for name in ("feat_2d", "feat_3d", "csm_point_width", "csm_oe_width", "csm_out"):
            need(1 <= getattr(self, name) <= MAX_WIDTH, f"{name} must be in [1, {MAX_WIDTH}], got {getattr(self, name)}")
        need(1 <= self.agg_k <= MAX_NEIGHBOURS, f"agg_k must be in [1, {MAX_NEIGHBOURS}], got {self.agg_k}")
        need(1 <= self.k <= MAX_NEIGHBOURS, f"k (neighbourhood size) must be in [1, {MAX_NEIGHBOURS}], got {self.k}")
        need(1 <= self.pn_nsample <= MAX_NEIGHBOURS,
             f"pn_nsample must be in [1, {MAX_NEIGHBOURS}], got {self.pn_nsample}")
        need(1 <= self.gsm_block <= MAX_POINTS, f"gsm_block must be in [1, {MAX_POINTS}], got {self.gsm_block}")
        need(len(self.pn_npoints) <= 8 and max(self.pn_npoints, default=1) <= MAX_POINTS,
             f"pn_npoints: at most 8 levels of <= {MAX_POINTS} centroids, got {self.pn_npoints}")
        for name in ("agg_mlp", "csm_mlp", "head_mlp"):
            widths = getattr(self, name)
            need(1 <= len(widths) <= 16 and 1 <= min(widths) and max(widths) <= MAX_WIDTH,
                 f"{name}: 1 to 16 layers of width in [1, {MAX_WIDTH}], got {widths}")
        for name in ("pn_mlps", "pn_fp_mlps"):
            need(all(1 <= len(m) <= 16 and 1 <= min(m) and max(m) <= MAX_WIDTH for m in getattr(self, name)),
                 f"{name}: 1 to 16 layers of width in [1, {MAX_WIDTH}] per level, got {getattr(self, name)}")
        need(0 < self.radius <= 5.0, f"radius must be in (0, 5] metres, got {self.radius}")
        need(0 < self.unproj_radius <= 5.0, f"unproj_radius must be in (0, 5] metres, got {self.unproj_radius}")
        need(self.a1 != 0 and self.a2 != 0, "a1 and a2 must be non-zero (they divide distances)")
        levels = len(self.pn_npoints)
        need(levels >= 1 and len(self.pn_radii) == len(self.pn_mlps) == len(self.pn_fp_mlps) == levels,
             "pn_npoints, pn_radii, pn_mlps and pn_fp_mlps must have the same length >= 1")
        need(min(self.pn_npoints) >= 1 and min(self.pn_radii) > 0, "PointNet++ centroids and radii must be positive")
        need(self.pn_fp_mlps[-1][-1] == self.feat_3d,
             f"the last FP MLP must end with feat_3d={self.feat_3d}, got {self.pn_fp_mlps[-1]}")
        need(self.se_reduction >= 1, "se_reduction must be >= 1")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(min(self.w_2d, self.w_3d, self.w_unproj) >= 0, "loss weights must be >= 0")


# What the lite preset changes (docs/model.md explains each).
_LITE: dict[str, Any] = {
    "resnet_depth": 18,
    "stem_stride": 2,
    "resnet_width": 32,
    "agg_mlp": (32, 64),
    "k": 8,
    "csm_point_width": 16,
    "csm_oe_width": 32,
    "csm_mlp": (32, 32, 32),
    "csm_out": 32,
    "pn_npoints": (512, 128, 32, 8),
    "pn_nsample": 16,
    "pn_mlps": ((32, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 256)),
    "pn_fp_mlps": ((256, 256), (256, 128), (128, 128), (128,)),
    "head_mlp": (128, 128, 128),
}


def json_ready(value: Any) -> Any:
    """Plain Python types, recursively: tuples -> lists, numpy/torch scalars and arrays
    -> numbers and lists (for JSON and for ``torch.load(weights_only=True)``)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):  # numpy / torch values
        return json_ready(value.tolist())
    return str(value)
