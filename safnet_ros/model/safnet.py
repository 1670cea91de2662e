"""The assembled SAFNet model, its baselines, and checkpoint files.

:func:`build_model` turns a :class:`SafnetConfig` into a :class:`SafnetModel`; the
``variant`` picks the full model or a baseline (``safnet``, ``pointnet2``,
``project2d``, ``concat``: docs/model.md, "Switches and variants"), all through
the same ``forward(batch: ChunkBatch) -> SafnetOutput``.

Bad input is defined in docs/model.md ("Defined behaviour on bad input"). Points
with a non-finite coordinate are masked out of every neighbourhood and of
PointNet++ (their rows hold a stand-in, a valid point of the same chunk); that is
also how a batch of chunks of different sizes is padded. Q points with a
non-finite coordinate or a ``q_pixel`` outside ``[0, V*H*W)`` count as padding.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch
from torch import nn

from safnet_ros.errors import ConfigError, ModelLoadError
from safnet_ros.geometry.neighbors import gather
from safnet_ros.io_boundary import load_torch_file
from safnet_ros.model.aggregate import Aggregate2D
from safnet_ros.model.batch import ChunkBatch, SafnetOutput
from safnet_ros.model.config import LEGACY_LAYOUT, SafnetConfig, json_ready
from safnet_ros.model.csm import ContextualSimilarity
from safnet_ros.model.fusion import ChannelAttention, ConfidenceGate, FusionHead, pixel_confidence
from safnet_ros.model.gsm import GeometricSimilarity, find_neighbourhoods
from safnet_ros.model.pointnet2 import PointNet2SSG
from safnet_ros.model.resnet_unet import ResNetUNet
from safnet_ros.model.stages import stage
from safnet_ros.validation import path_kind

__all__ = ["SafnetModel", "build_model", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "safnet_ros.checkpoint"
CHECKPOINT_VERSION = 1


class _Sanitised:
    """The batch with non-finite coordinates and bad pixel indices made harmless."""

    def __init__(self, batch: ChunkBatch):
        points = batch.points
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < 1:
            raise ConfigError(f"points must be (B, N>=1, 3), got {tuple(points.shape)}")
        b, n = points.shape[:2]
        self.point_valid = torch.isfinite(points).all(dim=-1)  # (B, N)
        # Stand-in for invalid points: the first valid point of the chunk (origin if none).
        first = torch.argmax(self.point_valid.to(torch.uint8), dim=1)  # (B,)
        stand_in = torch.nan_to_num(points[torch.arange(b, device=points.device), first], 0.0, 0.0, 0.0)
        self.points = torch.where(self.point_valid.unsqueeze(-1), points, stand_in.unsqueeze(1)).contiguous()

        images = batch.images
        if images.dim() != 5 or images.shape[2] != 3:
            raise ConfigError(f"images must be (B, V, 3, H, W), got {tuple(images.shape)}")
        self.num_views = int(images.shape[1])
        pixels = self.num_views * int(images.shape[3]) * int(images.shape[4])
        if batch.pixel_features is not None and batch.pixel_features.shape[1] > 0:
            pixels = int(batch.pixel_features.shape[1])  # a table shared by the batch may hold more views
        q, q_mask, q_pixel = batch.q_points, batch.q_mask, batch.q_pixel
        if q.dim() != 3 or q.shape[-1] != 3 or q.shape[0] != b:
            raise ConfigError(f"q_points must be (B, M, 3) with B={b}, got {tuple(q.shape)}")
        if q.shape[1] == 0:  # one padding point keeps every gather well defined
            q = points.new_zeros(b, 1, 3)
            q_mask = torch.zeros(b, 1, dtype=torch.bool, device=points.device)
            q_pixel = torch.zeros(b, 1, dtype=torch.long, device=points.device)
        q_mask = q_mask.bool() & torch.isfinite(q).all(dim=-1) & (q_pixel >= 0) & (q_pixel < pixels)
        self.q_points = torch.where(q_mask.unsqueeze(-1), q, torch.zeros_like(q)).contiguous()
        self.q_mask = q_mask
        self.q_pixel = torch.where(q_mask, q_pixel, torch.zeros_like(q_pixel))


def pixel_rows(logits_2d: torch.Tensor) -> torch.Tensor:
    """``(B, V, K, H, W)`` per-view logits as ``(B, V*H*W, K)`` rows, indexed by ``q_pixel``."""
    return logits_2d.permute(0, 1, 3, 4, 2).reshape(logits_2d.shape[0], -1, logits_2d.shape[2])


class SafnetModel(nn.Module):
    """SAFNet or one of its baselines, as ``config.variant`` says (see module doc)."""

    def __init__(self, config: SafnetConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        variant = c.variant
        self.net2d = (ResNetUNet(c.resnet_depth, c.feat_2d, c.num_classes, c.stem_stride, c.resnet_width)
                      if c.uses_2d else None)
        fuse = variant in ("safnet", "concat")
        self.aggregate = Aggregate2D(c.feat_2d, c.agg_mlp, c.agg_k) if fuse else None
        self.net3d = None
        if c.uses_3d:
            self.net3d = PointNet2SSG(c.pn_in_channels, c.pn_npoints, c.pn_radii, c.pn_nsample, c.pn_mlps,
                                      c.pn_fp_mlps, c.feat_3d)
        self.aux3d = nn.Linear(c.feat_3d, c.num_classes) if fuse else None
        is_safnet = variant == "safnet"
        self.gsm = None
        if is_safnet and (c.gsm_forward or c.gsm_backward):
            self.gsm = GeometricSimilarity(c.a1, c.a2, c.b1, c.b2, c.a3, c.a4, c.b3, c.gsm_forward,
                                           c.gsm_backward, c.gsm_block)
        self.csm = ContextualSimilarity(c.csm_point_width, c.csm_oe_width, c.csm_mlp, c.csm_out, c.radius,
                                        c.csm_centre) if (is_safnet and c.csm) else None
        # M(N_P) joins PointNet++'s xyz times this per-channel gain, 0 at init: the 3D
        # path starts as the CSM-off model's and lets the attributes in as they help.
        self.attr_gain = nn.Parameter(torch.zeros(c.csm_mlp[-1])) \
            if (self.csm is not None and c.csm_attr_gain) else None
        use_se = is_safnet and c.channel_attention
        self.se_2d = ChannelAttention(c.agg_mlp[-1], c.se_reduction) if use_se else None
        self.se_3d = ChannelAttention(c.feat_3d, c.se_reduction) if use_se else None
        self.confidence_gate = ConfidenceGate() if (is_safnet and c.confidence_gate) else None
        head_in = {"safnet": c.agg_mlp[-1] + c.feat_3d, "concat": c.agg_mlp[-1] + c.feat_3d,
                   "pointnet2": c.feat_3d}.get(variant)
        self.head = FusionHead(head_in, c.head_mlp, c.num_classes, c.dropout) if head_in else None

    # ------------------------------------------------------------------ 2D side
    def train(self, mode: bool = True) -> "SafnetModel":
        super().train(mode)
        if self.net2d is not None and self.config.freeze_2d:
            self.net2d.eval()  # frozen: BN keeps its statistics
        return self

    @property
    def finetunes_2d_tail(self) -> bool:
        """Stage 3d fine-tunes the 2D net's last decoder stage and classifier by L_2Dunp."""
        c = self.config
        return (c.freeze_2d and c.unproj_loss and c.unproj_finetune_2d and self.net2d is not None
                and c.variant in ("safnet", "concat"))

    def tail_2d_parameters(self) -> list[nn.Parameter]:
        """The 2D parameters :attr:`finetunes_2d_tail` trains (``up1`` and the classifier)."""
        if self.net2d is None:
            return []
        return [p for name, p in self.net2d.named_parameters() if name.startswith(ResNetUNet.TAIL_PREFIXES)]

    def _run_2d(self, images: torch.Tensor, used: Optional[torch.Tensor] = None
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``images (B, V, 3, H, W)`` -> (pixel features (B, V*H*W, C), logits (B, V, K, H, W)).

        ``used`` (B, V) bool: the views that have back-projected points. The 2D
        net runs on those only; the others (blank views padding a chunk with fewer
        views than V: no Q point gathers them) get zero features and logits.
        """
        b, v, _, h, w = images.shape
        if v == 0:
            return None, None
        flat = images.flatten(0, 1)
        keep = None
        if used is not None and not bool(used.all()):
            keep = torch.nonzero(used.reshape(-1), as_tuple=False).squeeze(1)
            flat = flat.index_select(0, keep)
        if flat.shape[0] == 0:  # no view of the batch has a pixel: nothing to run
            c = self.config
            return (images.new_zeros(b, v * h * w, c.feat_2d),
                    images.new_zeros(b, v, c.num_classes, h, w))
        if self.config.freeze_2d and self.training and self.finetunes_2d_tail:
            feats, logits = self.net2d(flat, tail_only_grad=True)  # BN stays frozen (eval mode)
        elif self.config.freeze_2d:
            with torch.no_grad():
                feats, logits = self.net2d(flat)
        else:
            feats, logits = self.net2d(flat)
        if keep is not None:  # back into every slot, zeros for the blank ones (autograd-safe)
            feats = feats.new_zeros((b * v,) + tuple(feats.shape[1:])).index_copy(0, keep, feats)
            logits = logits.new_zeros((b * v,) + tuple(logits.shape[1:])).index_copy(0, keep, logits)
        pixel_feats = feats.view(b, v, -1, h, w).permute(0, 1, 3, 4, 2).reshape(b, v * h * w, -1)
        return pixel_feats, logits.view(b, v, -1, h, w)

    @staticmethod
    def views_with_pixels(q_mask: torch.Tensor, q_pixel: torch.Tensor, num_views: int, pixels_per_view: int
                          ) -> torch.Tensor:
        """(B, V) bool: which views own at least one valid Q point (q_mask (B, M), q_pixel (B, M) grid index)."""
        b = q_mask.shape[0]
        view = (q_pixel // max(pixels_per_view, 1)).clamp(0, max(num_views - 1, 0))
        counts = torch.zeros(b, num_views, dtype=torch.long, device=q_mask.device)
        counts.scatter_add_(1, view, q_mask.long())
        return counts > 0

    @torch.no_grad()
    def encode_views(self, images: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Run the 2D net once on ``images (V, 3, H, W)`` for later chunks.

        Returns (features (V, H*W, C), logits (V, K, H, W)), or (None, None) for a
        model without a 2D branch. Pass slices of them to a batch as
        ``pixel_features`` / ``pixel_logits`` (inference only: no gradient).
        """
        if self.net2d is None:
            return None, None
        with stage("2d_net"):
            feats, logits = self._run_2d(images.unsqueeze(0))
        v = images.shape[0]
        return feats.view(v, -1, feats.shape[-1]), logits[0]

    # ------------------------------------------------------------------ forward
    def forward(self, batch: ChunkBatch) -> SafnetOutput:
        c = self.config
        data = _Sanitised(batch)
        points, valid = data.points, data.point_valid
        b, n = points.shape[:2]

        pixel_feats, logits_2d = (None, None)
        if batch.pixel_features is not None and batch.pixel_features.shape[1] > 0:
            pixel_feats, logits_2d = batch.pixel_features, batch.pixel_logits
        elif self.net2d is not None:
            _b, v, _c, h, w = batch.images.shape
            used = self.views_with_pixels(data.q_mask, data.q_pixel, v, h * w) if v else None
            with stage("2d_net"):
                pixel_feats, logits_2d = self._run_2d(batch.images, used)
        # A partly padded batch (chunks of different sizes): PointNet++ leaves the padding out.
        pn_mask = None if bool(valid.all()) else valid
        q_mask = data.q_mask
        if pixel_feats is None:  # no views: one zero feature row for every Q point
            pixel_feats = points.new_zeros(b, 1, c.feat_2d)
            q_pixel = torch.zeros_like(data.q_pixel)
            q_mask = torch.zeros_like(q_mask)
        else:
            q_pixel = data.q_pixel

        ones = points.new_ones(b, n)
        s_geo, s_con = ones, ones
        if c.variant == "project2d":
            logits, nearest = self._project2d(points, data, q_mask, logits_2d)
            out = SafnetOutput(logits, s_geo, s_con, ones.clone(), logits_2d=self._aux_2d(logits_2d),
                               nearest_q_dist=nearest)
            return self._finish(out, valid)
        if c.variant == "pointnet2":
            f3d = self.net3d(points, None, pn_mask).transpose(1, 2)  # (B, N, C3)
            with stage("fusion"):
                logits = self.head(f3d)
            zeros = points.new_zeros(b, n)
            return self._finish(SafnetOutput(logits, zeros, zeros, zeros.clone()), valid)

        with stage("neighbours"):
            nb = find_neighbourhoods(points, data.q_points, valid, q_mask, c.k, c.radius, c.agg_k,
                                     with_balls=c.variant == "safnet", nq_mode=c.nq_mode)
        with stage("aggregate"):
            f2d = self.aggregate(points, data.q_points, pixel_feats, q_mask, (nb.q_knn_dist, nb.q_knn_idx),
                                 q_pixel)
        attr = None
        if self.gsm is not None:
            with stage("gsm"):
                s_geo = self.gsm(points, data.q_points, nb)
        if self.csm is not None:
            q_valid = nb.q_valid
            if c.nq_mode == "ball":  # an empty ball: compare with the nearest Q point alone
                empty = ~q_valid.any(dim=-1, keepdim=True)
                nearest = torch.zeros_like(q_valid)
                nearest[..., 0] = True
                q_valid = q_valid | (empty & nearest & torch.isfinite(nb.q_knn_dist[..., :1]))
            with stage("csm"):
                attr, s_con = self.csm(points, data.q_points, nb.p_idx, nb.p_valid, nb.q_idx, q_valid)
                if self.attr_gain is not None:
                    attr = attr * self.attr_gain
        has_q = nb.has_q.unsqueeze(1).to(points.dtype)
        if c.variant == "safnet":
            s = s_geo * s_con * has_q
        else:  # concat: no similarity
            s = ones * has_q
        f3d = self.net3d(points, None if attr is None else attr.transpose(1, 2), pn_mask).transpose(1, 2)
        with stage("fusion"):
            weight_2d = s
            if self.confidence_gate is not None and logits_2d is not None:
                weight_2d = s * self.confidence_gate(
                    self._point_confidence(logits_2d, q_pixel, nb.q_knn_dist, nb.q_knn_idx).to(s.dtype))
            f2d_weighted = f2d * weight_2d.unsqueeze(-1)  # (B, N, C2): only the 2D feature is reweighted
            if self.se_2d is not None:
                f2d_weighted = self.se_2d(f2d_weighted, valid)
                f3d_fused = self.se_3d(f3d, valid)
            else:
                f3d_fused = f3d
            logits = self.head(torch.cat([f2d_weighted, f3d_fused], dim=-1))
        has_views = batch.q_points.shape[1] > 0
        out = SafnetOutput(
            logits, s_geo, s_con, s, logits_3d=self.aux3d(f3d), logits_2d=self._aux_2d(logits_2d),
            logits_unproj=self._unproj(logits_2d, q_pixel) if has_views else None,
            q_valid=q_mask if has_views else None, nearest_q_dist=nb.nearest_q_dist,
        )
        return self._finish(out, valid)

    def _project2d(self, points: torch.Tensor, data: _Sanitised, q_mask: torch.Tensor,
                   logits_2d: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, N, K) of the pixel of each point's nearest Q point, that distance (B, N) m)."""
        b, n = points.shape[:2]
        if logits_2d is None:
            return points.new_zeros(b, n, self.config.num_classes), points.new_full((b, n), float("inf"))
        nb = find_neighbourhoods(points, data.q_points, None, q_mask, 1, self.config.radius, 1, with_balls=False)
        pixel = gather(data.q_pixel.unsqueeze(-1), nb.q_knn_idx[..., :1]).view(b, n)
        logits = gather(pixel_rows(logits_2d), pixel)  # a table of batch 1 serves every sample
        return logits * torch.isfinite(nb.nearest_q_dist).unsqueeze(-1).to(logits.dtype), nb.nearest_q_dist

    def _point_confidence(self, logits_2d: torch.Tensor, q_pixel: torch.Tensor, q_dist: torch.Tensor,
                          q_idx: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: the 2D net's mean confidence at the pixels of each point's ``agg_k``
        nearest Q points (the ones F2D gathers from); 0 where a point has none.

        ``logits_2d (B or 1, V, K, H, W)``, ``q_pixel (B, M)`` grid index of each Q point,
        ``q_dist / q_idx (B, N, >= agg_k)`` the P -> Q search (inf distance: no neighbour).
        """
        k = self.config.agg_k
        conf_q = pixel_confidence(gather(pixel_rows(logits_2d), q_pixel))  # (B, M)
        found = torch.isfinite(q_dist[..., :k])
        conf = gather(conf_q.unsqueeze(-1), q_idx[..., :k]).squeeze(-1) * found
        return conf.sum(-1) / found.sum(-1).clamp_min(1)

    def _aux_2d(self, logits_2d: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if (self.config.freeze_2d or not self.training) else logits_2d

    def _unproj(self, logits_2d: Optional[torch.Tensor], q_pixel: torch.Tensor) -> Optional[torch.Tensor]:
        """The 2D net's own logits ``(B, M, K)`` at each Q point's pixel (L_2Dunp's input,
        training only). They carry a gradient when the 2D net trains, or when stage 3d
        fine-tunes its tail (:attr:`finetunes_2d_tail`); otherwise the term is skipped."""
        if not self.training or not self.config.unproj_loss or logits_2d is None or not logits_2d.requires_grad:
            return None
        return gather(pixel_rows(logits_2d), q_pixel)

    @staticmethod
    def _finish(out: SafnetOutput, valid: torch.Tensor) -> SafnetOutput:
        """Invalid (non-finite) points: logits 0 (uniform), similarities 0."""
        keep = valid.to(out.logits.dtype)
        out.logits = out.logits * keep.unsqueeze(-1)
        if out.logits_3d is not None:
            out.logits_3d = out.logits_3d * keep.unsqueeze(-1)
        out.s_geo, out.s_con, out.s = out.s_geo * keep, out.s_con * keep, out.s * keep
        if out.nearest_q_dist is not None:
            out.nearest_q_dist = out.nearest_q_dist.masked_fill(~valid, float("inf"))
        out.point_valid = valid
        return out


def build_model(config: SafnetConfig) -> SafnetModel:
    """The model for ``config`` (full SAFNet or a baseline, see :class:`SafnetModel`)."""
    return SafnetModel(config)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Union[str, os.PathLike], model: SafnetModel, config: Optional[SafnetConfig] = None,
                    extra: Optional[dict[str, Any]] = None) -> None:
    """Write weights + config dict + ``extra`` (JSON-like: numbers, strings, lists, dicts).

    The file is a torch pickle restricted to plain types (loadable with
    ``weights_only=True``) with ``format`` and ``version`` keys.
    """
    config = config or model.config
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": json_ready(dict(extra or {})),
    }
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint_payload(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu"
                            ) -> dict[str, Any]:
    """The checked payload dict of a file written by :func:`save_checkpoint`, without building the model
    (a cheap up-front check for commands that load the model later).

    Raises:
        ModelLoadError: missing, not a regular file, not a torch file / not ours / corrupt, or an
            unsupported version (loaded with ``weights_only=True``: the file cannot run code).
    """
    path = os.fspath(path)
    kind = path_kind(path)
    if kind is None:
        raise ModelLoadError(f"{path}: checkpoint file is missing")
    if kind != "a regular file":
        raise ModelLoadError(f"{path}: a checkpoint must be a regular file, but this is {kind}")
    payload = load_torch_file(path, map_location, what="safnet checkpoint", error=ModelLoadError)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: not a safnet_ros checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ModelLoadError(f"{path}: checkpoint format version {payload.get('version')!r} is not supported"
                             f" (this code reads version {CHECKPOINT_VERSION})")
    return payload


def _convert_layout1(path: str, stored: dict, state: Any) -> tuple[dict, Any]:
    """A layout-1 checkpoint (no ``layout`` key) as layout 2 (docs/model.md, "Checkpoint layouts").

    Without CSM the conversion is exact (:data:`~safnet_ros.model.config.LEGACY_LAYOUT`,
    and the unused ``unproj_head.*`` weights dropped); with CSM the weights would be
    silently mis-read.

    Raises:
        ModelLoadError: a layout-1 checkpoint of the full SAFNet (CSM on).
    """
    if stored.get("variant", "safnet") == "safnet" and stored.get("csm", True):
        raise ModelLoadError(
            f"{path}: checkpoint of the old CSM layout (layout 1): its CSM took x_i in "
            "chunk metres and offsets unscaled (now: height only and offsets / radius), its attributes entered "
            "PointNet++ without the zero-initialised gain, and N_Q was a radius ball (now the k nearest Q points); "
            "these weights cannot be converted: retrain it (docs/training.md)")
    converted = dict(stored)
    for key, value in LEGACY_LAYOUT.items():
        converted.setdefault(key, value)
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if not k.startswith("unproj_head.")}
    return converted, state


def load_checkpoint(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu",
                    expected_preset: Optional[str] = None) -> tuple[SafnetModel, SafnetConfig, dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint`; the model is in eval mode.

    Raises:
        ModelLoadError: missing file, not a torch file / not ours / corrupt,
            unsupported version, invalid config, weights that do not fit the
            config, or a preset other than ``expected_preset``.
    """
    path = os.fspath(path)
    payload = read_checkpoint_payload(path, map_location)
    stored = payload.get("config")
    state = payload.get("state_dict")
    if isinstance(stored, dict) and "layout" not in stored:
        stored, state = _convert_layout1(path, stored, state)
    try:
        config = SafnetConfig.from_dict(stored)
    except ConfigError as exc:
        raise ModelLoadError(f"{path}: the stored config is invalid: {exc}") from exc
    if expected_preset is not None and config.preset_name != expected_preset:
        raise ModelLoadError(f"{path}: checkpoint was trained with preset {config.preset_name!r},"
                             f" but preset {expected_preset!r} was expected")
    model = build_model(config)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: checkpoint has no state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: weights do not fit the stored {config.preset_name!r} config: "
                             f"{' '.join(str(exc).split())[:400]}") from exc
    model.to(map_location)
    model.eval()
    extra = payload.get("extra") or {}
    return model, config, extra
