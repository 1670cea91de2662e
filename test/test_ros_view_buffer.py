"""The streaming view buffer: keyframe policy, count and memory bounds, time jumps (no ROS needed)."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from safnet_ros.engine.batching import PosedView
from safnet_ros.engine.view_buffer import (
    MIB,
    KeyframePolicy,
    TimeJumpDetector,
    ViewBuffer,
    pose_delta,
    view_nbytes,
)
from safnet_ros.errors import ConfigError


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def make_view(stamp: float, x: float = 0.0, yaw_deg: float = 0.0, wh: tuple[int, int] = (16, 12)) -> PosedView:
    w, h = wh
    pose = np.eye(4)
    pose[:3, :3] = rot_z(yaw_deg)
    pose[0, 3] = x
    return PosedView(
        color=np.zeros((h, w, 3), np.uint8),
        depth=np.ones((h, w), np.float32),
        K=np.array([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]),
        camera_to_world=pose,
        stamp=stamp,
    )


def test_pose_delta_measures_translation_and_rotation():
    a = make_view(0.0).camera_to_world
    b = make_view(0.0, x=0.3, yaw_deg=30.0).camera_to_world
    moved, turned = pose_delta(a, b)
    assert moved == pytest.approx(0.3)
    assert turned == pytest.approx(30.0, abs=1e-6)
    assert pose_delta(a, a) == (0.0, 0.0)


def test_first_view_is_kept_and_policy_needs_time_and_motion():
    buf = ViewBuffer(max_views=10, policy=KeyframePolicy(min_translation=0.1, min_rotation_deg=10.0, min_interval=0.5))
    assert buf.offer(make_view(0.0))
    assert not buf.offer(make_view(0.2, x=1.0))  # moved a lot but too soon
    assert not buf.offer(make_view(1.0, x=0.05))  # late enough but hardly moved
    assert not buf.offer(make_view(1.1, yaw_deg=5.0))  # turned too little
    assert buf.offer(make_view(1.2, yaw_deg=12.0))  # turned enough: kept
    assert buf.offer(make_view(2.0, yaw_deg=12.0, x=0.15))  # moved enough from the LAST kept view
    assert len(buf) == 3
    assert [v.stamp for v in buf.views()] == [0.0, 1.2, 2.0]
    assert buf.stats.offered == 6 and buf.stats.kept == 3 and buf.stats.not_keyframe == 3


def test_zero_motion_thresholds_keep_every_view_past_the_interval():
    buf = ViewBuffer(max_views=10, policy=KeyframePolicy(0.0, 0.0, 0.1))
    kept = [buf.offer(make_view(t)) for t in (0.0, 0.05, 0.1, 0.15, 0.2)]
    assert kept == [True, False, True, False, True]


def test_decide_matches_offer_without_counting():
    buf = ViewBuffer(policy=KeyframePolicy(0.1, 0.0, 0.0))
    buf.offer(make_view(0.0))
    assert not buf.decide(1.0, make_view(1.0, x=0.01).camera_to_world)
    assert buf.decide(1.0, make_view(1.0, x=0.2).camera_to_world)
    assert buf.stats.offered == 1


def test_count_bound_evicts_oldest_first():
    buf = ViewBuffer(max_views=3, policy=KeyframePolicy(0.0, 0.0, 0.0))
    for i in range(5):
        assert buf.offer(make_view(float(i)))
    assert [v.stamp for v in buf.views()] == [2.0, 3.0, 4.0]
    assert buf.stats.evicted_count == 2


def test_memory_bound_evicts_until_the_new_view_fits():
    one = view_nbytes(make_view(0.0, wh=(128, 128)))
    assert one == 128 * 128 * 3 + 128 * 128 * 4 + 9 * 8 + 16 * 8
    buf = ViewBuffer(max_views=100, max_mb=2.5 * one / MIB, policy=KeyframePolicy(0.0, 0.0, 0.0))
    for i in range(6):
        assert buf.offer(make_view(float(i), wh=(128, 128)))
        assert buf.nbytes <= buf.max_bytes
    assert len(buf) == 2
    assert buf.nbytes == 2 * one
    assert [v.stamp for v in buf.views()] == [4.0, 5.0]
    assert buf.stats.evicted_memory == 4


def test_view_larger_than_the_whole_bound_is_refused_and_counted():
    small = make_view(0.0)
    buf = ViewBuffer(max_mb=2 * view_nbytes(small) / MIB, policy=KeyframePolicy(0.0, 0.0, 0.0))
    assert buf.offer(small)
    assert not buf.offer(make_view(1.0, wh=(256, 256)))
    assert buf.stats.too_large == 1
    assert len(buf) == 1  # the buffered view was not thrown away for nothing


def test_time_jump_back_clears_the_buffer():
    buf = ViewBuffer(max_views=10, policy=KeyframePolicy(0.0, 0.0, 0.1), jump_tolerance=0.5)
    for t in (100.0, 101.0, 102.0):
        assert buf.offer(make_view(t))
    # a reordering within the tolerance is not a jump; the policy refuses it (dt = -0.2 s < 0.1 s)
    assert not buf.offer(make_view(101.8))
    assert buf.stats.time_jumps == 0 and len(buf) == 3
    assert buf.offer(make_view(10.0))  # bag looped: everything before goes
    assert buf.stats.time_jumps == 1
    assert [v.stamp for v in buf.views()] == [10.0]
    assert buf.offer(make_view(11.0))
    assert len(buf) == 2


def test_clear_and_set_limits():
    buf = ViewBuffer(max_views=5, policy=KeyframePolicy(0.0, 0.0, 0.0))
    for i in range(5):
        buf.offer(make_view(float(i)))
    buf.set_limits(max_views=2)
    assert [v.stamp for v in buf.views()] == [3.0, 4.0]
    buf.clear()
    assert len(buf) == 0 and buf.nbytes == 0
    assert buf.offer(make_view(0.0))  # clear also forgets the newest stamp: 0 is no jump
    assert buf.stats.time_jumps == 0


def test_invalid_pose_is_refused_and_counted():
    buf = ViewBuffer()
    bad = make_view(0.0)
    bad.camera_to_world[0, 3] = np.nan
    assert not buf.offer(bad)
    assert buf.stats.invalid == 1 and len(buf) == 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_views=0), dict(max_mb=0.0), dict(max_mb=float("nan"))],
)
def test_bad_limits_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        ViewBuffer(**kwargs)


def test_bad_policy_raises_config_error():
    with pytest.raises(ConfigError):
        KeyframePolicy(min_translation=-1.0)


def test_time_jump_detector_tolerates_small_reorders():
    det = TimeJumpDetector(tolerance=0.5)
    assert [det.check(t) for t in (1.0, 2.0, 1.7, 2.5, 0.5, 0.6)] == [False, False, False, False, True, False]


def test_concurrent_offers_and_snapshots_stay_within_bounds():
    buf = ViewBuffer(max_views=4, policy=KeyframePolicy(0.0, 0.0, 0.0), jump_tolerance=1e9)
    errors: list[Exception] = []

    def writer(offset: int) -> None:
        for i in range(200):
            buf.offer(make_view(float(i * 2 + offset)))

    def reader() -> None:
        for _ in range(400):
            views = buf.views()
            if len(views) > 4:
                errors.append(AssertionError(len(views)))

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(buf) <= 4
    assert buf.stats.offered == 400
    assert buf.stats.kept + buf.stats.not_keyframe == 400
