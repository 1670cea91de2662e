#!/usr/bin/env python3
"""Training curves of `safnet train` runs from their metrics.csv, one line per run.

    python scripts/plot_training.py RUNS/full_s0="SAFNet, full" RUNS/concat_s0=concat ... --out curves.png

Each argument is a run folder (holding metrics.csv), optionally =LABEL. Draws
the training loss and the training mIoU (points seen in training, augmented)
against optimiser steps, each smoothed by a running mean over ``--smooth``
epochs, and the validation mIoU where the run measured it. Runs of one label
prefix share a colour family only by order; give each run its own label.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def read_run(folder: Path) -> dict[str, np.ndarray]:
    """metrics.csv -> columns as float arrays (empty cells NaN), plus cumulative 'step'."""
    path = folder / "metrics.csv"
    try:
        rows = list(csv.DictReader(path.open()))
    except OSError as exc:
        raise SystemExit(f"error: {path}: {exc.strerror or exc}") from None
    if not rows or "train_loss" not in rows[0]:
        raise SystemExit(f"error: {path} is not a safnet train metrics.csv (no train_loss column)")
    cols = {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
            for k in ("epoch", "train_loss", "train_miou", "val_miou", "steps")}
    cols["step"] = np.cumsum(np.nan_to_num(cols["steps"]))
    return cols


def smooth(values: np.ndarray, k: int) -> np.ndarray:
    """Running mean over the last k values (fewer at the start)."""
    out = np.empty_like(values)
    for i in range(len(values)):
        out[i] = np.nanmean(values[max(0, i - k + 1): i + 1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="RUN_FOLDER[=LABEL]")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--smooth", type=int, default=3, help="running mean over this many epochs (default 3)")
    ap.add_argument("--title", default="stage-3d training")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        raise SystemExit(f"error: --smooth wants a number of epochs >= 1, got {args.smooth}")
    fig = Figure(figsize=(12, 4.6))
    ax_loss, ax_miou = fig.subplots(1, 2)
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        run = read_run(Path(folder))
        label = label or Path(folder).name
        line = ax_loss.plot(run["step"], smooth(run["train_loss"], args.smooth), label=label)[0]
        ax_miou.plot(run["step"], 100 * smooth(run["train_miou"], args.smooth), color=line.get_color(), label=label)
        val = np.isfinite(run["val_miou"])
        if val.any():
            ax_miou.plot(run["step"][val], 100 * run["val_miou"][val], linestyle="none", marker="o", markersize=4,
                         color=line.get_color())
    ax_loss.set_xlabel("optimiser steps")
    ax_loss.set_ylabel(f"training loss (running mean of {args.smooth} epochs)")
    ax_miou.set_xlabel("optimiser steps")
    ax_miou.set_ylabel("mIoU % (line: training chunks; dots: validation)")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    ax_miou.legend(fontsize=8, loc="lower right")
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"training curves: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
