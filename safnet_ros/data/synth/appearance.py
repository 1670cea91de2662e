"""Procedural appearance of the synthetic rooms: albedo textures and Lambert lighting.

Every surface point is coloured by a *material* of its part (see
:mod:`safnet_ros.data.synth.rooms`), evaluated in that part's local frame so a
texture moves with its object. The same functions colour the mesh vertices (for
``_vh_clean_2.ply``) and the ray hits of every rendered pixel, so the mesh
colours and the images agree. Everything is vectorised over points: one numpy
pass per material kind, never a Python loop per point.

Some classes are told apart mostly by texture (pictures: saturated patterns in a
frame; windows: bright bluish panes with a frame and mullions; doors: wood with
panels and a handle; curtains: soft folds), others mostly by shape (the
furniture). Colours are drawn per scene (:func:`random_palette`) so colour alone
is no perfect class cue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Material kinds (ints so per-point evaluation can group points with masks).
PLAIN, WOOD, FABRIC, PICTURE, WINDOW, DOOR, TILE, PLANKS, CURTAIN, BOOKS, CABINET, STRIPES = range(12)


@dataclass
class Material:
    """One part's appearance.

    ``kind`` picks the pattern; ``color``/``color2`` are RGB in 0..1; ``scale`` is
    the pattern's period in metres (plank width, tile size, fold spacing, ...);
    ``params`` are four pattern-specific numbers in 0..1 (random phases,
    frequencies); ``emissive`` surfaces (window panes) ignore the lighting.
    """

    kind: int
    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.2, 0.2, 0.2)
    scale: float = 0.2
    params: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)
    emissive: bool = False


@dataclass
class MaterialTable:
    """Per-part material and frame arrays, indexed by part id (P parts).

    ``center`` (P, 3) and ``yaw`` (P,) place the part's local frame in the world
    (metres, radians about +z); ``size`` (P, 3) its extent in metres.
    """

    kind: np.ndarray
    color: np.ndarray
    color2: np.ndarray
    scale: np.ndarray
    params: np.ndarray
    emissive: np.ndarray
    center: np.ndarray
    yaw: np.ndarray
    size: np.ndarray

    def __post_init__(self) -> None:
        # float32 copies for the per-pixel hot path (float32 transcendentals are much faster).
        self.center32 = self.center.astype(np.float32)
        self.cos32 = np.cos(self.yaw).astype(np.float32)
        self.sin32 = np.sin(self.yaw).astype(np.float32)
        self.size32 = self.size.astype(np.float32)

    @classmethod
    def from_parts(cls, materials: list[Material], centers: np.ndarray, yaws: np.ndarray,
                   sizes: np.ndarray) -> MaterialTable:
        """The table of P parts: ``materials`` (P), part ``centers`` (P, 3) m, ``yaws`` (P,) rad, ``sizes`` (P, 3) m."""
        return cls(
            kind=np.array([m.kind for m in materials], dtype=np.int32),
            color=np.array([m.color for m in materials], dtype=np.float32).reshape(-1, 3),
            color2=np.array([m.color2 for m in materials], dtype=np.float32).reshape(-1, 3),
            scale=np.array([m.scale for m in materials], dtype=np.float32),
            params=np.array([m.params for m in materials], dtype=np.float32).reshape(-1, 4),
            emissive=np.array([m.emissive for m in materials], dtype=bool),
            center=np.asarray(centers, dtype=np.float64).reshape(-1, 3),
            yaw=np.asarray(yaws, dtype=np.float64),
            size=np.asarray(sizes, dtype=np.float64).reshape(-1, 3),
        )


def _hash(k: np.ndarray, seed: np.ndarray | float) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell ``k`` (any shape)."""
    x = np.sin(k * 12.9898 + seed * 78.233) * 43758.5453
    return x - np.floor(x)


def _rows(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[index]`` along axis 0; np.take is many times faster than fancy indexing for 2-D arrays."""
    return np.take(a, index, axis=0)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Vectorised HSV (each 0..1) -> (N, 3) RGB in 0..1."""
    h = np.asarray(h, dtype=np.float32)
    s = np.broadcast_to(np.asarray(s, dtype=np.float32), h.shape)
    v = np.broadcast_to(np.asarray(v, dtype=np.float32), h.shape)
    k = np.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], axis=-1)
    f = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * f


