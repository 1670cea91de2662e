"""``safnet bench ...`` subcommands (``model``: SAFNet latency and memory).

Each subcommand's module exposes ``add_arguments(parser)`` and ``run(args) -> int``
and keeps heavy imports (torch) inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib

#: (subcommand, module, one-line help)
BENCH_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("model", "safnet_ros.tools.bench_model", "forward latency and peak memory of SAFNet vs PointNet++"),
    ("soak", "safnet_ros.tools.soak", "loop a bag through the node: RSS over time, latency percentiles, drops"),
)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: model latency and memory")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")
    bsub.required = True
    for name, module_name, help_text in BENCH_COMMANDS:
        module = importlib.import_module(module_name)
        parser = bsub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
