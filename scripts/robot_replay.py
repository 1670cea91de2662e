#!/usr/bin/env python3
"""Replay a converted bag into the node as a robot would run it, from an independent rclpy client.

    python scripts/robot_replay.py                        # a synthetic scene, clouds 1.5 s behind the frames
    python scripts/robot_replay.py --bag BAG --cloud-delay 1.5 --namespace /robot1 --model models/x.pt
    python scripts/robot_replay.py --bag BAG --busy-cores 1 --repeat 3 --json out/stream.json   # real-size stream
    python scripts/robot_replay.py --compressed           # the synthetic scene as compressed image topics
    python scripts/robot_replay.py --bag BAG --node-repo /tmp/base    # the node from another checkout

The node runs as its own process, started like ``ros2 run``:
``python -m safnet_ros.ros.segment_node --ros-args -r __ns:=NAMESPACE
--params-file config/segment.yaml -p use_sim_time:=true`` (the shipped YAML
as it is: its topics are the node's ``~/points``, ``~/rgb/image``, ...).  This
client is not the project's bag player: it reads the bag with rosbags and
publishes each message from the recorded CDR bytes at its recorded time, the
camera topics, ``/tf`` and ``/tf_static`` on time, every cloud
``--cloud-delay`` seconds late (its stamp unchanged: a slower upstream), and
``/clock`` following the camera.  Transforms go out as recorded on ``/tf``
where tf2_msgs/TFMessage imports (else, the node's last resort, as
TransformStamped on /safnet/transforms).  It then counts the labelled clouds
that come back, those whose labelled points carry image evidence (a non-zero
``similarity``: 2D features were fused), and the node's time jumps on
/diagnostics.  Prints a table; ``--json`` writes the numbers.  Exit status 0
when at least ``--min-labelled`` of the clouds came back with image evidence
and no time jump was counted, else 1.

A bag of image_transport's compressed topics (``safnet bag convert
--compressed``) is replayed as it is: its ``/compressed`` and
``/compressedDepth`` topics go to the node's ``~/rgb/image/compressed`` and
``~/depth/image/compressedDepth``, and the node gets ``-p
image_transport:=compressed`` (unless ``-p image_transport:=...`` is given);
``--compressed`` makes the default synthetic bag so.

A real-size stream (``safnet data synth --color-size 1296x968 --depth-size
640x480`` converted by ``safnet bag convert --compressed``, or without
``--compressed`` for the raw path: 1296x968 frames at the recorded 30 Hz) is
the benchmark of docs/benchmarks.md, "Real-size stream":
``--busy-cores N`` keeps N other processes spinning (a plain numpy loop each,
as SLAM or drivers keep a robot's cores busy), ``--repeat K`` runs it K times
(a fresh node each time) and prints one row per run: clouds labelled / sent,
the share of all labelled POINTS with image evidence, TF failures and frames
skipped for a missing transform, views kept / frames synced, the node's frame
callback cost and the latency (cloud sent -> labelled cloud back, p50 / p90).
``--node-repo DIR`` runs the node from another checkout (its code and its
config/segment.yaml), for a side-by-side ratio against older code.  The TF
implementation in use (tf2_ros where importable, else our drop-in) is printed.
``--dds-profile`` is this client's Fast DDS profile: ``shipped`` (default,
config/fastdds_large_data.xml, as docs/ros_node.md asks of a camera driver that
publishes full-size frames) or ``default`` (Fast DDS's own 512 KiB shared-memory
segment, which loses full-size frames on a loaded machine).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import PointCloud2

from safnet_ros.data.synth.generate import SynthConfig, generate_dataset
from safnet_ros.ros import codecs
from safnet_ros.ros.compressed import compressed_topics
from safnet_ros.ros.dds_profile import PROFILE_ENV, use_large_data_profile
from safnet_ros.ros.diagnostics import diagnostics_values
from safnet_ros.ros.tf_path import active_tf_path
from safnet_ros.ros.tf_topics import DEFAULT_TF_STATIC_TOPIC, DEFAULT_TF_TOPIC
from safnet_ros.tools import bag_io as bio
from safnet_ros.tools.bag_convert import convert_scene

REPO = Path(__file__).resolve().parents[1]
#: Publisher QoS of the camera and cloud topics (``--sensor-qos``).
SENSOR_QOS = {"reliable": QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
              "best_effort": qos_profile_sensor_data}


@dataclass
class ReplayReport:
    """What came back from the node (counts of clouds; seconds)."""

    clouds_sent: int = 0
    clouds_labelled: int = 0
    clouds_with_image_evidence: int = 0
    evidence_fraction: float = 0.0
    time_jumps: int = -1
    diagnostics: dict[str, str] = field(default_factory=dict)
    cloud_delay_s: float = 0.0
    namespace: str = ""
    transforms: str = ""
    replay_s: float = 0.0
    node_repo: str = ""
    busy_cores: int = 0
    points_returned: int = 0  # every point of the labelled clouds that came back, label 255 included
    points_labelled: int = 0
    points_with_image_evidence: int = 0
    latencies_s: list[float] = field(default_factory=list)  # cloud sent -> labelled cloud back, per cloud
    image_transport: str = "raw"  # how the bag's images went to the node: raw | compressed

    @property
    def point_evidence_fraction(self) -> float:
        """Share of all labelled points (pooled over the clouds) that carry image evidence."""
        return self.points_with_image_evidence / self.points_labelled if self.points_labelled else 0.0

    @property
    def returned_evidence_fraction(self) -> float:
        """Share of ALL points that came back (label 255 included) with image evidence: comparable
        between code that leaves points outside the views unlabelled and code that labels them in 3D."""
        return self.points_with_image_evidence / self.points_returned if self.points_returned else 0.0

    def counter(self, name: str) -> int:
        """A node counter from the last /diagnostics (-1 when absent)."""
        try:
            return int(self.diagnostics.get(name, -1))
        except ValueError:
            return -1

    @property
    def frames_tf_skipped(self) -> int:
        """RGB-D frames skipped for a missing transform: the node's tf_failures less the clouds it
        skipped (received, not segmented, not dropped or empty: a missing transform is the only other
        reason a cloud is skipped; decode errors are counted apart and assumed 0)."""
        c = self.counter
        clouds_skipped = max(0, c("clouds_received") - c("clouds_segmented") - max(0, c("clouds_dropped"))
                             - max(0, c("clouds_empty")) - max(0, c("worker_errors")))
        return max(0, c("tf_failures") - clouds_skipped) if c("tf_failures") >= 0 else -1

    def latency_quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies_s, q)) if self.latencies_s else float("nan")

    def row(self) -> dict[str, Any]:
        """The figures of one run (benchmark table row)."""
        c = self.counter
        return {
            "clouds_labelled": self.clouds_labelled, "clouds_sent": self.clouds_sent,
            "clouds_labelled_pct": round(100 * self.clouds_labelled / self.clouds_sent, 1) if self.clouds_sent else 0.0,
            "points_evidence_pct": round(100 * self.point_evidence_fraction, 1),
            "all_points_evidence_pct": round(100 * self.returned_evidence_fraction, 1),
            "clouds_with_evidence": self.clouds_with_image_evidence,
            "tf_failures": c("tf_failures"), "frames_tf_skipped": self.frames_tf_skipped,
            "frames_waiting_tf": c("frames_waiting_tf"),
            "views_kept": c("views_kept"), "frames_synced": c("frames_synced"),
            "clouds_3d_only": c("clouds_3d_only"), "clouds_dropped": c("clouds_dropped"),
            "time_jumps": c("time_jumps"),
            "frame_cost_p50_ms": self.diagnostics.get("frame_cost_p50_ms", "-"),
            "frame_cost_p99_ms": self.diagnostics.get("frame_cost_p99_ms", "-"),
            "latency_p50_s": round(self.latency_quantile(0.5), 3), "latency_p90_s": round(self.latency_quantile(0.9), 3),
        }

    @property
    def labelled_fraction(self) -> float:
        return self.clouds_with_image_evidence / self.clouds_sent if self.clouds_sent else 0.0

    def table(self) -> str:
        return "\n".join([
            f"node {self.namespace}/safnet_segment, clouds {self.cloud_delay_s:g} s behind the frames, "
            f"images {self.image_transport}, transforms: {self.transforms}",
            f"clouds sent {self.clouds_sent}, labelled back {self.clouds_labelled}, with image evidence "
            f"{self.clouds_with_image_evidence} ({100 * self.labelled_fraction:.0f} %)",
            f"labelled points with image evidence: {100 * self.point_evidence_fraction:.0f} % of all points "
            f"({100 * self.evidence_fraction:.0f} % mean per cloud); of every point returned: "
            f"{100 * self.returned_evidence_fraction:.0f} %",
            f"latency (sent -> labelled back) p50 {self.latency_quantile(0.5):.2f} s, "
            f"p90 {self.latency_quantile(0.9):.2f} s; node backends: {self.diagnostics.get('backends', '?')}",
            f"node diagnostics: time_jumps {self.time_jumps}, frames_synced {self.diagnostics.get('frames_synced')}, "
            f"views_kept {self.diagnostics.get('views_kept')}, views_not_keyframe "
            f"{self.diagnostics.get('views_not_keyframe')}, frames_waiting_tf {self.diagnostics.get('frames_waiting_tf')}, "
            f"clouds_received {self.diagnostics.get('clouds_received')}, tf_failures {self.diagnostics.get('tf_failures')}, "
            f"clouds_dropped {self.diagnostics.get('clouds_dropped')}, clouds_3d_only "
            f"{self.diagnostics.get('clouds_3d_only')}",
        ])


def make_bag(out: Path, frames: int = 40, frame_rate: Optional[float] = 5.0, cloud_rate: float = 1.0,
             seed: int = 11, image_size: Optional[tuple[int, int]] = None, overlap: Optional[float] = None,
             compressed: bool = False) -> Path:
    """A synthetic ScanNet-format scene (rendered at 160x120) converted to a rosbag2: frames at
    ``frame_rate`` (None = the recorded 30 Hz stamps), clouds at ``cloud_rate``, images resized to
    ``image_size`` (w, h; e.g. (1296, 968) for a real-size stream, colour bilinear and depth nearest);
    ``overlap``: the camera's speed (synth's ``--overlap``; None = one loop of the room in ``frames``);
    ``compressed``: image_transport's compressed image topics (``bag convert --compressed``)."""
    scenes = out.parent / (out.name + "_scene")
    cfg = SynthConfig(frames=frames, color_size=(160, 120), depth_size=(160, 120), vertex_spacing=0.08,
                      overlap=overlap, progress=False)
    (summary,) = generate_dataset(scenes, scenes=1, seed=seed, cfg=cfg, overwrite=True)
    convert_scene(scenes / summary["name"], out, rate=frame_rate, cloud_rate=cloud_rate, progress=False,
                  overwrite=True, resize=image_size, compressed=compressed)
    return out


