"""Generate synthetic furnished rooms in ScanNet's raw on-disk format.

Each scene OUT/sceneXXXX_00/ (XXXX = (seed*100 + i) mod 10000) holds what a
ScanNet scan holds: sceneXXXX_00.sens (JPEG colour + zlib depth in mm, poses
camera-to-world, 30 Hz timestamps), _vh_clean_2.ply (binary, xyz + RGBA +
faces; ~110k vertices at the default --vertex-spacing 0.045, ScanNet has
100k-150k), _vh_clean_2.labels.ply
(per-vertex nyu40 label), .aggregation.json, _vh_clean_2.0.010000.segs.json and
sceneXXXX_00.txt, whose axisAlignment maps the mesh (the room turned by up to
--max-rotation degrees about z and shifted) back to the axis-aligned room.
OUT also gets scannetv2-labels.combined.tsv and scannetv2_train.txt /
scannetv2_val.txt (every 5th scene to val; --split NAME puts all in one list).
Our own ground truth sits beside: sceneXXXX_00.synth.json (settings, moved
objects, lost frames) and sceneXXXX_00.synth_true_poses.npy (render poses).

Every room contains all 20 benchmark classes (a bathroom corner with bathtub,
shower curtain, toilet and sink; counter, cabinets, fridge; bed, window with
curtains; door, sofa, pictures, tables, chairs, bookshelf, desk; trash can and
ottoman as otherfurniture) plus a few ignored ones (pillow, lamp, box). The
ceiling is rendered but, as in a real scan, not part of the mesh.

The 2D-3D mismatch knobs (deterministic given --seed): --depth-noise,
--depth-dropout, --pose-noise/--pose-noise-deg (per-frame jitter of the recorded
pose vs the rendered one), --pose-drift (accumulated), --moved-objects (objects
displaced in the frames but not in the mesh), --invalid-poses (-inf poses, as
ScanNet's lost tracking; off by default). Same seed and settings -> same bytes.

Defaults render 320x240 colour and depth (ScanNet: 1296x968 / 640x480; the
paper trains on 160x120): 1,000 frames take about 40 s of CPU time on a
2-core machine (open3d ray casting, numpy shading; 640x480 colour costs ~3x).
"""
from __future__ import annotations

import argparse

from safnet_ros.errors import ConfigError

