"""Generate synthetic ScanNet scenes: layout -> scan trajectory -> rendered frames -> fused mesh -> files.

The steps, and why each is made the way a ScanNet scan is: docs/synthetic_data.md.
A scene is written into ``OUT/.<name>.partial`` and renamed when complete.

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
from tqdm import tqdm

from safnet_ros.data.sens import SensWriter
from safnet_ros.data.synth import render, writer
from safnet_ros.data.synth.appearance import Lighting, albedo, shade, to_uint8
from safnet_ros.data.synth.fusion import (
    TSDFFusion,
    clean_and_decimate,
    near_objects,
    segment_ids,
    transfer_labels,
)
from safnet_ros.data.synth.meshes import build_scene_mesh, material_table
from safnet_ros.data.synth.perturb import (
    exposure_gains,
    invalid_frames,
    move_objects,
    move_times,
    noisy_depth,
    recorded_poses,
    shift_image,
    structured_light_depth,
)
from safnet_ros.data.synth.rooms import (
    ROOM_TYPES,
    SHELL_CATEGORIES,
    WALL_HUNG,
    Room,
    footprint,
    generate_room,
    to_world,
)
from safnet_ros.data.synth.trajectory import handheld_trajectory, scan_trajectory
from safnet_ros.errors import ConfigError, DataFormatError

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
    moved_objects: float = 2.0
    invalid_poses: float = 0.03
    max_rotation_deg: float = 15.0
    color_noise: float = 0.01
    hfov_deg: float = 58.0
    jpeg_quality: int = 90
    progress: bool = True
    mesh: str = "tsdf"
    trajectory: str = "scan"
    voxel_size: float | None = None
    depth_model: str = "structured-light"
    max_depth: float = 4.5
    pose_noise_corr: float = 15.0
    color_shift: float = 1.0
    exposure: float = 0.15
    lights: int = 3
    room_types: tuple[str, ...] = ROOM_TYPES

    @property
    def tsdf_voxel(self) -> float:
        """TSDF voxel size in metres (``voxel_size``, or half the vertex spacing within 1-10 cm)."""
        if self.voxel_size is not None:
            return float(self.voxel_size)
        return float(min(max(self.vertex_spacing / 2.0, 0.01), 0.1))

    def validate(self) -> None:
        """Raise ConfigError for values out of range."""
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        for name in ("color_size", "depth_size"):
            w, h = getattr(self, name)
            if w < 8 or h < 8:
                raise ConfigError(f"{name} must be at least 8x8, got {w}x{h}")
        if not (math.isfinite(self.vertex_spacing) and 0.005 <= self.vertex_spacing <= 1.0):
            raise ConfigError(f"vertex spacing must be in [0.005, 1] m, got {self.vertex_spacing}")
        if self.overlap is not None and not 0.0 < self.overlap < 1.0:
            raise ConfigError(f"overlap must be in (0, 1), got {self.overlap}")
        for name in ("depth_noise", "depth_dropout", "pose_noise", "pose_noise_deg", "pose_drift",
                     "moved_objects", "invalid_poses", "max_rotation_deg", "color_noise", "pose_noise_corr",
                     "color_shift", "exposure"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.depth_dropout >= 0.5:
            raise ConfigError(f"depth dropout must be < 0.5, got {self.depth_dropout}")
        if self.invalid_poses >= 1.0:
            raise ConfigError(f"invalid-poses must be a fraction < 1, got {self.invalid_poses}")
        if self.moved_objects >= 1 and self.moved_objects != math.floor(self.moved_objects):
            raise ConfigError(f"moved-objects must be a fraction < 1 or a whole count, got {self.moved_objects}")
        if self.mesh not in ("tsdf", "exact"):
            raise ConfigError(f"mesh must be 'tsdf' or 'exact', got {self.mesh!r}")
        if self.trajectory not in ("scan", "loop"):
            raise ConfigError(f"trajectory must be 'scan' or 'loop', got {self.trajectory!r}")
        if self.depth_model not in ("structured-light", "gaussian"):
            raise ConfigError(f"depth model must be 'structured-light' or 'gaussian', got {self.depth_model!r}")
        if self.voxel_size is not None and not (math.isfinite(self.voxel_size) and 0.005 <= self.voxel_size <= 0.2):
            raise ConfigError(f"voxel size must be in [0.005, 0.2] m, got {self.voxel_size}")
        if not (math.isfinite(self.max_depth) and 1.0 <= self.max_depth <= 20.0):
            raise ConfigError(f"max depth must be in [1, 20] m, got {self.max_depth}")
        if self.color_shift > 8:
            raise ConfigError(f"color-shift must be at most 8 px, got {self.color_shift}")
        if self.exposure > 1:
            raise ConfigError(f"exposure must be at most 1 (log-gain std), got {self.exposure}")
        if not 1 <= int(self.lights) <= 8:
            raise ConfigError(f"lights must be in 1..8, got {self.lights}")
        if not self.room_types:
            raise ConfigError("room types must name at least one type")
        bad = [t for t in self.room_types if t not in ROOM_TYPES]
        if bad:
            raise ConfigError(f"unknown room type(s) {', '.join(bad)}; choose from {', '.join(ROOM_TYPES)}")


def scene_name(seed: int, index: int) -> str:
    """``scene{(seed * 100 + index) % 10000:04d}_00``."""
    return f"scene{(int(seed) * 100 + int(index)) % 10000:04d}_00"


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """The independent random streams of scene ``index`` of ``seed`` (module docstring), by purpose."""
    names = ("layout", "moves", "trajectory", "poses", "invalid", "frames", "sensor")
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


def _exact_mesh(objects: list, cfg: SynthConfig, lighting: Lighting) -> tuple:
    """``--mesh exact``: the dense grid mesh of the exact scene with lit vertex colours.

    Returns (vertices (V, 3), rgb (V, 3) uint8, faces (F, 3), segment ids (V,), object index (V,)).
    """
    dense = build_scene_mesh(objects, cfg.vertex_spacing)
    table = material_table(objects)
    base = albedo(table, dense.vertex_part, dense.vertices, dense.normals)
    rgb = to_uint8(shade(base, table.emissive[dense.vertex_part], dense.vertices, dense.normals, lighting))
    return dense.vertices, rgb, dense.faces, dense.vertex_segment, dense.vertex_object


def _fused_mesh(scene_dir: Path, fusion: TSDFFusion, state_meshes: list, cfg: SynthConfig) -> tuple:
    """``--mesh tsdf``: the TSDF mesh, cleaned and decimated, labelled from the exact scene.

    Returns what :func:`_exact_mesh` returns; the object index is -1 on unannotated vertices.
    """
    if fusion.frames == 0:
        raise DataFormatError(scene_dir, "no frame has a valid pose: nothing to fuse into a mesh")
    try:
        fused = clean_and_decimate(fusion.extract(), cfg.vertex_spacing)
    except ValueError as exc:
        raise DataFormatError(scene_dir, f"TSDF fusion of {fusion.frames} frames yields no surface ({exc})") from None
    vobj = transfer_labels(fused.vertices, state_meshes)
    return fused.vertices, fused.colors, fused.faces, segment_ids(fused.vertices, fused.normals, vobj), vobj


def _color_at_depth(color: np.ndarray, depth_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) colour resampled (nearest) to the depth size (w, h)."""
    h, w = color.shape[:2]
    dw, dh = depth_size
    if (w, h) == (dw, dh):
        return color
    ys = np.minimum(((np.arange(dh) + 0.5) * h / dh).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(dw) + 0.5) * w / dw).astype(np.int64), w - 1)
    return color[ys][:, xs]


