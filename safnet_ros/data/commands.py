"""``safnet data ...`` subcommands.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; those modules keep heavy imports inside ``run``.
"""
from __future__ import annotations

import argparse

from safnet_ros.cli import register_group

#: (subcommand, module, one-line help)
DATA_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("synth", "safnet_ros.data.synth.command", "generate synthetic rooms in ScanNet's raw on-disk format"),
    ("info", "safnet_ros.data.info", "summarise one ScanNet-format scene folder"),
    ("stats", "safnet_ros.data.stats", "realism table of a scene: mesh spacing, what the frames see, chunk coverage"),
    ("preprocess", "safnet_ros.data.preprocess", "resize frames, label images and the coverage table for training"),
)


def register(sub: argparse._SubParsersAction) -> None:
    register_group(sub, "data", "ScanNet data: synthetic scenes, scene info, preprocessing", DATA_COMMANDS)
