#!/usr/bin/env python3
"""What each real-camera training knob buys: two models scored under each `--camera-effects` condition.

    for c in off real exposure white_balance noise motion_blur defocus_blur jpeg vignetting depth_holes; do
      safnet eval --model A.pt --data PRE18 --views 3 --json --camera-effects $c --out ea_$c > A_$c.json
      safnet eval --model B.pt --data PRE18 --views 3 --json --camera-effects $c --out eb_$c > B_$c.json
    done
    python scripts/camera_knobs_report.py --a "with camera effects=A_{}.json" \\
        --b "without=B_{}.json" --views 3 --bootstrap 2000 --png docs/images/model_card_camera_knobs.png

``{}`` in each pattern is replaced by the condition's name. For every
condition it prints mIoU of A and of B at ``--views``, the drop from the
rendered views (``off``), and A minus B with a 95 % interval from a paired
bootstrap over rooms (the same rooms drawn for both models). A knob that helps
shows as a smaller drop for the model trained with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table3_report import pooled, scene_matrices  # noqa: E402 - the sibling script's helpers

CONDITIONS = ("off", "real", "exposure", "white_balance", "noise", "motion_blur", "defocus_blur", "jpeg",
              "vignetting", "depth_holes")


def load(pattern: str, condition: str, views: str) -> dict[str, np.ndarray]:
    """scene -> confusion matrix at ``views`` of the eval JSON named by ``pattern`` for ``condition``."""
    path = Path(pattern.format(condition))
    data = json.loads(path.read_text())
    if isinstance(data, list):
        data = data[0]
    return scene_matrices(data, str(path))[views]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="NAME=PATTERN for the first model ({} = condition)")
    ap.add_argument("--b", required=True, help="NAME=PATTERN for the second model")
    ap.add_argument("--views", default="3")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    (name_a, pat_a), (name_b, pat_b) = (s.split("=", 1) for s in (args.a, args.b))
    rng = np.random.default_rng(0)
    rows = []
    for c in CONDITIONS:
        ma, mb = load(pat_a, c, args.views), load(pat_b, c, args.views)
        scenes = sorted(ma)
        if sorted(mb) != scenes:
            raise SystemExit(f"error: {c}: the two models were scored on different rooms")
        a, b = pooled(ma, scenes).miou(), pooled(mb, scenes).miou()
        draws = [pooled(ma, list(d)).miou() - pooled(mb, list(d)).miou()
                 for d in rng.choice(scenes, size=(args.bootstrap, len(scenes)))]
        lo, hi = np.percentile(draws, [2.5, 97.5])
        rows.append((c, a, b, lo, hi))
    off_a, off_b = rows[0][1], rows[0][2]
    print(f"| test views ({args.views}) | {name_a} | {name_b} | drop {name_a} | drop {name_b} | "
          f"{name_a} − {name_b} [95 %] |")
    print("|---|---|---|---|---|---|")
    for c, a, b, lo, hi in rows:
        print(f"| {c} | {100 * a:.1f} | {100 * b:.1f} | {100 * (a - off_a):+.1f} | {100 * (b - off_b):+.1f} | "
              f"{100 * (a - b):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
    if args.png:
        fig = Figure(figsize=(8, 3.6))
        ax = fig.add_subplot()
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [100 * r[1] for r in rows], 0.4, label=name_a)
        ax.bar(x + 0.2, [100 * r[2] for r in rows], 0.4, label=name_b)
        ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right")
        ax.set_ylabel(f"mIoU % at {args.views} views")
        ax.set_ylim(min(100 * min(r[1], r[2]) for r in rows) - 3, 100 * max(max(r[1], r[2]) for r in rows) + 4)
        ax.set_title("held-out rooms, each real-camera effect alone on every test view")
        ax.legend(loc="upper right", ncol=2)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
