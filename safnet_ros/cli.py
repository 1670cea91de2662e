"""The ``safnet`` command: one entry point, subcommands registered per sub-package.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` that adds
its commands with ``parser.set_defaults(func=handler)``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code. Heavy imports (torch, open3d) stay
inside handlers so ``safnet --help`` is instant. A :class:`~safnet_ros.errors.SafnetError`
becomes one ``error: ...`` line and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from safnet_ros import __version__
from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
from safnet_ros.errors import SafnetError

#: Modules that register subcommands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "safnet_ros.data.commands",
    "safnet_ros.tools.commands",
    "safnet_ros.engine.commands",
    "safnet_ros.tools.bag_commands",
    "safnet_ros.mapping.commands",
    "safnet_ros.tools.demo",
)


def register_group(
    sub: argparse._SubParsersAction,
    name: str,
    help_text: str,
    commands: Sequence[tuple[str, str, str]],
) -> None:
    """Add ``safnet NAME SUBCOMMAND``: one subcommand per (subcommand, module, help).

    Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; its
    docstring becomes the subcommand's description.
    """
    group = sub.add_parser(name, help=help_text)
    gsub = group.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND")
    gsub.required = True
    for command, module_name, command_help in commands:
        module = importlib.import_module(module_name)
        parser = gsub.add_parser(command, help=command_help, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safnet",
        description="SAFNet 2D-3D fusion segmentation: data, training, evaluation, bags and demo.",
    )
    parser.add_argument("--version", action="version", version=f"safnet_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # freed tensor memory stays for reuse (safnet_ros.engine.cpu_allocator)
    try:
        return int(args.func(args) or 0)
    except SafnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
