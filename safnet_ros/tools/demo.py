"""``safnet demo``: the whole offline chain on a synthetic ScanNet scene, no ROS needed.

synthetic scene in ScanNet's raw format -> ScanNet readers (.sens, PLY) ->
posed views at 160x120 -> chunks with greedy view selection -> back-projection
-> SAFNet -> vote -> a labelled PLY, PNG renders (top and perspective views,
class colours beside the ground truth and a similarity heat map) and the mIoU
against the scene's ground truth with the mean latency.

With no ``--model`` the shipped default model is used; when none is shipped an
untrained model runs and its labels are meaningless (said loudly).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic scene (default 7)")
    parser.add_argument("--frames", type=int, default=150, help="frames of the synthetic scene (default 150)")
    parser.add_argument("--view-every", type=int, default=5,
                        help="keep every N-th frame as a candidate view (default 5)")
    parser.add_argument("--num-views", type=int, default=3, help="views per chunk (default 3)")
    parser.add_argument("--chunk-stride", type=float, default=1.5,
                        help="chunk stride in metres (default 1.5: no overlap, fast; 0.5 as the paper)")
    parser.add_argument("--model", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the whole chain on a synthetic scene (no ROS needed)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from safnet_ros.data.labels import class_colors, class_to_nyu40, nyu40_to_class
    from safnet_ros.data.ply import write_scannet_mesh
    from safnet_ros.data.scannet import ScanNetScene
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset, scene_name
    from safnet_ros.engine.batching import prepare_view
    from safnet_ros.engine.inference import Segmenter
    from safnet_ros.engine.metrics import ConfusionMatrix
    from safnet_ros.tools.render import render_cloud_png

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    out = Path(args.out)
    data_root = out / "data"
    name = scene_name(args.seed, 0)
    scene_dir = data_root / name
    t0 = time.perf_counter()
    if not (scene_dir / f"{name}.sens").is_file():
        print(f"[demo] 1/5 generating synthetic scene {name} ({args.frames} frames) in {data_root}")
        generate_dataset(data_root, 1, args.seed, SynthConfig(frames=args.frames), overwrite=True)
    else:
        print(f"[demo] 1/5 reusing synthetic scene {scene_dir}")
    t_synth = time.perf_counter() - t0

    print("[demo] 2/5 reading it back with the ScanNet readers")
    with ScanNetScene(scene_dir) as scene:
        xyz, _rgb, faces = scene.load_mesh()
        truth = nyu40_to_class(scene.load_nyu40()).astype(np.int64)
        frames = scene.frames
        K_depth = frames.intrinsic_depth
        views = []
        for i in frames.valid_indices[:: max(1, args.view_every)]:
            f = frames.get(i)
            views.append(prepare_view(f.color, f.depth, K_depth, f.camera_to_world,
                                      stamp=f.timestamp_us * 1e-6))
        num_frames, num_invalid = len(frames), frames.num_invalid

    print(f"[demo] 3/5 loading the model ({args.model or 'shipped default'})")
    seg = Segmenter.from_checkpoint(args.model, device=args.device, num_views=args.num_views,
                                    chunk_stride=args.chunk_stride)
    print(f"[demo] 4/5 segmenting {len(xyz)} points with {len(views)} candidate views on {seg.device}")
    result = seg.segment(xyz, views)

    print("[demo] 5/5 scoring and rendering")
    cm = ConfusionMatrix()
    cm.add(truth, result.labels)
    summary = cm.summary()
    out.mkdir(parents=True, exist_ok=True)
    ply_path = out / f"{name}_labeled.ply"
    write_scannet_mesh(ply_path, xyz, class_colors(result.labels), faces, labels=class_to_nyu40(result.labels))
    png_path = render_cloud_png(
        out / f"{name}_labeled.png", xyz, result.labels, similarity=result.s, truth=truth,
        title=f"{name}: mIoU {100 * summary['miou']:.1f}%"
              + (" (UNTRAINED model)" if seg.untrained else ""),
    )
    report = {
        "scene": name,
        "points": int(len(xyz)),
        "frames": int(num_frames),
        "invalid_frames": int(num_invalid),
        "candidate_views": len(views),
        "views_used": len(result.views_used),
        "chunks": result.num_chunks,
        "device": str(seg.device),
        "untrained_model": seg.untrained,
        "miou": summary["miou"],
        "oa": summary["oa"],
        "per_class": summary["per_class"],
        "latency_s": result.timings,
        "mean_latency_per_chunk_s": result.timings["model"] / max(1, result.num_chunks),
        "synth_s": t_synth,
        "ply": str(ply_path),
        "png": str(png_path),
        "warnings": result.warnings,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
        return 0
    print()
    print(f"  scene            {name}: {len(xyz)} points, {num_frames} frames ({num_invalid} invalid)")
    print(f"  views            {len(views)} candidates, {len(result.views_used)} used by {result.num_chunks} chunks")
    print(f"  device           {seg.device}")
    print(f"  mIoU / OA        {100 * summary['miou']:.1f} % / {100 * summary['oa']:.1f} %"
          + ("   <- UNTRAINED model: meaningless until a model is trained (safnet train)" if seg.untrained else ""))
    print(f"  latency          {result.timings['total']:.2f} s for the whole scene, "
          f"{1000 * report['mean_latency_per_chunk_s']:.0f} ms per chunk")
    for w in result.warnings:
        print(f"  warning          {w}")
    print(f"  labelled PLY     {ply_path}")
    print(f"  rendering        {png_path}")
    return 0