#: Room types of ``--room-types`` (kept here so ``--help`` needs no heavy import).
ROOM_TYPES = ("bedroom", "office", "living", "kitchen", "bathroom", "studio")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder; scene folders are created directly under it")
    parser.add_argument("--scenes", type=int, default=1, help="number of scenes (1..100, default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); also sets the scene names")
    parser.add_argument("--frames", type=int, default=300, help="frames per scene (default 300)")
    parser.add_argument("--color-size", type=_size, default=(320, 240), metavar="WxH",
                        help="colour image size (default 320x240; ScanNet: 1296x968)")
    parser.add_argument("--depth-size", type=_size, default=(320, 240), metavar="WxH",
                        help="depth image size, registered to colour (default 320x240; ScanNet: 640x480)")
    parser.add_argument("--vertex-spacing", type=float, default=0.045, metavar="M",
                        help="mesh vertex spacing in metres (default 0.045: ~110k vertices per room)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="view overlap of consecutive frames in (0, 1): the view turns (1 - overlap) of the "
                             "field of view per frame (default: the frames cover exactly one loop of the room)")
    parser.add_argument("--mesh", choices=("tsdf", "exact"), default="tsdf",
                        help="the labelled mesh: 'tsdf' (default) fuses the noisy depth of the valid frames at the "
                             "recorded poses (open3d TSDF), extracts and decimates it, as ScanNet's is made; "
                             "'exact' writes the exact scene as a regular grid (for tests that need exactness)")
    parser.add_argument("--voxel-size", type=float, default=None, metavar="M",
                        help="TSDF voxel size (default: half the vertex spacing, within 0.01-0.1 m)")
    parser.add_argument("--trajectory", choices=("scan", "loop"), default="scan",
                        help="'scan' (default): a handheld scan in free space with loops at varying distance, "
                             "vertical sweeps, inward views and close passes of furniture; 'loop': one outward "
                             "loop pitched down (the old path)")
    parser.add_argument("--room-types", default=",".join(ROOM_TYPES), metavar="LIST",
                        help="comma-separated room types the scenes draw from (class mixes): "
                             f"{', '.join(ROOM_TYPES)} (default: all); 'studio' holds all 20 benchmark classes")
    parser.add_argument("--depth-model", choices=("structured-light", "gaussian"), default="structured-light",
                        help="'structured-light' (default): noise growing with range, part spatially smooth, holes at "
                             "depth edges, dark and grazing surfaces, range %(default)s; 'gaussian': per-pixel noise "
                             "and random holes only")
    parser.add_argument("--depth-noise", type=float, default=0.005, metavar="M",
                        help="depth noise std at 0 m, growing as (1 + (z/2m)^2) (default 0.005; 0: off)")
    parser.add_argument("--depth-dropout", type=float, default=0.01, metavar="FRAC",
                        help="fraction of depth pixels lost in random holes; with it come the structured-light holes "
                             "(edges, dark, grazing, far) (default 0.01; 0: no holes at all)")
    parser.add_argument("--max-depth", type=float, default=4.5, metavar="M",
                        help="range of the depth sensor in metres (default 4.5)")
    parser.add_argument("--pose-noise", type=float, default=0.005, metavar="M",
                        help="translation error std of recorded poses (default 0.005; 0: off)")
    parser.add_argument("--pose-noise-deg", type=float, default=0.3, metavar="DEG",
                        help="rotation error std of recorded poses (default 0.3; 0: off)")
    parser.add_argument("--pose-noise-corr", type=float, default=15.0, metavar="FRAMES",
                        help="correlation time of the pose error in frames (default 15; 0: independent per frame)")
    parser.add_argument("--pose-drift", type=float, default=0.02, metavar="M",
                        help="accumulated random-walk drift std at the end of the trajectory (default 0.02 m, "
                             "plus 5 deg/m of yaw; 0: off)")
    parser.add_argument("--moved-objects", type=float, default=2, metavar="N",
                        help="movable objects that move partway through the scan (the mesh fuses both places): "
                             "a fraction of them if < 1, else a count (default 2; 0: off; more than the room's "
                             "movable objects is an error)")
    parser.add_argument("--invalid-poses", type=float, default=0.03, metavar="FRAC",
                        help="fraction of frames written with -inf poses, in bursts (lost tracking; default 0.03; "
                             "0: off)")
    parser.add_argument("--color-shift", type=float, default=1.0, metavar="PX",
                        help="colour-depth misregistration: the colour image is shifted by this many pixels (at "
                             "320 px width, scaled with the colour size) in a random direction (default 1; 0: off)")
    parser.add_argument("--exposure", type=float, default=0.15, metavar="STD",
                        help="auto-exposure variation: std of the slowly varying log gain per frame, plus a "
                             "white-balance tint (default 0.15; 0: off)")
    parser.add_argument("--color-noise", type=float, default=0.01, metavar="STD",
                        help="colour sensor noise std in 0..1 units (default 0.01; 0: off)")
    parser.add_argument("--lights", type=int, default=3, metavar="N",
                        help="ceiling lights per room (1..8, default 3)")
    parser.add_argument("--max-rotation", type=float, default=15.0, metavar="DEG",
                        help="largest random yaw of the room in the mesh frame (0: aligned; default 15)")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="put every scene into scannetv2_NAME.txt instead of an 80/20 train/val split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing scene folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os

    # open3d's OpenMP threads otherwise spin and starve numpy on small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from safnet_ros.data.synth.generate import SynthConfig, generate_dataset

    if args.split is not None and (not args.split or any(c in args.split for c in "/\\ \t")):
        raise ConfigError(f"--split must be a plain name, got {args.split!r}")
    cfg = SynthConfig(
        frames=args.frames, color_size=tuple(args.color_size), depth_size=tuple(args.depth_size),
        vertex_spacing=args.vertex_spacing, overlap=args.overlap, depth_noise=args.depth_noise,
        depth_dropout=args.depth_dropout, pose_noise=args.pose_noise, pose_noise_deg=args.pose_noise_deg,
        pose_drift=args.pose_drift, moved_objects=args.moved_objects, invalid_poses=args.invalid_poses,
        max_rotation_deg=args.max_rotation, progress=not args.quiet, mesh=args.mesh, voxel_size=args.voxel_size,
        trajectory=args.trajectory, room_types=tuple(t.strip() for t in args.room_types.split(",") if t.strip()),
        depth_model=args.depth_model, max_depth=args.max_depth, pose_noise_corr=args.pose_noise_corr,
        color_shift=args.color_shift, exposure=args.exposure, color_noise=args.color_noise, lights=args.lights,
    )
    summaries = generate_dataset(args.out, args.scenes, args.seed, cfg, split=args.split, overwrite=args.overwrite)
    for s in summaries:
        moved = f", {len(s['moved_objects'])} objects moved" if s["moved_objects"] else ""
        lost = f", {len(s['invalid_frames'])} lost poses" if s["invalid_frames"] else ""
        print(f"{s['name']} ({s['room_type']}): {s['num_vertices']} vertices, {cfg.frames} frames{moved}{lost}")
    return 0
