"""The Fast DDS profile for full-size frames (config/fastdds_large_data.xml, ros/dds_profile.py).

Fast DDS's default 512 KiB shared-memory segment loses full-size frames on a loaded machine, and the
reliable /tf with them (docs/benchmarks.md, "Real-size stream"). These tests check that the shipped
profile is found, that a user's own profile is never replaced, and that Fast DDS really takes it: a
process that applies it before rclpy.init maps a 16 MiB segment, one that does not maps Fast DDS's own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safnet_ros.ros.dds_profile import PROFILE_ENV, large_data_profile, use_large_data_profile, uses_fast_dds

REPO = Path(__file__).resolve().parents[1]

#: A child process: optionally the shipped profile, then rclpy.init, one full-size image published; prints
#: the size of each Fast DDS data segment it maps (with discovery off, only its own: the one it writes through).
PROBE = """
import json, sys
if sys.argv[1] == "shipped":
    from safnet_ros.ros.dds_profile import use_large_data_profile
    use_large_data_profile()
import rclpy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("safnet_dds_profile_probe")
pub = node.create_publisher(Image, "/safnet_dds_profile_probe", 10)
msg = Image(height=968, width=1296, encoding="rgb8", step=1296 * 3)
msg.data = bytes(968 * 1296 * 3)
pub.publish(msg)
sizes = {}
for line in open("/proc/self/maps"):
    parts = line.split()
    path = parts[5] if len(parts) >= 6 else ""
    if path.startswith("/dev/shm/fastdds_") and "port" not in path and not path.endswith("_el"):
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        sizes[path] = sizes.get(path, 0) + hi - lo
print(json.dumps(sizes))
node.destroy_node()
rclpy.shutdown()
"""


def test_the_shipped_profile_is_found_in_the_checkout():
    assert large_data_profile() == REPO / "config" / "fastdds_large_data.xml"


def test_the_profile_is_set_for_fast_dds_and_never_replaces_a_users_own():
    env: dict[str, str] = {}
    assert use_large_data_profile(env) == str(REPO / "config" / "fastdds_large_data.xml") == env[PROFILE_ENV]
    own = {PROFILE_ENV: "/etc/my_dds.xml"}
    assert use_large_data_profile(own) == "/etc/my_dds.xml" and own == {PROFILE_ENV: "/etc/my_dds.xml"}
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert use_large_data_profile(cyclone) is None and PROFILE_ENV not in cyclone
    assert uses_fast_dds({"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}) and uses_fast_dds({})


@pytest.mark.ros
def test_fast_dds_maps_a_16_mib_segment_with_the_profile_and_its_own_512_kib_without():
    pytest.importorskip("rclpy")
    if not uses_fast_dds(os.environ) or not Path("/proc/self/maps").exists() or not Path("/dev/shm").is_dir():
        pytest.skip("needs Fast DDS and Linux shared memory")
    env = {k: v for k, v in os.environ.items() if k != PROFILE_ENV}
    # discovery off: a participant maps the segments of those it discovers too (another test's node may run
    # with the profile), so only the probe's own segment is mapped
    env.update(PYTHONPATH=str(REPO), ROS_AUTOMATIC_DISCOVERY_RANGE="OFF")
    largest = {}
    for mode in ("shipped", "default"):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "XMLPARSER" not in out.stderr and "Error" not in out.stderr, out.stderr
        sizes = json.loads(out.stdout.strip().splitlines()[-1])
        assert sizes, out.stdout
        largest[mode] = max(sizes.values())
    assert largest["shipped"] >= 16 * 2**20, largest
    assert largest["default"] < 2 * 2**20, largest
