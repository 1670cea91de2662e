"""The drop-ins for message_filters, tf2_ros, cv_bridge and sensor_msgs_py, with real rclpy and DDS."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from scipy.spatial.transform import Rotation, Slerp
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from safnet_ros.ros import codecs, compat
from safnet_ros.ros.codecs import ns_to_stamp, stamp_to_ns
from safnet_ros.ros.compat import (
    FallbackApproximateTimeSynchronizer,
    FallbackBuffer,
    FallbackSimpleFilter,
    FallbackStaticTransformBroadcaster,
    FallbackSubscriber,
    FallbackTimeSynchronizer,
    FallbackTransformBroadcaster,
    FallbackTransformListener,
    matrix_to_transform,
    transform_to_matrix,
)
from safnet_ros.ros.tf_path import TF2_ROS, TfPath, tf_message_class

S = 1_000_000_000  # ns per second


def stamped(cls, t: float, frame: str = "cam"):
    msg = cls()
    msg.header = Header(frame_id=frame, stamp=ns_to_stamp(round(t * S)))
    return msg


def secs(msgs):
    return [round(stamp_to_ns(m.header.stamp) / S, 6) for m in msgs]


# ============================================================================ bindings


def test_bindings_and_flags():
    assert compat.HAVE_TF2 == (compat.Buffer is not FallbackBuffer)
    assert compat.HAVE_MESSAGE_FILTERS == (compat.ApproximateTimeSynchronizer is not FallbackApproximateTimeSynchronizer)
    for name in ("LookupException", "ConnectivityException", "ExtrapolationException", "TransformException"):
        assert issubclass(getattr(compat, name), Exception)
    assert issubclass(compat.LookupException, compat.TransformException)
    assert "tf2_ros" in compat.backends()


# ============================================================================ ApproximateTimeSynchronizer (logic)


class Sync:
    """A synchroniser over plain filters, recording emitted sets."""

    def __init__(self, n, queue_size=10, slop=0.02, cls=FallbackApproximateTimeSynchronizer, **kw):
        self.inputs = [FallbackSimpleFilter() for _ in range(n)]
        args = (self.inputs, queue_size) if cls is FallbackTimeSynchronizer else (self.inputs, queue_size, slop)
        self.sync = cls(*args, **kw)
        self.sets = []
        self.sync.registerCallback(lambda *m: self.sets.append(m))

    def feed(self, i, t, cls=Image):
        msg = stamped(cls, t)
        self.inputs[i].signalMessage(msg)
        return msg


def test_sync_matches_within_slop_and_keeps_input_order():
    s = Sync(3, slop=0.02)
    s.feed(2, 1.008, PointCloud2)
    s.feed(0, 1.000, Image)
    assert s.sets == []
    s.feed(1, 1.003, CameraInfo)
    assert len(s.sets) == 1
    img, info, cloud = s.sets[0]
    assert (type(img), type(info), type(cloud)) == (Image, CameraInfo, PointCloud2)
    assert secs(s.sets[0]) == [1.0, 1.003, 1.008]
    assert all(not q for q in s.sync.queues)


def test_sync_keeps_older_unmatched_messages_like_message_filters():
    s = Sync(2, slop=0.01)
    s.feed(0, 1.00)
    s.feed(0, 1.10)  # older than the set emitted next, and kept (the real filter keeps it)
    s.feed(0, 1.20)
    s.feed(1, 1.205)
    assert [secs(m) for m in s.sets] == [[1.2, 1.205]]
    assert s.sync.num_dropped == 0 and s.sync.num_emitted == 1
    assert secs(m for _, m in s.sync.queues[0]) == [1.0, 1.1]
    s.feed(1, 1.104)  # a late partner of the kept 1.10
    assert secs(s.sets[-1]) == [1.1, 1.104]
    s.feed(1, 1.30)
    s.feed(0, 1.35)  # 50 ms apart: no match
    assert len(s.sets) == 2
    s.feed(0, 1.301)
    assert secs(s.sets[-1]) == [1.301, 1.3]


def test_sync_anchors_on_the_newest_message_and_takes_the_nearest_partner():
    s = Sync(2, slop=0.05)
    s.feed(0, 0.000)
    s.feed(0, 0.020)
    s.feed(1, 0.025)  # 0.020 is 5 ms away, 0.000 25 ms: the nearest wins, 0.000 stays queued
    assert [secs(m) for m in s.sets] == [[0.02, 0.025]]
    assert s.sync.num_dropped == 0 and secs(m for _, m in s.sync.queues[0]) == [0.0]


def test_sync_slop_is_strict_and_zero_never_matches():
    s = Sync(2, slop=0.01)
    s.feed(0, 2.0)
    s.feed(1, 2.01)  # exactly slop: the real filter needs max - min < slop
    assert s.sets == []
    s.feed(1, 2.0099)
    assert [secs(m) for m in s.sets] == [[2.0, 2.0099]]
    z = Sync(2, slop=0.0)
    z.feed(0, 3.0)
    z.feed(1, 3.0)  # even equal stamps: 0 < 0 is false
    assert z.sets == []


def test_exact_time_synchronizer_emits_every_common_stamp():
    e = Sync(2, queue_size=5, cls=FallbackTimeSynchronizer)
    e.feed(0, 1.0)
    e.feed(1, 1.000000001)
    assert e.sets == []
    e.feed(1, 1.0)
    assert [secs(m) for m in e.sets] == [[1.0, 1.0]]


def _reference_sets(events, n, queue_size, slop_ns):
    """The real ApproximateTimeSynchronizer's rules written out plainly (dicts, brute force).

    events: (input, stamp ns) in arrival order; returns the emitted sets as stamp tuples.
    """
    import itertools

    queues = [{} for _ in range(n)]  # stamp -> arrival index, insertion ordered like the real dicts
    out = []
    for arrival, (i, t) in enumerate(events):
        if t not in queues[i]:
            queues[i][t] = arrival
        while len(queues[i]) > queue_size:
            del queues[i][min(queues[i])]
        if t not in queues[i]:
            continue
        lists = []
        for j in range(n):
            if j == i:
                continue
            near = [s for s in queues[j] if abs(s - t) <= slop_ns]  # dict order, then a stable sort
            lists.append(sorted(near, key=lambda s: abs(s - t)))
        if any(not lst for lst in lists):
            continue
        for combo in itertools.product(*lists):
            vv = list(combo)
            vv.insert(i, t)
            if max(vv) - min(vv) < slop_ns:
                out.append(tuple(vv))
                for j, s in enumerate(vv):
                    del queues[j][s]
                break
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sync_matches_the_real_policy_on_recorded_camera_stamp_streams(seed):
    """rgb, depth and camera_info of a 30 Hz camera: depth stamped up to 8 ms off the colour frame,
    camera_info a copy of the depth stamp, frames lost, topics arriving out of order."""
    rng = np.random.default_rng(seed)
    events = []
    for k in range(200):
        t = 1_000_000_000 * 50 + k * 33_333_333
        depth = t + int(rng.integers(-8_000_000, 8_000_000))
        stamps = {0: t, 1: depth, 2: depth}
        for i in rng.permutation(3):
            if rng.random() < 0.07:  # a lost message
                continue
            events.append((int(i), stamps[int(i)]))
        if rng.random() < 0.1 and len(events) > 3:  # a late delivery: swap with an earlier event
            a = len(events) - 1
            events[a], events[a - 3] = events[a - 3], events[a]
    s = Sync(3, queue_size=10, slop=0.01)
    for i, t in events:
        msg = stamped((Image, Image, CameraInfo)[i], 0.0)
        msg.header.stamp = ns_to_stamp(t)
        s.inputs[i].signalMessage(msg)
    got = [tuple(stamp_to_ns(m.header.stamp) for m in msgs) for msgs in s.sets]
    want = _reference_sets(events, 3, 10, int(0.01 * S))
    assert got == want
    assert len(got) > 120  # most frames match


def test_sync_queue_is_bounded():
    s = Sync(2, queue_size=3, slop=0.001)
    for k in range(10):
        s.feed(0, float(k))
    assert secs(m for _, m in s.sync.queues[0]) == [7.0, 8.0, 9.0]
    assert s.sync.num_dropped == 7
    s.feed(1, 3.0)  # its partner was dropped with the overflow
    assert s.sets == []
    s.feed(1, 8.0)
    assert [secs(m) for m in s.sets] == [[8.0, 8.0]]


def test_sync_headerless_and_reset():
    s = Sync(2)
    s.inputs[0].signalMessage(PointField())  # no header
    assert s.sync.num_headerless == 1 and s.sync.num_dropped == 1
    r = Sync(2, slop=0.01, reset=True)
    r.feed(0, 50.0)
    r.feed(1, 40.0)
    r.feed(0, 1.0)  # bag looped: queues cleared
    assert r.sync.num_resets == 1 and r.sync.num_dropped == 2
    assert [len(q) for q in r.sync.queues] == [1, 0]
    r.feed(1, 1.0)
    assert [secs(m) for m in r.sets] == [[1.0, 1.0]]


def test_sync_callback_runs_under_lock_and_is_thread_safe():
    s = Sync(2, queue_size=400, slop=0.004)
    held = []

    def probe(*_):
        got = []
        t = threading.Thread(target=lambda: got.append(s.sync.lock.acquire(timeout=0.001)))
        t.start()
        t.join()
        if got[0]:
            s.sync.lock.release()
        held.append(not got[0])

    s.sync.registerCallback(probe)

    def producer(i, offset):
        for k in range(300):
            s.feed(i, k * 0.01 + offset)

    threads = [threading.Thread(target=producer, args=(0, 0.0)), threading.Thread(target=producer, args=(1, 0.001))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert held and all(held)
    stamps = [secs(m) for m in s.sets]
    assert len(stamps) == 300
    assert all(abs(a - b) <= 0.004 + 1e-9 for a, b in stamps)
    firsts = [a for a, _ in stamps]
    assert firsts == sorted(set(firsts))  # each message used once, in order


# ============================================================================ Buffer (logic)


def tf_msg(parent, child, t, xyz=(0, 0, 0), quat=(0, 0, 0, 1)):
    m = matrix_to_transform(np.eye(4), parent, child, stamp=round(t * S))
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = map(float, xyz)
    r = m.transform.rotation
    r.x, r.y, r.z, r.w = map(float, quat)
    return m


def rigid(rotvec, xyz):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = xyz
    return out


def reference_at(t0, m0, t1, m1, t):
    """Independent interpolation: scipy Slerp for the rotation, lerp for the translation."""
    slerp = Slerp([t0, t1], Rotation.from_matrix([m0[:3, :3], m1[:3, :3]]))
    out = np.eye(4)
    out[:3, :3] = slerp([t]).as_matrix()[0]
    r = (t - t0) / (t1 - t0)
    out[:3, 3] = (1 - r) * m0[:3, 3] + r * m1[:3, 3]
    return out


def put(buffer, parent, child, t, matrix, static=False):
    msg = matrix_to_transform(matrix, parent, child, stamp=round(t * S))
    ok = (buffer.set_transform_static if static else buffer.set_transform)(msg, "test")
    assert ok


CHAIN = {  # child: (parent, matrix at t=10, matrix at t=11 or None for static)
    "odom": ("map", rigid([0, 0, 0.1], [1, 2, 0]), rigid([0, 0, 0.5], [1.5, 2, 0])),
    "base_link": ("odom", rigid([0, 0, -0.3], [0, 0, 0]), rigid([0.1, 0, 0.9], [2, -1, 0.2])),
    "camera_link": ("base_link", rigid([0, 0.2, 0], [0.3, 0, 1.1]), None),
    "camera_optical": ("camera_link", rigid([-np.pi / 2, 0, -np.pi / 2], [0, 0, 0]), None),
}


def filled_buffer(**kw):
    buffer = FallbackBuffer(**kw)
    for child, (parent, m0, m1) in CHAIN.items():
        if m1 is None:
            put(buffer, parent, child, 0.0, m0, static=True)
        else:
            put(buffer, parent, child, 10.0, m0)
            put(buffer, parent, child, 11.0, m1)
    return buffer


def expected_map_from(frame, t):
    out = np.eye(4)
    while frame != "map":
        parent, m0, m1 = CHAIN[frame]
        link = m0 if m1 is None else reference_at(10.0, m0, 11.0, m1, t)
        out = link @ out
        frame = parent
    return out


def test_buffer_interpolates_one_link_by_the_numbers():
    buffer = FallbackBuffer()
    put(buffer, "map", "odom", 1.0, rigid([0, 0, 0], [0, 0, 0]))
    put(buffer, "map", "odom", 2.0, rigid([0, 0, np.pi / 2], [2, 0, 4]))
    out = buffer.lookup_transform("map", "odom", Time(seconds=1.5))
    assert (out.header.frame_id, out.child_frame_id) == ("map", "odom")
    assert stamp_to_ns(out.header.stamp) == round(1.5 * S)
    tr, q = out.transform.translation, out.transform.rotation
    assert (tr.x, tr.y, tr.z) == pytest.approx((1.0, 0.0, 2.0))
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0, 0, math.sin(math.pi / 8), math.cos(math.pi / 8)))
    same = buffer.lookup_transform("map", "odom", ns_to_stamp(round(1.5 * S)))  # a builtin_interfaces/Time
    assert transform_to_matrix(same) == pytest.approx(transform_to_matrix(out))
    out = buffer.lookup_transform("odom", "map", Time(seconds=2))  # the inverse
    np.testing.assert_allclose(transform_to_matrix(out), np.linalg.inv(rigid([0, 0, np.pi / 2], [2, 0, 4])), atol=1e-12)


@pytest.mark.parametrize("t", [10.0, 10.25, 10.8, 11.0])
def test_buffer_chains_through_the_tree(t):
    buffer = filled_buffer()
    out = buffer.lookup_transform("map", "camera_optical", Time(seconds=t), timeout=Duration())
    np.testing.assert_allclose(transform_to_matrix(out), expected_map_from("camera_optical", t), atol=1e-9)
    # between two branches: base_link <- map -> ... and the reverse direction
    out = buffer.lookup_transform("camera_optical", "odom", Time(seconds=t))
    expected = np.linalg.inv(expected_map_from("camera_optical", t)) @ expected_map_from("odom", t)
    np.testing.assert_allclose(transform_to_matrix(out), expected, atol=1e-9)
    assert buffer.can_transform("camera_link", "map", Time(seconds=t))


def test_buffer_latest_common_time_and_errors():
    buffer = filled_buffer()
    put(buffer, "map", "odom", 11.5, CHAIN["odom"][2])  # odom newer than base_link
    out = buffer.lookup_transform("map", "camera_optical", Time())
    assert stamp_to_ns(out.header.stamp) == 11 * S  # min over links of their latest stamp
    with pytest.raises(compat.ExtrapolationException, match="future"):
        buffer.lookup_transform("map", "base_link", Time(seconds=11.2))
    with pytest.raises(compat.ExtrapolationException, match="past"):
        buffer.lookup_transform("map", "camera_optical", Time(seconds=9.9))
    with pytest.raises(compat.LookupException, match="nope"):
        buffer.lookup_transform("map", "nope", Time())
    put(buffer, "world", "other_robot", 10.0, np.eye(4))
    with pytest.raises(compat.ConnectivityException):
        buffer.lookup_transform("map", "other_robot", Time(seconds=10))
    with pytest.raises(compat.InvalidArgumentException):
        buffer.lookup_transform("", "map", Time())
    assert not buffer.can_transform("map", "nope", Time())
    ok, why = buffer.can_transform("map", "nope", Time(), return_debug_tuple=True)
    assert not ok and "nope" in why
    bad = tf_msg("map", "odom", 12.0, quat=(0, 0, 0, 0))
    assert buffer.set_transform(bad, "test") is False and buffer.num_rejected == 1
    same = buffer.lookup_transform("camera_link", "camera_link", Time(seconds=3))
    assert transform_to_matrix(same) == pytest.approx(np.eye(4))


def test_buffer_cache_window_time_jump_and_clear():
    buffer = FallbackBuffer(cache_time=Duration(seconds=2))
    put(buffer, "odom", "base_link", 0.0, rigid([0, 0, 0], [0, 0, 0]), static=True)
    for t in range(10, 16):
        put(buffer, "map", "odom", float(t), rigid([0, 0, 0], [t, 0, 0]))
    with pytest.raises(compat.ExtrapolationException, match="past"):  # pruned: older than 15 - 2 s
        buffer.lookup_transform("map", "odom", Time(seconds=12.5))
    assert buffer.lookup_transform("map", "odom", Time(seconds=13.5)).transform.translation.x == pytest.approx(13.5)
    # the bag loops: time jumps back, old stamps are refused until clear()
    assert buffer.set_transform(tf_msg("map", "odom", 1.0), "test") is False
    with pytest.raises(compat.ExtrapolationException):
        buffer.lookup_transform("map", "odom", Time(seconds=1.0))
    buffer.clear()
    with pytest.raises(compat.LookupException):
        buffer.lookup_transform("map", "odom", Time())
    put(buffer, "map", "odom", 1.0, rigid([0, 0, 0], [1, 0, 0]))
    put(buffer, "map", "odom", 2.0, rigid([0, 0, 0], [3, 0, 0]))
    out = buffer.lookup_transform("map", "base_link", Time(seconds=1.5))  # static link kept by clear()
    assert out.transform.translation.x == pytest.approx(2.0)


def test_buffer_lookup_waits_for_data_with_timeout():
    buffer = FallbackBuffer()
    put(buffer, "map", "odom", 1.0, np.eye(4))
    timer = threading.Timer(0.1, lambda: put(buffer, "map", "odom", 2.0, np.eye(4)))
    timer.start()
    t0 = time.monotonic()
    out = buffer.lookup_transform("map", "odom", Time(seconds=1.5), timeout=Duration(seconds=2.0))
    assert 0.05 < time.monotonic() - t0 < 1.5 and stamp_to_ns(out.header.stamp) == round(1.5 * S)
    t0 = time.monotonic()
    with pytest.raises(compat.ExtrapolationException):
        buffer.lookup_transform("map", "odom", Time(seconds=5), timeout=Duration(seconds=0.1))
    assert time.monotonic() - t0 >= 0.09
    timer.join()


def test_matrix_transform_round_trip():
    rots = Rotation.random(20, random_state=0)
    for i, rot in enumerate(rots):
        m = np.eye(4)
        m[:3, :3] = rot.as_matrix()
        m[:3, 3] = [i, -i, 0.5 * i]
        msg = matrix_to_transform(m, "a", "b", stamp=7)
        q = msg.transform.rotation
        assert q.w >= 0
        np.testing.assert_allclose(abs(np.dot([q.x, q.y, q.z, q.w], rot.as_quat())), 1.0, atol=1e-9)  # scipy: x,y,z,w
        np.testing.assert_allclose(transform_to_matrix(msg), m, atol=1e-12)
    with pytest.raises(codecs.MessageEncodeError):
        matrix_to_transform(np.diag([1.0, 1.0, -1.0, 1.0]))


# ============================================================================ real rclpy + DDS


@pytest.fixture(scope="module")
def ros_context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture
def nodes(ros_context, request):
    made = []
    executor = SingleThreadedExecutor(context=ros_context)

    def make(name):
        node = rclpy.create_node(f"{name}_{request.node.name[:20].replace('[', '_').replace(']', '_')}",
                                 context=ros_context, start_parameter_services=False)
        executor.add_node(node)
        made.append(node)
        return node

    yield make, executor
    executor.shutdown(timeout_sec=1.0)
    for node in made:
        node.destroy_node()


def spin_until(executor, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
    return predicate()


@pytest.mark.ros
def test_dds_approximate_sync_of_image_info_cloud(nodes):
    make, executor = nodes
    pub_node, sub_node = make("sensor_pub"), make("sync_sub")
    topics = [("image", Image), ("camera_info", CameraInfo), ("points", PointCloud2)]
    pubs = [pub_node.create_publisher(t, f"/safnet_test/{n}", qos_profile_sensor_data) for n, t in topics]
    subs = [FallbackSubscriber(sub_node, t, f"/safnet_test/{n}", qos_profile=qos_profile_sensor_data) for n, t in topics]
    sync = FallbackApproximateTimeSynchronizer(subs, queue_size=10, slop=0.02)
    triples = []
    sync.registerCallback(lambda *m: triples.append(m))
    assert spin_until(executor, lambda: all(p.get_subscription_count() >= 1 for p in pubs) and
                      all(s.sub.get_publisher_count() >= 1 for s in subs))
    rng = np.random.default_rng(0)
    sent = []
    for k in range(4):
        base = 100.0 + 0.1 * k
        rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        xyz = rng.normal(size=(40, 3)).astype(np.float32)
        img = codecs.array_to_image(rgb, "rgb8", frame_id="cam", stamp=base)
        info = CameraInfo(header=codecs.make_header(frame_id="cam", stamp=base + 0.003), width=8, height=6)
        info.k = [5.0, 0, 4, 0, 5.0, 3, 0, 0, 1]
        cloud = codecs.make_labeled_cloud(xyz, np.arange(40), rgb.reshape(-1, 3)[:40], np.ones(40), np.ones(40),
                                          frame_id="map", stamp=base + 0.011)
        if k == 1:  # a lone image 50 ms before its set: never matched within 20 ms
            pubs[0].publish(codecs.array_to_image(rgb, "rgb8", stamp=base - 0.05))
        for pub, msg in zip(pubs, (img, info, cloud)):
            pub.publish(msg)
        sent.append((rgb, xyz, base))
        assert spin_until(executor, lambda: len(triples) == k + 1), f"set {k} not matched"
    pubs[2].publish(codecs.make_labeled_cloud(np.zeros((1, 3)), [0], [[0, 0, 0]], [1.0], [1.0], stamp=200.0))
    spin_until(executor, lambda: False, timeout=0.2)
    assert len(triples) == 4
    for (img, info, cloud), (rgb, xyz, base) in zip(triples, sent):
        assert secs((img, info, cloud)) == [round(base, 6), round(base + 0.003, 6), round(base + 0.011, 6)]
        np.testing.assert_array_equal(codecs.image_to_rgb(img), rgb)
        np.testing.assert_array_equal(codecs.pointcloud2_to_xyz(cloud)[0], xyz)
        assert codecs.camera_info_to_K(info)[0, 2] == 4
    assert secs(m for _, m in sync.queues[0]) == [100.05]  # the lone image waits, as with message_filters
    assert len(sync.queues[2]) == 1  # the lone cloud at t=200 waits
    for s in subs:
        s.unregister()


@pytest.mark.ros
@pytest.mark.parametrize("spin_thread", [False, True])
def test_dds_tf_listener_fills_buffer(nodes, spin_thread):
    make, executor = nodes
    pub_node, listen_node = make("tf_pub"), make("tf_listen")
    topic, static_topic = f"/safnet_test/tf_{int(spin_thread)}", f"/safnet_test/tf_static_{int(spin_thread)}"
    dynamic = FallbackTransformBroadcaster(pub_node, topic=topic)
    static = FallbackStaticTransformBroadcaster(pub_node, topic=static_topic)
    static.sendTransform([matrix_to_transform(CHAIN[c][1], CHAIN[c][0], c) for c in ("camera_link", "camera_optical")])
    buffer = FallbackBuffer(cache_time=Duration(seconds=10))
    # created after the static transforms went out: transient local delivers them late
    listener = FallbackTransformListener(buffer, listen_node, spin_thread=spin_thread, topic=topic,
                                         static_topic=static_topic)
    try:
        ready = lambda: dynamic.pub_tf.get_subscription_count() >= 1  # noqa: E731
        assert spin_until(executor, ready)
        for t in (10.0, 11.0):
            dynamic.sendTransform([matrix_to_transform(CHAIN[c][1 if t == 10.0 else 2], CHAIN[c][0], c, stamp=t)
                                   for c in ("odom", "base_link")])
        when = Time(seconds=10.4)
        assert spin_until(executor, lambda: buffer.can_transform("map", "camera_optical", Time(seconds=11)))
        out = buffer.lookup_transform("map", "camera_optical", when)
        np.testing.assert_allclose(transform_to_matrix(out), expected_map_from("camera_optical", 10.4), atol=1e-9)
        with pytest.raises(compat.ExtrapolationException):
            buffer.lookup_transform("map", "camera_optical", Time(seconds=11.5))
        with pytest.raises(compat.LookupException):
            buffer.lookup_transform("map", "no_such_frame", when)
        # time jumps back: refused as old data, cleared, then accepted
        dynamic.sendTransform(matrix_to_transform(np.eye(4), "map", "odom", stamp=0.5))
        assert spin_until(executor, lambda: buffer.num_rejected == 1)
        buffer.clear()
        for t in (0.5, 1.5):
            dynamic.sendTransform([matrix_to_transform(rigid([0, 0, 0], [t, 0, 0]), "map", "odom", stamp=t),
                                   matrix_to_transform(np.eye(4), "odom", "base_link", stamp=t)])
        assert spin_until(executor, lambda: buffer.can_transform("map", "camera_link", Time(seconds=1.5)))
        out = buffer.lookup_transform("map", "camera_link", Time(seconds=1.0))
        np.testing.assert_allclose(transform_to_matrix(out), rigid([0, 0, 0], [1.0, 0, 0]) @ CHAIN["camera_link"][1],
                                   atol=1e-9)
    finally:
        listener.unregister()


@pytest.mark.ros
def test_dds_tf_listener_stops_its_thread_before_destroying_its_subscriptions(nodes):
    """unregister() joins the listener's spin thread first: no wait set of that thread may still hold a
    subscription while it is destroyed (a use-after-destroy race at shutdown otherwise)."""
    make, _ = nodes
    listener = FallbackTransformListener(FallbackBuffer(), make("tf_unregister"), spin_thread=True,
                                         topic="/safnet_test/tf_unreg", static_topic="/safnet_test/tf_static_unreg")
    thread, own_node = listener._spun.thread, listener._spun.node
    alive_at_destroy = []
    destroy = own_node.destroy_subscription
    own_node.destroy_subscription = lambda sub: (alive_at_destroy.append(thread.is_alive()), destroy(sub))[1]
    listener.unregister()
    assert alive_at_destroy == [False, False]
    assert listener._spun is None and listener.tf_sub is None
    listener.unregister()  # idempotent


class _Tf2StyleListener:
    """Stand-in with the behaviour of tf2_ros' TransformListener (ros2/geometry2, tf2_ros_py), which does
    not import here: it subscribes to TFMessage on the node it is given; ``spin_thread=True`` adds that
    node to a ``SingleThreadedExecutor()`` (no context given: the default context's, Humble to Rolling)
    that a thread of its own spins; ``unregister()`` destroys the subscriptions."""

    TOPIC = "/safnet_test/tf2_style"

    def __init__(self, buffer, node, *, spin_thread=False):
        self.buffer, self.node = buffer, node
        self.tf_sub = node.create_subscription(tf_message_class(), self.TOPIC, self.callback, 100)
        self.tf_static_sub = node.create_subscription(tf_message_class(), self.TOPIC + "_static", self.callback, 100)
        if spin_thread:
            self.executor = SingleThreadedExecutor()  # tf2_ros: the default context, whatever the node's

            def run():
                self.executor.add_node(self.node)
                self.executor.spin()
                self.executor.remove_node(self.node)

            self.dedicated_listener_thread = threading.Thread(target=run, daemon=True)
            self.dedicated_listener_thread.start()

    def callback(self, msg):
        for transform in msg.transforms:
            self.buffer.set_transform(transform, "default_authority")

    def unregister(self):
        self.node.destroy_subscription(self.tf_sub)
        self.node.destroy_subscription(self.tf_static_sub)


@pytest.mark.ros
def test_the_real_tf2_listener_gets_a_node_and_a_thread_of_its_own(nodes, monkeypatch):
    """tf2_ros given the node itself would add it to its thread's executor, and rclpy keeps a node in one
    executor: the node's image callbacks would move to tf2_ros' thread, or /tf to the node's. The listener
    the node makes gets a node of its own: /tf arrives while the node's executor is never spun. And
    tf2_ros' own thread spins an executor of the default context (raises here, where only the node's
    context is initialised, as in BagSession): the thread is ours, in the node's context."""
    make, executor = nodes
    monkeypatch.setattr(compat, "HAVE_TF2", True)
    monkeypatch.setattr(compat, "TransformListener", _Tf2StyleListener)
    monkeypatch.setattr(compat, "active_tf_path", lambda: TfPath(TF2_ROS, tf_message_class()))
    caller, publisher = make("tf2_caller"), make("tf2_publisher")
    buffer = FallbackBuffer()
    listener = compat.make_transform_listener(buffer, caller, spin_thread=True)
    inner = getattr(listener, "listener", listener)  # the tf2_ros listener, wrapped or not
    try:
        assert inner.node is not caller
        pub = publisher.create_publisher(tf_message_class(), _Tf2StyleListener.TOPIC, 100)
        msg = tf_message_class()(transforms=[matrix_to_transform(np.eye(4), "map", "odom", stamp=1.0)])
        deadline = time.monotonic() + 5.0
        while not buffer.can_transform("map", "odom", Time(seconds=1)) and time.monotonic() < deadline:
            pub.publish(msg)  # nothing spins ``executor``: only tf2_ros' thread can deliver it
            time.sleep(0.05)
        assert buffer.can_transform("map", "odom", Time(seconds=1))
        assert caller.executor is executor  # the node's own callbacks stay where the node program spins them
        assert inner.node.executor.context is caller.context  # /tf spun in the node's context
    finally:
        listener.unregister()
    assert not listener.spun.thread.is_alive() and listener.listener is None
    listener.unregister()  # idempotent


