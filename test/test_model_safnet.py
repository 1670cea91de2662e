"""The assembled SAFNet: config, switches, baselines, losses, checkpoints, bad input, overfitting."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.errors import ConfigError, ModelLoadError
from safnet_ros.model.batch import ChunkBatch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.fusion import ChannelAttention
from safnet_ros.model.losses import safnet_loss, unprojected_labels
from safnet_ros.model.safnet import build_model, load_checkpoint, save_checkpoint

H, W = 24, 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _small(**overrides) -> SafnetConfig:
    """The lite preset shrunk further so a forward pass takes milliseconds."""
    base = dict(pn_npoints=(64, 32, 16, 8), pn_nsample=8, k=8)
    base.update(overrides)
    return SafnetConfig.preset("lite", **base)


def _random_batch(b: int = 2, n: int = 200, v: int = 2, seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    m = v * H * W // 2
    points = torch.rand(b, n, 3, generator=g)
    q = torch.cat([points + 0.01 * torch.randn(b, n, 3, generator=g), torch.rand(b, m - n, 3, generator=g)], 1)
    return ChunkBatch(
        points=points,
        images=torch.randn(b, v, 3, H, W, generator=g),
        q_points=q,
        q_mask=torch.ones(b, m, dtype=torch.bool),
        q_pixel=torch.randint(0, v * H * W, (b, m), generator=g),
        labels=torch.randint(0, 20, (b, n), generator=g),
        image_labels=torch.randint(0, 20, (b, v, H, W), generator=g),
    )


# ----------------------------------------------------------------------------- config
def test_presets_round_trip_and_validate():
    for name in ("paper", "lite"):
        cfg = SafnetConfig.preset(name)
        again = SafnetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    paper = SafnetConfig.preset("paper")
    assert (paper.k, paper.resnet_depth, paper.stem_stride, paper.pn_npoints) == (64, 34, 1, (2048, 512, 128, 32))
    assert (paper.a1, paper.a2, paper.b1, paper.b2, paper.a3, paper.a4, paper.b3) == (0.25, 0.25, 0, 0, 1.0, 0.1, 0)
    assert (paper.w_2d, paper.w_3d, paper.w_unproj, paper.dropout) == (0.2, 0.8, 0.8, 0.5)
    assert paper.pn_in_channels == 64 and paper.agg_mlp[-1] + paper.feat_3d == 192
    with pytest.raises(ConfigError, match="unknown SAFNet preset"):
        SafnetConfig.preset("huge")
    with pytest.raises(ConfigError, match="variant"):
        SafnetConfig.preset("lite", variant="mvpnet")
    with pytest.raises(ConfigError, match="radius"):
        SafnetConfig.preset("lite", radius=-1.0)
    with pytest.raises(ConfigError, match="unknown SAFNet config field"):
        SafnetConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="malformed"):
        SafnetConfig.from_dict(dict(SafnetConfig.preset("lite").to_dict(), csm_mlp=["wide"]))
    with pytest.raises(ConfigError, match="last FP MLP"):
        SafnetConfig.preset("lite", feat_3d=64)


# ----------------------------------------------------------------------------- forward, variants
@pytest.mark.parametrize("variant", ["safnet", "pointnet2", "project2d", "concat"])
def test_variants_run_with_the_right_shapes(variant):
    torch.manual_seed(0)
    batch = _random_batch()
    model = build_model(_small(variant=variant)).train()
    out = model(batch)
    assert out.logits.shape == (2, 200, 20)
    for s in (out.s_geo, out.s_con, out.s):
        assert s.shape == (2, 200)
    total, parts = safnet_loss(out, batch, model.config)
    assert torch.isfinite(total)
    total.backward()
    expected_parts = {
        "safnet": {"fusion", "3d", "2d", "unproj"},
        "concat": {"fusion", "3d", "2d", "unproj"},
        "pointnet2": {"fusion"},
        "project2d": {"fusion", "2d"},
    }[variant]
    assert set(parts) == expected_parts
    if variant == "project2d":
        assert model.net3d is None and model.head is None
    if variant == "pointnet2":
        assert model.net2d is None and model.net3d.in_channels == 0
    if variant == "concat":
        assert model.gsm is None and model.csm is None and torch.equal(out.s, torch.ones_like(out.s))


def test_project2d_returns_the_2d_logits_of_the_nearest_pixel():
    torch.manual_seed(0)
    batch = _random_batch(b=1, n=50, v=1)
    model = build_model(_small(variant="project2d")).eval()
    with torch.no_grad():
        out = model(batch)
        _, logits2d = model.net2d(batch.images[:, 0])
    d = torch.cdist(batch.points[0], batch.q_points[0])
    pixel = batch.q_pixel[0, d.argmin(1)]
    expected = logits2d[0].flatten(1)[:, pixel].T
    assert torch.allclose(out.logits[0], expected, atol=1e-5)


def test_every_gsm_scalar_gets_a_gradient_from_the_total_loss():
    torch.manual_seed(0)
    batch = _random_batch()
    model = build_model(_small()).train()
    total, _ = safnet_loss(model(batch), batch, model.config)
    total.backward()
    for name in ("a1", "a2", "b1", "b2", "a3", "a4", "b3"):
        grad = getattr(model.gsm, name).grad
        assert grad is not None and grad.abs().item() > 0, name


# ----------------------------------------------------------------------------- switches
def test_each_switch_changes_exactly_its_part():
    torch.manual_seed(0)
    batch = _random_batch()
    full = build_model(_small()).train()
    out_full = full(batch)
    assert full.gsm.use_forward and full.gsm.use_backward and full.csm is not None
    assert sum(isinstance(m, ChannelAttention) for m in full.modules()) == 2
    assert not torch.allclose(out_full.s_geo, torch.ones_like(out_full.s_geo))

    no_gsm = build_model(_small(gsm_forward=False, gsm_backward=False)).train()
    out = no_gsm(batch)
    assert no_gsm.gsm is None and torch.equal(out.s_geo, torch.ones_like(out.s_geo))
    assert not torch.allclose(out.s_con, torch.ones_like(out.s_con))

    fwd = build_model(_small(gsm_backward=False))
    assert fwd.gsm.use_forward and not fwd.gsm.use_backward
    bwd = build_model(_small(gsm_forward=False))
    assert bwd.gsm.use_backward and not bwd.gsm.use_forward

    no_csm = build_model(_small(csm=False)).train()
    out = no_csm(batch)
    assert no_csm.csm is None and no_csm.net3d.in_channels == 0
    assert torch.equal(out.s_con, torch.ones_like(out.s_con))
    assert full.net3d.in_channels == full.config.csm_mlp[-1]

    no_se = build_model(_small(channel_attention=False))
    assert not any(isinstance(m, ChannelAttention) for m in no_se.modules())

    _, parts = safnet_loss(build_model(_small(unproj_loss=False)).train()(batch), batch, _small(unproj_loss=False))
    assert set(parts) == {"fusion", "3d", "2d"}
    _, parts = safnet_loss(build_model(_small(aux_losses=False)).train()(batch), batch, _small(aux_losses=False))
    assert set(parts) == {"fusion", "unproj"}
    frozen_cfg = _small(freeze_2d=True)
    frozen = build_model(frozen_cfg).train()
    out = frozen(batch)
    assert out.logits_2d is None and not frozen.net2d.training
    _, parts = safnet_loss(out, batch, frozen_cfg)
    assert "2d" not in parts


def test_loss_weights_follow_eq_11():
    torch.manual_seed(0)
    batch = _random_batch()
    cfg = _small()
    out = build_model(cfg).train()(batch)
    total, parts = safnet_loss(out, batch, cfg)
    expected = parts["fusion"] + 0.2 * parts["2d"] + 0.8 * parts["3d"] + 0.8 * parts["unproj"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_unprojected_labels_take_the_nearest_point_within_r_prime():
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    q = torch.tensor([[[0.01, 0.0, 0.0], [0.98, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    batch = ChunkBatch(points, torch.zeros(1, 1, 3, 2, 2), q, torch.tensor([[True, True, True, False]]),
                       torch.zeros(1, 4, dtype=torch.long), labels=torch.tensor([[3, 7]]))
    assert unprojected_labels(batch, 0.05).tolist() == [[3, 7, IGNORE_INDEX, IGNORE_INDEX]]


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_from_before_resnet_width_loads_as_width_64(tmp_path):
    """Checkpoints written before the field existed hold no ``resnet_width``: their 2D
    net is the torchvision-width one, and they load as such."""
    torch.manual_seed(0)
    cfg = _small(resnet_width=64)
    model = build_model(cfg).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, cfg)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["resnet_width"]
    torch.save(payload, path)
    loaded, cfg2, _ = load_checkpoint(path)
    assert cfg2.resnet_width == 64 and loaded.net2d.encoder.channels == (64, 128, 256, 512)
    batch = _random_batch()
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)
    assert SafnetConfig.preset("lite").resnet_width == 32 and SafnetConfig.preset("paper").resnet_width == 64


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    batch = _random_batch()
    cfg = _small()
    model = build_model(cfg)
    model.train()
    model(batch)  # move the BN statistics away from their initial values
    model.eval()
    with torch.no_grad():
        before = model(batch).logits
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, cfg, {"epoch": 3, "miou": np.float32(0.5), "iou": torch.tensor([0.25, 0.75])})
    loaded, cfg2, extra = load_checkpoint(path)
    assert cfg2 == cfg and extra == {"epoch": 3, "miou": 0.5, "iou": [0.25, 0.75]}
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, before)

    with pytest.raises(ModelLoadError, match="'lite'.*'paper'"):
        load_checkpoint(path, expected_preset="paper")
    with pytest.raises(ModelLoadError, match="missing"):
        load_checkpoint(tmp_path / "none.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    payload = torch.load(path, weights_only=True)
    payload["config"]["csm_mlp"] = [16, 16, 16]  # weights no longer fit the config
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelLoadError, match="not a safnet_ros checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


# ----------------------------------------------------------------------------- bad input
def _assert_runs_without_2d(batch: ChunkBatch) -> None:
    model = build_model(_small()).train()
    out = model(batch)
    assert torch.equal(out.s, torch.zeros_like(out.s)) and bool(torch.isfinite(out.logits).all())
    total, _ = safnet_loss(out, batch, model.config)
    assert torch.isfinite(total)
    total.backward()
    # F2D is zero: the 2D features cannot change the prediction
    model.eval()
    with torch.no_grad():
        a = model(batch).logits
        batch.images = batch.images + 5.0
        b = model(batch).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_chunk_without_valid_view_pixels_runs_with_s_zero():
    batch = _random_batch()
    batch.q_mask = torch.zeros_like(batch.q_mask)
    _assert_runs_without_2d(batch)
    no_views = _random_batch()
    no_views.images = torch.zeros(2, 0, 3, H, W)
    no_views.image_labels = None
    model = build_model(_small()).train()
    out = model(no_views)
    assert not bool(out.q_valid.any())  # q_pixel points into no view
    _, parts = safnet_loss(out, no_views, model.config)
    assert "unproj" not in parts  # no view: no 2D logits to unproject
    assert torch.equal(out.s, torch.zeros_like(out.s))
    empty = _random_batch()
    empty.q_points = torch.zeros(2, 0, 3)
    empty.q_mask = torch.zeros(2, 0, dtype=torch.bool)
    empty.q_pixel = torch.zeros(2, 0, dtype=torch.long)
    _assert_runs_without_2d(empty)


def test_fewer_points_than_centroids():
    torch.manual_seed(0)
    batch = _random_batch(n=10)
    for preset in ("lite", "paper"):
        cfg = SafnetConfig.preset(preset, resnet_depth=18, stem_stride=2)
        assert min(cfg.pn_npoints[:2]) > 10
        out = build_model(cfg).eval()(batch)
        assert out.logits.shape == (2, 10, 20) and bool(torch.isfinite(out.logits).all())


def test_nan_points_are_excluded_and_get_uniform_logits():
    torch.manual_seed(0)
    batch = _random_batch()
    model = build_model(_small()).eval()
    with torch.no_grad():
        clean = model(batch)
    bad = _random_batch()
    bad.points[0, :5] = float("nan")
    bad.points[1, 7, 2] = float("inf")
    model.train()
    out = model(bad)
    total, _ = safnet_loss(out, bad, model.config)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(bad)
    assert bool(torch.isfinite(out.logits).all())
    assert torch.equal(out.logits[0, :5], torch.zeros(5, 20)) and torch.equal(out.logits[1, 7], torch.zeros(20))
    assert out.point_valid[0, :5].sum() == 0 and bool(out.point_valid[0, 5:].all())
    assert torch.equal(out.s[0, :5], torch.zeros(5))
    # sample 1's other points hardly change (only p7's neighbourhoods lose it)
    assert (out.logits[1, :7] - clean.logits[1, :7]).abs().max() < 10.0


# ----------------------------------------------------------------------------- overfitting
def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4, OpenCV optical axes (z forward, x right, y down), world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


# Scene (metres): floor z=0 and wall x=0 over [0, 1.5]; a picture on the wall (same
# plane, other colour and label); a box [0.8, 1.2] x [0.6, 1.0] x [0, 0.4].
BOX_LO, BOX_HI = np.array([0.8, 0.6, 0.0]), np.array([1.2, 1.0, 0.4])
CLASS = {"wall": 0, "floor": 1, "cabinet": 2, "picture": 10}
COLOUR = {"wall": (200, 190, 160), "floor": (110, 80, 50), "cabinet": (40, 60, 200), "picture": (220, 30, 30)}


def _surface_label(xyz: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """surface 0 floor, 1 wall, 2 box -> class names (picture where the wall is painted)."""
    names = np.array(["floor", "wall", "cabinet"], dtype=object)[surface]
    picture = (surface == 1) & (xyz[:, 1] > 0.5) & (xyz[:, 1] < 1.0) & (xyz[:, 2] > 0.6) & (xyz[:, 2] < 1.1)
    names[picture] = "picture"
    return names


def _raycast(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit (t along ``dirs``, surface id) of each ray; t = inf for a miss."""
    n = len(dirs)
    best_t = np.full(n, np.inf)
    best_s = np.full(n, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for surface, axis, (a0, a1) in ((0, 2, (0, 1)), (1, 0, (1, 2))):  # floor z=0, wall x=0
            t = -origins[:, axis] / dirs[:, axis]
            hit = origins + t[:, None] * dirs
            ok = (t > 0) & (hit[:, a0] >= 0) & (hit[:, a0] <= 1.5) & (hit[:, a1] >= 0) & (hit[:, a1] <= 1.5)
            better = ok & (t < best_t)
            best_t[better], best_s[better] = t[better], surface
        t1 = (BOX_LO - origins) / dirs
        t2 = (BOX_HI - origins) / dirs
        t_near = np.minimum(t1, t2).max(axis=1)
        t_far = np.maximum(t1, t2).min(axis=1)
    ok = (t_near <= t_far) & (t_near > 0) & (t_near < best_t)
    best_t[ok], best_s[ok] = t_near[ok], 2
    return best_t, best_s


def _synthetic_chunk(n_points: int = 1500, h: int = 48, w: int = 64, seed: int = 0) -> ChunkBatch:
    """A labelled floor + wall-with-picture + box scene, two posed RGB-D views rendered
    by ray casting, Q = back-projection of every hit pixel."""
    rng = np.random.default_rng(seed)
    # P: points on the surfaces (the box: its top and two visible sides).
    floor = np.c_[rng.uniform(0, 1.5, (600, 2)), np.zeros(600)]
    wall = np.c_[np.zeros(600), rng.uniform(0, 1.5, (600, 2))]
    top = np.c_[rng.uniform(0.8, 1.2, 150), rng.uniform(0.6, 1.0, 150), np.full(150, 0.4)]
    side_x = np.c_[np.full(75, 1.2), rng.uniform(0.6, 1.0, 75), rng.uniform(0, 0.4, 75)]
    side_y = np.c_[rng.uniform(0.8, 1.2, 75), np.full(75, 1.0), rng.uniform(0, 0.4, 75)]
    xyz = np.concatenate([floor, wall, top, side_x, side_y])
    surface = np.r_[np.zeros(600, int), np.ones(600, int), np.full(300, 2)]
    inside_box = (surface == 0) & np.all((xyz[:, :2] > BOX_LO[:2]) & (xyz[:, :2] < BOX_HI[:2]), axis=1)
    xyz, surface = xyz[~inside_box], surface[~inside_box]
    xyz, surface = xyz[:n_points], surface[:n_points]
    labels = np.array([CLASS[s] for s in _surface_label(xyz, surface)])

    fx = fy = 0.9 * w
    intr = np.array([[fx, 0, w / 2], [0, fy, h / 2], [0, 0, 1]])
    poses = [_look_at(np.array([2.0, 1.6, 1.3]), np.array([0.3, 0.7, 0.4])),
             _look_at(np.array([1.8, 0.1, 1.0]), np.array([0.2, 0.9, 0.5]))]
    v_grid, u_grid = np.mgrid[0:h, 0:w]
    cam_dirs = np.stack([(u_grid.ravel() + 0.5 - intr[0, 2]) / fx, (v_grid.ravel() + 0.5 - intr[1, 2]) / fy,
                         np.ones(h * w)], axis=1)
    images, image_labels, q_list, pix_list = [], [], [], []
    for view, pose in enumerate(poses):
        dirs = cam_dirs @ pose[:3, :3].T
        t, surf = _raycast(np.broadcast_to(pose[:3, 3], dirs.shape), dirs)
        hit = np.isfinite(t)
        pts = pose[:3, 3] + t[hit, None] * dirs[hit]  # t is the z-depth: cam_dirs have z = 1
        names = _surface_label(pts, surf[hit])
        rgb = np.zeros((h * w, 3), np.float32)
        rgb[hit] = np.array([COLOUR[s] for s in names], np.float32)
        rgb += rng.normal(0, 4, rgb.shape)  # sensor noise
        img = ((rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).reshape(h, w, 3).transpose(2, 0, 1)
        lab = np.full(h * w, IGNORE_INDEX)
        lab[hit] = [CLASS[s] for s in names]
        images.append(img)
        image_labels.append(lab.reshape(h, w))
        q_list.append(pts)
        pix_list.append(view * h * w + np.flatnonzero(hit))
    q = np.concatenate(q_list)
    return ChunkBatch(
        points=torch.tensor(xyz, dtype=torch.float32)[None],
        images=torch.tensor(np.stack(images), dtype=torch.float32)[None],
        q_points=torch.tensor(q, dtype=torch.float32)[None],
        q_mask=torch.ones(1, len(q), dtype=torch.bool),
        q_pixel=torch.tensor(np.concatenate(pix_list))[None],
        labels=torch.tensor(labels)[None],
        image_labels=torch.tensor(np.stack(image_labels))[None],
    )


def test_synthetic_chunk_geometry_is_consistent():
    batch = _synthetic_chunk()
    # every Q point lies on a surface: near some P point or on a plane/box face
    q = batch.q_points[0].numpy()
    on_plane = (np.abs(q[:, 2]) < 1e-6) | (np.abs(q[:, 0]) < 1e-6)
    on_box = np.all((q >= BOX_LO - 1e-6) & (q <= BOX_HI + 1e-6), axis=1)
    assert bool(np.all(on_plane | on_box)) and len(q) > 2000
    labels = batch.labels[0].numpy()
    assert {0, 1, 2, 10} <= set(labels.tolist())


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin at every barrier
    while other processes run (measured: 2-8 s per step instead of 0.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_full_model_overfits_one_synthetic_chunk(one_thread, overfit):
    torch.manual_seed(0)
    batch = _synthetic_chunk()
    cfg = SafnetConfig.preset("lite", pn_npoints=(512, 128, 32, 8))
    model = build_model(cfg)
    start = time.perf_counter()
    accuracy, pred, steps = overfit(model, batch, cfg, steps=300)
    elapsed = time.perf_counter() - start
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} after {steps} steps ({elapsed:.1f} s)"
    print(f"overfit: accuracy {accuracy:.3f} after {steps} steps in {elapsed:.1f} s")
    # the picture (same geometry as the wall) is told apart: the 2D path is used
    picture = batch.labels[0] == CLASS["picture"]
    assert float((pred[0, picture] == CLASS["picture"]).float().mean()) > 0.8


# ----------------------------------------------------------------------------- bench CLI
def test_bench_model_command_prints_json_rows(capsys):
    from safnet_ros.cli import main

    code = main(["bench", "model", "--presets", "lite", "--points", "300", "--views", "1,2", "--repeats", "1",
                 "--warmup", "0", "--width", "32", "--height", "24", "--device", "cpu", "--json",
                 "--precision", "fp32,bf16"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(r["preset"], r["points"], r["views"], r["precision"], r["q_points"]) for r in rows] == [
        ("lite", 300, 1, "fp32", 768), ("lite", 300, 1, "bf16", 768),
        ("lite", 300, 2, "fp32", 1536), ("lite", 300, 2, "bf16", 1536)]
    for r in rows:
        assert r["safnet_ms"] > 0 and r["pointnet2_ms"] > 0
        assert r["ratio"] == pytest.approx(r["safnet_ms"] / r["pointnet2_ms"], rel=0.05)
    assert main(["bench", "model", "--presets", "huge", "--points", "10", "--views", "1"]) == 2
    assert main(["bench", "model", "--presets", "lite", "--points", "10", "--views", "1", "--device", "cpu",
                 "--precision", "fp16"]) == 2  # fp16 autocast is CUDA only: one error line


def test_single_point_chunk_trains():
    torch.manual_seed(0)
    batch = _random_batch(b=1, n=1)
    model = build_model(_small()).train()
    total, _ = safnet_loss(model(batch), batch, model.config)
    assert torch.isfinite(total)
    total.backward()


# ----------------------------------------------------------------------------- confidence gate
def test_confidence_gate_starts_near_identity_and_learns():
    """The gate (our extension) begins at g = 0.98 for every point, so a model started from
    gateless weights predicts what it predicted; its two scalars get a gradient."""
    torch.manual_seed(0)
    batch = _random_batch()
    plain = build_model(_small()).eval()
    gated = build_model(_small(confidence_gate=True)).eval()
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["confidence_gate.bias", "confidence_gate.weight"] and not unexpected
    with torch.no_grad():
        a, b = plain(batch), gated(batch)
    assert torch.equal(a.s, b.s)  # S stays the paper's S_geo * S_con
    agree = (a.logits.argmax(-1) == b.logits.argmax(-1)).float().mean().item()
    assert agree > 0.95, agree
    gated.train()
    total, _ = safnet_loss(gated(batch), batch, gated.config)
    total.backward()
    for p in (gated.confidence_gate.weight, gated.confidence_gate.bias):
        assert p.grad is not None and p.grad.abs().item() > 0


def test_a_steep_confidence_gate_closes_on_unsure_pixels_and_stays_open_on_sure_ones():
    """The confidence is the largest softmax probability; a gate trained steep passes F2D
    where the 2D net is sure and shuts it where its prediction is uniform."""
    from safnet_ros.model.fusion import ConfidenceGate, pixel_confidence

    gate = ConfidenceGate(weight=40.0, bias=-20.0)  # g = sigmoid(40 c - 20): 0 below c ~ 0.4, 1 above ~ 0.6
    sure = torch.tensor([[10.0] + [0.0] * 19])  # softmax max ~ 0.9991
    unsure = torch.zeros(1, 20)  # uniform: 1 / 20
    c = pixel_confidence(torch.cat([sure, unsure]))
    assert c[0] > 0.99 and abs(c[1].item() - 0.05) < 1e-6
    g = gate(c)
    assert g[0] > 0.99 and g[1] < 1e-6
    with pytest.raises(ConfigError):
        SafnetConfig.preset("lite", confidence_gate=True, variant="nonsense")


def test_confidence_gate_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model(_small(confidence_gate=True)).eval()
    with torch.no_grad():
        model.confidence_gate.weight.fill_(0.2)
    save_checkpoint(tmp_path / "g.pt", model)
    loaded, config, _ = load_checkpoint(tmp_path / "g.pt")
    assert config.confidence_gate and loaded.confidence_gate.weight.item() == pytest.approx(0.2)
    batch = _random_batch(seed=3)
    with torch.no_grad():
        assert torch.allclose(model(batch).logits, loaded(batch).logits)
