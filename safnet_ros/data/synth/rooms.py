"""Procedural room layouts: furnished box rooms of a type (bedroom, office, living, kitchen, bathroom, studio).

A room is an axis-aligned box ``[0, W] x [0, D] x [0, H]`` (metres, +z up,
floor at z = 0) in its *aligned* frame. Objects are built from boxes and
cylinders (:class:`Part`) and placed along the walls in a fixed plan of zones
with random sizes and positions:

- south wall (y = 0): bathroom corner (bathtub, shower curtain, toilet), a
  counter with a sink on a base cabinet (vanity), an upper cabinet and a
  refrigerator (kitchen), a box;
- east wall (x = W): bed with pillows, night stand and clothes; a window with
  curtains above it;
- north wall (y = D): door, sofa with a cushion, picture, coffee table,
  ottoman (living); bookshelf; a bag by the door;
- west wall (x = 0): cabinet (with a television in living rooms), desk with
  chair, lamp, books, props, picture and whiteboard (office), trash can, towel;
- middle: dining table with chairs.

The room type (:data:`ROOM_ZONES`) picks the zones, so rooms have class mixes
like real ones; a "studio" has every zone and so all 20 benchmark classes. Every
room also holds classes the benchmark ignores (:data:`CATEGORY_NYU40`). The
ceiling is the last object and, as in a real scan, part of the scanned mesh
where the camera saw it.

The scanned room is then placed in the world by a rotation about z and a
translation (:attr:`Room.world_from_aligned`), like a raw ScanNet scan; the
scene's ``axisAlignment`` is the inverse of that transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from safnet_ros.data.synth.appearance import Material, picture_material, random_palette

#: Face names of a box in its local frame.
BOX_FACES: tuple[str, ...] = ("+x", "-x", "+y", "-y", "+z", "-z")

#: raw category -> nyu40 id of every category the generator uses (written to the label map).
CATEGORY_NYU40: dict[str, int] = {
    "wall": 1, "floor": 2, "cabinet": 3, "kitchen cabinets": 3, "kitchen cabinet": 3, "bed": 4,
    "chair": 5, "office chair": 5, "sofa": 6, "table": 7, "coffee table": 7, "door": 8,
    "window": 9, "bookshelf": 10, "picture": 11, "counter": 12, "desk": 14, "curtain": 16,
    "refrigerator": 24, "shower curtain": 28, "toilet": 33, "sink": 34, "bathtub": 36,
    "trash can": 39, "ottoman": 39,
    "ceiling": 22, "pillow": 18, "lamp": 35, "box": 29,
    # outside the 20 benchmark classes, as real rooms hold them
    "night stand": 32, "clothes": 21, "books": 23, "television": 25, "towel": 27, "bag": 37,
    "object": 40, "whiteboard": 30,
}

#: Categories of the room's shell (not furniture: no obstacle for the camera).
SHELL_CATEGORIES: frozenset[str] = frozenset({"wall", "floor", "ceiling"})
#: Flat things hung on a wall (no target of a close pass).
WALL_HUNG: frozenset[str] = frozenset({"window", "door", "picture", "curtain", "towel", "whiteboard",
                                       "kitchen cabinet", "television"})

#: Room types -> the zones of the plan they furnish (a class mix like real rooms).
ROOM_ZONES: dict[str, frozenset[str]] = {
    "bedroom": frozenset({"bed", "curtains", "office", "cabinet", "trash"}),
    "office": frozenset({"office", "shelf", "dining", "cabinet", "trash", "curtains"}),
    "living": frozenset({"living", "shelf", "dining", "curtains", "cabinet"}),
    "kitchen": frozenset({"vanity", "kitchen", "dining", "cabinet", "trash"}),
    "bathroom": frozenset({"bath", "vanity", "trash"}),
    "studio": frozenset({"bath", "vanity", "kitchen", "bed", "curtains", "living", "shelf", "cabinet", "office",
                         "trash", "dining"}),
}
#: Room types (class mixes) a scene can draw from; "studio" holds all 20 benchmark classes.
ROOM_TYPES: tuple[str, ...] = tuple(ROOM_ZONES)


@dataclass
class Part:
    """A box or an upright (elliptic) cylinder.

    ``center`` (3,) metres and ``yaw`` (radians about +z) place it; ``size`` (3,)
    is its extent along its local x, y, z (for a cylinder: the two diameters and
    the height). ``faces`` lists the box faces to mesh (a face against a wall or
    the floor is left out, as a scan never sees it); for cylinders ``"+z"``/``"-z"``
    are the caps and the side is always meshed. ``holes`` are rectangles
    ``(s0, s1, t0, t1)`` in the face coordinates of a single-face part (local x
    and z for a ``"+y"`` face) cut out of the dense mesh only, where a door,
    window or picture covers the wall.
    """

    shape: str
    center: np.ndarray
    size: np.ndarray
    material: Material
    yaw: float = 0.0
    faces: tuple[str, ...] = BOX_FACES
    holes: tuple[tuple[float, float, float, float], ...] = ()


@dataclass
class SceneObject:
    """One annotated instance: its parts, raw category and nyu40 id."""

    object_id: int
    category: str
    parts: list[Part]
    movable: bool = False

    @property
    def nyu40(self) -> int:
        """The object's nyu40 id (:data:`CATEGORY_NYU40`)."""
        return CATEGORY_NYU40[self.category]