class _Tf2StyleBuffer(FallbackBuffer):
    """Stand-in with tf2's frame-id rules (ros2/geometry2 tf2/src/buffer_core.cpp, Humble to Rolling), which
    does not import here: ``setTransform`` strips a leading '/' (``stripSlash``), but a lookup given one
    raises InvalidArgumentException (``validateFrameId``: "in tf2 frame_ids cannot start with a '/'")."""

    def lookup_transform(self, target_frame, source_frame, time, timeout=None):
        if target_frame != source_frame:
            for name, frame in (("target_frame", target_frame), ("source_frame", source_frame)):
                if frame.startswith("/"):
                    raise compat.FallbackInvalidArgumentException(
                        f'Invalid argument "{frame}" passed to lookupTransform argument {name} - in tf2 '
                        "frame_ids cannot start with a '/'")
        return super().lookup_transform(target_frame, source_frame, time, timeout)


def test_frame_ids_with_a_leading_slash_are_looked_up_as_tf2_allows():
    """A ROS 1 style '/camera' header (a converted bag, an old driver): the drop-in strips it, tf2 refuses it
    in a lookup. The node looks up the stripped name, so its poses do not depend on which buffer it has."""
    from types import SimpleNamespace

    from safnet_ros.ros.segment_node import SegmentNode, _PendingFrame

    buffer = _Tf2StyleBuffer()
    for t in (1.0, 2.0):
        buffer.set_transform(matrix_to_transform(np.eye(4), "map", "camera", stamp=t), "test")
    node = SimpleNamespace(fixed_frame="map", tf_buffer=buffer, _param=lambda name: 0.1)
    pose = SegmentNode._lookup_pose(node, "/camera", ns_to_stamp(round(1.5 * S)), 0.0)
    np.testing.assert_allclose(pose, np.eye(4))
    frame = _PendingFrame(None, None, None, "/camera", round(1.0 * S), first_try=time.monotonic())
    assert SegmentNode._transforms_passed(node, frame)  # judged by the transforms' stamps (2 s), not wall time


