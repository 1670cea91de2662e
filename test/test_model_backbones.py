"""The two backbones: ResNet-UNet (2D) and PointNet++ SSG (3D)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safnet_ros.errors import ConfigError, ModelLoadError
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.fusion import Dropout
from safnet_ros.model.pointnet2 import PointNet2SSG
from safnet_ros.model.resnet_unet import ResNetEncoder, ResNetUNet, load_torchvision_resnet, upsample_2x

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_resnet_shapes(blocks: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's ``resnet34().state_dict()`` (BasicBlock ResNet),
    written out from torchvision's model definition (torchvision is not installable here)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for suffix in BN_SUFFIXES:
            shapes[f"{prefix}.{suffix}"] = () if suffix == "num_batches_tracked" else (c,)

    bn("bn1", 64)
    in_ch = 64
    for stage, (n, out_ch) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (out_ch, in_ch if j == 0 else out_ch, 3, 3)
            bn(f"{p}.bn1", out_ch)
            shapes[f"{p}.conv2.weight"] = (out_ch, out_ch, 3, 3)
            bn(f"{p}.bn2", out_ch)
            if j == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                bn(f"{p}.downsample.1", out_ch)
        in_ch = out_ch
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def _fake_torchvision_state(blocks, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _torchvision_resnet_shapes(blocks).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


# --------------------------------------------------------------------------- ResNet-UNet
def test_resnet34_parameter_names_are_torchvision_names():
    shapes = _torchvision_resnet_shapes((3, 4, 6, 3))
    # A few literal keys of torchvision's resnet34 as a cross-check of the generator.
    for key in ("layer1.2.bn2.running_var", "layer3.5.conv2.weight", "layer4.0.downsample.1.weight"):
        assert key in shapes
    assert len([k for k in shapes if k.endswith(".weight") and "conv" in k]) == 1 + 2 * 16
    encoder = ResNetEncoder(34)
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    expected = {k: v for k, v in shapes.items() if not k.startswith("fc.")}
    assert ours == expected


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_load_torchvision_resnet34_file(tmp_path, stem_stride):
    state = _fake_torchvision_state((3, 4, 6, 3))
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    model = ResNetUNet(34, stem_stride=stem_stride)
    report = load_torchvision_resnet(model, path)
    assert report.ignored == ["fc.bias", "fc.weight"]
    assert report.loaded == len(state) - 2
    loaded = model.encoder.state_dict()
    for key in ("conv1.weight", "layer2.0.downsample.0.weight", "layer4.2.bn2.running_mean"):
        assert torch.equal(loaded[key], state[key])


def test_load_rejects_mismatched_and_corrupt_files(tmp_path):
    model = ResNetUNet(34, stem_stride=2)
    r18 = tmp_path / "resnet18.pth"
    torch.save(_fake_torchvision_state((2, 2, 2, 2)), r18)
    with pytest.raises(ModelLoadError, match="missing keys.*layer1.2"):
        load_torchvision_resnet(model, r18)
    with pytest.raises(ModelLoadError, match="unexpected keys.*layer1.2"):
        load_torchvision_resnet(ResNetUNet(18, stem_stride=2), _fake_torchvision_state((3, 4, 6, 3)))
    wrong = _fake_torchvision_state((3, 4, 6, 3))
    wrong["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    with pytest.raises(ModelLoadError, match="shape mismatches.*conv1.weight"):
        load_torchvision_resnet(model, wrong)
    corrupt = tmp_path / "corrupt.pth"
    good = tmp_path / "good.pth"
    torch.save(_fake_torchvision_state((3, 4, 6, 3)), good)
    corrupt.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="corrupt.pth"):
        load_torchvision_resnet(model, corrupt)
    with pytest.raises(ModelLoadError, match="missing"):
        load_torchvision_resnet(model, tmp_path / "absent.pth")
    # module. prefixes (DataParallel) and missing BN counters (old files) are accepted.
    old = {f"module.{k}": v for k, v in _fake_torchvision_state((3, 4, 6, 3)).items()
           if not k.endswith("num_batches_tracked")}
    assert load_torchvision_resnet(model, old).loaded > 100


@pytest.mark.parametrize(
    "depth,stem_stride,size",
    [(34, 1, (120, 160)), (34, 2, (120, 160)), (18, 2, (240, 320)), (18, 1, (37, 50))],
)
def test_resnet_unet_shapes_and_gradient(depth, stem_stride, size):
    model = ResNetUNet(depth, feat_dim=64, num_classes=20, stem_stride=stem_stride)
    images = torch.randn(2, 3, *size, requires_grad=True)
    features, logits = model(images)
    assert features.shape == (2, 64, *size) and logits.shape == (2, 20, *size)
    logits[:, :, 5, 7].sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    # The full-resolution map depends on the pixel it belongs to: gradient at (5, 7).
    assert float(images.grad[:, :, 5, 7].abs().sum()) > 0


def test_resnet_unet_width_scales_every_stage_and_refuses_imagenet_weights():
    """lite's half-width 2D net: channels w, 2w, 4w, 8w; same output shapes; ImageNet
    (torchvision, width 64) weights cannot load into it."""
    half = ResNetUNet(18, feat_dim=64, num_classes=20, stem_stride=2, width=32)
    full = ResNetUNet(18, feat_dim=64, num_classes=20, stem_stride=2)
    assert half.encoder.channels == (32, 64, 128, 256) and full.encoder.channels == (64, 128, 256, 512)
    assert half.encoder.layer4[0].conv1.weight.shape[0] == 256
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(half) < 0.3 * count(full)
    features, logits = half(torch.randn(1, 3, 120, 160))
    assert features.shape == (1, 64, 120, 160) and logits.shape == (1, 20, 120, 160)
    with pytest.raises(ModelLoadError, match="width 64"):
        load_torchvision_resnet(half, _fake_torchvision_state((2, 2, 2, 2)))
    assert load_torchvision_resnet(full, _fake_torchvision_state((2, 2, 2, 2))).loaded > 50


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (1, 2, 64, 80)])
def test_upsample_2x_is_torchs_bilinear_interpolation_forward_and_backward(shape):
    """The lite 2D net's last upsampling: torch's values, and the gradient of torch's
    ``upsample_bilinear2d`` from the faster filter (edges included), fp32 and bf16."""
    x = torch.randn(*shape, requires_grad=True)
    size = (2 * shape[-2], 2 * shape[-1])
    grad_out = torch.randn(shape[0], shape[1], *size)
    ours = upsample_2x(x)
    (grad_ours,) = torch.autograd.grad(ours, x, grad_out)
    theirs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    (grad_theirs,) = torch.autograd.grad(theirs, x, grad_out)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-5)
    xb = x.detach().bfloat16().requires_grad_()
    (grad_bf16,) = torch.autograd.grad(upsample_2x(xb), xb, grad_out.bfloat16())
    assert grad_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(grad_bf16.float(), grad_theirs, rtol=2e-2, atol=5e-2)
    double = torch.randn(1, 2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(upsample_2x, (double,))
    with torch.no_grad():  # no graph: torch's own op
        torch.testing.assert_close(upsample_2x(x), theirs.detach())


def test_dropout_keeps_one_minus_p_of_the_activations_scaled_and_is_the_identity_in_eval():
    drop = Dropout(0.3)
    x = torch.randn(4, 5000, 16, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    y.sum().backward()  # the gradient flows through the kept elements only, scaled the same
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded: reproducible
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x


def test_resnet_unet_bad_config():
    """The config, where the 2D net's settings arrive, refuses what the net cannot build."""
    with pytest.raises(ConfigError, match="resnet_depth"):
        SafnetConfig.preset("lite", resnet_depth=50)
    with pytest.raises(ConfigError, match="stem_stride"):
        SafnetConfig.preset("lite", stem_stride=4)