@dataclass
class Room:
    """A generated room: its size, objects (aligned frame) and placement in the world.

    ``world_from_aligned`` (4, 4) maps aligned coordinates to the world frame
    the mesh and the poses are written in; ``lights`` (L, 3) are the ceiling
    lights in the aligned frame, ``light_intensity`` (L,) their strengths.
    """

    width: float
    depth: float
    height: float
    objects: list[SceneObject]
    world_from_aligned: np.ndarray
    room_type: str = "studio"
    lights: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    light_intensity: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def axis_alignment(self) -> np.ndarray:
        """ScanNet's ``axisAlignment``: world -> aligned (4, 4)."""
        return np.linalg.inv(self.world_from_aligned)


def rot_z(yaw: float) -> np.ndarray:
    """(3, 3) rotation by ``yaw`` radians about z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------- object building


def _box(x: float, y: float, z0: float, sx: float, sy: float, sz: float, mat: Material,
         faces: tuple[str, ...] = BOX_FACES) -> Part:
    """A box in object-local coordinates, given by its footprint centre and bottom height."""
    return Part("box", np.array([x, y, z0 + sz / 2.0]), np.array([sx, sy, sz]), mat, 0.0, faces)


def _cyl(x: float, y: float, z0: float, dx: float, dy: float, h: float, mat: Material,
         faces: tuple[str, ...] = ("+z",)) -> Part:
    return Part("cylinder", np.array([x, y, z0 + h / 2.0]), np.array([dx, dy, h]), mat, 0.0, faces)


def _place(parts: list[Part], x: float, y: float, yaw: float) -> list[Part]:
    """Object-local parts -> room (aligned) frame: rotate by ``yaw`` about z, then move to (x, y)."""
    r = rot_z(yaw)
    return [replace(p, center=r @ p.center + np.array([x, y, 0.0]), yaw=p.yaw + yaw) for p in parts]


def _hollow_box(x: float, y: float, z0: float, sx: float, sy: float, sz: float, wall: float,
                mat: Material) -> list[Part]:
    """An open-topped box (bathtub, sink basin): four rims and a bottom."""
    return [
        _box(x, y - sy / 2 + wall / 2, z0, sx, wall, sz, mat, ("+x", "-x", "+y", "-y", "+z")),
        _box(x, y + sy / 2 - wall / 2, z0, sx, wall, sz, mat, ("+x", "-x", "+y", "-y", "+z")),
        _box(x - sx / 2 + wall / 2, y, z0, wall, sy - 2 * wall, sz, mat, ("+x", "-x", "+z")),
        _box(x + sx / 2 - wall / 2, y, z0, wall, sy - 2 * wall, sz, mat, ("+x", "-x", "+z")),
        _box(x, y, z0, sx - 2 * wall, sy - 2 * wall, wall, mat, ("+z",)),
    ]


_ON_FLOOR = ("+x", "-x", "+y", "-y", "+z")
_ON_FLOOR_WALL = ("+x", "-x", "+y", "+z")  # back (-y) against a wall


def chair_parts(j: Callable[[], float], mats: dict[str, Material]) -> list[Part]:
    """Seat, backrest (at local -y) and four legs; front towards local +y. ``j()`` draws a size factor."""
    w, d, sh = 0.46 * j(), 0.46 * j(), 0.45 * j()
    leg = 0.035
    parts = [_box(0, 0, sh - 0.05, w, d, 0.05, mats["chair"]),
             _box(0, -d / 2 + 0.025, sh, w, 0.05, 0.42 * j(), mats["chair"])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box(sx * (w / 2 - leg), sy * (d / 2 - leg), 0, leg, leg, sh - 0.05, mats["metal"], _ON_FLOOR))
    return parts


def table_parts(w: float, d: float, h: float, mat: Material) -> list[Part]:
    """Top (4 cm) and four legs; ``w`` x ``d`` footprint, ``h`` high (metres)."""
    leg = 0.05
    parts = [_box(0, 0, h - 0.04, w, d, 0.04, mat)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box(sx * (w / 2 - leg), sy * (d / 2 - leg), 0, leg, leg, h - 0.04, mat, _ON_FLOOR))
    return parts


class _Layout:
    """Collects objects with increasing ids while the plan is laid out."""

    def __init__(self, rng: np.random.Generator, width: float, depth: float, height: float,
                 zones: frozenset[str]):
        self.rng, self.W, self.D, self.H = rng, width, depth, height
        self.zones = zones
        self.objects: list[SceneObject] = []
        self.wall_holes: dict[str, list[tuple[float, float, float, float]]] = {w: [] for w in "SENW"}

    def j(self, lo: float = 0.9, hi: float = 1.1) -> float:
        return float(self.rng.uniform(lo, hi))

    def wants(self, zone: str) -> bool:
        """Whether this room type furnishes ``zone`` ("always" and "clutter" are in every room)."""
        return zone in ("always", "clutter") or zone in self.zones

    def add(self, category: str, parts: list[Part], x: float, y: float, yaw: float, movable: bool = False,
            zone: str = "always") -> SceneObject | None:
        """Place an object (local parts at (x, y), turned by ``yaw``) if the room type furnishes ``zone``."""
        if not self.wants(zone):
            return None
        obj = SceneObject(len(self.objects), category, _place(parts, x, y, yaw), movable)
        self.objects.append(obj)
        return obj

    def against(self, wall: str, along: float, depth: float) -> tuple[float, float, float]:
        """(x, y, yaw) of an object whose back (local -y) touches ``wall`` (S/E/N/W), front into the room.

        ``along`` is the world x on S/N walls and the world y on E/W walls;
        ``depth`` is the object's local y extent.
        """
        if wall == "S":
            return along, depth / 2, 0.0
        if wall == "N":
            return along, self.D - depth / 2, math.pi
        if wall == "W":
            return depth / 2, along, -math.pi / 2
        return self.W - depth / 2, along, math.pi / 2

    def on_wall(self, wall: str, along: float, width: float, z0: float, height: float,
                thickness: float, category: str, parts: list[Part], cut_hole: bool = True,
                zone: str = "always") -> SceneObject | None:
        """A flat object hung on a wall (picture, window, door); cuts its footprint out of the wall mesh."""
        if not self.wants(zone):
            return None
        x, y, yaw = self.against(wall, along, thickness)
        if cut_hole:
            # Wall face coordinates: s = local x of the wall (its yaw equals the object's), t = z - H/2.
            centre = {"S": self.W / 2, "N": self.W / 2, "W": self.D / 2, "E": self.D / 2}[wall]
            sign = {"S": 1.0, "N": -1.0, "W": -1.0, "E": 1.0}[wall]
            s = sign * (along - centre)
            m = 0.03  # keep a sliver of wall under the object's edges: no gaps in the mesh
            self.wall_holes[wall].append((s - width / 2 + m, s + width / 2 - m,
                                          z0 - self.H / 2 + m, z0 + height - self.H / 2 - m))
        return self.add(category, parts, x, y, yaw)


def generate_room(rng: np.random.Generator, max_rotation_deg: float = 15.0,
                  room_types: tuple[str, ...] = ("studio",), lights: int = 1) -> Room:
    """Lay out one furnished room of a type drawn from ``room_types`` (see module docstring).

    Deterministic for a given generator state. ``max_rotation_deg`` bounds the
    random yaw of the room in the world frame (0: the world frame is the aligned
    frame up to a translation). A "studio" holds all 20 benchmark classes; the
    other types furnish only their zones (:data:`ROOM_ZONES`). ``lights``
    ceiling lights are placed (the first near the middle).
    """
    room_type = str(room_types[int(rng.integers(len(room_types)))]) if len(room_types) > 1 else str(room_types[0])
    if room_type == "bathroom":
        W = float(rng.uniform(5.0, 5.6))
        D = float(rng.uniform(3.6, 4.4))
    else:
        W = float(rng.uniform(6.8, 8.0))
        D = float(rng.uniform(5.4, 6.4))
    H = float(rng.uniform(2.5, 3.0))
    mats = random_palette(rng)
    L = _Layout(rng, W, D, H, ROOM_ZONES[room_type])
    j = L.j

    # --- south wall: bathroom corner, kitchenette --------------------------------
    tub_l, tub_d, tub_h = 1.65 * j(0.95, 1.05), 0.75 * j(0.95, 1.05), 0.55 * j()
    L.add("bathtub", _hollow_box(0, 0, 0, tub_l, tub_d, tub_h, 0.08, mats["ceramic"]), tub_l / 2, tub_d / 2, 0.0, zone="bath")
    sc_len = tub_l * float(rng.uniform(0.45, 0.7))
    sc_top, sc_bot = 2.0 * j(0.97, 1.03), tub_h + 0.12
    L.add("shower curtain", [_box(0, 0, sc_bot, sc_len, 0.02, sc_top - sc_bot, mats["shower_curtain"])],
          sc_len / 2 + 0.01, tub_d + 0.03, 0.0, zone="bath")
    x_toilet = tub_l + 0.45
    toilet = [
        _box(0, -0.24, 0.4, 0.46 * j(), 0.2, 0.4 * j(), mats["ceramic"], _ON_FLOOR_WALL),
        _cyl(0, 0.05, 0.0, 0.26, 0.34, 0.32, mats["ceramic"]),
        _cyl(0, 0.08, 0.3, 0.38, 0.48, 0.1, mats["ceramic"]),
        _cyl(0, 0.08, 0.4, 0.36, 0.46, 0.025, mats["ceramic"]),
    ]
    L.add("toilet", toilet, *L.against("S", x_toilet, 0.68), zone="bath")
    c_len, c_d = 1.35 * j(), 0.6
    x_counter = x_toilet + 0.4 + c_len / 2
    L.add("kitchen cabinets", [_box(0, 0, 0, c_len, c_d - 0.04, 0.86, mats["cabinet"], _ON_FLOOR_WALL)],
          *L.against("S", x_counter, c_d - 0.04), zone="vanity")
    L.add("counter", [_box(0, 0, 0.86, c_len + 0.02, c_d, 0.04, mats["counter"], ("+x", "-x", "+y", "+z", "-z"))],
          *L.against("S", x_counter, c_d), zone="vanity")
    sink_off = float(rng.uniform(-0.2, 0.2)) * c_len
    sink = _hollow_box(0, 0.02, 0.9, 0.5, 0.4, 0.13, 0.03, mats["ceramic"]) + [
        _cyl(0, -0.24, 0.9, 0.035, 0.035, 0.25, mats["metal"]),
        _box(0, -0.17, 1.1, 0.03, 0.14, 0.03, mats["metal"]),
    ]
    L.add("sink", sink, *L.against("S", x_counter + sink_off, c_d), zone="vanity")
    L.add("kitchen cabinet", [_box(0, 0, 1.45, c_len, 0.35, 0.7 * j(), mats["cabinet"], _ON_FLOOR_WALL + ("-z",))],
          *L.against("S", x_counter, 0.35), zone="kitchen")
    f_w, f_d, f_h = 0.75 * j(0.95, 1.05), 0.7, 1.8 * j(0.95, 1.05)
    x_fridge = x_counter + c_len / 2 + 0.05 + f_w / 2
    fridge = [_box(0, 0, 0, f_w, f_d, f_h, mats["fridge"], _ON_FLOOR_WALL),
              _box(f_w / 2 - 0.08, f_d / 2 + 0.02, f_h * 0.62, 0.03, 0.04, 0.5, mats["metal"]),
              _box(f_w / 2 - 0.08, f_d / 2 + 0.02, f_h * 0.2, 0.03, 0.04, 0.3, mats["metal"]),
              _box(0, f_d / 2 + 0.003, f_h * 0.55, f_w - 0.02, 0.006, 0.012, mats["metal"], ("+y",))]
    L.add("refrigerator", fridge, *L.against("S", x_fridge, f_d), zone="kitchen")
    box_mat = Material(0, (0.62 * j(), 0.48 * j(), 0.3 * j()))
    L.add("box", [_box(0, 0, 0, 0.45 * j(), 0.35 * j(), 0.32 * j(), box_mat, _ON_FLOOR)],
          min(x_fridge + f_w / 2 + 0.45, W - 0.45), 0.35, float(rng.uniform(-0.4, 0.4)), movable=True, zone="clutter")

    # --- east wall: bed, window, curtains ----------------------------------------
    bed_w, bed_l = 1.5 * j(0.93, 1.07), 2.05 * j(0.97, 1.03)
    y_bed = float(rng.uniform(1.05, 1.3)) + bed_w / 2
    bed = [_box(0, 0, 0, bed_w, bed_l, 0.3, mats["wood"], _ON_FLOOR),
           _box(0, 0.02, 0.3, bed_w - 0.04, bed_l - 0.1, 0.22, mats["bedding"], _ON_FLOOR),
           _box(0, -bed_l / 2 + 0.03, 0, bed_w + 0.04, 0.06, 0.95 * j(0.9, 1.05), mats["wood"], _ON_FLOOR_WALL)]
    bx, by, byaw = L.against("E", y_bed, bed_l)
    L.add("bed", bed, bx, by, byaw, zone="bed")
    pillow_mat = replace(mats["bedding"], color=tuple(float(c) * 0.9 for c in mats["bedding"].color))
    n_pillows = int(rng.integers(1, 3))
    for off in ([0.0] if n_pillows == 1 else [-0.33, 0.33]):
        L.add("pillow", [_box(0, 0, 0.52, 0.55, 0.35, 0.12, pillow_mat, _ON_FLOOR)],
              *_local_to_room(bx, by, byaw, off * bed_w, -bed_l / 2 + 0.3), zone="bed")
    win_w, win_h = float(rng.uniform(1.0, 1.4)), float(rng.uniform(1.1, 1.35))
    win_z = float(rng.uniform(1.1, 1.2))
    win_y = y_bed + float(rng.uniform(-0.15, 0.15))
    window = [_box(0, 0, win_z, win_w, 0.03, win_h, mats["window"], ("+x", "-x", "+y", "+z", "-z")),
              _box(0, 0.02, win_z - 0.03, win_w + 0.1, 0.07, 0.03, mats["frame"], ("+x", "-x", "+y", "+z", "-z"))]
    L.on_wall("E", win_y, win_w, win_z, win_h, 0.03, "window", window, zone="always")
    cur_w = float(rng.uniform(0.35, 0.5))
    cur_top = min(H - 0.05, win_z + win_h + 0.2)
    cur_bot = max(0.6, win_z - 0.35)
    for side in (-1, 1):
        along = win_y + side * (win_w / 2 + cur_w / 2 - 0.12)
        x, y, yaw = L.against("E", along, 0.03)
        # hang 8 cm in front of the wall
        x -= 0.08
        L.add("curtain", [_box(0, 0, cur_bot, cur_w, 0.03, cur_top - cur_bot, mats["curtain"])], x, y, yaw, zone="curtains")

    # --- north wall: door, sofa, picture, coffee table, ottoman, bookshelf ---------
    door_w, door_h = float(rng.uniform(0.82, 0.95)), float(rng.uniform(2.0, 2.1))
    door_x = float(rng.uniform(0.95, 1.3))
    door = [_box(0, 0, 0, door_w, 0.04, door_h, mats["door"], ("+x", "-x", "+y", "+z")),
            _box(-door_w / 2 - 0.03, 0.01, 0, 0.06, 0.06, door_h + 0.06, mats["frame"], ("+x", "-x", "+y", "+z")),
            _box(door_w / 2 + 0.03, 0.01, 0, 0.06, 0.06, door_h + 0.06, mats["frame"], ("+x", "-x", "+y", "+z")),
            _box(0, 0.01, door_h, door_w, 0.06, 0.06, mats["frame"], ("+y", "+z", "-z")),
            _cyl(door_w / 2 - 0.1, 0.07, door_h * 0.48, 0.05, 0.05, 0.05, mats["metal"], ("+z", "-z"))]
    L.on_wall("N", door_x, door_w, 0.0, door_h, 0.04, "door", door, zone="always")
    sofa_l, sofa_d = 2.0 * j(), 0.9 * j(0.95, 1.05)
    sofa_x = float(rng.uniform(W * 0.42, W * 0.5))
    sofa = [_box(0, 0.05, 0, sofa_l, sofa_d - 0.1, 0.42, mats["fabric_sofa"], _ON_FLOOR),
            _box(0, -sofa_d / 2 + 0.1, 0, sofa_l, 0.2, 0.85, mats["fabric_sofa"], _ON_FLOOR_WALL),
            _box(-sofa_l / 2 + 0.09, 0.05, 0.42, 0.18, sofa_d - 0.1, 0.2, mats["fabric_sofa"]),
            _box(sofa_l / 2 - 0.09, 0.05, 0.42, 0.18, sofa_d - 0.1, 0.2, mats["fabric_sofa"])]
    sx, sy, syaw = L.against("N", sofa_x, sofa_d)
    L.add("sofa", sofa, sx, sy, syaw, zone="living")
    L.add("pillow", [_box(0, 0, 0.42, 0.42, 0.14, 0.38, mats["bedding"], _ON_FLOOR)],
          *_local_to_room(sx, sy, syaw, float(rng.uniform(-0.5, 0.5)) * sofa_l, -sofa_d / 2 + 0.28), zone="living")
    pic_w, pic_h = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.4, 0.7))
    pic_z = float(rng.uniform(1.25, 1.45))
    L.on_wall("N", sofa_x, pic_w, pic_z, pic_h, 0.025, "picture",
              [_box(0, 0, pic_z, pic_w, 0.025, pic_h, picture_material(rng), ("+x", "-x", "+y", "+z", "-z"))], zone="living")
    ct_w, ct_d = 1.0 * j(), 0.55 * j()
    L.add("coffee table", table_parts(ct_w, ct_d, 0.42, mats["dark_wood"]),
          sofa_x + float(rng.uniform(-0.1, 0.1)), D - sofa_d - 0.35 - ct_d / 2, math.pi, movable=True, zone="living")
    L.add("ottoman", [_box(0, 0, 0, 0.45, 0.45, 0.42, mats["fabric_sofa"], _ON_FLOOR)],
          sofa_x + sofa_l / 2 + 0.4, D - 0.55, float(rng.uniform(-0.3, 0.3)), movable=True, zone="living")
    bs_w, bs_d, bs_h = float(rng.uniform(0.8, 1.0)), 0.32, float(rng.uniform(1.8, 2.0))
    bs_x = W - 0.25 - bs_w / 2
    shelf = [_box(-bs_w / 2 + 0.01, 0, 0, 0.02, bs_d, bs_h, mats["wood"], _ON_FLOOR_WALL),
             _box(bs_w / 2 - 0.01, 0, 0, 0.02, bs_d, bs_h, mats["wood"], _ON_FLOOR_WALL),
             _box(0, 0, bs_h - 0.02, bs_w - 0.04, bs_d, 0.02, mats["wood"], ("+y", "+z", "-z")),
             _box(0, 0, 0, bs_w - 0.04, bs_d, 0.08, mats["wood"], ("+y", "+z")),
             _box(0, -bs_d / 2 + 0.005, 0.08, bs_w - 0.04, 0.01, bs_h - 0.1, mats["wood"], ("+y",))]
    n_shelves = int(rng.integers(3, 5))
    gap = (bs_h - 0.1) / (n_shelves + 1)
    for k in range(n_shelves + 1):
        z = 0.08 + k * gap
        if k > 0:
            shelf.append(_box(0, 0.005, z - 0.02, bs_w - 0.04, bs_d - 0.01, 0.02, mats["wood"], ("+y", "+z", "-z")))
        fill = float(rng.uniform(0.5, 0.95))
        bw = (bs_w - 0.04) * fill
        shelf.append(_box(-(bs_w - 0.04 - bw) / 2, 0.0, z, bw, bs_d * 0.75, gap * float(rng.uniform(0.6, 0.85)),
                          replace(mats["books"], params=tuple(float(v) for v in rng.uniform(size=4))),
                          ("+x", "-x", "+y", "+z")))
    L.add("bookshelf", shelf, *L.against("N", bs_x, bs_d), zone="shelf")

    # --- west wall: cabinet, desk, chair, lamp, picture, trash can -----------------
    cab_w, cab_d, cab_h = float(rng.uniform(0.9, 1.1)), 0.5, float(rng.uniform(0.8, 1.0))
    cab_y = tub_d + 0.3 + cab_w / 2
    L.add("cabinet", [_box(0, 0, 0, cab_w, cab_d, cab_h, replace(mats["cabinet"], color=mats["wood"].color),
                           _ON_FLOOR_WALL)], *L.against("W", cab_y, cab_d), zone="cabinet")
    desk_w, desk_d = float(rng.uniform(1.2, 1.5)), 0.65
    desk_y = cab_y + cab_w / 2 + 0.3 + desk_w / 2
    desk = [_box(0, 0, 0.72, desk_w, desk_d, 0.04, mats["wood"]),
            _box(-desk_w / 2 + 0.015, 0, 0, 0.03, desk_d - 0.02, 0.72, mats["wood"], _ON_FLOOR),
            _box(desk_w / 2 - 0.015, 0, 0, 0.03, desk_d - 0.02, 0.72, mats["wood"], _ON_FLOOR),
            _box(0, -desk_d / 2 + 0.02, 0.3, desk_w - 0.06, 0.02, 0.42, mats["wood"], ("+y", "-z"))]
    dx, dy, dyaw = L.against("W", desk_y, desk_d)
    L.add("desk", desk, dx, dy, dyaw, zone="office")
    lamp = [_cyl(0, 0, 0, 0.15, 0.15, 0.02, mats["metal"]), _cyl(0, 0, 0.02, 0.02, 0.02, 0.33, mats["metal"]),
            _cyl(0, 0, 0.35, 0.24, 0.24, 0.18, mats["lamp"], ("+z", "-z"))]
    lamp = [replace(p, center=p.center + np.array([0, 0, 0.76])) for p in lamp]
    L.add("lamp", lamp, *_local_to_room(dx, dy, dyaw, desk_w / 2 - 0.2, -0.1), zone="office")
    L.add("office chair", chair_parts(j, mats), dx + desk_d / 2 + 0.3, desk_y + float(rng.uniform(-0.15, 0.15)),
          math.pi / 2 + float(rng.uniform(-0.3, 0.3)), movable=True, zone="office")
    pic2_w, pic2_h = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.4, 0.6))
    L.on_wall("W", desk_y, pic2_w, 1.3, pic2_h, 0.025, "picture",
              [_box(0, 0, 1.3, pic2_w, 0.025, pic2_h, picture_material(rng), ("+x", "-x", "+y", "+z", "-z"))], zone="office")
    L.add("trash can", [_cyl(0, 0, 0, 0.28, 0.28, 0.36, mats["plastic"])],
          0.25, min(desk_y + desk_w / 2 + 0.3, D - 0.62), 0.0, movable=True, zone="trash")

    # --- middle: dining table with chairs ----------------------------------------
    t_w, t_d = float(rng.uniform(1.2, 1.5)), float(rng.uniform(0.8, 0.9))
    # Keep the table and its chairs (~0.55 m beyond its edges) clear of the bed and the coffee table.
    tx_max = min(0.55 * W, W - bed_l - 0.15 - t_w / 2 - 0.55)
    ty_max = min(0.52 * D, D - sofa_d - 0.35 - ct_d - 0.1 - t_d / 2 - 0.55)
    tx = float(rng.uniform(min(0.45 * W, tx_max), tx_max))
    ty = float(rng.uniform(min(0.45 * D, ty_max), ty_max))
    L.add("table", table_parts(t_w, t_d, 0.75, mats["wood"]), tx, ty, 0.0, movable=True, zone="dining")
    seats = [(0, -t_d / 2 - 0.3, 0.0), (0, t_d / 2 + 0.3, math.pi), (-t_w / 2 - 0.3, 0, -math.pi / 2),
             (t_w / 2 + 0.3, 0, math.pi / 2)]
    n_chairs = int(rng.integers(2, 5))
    for k in rng.permutation(4)[:n_chairs]:
        ox, oy, oyaw = seats[int(k)]
        L.add("chair", chair_parts(j, mats), tx + ox + float(rng.uniform(-0.1, 0.1)), ty + oy,
              oyaw + float(rng.uniform(-0.25, 0.25)), movable=True, zone="dining")

    # --- things outside the 20 benchmark classes ----------------------------------
    _extras(L, mats, locals_=dict(bx=bx, by=by, byaw=byaw, bed_w=bed_w, bed_l=bed_l, dx=dx, dy=dy, dyaw=dyaw,
                                  desk_w=desk_w, desk_d=desk_d, desk_y=desk_y, x_counter=x_counter, c_len=c_len,
                                  c_d=c_d, cab_y=cab_y, cab_w=cab_w, cab_d=cab_d, cab_h=cab_h, tub_d=tub_d,
                                  x_toilet=x_toilet, y_bed=y_bed))

    # --- shell: walls (with holes behind doors/windows/pictures), floor, ceiling ----
    wall_specs = {"S": (W / 2, 0.0, 0.0, W), "N": (W / 2, D, math.pi, W),
                  "W": (0.0, D / 2, -math.pi / 2, D), "E": (W, D / 2, math.pi / 2, D)}
    shell = [SceneObject(0, "wall", [Part("box", np.array([x, y, H / 2]), np.array([length, 0.0, H]), mats["wall"],
                                          yaw, ("+y",), tuple(L.wall_holes[name]))])
             for name, (x, y, yaw, length) in wall_specs.items()]
    shell.append(SceneObject(0, "floor", [Part("box", np.array([W / 2, D / 2, 0.0]), np.array([W, D, 0.0]),
                                               mats["floor"], 0.0, ("+z",))]))
    ceiling = SceneObject(0, "ceiling", [Part("box", np.array([W / 2, D / 2, H]), np.array([W, D, 0.0]),
                                              mats["ceiling"], 0.0, ("-z",))])
    # The ceiling comes last so leaving it out of the scanned mesh keeps object ids contiguous.
    objects = shell + L.objects + [ceiling]
    for k, obj in enumerate(objects):
        obj.object_id = k

    theta = math.radians(float(rng.uniform(-max_rotation_deg, max_rotation_deg))) if max_rotation_deg > 0 else 0.0
    r = rot_z(theta)
    corners = (r @ np.array([[0, 0, 0], [W, 0, 0], [0, D, 0], [W, D, 0]], dtype=float).T).T
    t = -corners.min(axis=0) + np.array([float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.1, 0.6)), 0.0])
    t[2] = 0.0
    world = np.eye(4)
    world[:3, :3] = r
    world[:3, 3] = t
    lamp_xy = [(W / 2, D / 2)] + [(float(rng.uniform(0.2, 0.8)) * W, float(rng.uniform(0.2, 0.8)) * D)
                                  for _ in range(max(0, lights - 1))]
    light_pos = np.array([[x, y, H - 0.15] for x, y in lamp_xy]).reshape(-1, 3)
    intensity = rng.uniform(0.6, 1.0, size=len(light_pos)) * (1.6 / math.sqrt(max(len(light_pos), 1)))
    return Room(W, D, H, objects, world, room_type, light_pos, intensity)


def _extras(L: _Layout, mats: dict[str, Material], locals_: dict) -> None:
    """Objects of non-benchmark classes, as real rooms hold them (night stand, clothes, books, small objects,
    a television, a towel, a bag, a whiteboard), placed by the zones the room furnishes."""
    rng, v = L.rng, locals_
    def colour() -> Material:
        return Material(0, tuple(float(c) for c in rng.uniform(0.1, 0.9, 3)))

    if L.wants("bed"):
        ns = 0.45
        along = v["y_bed"] - v["bed_w"] / 2 - 0.05 - ns / 2
        L.add("night stand", [_box(0, 0, 0, ns, 0.4, 0.55, mats["wood"], _ON_FLOOR_WALL)],
              *L.against("E", along, 0.4), zone="bed")
        L.add("clothes", [_box(0, 0, 0.52, 0.5 * L.j(), 0.4 * L.j(), 0.06, colour(), _ON_FLOOR)],
              *_local_to_room(v["bx"], v["by"], v["byaw"], 0.15 * v["bed_w"], 0.35 * v["bed_l"]), zone="bed")
    if L.wants("office"):
        L.add("books", [_box(0, 0, 0.76, 0.25, 0.18, 0.12 * L.j(), replace(mats["books"], scale=0.03))],
              *_local_to_room(v["dx"], v["dy"], v["dyaw"], -v["desk_w"] / 2 + 0.25, 0.05), zone="office")
        L.add("object", [_box(0, 0, 0.76, 0.3, 0.22, 0.02, colour()), _box(0, 0.1, 0.78, 0.3, 0.02, 0.2, colour())],
              *_local_to_room(v["dx"], v["dy"], v["dyaw"], 0.0, 0.0), zone="office")
        wb_along = float(np.clip(v["desk_y"] + 1.4, 1.0, L.D - 1.0))
        L.on_wall("W", wb_along, 0.9, 1.2, 0.6, 0.02, "whiteboard",
                  [_box(0, 0, 1.2, 0.9, 0.02, 0.6, Material(0, (0.93, 0.93, 0.94)), ("+x", "-x", "+y", "+z", "-z"))],
                  zone="shelf")
    if L.wants("vanity"):
        for _ in range(int(rng.integers(1, 4))):
            off = float(rng.uniform(-0.45, 0.45)) * v["c_len"]
            if abs(off) < 0.3:
                continue
            L.add("object", [_cyl(0, 0, 0.9, 0.08 * L.j(), 0.08 * L.j(), 0.12 + 0.15 * float(rng.uniform()), colour())],
                  *L.against("S", v["x_counter"] + off, 0.35), zone="vanity")
    if L.wants("living") and L.wants("cabinet"):
        tv_w = 0.8 * L.j()
        L.add("television", [_box(0, 0, v["cab_h"], tv_w, 0.06, 0.5 * L.j(), Material(0, (0.06, 0.06, 0.07)))],
              *L.against("W", v["cab_y"], 0.2), zone="living")
    if L.wants("bath"):
        L.on_wall("W", v["tub_d"] + 0.12 + 0.15, 0.3, 1.0, 0.55, 0.04, "towel",
                  [_box(0, 0, 1.0, 0.3, 0.04, 0.55, colour(), ("+x", "-x", "+y", "+z", "-z"))], cut_hole=False,
                  zone="bath")
    L.add("bag", [_box(0, 0, 0, 0.3, 0.2, 0.4 * L.j(), colour(), _ON_FLOOR)], 0.22, L.D - 0.3,
          float(rng.uniform(-0.3, 0.3)), movable=True, zone="clutter")


def _local_to_room(x: float, y: float, yaw: float, lx: float, ly: float) -> tuple[float, float, float]:
    """Position (x, y, yaw) of a point given in an already placed object's local frame."""
    p = rot_z(yaw) @ np.array([lx, ly, 0.0])
    return float(x + p[0]), float(y + p[1]), yaw


