"""``safnet bench ...`` subcommands (``model``: SAFNet latency and memory; ``map``: map update; ``soak``).

Each subcommand's module exposes ``add_arguments(parser)`` and ``run(args) -> int``
and keeps heavy imports (torch) inside ``run``.
"""
from __future__ import annotations

import argparse

from safnet_ros.cli import register_group

#: (subcommand, module, one-line help)
BENCH_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("model", "safnet_ros.tools.bench_model", "forward latency and peak memory of SAFNet vs PointNet++"),
    ("map", "safnet_ros.mapping.bench", "semantic map update time per cloud and memory (target <= 15 ms / 25k points)"),
    ("soak", "safnet_ros.tools.soak", "loop a bag through the node: RSS over time, latency percentiles, drops"),
)


def register(sub: argparse._SubParsersAction) -> None:
    register_group(sub, "bench", "benchmarks: model latency and memory, semantic map update, node soak", BENCH_COMMANDS)