def test_a_clock_jump_back_clears_a_tf2_buffer_that_does_not_watch_the_clock():
    """Humble's tf2_ros.Buffer(node=) only adds a service (ros2/geometry2 humble,
    tf2_ros_py/tf2_ros/buffer.py; the clock jump callback came with Jazzy): after a bag loop it would keep
    the old timeline and refuse the new one as TF_OLD_DATA. The node clears it on the jump it sees itself."""
    from types import SimpleNamespace

    from safnet_ros.ros.segment_node import SegmentNode
    from safnet_ros.ros.time_jumps import StreamTimeJumps

    buffer = _Tf2StyleBuffer()  # made without node=: watches no clock, as Humble's
    buffer.set_transform(matrix_to_transform(np.eye(4), "map", "camera", stamp=100.0), "test")
    went_back = []
    node = SimpleNamespace(tf_buffer=buffer, _jumps=StreamTimeJumps(("frames",), 1.0),
                           _time_went_back=went_back.append)
    SegmentNode._on_clock_jump(node, 90.0)
    assert went_back and not buffer.can_transform("map", "camera", Time(seconds=100))


class _Tf2StyleNodeBuffer:
    """Stand-in for what tf2_ros.Buffer(node=...) leaves on the node (ros2/geometry2
    tf2_ros_py/tf2_ros/buffer.py): a ``tf2_frames`` service (``srv``; FrameGraph there, a Trigger here, as
    tf2_msgs' service does not exist here) and, Jazzy on, a jump callback on the node's clock
    (``jump_handle``); tf2_ros has nothing that removes either."""

    def __init__(self, cache_time=None, node=None):
        from rclpy.clock import JumpThreshold
        from std_srvs.srv import Trigger

        self.srv = node.create_service(Trigger, "tf2_frames", lambda request, response: response)
        self.jump_handle = node.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1), on_clock_change=True),
            post_callback=lambda jump: None)


@pytest.mark.ros
def test_cleanup_removes_what_the_tf2_buffer_left_on_the_node(ros_context, monkeypatch, tmp_path):
    """configure -> cleanup -> configure (a lifecycle manager's reset) leaves one tf2_frames service, and the
    old buffer's clock callback is gone."""
    from rclpy.parameter import Parameter
    from test_ros_node import tiny_checkpoint

    from safnet_ros.ros.segment_node import SegmentNode

    monkeypatch.setattr(compat, "Buffer", _Tf2StyleNodeBuffer)
    node = SegmentNode(context=ros_context, parameter_overrides=[
        Parameter("model", value=str(tiny_checkpoint(tmp_path / "tiny.pt"))), Parameter("device", value="cpu"),
        Parameter("warm_up", value=False), Parameter("autostart", value=False)])
    try:
        node.trigger_configure()
        first = node.tf_buffer
        node.trigger_cleanup()
        node.trigger_configure()
        assert [s.srv_name.rsplit("/", 1)[-1] for s in node.services].count("tf2_frames") == 1
        assert first.jump_handle._clock is None  # unregistered
    finally:
        node.destroy_node()