def _colour_regions(seed: int, h: int = 32, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """An image of 3 flat colour regions split by random vertical/horizontal borders."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(h, w, dtype=torch.long)
    col = int(torch.randint(12, w - 12, (1,), generator=g))
    row = int(torch.randint(8, h - 8, (1,), generator=g))
    labels[:, col:] = 1
    labels[row:, col:] = 2
    palette = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    image = palette[labels].permute(2, 0, 1) + 0.1 * torch.randn(3, h, w, generator=g)
    return image, labels


def test_resnet_unet_overfits_colour_regions():
    torch.manual_seed(0)
    pairs = [_colour_regions(1), _colour_regions(2)]
    images = torch.stack([p[0] for p in pairs])
    labels = torch.stack([p[1] for p in pairs])
    model = ResNetUNet(18, feat_dim=16, num_classes=3, stem_stride=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(40):
        _, logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images)[1].argmax(1) == labels).float().mean())
    assert accuracy >= 0.95, accuracy


# --------------------------------------------------------------------------- PointNet++
SMALL = dict(npoints=(64, 16, 8, 4), radii=(0.2, 0.4, 0.8, 1.6), nsample=16,
             mlps=((16, 16, 32), (32, 32, 64), (64, 64, 64), (64, 64, 128)),
             fp_mlps=((64, 64), (64, 64), (64, 32), (32, 32, 32)), out_channels=32)


def test_pointnet2_default_shapes_and_gradient():
    torch.manual_seed(0)
    net = PointNet2SSG(in_channels=64)
    xyz = torch.rand(2, 3000, 3) * torch.tensor([1.5, 1.5, 3.0])
    feats = torch.randn(2, 64, 3000, requires_grad=True)
    out = net(xyz, feats)
    assert out.shape == (2, 128, 3000)
    out.mean().backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in net.parameters())


def test_pointnet2_permutation_equivariance():
    """Permuting the points permutes the per-point output.

    FPS starts at index 0, so point 0 keeps its place; every other choice (FPS
    order, nearest-k ball query, 3-NN) depends on geometry only, not on indices.
    """
    torch.manual_seed(0)
    net = PointNet2SSG(in_channels=4, **SMALL).eval()
    xyz = torch.rand(1, 400, 3)
    feats = torch.randn(1, 4, 400)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(399)])
    with torch.no_grad():
        out = net(xyz, feats)
        out_perm = net(xyz[:, perm], feats[:, :, perm])
    torch.testing.assert_close(out_perm, out[:, :, perm], atol=1e-4, rtol=1e-4)
    assert float(out.std()) > 0


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_pointnet2_tiny_clouds(n):
    torch.manual_seed(0)
    net = PointNet2SSG(in_channels=0, **SMALL)
    for mode in (net.train, net.eval):
        mode()
        out = net(torch.rand(2, n, 3))
        assert out.shape == (2, 32, n) and torch.isfinite(out).all()


def test_pointnet2_rejects_bad_input():
    net = PointNet2SSG(in_channels=3, **SMALL)
    with pytest.raises(ValueError):
        net(torch.rand(1, 10, 3), None)
    with pytest.raises(ValueError):
        net(torch.rand(1, 0, 3), torch.rand(1, 3, 0))
    with pytest.raises(ConfigError, match="last FP MLP"):  # the layout is checked by the config
        SafnetConfig.preset("lite", feat_3d=64)
    with pytest.raises(ConfigError, match="same length"):
        SafnetConfig.preset("lite", pn_npoints=(10, 5), pn_radii=(0.1,))


def _plane_and_sphere(seed: int, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a floor patch (z = 0 +- noise); class 1: a ball of radius 0.25 lying on it."""
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    plane = torch.rand(half, 3, generator=g) * torch.tensor([2.0, 2.0, 0.0]) - torch.tensor([1.0, 1.0, 0.0])
    centre = torch.rand(2, generator=g) * 1.0 - 0.5
    direction = torch.randn(n - half, 3, generator=g)
    sphere = 0.25 * direction / direction.norm(dim=1, keepdim=True)
    sphere = sphere + torch.tensor([float(centre[0]), float(centre[1]), 0.3])
    xyz = torch.cat([plane, sphere]) + 0.005 * torch.randn(n, 3, generator=g)
    labels = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(n - half, dtype=torch.long)])
    return xyz, labels


