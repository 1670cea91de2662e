"""2D branch of SAFNet: a ResNet encoder with a UNet decoder giving per-pixel features.

The encoder is a plain-torch ResNet (BasicBlock; depth 18 or 34) whose parameter
names are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...), so :func:`load_torchvision_resnet` loads a
torchvision ``resnet18``/``resnet34`` ImageNet ``state_dict`` file without
torchvision being installed. The classifier ``fc`` of such files is not used.

The decoder follows MVPNet's ResNet34-UNet: at every stage the deeper map is
upsampled x2 by a transposed convolution, concatenated with the encoder map of the
same size, and fused by a 3x3 conv + BN + ReLU. The output is a ``feat_dim``-d
feature map at the INPUT resolution plus a 1x1 classifier to ``num_classes``.

``stem_stride=1`` (the paper's / reference setting) runs the 7x7 stem at full
resolution, so the last decoder stage is full-size. ``stem_stride=2`` is
torchvision's stem (4x fewer pixels in every stage); the half-resolution decoder
output is then bilinearly upsampled to the input size (cheaper; the lite preset).

Images whose size is not a multiple of the total stride (``16 * stem_stride``),
e.g. 120x160, are zero-padded at the bottom/right (zero = the ImageNet mean after
normalisation) and the outputs cropped back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn

from safnet_ros.errors import ModelLoadError
from safnet_ros.io_boundary import load_torch_file

__all__ = [
    "BasicBlock",
    "ResNetEncoder",
    "ResNetUNet",
    "LoadReport",
    "load_torchvision_resnet",
    "RESNET_LAYERS",
    "upsample_2x",
]

# Inference on the CPU runs the convolutions channels-last (see ResNetUNet.forward).
CPU_CHANNELS_LAST = True

# Blocks per stage for the BasicBlock ResNets (torchvision's resnet18 / resnet34).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class _BilinearUpsample2x(torch.autograd.Function):
    """``F.interpolate(x, 2x size, "bilinear", align_corners=False)`` with a faster CPU backward.

    The interpolation's gradient is a fixed stride-2 filter: input pixel ``k``
    collects output pixels ``2k-1 .. 2k+2`` with weights ``(1, 3, 3, 1) / 4`` along
    each axis, and the output's edge clamping is the same filter over the
    gradient padded by replicating its edge rows and columns: one depthwise
    convolution, faster at bf16 than torch's ``upsample_bilinear2d_backward``.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.input_dtype = x.dtype
        return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        channels = grad.shape[1]
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=grad.dtype, device=grad.device)
        kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 4, 4)
        padded = F.pad(grad, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(padded, kernel, stride=2, groups=channels).to(ctx.input_dtype)


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling (``align_corners=False``) of ``x (B, C, H, W)`` -> ``(B, C, 2H, 2W)``;
    on a CPU with autograd through the faster backward of :class:`_BilinearUpsample2x`."""
    if x.requires_grad and x.device.type == "cpu" and torch.is_grad_enabled():
        return _BilinearUpsample2x.apply(x)
    return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (torchvision's ``BasicBlock`` names)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18/34 trunk without the classifier; returns the maps of every stage.

    Parameter names equal torchvision's ``resnet{18,34}`` minus ``fc``. ``width``
    is the base width (stage channels ``w, 2w, 4w, 8w``); only the torchvision
    width 64 can load ImageNet weights, a narrower one (the lite preset's 32, 4x
    fewer weights and multiply-adds) trains from scratch.
    """

    def __init__(self, depth: int = 34, stem_stride: int = 2, width: int = 64):
        super().__init__()
        self.depth = depth
        self.width = width
        self.channels = (width, 2 * width, 4 * width, 8 * width)
        self.conv1 = nn.Conv2d(3, width, 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = width
        for stage, (blocks, out_ch) in enumerate(zip(RESNET_LAYERS[depth], self.channels), 1):
            stride = 1 if stage == 1 else 2
            layers = [BasicBlock(in_ch, out_ch, stride)]
            layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            in_ch = out_ch
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x (B, 3, H, W)`` -> [stem (w, H/s), layer1 (w, H/2s), layer2 (2w, H/4s),
        layer3 (4w, H/8s), layer4 (8w, H/16s)] with s = ``stem_stride``, w = ``width``."""
        stem = self.relu(self.bn1(self.conv1(x)))
        l1 = self.layer1(self.maxpool(stem))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return [stem, l1, l2, l3, l4]


class _UpStage(nn.Module):
    """x2 transposed-conv upsampling, concat with the skip map, 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2)
        self.fuse = nn.Sequential(nn.Conv2d(2 * skip_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(deep), skip], dim=1))


