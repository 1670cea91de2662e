"""The Fast DDS profile for full-size RGB-D streams (``config/fastdds_large_data.xml``).

Fast DDS, ROS 2's default middleware, moves messages between processes of one
host through a shared-memory segment per participant, 512 KiB by default. Full-
size frames (a 1296x968 JPEG and a 640x480 PNG depth, ~0.65 MB; raw, 4.4 MB) do
not fit beside the ones readers still hold, so on a loaded machine the writer
recycles buffers before the readers took them: images and clouds are lost, and a
reliable ``/tf`` sample lost this way holds back every later transform until the
writer's next heartbeat (every 3 s). The shipped profile gives a participant a
16 MiB segment (docs/ros_node.md, "Full-size camera streams"; measured in
docs/benchmarks.md, "Real-size stream").

What matters is the profile of the process that *writes* the large messages:
the camera driver (or a bag player) for the inputs, the node for its labelled
clouds. Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` when a process creates
its participant (``rclpy.init``), so :func:`use_large_data_profile` must run
before that.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping, Optional

__all__ = ["PROFILE_ENV", "PROFILE_NAME", "large_data_profile", "uses_fast_dds", "use_large_data_profile"]

#: The environment variable Fast DDS reads its XML profiles from.
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
#: The shipped profile's file name (under ``config/``, installed to ``share/safnet_ros/config``).
PROFILE_NAME = "fastdds_large_data.xml"


def large_data_profile() -> Optional[Path]:
    """The shipped profile: the source checkout's ``config/``, else the installed ``share/safnet_ros/config``
    (pip's ``sys.prefix`` or a colcon install); None when neither has it."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME,
                  Path(sys.prefix) / "share" / "safnet_ros" / "config" / PROFILE_NAME]
    try:  # a colcon / ament install
        from ament_index_python.packages import get_package_share_directory  # noqa: PLC0415 - optional: ROS only

        candidates.append(Path(get_package_share_directory("safnet_ros")) / "config" / PROFILE_NAME)
    except Exception:  # noqa: BLE001 - ament_index is optional (pip install)
        pass
    return next((path for path in candidates if path.is_file()), None)


def uses_fast_dds(env: MutableMapping[str, str] = os.environ) -> bool:
    """Whether ``env`` selects Fast DDS (``RMW_IMPLEMENTATION`` unset, ROS 2's default, or rmw_fastrtps_*)."""
    rmw = env.get("RMW_IMPLEMENTATION", "").strip()
    return not rmw or rmw.startswith("rmw_fastrtps")


def use_large_data_profile(env: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """Point ``env`` at the shipped profile, unless it already names a profile of its own (the user's
    wins) or selects another middleware. Returns the file now in ``env[PROFILE_ENV]``, or None."""
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV]
    profile = large_data_profile()
    if profile is None or not uses_fast_dds(env):
        return None
    env[PROFILE_ENV] = str(profile)
    return str(profile)
