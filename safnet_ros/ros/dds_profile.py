"""The Fast DDS profile for full-size RGB-D streams (``config/fastdds_large_data.xml``: a 16 MiB
shared-memory segment per participant instead of 512 KiB; why: docs/ros_node.md, "Full-size camera
streams"). It matters in the process that *writes* the large messages. Fast DDS reads
``FASTDDS_DEFAULT_PROFILES_FILE`` when ``rclpy.init`` creates the participant, so
:func:`use_large_data_profile` must run before that.
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