class ResNetUNet(nn.Module):
    """ResNet encoder + UNet decoder: per-pixel features and 2D class logits.

    ``depth`` 18 or 34, ``stem_stride`` 1 or 2 (module docstring), ``width`` the
    encoder's base width (the decoder scales with it).
    ``forward(images (B, 3, H, W) normalised)`` -> ``(features (B, feat_dim, H, W),
    logits (B, num_classes, H, W))`` for any H, W >= 1.
    """

    def __init__(self, depth: int = 34, feat_dim: int = 64, num_classes: int = 20, stem_stride: int = 1,
                 width: int = 64):
        super().__init__()
        self.stem_stride = stem_stride
        self.encoder = ResNetEncoder(depth, stem_stride, width)
        c1, c2, c3, c4 = self.encoder.channels
        self.up4 = _UpStage(c4, c3, c3)  # H/16s -> H/8s
        self.up3 = _UpStage(c3, c2, c2)  # -> H/4s
        self.up2 = _UpStage(c2, c1, c1)  # -> H/2s
        self.up1 = _UpStage(c1, c1, feat_dim)  # -> H/s (stem resolution)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1)

    #: The parameters :meth:`forward` with ``tail_only_grad`` lets train (name prefixes).
    TAIL_PREFIXES: tuple[str, ...] = ("up1.", "classifier.")

    def forward(self, images: torch.Tensor, tail_only_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``tail_only_grad``: the encoder and the deeper decoder stages run without
        autograd; only the last decoder stage (``up1``) and the classifier build a
        graph (SAFNet's stage-3d fine-tuning of the 2D side by L_2Dunp)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        step = 16 * self.stem_stride  # the total stride
        pad_h, pad_w = (-height) % step, (-width) % step
        x = F.pad(images, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else images
        if CPU_CHANNELS_LAST and x.device.type == "cpu" and not self.training:
            # NHWC is oneDNN's native layout: no layout reorders around each convolution
            # (docs/model.md). Training stays NCHW (slower in NHWC).
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not tail_only_grad):
            stem, l1, l2, l3, l4 = self.encoder(x)
            y = self.up4(l4, l3)
            y = self.up3(y, l2)
            y = self.up2(y, l1)
        y = self.up1(y, stem)
        if self.stem_stride != 1:
            y = upsample_2x(y)  # the stem's stride 2: the padded input size
        features = y[..., :height, :width]
        logits = self.classifier(features)
        return features, logits


# --------------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """What :func:`load_torchvision_resnet` did: counts and the keys it skipped."""

    loaded: int
    ignored: list[str] = field(default_factory=list)  # fc.* (classifier of the file)

    def __str__(self) -> str:
        return f"loaded {self.loaded} tensors, ignored {len(self.ignored)} ({', '.join(self.ignored) or '-'})"


def _read_state_dict(path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> tuple[dict, str]:
    if isinstance(path_or_state_dict, Mapping):
        return dict(path_or_state_dict), "<state_dict>"
    path = os.fspath(path_or_state_dict)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: torchvision ResNet weight file is missing")
    obj = load_torch_file(path, what="torch state_dict", error=ModelLoadError)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: not a state_dict of tensors (got {type(obj).__name__})")
    return dict(obj), path


def load_torchvision_resnet(
    model: Union[ResNetUNet, ResNetEncoder],
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
) -> LoadReport:
    """Copy a torchvision ``resnet18``/``resnet34`` ``state_dict`` into the encoder.

    Accepts a file written by ``torch.save(torchvision_model.state_dict(), path)``
    (optionally nested under ``"state_dict"`` and/or with ``module.`` prefixes) or
    the mapping itself. ``fc.*`` is ignored. With ``stem_stride=1`` the 7x7 stem
    weights are loaded as they are (only the stride differs, as in MVPNet).

    Raises:
        ModelLoadError: the file is missing or corrupt, or its keys/shapes do not
            match this encoder (message lists missing and unexpected keys, e.g. a
            resnet18 file for a depth-34 model).
    """
    encoder = model.encoder if isinstance(model, ResNetUNet) else model
    if encoder.width != 64:
        raise ModelLoadError(f"ImageNet ResNet weights need the torchvision width 64; this encoder has width "
                             f"{encoder.width} (the lite preset trains its 2D net from scratch)")
    source, where = _read_state_dict(path_or_state_dict)
    state = {key.removeprefix("module."): value for key, value in source.items()}
    ignored = sorted(k for k in state if k.startswith("fc."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = encoder.state_dict()
    # ImageNet files saved by old torch versions have no BN step counters: keep ours.
    state.update({k: expected[k] for k in set(expected) - set(state) if k.endswith("num_batches_tracked")})
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or bad_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "") if items else "-"

        raise ModelLoadError(
            f"{where}: not a torchvision resnet{encoder.depth} state_dict:"
            f" {len(missing)} missing keys [{show(missing)}];"
            f" {len(unexpected)} unexpected keys [{show(unexpected)}];"
            f" {len(bad_shape)} shape mismatches [{show(bad_shape)}]"
        )
    encoder.load_state_dict(state, strict=True)
    return LoadReport(loaded=len(state), ignored=ignored)
