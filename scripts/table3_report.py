#!/usr/bin/env python3
"""Table III and Fig. 5 from `safnet eval --json` outputs, with the seeds of a row averaged.

    python scripts/table3_report.py \
        --row "SAFNet, full=runs/full_s0.json,runs/full_s1.json" \
        --row "SAFNet w/o CSM=runs/nocsm_s0.json,runs/nocsm_s1.json" \
        --row "concat late fusion=runs/concat_s0.json" --row "PointNet++=runs/pn2_s0.json" \
        --png docs/images/model_card_views_sweep.png [--per-class 3]

Each JSON is what `safnet eval --model ONE.pt --views 1,3,5 --json` prints
(one model; its ``by_views``, ``oa_by_views`` and ``per_class_by_views``).
Prints a Markdown table: mIoU at each number of test views (the mean over
the row's seeds, and each seed's value), OA at 3 views, and the 1-view minus
5-view difference (Fig. 5's shape: a model that uses several views loses
mIoU with one). ``--per-class K`` adds per-class IoU at K views;
``--by-view-distance 1,5`` adds accuracy by distance to the nearest view pixel. ``--png``
draws Fig. 5: mean mIoU against test views, one line per row, the seeds as
dots.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_row(spec: str) -> tuple[str, list[dict]]:
    """'NAME=a.json,b.json' -> (NAME, [eval dicts])."""
    if "=" not in spec:
        raise SystemExit(f"error: --row wants NAME=FILE[,FILE...], got {spec!r}")
    name, files = spec.split("=", 1)
    runs = []
    for f in files.split(","):
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: {f}: {exc}") from None
        if isinstance(data, list):
            if len(data) != 1:
                raise SystemExit(f"error: {f} holds {len(data)} models; give one model per file")
            data = data[0]
        if "by_views" not in data:
            raise SystemExit(f"error: {f} is not the output of `safnet eval --json` (no by_views)")
        runs.append(data)
    return name.strip(), runs


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def print_by_view_distance(rows: list[tuple[str, list[dict]]], views: list[str]) -> None:
    """Accuracy % (share of the scored points) per distance bin, each row's seeds pooled, one line per k."""
    first = next((r for _, runs in rows for r in runs if "accuracy_by_view_distance" in r), None)
    if first is None:
        raise SystemExit("error: no eval JSON has accuracy_by_view_distance (made by an older safnet eval)")
    bins = [b["bin"] for b in next(iter(first["accuracy_by_view_distance"].values()))]
    print()
    print("Accuracy % by distance to the nearest view pixel (seeds pooled; share of the scored points):")
    print()
    print("| model | views | " + " | ".join(bins) + " |")
    print("|---|---|" + "---|" * len(bins))
    for name, runs in rows:
        for k in views:
            lists = [r["accuracy_by_view_distance"][k] for r in runs if k in r.get("accuracy_by_view_distance", {})]
            if not lists:
                continue
            points = [sum(lst[i]["points"] for lst in lists) for i in range(len(bins))]
            correct = [sum((lst[i]["accuracy"] or 0.0) * lst[i]["points"] for lst in lists) for i in range(len(bins))]
            total = sum(points)
            cells = [f"{100 * c / n:.1f} ({100 * n / total:.0f} %)" if n else "–" for c, n in zip(correct, points)]
            print(f"| {name} | {k} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", required=True, help="NAME=FILE[,FILE...] (one file per seed)")
    ap.add_argument("--png", help="write Fig. 5 here")
    ap.add_argument("--per-class", type=int, default=0, metavar="K", help="also per-class IoU at K views")
    ap.add_argument("--by-view-distance", default="", metavar="K,K",
                    help="also accuracy by distance to the nearest view pixel at these numbers of views "
                         "(the eval JSONs' accuracy_by_view_distance, seeds pooled)")
    args = ap.parse_args(argv)
    rows = [load_row(r) for r in args.row]
    views = sorted({int(k) for _, runs in rows for r in runs for k in r["by_views"]})

    head = "| model | seeds | " + " | ".join(f"mIoU {k} view{'s' if k > 1 else ''}" for k in views)
    head += " | OA 3 views | 1 view − 5 views |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, runs in rows:
        cells = []
        for k in views:
            vals = [100 * r["by_views"][str(k)] for r in runs if str(k) in r["by_views"]]
            each = " / ".join(f"{v:.1f}" for v in vals)
            cells.append(f"{mean(vals):.1f}" + (f" ({each})" if len(vals) > 1 else ""))
        oa = [100 * r["oa_by_views"]["3"] for r in runs if "3" in r.get("oa_by_views", {})]
        drop = [100 * (r["by_views"]["1"] - r["by_views"]["5"]) for r in runs
                if "1" in r["by_views"] and "5" in r["by_views"]]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells)
              + " | " + (f"{mean(oa):.1f}" if oa else "–") + " | " + (f"{mean(drop):+.1f}" if drop else "–") + " |")

    if args.per_class:
        k = str(args.per_class)
        classes = list(rows[0][1][0]["per_class_by_views"][k].keys())
        print()
        print(f"Per-class IoU % at {k} views (mean over seeds):")
        print()
        print("| class | " + " | ".join(name for name, _ in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for c in classes:
            vals = []
            for _, runs in rows:
                v = [r["per_class_by_views"][k][c] for r in runs]
                v = [x for x in v if x is not None and x == x]
                vals.append(f"{100 * mean(v):.1f}" if v else "–")
            print(f"| {c} | " + " | ".join(vals) + " |")

    if args.by_view_distance:
        print_by_view_distance(rows, [k.strip() for k in args.by_view_distance.split(",") if k.strip()])

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, runs in rows:
            line = ax.plot(views, [mean([100 * r["by_views"][str(k)] for r in runs]) for k in views],
                           marker="o", label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")[0]
            if len(runs) > 1:
                for r in runs:
                    ax.scatter(views, [100 * r["by_views"][str(k)] for k in views], s=12, color=line.get_color(),
                               alpha=0.5)
        ax.set_xlabel("number of test views")
        ax.set_ylabel("mIoU (%)")
        ax.set_xticks(views)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Fig. 5: mIoU vs test views (held-out realistic scans)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        plt.close(fig)
        print(f"\nFig. 5: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
