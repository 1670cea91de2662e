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

From the eval JSONs' ``per_scene_confusion`` (written by safnet eval):

* ``--scenes A,B,...`` recomputes every figure over those rooms only (their
  confusion rows pooled), e.g. to read an earlier, smaller test set from the
  same files;
* ``--bootstrap N --compare "ROW A" "ROW B"`` resamples the rooms with
  replacement N times (the same draw for both rows and all their seeds) and
  prints, for A minus B, the mean and 95 % interval of Fig. 5's drop
  (1 view minus 5 views) and of mIoU at 3 views, and how often A loses fewer
  points than B. Rooms, not points, are the unit: points of one room are not
  independent, and a class present in one room moves a room-level mIoU a lot.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from safnet_ros.engine.metrics import ConfusionMatrix


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


def scene_matrices(run: dict, where: str = "") -> dict[str, dict[str, np.ndarray]]:
    """views -> scene -> (C, C + 1) confusion matrix of one eval JSON (its per_scene_confusion)."""
    per = run.get("per_scene_confusion")
    if not per:
        raise SystemExit(f"error: {where or 'an eval JSON'} has no per_scene_confusion (made by an older "
                         "safnet eval); --scenes and --bootstrap need it")
    return {k: {name: np.asarray(m, dtype=np.int64) for name, m in scenes.items()} for k, scenes in per.items()}


def pooled(matrices: dict[str, np.ndarray], scenes: list[str]) -> ConfusionMatrix:
    """The ConfusionMatrix of ``scenes`` (names may repeat: a bootstrap draw) pooled."""
    cm = ConfusionMatrix()
    for name in scenes:
        cm.matrix += matrices[name]
    return cm


def restrict_to_scenes(rows: list[tuple[str, list[dict]]], scenes: list[str]) -> None:
    """Recompute by_views, oa_by_views and per_class_by_views of every run over ``scenes`` only."""
    for name, runs in rows:
        for i, run in enumerate(runs):
            mats = scene_matrices(run, f"row {name!r}, file {i + 1}")
            for k, by_scene in mats.items():
                missing = sorted(set(scenes) - set(by_scene))
                if missing:
                    raise SystemExit(f"error: row {name!r}, file {i + 1}: no scene {', '.join(missing)} at {k} views")
                cm = pooled(by_scene, scenes)
                run["by_views"][k] = cm.miou()
                run.setdefault("oa_by_views", {})[k] = cm.overall_accuracy()
                run.setdefault("per_class_by_views", {})[k] = cm.per_class()
            run.pop("accuracy_by_view_distance", None)  # binned over all scenes: not restricted


def bootstrap_compare(rows: list[tuple[str, list[dict]]], names: list[str], draws: int, seed: int = 0,
                      only: list[str] | None = None) -> dict:
    """A minus B over ``draws`` resamplings of the rooms: Fig. 5's drop (1 - 5 views) and mIoU at 3 views, points.

    Each draw picks len(rooms) rooms with replacement; every seed of both rows is
    scored on that same draw (a paired bootstrap), seeds averaged within a row.
    """
    by_name = dict(rows)
    for n in names:
        if n not in by_name:
            raise SystemExit(f"error: --compare names {n!r}, which is no --row (rows: {', '.join(by_name)})")
    mats = {n: [scene_matrices(r, f"row {n!r}, file {i + 1}") for i, r in enumerate(by_name[n])] for n in names}
    for n in names:
        for m in mats[n]:
            if not {"1", "3", "5"} <= set(m):
                raise SystemExit(f"error: row {n!r} needs per-scene results at 1, 3 and 5 views")
    rooms = sorted(set.intersection(*(set(m["5"]) for n in names for m in mats[n])))
    if only:
        rooms = [r for r in rooms if r in set(only)]
    if len(rooms) < 2:
        raise SystemExit(f"error: the rows share {len(rooms)} room(s); a bootstrap over rooms needs at least 2")
    rng = np.random.default_rng(seed)

    def scores(draw: list[str]) -> dict[str, tuple[float, float]]:
        out = {}
        for n in names:
            drop = mean([100 * (pooled(m["1"], draw).miou() - pooled(m["5"], draw).miou()) for m in mats[n]])
            at3 = mean([100 * pooled(m["3"], draw).miou() for m in mats[n]])
            out[n] = (drop, at3)
        return out

    a, b = names
    full = scores(rooms)
    drops, gaps = [], []
    for _ in range(draws):
        s = scores(list(rng.choice(rooms, size=len(rooms), replace=True)))
        drops.append(s[a][0] - s[b][0])
        gaps.append(s[a][1] - s[b][1])
    drops_a, gaps_a = np.asarray(drops), np.asarray(gaps)
    return {"rooms": len(rooms), "draws": draws,
            "drop": {n: full[n][0] for n in names}, "miou3": {n: full[n][1] for n in names},
            "drop_diff": full[a][0] - full[b][0], "drop_diff_ci": np.percentile(drops_a, [2.5, 97.5]).tolist(),
            "p_a_loses_less": float((drops_a > 0).mean()),  # drops are 1 - 5 views: negative = a loss
            "miou3_diff": full[a][1] - full[b][1], "miou3_diff_ci": np.percentile(gaps_a, [2.5, 97.5]).tolist()}


