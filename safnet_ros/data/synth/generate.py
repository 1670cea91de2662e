"""Generate synthetic ScanNet scenes: layout -> meshes -> trajectory -> rendered frames -> files.

Randomness: scene ``i`` of seed ``s`` draws from ``SeedSequence([s, i])`` spawned
into independent streams (layout, moved objects, trajectory, pose errors, lost
frames, per-frame noise), so the same seed gives the same bytes and, e.g.,
changing ``frames`` does not change the room.

Scene names are ``scene{XXXX}_00`` with ``XXXX = (seed * 100 + i) mod 10000``:
seeds 0..99 with at most 100 scenes each never collide.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from safnet_ros.errors import ConfigError

#: Upper bound of --scenes per call (scene names are seed * 100 + i).
MAX_SCENES = 100


@dataclass
class SynthConfig:
    """Settings of a generation run (see ``safnet data synth --help`` for the meaning of each)."""

    frames: int = 300
    color_size: tuple[int, int] = (320, 240)
    depth_size: tuple[int, int] = (320, 240)
    vertex_spacing: float = 0.045
    overlap: float | None = None
    depth_noise: float = 0.005
    depth_dropout: float = 0.01
    pose_noise: float = 0.005
    pose_noise_deg: float = 0.3
    pose_drift: float = 0.02
    moved_objects: float = 0.0
    invalid_poses: float = 0.0
    max_rotation_deg: float = 15.0
    color_noise: float = 0.01
    hfov_deg: float = 58.0
    jpeg_quality: int = 90
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError for values out of range."""
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        for name in ("color_size", "depth_size"):
            w, h = getattr(self, name)
            if w < 8 or h < 8:
                raise ConfigError(f"{name} must be at least 8x8, got {w}x{h}")
        if not 0.005 <= self.vertex_spacing <= 1.0:
            raise ConfigError(f"vertex spacing must be in [0.005, 1] m, got {self.vertex_spacing}")
        if self.overlap is not None and not 0.0 < self.overlap < 1.0:
            raise ConfigError(f"overlap must be in (0, 1), got {self.overlap}")
        for name in ("depth_noise", "depth_dropout", "pose_noise", "pose_noise_deg", "pose_drift",
                     "moved_objects", "invalid_poses", "max_rotation_deg", "color_noise"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.depth_dropout >= 0.5:
            raise ConfigError(f"depth dropout must be < 0.5, got {self.depth_dropout}")
        if self.invalid_poses >= 1.0:
            raise ConfigError(f"invalid-poses must be a fraction < 1, got {self.invalid_poses}")


def scene_name(seed: int, index: int) -> str:
    """``scene{(seed * 100 + index) % 10000:04d}_00``."""
    return f"scene{(int(seed) * 100 + int(index)) % 10000:04d}_00"


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    names = ("layout", "moves", "trajectory", "poses", "invalid", "frames")
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(len(names))
    return {n: np.random.Generator(np.random.PCG64(c)) for n, c in zip(names, children)}


def prepare_scene_dir(path: Path, overwrite: bool) -> None:
    """Create ``path``; an existing non-empty folder is an error unless ``overwrite`` (then it is cleared)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"{path} already exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def depth_intrinsics(K_color: np.ndarray, color_size: tuple[int, int], depth_size: tuple[int, int]) -> np.ndarray:
    """Depth camera registered to the colour camera: same pose, intrinsics scaled to the depth size."""
    K = np.asarray(K_color, dtype=np.float64).copy()
    K[0] *= depth_size[0] / color_size[0]
    K[1] *= depth_size[1] / color_size[1]
    return K


def _write_scanned_mesh(scene_dir: Path, name: str, mesh_objects: list, cfg: SynthConfig, lighting) -> tuple:
    """Dense mesh of the scanned room with lit vertex colours -> PLYs, segs, aggregation.

    Returns (mesh, per-vertex nyu40 ids).
    """
    from safnet_ros.data.synth import writer
    from safnet_ros.data.synth.appearance import albedo, shade, to_uint8
    from safnet_ros.data.synth.meshes import build_scene_mesh, material_table

    dense = build_scene_mesh(mesh_objects, cfg.vertex_spacing)
    table = material_table(mesh_objects)
    base = albedo(table, dense.vertex_part, dense.vertices, dense.normals)
    rgb = to_uint8(shade(base, table.emissive[dense.vertex_part], dense.vertices, dense.normals, lighting))
    nyu40 = np.array([o.nyu40 for o in mesh_objects], dtype=np.uint16)[dense.vertex_object]
    writer.write_meshes(scene_dir, name, dense.vertices.astype(np.float32), rgb, dense.faces, nyu40)
    writer.write_segmentation(scene_dir, name, dense.vertex_segment, dense.vertex_object,
                              [o.category for o in mesh_objects])
    return dense, nyu40


def _write_frames(path: Path, renderer, true_poses: np.ndarray, recorded: np.ndarray, cfg: SynthConfig,
                  rng: np.random.Generator, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Render every frame from its true pose and append it with its recorded pose to the ``.sens``.

    Returns (K_color, K_depth), both (3, 3).
    """
    from safnet_ros.data.sens import SensWriter
    from safnet_ros.data.synth.appearance import to_uint8
    from safnet_ros.data.synth.perturb import noisy_depth
    from safnet_ros.data.synth.render import pinhole

    K_color = pinhole(*cfg.color_size, hfov_deg=cfg.hfov_deg)
    K_depth = depth_intrinsics(K_color, cfg.color_size, cfg.depth_size)
    cw, ch = cfg.color_size
    frames = range(len(true_poses))
    if cfg.progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc=desc, unit="frame", leave=False)
    with SensWriter(path, intrinsic_color=K_color, intrinsic_depth=K_depth, color_size=cfg.color_size,
                    depth_size=cfg.depth_size, depth_shift=1000.0, sensor_name="StructureSensor (safnet synth)",
                    jpeg_quality=cfg.jpeg_quality) as sens:
        for i in frames:
            noise = None
            if cfg.color_noise > 0:
                noise = rng.standard_normal((ch, cw, 3), dtype=np.float32) * np.float32(cfg.color_noise)
            color, d = renderer.render_rgbd(true_poses[i], K_color, cfg.color_size, K_depth, cfg.depth_size,
                                            noise=noise)
            depth = noisy_depth(rng, d.depth, d.incidence, cfg.depth_noise, cfg.depth_dropout)
            depth_mm = np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16)
            stamp = int(round(i * 1e6 / 30.0))  # 30 Hz, microseconds
            sens.write_frame(recorded[i], to_uint8(color), depth_mm, stamp, stamp)
    return K_color, K_depth


