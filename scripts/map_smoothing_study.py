#!/usr/bin/env python3
"""How the semantic map's read-out smoothing changes its score, over many rooms (docs/ros_node.md).

For each seed: the demo's synthetic room (``safnet demo --seed S``'s scene:
300 frames), its rosbag2 (``safnet bag convert``, /points at 2 Hz), every
cloud segmented with the node's settings and the shipped model and fused into
a map (``safnet segment-bag ... --map``, smoothing 0, so the PLY holds the raw
evidence). Then, per room, the demo's per-vertex majority vote of the labelled
clouds and the same map read with every (weight, cell) asked for
(``load_map(..., smoothing=W, smoothing_cell=C)``, scored like ``safnet map
score``). Rooms are cached under OUT/seed<S>/ and reused.

    python scripts/map_smoothing_study.py OUT --seeds 5,6,8-12 --weights 0,0.5,1,2,4 --cells 0.12,0.16,0.2,0.24

prints, per setting, the mean mIoU and OA over the rooms, the mean difference
to the vote and in how many rooms the map is at least the vote (``--json``:
every room's figures). ``--per-class W@C`` adds the per-class IoU pooled over
the rooms (one confusion matrix) for the vote, the unsmoothed map and that setting;
``--png P`` draws the first room: the vote, the map read voxel by voxel, the
map read with the last setting, and the ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from safnet_ros.data.labels import NUM_CLASSES, TABLE_ORDER
from safnet_ros.engine.metrics import ConfusionMatrix
from safnet_ros.mapping.map_ply import load_map
from safnet_ros.mapping.score import score_labels, transfer_labels
from safnet_ros.tools import bag_io as bio
from safnet_ros.tools import demo
from safnet_ros.tools.bag_convert import convert_scene
from safnet_ros.tools.render import render_cloud_png
from safnet_ros.tools.segment_bag import segment_bag
from safnet_ros.tools.vertex_votes import VertexVotes


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError("no seeds")
    return out


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def room(out: Path, seed: int, model: str | None, frames: int = 300, fast: bool = False) -> tuple[demo.DemoScene, Path, Path]:
    """The demo scene of ``seed``, its segmented bag and raw map PLY (made when absent)."""
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    scene = demo.make_scene(folder, seed, frames, fast, False)
    labelled, map_ply = folder / "labelled", folder / "map.ply"
    if not (map_ply.is_file() and labelled.is_dir()):
        bag = folder / "bag"
        convert_scene(scene.path, bag, storage="mcap", cloud_rate=4.0 if fast else 2.0, overwrite=True, progress=False)
        segment_bag(bag, labelled, model=model, overwrite=True, progress=False, map_path=map_ply, map_smoothing=0.0)
    return scene, labelled, map_ply


def vote(scene: demo.DemoScene, labelled: Path) -> np.ndarray:
    """(N,) the demo's per-vertex majority vote over the labelled clouds of ``labelled`` (lower-index ties; -1: none)."""
    votes = VertexVotes(scene.xyz, NUM_CLASSES)
    with Reader(labelled) as reader:
        for conn, _t, raw in reader.messages():
            if conn.topic == bio.LABELED_CLOUD_TOPIC:
                arr = bio.pointcloud_to_array(bio.deserialize(raw, conn.msgtype))
                votes.add(np.stack([arr["x"], arr["y"], arr["z"]], 1), arr["label"].astype(np.int64))
    return votes.labels()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="cache folder for the rooms")
    parser.add_argument("--seeds", type=parse_seeds, required=True, help="e.g. 5,6,8-12")
    parser.add_argument("--weights", type=floats, default=[0.0, 1.0], help="smoothing weights (default 0,1)")
    parser.add_argument("--cells", type=floats, default=[0.16], help="smoothing cells, metres (default 0.16)")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--frames", type=int, default=300, help="frames per room (default 300, as the demo)")
    parser.add_argument("--fast", action="store_true", help="the demo's tiny --fast rooms (for tests)")
    parser.add_argument("--per-class", default=None, metavar="W@C",
                        help="also print per-class IoU pooled over the rooms for the vote, 0 and this setting")
    parser.add_argument("--png", type=Path, default=None, help="picture of the first room (see above)")
    parser.add_argument("--json", action="store_true", help="print every room's figures as JSON")
    args = parser.parse_args(argv)

    settings = [(w, c) for w in args.weights for c in (args.cells if w > 0 else args.cells[:1])]
    pooled = {"vote": ConfusionMatrix()}
    if args.per_class:
        w, c = (float(v) for v in args.per_class.split("@"))
        pooled.update({f"0@{args.cells[0]:g}": ConfusionMatrix(), f"{w:g}@{c:g}": ConfusionMatrix()})
        if (w, c) not in settings:
            settings.append((w, c))
    rooms = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        scene, labelled, map_ply = room(args.out, seed, args.model, 24 if args.fast else args.frames, args.fast)
        voted = vote(scene, labelled)
        v = score_labels(scene.truth, voted)
        pooled["vote"].add(scene.truth[voted >= 0], voted[voted >= 0])
        row = {"seed": seed, "scene": scene.name, "vote_miou": v["miou"], "vote_oa": v["oa"], "map": {}}
        for w, c in settings:
            snap = load_map(map_ply, smoothing=w, smoothing_cell=c).snapshot()
            labels = transfer_labels(snap, scene.xyz)
            s = score_labels(scene.truth, labels)
            if f"{w:g}@{c:g}" in pooled:
                pooled[f"{w:g}@{c:g}"].add(scene.truth[labels >= 0], labels[labels >= 0])
            row["map"][f"{w:g}@{c:g}"] = {"miou": s["miou"], "oa": s["oa"], "coverage": s["coverage"]}
        rooms.append(row)
        if args.png is not None and len(rooms) == 1:
            (w, c), (w0, c0) = settings[-1], settings[0]
            raw = transfer_labels(load_map(map_ply, smoothing=w0, smoothing_cell=c0).snapshot(), scene.xyz)
            smooth = transfer_labels(load_map(map_ply, smoothing=w, smoothing_cell=c).snapshot(), scene.xyz)
            render_cloud_png(args.png, scene.xyz, voted, truth=scene.truth, labels_title="per-vertex vote",
                             title=f"{scene.name}: the per-vertex vote (mIoU {100 * v['miou']:.1f} %) and the map "
                                   f"read with smoothing {w0:g} ({100 * row['map'][f'{w0:g}@{c0:g}']['miou']:.1f} %) "
                                   f"and {w:g} over {c:g} m ({100 * row['map'][f'{w:g}@{c:g}']['miou']:.1f} %)",
                             extra_labels=[(f"map, smoothing {w0:g}", raw), (f"map, smoothing {w:g} @ {c:g} m", smooth)])
        print(f"seed {seed} ({scene.name}): vote {100 * v['miou']:.1f} %, map "
              + ", ".join(f"{k} {100 * m['miou']:.1f} %" for k, m in row["map"].items())
              + f"  [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rooms": rooms}))
        return 0
    print(f"{len(rooms)} rooms (seeds {','.join(str(r['seed']) for r in rooms)}); the vote: mIoU "
          f"{100 * np.mean([r['vote_miou'] for r in rooms]):.2f} %, OA {100 * np.mean([r['vote_oa'] for r in rooms]):.2f} %")
    print(f"{'weight@cell':>12} {'mIoU':>7} {'- vote':>7} {'>= vote':>8} {'OA':>7} {'- vote':>7} {'>= vote':>8}")
    for key in rooms[0]["map"]:
        dm = [r["map"][key]["miou"] - r["vote_miou"] for r in rooms]
        do = [r["map"][key]["oa"] - r["vote_oa"] for r in rooms]
        print(f"{key:>12} {100 * np.mean([r['map'][key]['miou'] for r in rooms]):7.2f} {100 * np.mean(dm):+7.2f} "
              f"{sum(d >= 0 for d in dm):>4}/{len(rooms):<3} {100 * np.mean([r['map'][key]['oa'] for r in rooms]):7.2f} "
              f"{100 * np.mean(do):+7.2f} {sum(d >= 0 for d in do):>4}/{len(rooms):<3}")
    if args.per_class:
        print("per-class IoU %, pooled over the rooms:")
        print(f"{'':>12} {'mIoU':>6} " + " ".join(f"{short:>6}" for _n, short in TABLE_ORDER))
        for key, cm in pooled.items():
            per = cm.per_class()
            print(f"{key:>12} {100 * cm.miou():6.1f} " + " ".join(
                "   n/a" if per[n] != per[n] else f"{100 * per[n]:6.1f}" for n, _s in TABLE_ORDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
