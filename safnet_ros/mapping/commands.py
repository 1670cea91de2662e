"""``safnet map score``: how good a saved semantic map is, on the scene it maps.

Only argparse here; numpy/scipy work happens in :mod:`safnet_ros.mapping.score`.
"""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("map", help="semantic voxel maps: score a saved map against a scene's labelled mesh")
    msub = group.add_subparsers(dest="map_command", metavar="MAP_COMMAND")
    msub.required = True
    score = msub.add_parser(
        "score", help="transfer a map's labels to a scene's mesh vertices and print mIoU, OA and coverage",
        description="Each mesh vertex of SCENE_DIR (a ScanNet scene folder; its axis-aligned frame is the bags' "
                    "'map' frame) takes the label of the nearest voxel of MAP.ply within --max-distance; mIoU and "
                    "OA are computed over the covered vertices with the metrics of `safnet eval` (also mIoU with "
                    "uncovered vertices counted as misses); coverage = covered / all vertices.",
    )
    score.add_argument("map", metavar="MAP.ply", help="semantic map PLY (node ~/save_map, segment-bag --map)")
    score.add_argument("scene_dir", metavar="SCENE_DIR", help="ScanNet scene folder with the labelled mesh")
    score.add_argument("--max-distance", type=float, default=None, metavar="M",
                       help="largest vertex-to-voxel-centre distance, metres (default: the map's voxel size)")
    score.add_argument("--smoothing", type=float, default=None, metavar="W",
                       help="read the map with this neighbourhood weight instead of the one it was saved with "
                            "(0 = each voxel alone; docs/ros_node.md)")
    score.add_argument("--smoothing-cell", type=float, default=None, metavar="M",
                       help="... and this neighbourhood cell, metres (default: the map's)")
    score.add_argument("--frame", default="map", metavar="FRAME",
                       help="the frame the scene's axis-aligned mesh is in (default map, as `bag convert` writes "
                            "it); a map saved in another frame is refused: its voxels would be misplaced")
    score.add_argument("--json", action="store_true", help="print one JSON object")
    score.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    from safnet_ros.data.labels import TABLE_ORDER
    from safnet_ros.errors import DataFormatError
    from safnet_ros.mapping.map_ply import load_map
    from safnet_ros.mapping.map_store import map_frame
    from safnet_ros.mapping.score import score_map_on_scene
    from safnet_ros.validation import require_dir, require_file

    require_file(args.map, "semantic map PLY")  # a folder or FIFO is named as what it is, not "missing"
    require_dir(args.scene_dir, "scene folder")
    saved_in = map_frame(args.map) or "map"
    if saved_in != args.frame:
        raise DataFormatError(args.map, f"the map was saved in frame {saved_in!r}, the scene's mesh is in "
                                        f"{args.frame!r} (--frame): scoring it would compare misplaced voxels")
    if args.smoothing is not None or args.smoothing_cell is not None:  # a bad override is the user's, not the file's
        from safnet_ros.mapping.smoothing import DEFAULT_CELL_M, DEFAULT_WEIGHT, check_smoothing

        check_smoothing(DEFAULT_WEIGHT if args.smoothing is None else args.smoothing,
                        DEFAULT_CELL_M if args.smoothing_cell is None else args.smoothing_cell)
    vmap = load_map(args.map, smoothing=args.smoothing, smoothing_cell=args.smoothing_cell)
    result = score_map_on_scene(vmap.snapshot(), args.scene_dir, args.max_distance)
    result["map"] = str(args.map)
    result["scene"] = str(args.scene_dir)
    if args.json:
        from safnet_ros.json_out import json_safe

        print(json.dumps(json_safe(result)))
        return 0
    w = sys.stdout.write
    w(f"map {args.map}: {result['voxels']} voxels of {result['voxel_size']:.3f} m ({result['fusion']} fusion, "
      f"read with smoothing {result['smoothing']:g} over {result['smoothing_cell']:g} m)\n")
    w(f"scene {args.scene_dir}: {result['vertices']} vertices, {result['labelled_vertices']} within "
      f"{result['max_distance']:.3f} m of a voxel\n")
    w(f"  coverage            {100 * result['coverage']:.1f} %\n")
    w(f"  mIoU                {100 * result['miou']:.1f} %   (covered vertices)\n")
    w(f"  OA                  {100 * result['oa']:.1f} %\n")
    w(f"  mIoU, all vertices  {100 * result['miou_all_vertices']:.1f} %   (uncovered = missed)\n")
    per = result["per_class"]
    w("  " + " ".join(f"{short:>6}" for _name, short in TABLE_ORDER) + "\n")
    w("  " + " ".join("   n/a" if per[name] != per[name] else f"{100 * per[name]:6.1f}"
                      for name, _short in TABLE_ORDER) + "\n")
    return 0