def footprint(obj: SceneObject) -> np.ndarray:
    """Axis-aligned xy bounds ``[xmin, ymin, xmax, ymax]`` of an object's parts (aligned frame)."""
    pts = []
    for p in obj.parts:
        hx, hy = p.size[0] / 2, p.size[1] / 2
        corners = np.array([[-hx, -hy, 0], [hx, -hy, 0], [-hx, hy, 0], [hx, hy, 0]])
        pts.append((rot_z(p.yaw) @ corners.T).T + p.center)
    a = np.concatenate(pts)
    return np.array([a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()])


def move_object(obj: SceneObject, dx: float, dy: float, dyaw: float) -> SceneObject:
    """A copy of ``obj`` rotated by ``dyaw`` about its footprint centre and shifted by (dx, dy)."""
    fp = footprint(obj)
    c = np.array([(fp[0] + fp[2]) / 2, (fp[1] + fp[3]) / 2, 0.0])
    r = rot_z(dyaw)
    return replace(obj, parts=[replace(p, center=r @ (p.center - c) + c + np.array([dx, dy, 0.0]), yaw=p.yaw + dyaw)
                               for p in obj.parts])


def to_world(room: Room, objects: list[SceneObject]) -> list[SceneObject]:
    """Copies of ``objects`` with parts expressed in the world frame (``room.world_from_aligned``)."""
    m = room.world_from_aligned
    yaw = math.atan2(m[1, 0], m[0, 0])
    return [replace(obj, parts=[replace(p, center=m[:3, :3] @ p.center + m[:3, 3], yaw=p.yaw + yaw) for p in obj.parts])
            for obj in objects]