def _write_frames(path: Path, renderers: list, state_of_frame: np.ndarray, true_poses: np.ndarray,
                  recorded: np.ndarray, K_color: np.ndarray, K_depth: np.ndarray, cfg: SynthConfig,
                  rng: np.random.Generator, sensor: dict, desc: str, fusion: TSDFFusion | None = None) -> None:
    """Render every frame from its true pose (in its scene state) and append it with its recorded pose to the
    ``.sens``; integrate it into ``fusion`` (when given) at the recorded pose, as a reconstruction would.

    ``K_color``, ``K_depth`` (3, 3) at ``cfg``'s image sizes; ``sensor``: ``gains`` (F, 3) exposure/white
    balance, ``shift`` (dx, dy) colour pixels.
    """
    cw, ch = cfg.color_size
    frames = range(len(true_poses))
    if cfg.progress:
        frames = tqdm(frames, desc=desc, unit="frame", leave=False)
    gains = sensor["gains"].astype(np.float32)
    dx, dy = sensor["shift"]
    with SensWriter(path, intrinsic_color=K_color, intrinsic_depth=K_depth, color_size=cfg.color_size,
                    depth_size=cfg.depth_size, depth_shift=1000.0, sensor_name="StructureSensor (safnet synth)",
                    jpeg_quality=cfg.jpeg_quality) as sens:
        for i in frames:
            renderer = renderers[int(state_of_frame[i])]
            color, d = renderer.render_rgbd(true_poses[i], K_color, cfg.color_size, K_depth, cfg.depth_size)
            if cfg.depth_model == "structured-light":
                lum = _color_at_depth(color, cfg.depth_size).mean(axis=2)
                depth = structured_light_depth(rng, d.depth, d.incidence, lum, cfg.depth_noise, cfg.depth_dropout,
                                               max_depth=cfg.max_depth, glass=d.glass)
            else:
                depth = noisy_depth(rng, d.depth, d.incidence, cfg.depth_noise, cfg.depth_dropout)
            color = color * gains[i]
            if dx or dy:
                color = shift_image(color, dx, dy)
            if cfg.color_noise > 0:
                color += rng.standard_normal((ch, cw, 3), dtype=np.float32) * np.float32(cfg.color_noise)
            color8 = to_uint8(np.clip(color, 0.0, 1.0))
            depth_mm = np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16)
            stamp = int(round(i * 1e6 / 30.0))  # 30 Hz, microseconds
            sens.write_frame(recorded[i], color8, depth_mm, stamp, stamp)
            if fusion is not None:
                fusion.integrate(_color_at_depth(color8, cfg.depth_size), depth_mm, recorded[i])


