"""``safnet train CONFIG [--resume] [--out DIR]``: train SAFNet (stage 2d or 3d) from a YAML config.

Runs on one process, or under ``torchrun --nproc_per_node N`` with DDP (nccl on
GPUs, gloo on CPU). docs/training.md describes the config keys and the outputs.
"""
from __future__ import annotations

import argparse

from safnet_ros.cli import LazyCommands


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``safnet train``."""
    parser.add_argument("config", metavar="CONFIG", help="training YAML (e.g. config/train_synth_3d.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last finished epoch in OUT/checkpoints/train_state.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in OUT (only the files the trainer wrote are removed); without it "
                             "or --resume, an OUT holding checkpoints is refused")
    parser.add_argument("--out", default=None, help="output folder (default: the config's `out`)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value, parsed as YAML; repeatable "
                             "(e.g. --set model.variant=concat --set out=runs/synth_concat)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    """Train from ``args.config``; engine.train (torch) is imported here, not by ``safnet --help``."""
    from safnet_ros.engine.train import train

    result = train(args.config, args.out, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress, sets=args.sets)
    if result.last_checkpoint is not None:
        print(f"trained epochs {result.epochs_run[0] + 1}..{result.epochs_run[-1] + 1}; "
              f"last checkpoint {result.last_checkpoint}; metrics {result.out / 'metrics.csv'}")
    elif not result.epochs_run:
        print(f"nothing to do: every epoch is already done in {result.out}")
    return 0


def register(sub: LazyCommands) -> None:
    """Add ``safnet train`` and ``safnet eval`` to the top-level :class:`~safnet_ros.cli.LazyCommands`."""
    parser = sub.add_parser("train", help="train SAFNet (stage 2d or 3d) from a YAML config",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)
    sub.add_command("eval", "safnet_ros.engine.evaluate",
                    "evaluate checkpoints on preprocessed scenes (Table I, Table III, Fig. 5)")
