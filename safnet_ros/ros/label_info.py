"""What the node's label ids mean: the latched ``~/label_info`` (vision_msgs/msg/LabelInfo) and ``label_ids``.

``label_ids`` picks the id space of every label the node publishes: ``index`` (class indices 0..19, 255 =
not labelled) or ``nyu40`` (0 = not labelled, as in the saved PLY files); docs/ros_node.md. ``~/label_info``
lists every id written, the unlabelled one included, with ``threshold`` 0 (the node applies none). Its
type is ROS 2's vision_msgs or the copy generated at setup (scripts/build_tf2_msgs.sh, same type hash);
where neither imports the topic is left out with one log line.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from std_msgs.msg import Header

from safnet_ros.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, NYU40_IDS
from safnet_ros.ros.tf_topics import reliable_qos

#: Id of a point that was not labelled, per label space.
UNLABELLED_ID: dict[str, int] = {"index": IGNORE_INDEX, "nyu40": 0}


def class_map(space: str) -> list[tuple[int, str]]:
    """(id, name) of every id written in ``space`` (a checked ``label_ids`` value): the 20 classes, then
    the unlabelled id."""
    ids = range(NUM_CLASSES) if space == "index" else NYU40_IDS
    return [(int(i), name) for i, name in zip(ids, CLASS_NAMES)] + [(UNLABELLED_ID[space], "unlabeled")]


def label_info_class() -> Optional[Any]:
    """``vision_msgs.msg.LabelInfo`` where it imports (ROS 2's or the generated copy), else None."""
    try:
        return importlib.import_module("vision_msgs.msg").LabelInfo
    except (ImportError, AttributeError):
        return None


#: Transient local and reliable, depth 1: subscribers that come later still get the latest message.
LATCHED_QOS = reliable_qos(1, True)


class LabelInfoPublisher:
    """Publishes ``~/label_info`` once (latched) for the node's ``label_ids``; a no-op without vision_msgs."""

    def __init__(self, node: Any, space: str, frame_id: str = "") -> None:
        self.node = node
        self.publisher: Any = None
        cls = label_info_class()
        if cls is None:
            node.get_logger().info("no vision_msgs/msg/LabelInfo here (run `make venv`, which generates it): "
                                   "~/label_info is not published")
            return
        self.publisher = node.create_publisher(cls, "~/label_info", LATCHED_QOS)
        header = Header(stamp=node.get_clock().now().to_msg(), frame_id=frame_id)
        vision_class = importlib.import_module("vision_msgs.msg").VisionClass
        self.publisher.publish(cls(header=header, threshold=0.0, class_map=[  # the node applies no threshold
            vision_class(class_id=i, class_name=name) for i, name in class_map(space)]))

    def destroy(self) -> None:
        if self.publisher is not None:
            self.node.destroy_publisher(self.publisher)
            self.publisher = None


__all__ = ["UNLABELLED_ID", "class_map", "label_info_class", "LATCHED_QOS", "LabelInfoPublisher"]
