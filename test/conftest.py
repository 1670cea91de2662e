"""Test-wide settings: DDS stays on loopback, an isolated ROS domain per run, few threads."""
from __future__ import annotations

import os
import random

# Real DDS pub/sub, but discovery only on this machine and in a domain of our own
# so parallel runs (and other sessions) do not see each other.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))

try:  # keep the suite well-behaved on 2-core CI machines
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
except ImportError:  # pragma: no cover
    pass
