"""The ``safnet`` command: one entry point, subcommands registered per sub-package.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``. A
command module is imported only when its command is chosen
(:class:`LazyCommands`), so ``safnet --help`` imports no numpy, torch or open3d.
Bad input is one ``error: ...`` line and exit status 2; any other exception is a bug of
ours: its traceback and a line asking for a report, exit status 1 (docs/reliability.md, section 6).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
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
)
#: Top-level commands that are one module each: (command, module, one-line help), after COMMAND_MODULES.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "safnet_ros.tools.demo_command", "synthetic scene -> bag -> the ROS 2 node -> labelled PLY, PNG, mIoU"),
)


class LazyCommands(argparse._SubParsersAction):
    """Subparsers whose command modules are imported when their command is chosen.

    :meth:`add_command` adds a subcommand with its one-line help only; when
    argparse reaches it, the module is imported, its docstring becomes the
    description, ``add_arguments`` fills the parser and ``run`` becomes ``func``.
    Used as ``parser.add_subparsers(action=LazyCommands, ...)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, tuple[argparse.ArgumentParser, str]] = {}

    def add_command(self, name: str, module_name: str, help_text: str) -> argparse.ArgumentParser:
        """Register ``name`` for ``module_name`` (it defines ``add_arguments(parser)`` and ``run(args)``)."""
        parser = self.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        self._pending[name] = (parser, module_name)
        return parser

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[str],
                 option_string: str | None = None) -> None:
        pending = self._pending.pop(values[0], None) if values else None
        if pending is not None:
            command_parser, module_name = pending
            module = importlib.import_module(module_name)
            command_parser.description = module.__doc__
            module.add_arguments(command_parser)
            command_parser.set_defaults(func=module.run)
        super().__call__(parser, namespace, values, option_string)


def register_group(sub: argparse._SubParsersAction, name: str, help_text: str,
                   commands: Sequence[tuple[str, str, str]]) -> None:
    """Add ``safnet NAME SUBCOMMAND``: one lazily imported command (:class:`LazyCommands`) per
    (subcommand, module, help)."""
    group = sub.add_parser(name, help=help_text)
    gsub = group.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND", action=LazyCommands)
    gsub.required = True
    for command, module_name, command_help in commands:
        gsub.add_command(command, module_name, command_help)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``safnet`` parser; command modules are imported by :meth:`LazyCommands.add_command` on use."""
    parser = argparse.ArgumentParser(
        prog="safnet",
        description="SAFNet 2D-3D fusion segmentation: data, training, evaluation, bags and demo.",
    )
    parser.add_argument("--version", action="version", version=f"safnet_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=LazyCommands)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command, module_name, command_help in COMMANDS:
        sub.add_command(command, module_name, command_help)
    return parser


#: Exit status of an internal error (a bug), as opposed to 2 for bad input.
BUG_EXIT_STATUS = 1
BUG_REPORT_LINE = ("error: internal error ({name}): this is a bug in safnet_ros, not a problem with your "
                   "input; please report it with the command line and the traceback above")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``safnet ARGV`` (default ``sys.argv[1:]``); returns the exit status (module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or argparse's one error line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    tune_cpu_allocator()  # freed tensor memory stays for reuse (safnet_ros.engine.cpu_allocator)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return _stdout_closed()
    except SafnetError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # a wrapped message may hold newlines
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


def _stdout_closed() -> int:
    """The reader of stdout went away (``safnet ... | head``): no message, exit status 1, as Python's own
    recipe does; stdout goes to /dev/null so that the interpreter's last flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no real stdout (captured): nothing to do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def _report_bug(exc: BaseException) -> int:
    """Print the traceback of a bug of ours and the line asking for a report; returns 1."""
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(BUG_REPORT_LINE.format(name=type(exc).__name__), file=sys.stderr)
    return BUG_EXIT_STATUS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
