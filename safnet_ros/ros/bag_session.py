"""A segmentation node fed by a bag in one process: what ``safnet demo`` and ``safnet bench soak`` run.

The tools outside ``ros/`` drive the node through this module and never import rclpy themselves.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2

from safnet_ros.errors import SafnetError
from safnet_ros.ros.bag_player import BagPlayer
from safnet_ros.ros.segment_node import SegmentNode
from safnet_ros.ros.semantic_map_component import trigger_type
from safnet_ros.ros.spin import spin_resilient
from safnet_ros.ros.tf_topics import reliable_qos
from safnet_ros.tools import bag_io as bio


class BagSession:
    """A SegmentNode on the bag topics plus helper nodes in a private context, spun by one
    :func:`~safnet_ros.ros.spin.spin_resilient` thread (use as a context manager; leaving it stops the
    executor and waits for its thread before the nodes go).

    segmenter: the Segmenter the node runs; parameters: extra node parameters
    by name (they override the bag topics and ``use_sim_time`` set here);
    executor_threads: threads of the MultiThreadedExecutor; name: prefix of
    the helper nodes and the spin thread.
    """

    def __init__(self, segmenter: Any, parameters: Optional[dict[str, Any]] = None, executor_threads: int = 2,
                 name: str = "safnet_session"):
        self.segmenter = segmenter
        self.parameters = {
            "rgb_topic": bio.COLOR_TOPIC, "depth_topic": bio.DEPTH_TOPIC,
            "camera_info_topic": bio.CAMERA_INFO_TOPIC, "cloud_topic": bio.POINTS_TOPIC,
            "use_sim_time": True, **(parameters or {}),
        }
        self.executor_threads = int(executor_threads)
        self.name = name
        self.context: Any = None
        self.executor: Any = None
        self.node: Any = None
        self._helpers: list[Any] = []
        self._spinner: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "BagSession":
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        try:
            self.executor = MultiThreadedExecutor(num_threads=self.executor_threads, context=self.context)
            self.node = SegmentNode(segmenter=self.segmenter, context=self.context, parameter_overrides=[
                Parameter(key, value=value) for key, value in self.parameters.items()])
            self.executor.add_node(self.node)
            self._spinner = threading.Thread(target=spin_resilient, args=(self.executor, self.context),
                                             name=f"{self.name}_executor", daemon=True)
            self._spinner.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
        if self._spinner is not None:  # no callback may still run when the nodes are destroyed
            self._spinner.join(timeout=10.0)
        for helper in reversed(self._helpers):
            helper.destroy_node()
        self._helpers.clear()
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)

    # ------------------------------------------------------------------ helpers
    def helper_node(self, suffix: str) -> Any:
        """A plain rclpy node ``<name>_<suffix>`` in the session's context, spun by its executor."""
        node = rclpy.create_node(f"{self.name}_{suffix}", context=self.context)
        self._helpers.append(node)
        self.executor.add_node(node)
        return node

    def subscribe_clouds(self, helper: Any, topic: str, callback: Any, depth: int = 50) -> Any:
        """Subscribe ``helper`` to PointCloud2 on ``topic`` (reliable, volatile, keep last ``depth``)."""
        return helper.create_subscription(PointCloud2, topic, callback, reliable_qos(depth, False))

    def player(self, bag: str | Path, rate: float = 1.0, loop: bool = False,
               wait_for_subscribers: float = 5.0) -> Any:
        """A :class:`~safnet_ros.ros.bag_player.BagPlayer` for ``bag`` on its own helper node (spun like the
        rest: with it unspun, a looping player stopped at exit left rclpy tasks that failed unseen)."""
        return BagPlayer(self.helper_node("player"), bag, rate=rate, loop=loop,
                         wait_for_subscribers=wait_for_subscribers)

    def save_map(self, path: Path, timeout_s: float = 30.0) -> str:
        """Save the node's semantic map to ``path`` with a real ``~/save_map`` call; returns how it was saved.

        Waits until every segmented cloud is in the map first. Without std_srvs
        (no Trigger type) the node's map component saves it directly. Raises
        SafnetError when the service is missing or answers with a failure.
        """
        node = self.node
        sm = node.semantic_map
        deadline = time.monotonic() + timeout_s
        while sm.clouds_integrated < node.stats.get("clouds_segmented") and time.monotonic() < deadline:
            time.sleep(0.02)
        node.set_parameters([Parameter("map_save_path", value=str(path))])
        trigger = trigger_type()
        if trigger is None:
            sm.save(path)
            return "the node's map component (std_srvs not installed)"
        client_node = self.helper_node("map_client")
        client = client_node.create_client(trigger, f"/{node.get_name()}/save_map")
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                raise SafnetError("the node offers no ~/save_map service")
            future = client.call_async(trigger.Request())
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            response = future.result() if future.done() else None
        finally:
            client_node.destroy_client(client)
        if response is None or not response.success:
            raise SafnetError(f"~/save_map failed: {response.message if response else 'no answer'}")
        return "~/save_map service"
