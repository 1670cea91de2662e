"""Issue 14: CSM inputs without absolute position, PointNet++ that keeps its geometry
when the CSM attributes join, an L_2Dunp that trains the 2D side, N_Q modes, and
the refusal of checkpoints of the old CSM layout."""
from __future__ import annotations

import math

import pytest
import torch

from safnet_ros.errors import ModelLoadError
from safnet_ros.geometry.neighbors import ball_query
from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.csm import ContextualSimilarity
from safnet_ros.model.losses import safnet_loss
from safnet_ros.model.safnet import build_model, load_checkpoint, save_checkpoint

H, W = 24, 32


def _small(**overrides) -> SafnetConfig:
    base = dict(pn_npoints=(64, 32, 16, 8), pn_nsample=8, k=8)
    base.update(overrides)
    return SafnetConfig.preset("lite", **base)


def _chunk(n: int = 300, seed: int = 0) -> torch.Tensor:
    """(1, n, 3) a 1.5 m chunk, xy centred, z 0-3 m, points ~0.05 m apart in clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(1, 30, 3, generator=g) * torch.tensor([1.5, 1.5, 3.0]) - torch.tensor([0.75, 0.75, 0.0])
    pick = torch.randint(0, 30, (n,), generator=g)
    return centres[:, pick] + 0.04 * torch.randn(1, n, 3, generator=g)


def _mapping(csm: ContextualSimilarity, points: torch.Tensor) -> torch.Tensor:
    idx, valid = ball_query(points, points, 0.15, 8)
    return csm.mapping(points, points, idx, valid)


def _rot_z(points: torch.Tensor, angle: float, about: tuple[float, float]) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pivot = torch.tensor([about[0], about[1], 0.0])
    return (points - pivot) @ rot.T + pivot


@torch.no_grad()
def test_csm_mapping_has_no_absolute_xy_only_height():
    """M(N_P) is the same after translating the chunk in xy, and a rotation about z
    gives the same M about any vertical axis (only the relative geometry and the
    height enter); moving the chunk in z changes it (the height term)."""
    torch.manual_seed(0)
    csm = ContextualSimilarity(16, 32, (32, 32, 32), 32, radius=0.15, centre="height").eval()
    for module in csm.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    points = _chunk()
    base = _mapping(csm, points)
    shifted = _mapping(csm, points + torch.tensor([3.7, -12.25, 0.0]))
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    about_centre = _mapping(csm, _rot_z(points, 0.7, (0.0, 0.0)))
    about_corner = _mapping(csm, _rot_z(points, 0.7, (5.0, -2.0)))
    torch.testing.assert_close(about_corner, about_centre, atol=1e-4, rtol=1e-4)
    raised = _mapping(csm, points + torch.tensor([0.0, 0.0, 0.5]))
    assert (raised - base).abs().max() > 1e-3  # the height term is there
    # The test can fail: with the xyz centre term, an xy translation changes M.
    xyz = ContextualSimilarity(16, 32, (32, 32, 32), 32, radius=0.15, centre="xyz").eval()
    assert (_mapping(xyz, points + torch.tensor([0.5, 0.0, 0.0])) - _mapping(xyz, points)).abs().max() > 1e-3


@torch.no_grad()
def test_csm_offsets_are_in_units_of_the_radius():
    """The same neighbourhood shape at twice the scale, with twice the radius, maps alike."""
    torch.manual_seed(0)
    points = _chunk()
    points[..., 2] = 1.5  # height term constant: only the offsets differ
    csm = ContextualSimilarity(16, 32, (32, 32, 32), 32, radius=0.15).eval()
    idx, valid = ball_query(points, points, 0.15, 8)
    small = csm.mapping(points, points, idx, valid)
    csm.inv_radius = 1.0 / 0.30
    scaled = points.clone()
    scaled[..., :2] *= 2.0
    torch.testing.assert_close(csm.mapping(scaled, scaled, idx, valid), small, atol=1e-4, rtol=1e-4)


def _batch(b: int = 2, n: int = 200, v: int = 2, seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    m = v * H * W // 2
    points = _chunk(n, seed).expand(b, -1, -1).contiguous()
    q = torch.cat([points + 0.01 * torch.randn(b, n, 3, generator=g),
                   points[:, torch.randint(0, n, (m - n,), generator=g)] + 0.3 * torch.randn(b, m - n, 3, generator=g)],
                  1)
    return ChunkBatch(
        points=points, images=torch.randn(b, v, 3, H, W, generator=g), q_points=q,
        q_mask=torch.ones(b, m, dtype=torch.bool), q_pixel=torch.randint(0, v * H * W, (b, m), generator=g),
        labels=torch.randint(0, 20, (b, n), generator=g),
        image_labels=torch.randint(0, 20, (b, v, H, W), generator=g),
    )


def test_at_init_the_3d_path_is_the_csm_off_models():
    """attr_gain starts at 0: with the same weights the full model's F3D (seen through
    the auxiliary 3D head) equals the CSM-off model's, and its gain gets a gradient."""
    torch.manual_seed(0)
    full = build_model(_small(freeze_2d=True)).eval()
    torch.manual_seed(1)
    off = build_model(_small(csm=False, freeze_2d=True)).eval()
    state = off.state_dict()
    for key, value in full.state_dict().items():
        if key == "net3d.sa.0.mlp.0.weight":
            state[key] = value[:, :3].clone()  # the xyz columns; the attribute columns have no CSM-off twin
        elif key == f"net3d.fp.{len(off.net3d.fp) - 1}.mlp.0.weight":
            state[key] = value[:, : state[key].shape[1]].clone()  # coarse part; the attribute skip has no twin
        elif key in state:
            state[key] = value.clone()
    off.load_state_dict(state)
    batch = _batch()
    with torch.no_grad():
        a, b = full(batch), off(batch)
    torch.testing.assert_close(a.logits_3d, b.logits_3d, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.s_con, torch.ones_like(a.s_con))  # the CSM runs (S_con) all the same
    full.train()
    total, _ = safnet_loss(full(batch), batch, full.config)
    total.backward()
    assert full.attr_gain.grad is not None and full.attr_gain.grad.abs().sum() > 0
    # Without the gain (csm_attr_gain false) the attributes enter at full strength: the test can fail.
    torch.manual_seed(0)
    no_gain = build_model(_small(freeze_2d=True, csm_attr_gain=False)).eval()
    no_gain.load_state_dict({k: v for k, v in full.state_dict().items() if k != "attr_gain"})
    with torch.no_grad():
        assert not torch.allclose(no_gain(batch).logits_3d, b.logits_3d, atol=1e-4)


