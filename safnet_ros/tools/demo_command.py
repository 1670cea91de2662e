"""``safnet demo`` (``make demo``): a synthetic scene through a rosbag2 and the real ROS 2 node.

The six stages, the outputs and the options: README.md, "What `make demo`
does". Decisions a reader of :mod:`safnet_ros.tools.demo` needs:

* Player, node and listener are three rclpy nodes of one process over DDS kept
  on loopback in a private ``ROS_DOMAIN_ID`` (both set when unset, before
  rclpy starts); transforms take the player's and the node's shared path
  (:mod:`safnet_ros.ros.tf_path`).
* A labelled point is matched to its scene vertex within 1 mm
  (:mod:`safnet_ros.tools.vertex_votes`); points farther than that, and clouds
  not in ``map``, are counted and left out, never silently.  Scores are over
  the vertices that received a label (coverage = those / all).
* Latency runs from the listener receiving a ``/points`` cloud to it receiving
  the labelled cloud with the same stamp (DDS both ways, queueing and
  inference); the node's diagnostics window mean is reported beside it.
* The bag plays slower than real time (``--rate``) so that 2 CPU cores segment
  every cloud; the model is warmed up before the replay (torch's first call
  costs seconds), and the node's ``tf_timeout`` is 1 s: on a loaded machine
  DDS may deliver a transform after the cloud stamped with it.  The Segmenter
  has the node's defaults (:data:`safnet_ros.tools.demo.NODE_SEGMENTER_SETTINGS`).
* ``--second-camera``: the bag's ``/points`` cover both cameras' frustums, so
  the scored (first-camera) run's coverage and mIoU are not the plain demo's.
* ``--offline``: the Segmenter over the whole mesh, every 5th frame a candidate view.
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
