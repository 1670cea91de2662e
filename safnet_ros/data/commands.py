"""``safnet data ...`` subcommands.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; those modules keep heavy imports inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib

#: (subcommand, module, one-line help)
DATA_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("synth", "safnet_ros.data.synth.command", "generate synthetic rooms in ScanNet's raw on-disk format"),
    ("info", "safnet_ros.data.info", "summarise one ScanNet-format scene folder"),
    ("preprocess", "safnet_ros.data.preprocess", "resize frames, label images and the coverage table for training"),
)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="ScanNet data: synthetic scenes, scene info, preprocessing")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dsub.required = True
    for name, module_name, help_text in DATA_COMMANDS:
        module = importlib.import_module(module_name)
        parser = dsub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