def test_unprojected_loss_trains_the_2d_tail_that_the_prediction_uses():
    """Stage 3d (2D net frozen): L_2Dunp's gradient reaches the 2D net's last decoder
    stage, and changing that stage changes the fused prediction."""
    torch.manual_seed(0)
    cfg = _small(freeze_2d=True)
    model = build_model(cfg).train()
    batch = _batch()
    out = model(batch)
    _, parts = safnet_loss(out, batch, cfg)
    assert "unproj" in parts and parts["unproj"].item() > 0
    model.zero_grad()
    parts["unproj"].backward()
    up1 = model.net2d.up1.fuse[0].weight
    assert up1.grad is not None and up1.grad.abs().sum() > 0
    assert model.net2d.encoder.conv1.weight.grad is None  # the rest stays frozen
    assert {id(p) for p in model.tail_2d_parameters()} >= {id(up1), id(model.net2d.classifier.weight)}
    model.eval()
    with torch.no_grad():
        before = model(batch).logits.clone()
        up1.add_(0.05 * torch.randn_like(up1))
        after = model(batch).logits
    assert not torch.allclose(before, after, atol=1e-4)
    # Switched off, the term is gone (the 2D net gives no gradient to unproject).
    off_cfg = _small(freeze_2d=True, unproj_finetune_2d=False)
    _, parts = safnet_loss(build_model(off_cfg).train()(batch), batch, off_cfg)
    assert "unproj" not in parts