def test_pointnet2_overfits_plane_vs_sphere():
    torch.manual_seed(0)
    data = [_plane_and_sphere(s) for s in range(4)]
    xyz = torch.stack([d[0] for d in data])
    labels = torch.stack([d[1] for d in data])
    net = PointNet2SSG(in_channels=0, **SMALL)
    head = torch.nn.Conv1d(32, 2, 1)
    optimiser = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=3e-3)
    for _ in range(40):
        loss = F.cross_entropy(head(net(xyz)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # 40 fast-moving steps leave BN running stats behind the weights: re-estimate
    # them once on the training clouds (exact average), then test in eval mode.
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        net(xyz)
    net.eval()
    with torch.no_grad():
        accuracy = float((head(net(xyz)).argmax(1) == labels).float().mean())
    assert accuracy >= 0.95, accuracy
    assert not math.isnan(loss.item())


def _randomise_batch_norms(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)


def _conv_reference_forward(net: PointNet2SSG, xyz: torch.Tensor, feats) -> torch.Tensor:
    """PointNet++ as the textbook code computes it: channels first, the 1x1 Conv2d /
    Conv1d + BN + ReLU modules called directly, concatenations built."""
    from safnet_ros.geometry.neighbors import ball_query, farthest_point_sample, gather, three_nn_interpolate

    level_xyz, level_feats = [xyz], [feats]
    for sa in net.sa:
        pts, f = level_xyz[-1], level_feats[-1]
        m = min(sa.npoint, pts.shape[1])
        centroids = gather(pts, farthest_point_sample(pts, m).unsqueeze(-1)).squeeze(2)
        idx, _ = ball_query(centroids, pts, sa.radius, sa.nsample)
        grouped = gather(pts, idx) - centroids.unsqueeze(2)
        if f is not None:
            grouped = torch.cat([grouped, gather(f.transpose(1, 2), idx)], dim=-1)
        level_xyz.append(centroids)
        level_feats.append(sa.mlp(grouped.permute(0, 3, 1, 2)).amax(dim=-1))
    deep = level_feats[-1]
    for i, fp in enumerate(net.fp):
        fine = len(net.sa) - 1 - i
        x = three_nn_interpolate(level_xyz[fine], level_xyz[fine + 1], deep)
        if level_feats[fine] is not None:
            x = torch.cat([x, level_feats[fine]], dim=1)
        deep = fp.mlp(x)
    return deep


@pytest.mark.parametrize("in_channels", [0, 5])
def test_pointnet2_channels_last_equals_conv_reference(in_channels):
    """The channels-last F.linear route (FP first layer applied before the
    interpolation) computes what the conv modules compute, in eval and train mode,
    forward and gradient."""
    torch.manual_seed(1)
    net = PointNet2SSG(in_channels=in_channels, **SMALL)
    _randomise_batch_norms(net, 2)
    xyz = torch.rand(2, 300, 3)
    feats = torch.randn(2, in_channels, 300) if in_channels else None
    net.eval()
    with torch.no_grad():
        out, ref = net(xyz, feats), _conv_reference_forward(net, xyz, feats)
    assert float(ref.std()) > 0.1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    net.train()
    out = net(xyz, feats)
    grad = torch.autograd.grad(out.square().mean(), net.sa[0].mlp[0].weight)[0]
    ref = _conv_reference_forward(net, xyz, feats)
    grad_ref = torch.autograd.grad(ref.square().mean(), net.sa[0].mlp[0].weight)[0]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)
    # single levels run channels last
    with torch.no_grad():
        centroids, pooled = net.eval().sa[0](xyz, None if feats is None else feats.transpose(1, 2))
    assert pooled.shape == (2, SMALL["npoints"][0], SMALL["mlps"][0][-1]) and centroids.shape == (2, 64, 3)


def test_pointnet2_state_dict_keeps_conv_layout():
    """Checkpoints written before the channels-last change load: same keys, conv-shaped weights."""
    net = PointNet2SSG(in_channels=4, **SMALL)
    state = net.state_dict()
    assert tuple(state["sa.0.mlp.0.weight"].shape) == (16, 7, 1, 1)  # Conv2d, 3 + 4 inputs
    assert tuple(state["fp.3.mlp.0.weight"].shape) == (32, 32 + 4, 1)  # Conv1d, deep + skip
    assert "fp.3.mlp.1.running_var" in state and "sa.3.mlp.7.num_batches_tracked" in state
    other = PointNet2SSG(in_channels=4, **SMALL)
    other.load_state_dict(state, strict=True)
    xyz, feats = torch.rand(1, 80, 3), torch.randn(1, 4, 80)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(xyz, feats), net.eval()(xyz, feats))