def draw_room(seed: int, index: int, cfg: SynthConfig) -> Room:
    """The room of scene ``index`` of ``seed`` (deterministic; :func:`generate_scene` lays out this room)."""
    rng = _streams(seed, index)
    return generate_room(rng["layout"], cfg.max_rotation_deg, room_types=cfg.room_types, lights=cfg.lights)


def moved_count(room: Room, amount: float, name: str) -> int:
    """How many objects ``--moved-objects`` moves in ``room`` (a fraction of the movable ones, or a count);
    ConfigError when the count is more than the room of scene ``name`` has."""
    movable = sum(1 for o in room.objects if o.movable)
    if amount <= 0 or movable == 0:
        return 0
    count = int(math.floor(amount)) if amount >= 1 else max(1, int(round(amount * movable)))
    if count > movable:
        raise ConfigError(f"--moved-objects {amount:g} is more than the {movable} movable objects of "
                          f"{name} (a {room.room_type})")
    return count


def _scene_states(room: Room, frame_objects_final: list, moved: list[dict], frames: int,
                  rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """Object lists (aligned frame) of each scene state and the state index of every frame.

    State 0 is the original layout; moved object k (in order of its move
    frame) takes its new place from ``moved[k]['frame']`` on.
    """
    times = move_times(rng, frames, len(moved))
    order = np.argsort([m["objectId"] for m in moved], kind="stable")
    states = [list(room.objects)]
    for k, t in zip(order, times):
        m = moved[int(k)]
        m["frame"] = int(t)
        nxt = list(states[-1])
        nxt[m["objectId"]] = frame_objects_final[m["objectId"]]
        states.append(nxt)
    state_of_frame = np.zeros(frames, dtype=np.int64)
    for s, t in enumerate(times, start=1):
        state_of_frame[t:] = s
    return states, state_of_frame


def _trajectory(rng: np.random.Generator, room: Room, cfg: SynthConfig, also_there: list | None = None) -> np.ndarray:
    """(F, 4, 4) camera-to-world poses in the aligned frame (``--trajectory``).

    ``also_there``: objects (aligned frame) that stand somewhere else for part of the scan (moved
    objects at their new place); the camera keeps clear of both places.
    """
    if cfg.trajectory == "loop":
        return handheld_trajectory(rng, room.width, room.depth, cfg.frames, cfg.overlap, cfg.hfov_deg)
    furniture = [o for o in room.objects if o.category not in SHELL_CATEGORIES]
    fps = np.array([footprint(o) for o in furniture + list(also_there or [])]).reshape(-1, 4)
    targets = []
    for o in furniture:
        if o.category in WALL_HUNG:
            continue
        fp = footprint(o)
        top = max(float(p.center[2] + p.size[2] / 2) for p in o.parts)
        targets.append([(fp[0] + fp[2]) / 2, (fp[1] + fp[3]) / 2, 0.6 * top])
    per_loop = 300 if cfg.overlap is None else max(30, int(round(6.0 / (1.0 - cfg.overlap))))
    try:
        return scan_trajectory(rng, room.width, room.depth, room.height, cfg.frames, fps, np.array(targets),
                               cfg.hfov_deg, frames_per_loop=per_loop)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def generate_scene(out: Path, seed: int, index: int, cfg: SynthConfig, overwrite: bool = False) -> dict:
    """Write one scene folder ``out/<name>/``; returns a summary (name, vertex and class counts, moved objects).

    The scene is written into a hidden temporary folder and renamed at the
    end, so a failure (e.g. a TSDF without surface) leaves no half-written scene.
    """
    name = scene_name(seed, index)
    final_dir = Path(out) / name
    existed = final_dir.exists()
    prepare_scene_dir(final_dir, overwrite)
    scene_dir = Path(out) / f".{name}.partial"
    if scene_dir.exists():
        shutil.rmtree(scene_dir)
    scene_dir.mkdir(parents=True)
    try:
        summary = _generate_into(scene_dir, name, seed, index, cfg)
    except BaseException:
        shutil.rmtree(scene_dir, ignore_errors=True)
        if not existed:
            shutil.rmtree(final_dir, ignore_errors=True)
        raise
    final_dir.rmdir()
    scene_dir.rename(final_dir)
    return summary


def _generate_into(scene_dir: Path, name: str, seed: int, index: int, cfg: SynthConfig) -> dict:
    """Generate scene ``name`` into ``scene_dir``; returns its summary."""
    rng = _streams(seed, index)
    room = draw_room(seed, index, cfg)
    world = room.world_from_aligned
    lighting = Lighting(light_position=room.lights @ world[:3, :3].T + world[:3, 3],
                        intensity=room.light_intensity)

    # The scene states the camera sees: objects move partway through the scan.
    final_aligned, moved = move_objects(rng["moves"], room, moved_count(room, cfg.moved_objects, name))
    states_aligned, state_of_frame = _scene_states(room, final_aligned, moved, cfg.frames, rng["moves"])
    states = [to_world(room, objs) for objs in states_aligned]
    state_meshes = [build_scene_mesh(objs, None) for objs in states]
    renderers = [render.Renderer(sm, material_table(objs), lighting) for sm, objs in zip(state_meshes, states)]

    traj = _trajectory(rng["trajectory"], room, cfg, [final_aligned[int(m["objectId"])] for m in moved])
    true_poses = np.einsum("ij,fjk->fik", world, traj)
    recorded = recorded_poses(rng["poses"], true_poses, cfg.pose_noise, cfg.pose_noise_deg, cfg.pose_drift,
                              corr_frames=cfg.pose_noise_corr)
    lost = invalid_frames(rng["invalid"], cfg.frames, cfg.invalid_poses)
    recorded[lost] = -np.inf
    srng = rng["sensor"]
    angle = float(srng.uniform(0, 2 * math.pi))
    shift_px = cfg.color_shift * cfg.color_size[0] / 320.0
    sensor = {"gains": exposure_gains(srng, cfg.frames, cfg.exposure),
              "shift": (shift_px * math.cos(angle), shift_px * math.sin(angle))}
    K_color = render.pinhole(*cfg.color_size, hfov_deg=cfg.hfov_deg)
    K_depth = depth_intrinsics(K_color, cfg.color_size, cfg.depth_size)
    fusion = (TSDFFusion(cfg.tsdf_voxel, K_depth, cfg.depth_size, max_depth=cfg.max_depth + 0.5)
              if cfg.mesh == "tsdf" else None)
    _write_frames(scene_dir / f"{name}.sens", renderers, state_of_frame, true_poses, recorded, K_color, K_depth,
                  cfg, rng["frames"], sensor, name, fusion)

    objects = states[0]
    moved_ids = {int(m["objectId"]) for m in moved}
    if cfg.mesh == "tsdf":
        vertices, rgb, faces, segments, vobj = _fused_mesh(scene_dir, fusion, state_meshes, cfg)
    else:
        vertices, rgb, faces, segments, vobj = _exact_mesh(objects, cfg, lighting)
    nyu40 = np.array([o.nyu40 for o in objects] + [0], dtype=np.uint16)[vobj]  # -1 -> the trailing 0
    writer.write_meshes(scene_dir, name, vertices.astype(np.float32), rgb, faces, nyu40)
    writer.write_segmentation(scene_dir, name, segments, vobj, [o.category for o in objects])
    vertex_moved = near_objects(vertices, state_meshes, moved_ids)

    writer.write_scene_txt(scene_dir, name, room.axis_alignment, K_color, K_depth, cfg.color_size,
                           cfg.depth_size, cfg.frames)
    ids, counts = np.unique(nyu40, return_counts=True)
    summary = {
        "name": name, "seed": int(seed), "index": int(index), "room_type": room.room_type,
        "room_size_m": [room.width, room.depth, room.height],
        "world_from_aligned": world.tolist(),
        "num_vertices": int(len(vertices)), "num_faces": int(len(faces)),
        "vertices_per_nyu40": {int(k): int(c) for k, c in zip(ids, counts)},
        "moved_objects": moved,
        "moved_vertices": int(vertex_moved.sum()),
        "invalid_frames": [int(i) for i in np.flatnonzero(lost)],
        "color_shift_px": list(sensor["shift"]),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "progress"},
    }
    writer.write_synth_meta(scene_dir, name, summary, true_poses)
    np.save(scene_dir / f"{name}.synth_vertex_moved.npy", vertex_moved.astype(np.uint8))
    return summary


def generate_dataset(out: str | Path, scenes: int, seed: int, cfg: SynthConfig, split: str | None = None,
                     overwrite: bool = False) -> list[dict]:
    """Generate ``scenes`` scenes under ``out`` plus the label map and split lists; returns the summaries.

    All scene folders are checked before anything is written, so an existing
    scene without ``overwrite`` fails fast.
    """
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
    for i, n in enumerate(names):  # fail before the first scene is generated, not at the last
        moved_count(draw_room(seed, i, cfg), cfg.moved_objects, n)
    root.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i in range(scenes):
        try:
            summaries.append(generate_scene(root, seed, i, cfg, overwrite))
        except BaseException:  # incl. Ctrl-C and MemoryError: leave no half-written scene behind
            shutil.rmtree(root / names[i], ignore_errors=True)
            raise
    writer.write_dataset_files(root, names, split)
    return summaries