@torch.no_grad()
def test_nq_knn_is_never_empty_and_ball_falls_back_to_the_nearest_q():
    """A point far from every Q point: with nq_mode knn its N_Q is the k nearest Q
    points and S_con is defined; with ball its N_Q is empty and S_con compares with
    the nearest Q point alone (not 0)."""
    from safnet_ros.model.gsm import find_neighbourhoods

    batch = _batch(b=1)
    batch.points[0, 0] = torch.tensor([0.7, 0.7, 2.9])
    batch.q_points = torch.where((batch.q_points - batch.points[:, :1]).norm(dim=-1, keepdim=True) < 0.5,
                                 batch.q_points.new_tensor([-5.0, -5.0, 0.0]), batch.q_points)
    knn_nb = find_neighbourhoods(batch.points, batch.q_points, None, batch.q_mask, 8, 0.15, 3, nq_mode="knn")
    ball_nb = find_neighbourhoods(batch.points, batch.q_points, None, batch.q_mask, 8, 0.15, 3, nq_mode="ball")
    assert bool(knn_nb.q_valid[0, 0].all()) and not bool(ball_nb.q_valid[0, 0].any())
    for mode in ("knn", "ball"):
        torch.manual_seed(0)
        model = build_model(_small(nq_mode=mode)).eval()
        s_con = model(batch).s_con
        assert s_con[0, 0] != 0


def test_old_csm_layout_is_refused_and_csm_off_converted(tmp_path):
    torch.manual_seed(0)
    cfg = _small(csm=False)
    model = build_model(cfg)
    path = tmp_path / "old_off.pt"
    save_checkpoint(path, model, cfg)
    payload = torch.load(path, weights_only=True)
    legacy = {k: v for k, v in payload["config"].items()
              if k not in ("layout", "nq_mode", "csm_centre", "csm_attr_gain", "unproj_finetune_2d")}
    payload["config"] = legacy
    payload["state_dict"]["unproj_head.weight"] = torch.zeros(20, legacy["feat_2d"])
    payload["state_dict"]["unproj_head.bias"] = torch.zeros(20)
    torch.save(payload, path)
    loaded, loaded_cfg, _ = load_checkpoint(path)
    assert loaded_cfg.nq_mode == "ball" and not loaded_cfg.unproj_finetune_2d and loaded_cfg.layout == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    payload["config"] = dict(legacy, csm=True)
    old_csm = tmp_path / "old_csm.pt"
    torch.save(payload, old_csm)
    with pytest.raises(ModelLoadError, match=r"old_csm\.pt: checkpoint of the old CSM layout \(layout 1.*height only"):
        load_checkpoint(old_csm)


def test_shipped_model_still_loads():
    from safnet_ros.engine.inference import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("no shipped model")
    _, cfg, _ = load_checkpoint(path)
    assert cfg.preset_name == "lite"


def test_init_from_a_csm_off_checkpoint_starts_the_full_model_at_its_3d_path(tmp_path):
    """train's ``init_from``: the full model started from a CSM-off checkpoint has that
    checkpoint's 3D path (F3D through the auxiliary head) at step 0."""
    from safnet_ros.engine.train import init_from_checkpoint

    torch.manual_seed(1)
    off_cfg = _small(csm=False, freeze_2d=True)
    off = build_model(off_cfg).eval()
    path = tmp_path / "off.pt"
    save_checkpoint(path, off, off_cfg)
    torch.manual_seed(2)
    full = build_model(_small(freeze_2d=True)).eval()
    counts = init_from_checkpoint(full, path)
    assert counts["widened"] == 2 and counts["fresh"] > 0 and counts["copied"] > 0
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(full(batch).logits_3d, off(batch).logits_3d, atol=1e-5, rtol=1e-5)
