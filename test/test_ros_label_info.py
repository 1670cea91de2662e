"""Labels that explain themselves: the latched ~/label_info (vision_msgs/msg/LabelInfo with ROS 2's type hash)
seen by a subscriber that comes late, and ``label_ids`` applied to ~/labeled_cloud. Real rclpy and DDS.
"""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from test_ros_node import NODE_PARAMS, Collector, Harness, lidar_cloud, tiny_checkpoint  # noqa: E402

from safnet_ros.data.labels import CLASS_NAMES, NYU40_IDS, encode_label_ids  # noqa: E402
from safnet_ros.ros import codecs  # noqa: E402
from safnet_ros.ros.label_info import LATCHED_QOS, class_map, label_info_class  # noqa: E402

pytestmark = pytest.mark.ros

#: RIHS01 of ROS 2's vision_msgs/msg/LabelInfo (vision_msgs 4.1.1: the same hash comes out of its .msg files
#: and out of interfaces/vision_msgs, computed by rosidl_generator_type_description).
LABELINFO_TYPE_HASH = "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_lite.pt")


def test_class_maps_name_every_id_written():
    index = class_map("index")
    assert index[:20] == list(zip(range(20), CLASS_NAMES)) and index[20] == (255, "unlabeled")
    nyu = class_map("nyu40")
    assert [i for i, _ in nyu[:20]] == list(NYU40_IDS) and nyu[20] == (0, "unlabeled")
    labels = np.array([0, 4, 19, 255])
    np.testing.assert_array_equal(encode_label_ids(labels, "index"), labels)
    np.testing.assert_array_equal(encode_label_ids(labels, "nyu40"), [1, 5, 39, 0])


@pytest.mark.parametrize("space", ["index", "nyu40"])
def test_label_info_is_latched_and_labels_follow_label_ids(model_path, space):
    if label_info_class() is None:
        pytest.skip("no vision_msgs/msg/LabelInfo here (run `make venv`, which generates it)")
    h = Harness(model_path, params={**NODE_PARAMS, "label_ids": space})
    try:
        # a subscriber that comes after the message was sent still gets it (transient local)
        got = Collector()
        h.pub.create_subscription(label_info_class(), "/safnet_segment/label_info", got, LATCHED_QOS)
        msg = got.wait_for(lambda m: True, 10.0)
        assert msg is not None
        assert [(c.class_id, c.class_name) for c in msg.class_map] == class_map(space)
        assert msg.threshold == 0.0 and msg.header.frame_id == "map"
        info = h.pub.get_publishers_info_by_topic("/safnet_segment/label_info")
        assert len(info) == 1 and str(info[0].topic_type_hash) == LABELINFO_TYPE_HASH

        # ~/labeled_cloud carries ids of the same space
        base = h.base_stamp()
        msg, _ = lidar_cloud(0.3, base)
        h.pub_cloud.publish(msg)
        out = h.wait_cloud(base)
        assert out is not None, h.node.stats.counters
        labels = codecs.pointcloud2_to_array(out)["label"]
        known = {i for i, _ in class_map(space)}
        assert set(np.unique(labels).tolist()) <= known
        if space == "nyu40":
            assert 255 not in labels and labels.max() <= 39
        else:
            assert not np.any((labels >= 20) & (labels != 255))
    finally:
        h.close()
