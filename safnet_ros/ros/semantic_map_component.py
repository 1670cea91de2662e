"""The segment node's semantic map: every labelled cloud fused into one voxel map, published, saved, cleared.

:class:`SemanticMapComponent` owns a :class:`~safnet_ros.mapping.SemanticVoxelMap` (no rclpy in there)
and its ROS side: ``~/semantic_map`` and the ``~/save_map``, ``~/load_map``, ``~/clear_map`` services
(std_srvs/Trigger), which answer in every configured state. Topics, layout and behaviour:
docs/ros_node.md, "The semantic map". Threads: the worker integrates, the executor publishes and
serves; one lock guards the map, held only to copy its evidence (read-out and message are built outside).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.logging import get_logger
from sensor_msgs.msg import PointCloud2

from safnet_ros.data.labels import class_colors, encode_label_ids
from safnet_ros.errors import ConfigError, SafnetError
from safnet_ros.mapping import MapSnapshot, SemanticVoxelMap
from safnet_ros.mapping.map_ply import save_map
from safnet_ros.mapping.map_store import MapStore
from safnet_ros.mapping.voxel_map import IntegrateStats
from safnet_ros.ros import codecs
from safnet_ros.ros.label_info import LATCHED_QOS


@dataclass(frozen=True)
class MapSettings:
    """The map parameters, read by :meth:`SemanticMapComponent.from_node` (defaults, ranges and meaning: the
    node's parameter table, :mod:`safnet_ros.ros.params`)."""

    enable: bool
    voxel_size: float
    max_voxels: int
    fusion: str
    smoothing: float
    smoothing_cell: float
    publish_rate: float
    save_path: str
    directory: str
    load_file: str
    save_on_shutdown: bool
    label_ids: str


def trigger_type() -> Any:
    """std_srvs/Trigger, or None where the std_srvs wheel is not installed."""
    try:
        from std_srvs.srv import Trigger  # noqa: PLC0415 - std_srvs is optional (the except below)
    except Exception:  # noqa: BLE001 - ImportError, or its type support library missing
        return None
    return Trigger


class SemanticMapComponent:
    """The node's semantic map (see the module docstring); ROS entities exist between create() and destroy()."""

    def __init__(self, settings: MapSettings, fixed_frame: str, logger: Any = None):
        self.settings = settings
        self.fixed_frame = fixed_frame
        self.map = SemanticVoxelMap(voxel_size=settings.voxel_size, max_voxels=settings.max_voxels,
                                    fusion=settings.fusion, smoothing=settings.smoothing,
                                    smoothing_cell=settings.smoothing_cell)
        self._logger = logger if logger is not None else get_logger("safnet_semantic_map")
        self._lock = threading.Lock()
        self._update_s: deque[float] = deque(maxlen=200)
        self.clouds_integrated = 0
        self.clears = 0
        self.save_failures = 0
        self._published_version = -1
        self._last_stamp: Any = None
        self._node: Any = None
        self.pub_map: Any = None
        self.srv_save: Any = None
        self.srv_clear: Any = None
        self._timer: Any = None
        self.srv_load: Any = None
        #: the one folder the node's map files are read from and written to (fixed here, at start)
        self.store = MapStore(settings.directory)
        self._initial_map_loaded = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_node(cls, node: Any, fixed_frame: str) -> "SemanticMapComponent":
        """Settings from the node's (declared) map parameters; ConfigError for bad values."""
        def p(name: str) -> Any:
            return node.get_parameter(name).value

        settings = MapSettings(  # values of the declared types (params.check_value)
            enable=p("map_enable"), voxel_size=p("map_voxel_size"), max_voxels=p("map_max_voxels"),
            fusion=p("map_fusion"), smoothing=p("map_smoothing"), smoothing_cell=p("map_smoothing_cell"),
            publish_rate=p("map_publish_rate"), save_path=p("map_save_path"), directory=p("map_directory"),
            load_file=p("map_file"), save_on_shutdown=p("map_save_on_shutdown"), label_ids=p("label_ids"))
        return cls(settings, fixed_frame, node.get_logger())

    def create(self, node: Any) -> None:
        """Create the publisher and the services on ``node`` (idempotent); publishing starts with start_publishing()."""
        if self._node is not None or not self.settings.enable:
            return
        self._load_initial_map()
        self._node = node
        self.pub_map = node.create_publisher(PointCloud2, "~/semantic_map", LATCHED_QOS)
        trigger = trigger_type()
        if trigger is None:
            node.get_logger().warning("std_srvs is not installed (pip install ros-std-srvs): ~/save_map and "
                                      "~/clear_map are not offered; the map is still published")
        else:
            self.srv_save = node.create_service(trigger, "~/save_map", self._on_save)
            self.srv_clear = node.create_service(trigger, "~/clear_map", self._on_clear)
            self.srv_load = node.create_service(trigger, "~/load_map", self._on_load)

    def start_publishing(self) -> None:
        """Start the ``map_publish_rate`` timer (an active node; idempotent, a no-op before create())."""
        if self._node is None or self._timer is not None or self.settings.publish_rate <= 0:
            return
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._published_version = -1  # the first tick republishes the map
        self._timer = self._node.create_timer(1.0 / self.settings.publish_rate, self.publish, clock=steady)

    def stop_publishing(self) -> None:
        """Stop the publish timer (the publisher and services stay)."""
        if self._timer is not None and self._node is not None:
            self._node.destroy_timer(self._timer)
        self._timer = None

    def destroy(self) -> None:
        """Destroy what :meth:`create` made (the map itself is kept: a reconfigured node goes on with it)."""
        self.stop_publishing()
        if self._node is None:
            return
        self._save_on_shutdown()
        node, self._node = self._node, None
        for srv in (self.srv_save, self.srv_clear, self.srv_load):
            if srv is not None:
                node.destroy_service(srv)
        if self.pub_map is not None:
            node.destroy_publisher(self.pub_map)
        self.srv_save = self.srv_clear = self.srv_load = self.pub_map = None

    # ------------------------------------------------------------------ data
    def integrate(self, points: np.ndarray, probabilities: np.ndarray, sensor_origin: Optional[np.ndarray] = None,
                  stamp: Any = None) -> Optional[IntegrateStats]:
        """Fuse one segmented cloud (the pipeline's map update): points (N, 3) fixed-frame metres,
        probabilities (N, C); ``stamp`` (builtin_interfaces/Time) stamps the next map message."""
        if not self.settings.enable:
            return None
        with self._lock:
            stats = self.map.integrate(points, probabilities, sensor_origin=sensor_origin)
            self._update_s.append(stats.seconds)
            self.clouds_integrated += 1
            if stamp is not None:
                self._last_stamp = stamp
        return stats

    def clear(self, reason: str = "") -> int:
        """Forget every voxel; returns how many there were."""
        with self._lock:
            n = len(self.map)
            self.map.clear()
            self.clears += 1
        if reason:
            self._logger.info(f"semantic map cleared ({n} voxels): {reason}")
        return n

    def snapshot(self, with_scores: bool = False) -> MapSnapshot:
        """A consistent copy of the map; the lock is held only to copy it (the read-out runs outside)."""
        return self.map.snapshot_outside(self._lock, with_scores=with_scores)

    def __len__(self) -> int:
        return len(self.map)

    def save(self, path: str | os.PathLike) -> str:
        """Write the map PLY; returns the path written. SafnetError (MapSaveError) with the reason."""
        return self._save(lambda snap: save_map(path, snap, frame_id=self.fixed_frame))

    def _save(self, write: Any) -> str:
        """``write(snapshot with scores)``, counting a SafnetError in ``save_failures``."""
        try:
            return str(write(self.snapshot(with_scores=True)))
        except SafnetError:
            self.save_failures += 1
            raise

    # ------------------------------------------------------------------ ROS callbacks
    def publish(self) -> bool:
        """Publish ~/semantic_map when the map changed since the last time; True when sent."""
        pub = self.pub_map
        if pub is None:
            return False
        with self._lock:
            version = self.map.version
            if version == self._published_version:
                return False
            stamp = self._last_stamp
        snap = self.snapshot()  # a cloud fused meanwhile is in it too; the next tick then republishes
        if stamp is None and self._node is not None:
            stamp = self._node.get_clock().now().to_msg()
        pub.publish(semantic_map_cloud(snap, self.fixed_frame, stamp, self.settings.label_ids))
        self._published_version = version
        return True

    # ------------------------------------------------------------------ the map directory (mapping/map_store.py)
    def _save_path_name(self) -> str:
        node = self._node
        return str(node.get_parameter("map_save_path").value) if node is not None else self.settings.save_path

    def save_named(self, name: str) -> str:
        """Save the map as ``name`` inside the map directory (MapStore rules); returns the path written."""
        return self._save(lambda snap: self.store.save(snap, name, frame_id=self.fixed_frame))

    def load(self, name: str, anywhere: bool = False) -> int:
        """Replace the map by the saved map ``name`` (inside the map directory unless ``anywhere``);
        returns its voxel count. SafnetError (the current map kept) when it cannot be used."""
        vmap = self.store.load(name, self.fixed_frame, voxel_size=self.settings.voxel_size,
                               max_voxels=self.settings.max_voxels, anywhere=anywhere)
        if vmap.fusion != self.settings.fusion:
            raise ConfigError(f"{name}: the map fuses with {vmap.fusion!r}, the node's map_fusion is "
                              f"{self.settings.fusion!r}")
        vmap.smoothing, vmap.smoothing_cell = self.settings.smoothing, self.settings.smoothing_cell
        with self._lock:
            vmap.version = self.map.version + 1  # publishers see a change
            self.map = vmap
        return len(vmap)

    def _load_initial_map(self) -> None:
        """Load ``map_file`` once, at the first configure (ConfigError naming it: configure fails)."""
        if self._initial_map_loaded or not self.settings.load_file.strip():
            return
        try:
            n = self.load(self.settings.load_file, anywhere=True)
        except SafnetError as exc:
            raise ConfigError(f"parameter 'map_file': {exc}") from None
        self._initial_map_loaded = True
        self._logger.info(f"semantic map loaded from {self.settings.load_file}: {n} voxels")

    def _save_on_shutdown(self) -> None:
        if not self.settings.save_on_shutdown or len(self.map) == 0:
            return
        try:
            written = self.save_named(self._save_path_name())
        except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
            self._logger.warning(f"map_save_on_shutdown: the map was not saved: {exc}")
            return
        self._logger.info(f"map_save_on_shutdown: saved {len(self.map)} voxels to {written}")

    def _answer(self, response: Any, service: str, action: Any) -> Any:
        """Fill a Trigger ``response`` from ``action()`` (its success message), or from the SafnetError it
        raised (success false, and a warning naming ``service``)."""
        try:
            response.message = action()
            response.success = True
        except SafnetError as exc:
            response.success = False
            response.message = str(exc)
            self._logger.warning(f"{service} failed: {exc}")
        return response

    def _on_load(self, request: Any, response: Any) -> Any:
        name = self._save_path_name()
        return self._answer(response, "~/load_map",
                            lambda: f"loaded {self.load(name)} voxels from {self.store.resolve(name)}")

    def _on_save(self, request: Any, response: Any) -> Any:
        name = self._save_path_name()
        return self._answer(response, "~/save_map",
                            lambda: f"saved {len(self.map)} voxels to {self.save_named(name)}")

    def _on_clear(self, request: Any, response: Any) -> Any:
        return self._answer(response, "~/clear_map", lambda: f"cleared {self.clear('~/clear_map called')} voxels")

    # ------------------------------------------------------------------ health
    def diagnostics(self) -> dict[str, str]:
        """Key/values for /diagnostics: voxels, memory, update time, counters."""
        if not self.settings.enable:
            return {"map_enabled": "false"}
        with self._lock:
            times = list(self._update_s)
            voxels, mib = len(self.map), self.map.nbytes / 2 ** 20
            rejected, evicted, peak = self.map.points_rejected, self.map.voxels_evicted, self.map.peak_voxels
        return {
            "map_voxels": str(voxels),
            "map_max_voxels": str(self.settings.max_voxels),
            "map_peak_voxels": str(peak),
            "map_mib": f"{mib:.2f}",
            "map_update_ms_last": f"{1000 * times[-1]:.2f}" if times else "nan",
            "map_update_ms_mean": f"{1000 * float(np.mean(times)):.2f}" if times else "nan",
            "map_clouds_integrated": str(self.clouds_integrated),
            "map_points_rejected": str(rejected),
            "map_voxels_evicted": str(evicted),
            "map_clears": str(self.clears),
            "map_save_failures": str(self.save_failures),
        }

    def update_ms_mean(self) -> float:
        with self._lock:
            return 1000 * float(np.mean(self._update_s)) if self._update_s else float("nan")


#: ~/semantic_map's point layout: 28 bytes, little endian, label padded to 4 bytes.
SEMANTIC_MAP_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "label", "confidence", "observations"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4", "<u4"],
    "offsets": [0, 4, 8, 12, 16, 20, 24],
    "itemsize": 28,
})


def semantic_map_cloud(snap: MapSnapshot, frame_id: str, stamp: Any = None, label_ids: str = "index") -> Any:
    """The ~/semantic_map PointCloud2 of a snapshot (:data:`SEMANTIC_MAP_DTYPE`, one point per voxel), its
    ``label`` field in the ``label_ids`` space (index | nyu40, as ~/labeled_cloud)."""
    arr = np.zeros(len(snap), SEMANTIC_MAP_DTYPE)
    arr["x"], arr["y"], arr["z"] = snap.centres[:, 0], snap.centres[:, 1], snap.centres[:, 2]
    arr["rgb"] = codecs.pack_rgb(class_colors(snap.labels))
    arr["label"] = encode_label_ids(snap.labels, label_ids)
    arr["confidence"] = snap.confidence
    arr["observations"] = np.minimum(snap.observations, np.iinfo(np.uint32).max)
    return codecs.structured_to_pointcloud2(arr, frame_id=frame_id, stamp=stamp)


__all__ = ["MapSettings", "SEMANTIC_MAP_DTYPE", "SemanticMapComponent", "semantic_map_cloud", "trigger_type"]
