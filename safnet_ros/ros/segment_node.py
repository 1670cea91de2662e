"""``safnet_segment``: the ROS 2 lifecycle node that labels point clouds with SAFNet.

A thin ROS adapter over :class:`safnet_ros.engine.pipeline.SegmentationPipeline` (which ``safnet
segment-bag`` runs offline too). Callbacks never block: a synchronised RGB-D set (one synchroniser per
camera) is judged by its stamp, then by its pose looked up with a zero timeout (a set whose transform
has not arrived waits, undecoded, for timer retries), and only a keyframe is decoded into the view
buffer. Clouds go through a newest-wins mailbox to one worker thread, the only one that may wait for a
transform; a marker thread draws the similarity markers. Threads, lifecycle, TF and time jumps:
docs/ros_node.md ("Lifecycle", "Threads: what runs where", "TF: three paths, one test").
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import serialize_message
from rclpy.subscription import Subscription
from rclpy.time import Time
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
from safnet_ros.engine.cpu_share import CoreShare, threads_for
from safnet_ros.engine.inference import Segmenter
from safnet_ros.engine.pipeline import KEPT, NOT_KEYFRAME, CloudOutput, SegmentationPipeline
from safnet_ros.engine.view_buffer import KeyframePolicy, ViewBuffer
from safnet_ros.errors import ConfigError, MessageDecodeError, SafnetError
from safnet_ros.ros import codecs, compat, device_report, input_watchdog, label_info, param_audit, shutdown
from safnet_ros.ros.compressed import compressed_topics
from safnet_ros.ros.dds_profile import use_large_data_profile
from safnet_ros.ros.diagnostics import NodeStats, stats_to_diagnostics
from safnet_ros.ros.markers import similarity_markers_cdr
from safnet_ros.ros.params import PARAMETERS, SPECS, Param, ParameterError, camera_parameters, check_value
from safnet_ros.ros.semantic_map_component import SemanticMapComponent
from safnet_ros.ros.spin import spin_resilient
from safnet_ros.ros.tf_path import missing_tf2_ros_warning
from safnet_ros.ros.tf_topics import reliable_qos
from safnet_ros.ros.time_jumps import StreamTimeJumps, watch_clock_jumps

__all__ = ["NODE_NAME", "PARAMETERS", "ParameterError", "SegmentNode", "LatestMailbox", "main",
           "resolve_node_device"]

NODE_NAME = "safnet_segment"
#: Throttle period of repeated warnings (seconds).
WARN_PERIOD_S = 5.0
#: Frames waiting for their transform at most (undecoded messages; the oldest gives way).
MAX_PENDING_FRAMES = 16
#: Seconds between retries of the frames waiting for their transforms (steady clock; runs only while one waits).
RETRY_PERIOD_S = 0.02
#: A frame whose camera frame TF does not know at all waits this many tf_timeout (wall time) ...
UNKNOWN_FRAME_WAITS = 10
#: ... and at least this long, seconds: one heartbeat period of a Fast DDS writer (3 s), after which a
#: reliable /tf sample lost in transport has been sent again (lost samples hold back every later one).
UNKNOWN_FRAME_MIN_WAIT_S = 3.0

_PARAM_TYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
                str: Parameter.Type.STRING, list: Parameter.Type.STRING_ARRAY}


def descriptor(spec: Param) -> ParameterDescriptor:
    """The ROS ParameterDescriptor of a table entry (type, description, range, read-only)."""
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.runtime,
                               type=_PARAM_TYPES[spec.type].value)
    if spec.choices:
        desc.additional_constraints = "one of " + spec.range_text()
    if spec.low is not None and spec.type is int:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    elif spec.low is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                        step=0.0)]
    return desc


def resolve_node_device(requested: str, cuda_available: bool) -> tuple[str, Optional[str]]:
    """('cpu' | 'cuda[:N]', message to log or None) for the ``device`` parameter.

    Raises ConfigError for anything but auto, cpu, cuda, cuda:N.
    """
    want = (requested or "auto").strip().lower()
    if want == "auto":
        if cuda_available:
            return "cuda", None
        return "cpu", "no CUDA device: SAFNet runs on the CPU"
    if want == "cpu":
        return "cpu", None
    if want == "cuda" or (want.startswith("cuda:") and want[5:].isdigit()):
        if cuda_available:
            return want, None
        return "cpu", f"device '{requested}' requested but CUDA is not available: running on the CPU"
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")


class LatestMailbox:
    """A one-slot, newest-wins hand-over from the executor to the worker thread.

    ``put`` replaces an item not yet taken (returns True when it did: a drop);
    ``take(timeout)`` waits for an item (None on timeout or after ``close``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> bool:
        with self._cond:
            had = self._item is not None
            self._item = None
            return had

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _PendingFrame:
    """A synchronised (rgb, depth, camera_info) set, still undecoded, waiting for its camera pose."""

    rgb: Image
    depth: Image
    info: CameraInfo
    frame_id: str
    stamp_ns: int
    camera: str = ""  # the camera's name ('' = the single camera)
    first_try: float = 0.0  # time.monotonic() of the first pose lookup
    waiting: bool = False  # set aside once already (counted in frames_waiting_tf)

    def decode(self) -> codecs.RGBDFrame:
        return codecs.decode_rgbd(self.rgb, self.depth, self.info)


class SegmentNode(LifecycleNode):
    """The ``safnet_segment`` lifecycle node (see the module docstring).

    segmenter: an already built :class:`~safnet_ros.engine.inference.Segmenter`
    (tests, tools); None = built from the ``model``/``device``/``preset``
    parameters at ``configure``. With ``autostart`` (default) the constructor
    configures and activates the node and raises the SafnetError subclass
    (ParameterError, ConfigError, ModelLoadError) that stopped it; a bad
    parameter raises ParameterError whatever ``autostart`` says.
    """

    def __init__(self, *, segmenter: Any = None, node_name: str = NODE_NAME, **node_kwargs: Any):
        super().__init__(node_name, **node_kwargs)
        self._given_segmenter = segmenter
        # made by configure, dropped by cleanup
        self.segmenter: Any = None
        self.tf_buffer: Any = None  # tf2_ros.Buffer or the drop-in
        self.pub_cloud: Optional[Publisher] = None
        self.pub_markers: Optional[Publisher] = None
        self.pub_diag: Optional[Publisher] = None
        # made by activate, released by deactivate
        self.input_watchdog: Optional[input_watchdog.InputWatchdog] = None
        self.label_info: Optional[label_info.LabelInfoPublisher] = None
        self._max_points_warned = False
        self.tf_listener: Any = None  # tf2_ros.TransformListener or the drop-in, on its own thread
        #: per camera ('' = the single one): (its name, (rgb, depth, info) subscribers, synchroniser)
        self.camera_inputs: list[tuple[str, tuple[Any, Any, Any], Any]] = []
        self.cameras: list[str] = []  # the ``cameras`` parameter ([] = one camera on rgb_topic & co.)
        self._camera_errors: list[str] = []
        self.sub_cloud: Optional[Subscription] = None
        self._retry_timer: Optional[Timer] = None
        self._diag_timer: Optional[Timer] = None
        self._clock_jumps: Any = None
        self._worker: Optional[threading.Thread] = None
        self._marker_thread: Optional[threading.Thread] = None
        # made by the constructor
        self.fixed_frame = ""
        self.semantic_map: Optional[SemanticMapComponent] = None
        self.buffer: Optional[ViewBuffer] = None
        self.pipeline: Optional[SegmentationPipeline] = None
        self.stats = NodeStats()
        self._stop = threading.Event()
        self._mailbox = LatestMailbox()
        self._marker_box = LatestMailbox()  # the newest segmented cloud still to be drawn as markers
        self._core_share = CoreShare()  # the cores other processes leave free (threads: 0)
        self._max_threads = torch.get_num_threads()  # torch's own choice (OMP_NUM_THREADS, the cores)
        self._pending: deque[_PendingFrame] = deque()  # frames waiting for TF (bounded: MAX_PENDING_FRAMES)
        self._pending_lock = threading.Lock()
        self._jumps: Optional[StreamTimeJumps] = None
        self._probabilities = "none"
        self._transition_error: Optional[BaseException] = None
        self._autostarting = False  # transitions raise (main logs one line) instead of logging
        #: Stage timings (seconds) of the last labeled cloud; also on /diagnostics.
        self.last_timings: dict[str, float] = {}
        self.device = "cpu"
        try:
            self.cameras = self._declare_cameras()  # first: the per-camera parameters depend on it
            param_audit.warn_undeclared(self, node_kwargs.get("cli_args"),
                                        [spec.name for spec in PARAMETERS] + list(camera_parameters(self.cameras)))
            self._setup()
            if self._param("autostart"):
                self._autostart()
        except BaseException:
            self.destroy_node()
            raise

    def _setup(self) -> None:
        """Parameters, the view buffer and the map (no ROS entity besides the lifecycle services)."""
        errors = self._declare_parameters()  # every bad parameter: all are raised together, in one line
        p = self._param
        self.fixed_frame = str(p("fixed_frame")).lstrip("/")
        if not self.fixed_frame:
            errors.append("parameter 'fixed_frame' = '' must not be empty")
            self.fixed_frame = "map"  # only so the other checks can run: the node does not start
        try:
            resolve_node_device(p("device"), False)  # its spelling, before any model is loaded
        except ConfigError as exc:
            errors.append(f"parameter 'device' = {p('device')!r}: {exc}")
        self._probabilities = p("probabilities")
        try:
            self.semantic_map = SemanticMapComponent.from_node(self, self.fixed_frame)
        except ConfigError as exc:  # bad map_* values: a parameter error (exit 2)
            errors.append(str(exc))
        if errors:
            raise ParameterError("; ".join(errors))
        # jump_tolerance inf: the node judges time jumps itself, per input stream
        self.buffer = ViewBuffer(max_views=p("buffer_max_views"), max_mb=p("buffer_max_mb"),
                                 policy=self._policy_from_params(), jump_tolerance=float("inf"))
        self._jumps = StreamTimeJumps(("frames", "clouds", *(f"frames.{c}" for c in self.cameras)),
                                      p("time_jump_tolerance"))
        if p("gil_switch_interval") > 0:
            sys.setswitchinterval(float(p("gil_switch_interval")))
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _autostart(self) -> None:
        """configure + activate, raising what made a transition fail."""
        self._autostarting = True
        try:
            for name, trigger in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    error, self._transition_error = self._transition_error, None
                    if isinstance(error, BaseException):
                        raise error
                    raise ConfigError(f"lifecycle transition '{name}' failed")
        finally:
            self._autostarting = False

    # ------------------------------------------------------------------ lifecycle
    def _guarded(self, step: Any) -> TransitionCallbackReturn:
        """Run a transition step, logged with its outcome and duration (ros/shutdown.py)."""
        return shutdown.log_transition(self, step, lambda: self._guarded_step(step))

    def _guarded_step(self, step: Any) -> TransitionCallbackReturn:
        """Run a transition step; a failure is logged, kept for _autostart and turns into FAILURE."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a transition must answer, not raise
            self._transition_error = exc
            if not self._autostarting:
                self.get_logger().error(f"{exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, warm it up, make the TF buffer (watching the node's clock, like tf2_ros) and outputs."""
        return self._guarded(self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create subscriptions, the TF listener, timers and the worker thread."""
        return self._guarded(self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the worker (finishing the cloud in hand) and release what activate created (publishers stay)."""
        return self._guarded(self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the publishers, the map's services, the model, the TF buffer and the buffered views."""
        return self._guarded(self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded(self._release_all)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        warning = missing_tf2_ros_warning()
        if warning:
            self.get_logger().warning(warning)
        segmenter = self._given_segmenter if self._given_segmenter is not None else self._load_segmenter()
        self.segmenter = segmenter
        self.device = str(segmenter.device)
        self.get_logger().info(f"{device_report.describe(self.device)}; precision {segmenter.precision}")
        if self._param("warm_up"):
            self.get_logger().info(f"model warmed up in {segmenter.warm_up():.2f} s")
        self.pipeline = SegmentationPipeline(segmenter, self.buffer, self.semantic_map, prepare_idle=True)
        self.tf_buffer = compat.Buffer(cache_time=Duration(seconds=30.0), node=self)
        self._create_outputs()

    def _activate(self) -> None:
        p = self._param
        self._jumps.reset()  # a new activation: each stream starts a new timeline
        self._create_inputs()
        self.semantic_map.start_publishing()
        self.input_watchdog = input_watchdog.InputWatchdog(
            p("input_timeout"), input_watchdog.describe_inputs(self, p("cloud_topic"), self.fixed_frame,
                                                               self.camera_topics()),
            dict(self.stats.counters), evidence=input_watchdog.camera_evidence(self.cameras))
        # Timers on the steady clock: they must tick with use_sim_time and no /clock too.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._retry_timer = self.create_timer(RETRY_PERIOD_S, self._retry_pending, clock=steady)
        self._retry_timer.cancel()  # started by _set_aside, stopped by _retry_pending when none waits
        self._diag_timer = self.create_timer(p("diagnostics_period"), self._publish_diagnostics, clock=steady)
        # under use_sim_time, /clock jumping back is a time jump of its own
        self._clock_jumps = watch_clock_jumps(self, p("time_jump_tolerance"), self._on_clock_jump)
        self._mailbox = LatestMailbox()
        self._marker_box = LatestMailbox()
        self._stop = threading.Event()
        self._worker_idle = threading.Event()  # set while no cloud waits: when the markers may be drawn
        self._worker = threading.Thread(target=self._work, name="safnet_segment_worker", daemon=True)
        self._worker.start()
        self._marker_thread = threading.Thread(target=self._draw, name="safnet_segment_markers", daemon=True)
        self._marker_thread.start()
        self.get_logger().info(f"safnet_segment active: device {self.device}, fixed frame '{self.fixed_frame}', "
                               f"cloud '{self.sub_cloud.topic_name}', {compat.backends()}")

    def _create_outputs(self) -> None:
        """Publishers and the map's services, from configure to cleanup (why: docs/ros_node.md, "Lifecycle")."""
        out_qos = reliable_qos(5, False)  # outputs: reliable, volatile, keep last 5
        self.pub_cloud = self.create_publisher(PointCloud2, "~/labeled_cloud", out_qos)
        self.pub_markers = self.create_publisher(MarkerArray, "~/similarity_markers", out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.semantic_map.create(self)  # ~/semantic_map, ~/save_map, ~/clear_map, ~/load_map
        self.label_info = label_info.LabelInfoPublisher(self, self._param("label_ids"), self.fixed_frame)

    def _destroy_outputs(self) -> None:
        """Undo :meth:`_create_outputs`."""
        if self.semantic_map is not None:
            self.semantic_map.destroy()
        if self.label_info is not None:
            self.label_info.destroy()
            self.label_info = None
        for pub in (self.pub_cloud, self.pub_markers, self.pub_diag):
            if pub is not None:
                self.destroy_publisher(pub)
        self.pub_cloud = self.pub_markers = self.pub_diag = None

    def _create_inputs(self) -> None:
        """The TF listener (its own thread) and the input subscriptions, at activate; released at deactivate."""
        p = self._param
        self.tf_listener = compat.make_transform_listener(
            self.tf_buffer, self, spin_thread=True,
            fallback_topic=p("tf_fallback_topic"), fallback_static_topic=p("tf_fallback_static_topic"),
        )
        # inputs: sensor-data QoS (best effort, keep last 5), passed explicitly to the filters
        self.camera_inputs = []
        image_type = CompressedImage if p("image_transport") == "compressed" else Image
        for camera, topics in self.camera_topics().items():
            subs = tuple(compat.Subscriber(self, msg_type, topic, qos_profile=qos_profile_sensor_data)
                         for msg_type, topic in zip((image_type, image_type, CameraInfo), topics))
            sync = compat.ApproximateTimeSynchronizer(list(subs), p("sync_queue_size"), p("sync_slop"))
            sync.registerCallback(self._on_frames, camera)
            self.camera_inputs.append((camera, subs, sync))
        self.sub_cloud = self.create_subscription(PointCloud2, p("cloud_topic"), self._on_cloud,
                                                  qos_profile_sensor_data)

    def _destroy_inputs(self) -> None:
        """Undo :meth:`_create_inputs`."""
        for _, subs, _ in self.camera_inputs:
            for sub in subs:  # message_filters.Subscriber and the drop-in: destroy their subscription
                self.destroy_subscription(sub.sub)
        self.camera_inputs = []
        if self.sub_cloud is not None:
            self.destroy_subscription(self.sub_cloud)
            self.sub_cloud = None
        if self.tf_listener is not None:
            self.tf_listener.unregister()
            self.tf_listener = None

    def _stop_worker(self) -> None:
        """Stop the worker and the marker thread (each finishing the item in hand)."""
        self._stop.set()
        self._mailbox.close()
        self._marker_box.close()
        for thread in (self._worker, self._marker_thread):
            if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout=10.0)
        self._worker = self._marker_thread = None

    def _deactivate(self) -> None:
        self._stop_worker()
        with self._pending_lock:  # frame callbacks start and stop the retry timer under this lock
            timers = (self._retry_timer, self._diag_timer)
            self._retry_timer = self._diag_timer = None
        for timer in timers:
            if timer is not None:
                self.destroy_timer(timer)
        if self._clock_jumps is not None:
            self._clock_jumps.unregister()
            self._clock_jumps = None
        self._destroy_inputs()
        if self.semantic_map is not None:
            self.semantic_map.stop_publishing()
        with self._pending_lock:
            self._pending.clear()

    def _cleanup(self) -> None:
        self._destroy_outputs()
        if self.buffer is not None:
            self.buffer.clear()
        tf_buffer, self.tf_buffer = self.tf_buffer, None
        if tf_buffer is not None:
            compat.release_buffer(tf_buffer, self)
        self.segmenter = self.pipeline = None

    def _release_all(self) -> None:
        """Whatever state the node is in: release everything (shutdown, errors, destroy_node)."""
        self._deactivate()
        self._cleanup()

    # ------------------------------------------------------------------ parameters
    def camera_topics(self) -> dict[str, tuple[str, str, str]]:
        """camera name -> (rgb, depth, camera_info) topic as given; {'': the *_topic parameters} without ``cameras``.
        With ``image_transport:=compressed`` the images' topics are ``<rgb>/compressed``, ``<depth>/compressedDepth``."""
        p = self._param
        if not self.cameras:
            topics = {"": (p("rgb_topic"), p("depth_topic"), p("camera_info_topic"))}
        else:
            topics = {name: tuple(map(p, camera_parameters([name]))) for name in self.cameras}
        if p("image_transport") == "compressed":
            topics = {name: (*compressed_topics(rgb, depth), info) for name, (rgb, depth, info) in topics.items()}
        return topics

    def _declare_cameras(self) -> list[str]:
        """Declare the ``cameras`` string array (no default value: rclpy cannot type an empty list) and return
        its names; a bad value is noted for :meth:`_declare_parameters` and counts as []."""
        spec = SPECS["cameras"]
        try:
            value = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor(spec)).value
            return list(check_value(spec, [] if value is None else list(value)))
        except ParameterError as exc:
            self._camera_errors.append(str(exc))
        except ParameterException as exc:  # a value of another type (-p cameras:=front)
            self._camera_errors.append(f"parameter 'cameras': {exc}; it must be a list of strings, e.g. "
                                       "\"cameras:=[front, back]\"")
        return []

    def _declare_parameters(self) -> list[str]:
        """Declare every parameter of :mod:`safnet_ros.ros.params`; returns one line per bad given value.

        Declared with dynamic typing first, so that a value of any type reaches
        :func:`~safnet_ros.ros.params.check_value`; then ``set_descriptor`` gives the real type and range.
        """
        errors: list[str] = list(self._camera_errors)
        camera_specs = [Param(name, default, f"{name.rsplit('.', 1)[1]} of camera {name.split('.')[1]}")
                        for name, default in camera_parameters(self.cameras).items()]
        for spec in [*PARAMETERS, *camera_specs]:
            if spec.type is list:  # declared by _declare_cameras
                continue
            try:
                value = self.declare_parameter(
                    spec.name, spec.default, ParameterDescriptor(dynamic_typing=True)).value
                check_value(spec, value)
                self.set_descriptor(spec.name, descriptor(spec))
            except (ParameterError, ParameterException) as exc:  # noted; all are raised together by _setup
                errors.append(str(exc) if isinstance(exc, ParameterError) else f"parameter '{spec.name}': {exc}")
                # back to the default, so that the later checks can run (the node does not start)
                self.set_parameters([Parameter(spec.name, value=spec.default)])
        return errors

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _policy_from_params(self, overrides: Optional[dict] = None) -> KeyframePolicy:
        def get(n: str) -> Any:
            return overrides[n] if overrides and n in overrides else self._param(n)

        return KeyframePolicy(min_translation=get("keyframe_min_translation"),
                              min_rotation_deg=get("keyframe_min_rotation_deg"),
                              min_interval=get("keyframe_min_interval"))

    def _on_set_parameters(self, params: Sequence[Any]) -> SetParametersResult:
        """Validate and apply run-time parameters (read-only ones are refused by rclpy itself)."""
        changes = {prm.name: prm.value for prm in params}
        try:
            for name, value in changes.items():
                if name in SPECS:
                    check_value(SPECS[name], value)
            policy = self._policy_from_params(changes)
            self.buffer.set_limits(max_views=changes.get("buffer_max_views"), max_mb=changes.get("buffer_max_mb"),
                                   policy=policy)
            if "time_jump_tolerance" in changes:
                self._jumps.set_tolerance(changes["time_jump_tolerance"])
                if self._clock_jumps is not None:  # active: watch the clock with the new threshold
                    self._clock_jumps.unregister()
                    self._clock_jumps = watch_clock_jumps(self, float(changes["time_jump_tolerance"]),
                                                          self._on_clock_jump)
        except (ConfigError, TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _load_segmenter(self) -> Segmenter:
        device, note = resolve_node_device(self._param("device"), torch.cuda.is_available())  # checked in _setup
        if note and self._param("device").strip().lower() == "auto":
            self.get_logger().info(note)
        elif note:
            self.get_logger().warning(note)
        p = self._param  # values of the declared types (check_value)
        segmenter = Segmenter.from_checkpoint(
            p("model") or None, device=device, preset=p("preset") or None, num_views=p("num_views"),
            chunk_size=p("chunk_size"), chunk_stride=p("chunk_stride"), max_points=p("max_points") or None,
            voxel_size=p("voxel_size"), crop_margin=p("crop_margin"), precision=p("precision"),
            outside_views=p("outside_views"), batch_points=p("batch_points"),
        )
        if segmenter.untrained:
            self.get_logger().warning("NO TRAINED MODEL: parameter 'model' is empty and no model is shipped; "
                                      "using an UNTRAINED SAFNet — its labels are meaningless. Set 'model' to a "
                                      "checkpoint file.")
        return segmenter

    # ------------------------------------------------------------------ time
    def _note_stamp(self, stream: str, stamp_s: float) -> None:
        """Judge ``stamp_s`` against the newest stamp of the same input (``frames`` or ``clouds``)."""
        newest = self._jumps.check(stream, stamp_s)
        if newest is not None:
            self._time_went_back(f"{stream} stamped {newest - stamp_s:.3f} s before the newest {stream}")

    def _on_clock_jump(self, seconds_back: float) -> None:
        """The ROS clock (/clock under sim time) jumped back: the TF buffer's old timeline goes too. tf2_ros'
        Buffer(node=) clears itself on a 1 s jump from Jazzy on, Humble's never does (ros2/geometry2
        tf2_ros_py/tf2_ros/buffer.py): a bag loop would leave TF refusing the new timeline as TF_OLD_DATA."""
        self._jumps.reset()
        tf_buffer = self.tf_buffer
        if tf_buffer is not None:
            tf_buffer.clear()
        self._time_went_back(f"the ROS clock jumped back {seconds_back:.3f} s")

    def _time_went_back(self, why: str) -> None:
        """Views and pending frames of the old timeline go; a queued cloud of it is dropped (counted)."""
        self.stats.count("time_jumps")
        self.pipeline.clear_views()
        with self._pending_lock:
            self._pending.clear()
        if self._mailbox.clear():
            self.stats.count("clouds_dropped")
        self.semantic_map.clear()
        self.get_logger().info(f"time jumped back ({why}; bag loop?): view buffer, pending frames and the semantic "
                               "map cleared", throttle_duration_sec=WARN_PERIOD_S)

    def _lookup_pose(self, frame_id: str, stamp_msg: Any, timeout_s: float) -> np.ndarray:
        """(4, 4) T_fixed_frame at the stamp; raises compat.TransformException subclasses. A leading '/' (ROS 1
        style) is dropped: tf2 stores '/a' as 'a' but refuses '/a' in a lookup (InvalidArgumentException)."""
        frame_id = frame_id.lstrip("/")
        if frame_id == self.fixed_frame:
            return np.eye(4)
        tf_buffer = self.tf_buffer
        if tf_buffer is None:
            raise compat.LookupException("the node is not configured: no TF buffer")
        tf = tf_buffer.lookup_transform(
            self.fixed_frame, frame_id, Time.from_msg(stamp_msg), timeout=Duration(seconds=timeout_s)
        )
        return compat.transform_to_matrix(tf)

    def _transforms_passed(self, frame: _PendingFrame) -> bool:
        """Whether to give up on a frame without its pose: its chain's transforms (their stamps, not wall
        time) have run ``tf_timeout`` past its stamp, or TF has not heard of its frame for
        :data:`UNKNOWN_FRAME_WAITS` x ``tf_timeout`` (at least :data:`UNKNOWN_FRAME_MIN_WAIT_S`) of wall time."""
        timeout_s = float(self._param("tf_timeout"))
        try:
            latest = self.tf_buffer.lookup_transform(self.fixed_frame, frame.frame_id.lstrip("/"), Time())
        except compat.TransformException:  # not there yet at all (e.g. right after a bag loop cleared TF)
            return time.monotonic() - frame.first_try > max(UNKNOWN_FRAME_MIN_WAIT_S, UNKNOWN_FRAME_WAITS * timeout_s)
        return codecs.stamp_to_ns(latest.header.stamp) - frame.stamp_ns > int(timeout_s * 1e9)

    # ------------------------------------------------------------------ views (executor thread)
    def _on_frames(self, rgb: Image, depth: Image, info: CameraInfo, camera: str = "") -> None:
        """A synchronised set of ``camera`` ('' = the single one; runs under the filter's lock), timed for
        /diagnostics' frame cost."""
        start = time.perf_counter()
        try:
            self._take_frames(rgb, depth, info, camera)
        finally:
            self.stats.add_frame_cost(time.perf_counter() - start)

    def _take_frames(self, rgb: Image, depth: Image, info: CameraInfo, camera: str = "") -> None:
        """Stamp interval first (undecoded), then the pose, then (keyframes only) decode and buffer; each
        camera is judged against its own last kept view and its own newest stamp."""
        self.stats.count("frames_synced")
        if camera:
            self.stats.count(f"frames_synced.{camera}")
        stamp_ns = codecs.stamp_to_ns(depth.header.stamp)
        self._note_stamp(f"frames.{camera}" if camera else "frames", stamp_ns / 1e9)
        if not self.pipeline.frame_due(stamp_ns / 1e9, camera) or self._pending_covers(stamp_ns, camera):
            self.stats.count("views_not_keyframe")
            return
        try:
            frame_id = codecs.camera_frame_id(depth, info)
        except MessageDecodeError as exc:
            self._decode_failed(exc)
            return
        self._try_add_view(_PendingFrame(rgb, depth, info, frame_id, stamp_ns, camera, time.monotonic()))

    def _pending_covers(self, stamp_ns: int, camera: str) -> bool:
        """Whether a frame of ``camera`` less than the keyframe interval before ``stamp_ns`` already waits
        for its transform (it is this interval's candidate: a lagging /tf must not fill the pending list)."""
        interval_ns = int(self.pipeline.buffer.policy.min_interval * 1e9)
        with self._pending_lock:
            return any(f.camera == camera and 0 <= stamp_ns - f.stamp_ns < interval_ns for f in self._pending)

    def _try_add_view(self, frame: _PendingFrame) -> bool:
        """Offer a frame at its pose; a frame whose transform has not arrived yet is set aside for retries
        (returns True then)."""
        try:
            try:
                pose = self._lookup_pose(frame.frame_id, frame.depth.header.stamp, 0.0)
            except (compat.ExtrapolationException, compat.LookupException):
                if not self._transforms_passed(frame):
                    if not frame.waiting:
                        frame.waiting = True
                        self.stats.count("frames_waiting_tf")
                    self._set_aside(frame)
                    return True
                # once more: /tf (its own thread) may have brought them since the first lookup
                pose = self._lookup_pose(frame.frame_id, frame.depth.header.stamp, 0.0)
        except compat.TransformException as exc:
            self._tf_failed("an RGB-D frame", frame.frame_id, exc)
            return False
        try:
            outcome = self.pipeline.offer_frame(frame.stamp_ns / 1e9, pose, frame.decode, frame.camera)
        except SafnetError as exc:  # undecodable messages, unusable K or image shapes
            self._decode_failed(exc)
            return False
        if outcome == KEPT:
            self.stats.count("views_kept")
            if frame.camera:
                self.stats.count(f"views_kept.{frame.camera}")
        elif outcome == NOT_KEYFRAME:
            self.stats.count("views_not_keyframe")
        return False

    def _retry_pending(self) -> None:
        """The frames waiting for their transforms, oldest first; behind a camera's frame that still waits,
        its newer ones wait too (transforms arriving part-way through must not make a newer one the keyframe)."""
        with self._pending_lock:
            frames = list(self._pending)
            self._pending.clear()
        waiting: set[str] = set()  # cameras with a frame that still waits in this pass
        for frame in frames:
            if frame.camera in waiting:
                self._set_aside(frame)
            elif self._try_add_view(frame):
                waiting.add(frame.camera)
        with self._pending_lock:
            if not self._pending and self._retry_timer is not None:
                self._retry_timer.cancel()  # nothing waits: no more wake-ups until _set_aside

    def _set_aside(self, frame: _PendingFrame) -> None:
        """Queue a frame for :meth:`_retry_pending` and make sure the retry timer runs; beyond
        :data:`MAX_PENDING_FRAMES` the oldest waiting frame gives way (a TF failure)."""
        with self._pending_lock:
            self._pending.append(frame)
            evicted = self._pending.popleft() if len(self._pending) > MAX_PENDING_FRAMES else None
            if self._retry_timer is not None and self._retry_timer.is_canceled():
                self._retry_timer.reset()
        if evicted is not None:
            self._tf_failed("an RGB-D frame", evicted.frame_id,
                            compat.LookupException(f"{MAX_PENDING_FRAMES} newer frames wait for their transforms"))

    def _decode_failed(self, exc: Exception) -> None:
        self.stats.count("decode_errors")
        self.get_logger().warning(f"skipping an RGB-D frame: {exc}", throttle_duration_sec=WARN_PERIOD_S)

    def _tf_failed(self, what: str, frame_id: str, exc: Exception) -> None:
        self.stats.count("tf_failures")
        self.get_logger().warning(f"skipping {what}: no transform '{frame_id}' -> '{self.fixed_frame}': {exc}",
                                  throttle_duration_sec=WARN_PERIOD_S)

    # ------------------------------------------------------------------ clouds
    def _on_cloud(self, msg: PointCloud2) -> None:
        """Hand the newest cloud to the worker; a cloud it had not taken yet is dropped (counted)."""
        self.stats.count("clouds_received")
        self._note_stamp("clouds", codecs.stamp_to_ns(msg.header.stamp) / 1e9)
        if self._mailbox.put((msg, time.monotonic())):
            self.stats.count("clouds_dropped")
            self.get_logger().warning("inference is slower than the cloud rate: dropped a cloud (newest wins)",
                                      throttle_duration_sec=WARN_PERIOD_S)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._mailbox.take(timeout=0.0)
            if item is None:
                if self._prepare_new_views():
                    continue
                self._worker_idle.set()
                item = self._mailbox.take(timeout=0.1)
                if item is None:
                    continue
            self._worker_idle.clear()
            msg, received = item
            try:
                self._choose_threads()
                self.process_cloud(msg, received)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.stats.count("worker_errors")
                self.get_logger().error(f"segmentation of a cloud failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=WARN_PERIOD_S)

    def _prepare_new_views(self) -> int:
        """While no cloud waits: 2D features and back-projection of up to two newly kept views, so that the
        next cloud does not pay for them (a cloud that meets many new views kept the worker longest)."""
        pipeline = self.pipeline
        if pipeline is None:
            return 0
        try:
            prepared = pipeline.prepare_new_views()
        except Exception as exc:  # noqa: BLE001 - the cloud that uses the view will report the problem
            self.get_logger().warning(f"preparing a view failed: {type(exc).__name__}: {exc}",
                                      throttle_duration_sec=WARN_PERIOD_S)
            return 0
        if prepared:
            self.stats.count("views_prepared_idle", prepared)
        return prepared

    def _choose_threads(self) -> None:
        """torch threads of this (the worker) thread for the next cloud: ``threads``, or with 0 the cores
        other processes left free since the last cloud (engine/cpu_share.py; torch's default without /proc)."""
        wanted = int(self._param("threads")) or threads_for(self._core_share.free_cores(), self._max_threads)
        if wanted and wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)

    def process_cloud(self, msg: PointCloud2, received: Optional[float] = None) -> Optional[PointCloud2]:
        """Segment one cloud and publish the results; returns the labeled cloud (None when skipped).

        Runs on the worker thread (may wait up to ``tf_timeout`` for the transform).
        """
        received = time.monotonic() if received is None else received
        try:
            decoded = codecs.pointcloud2_to_xyz(msg, skip_nans=True)
        except MessageDecodeError as exc:
            self.stats.count("decode_errors")
            self.get_logger().warning(f"skipping a PointCloud2: {exc}", throttle_duration_sec=WARN_PERIOD_S)
            return None
        if len(decoded.xyz) == 0:
            self.stats.count("clouds_empty")
            self.get_logger().warning(
                f"skipping a PointCloud2 with no finite point ({decoded.num_points} points, "
                f"{decoded.num_dropped} NaN/inf)", throttle_duration_sec=WARN_PERIOD_S)
            return None
        frame_id = msg.header.frame_id
        try:
            if not frame_id:
                raise compat.LookupException("the cloud has an empty header.frame_id")
            T = self._lookup_pose(frame_id, msg.header.stamp, float(self._param("tf_timeout")))
        except compat.TransformException as exc:
            self._tf_failed("a PointCloud2", frame_id, exc)
            return None
        t_start, cpu_start = time.monotonic(), time.thread_time()
        out = self.pipeline.segment_cloud(decoded.xyz, T)
        t_enc, segment_cpu = time.monotonic(), time.thread_time() - cpu_start
        self._note_result(out)
        cloud = codecs.labeled_cloud(out.xyz, out.result, msg.header, self._probabilities,
                                     label_ids=self._param("label_ids"))
        self.pub_cloud.publish(cloud)
        done = time.monotonic()
        self.stats.count("clouds_segmented")
        self.stats.add_latency(done - received)
        self.last_timings = {
            "queued_s": t_start - received, "prepare_s": t_enc - t_start - out.seconds, "segment_s": out.seconds,
            # the worker thread's CPU seconds: what the cloud costs whatever else shares the cores (torch
            # intra-op pool threads beyond the first are not in it)
            "segment_cpu_s": segment_cpu,
            "encode_publish_s": done - t_enc, "total_s": done - received, "points": float(len(out.xyz)),
            "views": float(len(out.views)), "chunks": float(out.result.num_chunks),
            "threads": float(torch.get_num_threads()),
            **{f"segment_{k}_s": float(v) for k, v in out.result.timings.items()},
        }
        if self._param("publish_markers") and self.pub_markers.get_subscription_count() > 0:
            self._marker_box.put((msg.header.stamp, out))  # drawn by the marker thread: never delays a cloud
        self.pipeline.update_map(out, stamp=msg.header.stamp)  # after publishing: no latency
        return cloud

    def _draw(self) -> None:
        """The marker thread: ~/similarity_markers of the newest segmented cloud (an older one not drawn yet
        is replaced), drawn while the worker is idle and published serialised (ros/markers.py)."""
        while not self._stop.is_set():
            item = self._marker_box.take(timeout=0.1)
            if item is None:
                continue
            while not self._worker_idle.wait(timeout=0.05) and not self._stop.is_set():
                item = self._marker_box.take(timeout=0.0) or item  # a newer cloud's markers replace these
            if self._stop.is_set():
                break
            stamp, out = item
            try:
                pub = self.pub_markers
                if pub is None:
                    continue
                source = self._param("similarity_marker_source")
                pub.publish(similarity_markers_cdr(
                    serialize_message, codecs.make_header(frame_id=self.fixed_frame, stamp=stamp), out.world,
                    getattr(out.result, source), source=source, stride=int(self._param("marker_stride")),
                    views=out.used_views, frustum_depth=float(self._param("frustum_depth")),
                ))
            except Exception as exc:  # noqa: BLE001 - the marker thread must survive anything
                self.stats.count("worker_errors")
                self.get_logger().error(f"drawing the similarity markers failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=WARN_PERIOD_S)

    def _note_result(self, out: CloudOutput) -> None:
        if out.result.oom_retries:
            self.stats.count("oom_retries", out.result.oom_retries)
        for warning in out.result.warnings:
            if "max_points" in warning:
                self.stats.count("downsampled")
                # max_points is read-only: one warning, then the 'downsampled' counter on /diagnostics
                if self._max_points_warned:
                    continue
                self._max_points_warned = True
                warning += " (warned once; clouds downsampled since: 'downsampled' on /diagnostics)"
            self.get_logger().warning(warning, throttle_duration_sec=WARN_PERIOD_S)
        if out.three_d_only:
            self.stats.count("clouds_3d_only")

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot(len(self.buffer), self.buffer.nbytes, self.device,
                                   extra={"fixed_frame": self.fixed_frame, "backends": compat.backends(),
                                          **self.semantic_map.diagnostics(),
                                          **{f"last_{k}": f"{v:.4f}" for k, v in self.last_timings.items()}})
        msg = stats_to_diagnostics(snap, self.stats.new_since_last_report(), self.get_clock().now().to_msg(),
                                   name=f"{self.get_name()}: segmentation", hardware_id=self.device)
        self.input_watchdog.check(snap.counters, msg.status[0], self.get_logger(), WARN_PERIOD_S)
        self.pub_diag.publish(msg)

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        """Stop the worker (finishing the cloud in hand), then release the ROS entities.

        Safe on a node whose constructor failed half-way, and in any lifecycle state.
        """
        self._release_all()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``ros2 run safnet_ros segment_node`` / ``python -m safnet_ros.ros.segment_node``.

    Exit status 2 for a bad parameter (one fatal line naming it, its value and
    what is allowed), 1 for any other start-up failure (an unloadable model).
    """
    tune_cpu_allocator()  # done on `import safnet_ros.ros` in the node program already (ros/__init__.py)
    profile = use_large_data_profile()  # before rclpy.init creates the DDS participant
    shutdown.install_sigterm()  # SIGTERM stops start-up as SIGINT does
    param_audit.set_global_args(args)  # what rclpy.init parses, for the undeclared-parameter warning
    rclpy.init(args=args)
    try:
        try:
            node = SegmentNode()
        except BaseException as exc:  # SIGINT/SIGTERM while starting: one line, exit 0 (ros/shutdown.py)
            if not shutdown.requested(exc=exc):
                raise
            shutdown.quietly(rclpy.try_shutdown)
            return shutdown.exit_line(NODE_NAME, "starting")
    except (ParameterException, SafnetError) as exc:  # ParameterError is a SafnetError
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 2 if isinstance(exc, (ParameterError, ParameterException)) else 1
    executor: Optional[SingleThreadedExecutor] = None
    try:  # from here on a signal means "running": one line, exit 0
        if profile:
            node.get_logger().info(f"Fast DDS profile: {profile}")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_resilient(executor, node.context)  # ends quietly on Ctrl-C (ros/spin.py)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        shutdown.quietly(node.destroy_node)  # the context may be gone already
        rclpy.try_shutdown()
    return shutdown.exit_line(NODE_NAME, "running")


if __name__ == "__main__":
    sys.exit(main())