def local_coordinates(table: MaterialTable, part: np.ndarray, world: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> coordinates in their part's frame (N, 3), metres, origin at the part centre."""
    d = world.astype(np.float32) - _rows(table.center32, part)
    c, s = table.cos32[part], table.sin32[part]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)


def face_coordinates(table: MaterialTable, part: np.ndarray, local: np.ndarray,
                     world_normal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Planar texture coordinates of points on a part's faces.

    Picks the two local axes across the face (the ones not along the dominant
    normal axis) and returns ``(s, t, su, tv)``: ``s`` horizontal and ``t``
    vertical (z, or the second horizontal axis on top/bottom faces) in metres
    from the part centre, and ``su``, ``tv`` the same normalised to 0..1 over
    the face. Shapes (N,).
    """
    c, sn = table.cos32[part], table.sin32[part]
    nx, ny = world_normal[:, 0], world_normal[:, 1]
    ax = np.abs(c * nx + sn * ny)
    ay = np.abs(-sn * nx + c * ny)
    az = np.abs(world_normal[:, 2])
    axis = np.where((ax >= ay) & (ax >= az), 0, np.where(ay >= az, 1, 2))
    size = _rows(table.size32, part)
    # Horizontal coordinate: local y on x-facing faces, local x otherwise;
    # vertical: z on side faces, local y on top/bottom faces.
    along_x = axis == 0
    on_top = axis == 2
    s = np.where(along_x, local[:, 1], local[:, 0])
    t = np.where(on_top, local[:, 1], local[:, 2])
    s_len = np.maximum(np.where(along_x, size[:, 1], size[:, 0]), 1e-6)
    t_len = np.maximum(np.where(on_top, size[:, 1], size[:, 2]), 1e-6)
    return s, t, s / s_len + 0.5, t / t_len + 0.5


def albedo(table: MaterialTable, part: np.ndarray, world: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Surface colour (N, 3) float32 in 0..1 of points ``world`` (N, 3) on parts ``part`` (N,).

    ``normal`` (N, 3) is the surface normal in the world (sign irrelevant); it
    chooses which face coordinates a pattern uses. Points are sorted by material
    kind once so each pattern runs on contiguous slices (no per-kind masking).
    """
    part = np.asarray(part, dtype=np.int64)
    n = len(part)
    if n == 0:
        return np.empty((0, 3), dtype=np.float32)
    order = np.argsort(table.kind[part].astype(np.int16), kind="stable")
    part = part[order]
    world = _rows(np.asarray(world, dtype=np.float32), order)
    normal = _rows(np.asarray(normal, dtype=np.float32), order)
    kind = table.kind[part]
    bounds = np.searchsorted(kind, np.arange(len(_KIND_FUNCS) + 1))
    local = local_coordinates(table, part, world)
    s, t, su, tv = face_coordinates(table, part, local, normal)
    c1 = _rows(table.color, part)
    c2 = _rows(table.color2, part)
    scale = table.scale[part]
    prm = _rows(table.params, part)
    # Low-frequency mottling in world coordinates shared by all kinds (dirt, light variation).
    w = world
    mottle = (np.sin(w[:, 0] * 2.1 + w[:, 1] * 1.3 + prm[:, 0] * 6.3)
              + np.sin(w[:, 1] * 3.7 - w[:, 2] * 2.3 + prm[:, 1] * 6.3)
              + np.sin(w[:, 2] * 5.3 + w[:, 0] * 4.1 + prm[:, 2] * 6.3)) / 3.0
    sorted_out = np.empty((n, 3), dtype=np.float32)
    for k in range(len(_KIND_FUNCS)):
        a, b = bounds[k], bounds[k + 1]
        if b > a:
            sl = slice(a, b)
            sorted_out[sl] = _KIND_FUNCS[k](c1[sl], c2[sl], scale[sl], prm[sl], s[sl], t[sl], su[sl], tv[sl],
                                           local[sl])
    # Fine grain (1.5 cm cells: plaster, fabric, scuffs) so images have real-scene gradients.
    cell = np.floor(w * np.float32(1.0 / 0.015))
    grain = _hash(cell[:, 0] * 7.0 + cell[:, 1] * 13.0 + cell[:, 2] * 3.0, prm[:, 3]) - 0.5
    sorted_out *= (1.0 + np.float32(0.2) * mottle + np.float32(0.22) * grain)[:, None]
    np.clip(sorted_out, 0.0, 1.0, out=sorted_out)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return _rows(sorted_out, inverse)


def _mix(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    f = np.clip(f, 0.0, 1.0)[:, None]
    return a * (1.0 - f) + b * f


def _plain(c1, c2, scale, prm, s, t, su, tv, local):
    return c1.copy()


def _wood(c1, c2, scale, prm, s, t, su, tv, local):
    grain = np.sin(2 * np.pi * (s / np.maximum(scale, 1e-3) * 0.25 + 0.6 * np.sin(t * 7.0 + prm[:, 3] * 6.3)))
    fine = np.sin(2 * np.pi * (t * 23.0 + s * 3.0 + prm[:, 2]))
    return _mix(c1, c2, 0.35 + 0.3 * grain + 0.1 * fine)


def _fabric(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    weave = np.sin(2 * np.pi * s / p) * np.sin(2 * np.pi * t / p)
    return c1 * (0.88 + 0.12 * weave)[:, None]


def _picture(c1, c2, scale, prm, s, t, su, tv, local):
    border = np.minimum(np.minimum(su, 1 - su), np.minimum(tv, 1 - tv))
    fw = 0.04 + 0.06 * prm[:, 3]
    f1 = 1.0 + 4.0 * prm[:, 0]
    f2 = 1.0 + 4.0 * prm[:, 1]
    hue = (prm[:, 2] + 0.45 * su * f1 + 0.35 * tv * f2
           + 0.25 * np.sin(2 * np.pi * (su * f2 - tv * f1 + prm[:, 3]))) % 1.0
    val = 0.55 + 0.4 * (0.5 + 0.5 * np.sin(2 * np.pi * (su * 3.0 * f1 + tv * 2.0 + prm[:, 0])))
    art = hsv_to_rgb(hue, 0.75, val)
    return np.where((border < fw)[:, None], c2, art).astype(np.float32)


def _window(c1, c2, scale, prm, s, t, su, tv, local):
    border = np.minimum(np.minimum(su, 1 - su), np.minimum(tv, 1 - tv))
    frame = (border < 0.06) | (np.abs(su - 0.5) < 0.018) | (np.abs(tv - (0.55 + 0.1 * prm[:, 0])) < 0.018)
    sky = _mix(c1, np.ones_like(c1), 0.25 + 0.6 * tv + 0.05 * np.sin(su * 9.0 + prm[:, 1] * 6.3))
    return np.where(frame[:, None], c2, sky).astype(np.float32)


def _door(c1, c2, scale, prm, s, t, su, tv, local):
    base = _wood(c1, c1 * 0.8, np.full_like(scale, 0.12), prm, s, t, su, tv, local)
    # Two recessed panels, drawn as dark grooves.
    groove = np.zeros(len(s), dtype=bool)
    for u0, u1, v0, v1 in ((0.15, 0.85, 0.08, 0.46), (0.15, 0.85, 0.54, 0.92)):
        inside = (su > u0) & (su < u1) & (tv > v0) & (tv < v1)
        edge = np.minimum(np.minimum(su - u0, u1 - su), np.minimum(tv - v0, v1 - tv))
        groove |= inside & (edge < 0.025)
    base = np.where(groove[:, None], base * 0.6, base)
    handle = ((su - 0.88) ** 2 * 4.0 + (tv - 0.48) ** 2 < 0.0012)
    return np.where(handle[:, None], c2, base).astype(np.float32)


def _tile(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    fs, ft = (s / p) % 1.0, (t / p) % 1.0
    grout = (fs < 0.04) | (ft < 0.04)
    tone = 0.93 + 0.07 * _hash(np.floor(s / p) * 17 + np.floor(t / p), prm[:, 0])
    return np.where(grout[:, None], c2, c1 * tone[:, None]).astype(np.float32)


def _planks(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    k = np.floor(t / p)
    tone = 0.8 + 0.35 * _hash(k, prm[:, 0])
    length = 1.2
    end = ((s / length + _hash(k, prm[:, 1])) % 1.0) < 0.006
    seam = ((t / p) % 1.0) < 0.04
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (s * 1.7 + 0.4 * np.sin(s * 9.0 + k * 3.1) + t * 11.0))
    col = _mix(c1, c2, 0.3 * grain) * tone[:, None]
    return np.where((seam | end)[:, None], col * 0.55, col).astype(np.float32)


def _curtain(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    fold = 0.5 + 0.5 * np.sin(2 * np.pi * (s / p + 0.15 * np.sin(t * 2.0 + prm[:, 0] * 6.3)))
    return c1 * (0.62 + 0.38 * fold)[:, None]


def _books(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    k = np.floor(s / p)
    hue = _hash(k, prm[:, 0])
    val = 0.35 + 0.5 * _hash(k + 101.0, prm[:, 1])
    return hsv_to_rgb(hue, 0.55, val)


def _cabinet(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    seam = ((s / p) % 1.0) < 0.02
    knob = (np.abs((s / p) % 1.0 - 0.88) < 0.03) & (np.abs(tv - 0.8) < 0.04)
    col = np.where(seam[:, None], c1 * 0.55, c1)
    return np.where(knob[:, None], c2, col).astype(np.float32)


def _stripes(c1, c2, scale, prm, s, t, su, tv, local):
    p = np.maximum(scale, 1e-3)
    stripe = ((s / p + 0.1 * np.sin(t * 3.0)) % 1.0) < 0.5
    fold = 0.8 + 0.2 * np.sin(2 * np.pi * s / (0.7 * p) + prm[:, 0])
    return np.where(stripe[:, None], c1, c2) * fold[:, None]


_KIND_FUNCS = (_plain, _wood, _fabric, _picture, _window, _door, _tile, _planks, _curtain, _books,
               _cabinet, _stripes)


@dataclass
class Lighting:
    """Ambient + point lights under the ceiling (world metres).

    ``light_position`` is (L, 3); ``intensity`` (L,) scales each light's diffuse term.
    """

    light_position: np.ndarray
    intensity: np.ndarray
    ambient: float = 0.3  # low, for contrast (shadows are not modelled, falloff is)
    diffuse: float = 0.7
    falloff: float = 0.04  # 1 / (1 + falloff * d^2)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.light_position, dtype=np.float32).reshape(-1, 3)
        self.intensities = np.asarray(self.intensity, dtype=np.float32).ravel()


def shade(albedo_rgb: np.ndarray, emissive: np.ndarray, world: np.ndarray, normal: np.ndarray,
          lighting: Lighting) -> np.ndarray:
    """Lambert shading, view-independent: (N, 3) colours in 0..1.

    Two-sided (|n . l|) so triangle winding does not matter; ``emissive`` (N,)
    points keep their albedo (window panes glow).
    """
    w32 = world.astype(np.float32)
    n = normal.astype(np.float32, copy=False)
    intensity = np.full(len(w32), np.float32(lighting.ambient), dtype=np.float32)
    for pos, power in zip(lighting.positions, lighting.intensities):
        lx, ly, lz = pos[0] - w32[:, 0], pos[1] - w32[:, 1], pos[2] - w32[:, 2]
        d2 = lx * lx + ly * ly + lz * lz
        ndotl = np.abs(lx * n[:, 0] + ly * n[:, 1] + lz * n[:, 2]) / np.sqrt(np.maximum(d2, 1e-9))
        intensity += np.float32(lighting.diffuse * power) * ndotl / (1.0 + np.float32(lighting.falloff) * d2)
    lit = albedo_rgb * intensity[:, None].astype(np.float32)
    lit = np.where(emissive[:, None], albedo_rgb, lit)
    return np.clip(lit, 0.0, 1.0)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Colours in 0..1 -> uint8 (rounded)."""
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def random_palette(rng: np.random.Generator) -> dict[str, Material]:
    """One scene's base materials by role, with colours jittered per scene.

    Roles: wall, floor, bath_floor, ceiling, wood, dark_wood, fabric_sofa, bedding,
    ceramic, metal, fridge, cabinet, counter, curtain, shower_curtain, door,
    frame, window, books, plastic. Pictures get their own material per picture.
    """
    def jit(base, amount=0.08):
        return tuple(float(x) for x in np.clip(np.asarray(base) + rng.uniform(-amount, amount, 3), 0.02, 0.98))

    def hue_color(s_lo, s_hi, v_lo, v_hi):
        return tuple(float(x) for x in hsv_to_rgb(np.array([rng.uniform()]), rng.uniform(s_lo, s_hi),
                                                    rng.uniform(v_lo, v_hi))[0])

    wood = jit((0.62, 0.45, 0.30), 0.1)
    dark_wood = jit((0.38, 0.26, 0.17), 0.07)
    p4 = lambda: tuple(float(x) for x in rng.uniform(size=4))  # noqa: E731
    floor_kind = PLANKS if rng.uniform() < 0.7 else TILE
    return {
        "wall": Material(PLAIN, hue_color(0.03, 0.25, 0.75, 0.95), params=p4()),
        "floor": Material(floor_kind, jit((0.55, 0.40, 0.28), 0.12) if floor_kind == PLANKS else jit((0.7, 0.68, 0.64)),
                          color2=jit((0.35, 0.25, 0.18), 0.08) if floor_kind == PLANKS else jit((0.45, 0.45, 0.45)),
                          scale=float(rng.uniform(0.12, 0.2) if floor_kind == PLANKS else rng.uniform(0.3, 0.5)),
                          params=p4()),
        "bath_floor": Material(TILE, jit((0.82, 0.82, 0.8), 0.08), color2=jit((0.5, 0.5, 0.5)),
                               scale=float(rng.uniform(0.15, 0.3)), params=p4()),
        "ceiling": Material(PLAIN, jit((0.93, 0.93, 0.92), 0.04), params=p4()),
        "wood": Material(WOOD, wood, color2=tuple(float(x) * 0.75 for x in wood), scale=0.1, params=p4()),
        "dark_wood": Material(WOOD, dark_wood, color2=tuple(float(x) * 0.7 for x in dark_wood), scale=0.1,
                              params=p4()),
        "fabric_sofa": Material(FABRIC, hue_color(0.2, 0.6, 0.3, 0.7), scale=0.012, params=p4()),
        "bedding": Material(FABRIC, hue_color(0.05, 0.4, 0.7, 0.95), scale=0.01, params=p4()),
        "chair": Material(FABRIC, hue_color(0.2, 0.7, 0.2, 0.6), scale=0.01, params=p4()),
        "ceramic": Material(PLAIN, jit((0.94, 0.94, 0.93), 0.04), params=p4()),
        "metal": Material(PLAIN, jit((0.6, 0.6, 0.62), 0.06), params=p4()),
        "fridge": Material(PLAIN, jit((0.88, 0.88, 0.88), 0.1) if rng.uniform() < 0.6 else jit((0.7, 0.71, 0.73), 0.05),
                           params=p4()),
        "cabinet": Material(CABINET, hue_color(0.0, 0.3, 0.5, 0.9), color2=jit((0.3, 0.3, 0.3)),
                            scale=float(rng.uniform(0.4, 0.6)), params=p4()),
        "counter": Material(PLAIN, hue_color(0.0, 0.2, 0.2, 0.8), params=p4()),
        "curtain": Material(CURTAIN, hue_color(0.3, 0.8, 0.35, 0.85), scale=float(rng.uniform(0.08, 0.14)),
                            params=p4()),
        "shower_curtain": Material(STRIPES, hue_color(0.1, 0.5, 0.8, 0.98), color2=hue_color(0.2, 0.6, 0.6, 0.9),
                                   scale=float(rng.uniform(0.1, 0.25)), params=p4()),
        "door": Material(DOOR, jit((0.6, 0.43, 0.28), 0.15), color2=jit((0.75, 0.72, 0.6)), params=p4()),
        "frame": Material(PLAIN, jit((0.92, 0.92, 0.9), 0.05), params=p4()),
        "window": Material(WINDOW, jit((0.55, 0.74, 0.98), 0.05), color2=jit((0.92, 0.92, 0.9), 0.05),
                           params=p4(), emissive=True),
        "books": Material(BOOKS, (0.5, 0.5, 0.5), scale=float(rng.uniform(0.025, 0.045)), params=p4()),
        "plastic": Material(PLAIN, hue_color(0.3, 0.9, 0.3, 0.9), params=p4()),
        "lamp": Material(PLAIN, jit((0.95, 0.9, 0.75), 0.05), params=p4()),
    }


def picture_material(rng: np.random.Generator) -> Material:
    """A fresh colourful picture pattern with a dark or light frame."""
    frame = tuple(float(x) for x in (rng.uniform(0.05, 0.25, 3) if rng.uniform() < 0.5 else rng.uniform(0.7, 0.9, 3)))
    return Material(PICTURE, (0.5, 0.5, 0.5), color2=frame, params=tuple(float(x) for x in rng.uniform(size=4)))
