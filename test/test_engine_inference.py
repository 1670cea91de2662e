"""Segmenter: whole-cloud inference behaviours the node, bag tools and demo rely on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from safnet_ros.data.labels import IGNORE_INDEX
from safnet_ros.engine import inference
from safnet_ros.engine.batching import (
    PosedView,
    build_chunk_sample,
    chunk_box,
    collate,
    in_box,
    view_key,
)
from safnet_ros.engine.inference import Segmenter, _Part, voxel_downsample
from safnet_ros.errors import ModelLoadError


def _lite_segmenter(**kwargs) -> Segmenter:
    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model

    torch.manual_seed(0)
    config = SafnetConfig.preset("lite")
    return Segmenter(build_model(config), config, "cpu", **kwargs)


def _room(n: int = 3000, seed: int = 0) -> np.ndarray:
    """Floor (z=0) 3 x 2 m and a wall (x=0): (n, 3) metres."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 3, n // 2), rng.uniform(0, 2, n // 2), np.zeros(n // 2)]
    wall = np.c_[np.zeros(n - n // 2), rng.uniform(0, 2, n - n // 2), rng.uniform(0, 2, n - n // 2)]
    return np.concatenate([floor, wall]).astype(np.float32)


def _floor_view(center_x: float, wh=(160, 120)) -> PosedView:
    """A camera 1.5 m above the floor looking straight down at x=center_x, y=1."""
    w, h = wh
    K = np.array([[100.0, 0, (w - 1) / 2], [0, 100.0, (h - 1) / 2], [0, 0, 1]])
    # optical z points down (-Z world), x right (+X world), y down the image (-Y world)
    R = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = [center_x, 1.0, 1.5]
    depth = np.full((h, w), 1.5, np.float32)
    color = np.full((h, w, 3), 128, np.uint8)
    return PosedView(color=color, depth=depth, K=K, camera_to_world=T)


def test_backprojected_floor_view_lies_on_the_floor():
    view = _floor_view(1.0)
    sample = build_chunk_sample(_room(), [view])
    world_q = sample.q_points + sample.shift
    assert len(world_q) > 1000
    assert np.abs(world_q[:, 2]).max() < 1e-4  # the floor is z = 0
    batch = collate([sample])
    assert batch.q_mask.all() and batch.images.shape == (1, 1, 3, 120, 160)


def test_no_views_segments_everything_3d_only():
    seg = _lite_segmenter(chunk_stride=1.5)
    result = seg.segment(_room(), [])
    assert result.segmented.all()
    assert ((result.labels >= 0) & (result.labels < 20)).all()
    assert result.views_used == []
    assert result.num_chunks > 0 and result.chunks_without_views == result.num_chunks


def test_crop_to_what_the_views_cover():
    seg = _lite_segmenter(chunk_stride=1.5, crop_margin=0.1, outside_views="ignore")
    pts = _room()
    far = np.c_[np.full(50, 30.0), np.zeros(50), np.zeros(50)].astype(np.float32)  # 30 m away
    result = seg.segment(np.concatenate([pts, far]), [_floor_view(1.0)])
    assert not result.segmented[-50:].any()
    assert (result.labels[-50:] == IGNORE_INDEX).all()
    assert result.segmented[:1000].sum() > 0
    assert result.views_used == [0]
    # similarity is defined exactly where points were segmented
    assert np.isfinite(result.s[result.segmented]).all()
    assert np.isnan(result.s[~result.segmented]).all()


def test_view_distance_says_how_near_the_views_pixels_came():
    """Floor points under the camera have a back-projected pixel within millimetres; the wall (x = 0,
    which the downward view never sees) is farther; without views every point is inf; NaN where not segmented."""
    seg = _lite_segmenter(chunk_stride=1.5, crop_margin=5.0)
    pts = _room(2000)
    result = seg.segment(pts, [_floor_view(1.0)])
    d = result.view_distance
    assert d.shape == (len(pts),) and d.dtype == np.float32
    under = result.segmented & (pts[:, 2] == 0) & (np.abs(pts[:, 0] - 1.0) < 0.3) & (np.abs(pts[:, 1] - 1.0) < 0.3)
    assert under.sum() > 50 and np.nanmax(d[under]) < 0.02
    high_wall = result.segmented & (pts[:, 0] == 0) & (pts[:, 2] > 1.0)
    assert high_wall.sum() > 50 and np.nanmin(d[high_wall]) > 0.5
    assert np.isnan(d[~result.segmented]).all()
    no_views = seg.segment(pts, [])
    assert np.isinf(no_views.view_distance).all()


def test_record_views_lists_the_views_each_points_chunks_used():
    seg = _lite_segmenter(chunk_stride=0.5, crop_margin=5.0)
    pts = _room(1500)
    pts[:3] = np.nan
    views = [_floor_view(0.8), _floor_view(2.2)]
    result = seg.segment(pts, views, record_views=True)
    pv = result.point_views
    assert pv.shape == (len(pts), 9 * seg.num_views) and pv.dtype == np.int32  # 1.5 m chunks, 0.5 m stride
    assert (pv[:3] == -1).all()  # not segmented: no view
    used = set(np.unique(pv[pv >= 0]).tolist())
    assert used == set(result.views_used) and used <= {0, 1}
    # every segmented point got the views of its chunks; a point's list holds each of its chunks' picks
    assert ((pv >= 0).any(axis=1) == result.segmented).all()
    assert seg.segment(pts, views).point_views is None  # only when asked


def test_non_finite_points_are_reported_not_labelled():
    seg = _lite_segmenter(chunk_stride=1.5)
    pts = _room(500)
    pts[:7] = np.nan
    result = seg.segment(pts, [])
    assert (result.labels[:7] == IGNORE_INDEX).all() and not result.segmented[:7].any()
    assert result.segmented[7:].all()
    assert any("7 non-finite" in w for w in result.warnings)


def test_max_points_downsamples_and_copies_back():
    seg = _lite_segmenter(chunk_stride=1.5, max_points=800, voxel_size=0.01)
    pts = _room(4000)
    result = seg.segment(pts, [])
    assert result.segmented.all()
    assert any("max_points" in w for w in result.warnings)
    keep, inverse, voxel = voxel_downsample(pts, 0.01, 800)
    assert len(keep) <= 800 and voxel > 0.01
    # points sharing a voxel share a label
    for rep in range(0, len(keep), 97):
        members = np.flatnonzero(inverse == rep)
        assert len(set(result.labels[members].tolist())) == 1


def test_labels_equal_a_direct_forward_on_a_single_chunk():
    """One chunk, no overlap: the vote must return the model's own argmax."""
    seg = _lite_segmenter(chunk_size=10.0, chunk_stride=10.0)
    pts = _room(1500)
    view = _floor_view(1.0)
    result = seg.segment(pts, [view])
    with torch.no_grad():
        batch = collate([build_chunk_sample(pts[result.segmented], [view],
                                            center_xy=None)])
        direct = seg.model(batch).logits[0].argmax(-1).numpy()
    # center_xy differs only by a translation in xy; the model sees local coordinates
    agree = (direct == result.labels[result.segmented]).mean()
    assert agree > 0.99


def test_missing_or_corrupt_model_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.pt"):
        Segmenter.from_checkpoint(tmp_path / "nope.pt", device="cpu")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        Segmenter.from_checkpoint(bad, device="cpu")


def test_cached_view_features_equal_running_the_2d_net_and_are_reused():
    seg = _lite_segmenter(chunk_size=10.0, chunk_stride=10.0)
    pts = _room(1500)
    views = [_floor_view(1.0), _floor_view(2.0)]
    views[1].color[:, :80] = 30  # two different images
    calls = []
    seg.model.net2d.register_forward_hook(lambda *_: calls.append(1))
    batch = collate([build_chunk_sample(pts, views)])
    with torch.no_grad():
        direct = seg.model(batch)
        batch.pixel_features, batch.pixel_logits = seg._encoded(views, [view_key(v) for v in views])
        cached = seg.model(batch)
    torch.testing.assert_close(cached.logits, direct.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.s, direct.s)
    n_before = len(calls)
    seg.segment(pts, views)
    seg.segment(pts, views)
    assert len(calls) == n_before  # both views already encoded: no more 2D passes


def test_warm_up_runs_the_whole_path_once_and_leaves_no_cached_view():
    seg = _lite_segmenter(num_views=3)
    calls = []
    seg.model.net2d.register_forward_hook(lambda *_: calls.append(1))
    seconds = seg.warm_up(points=500)
    assert seconds > 0 and calls == [1]  # the 2D net ran on the warm-up view
    assert len(seg._features) == 0
    assert seg.segment(_room(800), [_floor_view(1.0)]).segmented.any()  # unaffected afterwards


# ----------------------------------------------------------------------------- batched chunks
def _two_rooms_views() -> tuple[np.ndarray, list[PosedView]]:
    """A 3 x 2 m room (several 1.5 m chunks at 0.5 m stride) and two different floor views."""
    views = [_floor_view(0.8), _floor_view(2.2)]
    views[1].color[:, :80] = 30
    return _room(3000, seed=3), views


def _per_part_reference(seg: Segmenter) -> Segmenter:
    """``seg`` with one forward per part, each built by build_chunk_sample and collate (the trainer's
    sample path) instead of the padded batch: the reference the batched forward must match."""
    def run_parts(work, views, keys, parts):
        outputs = []
        for part in parts:
            pv = [views[v] for v in part.views]
            batch = collate([build_chunk_sample(work[part.index], pv, center_xy=part.center)])
            if pv:
                batch.pixel_features, batch.pixel_logits = seg._encoded(pv, [keys[v] for v in part.views])
            with torch.no_grad():
                outputs.append(seg._outputs(seg.model(batch), 0, len(part.index)))
        return outputs

    seg._run_batch = run_parts
    return seg


@pytest.mark.parametrize("batch_points", [60000, 2500])
def test_batched_chunks_give_the_per_chunk_outputs(batch_points):
    """All chunks in one padded forward (or several, by point budget) = one forward per chunk:
    labels on >= 99.9 % of the points, probabilities and similarities within 1e-4. Chunks of
    different sizes and with different views (and points beyond the views, 3D-only) share a batch."""
    pts, views = _two_rooms_views()
    far = np.c_[np.random.default_rng(1).uniform(6, 9, (400, 2)), np.zeros(400)].astype(np.float32)
    pts = np.concatenate([pts, far])
    ref_seg = _per_part_reference(_lite_segmenter(chunk_stride=0.5, crop_margin=0.2))
    seg = _lite_segmenter(chunk_stride=0.5, crop_margin=0.2, batch_points=batch_points)
    batches = []
    run_batch = seg._run_batch
    seg._run_batch = lambda *a: batches.append(len(a[3])) or run_batch(*a)
    ref, out = ref_seg.segment(pts, views), seg.segment(pts, views)
    assert max(batches) > 1 and len(batches) < out.num_chunks  # parts batched
    assert ref.num_chunks == out.num_chunks > 9 and ref.views_used == out.views_used == [0, 1]
    assert 0 < ref.chunks_without_views == out.chunks_without_views < out.num_chunks
    np.testing.assert_array_equal(out.segmented, ref.segmented)
    assert (out.labels == ref.labels).mean() >= 0.999
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-4)
    for name in ("s", "s_geo", "s_con", "view_distance"):
        np.testing.assert_allclose(getattr(out, name), getattr(ref, name), atol=1e-4, equal_nan=True)


def test_views_are_cached_by_content_not_object():
    """A view rebuilt with the same content (a new object) reuses the 2D features and
    back-projection; a view whose pixels changed is encoded again."""
    seg = _lite_segmenter(chunk_size=10.0, chunk_stride=10.0)
    pts, views = _two_rooms_views()
    calls = []
    seg.model.net2d.register_forward_hook(lambda *_: calls.append(1))
    first = seg.segment(pts, views)
    assert len(calls) == 1 and len(seg._features) == 2 and len(seg._backprojected) == 2
    copies = [PosedView(v.color.copy(), v.depth.copy(), v.K.copy(), v.camera_to_world.copy()) for v in views]
    again = seg.segment(pts, copies)
    assert len(calls) == 1
    np.testing.assert_array_equal(again.labels, first.labels)
    copies[0].color[:10] = 0
    seg.segment(pts, copies)
    assert len(calls) == 2 and len(seg._features) == 3


def test_precision_bf16_agrees_with_fp32_and_fp16_needs_cuda():
    from safnet_ros.errors import ConfigError

    pts, views = _two_rooms_views()
    fp32 = _lite_segmenter(chunk_stride=1.5).segment(pts, views)
    bf16 = _lite_segmenter(chunk_stride=1.5, precision="bf16").segment(pts, views)
    assert bf16.segmented.all() == fp32.segmented.all()
    assert (bf16.labels == fp32.labels).mean() >= 0.99
    assert bf16.probs.dtype == np.float32 and np.abs(bf16.probs - fp32.probs).max() < 0.1
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        _lite_segmenter(precision="fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        _lite_segmenter(precision="int8")


def test_precision_auto_is_fp32_on_the_cpu():
    """`precision: auto` (the node's default): bf16 on a CUDA device with it, fp32 on any CPU (bf16 made
    the demo's stream slower on the development CPU)."""
    from safnet_ros.engine import inference

    assert inference.check_precision("auto", torch.device("cpu")) == "fp32"
    assert _lite_segmenter(precision="AUTO").precision == "fp32"
    assert inference.check_precision("bf16", torch.device("cpu")) == "bf16"
    if torch.cuda.is_available():
        expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        assert inference.check_precision("auto", torch.device("cuda")) == expected

def test_points_beyond_the_views_are_labelled_3d_only_or_ignored():
    """outside_views="3d" (default): a 360-degree scan's points far from every view get a label
    from the 3D branch, S = 0, and outside_views True; the points near the views get what they
    get with "ignore", which leaves the far ones unlabelled (today's behaviour)."""
    pts = _room(2000)
    ring = np.random.default_rng(2).uniform(-1, 1, (600, 2))
    ring = 8.0 * ring / np.linalg.norm(ring, axis=1, keepdims=True)  # 8 m around
    scan = np.concatenate([pts, np.c_[ring, np.random.default_rng(3).uniform(0, 2, 600)].astype(np.float32)])
    views = [_floor_view(1.0)]
    with pytest.raises(Exception, match="outside_views"):
        _lite_segmenter(outside_views="drop")
    ignored = _lite_segmenter(chunk_stride=1.5, crop_margin=0.2, outside_views="ignore").segment(scan, views)
    labelled = _lite_segmenter(chunk_stride=1.5, crop_margin=0.2).segment(scan, views)
    far = np.zeros(len(scan), bool)
    far[len(pts):] = True
    assert not ignored.segmented[far].any() and (ignored.labels[far] == IGNORE_INDEX).all()
    assert not ignored.outside_views.any()
    assert labelled.segmented.all() and (labelled.labels < 20).all()
    assert labelled.outside_views[far].all()
    assert (labelled.outside_views == ~ignored.segmented).all()
    assert (labelled.s[labelled.outside_views] == 0).all() and np.isinf(labelled.view_distance[far]).all()
    inside = ignored.segmented
    np.testing.assert_array_equal(labelled.labels[inside], ignored.labels[inside])
    np.testing.assert_allclose(labelled.probs[inside], ignored.probs[inside], atol=1e-5)
    assert labelled.chunks_without_views > ignored.chunks_without_views


def test_small_3d_only_chunks_are_merged_and_the_batches_keep_them_apart():
    """Points beyond the views in 1.5 m chunks of a few hundred points are merged into chunks of at least
    the model's first-level centroid count (lite: 512), in a forward of their own (never padded into a
    batch with views); the points near the views get exactly what they got before."""
    pts = _room(2000)
    ring = np.random.default_rng(2).uniform(-1, 1, (2400, 2))
    ring = 4.0 * ring / np.linalg.norm(ring, axis=1, keepdims=True)  # a ring 4 m around: ~15 small chunks
    scan = np.concatenate([pts, np.c_[ring, np.random.default_rng(3).uniform(0, 2, 2400)].astype(np.float32)])
    views = [_floor_view(1.0)]
    small = _lite_segmenter(chunk_stride=1.5, crop_margin=0.2, min_3d_chunk_points=32)
    merged = _lite_segmenter(chunk_stride=1.5, crop_margin=0.2)
    assert merged.min_3d_chunk_points == merged.config.pn_npoints[0] == 512
    forwards = []
    original = merged._run_batch
    merged._run_batch = lambda work, v, keys, parts: forwards.append([p.views for p in parts]) or original(
        work, v, keys, parts)
    a, b = small.segment(scan, views), merged.segment(scan, views)
    assert a.chunks_without_views >= 8 and b.chunks_without_views < a.chunks_without_views / 4
    assert all(all(v) or not any(v) for v in forwards)  # 3D-only parts never share a batch with viewed ones
    centre = np.zeros(2)
    parts = [_Part(np.arange(1000), (0,), centre), _Part(np.arange(900), (), centre),
             _Part(np.arange(800), (0, 1), centre), _Part(np.arange(700), (), centre)]
    assert [[len(p.index) for p in batch] for batch in merged._batches(parts)] == [[1000, 800], [900, 700]]
    assert b.segmented.all() and (b.outside_views == a.outside_views).all()
    near = ~a.outside_views
    np.testing.assert_array_equal(b.labels[near], a.labels[near])
    np.testing.assert_allclose(b.probs[near], a.probs[near], atol=1e-5)


def test_the_q_points_near_a_chunk_are_those_in_its_grown_bounding_box():
    """in_box on coordinate rows is the row-wise box test: faces included, non-finite chunk points
    ignored, nothing near a chunk without a finite point."""
    rng = np.random.default_rng(3)
    chunk = rng.uniform(0.0, 1.5, (500, 3)).astype(np.float32)
    chunk[::50] = np.nan
    q = rng.uniform(-1.0, 2.5, (20000, 3)).astype(np.float32)
    box = chunk_box(chunk, 0.3)
    q[:2] = box  # the box's corners are near
    q[2:4] = box + np.float32([[-1e-3], [1e-3]])  # just outside
    finite = chunk[np.isfinite(chunk).all(axis=1)]
    expected = np.all((q >= finite.min(axis=0) - 0.3) & (q <= finite.max(axis=0) + 0.3), axis=1)
    near = in_box(np.ascontiguousarray(q.T), box)
    assert np.array_equal(near, expected) and near[:2].all() and not near[2:4].any()
    assert 0 < near.sum() < len(q)
    assert chunk_box(np.full((3, 3), np.nan, np.float32)) is None
    assert not in_box(np.ascontiguousarray(q.T), None).any()


def test_views_prepared_between_clouds_are_not_encoded_again_and_change_nothing(monkeypatch):
    """The node's idle work: views prepared before a cloud give that cloud the labels it would get
    without preparing, and the cloud runs no 2D pass and no back-projection for them."""
    from safnet_ros.engine.pipeline import KEPT, SegmentationPipeline
    from safnet_ros.engine.view_buffer import KeyframePolicy, ViewBuffer

    pts, views = _two_rooms_views()
    reference = _lite_segmenter(chunk_stride=0.5).segment(pts, views)
    seg = _lite_segmenter(chunk_stride=0.5)
    pipeline = SegmentationPipeline(seg, ViewBuffer(max_views=10, policy=KeyframePolicy(0.0, 0.0, 0.0)),
                                     prepare_idle=True)
    for i, view in enumerate(views):
        frame = (view.color, view.depth, view.K)
        assert pipeline.offer_frame(float(i), view.camera_to_world, lambda f=frame: f) == KEPT
    calls, backprojected = [], []
    seg.model.net2d.register_forward_hook(lambda *_: calls.append(1))
    assert pipeline.prepare_new_views(limit=1) == 1 and len(seg._backprojected) == 1
    assert pipeline.prepare_new_views(limit=5) == 1 and pipeline.prepare_new_views() == 0
    assert len(calls) == 2 and len(seg._features) == len(seg._backprojected) == 2
    original = inference.backproject_views
    monkeypatch.setattr(inference, "backproject_views", lambda v: backprojected.append(1) or original(v))
    out = pipeline.segment_cloud(pts, np.eye(4)).result
    assert len(calls) == 2 and backprojected == []  # both views were ready
    assert out.views_used == reference.views_used == [0, 1]
    np.testing.assert_array_equal(out.labels, reference.labels)
    np.testing.assert_allclose(out.probs, reference.probs, atol=1e-6)
    again = (views[1].color, views[1].depth, views[1].K)  # the same content: already cached
    assert pipeline.offer_frame(4.0, views[1].camera_to_world, lambda: again) == KEPT
    assert pipeline.prepare_new_views() == 0 and len(calls) == 2
    moved = views[0].camera_to_world.copy()
    moved[0, 3] += 1.0
    assert pipeline.offer_frame(5.0, moved, lambda: (views[0].color, views[0].depth, views[0].K)) == KEPT
    pipeline.clear_views()  # the time went back: nothing of the old timeline is prepared
    assert len(pipeline.buffer) == 0 and pipeline.prepare_new_views() == 0 and len(calls) == 2
    offline = SegmentationPipeline(_lite_segmenter(), ViewBuffer(max_views=10))  # segment-bag: no idle time
    assert offline.offer_frame(0.0, moved, lambda: (views[1].color, views[1].depth, views[1].K)) == KEPT
    assert offline.prepare_new_views() == 0 and offline.segmenter._features == {}
