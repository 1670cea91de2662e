#!/usr/bin/env python3
"""S on moved objects against static surfaces, summed over scans: the moved-object tables of docs/synthetic_data.md.

Reads the JSON that ``safnet data stats SCENE --model CKPT --json`` prints for
each scan and sums the figures over scans:

* S as the model uses it (pooled over the views it chose for each chunk),
  per vertex: static, moved, and the moved vertices split by whether a chosen
  view sees them in place;
* S view by view (``"per_view"``: the model given each view alone), per
  sighting: static, moved, moved and seen in place / seen through, and the
  static sightings of the moved objects' classes at their class mix;
* per scan, the view-by-view means, and a paired bootstrap over scans (the
  scan is the unit) of moved minus static and moved minus static-of-the-same-classes.

    python scripts/moved_similarity_report.py STATS/*.json [--bootstrap 2000] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

POOLED = (("static", "static"), ("moved", "on moved objects"),
          ("moved_chosen_through", "moved, every chosen view sees through them"),
          ("moved_chosen_sees", "moved, a chosen view sees them in place"))
PER_VIEW = (("static", "static"), ("moved", "on moved objects"),
            ("moved_in_place", "moved, the view sees them in place"),
            ("moved_through", "moved, the view sees through them"),
            ("static_through", "static, the view sees through them"))


def load(paths: list[str]) -> list[dict]:
    """The ``moved_similarity`` block of each stats JSON, with the scene name; SystemExit(2) for a file without it."""
    scans = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: {p}: not a `safnet data stats --json` file ({exc})") from None
        ms = data.get("moved_similarity") if isinstance(data, dict) else None
        if not ms or "per_view" not in ms:
            raise SystemExit(f"error: {p}: no S view by view; make it with `safnet data stats SCENE --model CKPT "
                             f"--json` (without --no-per-view)")
        scans.append({"scene": data.get("scene", Path(p).stem), **ms})
    return scans


def weighted(rows: list[dict], count: str, value: str = "s_mean") -> tuple[int, float]:
    """(total count, count-weighted mean of ``value``) over rows whose value is finite."""
    pairs = [(r[count], r[value]) for r in rows if r[count] and math.isfinite(r[value])]
    total = sum(n for n, _v in pairs)
    return total, (sum(n * v for n, v in pairs) / total if total else float("nan"))


def same_classes(scans: list[dict]) -> tuple[int, float, float]:
    """(moved sightings, their mean S, the matched static mean) over scans, each weighted by its moved sightings."""
    rows = [s["per_view"]["static_same_classes"] for s in scans]
    n, moved = weighted(rows, "moved_sightings", "s_moved_mean")
    _n, static = weighted(rows, "moved_sightings", "s_mean")
    return n, moved, static


def differences(scans: list[dict]) -> dict[str, float]:
    """View-by-view moved minus static, and moved minus static of the same classes, pooled over ``scans``."""
    pv = [s["per_view"] for s in scans]
    _n, moved = weighted([r["moved"] for r in pv], "sightings")
    _n, static = weighted([r["static"] for r in pv], "sightings")
    _n, m_same, s_same = same_classes(scans)
    return {"moved - static": moved - static, "moved - static, same classes": m_same - s_same}


def report(scans: list[dict], draws: int, seed: int) -> str:
    lines = [f"{len(scans)} scans", "", "S as the model uses it (pooled over the views it chose), per vertex:", "",
             "| vertices | count | S |", "|---|---|---|"]
    for key, name in POOLED:
        n, mean = weighted([s[key] for s in scans], "vertices")
        lines.append(f"| {name} | {n:,} | {mean:.3f} |")
    lines += ["", "S view by view (the model given each view alone), per sighting:", "",
              "| sightings | count | vertices | S |", "|---|---|---|---|"]
    for key, name in PER_VIEW:
        rows = [s["per_view"][key] for s in scans]
        n, mean = weighted(rows, "sightings")
        lines.append(f"| {name} | {n:,} | {sum(r['vertices'] for r in rows):,} | {mean:.3f} |")
    n, m_same, s_same = same_classes(scans)
    lines.append(f"| moved, of classes that also have static sightings | {n:,} | | {m_same:.3f} |")
    lines.append(f"| static of those classes, at the moved class mix | | | {s_same:.3f} |")
    lines += ["", "Per scan, view by view (S; moved sightings; classes shared: the moved sightings of classes that "
                  "also have static ones, and the static ones at their class mix):", "",
              "| scan | moved | static | moved, classes shared | static, classes shared | moved sightings |",
              "|---|---|---|---|---|---|"]
    lower = lower_same = with_moved = with_same = 0
    for s in scans:
        pv = s["per_view"]
        same = pv["static_same_classes"]
        lines.append(f"| {s['scene']} | {pv['moved']['s_mean']:.3f} | {pv['static']['s_mean']:.3f} | "
                     f"{same['s_moved_mean']:.3f} | {same['s_mean']:.3f} | {pv['moved']['sightings']:,} |")
        if pv["moved"]["sightings"]:
            with_moved += 1
            lower += pv["moved"]["s_mean"] < pv["static"]["s_mean"]
        if same["moved_sightings"]:
            with_same += 1
            lower_same += same["s_moved_mean"] < same["s_mean"]
    lines += ["", f"moved below static in {lower} of {with_moved} scans with moved sightings; below static of "
                  f"the same classes in {lower_same} of {with_same} scans that have both"]
    if draws:
        rng = np.random.default_rng(seed)
        point = differences(scans)
        samples = {k: [] for k in point}
        for _ in range(draws):
            pick = [scans[i] for i in rng.integers(0, len(scans), len(scans))]
            for k, v in differences(pick).items():
                if math.isfinite(v):
                    samples[k].append(v)
        lines += ["", f"Paired bootstrap over scans ({draws} draws), view by view:", "",
                  "| difference | value | 95 % interval | draws below 0 |", "|---|---|---|---|"]
        for k, v in point.items():
            got = np.asarray(samples[k])
            lo, hi = (np.percentile(got, [2.5, 97.5]) if len(got) else (float("nan"), float("nan")))
            below = float((got < 0).mean()) if len(got) else float("nan")
            lines.append(f"| {k} | {v:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {100 * below:.0f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stats", nargs="+", help="`safnet data stats SCENE --model CKPT --json` outputs, one per scan")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap draws (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        raise SystemExit("error: --bootstrap must be >= 0")
    print(report(load(args.stats), args.bootstrap, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
