"""``safnet data synth OUT``: synthetic furnished rooms in ScanNet's raw on-disk format, made the way
ScanNet scans are.

How a scene is made, what each knob does and the files written beside
ScanNet's: docs/synthetic_data.md. Same seed and settings -> same bytes.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Optional

from safnet_ros import output_dir as od
from safnet_ros.data.synth import writer
from safnet_ros.data.synth.rooms import ROOM_TYPES
from safnet_ros.errors import ConfigError
from safnet_ros.validation import float_range, int_range, size_wh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder; scene folders are created directly under it")
    parser.add_argument("--scenes", type=int_range(1, 100), default=1, help="number of scenes (1..100, default 1)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0,
                        help="random seed (default 0); also sets the scene names")
    parser.add_argument("--frames", type=int_range(1, 100_000), default=300, help="frames per scene (default 300)")
    parser.add_argument("--color-size", type=size_wh, default=(320, 240), metavar="WxH",
                        help="colour image size (default 320x240; ScanNet: 1296x968)")
    parser.add_argument("--depth-size", type=size_wh, default=(320, 240), metavar="WxH",
                        help="depth image size, registered to colour (default 320x240; ScanNet: 640x480)")
    parser.add_argument("--vertex-spacing", type=float_range(0.005, 1.0), default=0.045, metavar="M",
                        help="mean vertex spacing of the decimated mesh in metres (default 0.045: 40k-70k vertices "
                             "per fused room; with --mesh exact the grid spacing, ~110k vertices)")
    parser.add_argument("--overlap", type=float_range(0.0, 0.999, lo_open=True), default=None,
                        help="view overlap of consecutive frames in (0, 1), i.e. the walking speed: a scan loop "
                             "takes 6 / (1 - overlap) frames ('loop' trajectory: the view turns (1 - overlap) of the "
                             "field of view per frame) (default: one loop per 300 frames, at least one loop)")
    parser.add_argument("--mesh", choices=("tsdf", "exact"), default="tsdf",
                        help="the labelled mesh: 'tsdf' (default) fuses the noisy depth of the valid frames at the "
                             "recorded poses (open3d TSDF), extracts and decimates it, as ScanNet's is made; "
                             "'exact' writes the exact scene as a regular grid (for tests that need exactness)")
    parser.add_argument("--voxel-size", type=float_range(0.005, 0.2), default=None, metavar="M",
                        help="TSDF voxel size (default: half the vertex spacing, within 0.01-0.1 m)")
    parser.add_argument("--trajectory", choices=("scan", "loop"), default="scan",
                        help="'scan' (default): a handheld scan in free space with loops at varying distance, "
                             "vertical sweeps, inward views and close passes of furniture; 'loop': one outward "
                             "loop pitched down (the old path)")
    parser.add_argument("--room-types", default=",".join(ROOM_TYPES), metavar="LIST",
                        help="comma-separated room types the scenes draw from (class mixes): "
                             f"{', '.join(ROOM_TYPES)} (default: all); 'studio' holds all 20 benchmark classes")
    parser.add_argument("--depth-model", choices=("structured-light", "gaussian"), default="structured-light",
                        help="'structured-light' (default): noise growing with range, part spatially smooth, holes "
                             "at depth edges, dark and grazing surfaces and beyond --max-depth; 'gaussian': per-pixel "
                             "noise and random holes only")
    parser.add_argument("--depth-noise", type=float_range(0.0, 1.0), default=0.005, metavar="M",
                        help="depth noise std at 0 m, growing as (1 + (z/2m)^2) (default 0.005; 0: off)")
    parser.add_argument("--depth-dropout", type=float_range(0.0, 0.5), default=0.01, metavar="FRAC",
                        help="fraction of depth pixels lost in random holes; with it come the structured-light holes "
                             "(edges, dark, grazing, far) (default 0.01; 0: no holes at all)")
    parser.add_argument("--max-depth", type=float_range(1.0, 20.0), default=4.5, metavar="M",
                        help="range of the depth sensor in metres (default 4.5)")
    parser.add_argument("--pose-noise", type=float_range(0.0, 1.0), default=0.005, metavar="M",
                        help="translation error std of recorded poses (default 0.005; 0: off)")
    parser.add_argument("--pose-noise-deg", type=float_range(0.0, 180.0), default=0.3, metavar="DEG",
                        help="rotation error std of recorded poses (default 0.3; 0: off)")
    parser.add_argument("--pose-noise-corr", type=float_range(0.0, 10000.0), default=15.0, metavar="FRAMES",
                        help="correlation time of the pose error in frames (default 15; 0: independent per frame)")
    parser.add_argument("--pose-drift", type=float_range(0.0, 10.0), default=0.02, metavar="M",
                        help="accumulated random-walk drift std at the end of the trajectory (default 0.02 m, "
                             "plus 5 deg/m of yaw; 0: off)")
    parser.add_argument("--moved-objects", type=float_range(0.0, 1000.0), default=2, metavar="N",
                        help="movable objects that move partway through the scan (the mesh fuses both places): "
                             "a fraction of them if < 1, else a count (default 2; 0: off; more than the room's "
                             "movable objects is an error)")
    parser.add_argument("--invalid-poses", type=float_range(0.0, 0.99), default=0.03, metavar="FRAC",
                        help="fraction of frames written with -inf poses, in bursts (lost tracking; default 0.03; "
                             "0: off)")
    parser.add_argument("--color-shift", type=float_range(0.0, 8.0), default=1.0, metavar="PX",
                        help="colour-depth misregistration: the colour image is shifted by this many pixels (at "
                             "320 px width, scaled with the colour size) in a random direction (default 1; 0: off)")
    parser.add_argument("--exposure", type=float_range(0.0, 1.0), default=0.15, metavar="STD",
                        help="auto-exposure variation: std of the slowly varying log gain per frame, plus a "
                             "white-balance tint (default 0.15; 0: off)")
    parser.add_argument("--color-noise", type=float_range(0.0, 1.0), default=0.01, metavar="STD",
                        help="colour sensor noise std in 0..1 units (default 0.01; 0: off)")
    parser.add_argument("--lights", type=int_range(1, 8), default=3, metavar="N",
                        help="ceiling lights per room (1..8, default 3)")
    parser.add_argument("--max-rotation", type=float_range(0.0, 180.0), default=15.0, metavar="DEG",
                        help="largest random yaw of the room in the mesh frame (0: aligned; default 15)")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="put every scene into scannetv2_NAME.txt instead of an 80/20 train/val split")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing scene folders of the same names (only those `data synth` wrote; "
                             "the new scene is built beside the old one and swapped in when complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # open3d's OpenMP threads otherwise spin and starve numpy on small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from safnet_ros.data.synth.generate import SynthConfig  # noqa: PLC0415 - generate loads open3d: safnet data synth --help stays light (test_cli_lazy)

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
    summaries = generate_guarded(args.out, args.scenes, args.seed, cfg, split=args.split, overwrite=args.overwrite)
    for s in summaries:
        moved = f", {len(s['moved_objects'])} objects moved" if s["moved_objects"] else ""
        lost = f", {len(s['invalid_frames'])} lost poses" if s["invalid_frames"] else ""
        print(f"{s['name']} ({s['room_type']}): {s['num_vertices']} vertices, {cfg.frames} frames{moved}{lost}")
    return 0


def _scene_owner_problem(folder: Path) -> Optional[str]:
    """Why the scene folder ``folder`` may not be replaced (None: absent, empty, or written by ``data synth``:
    our mark and nothing else, or, from before marks existed, only ``<name>*`` files with a ``.synth.json``)."""
    if folder.is_symlink():
        return "is a symbolic link"
    if od.is_empty(folder):
        return None
    if not folder.is_dir():
        return "is not a folder"
    mark = od.read_mark(folder)
    if mark is not None:
        if mark.get("command") != "data synth":
            return f"was written by `safnet {mark.get('command')}`"
        extra = od.foreign_entries(folder, mark)
        return f"holds files safnet did not write ({', '.join(extra[:3])})" if extra else None
    names = [p.name for p in folder.iterdir()]
    if f"{folder.name}.synth.json" in names and all(n.startswith(folder.name) for n in names):
        return None
    return "was not written by `safnet data synth`"


def generate_guarded(out: str | os.PathLike, scenes: int, seed: int, cfg, split: Optional[str],
                     overwrite: bool) -> list[dict]:
    """:func:`~safnet_ros.data.synth.generate.generate_dataset` under the output-folder rules (docs/reliability.md,
    "Output folders").

    OUT is new, empty, or an earlier ``data synth`` output (several seeds share one OUT); it is locked
    for the run. Scenes are generated into a hidden folder inside OUT and each is swapped in for the
    scene folder of the same name only when complete: an interrupt leaves the old scenes whole. An
    existing scene folder is replaced only with ``overwrite`` and only when ``data synth`` wrote it.
    """
    from safnet_ros.data.synth.generate import generate_dataset, scene_name  # noqa: PLC0415 - generate loads open3d: safnet data synth --help stays light (test_cli_lazy)
    root = Path(out)
    with od.output_lock(root, "synthetic-data folder"):
        od.claim(root, "data synth", overwrite=overwrite, incremental=True, what="synthetic-data folder")
        names = [scene_name(seed, i) for i in range(scenes)]
        for n in names:  # all checked before anything is generated
            target = root / n
            if od.is_empty(target) and not target.is_symlink():
                continue
            problem = _scene_owner_problem(target)
            if problem is not None:
                raise ConfigError(f"{target} {problem}; it is never replaced (choose another OUT or --seed)")
            if not overwrite:
                raise ConfigError(f"{target} already exists and is not empty (pass --overwrite to replace it)")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        stage = od.staging_path(root / "scenes", "new")  # inside OUT: same file system, hidden
        if stage.exists():
            shutil.rmtree(stage)
        try:
            try:
                summaries = generate_dataset(stage, scenes, seed, cfg, split=split, overwrite=False)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                if created and not any(root.iterdir()):
                    root.rmdir()
                raise
            if od.read_mark(root) is None:
                od.write_mark(root, "data synth", files=[])
            settings = {"seed": seed, "scenes": scenes, **{k: v for k, v in vars(cfg).items() if k != "progress"}}
            for n in names:
                od.write_mark(stage / n, "data synth", {**settings, "scene": n})
                problem = _scene_owner_problem(root / n)  # again, just before the swap
                if problem is not None:
                    raise ConfigError(f"{root / n} {problem}; not replaced")
                _swap(stage / n, root / n)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        writer.write_dataset_files(root, names, split)
    return summaries


def _swap(new: Path, final: Path) -> None:
    """``final`` replaced by the complete ``new`` (an empty ``final`` folder is simply removed first)."""
    if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
        final.rmdir()
    od.replace_folder(new, final, old=final.parent / f".{final.name}.safnet-old-{os.getpid()}")