def print_bootstrap(res: dict, names: list[str]) -> None:
    a, b = names
    print()
    print(f"Paired bootstrap over {res['rooms']} rooms ({res['draws']} draws), {a} minus {b}:")
    print()
    print("| figure | " + a + " | " + b + " | difference | 95 % interval |")
    print("|---|---|---|---|---|")
    lo, hi = res["drop_diff_ci"]
    print(f"| 1 view − 5 views (mIoU points) | {res['drop'][a]:+.1f} | {res['drop'][b]:+.1f} | "
          f"{res['drop_diff']:+.1f} | [{lo:+.1f}, {hi:+.1f}] |")
    lo, hi = res["miou3_diff_ci"]
    print(f"| mIoU 3 views | {res['miou3'][a]:.1f} | {res['miou3'][b]:.1f} | {res['miou3_diff']:+.1f} | "
          f"[{lo:+.1f}, {hi:+.1f}] |")
    print()
    print(f"{a} loses fewer points from 5 to 1 views than {b} in {100 * res['p_a_loses_less']:.0f} % of the draws.")


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
    ap.add_argument("--scenes", default="", metavar="A,B",
                    help="recompute every figure over these rooms only (the eval JSONs' per_scene_confusion)")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="paired bootstrap over rooms with N draws for the two rows of --compare")
    ap.add_argument("--compare", nargs=2, action="append", default=[], metavar=("ROW_A", "ROW_B"),
                    help="the names of two rows --bootstrap compares (A minus B); repeat for more pairs")
    args = ap.parse_args(argv)
    rows = [load_row(r) for r in args.row]
    pairs = [[n.strip() for n in pair] for pair in args.compare]
    if args.bootstrap and not pairs:
        raise SystemExit("error: --bootstrap needs --compare with two row names, e.g. --compare full concat")
    if args.bootstrap < 0:
        raise SystemExit(f"error: --bootstrap wants a number of draws >= 0, got {args.bootstrap}")
    if args.scenes:
        if args.by_view_distance:
            raise SystemExit("error: --by-view-distance is binned over all scenes; it cannot be combined with --scenes")
        restrict_to_scenes(rows, [n.strip() for n in args.scenes.split(",") if n.strip()])
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

    if args.bootstrap:
        only = [n.strip() for n in args.scenes.split(",") if n.strip()] or None
        for pair in pairs:
            print_bootstrap(bootstrap_compare(rows, pair, args.bootstrap, only=only), pair)

    if args.png:
        fig = Figure(figsize=(7, 5.2))
        ax = fig.subplots()
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
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
        ax.set_title("Fig. 5: mIoU vs test views (held-out realistic scans)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"\nFig. 5: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
