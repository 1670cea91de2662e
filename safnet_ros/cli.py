"""The ``safnet`` command: one entry point, subcommands registered per sub-package.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` that adds
its commands with ``parser.set_defaults(func=handler)``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code. Heavy imports (torch, open3d) stay
inside handlers so ``safnet --help`` is instant. A :class:`~safnet_ros.errors.SafnetError`
becomes one ``error: ...`` line and exit status 2, never a traceback; so does an
argparse range error (safnet_ros.validation), an operating-system refusal naming a
file (permission, no space, a file where a folder is needed) and running out of
memory. Any other exception is a bug of ours: its traceback is kept and a line
asks for a report (exit status 1).
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


#: Exit status of an internal error (a bug), as opposed to 2 for bad input.
BUG_EXIT_STATUS = 1
BUG_REPORT_LINE = ("error: internal error ({name}): this is a bug in safnet_ros, not a problem with your "
                   "input; please report it with the command line and the traceback above")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or argparse's one error line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    tune_cpu_allocator()  # freed tensor memory stays for reuse (safnet_ros.engine.cpu_allocator)
    try:
        return int(args.func(args) or 0)
    except SafnetError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory: the input or the options ask for more memory than this machine has",
              file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path we were given: treat as a bug
            return _report_bug(exc)
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: keep the traceback, ask for a report
        return _report_bug(exc)


def _one_line(exc: BaseException) -> str:
    """The message of a SafnetError on one line (a wrapped third-party message may hold newlines)."""
    return " ".join(str(exc).split())


def _report_bug(exc: BaseException) -> int:
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(BUG_REPORT_LINE.format(name=type(exc).__name__), file=sys.stderr)
    return BUG_EXIT_STATUS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