def bag_image_transport(bag: Path) -> str:
    """``compressed`` when the bag's camera images are image_transport's compressed topics, else ``raw``."""
    with Reader(bag) as reader:
        topics = {c.topic for c in reader.connections}
    return "compressed" if set(compressed_topics(bio.COLOR_TOPIC, bio.DEPTH_TOPIC)) <= topics else "raw"


def _msg_class(msgtype: str) -> Any:
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def replay(bag: Path, model: Optional[str] = None, namespace: str = "/robot1", cloud_delay: float = 1.5,
           params_file: Optional[Path] = None, extra_params: tuple[str, ...] = (),
           drain_s: float = 20.0, start_timeout_s: float = 120.0, domain_id: Optional[int] = None,
           log: Any = print, node_repo: Path = REPO, node_log_path: Optional[Path] = None,
           sensor_qos: str = "best_effort") -> ReplayReport:
    """Start the node process, replay ``bag`` into it and count what comes back (see the module docstring).

    domain_id: the DDS domain of the node and the client (default: one of 200..229 picked by process id,
    so no other node on this machine answers on /diagnostics). node_repo: the checkout the node runs
    from (its code first on PYTHONPATH, its working directory); params_file defaults to its
    config/segment.yaml. node_log_path: keep the node's output there. sensor_qos: how the camera and
    cloud topics are published (``best_effort``: sensor-data QoS; ``reliable``: system defaults, as
    REP-2003 asks of sensor drivers). A best-effort subscription makes either a best-effort connection.
    A bag of compressed image topics (``bag convert --compressed``) goes to the node's ``<rgb_topic>/compressed``
    and ``<depth_topic>/compressedDepth``, the node started with ``image_transport:=compressed``.
    """
    node_repo = Path(node_repo).resolve()
    params_file = node_repo / "config" / "segment.yaml" if params_file is None else params_file
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    node_ns = f"{ns}/safnet_segment"
    report = ReplayReport(cloud_delay_s=cloud_delay, namespace=ns, transforms=active_tf_path().describe(),
                          node_repo=str(node_repo), image_transport=bag_image_transport(bag))
    args = [sys.executable, "-m", "safnet_ros.ros.segment_node", "--ros-args", "-r", f"__ns:={ns or '/'}",
            "--params-file", str(params_file), "-p", "use_sim_time:=true", "-p", "device:=cpu"]
    if model:
        args += ["-p", f"model:={model}"]
    if report.image_transport == "compressed" and not any(p.startswith("image_transport:=") for p in extra_params):
        args += ["-p", "image_transport:=compressed"]
    for p in extra_params:
        args += ["-p", p]
    domain_id = 200 + os.getpid() % 30 if domain_id is None else int(domain_id)
    env = dict(os.environ, PYTHONPATH=str(node_repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ROS_DOMAIN_ID=str(domain_id))
    node_log = open(node_log_path, "w+") if node_log_path else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    proc = subprocess.Popen(args, cwd=node_repo, env=env, stdout=node_log, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    client = rclpy.create_node("robot_replay_client", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(client)
    lock = threading.Lock()
    labelled: dict[int, Any] = {}
    sent_at: dict[int, float] = {}  # cloud stamp ns -> time.monotonic() it was published
    back_at: dict[int, float] = {}  # cloud stamp ns -> time.monotonic() its labelled cloud arrived
    diagnostics: list[dict[str, str]] = []

    def on_labelled(msg: PointCloud2) -> None:
        now = time.monotonic()
        arr = np.array(codecs.pointcloud2_to_array(msg))
        with lock:
            stamp_ns = codecs.stamp_to_ns(msg.header.stamp)
            labelled[stamp_ns] = arr
            back_at.setdefault(stamp_ns, now)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        if msg.status and msg.status[0].name.startswith("safnet_segment"):
            with lock:
                diagnostics.append(diagnostics_values(msg))

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    client.create_subscription(PointCloud2, f"{node_ns}/labeled_cloud", on_labelled, reliable)
    client.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        path = active_tf_path()
        topic_for = {bio.COLOR_TOPIC: f"{node_ns}/rgb/image", bio.DEPTH_TOPIC: f"{node_ns}/depth/image",
                     bio.CAMERA_INFO_TOPIC: f"{node_ns}/camera_info", bio.POINTS_TOPIC: f"{node_ns}/points"}
        # image_transport's compressed topics of the bag -> the node's <rgb_topic>/compressed, <depth>/compressedDepth
        topic_for.update(zip(compressed_topics(bio.COLOR_TOPIC, bio.DEPTH_TOPIC),
                             compressed_topics(f"{node_ns}/rgb/image", f"{node_ns}/depth/image")))
        with Reader(bag) as reader:
            pubs: dict[str, Any] = {}
            for conn in reader.connections:
                if conn.topic in topic_for:
                    pubs[conn.topic] = client.create_publisher(_msg_class(conn.msgtype), topic_for[conn.topic],
                                                               SENSOR_QOS[sensor_qos])
                elif conn.topic in (bio.TF_TOPIC, bio.TF_STATIC_TOPIC):
                    static = conn.topic == bio.TF_STATIC_TOPIC
                    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
                    if path.uses_tf_topics:
                        pubs[conn.topic] = client.create_publisher(path.tf_message, conn.topic, qos)
                    else:
                        pubs[conn.topic] = client.create_publisher(
                            TransformStamped, DEFAULT_TF_STATIC_TOPIC if static else DEFAULT_TF_TOPIC, qos)
            clock_pub = client.create_publisher(Clock, "/clock", 10)
            # the node is up once it listens on the YAML's topics (model loaded, warmed up, activated)
            deadline = time.monotonic() + start_timeout_s
            # (and its TF listener has matched /tf and /tf_static: a transform sent before is lost to it)
            while time.monotonic() < deadline and proc.poll() is None and not all(
                    pub.get_subscription_count() > 0 for pub in pubs.values()):
                time.sleep(0.1)
            if proc.poll() is not None or time.monotonic() >= deadline:
                node_log.seek(0)
                raise RuntimeError(f"the node did not start:\n{node_log.read()}")
            time.sleep(1.0)  # the subscribers' side of discovery
            events = []  # (send offset s, bag ns, topic, msgtype, raw)
            first = None
            for conn, t_ns, raw in reader.messages():
                if conn.topic not in pubs:
                    continue
                first = t_ns if first is None else first
                delay = cloud_delay if conn.topic == bio.POINTS_TOPIC else 0.0
                events.append(((t_ns - first) / 1e9 + delay, t_ns, conn.topic, conn.msgtype, bytes(raw)))
        # the messages are decoded before the clock starts, so that the replay itself keeps the recorded rate
        split_tf = not path.uses_tf_topics
        events = [(offset, t_ns, topic, msgtype, raw) if split_tf and topic in (bio.TF_TOPIC, bio.TF_STATIC_TOPIC)
                  else (offset, t_ns, topic, msgtype, deserialize_message(raw, _msg_class(msgtype)))
                  for offset, t_ns, topic, msgtype, raw in events]
        events.sort(key=lambda e: e[0])
        start = time.monotonic()
        last_clock = 0.0
        behind = []  # how late each message went out, seconds
        for offset, _t_ns, topic, msgtype, msg in events:
            while True:
                now = time.monotonic() - start
                if now - last_clock >= 0.05:  # /clock follows the camera's time
                    clock_pub.publish(Clock(clock=codecs.ns_to_stamp(first + int(now * 1e9))))
                    last_clock = now
                if now >= offset:
                    break
                time.sleep(min(0.01, offset - now))
            behind.append(now - offset)
            if isinstance(msg, bytes):
                # no TFMessage class here: split it with rosbags into TransformStamped messages
                for transform in bio.deserialize(msg, msgtype, what=f"{bag}:{topic}").transforms:
                    pubs[topic].publish(deserialize_message(bio.serialize(transform), TransformStamped))
            else:
                if topic == bio.POINTS_TOPIC:
                    with lock:
                        sent_at[codecs.stamp_to_ns(msg.header.stamp)] = time.monotonic()
                pubs[topic].publish(msg)
            if topic == bio.POINTS_TOPIC:
                report.clouds_sent += 1
        report.replay_s = time.monotonic() - start
        if behind and max(behind) > 0.1:
            log(f"note: the replay fell behind the recorded times by up to {max(behind):.2f} s "
                f"(median {np.median(behind):.3f} s)")
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with lock:
                done = len(labelled) >= report.clouds_sent
            if done:
                break
            clock_pub.publish(Clock(clock=codecs.ns_to_stamp(first + int((time.monotonic() - start) * 1e9))))
            time.sleep(0.05)
        time.sleep(1.5)  # one more diagnostics period
        with lock:
            clouds = list(labelled.values())
            report.diagnostics = dict(diagnostics[-1]) if diagnostics else {}
            report.latencies_s = sorted(back_at[s] - sent_at[s] for s in back_at if s in sent_at)
        fractions = []
        for arr in clouds:
            report.points_returned += len(arr)
            seg = arr["label"] != 255
            if seg.any():
                report.clouds_labelled += 1
                with_evidence = int(np.count_nonzero(arr["similarity"][seg] != 0))
                report.points_labelled += int(seg.sum())
                report.points_with_image_evidence += with_evidence
                evidence = with_evidence / float(seg.sum())
                fractions.append(evidence)
                if evidence >= 0.5:
                    report.clouds_with_image_evidence += 1
        report.evidence_fraction = float(np.mean(fractions)) if fractions else 0.0
        report.time_jumps = int(report.diagnostics.get("time_jumps", -1))
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=10.0)
        client.destroy_node()
        rclpy.shutdown(context=ctx)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        node_log.close()
    return report


#: What each ``--busy-cores`` process runs: a plain numpy spin loop on one thread.
BUSY_LOOP = "import numpy as np\na = np.random.rand(64, 64)\nwhile True:\n    a = np.tanh(a @ a)\n"


class BusyCores:
    """``n`` subprocesses spinning a numpy loop (one core each) while the ``with`` block runs."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyCores:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


#: Columns of the ``--repeat`` table: (heading, row key).
TABLE_COLUMNS = (("run", "run"), ("clouds lab/sent", "clouds"), ("pts w/ img %", "points_evidence_pct"),
                 ("all pts w/ img %", "all_points_evidence_pct"),
                 ("tf fail", "tf_failures"), ("frames tf skip", "frames_tf_skipped"), ("views/synced", "views"),
                 ("3d-only", "clouds_3d_only"), ("frame p50/p99 ms", "frame_cost"),
                 ("lat p50 s", "latency_p50_s"), ("lat p90 s", "latency_p90_s"))


def runs_table(rows: list[dict[str, Any]]) -> str:
    """One line per run (see TABLE_COLUMNS), plus the spread of the point-evidence share."""
    cells = [[str(r["run"]), f"{r['clouds_labelled']}/{r['clouds_sent']}", f"{r['points_evidence_pct']:.1f}",
              f"{r['all_points_evidence_pct']:.1f}",
              str(r["tf_failures"]), str(r["frames_tf_skipped"]), f"{r['views_kept']}/{r['frames_synced']}",
              str(r["clouds_3d_only"]), f"{r['frame_cost_p50_ms']}/{r['frame_cost_p99_ms']}",
              f"{r['latency_p50_s']:.2f}", f"{r['latency_p90_s']:.2f}"] for r in rows]
    heads = [h for h, _ in TABLE_COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths)),
             *("  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells)]
    pct = [r["points_evidence_pct"] for r in rows]
    if len(pct) > 1:
        lines.append(f"points with image evidence: {min(pct):.1f} .. {max(pct):.1f} % (spread {max(pct) - min(pct):.1f})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", help="converted rosbag2 (default: a synthetic scene, 40 frames at 5 Hz, "
                                      "clouds at 1 Hz)")
    parser.add_argument("--compressed", action="store_true",
                        help="the default synthetic bag with image_transport's compressed topics (a --bag is "
                             "replayed as it is: compressed when it holds <colour>/compressed and <depth>/compressedDepth)")
    parser.add_argument("--model", help="checkpoint (default: the node's default, the shipped model)")
    parser.add_argument("--namespace", default="/robot1", help="the node's namespace (default /robot1)")
    parser.add_argument("--cloud-delay", type=float, default=1.5, help="seconds each cloud is sent late (1.5)")
    parser.add_argument("--min-labelled", type=float, default=0.6,
                        help="fraction of clouds that must come back labelled with image evidence (0.6)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--busy-cores", type=int, default=0,
                        help="other processes keeping a core busy each during the replay (a numpy loop; 0)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, a fresh node each (1); prints one row a run")
    parser.add_argument("--node-repo", default=str(REPO),
                        help="checkout the node runs from, with its config/segment.yaml (default: this one)")
    parser.add_argument("--node-log", help="keep the node's output of the last run in this file")
    parser.add_argument("--sensor-qos", choices=tuple(SENSOR_QOS), default="best_effort",
                        help="publisher QoS of the camera and cloud topics (best_effort, the default: sensor-data "
                             "QoS; reliable: what REP-2003 asks of drivers; the node's sensor-data subscription "
                             "makes the connection best effort either way)")
    parser.add_argument("--dds-profile", choices=("shipped", "default"), default="shipped",
                        help="Fast DDS profile of this client, the publisher of the large messages (shipped: "
                             "config/fastdds_large_data.xml, as docs/ros_node.md asks of camera drivers; default: "
                             "Fast DDS's own, a 512 KiB shared-memory segment). The node applies the shipped one "
                             "to itself either way; a FASTDDS_DEFAULT_PROFILES_FILE already set is kept")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.busy_cores < 0:
        print("error: --repeat must be >= 1 and --busy-cores >= 0", file=sys.stderr)
        return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # before this process creates its DDS participant (the first rclpy.init)
    profile = use_large_data_profile() if args.dds_profile == "shipped" else os.environ.get(PROFILE_ENV)
    print(f"publisher's Fast DDS profile: {profile or 'Fast DDS defaults'}")
    reports: list[ReplayReport] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="safnet_robot_replay_") as tmp:
        bag = Path(args.bag) if args.bag else make_bag(Path(tmp) / "bag", compressed=args.compressed)
        for run in range(1, args.repeat + 1):
            with BusyCores(args.busy_cores):
                report = replay(bag, model=args.model, namespace=args.namespace, cloud_delay=args.cloud_delay,
                                node_repo=Path(args.node_repo), extra_params=tuple(args.params),
                                sensor_qos=args.sensor_qos,
                                node_log_path=Path(args.node_log) if args.node_log else None)
            report.busy_cores = args.busy_cores
            reports.append(report)
            rows.append({"run": run, **report.row()})
            print(f"--- run {run}/{args.repeat} (busy cores {args.busy_cores}, node from {report.node_repo})")
            print(report.table(), flush=True)
    if args.repeat > 1:
        print(runs_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bag": str(args.bag or "synthetic"), "busy_cores": args.busy_cores, "node_repo": args.node_repo,
            "publisher_dds_profile": profile,
            "image_transport": reports[-1].image_transport,
            "transforms": reports[-1].transforms, "rows": rows,
            "runs": [{**asdict(r), "labelled_fraction": r.labelled_fraction} for r in reports]}, indent=2))
    ok = all(r.labelled_fraction >= args.min_labelled and r.time_jumps == 0 for r in reports)
    print("target met" if ok else "target MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
