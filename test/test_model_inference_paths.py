"""Inference-only shortcuts compute exactly what the plain layers compute.

* Batch norm folded into the preceding linear layer (eval mode) against the
  unfolded BN modules, for every SAFNet variant with trained-looking statistics.
* The orientation-encoding convolutions, whose cube is stored x-fastest so each
  step is a reshape view, against the cube written out as ``cube[x][y][z]`` and
  convolved along x, then y, then z as the paper describes.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import safnet_ros.model.folded_norm as folded_norm
from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.csm import ContextualSimilarity
from safnet_ros.model.folded_norm import bn_relu, folded_scale_shift, linear_bn_relu
from safnet_ros.model.safnet import build_model


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                mod.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                mod.weight.copy_(torch.randn(c, generator=g))
                mod.bias.copy_(torch.randn(c, generator=g) * 0.3)


def _batch(n: int = 300, v: int = 2, h: int = 24, w: int = 32, seed: int = 1) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    m = v * h * w
    points = torch.rand(1, n, 3, generator=g)
    q = torch.cat([points + 0.01 * torch.randn(1, n, 3, generator=g), torch.rand(1, m - n, 3, generator=g)], 1)
    return ChunkBatch(points=points, images=torch.randn(1, v, 3, h, w, generator=g), q_points=q,
                      q_mask=torch.ones(1, m, dtype=torch.bool), q_pixel=torch.arange(m).unsqueeze(0))


def test_folded_scale_shift_is_the_eval_batch_norm():
    norm = nn.BatchNorm1d(7)
    _randomise_norms(norm)
    norm.eval()
    x = torch.randn(50, 7)
    scale, shift = folded_scale_shift(norm)
    torch.testing.assert_close(x * scale + shift, norm(x), atol=1e-5, rtol=1e-5)
    weight = torch.randn(7, 5)
    rows = torch.randn(40, 5)
    torch.testing.assert_close(linear_bn_relu(rows, weight, norm), torch.relu(norm(rows @ weight.t())),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn_relu(rows @ weight.t(), norm), torch.relu(norm(rows @ weight.t())),
                               atol=1e-5, rtol=1e-5)
    norm.train()
    assert folded_scale_shift(norm) is None  # batch statistics: nothing to fold


@pytest.mark.parametrize("variant", ["safnet", "pointnet2", "concat"])
def test_eval_forward_with_folded_norms_equals_the_unfolded_modules(variant, monkeypatch):
    cfg = SafnetConfig.preset("lite", variant=variant, pn_npoints=(64, 32, 16, 8), pn_nsample=8)
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomise_norms(model)
    model.eval()
    batch = _batch()
    with torch.no_grad():
        folded = model(batch)
        monkeypatch.setattr(folded_norm, "folded_scale_shift", lambda norm: None)
        plain = model(batch)
    assert float(plain.logits.std()) > 0.1
    torch.testing.assert_close(folded.logits, plain.logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(folded.s, plain.s, atol=1e-5, rtol=1e-5)


def test_orientation_encoding_convolves_along_x_then_y_then_z():
    torch.manual_seed(3)
    csm = ContextualSimilarity(point_width=8, oe_width=12, mlp=(16,), out_channels=16)
    _randomise_norms(csm, seed=4)
    csm.eval()
    n = 20
    centres = torch.randn(1, n, csm.centre_channels)  # the centre term c(x_i) (height only by default)
    cells = torch.randn(1, n, 8, 4)  # cell at octant x + 2y + 4z

    def conv(layer, a, b):  # kernel-2 convolution of the cells a, b (a has the lower coordinate)
        return layer.conv(torch.cat([a, b], dim=-1))

    cube = {(x, y, z): torch.cat([centres, cells[:, :, x + 2 * y + 4 * z]], dim=-1)
            for x in (0, 1) for y in (0, 1) for z in (0, 1)}
    along_x = {(y, z): conv(csm.oe[0], cube[0, y, z], cube[1, y, z]) for y in (0, 1) for z in (0, 1)}
    along_y = {z: conv(csm.oe[1], along_x[0, z], along_x[1, z]) for z in (0, 1)}
    expected = conv(csm.oe[2], along_y[0], along_y[1])
    with torch.no_grad():
        got = csm._orientation_encoding(centres, cells)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_channels_last_2d_inference_equals_nchw(monkeypatch):
    import safnet_ros.model.resnet_unet as resnet_unet

    torch.manual_seed(5)
    net = resnet_unet.ResNetUNet(18, 16, 20, stem_stride=2, width=16)
    _randomise_norms(net, seed=6)
    net.eval()
    images = torch.randn(2, 3, 40, 56)  # padded to 64 x 64 inside: the crop is exercised too
    with torch.no_grad():
        feats, logits = net(images)
        monkeypatch.setattr(resnet_unet, "CPU_CHANNELS_LAST", False)
        feats_nchw, logits_nchw = net(images)
    assert feats.shape == (2, 16, 40, 56) and logits.shape == (2, 20, 40, 56)
    torch.testing.assert_close(feats, feats_nchw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, logits_nchw, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["safnet", "concat"])
def test_blank_views_skip_the_2d_net_and_change_nothing(variant, monkeypatch):
    """A view slot without back-projected pixels (padding: training chunks with fewer views than V) is not
    run through the 2D net; every output equals the forward that runs all slots."""
    from safnet_ros.model.safnet import SafnetModel

    cfg = SafnetConfig.preset("lite", variant=variant, pn_npoints=(64, 32, 16, 8), pn_nsample=8)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    v, h, w, n = 3, 24, 32, 300
    batch = _batch(n=n, v=v, h=h, w=w)
    blank = (batch.q_pixel >= h * w) & (batch.q_pixel < 2 * h * w)  # view 1's pixels: none of them valid
    batch.q_mask = batch.q_mask & ~blank
    seen = []
    model.net2d.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        skipped = model(batch)
        monkeypatch.setattr(SafnetModel, "views_with_pixels",
                            staticmethod(lambda q_mask, q_pixel, num_views, ppv: torch.ones(1, num_views, dtype=torch.bool)))
        full = model(batch)
    assert seen == [2, 3]  # two views with pixels, then every slot
    torch.testing.assert_close(skipped.logits, full.logits)
    torch.testing.assert_close(skipped.s, full.s)
    monkeypatch.undo()
    # training with the frozen 2D net's tail fine-tuned (L_2Dunp): gradients still reach the tail
    model.train()
    out = model(batch)
    assert out.logits_unproj is not None
    out.logits_unproj.float().sum().backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in model.tail_2d_parameters())


def test_views_with_pixels_marks_the_views_that_own_a_valid_q_point():
    from safnet_ros.model.safnet import SafnetModel

    q_pixel = torch.tensor([[0, 5, 12, 13, 0], [11, 0, 0, 0, 0]])  # 4 pixels per view, 4 views
    q_mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    used = SafnetModel.views_with_pixels(q_mask, q_pixel, 4, 4)
    assert used.tolist() == [[True, True, False, True], [False, False, True, False]]