def generate_scene(out: Path, seed: int, index: int, cfg: SynthConfig, overwrite: bool = False) -> dict:
    """Write one scene folder ``out/<name>/``; returns a summary (name, vertex and class counts, moved objects)."""
    from safnet_ros.data.synth import writer
    from safnet_ros.data.synth.appearance import Lighting
    from safnet_ros.data.synth.meshes import build_scene_mesh, material_table
    from safnet_ros.data.synth.perturb import invalid_frames, move_objects, recorded_poses
    from safnet_ros.data.synth.render import Renderer
    from safnet_ros.data.synth.rooms import generate_room, to_world
    from safnet_ros.data.synth.trajectory import handheld_trajectory

    name = scene_name(seed, index)
    scene_dir = Path(out) / name
    prepare_scene_dir(scene_dir, overwrite)
    rng = _streams(seed, index)

    room = generate_room(rng["layout"], cfg.max_rotation_deg)
    world = room.world_from_aligned
    lighting = Lighting(light_position=world[:3, :3] @ room.light + world[:3, 3])

    # The scanned mesh keeps the original placement. The ceiling (last object) is
    # rendered but never scanned, so it is left out of the mesh.
    mesh_objects = [o for o in to_world(room, room.objects) if o.category != "ceiling"]
    dense, nyu40 = _write_scanned_mesh(scene_dir, name, mesh_objects, cfg, lighting)

    # What the camera sees: possibly moved objects, coarse mesh (same surfaces).
    frame_objects_aligned, moved = move_objects(rng["moves"], room, cfg.moved_objects)
    frame_objects = to_world(room, frame_objects_aligned)
    renderer = Renderer(build_scene_mesh(frame_objects, None), material_table(frame_objects), lighting)

    traj = handheld_trajectory(rng["trajectory"], room.width, room.depth, cfg.frames, cfg.overlap, cfg.hfov_deg)
    true_poses = np.einsum("ij,fjk->fik", world, traj)
    recorded = recorded_poses(rng["poses"], true_poses, cfg.pose_noise, cfg.pose_noise_deg, cfg.pose_drift)
    lost = invalid_frames(rng["invalid"], cfg.frames, cfg.invalid_poses)
    recorded[lost] = -np.inf
    K_color, K_depth = _write_frames(scene_dir / f"{name}.sens", renderer, true_poses, recorded, cfg,
                                     rng["frames"], name)

    writer.write_scene_txt(scene_dir, name, room.axis_alignment, K_color, K_depth, cfg.color_size,
                           cfg.depth_size, cfg.frames)
    ids, counts = np.unique(nyu40, return_counts=True)
    summary = {
        "name": name, "seed": int(seed), "index": int(index),
        "room_size_m": [room.width, room.depth, room.height],
        "world_from_aligned": world.tolist(),
        "num_vertices": int(len(dense.vertices)), "num_faces": int(len(dense.faces)),
        "vertices_per_nyu40": {int(k): int(c) for k, c in zip(ids, counts)},
        "moved_objects": moved,
        "invalid_frames": [int(i) for i in np.flatnonzero(lost)],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "progress"},
    }
    writer.write_synth_meta(scene_dir, name, summary, true_poses)
    return summary


def generate_dataset(out: str | Path, scenes: int, seed: int, cfg: SynthConfig, split: str | None = None,
                     overwrite: bool = False) -> list[dict]:
    """Generate ``scenes`` scenes under ``out`` plus the label map and split lists; returns the summaries.

    All scene folders are checked before anything is written, so an existing
    scene without ``overwrite`` fails fast.
    """
    from safnet_ros.data.synth import writer
    from safnet_ros.data.synth.rooms import CATEGORY_NYU40

    cfg.validate()
    if not 1 <= scenes <= MAX_SCENES:
        raise ConfigError(f"scenes must be in 1..{MAX_SCENES}, got {scenes}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder")
    names = [scene_name(seed, i) for i in range(scenes)]
    if not overwrite:
        for n in names:
            p = root / n
            if p.exists() and (not p.is_dir() or any(p.iterdir())):
                raise ConfigError(f"{p} already exists and is not empty (pass --overwrite to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i in range(scenes):
        try:
            summaries.append(generate_scene(root, seed, i, cfg, overwrite))
        except BaseException:  # incl. Ctrl-C and MemoryError: leave no half-written scene behind
            shutil.rmtree(root / names[i], ignore_errors=True)
            raise
    writer.write_label_map_file(root, dict(CATEGORY_NYU40))
    writer.write_splits(root, names, split)
    return summaries
