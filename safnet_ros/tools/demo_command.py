"""``safnet demo`` (``make demo``): a synthetic scene through a rosbag2 and the real ROS 2 node.

Default chain (6 stages, one ``[demo] k/6`` line each)::

    synthetic ScanNet scene ─▶ rosbag2 (mcap, safnet bag convert) ─▶ BagPlayer ──rclpy/DDS (loopback)──▶
    SegmentNode (shipped model) ─▶ ~/labeled_cloud ─▶ votes per mesh vertex ─▶ labelled PLY, PNG, mIoU

* Transport is real: the player, the node and a listener are three rclpy nodes
  of one process talking over DDS restricted to this machine
  (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a private ``ROS_DOMAIN_ID``
  are set when unset, before rclpy starts).  Transforms reach the node on
  ``/tf`` and ``/tf_static`` (tf2_msgs/TFMessage, generated at setup where no
  ROS 2 install has it); the player and the node pick that path by one shared
  test (:mod:`safnet_ros.ros.tf_path`), reported in the summary.
* The bag's ``/points`` are mesh vertices in the camera's frustum, in ``map``
  (the axis-aligned scene frame).  Each labelled point is matched back to its
  scene vertex by nearest neighbour within 1 mm
  (:mod:`safnet_ros.tools.vertex_votes`); a vertex
  takes the majority of the labels it received.  Points farther than that, and
  clouds not in ``map``, are counted and left out (never silently).
* Scoring is over the vertices that received a label (coverage = those / all).
* The semantic map: the node fuses every labelled cloud into its voxel map
  (docs/ros_node.md); after the replay the demo saves it through the node's
  real ``~/save_map`` service (``<scene>_map.ply``), transfers its labels to the
  scene vertices (nearest voxel within one voxel edge) and scores them the
  same way: ``summary.json`` → ``"map"``, beside the mean single-cloud mIoU
  (each labelled cloud scored alone on the vertices it labelled) and the
  per-vertex majority vote above. The PNG has a "semantic map" column.
* Latency is measured from the moment the listener receives a ``/points``
  cloud to the moment it receives the labelled cloud with the same stamp (DDS
  both ways, queueing and inference included); the node's own diagnostics
  window mean is reported beside it.
* The bag is played slower than real time (``--rate``, default 0.25) so that a
  2-core CPU segments every cloud; clouds the node still drops are counted.
  The model runs once on a few vertices before the replay (torch's first call
  costs seconds), and the node's ``tf_timeout`` is 1 s instead of 0.1 s: on a
  loaded machine DDS may deliver a transform after the cloud stamped with it.
  The Segmenter has the node's default settings (:data:`safnet_ros.tools.demo.NODE_SEGMENTER_SETTINGS`).

``--second-camera [SEC]`` (default 3 s) converts the scene with a second camera
(``safnet bag convert --second-camera``: the frame SEC ahead on ``/camera2/...``)
and replays the bag twice: once with the first camera only (the run scored and
rendered as above), once with both (node parameter ``cameras: [camera,
camera2]``). The summary gives, for both runs, the share of the labelled points
with image evidence (non-zero ``similarity`` on ``~/labeled_cloud``) and the
views kept, and the gain (``summary.json`` -> ``"second_camera"``). The bag's
``/points`` then hold the vertices in either camera's frustum, so the scored
run's coverage and mIoU are not those of the plain demo (whose bag has one camera).

``--offline`` runs the same scene and scoring without bag or node: the
Segmenter over the whole mesh with every 5th frame as a candidate view.

With no ``--model`` the shipped default model is used; when none is shipped an
untrained model runs, its labels are meaningless and every output says so.
"""
from __future__ import annotations

import argparse

from safnet_ros.validation import device_name, float_range, int_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``safnet demo`` (registered in safnet_ros.cli; :func:`run` runs it)."""
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=7,
                        help="seed of the synthetic scene (default 7)")
    parser.add_argument("--frames", type=int_range(1, 100_000), default=None,
                        help="frames of the synthetic scene (default 300)")
    parser.add_argument("--fast", action="store_true",
                        help="tiny scene (24 frames, 80x60 images, 15 cm vertex spacing) for CI")
    parser.add_argument("--rate", type=float_range(0.001, 1000.0), default=None,
                        help="bag playback speed factor (default 0.25, 0.5 with --fast: slow enough for 2 CPU cores)")
    parser.add_argument("--cloud-rate", type=float_range(0.01, 1000.0), default=None,
                        help="/points rate in the bag, Hz (default 2, 4 with --fast)")
    parser.add_argument("--second-camera", type=float_range(0.0, 1e6, lo_open=True), nargs="?", const=3.0,
                        default=None, metavar="SEC",
                        help="convert with a second camera SEC seconds ahead (default 3) and replay twice, one "
                             "camera then both: the image evidence gained")
    parser.add_argument("--offline", action="store_true",
                        help="no bag, no node: the Segmenter over the whole scene (same scoring)")
    parser.add_argument("--model", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """``safnet demo``: run the chain of :func:`safnet_ros.tools.demo.run`."""
    # the chain needs torch, open3d and ROS 2: imported when the demo runs, not for `safnet demo --help`
    from safnet_ros.tools import demo  # noqa: PLC0415

    return demo.run(args)
