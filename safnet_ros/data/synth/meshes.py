"""Object parts -> one triangle mesh with per-vertex part, normal and segment ids.

Boxes are meshed face by face as regular grids and cylinders as rings, with a
target vertex ``spacing`` (metres): the dense mesh written as
``_vh_clean_2.ply`` uses a few centimetres, the render mesh ``spacing=None``
(one cell per box face, the same cylinder rings), which has exactly the same
surface, so rendered depth and the written mesh agree to float precision.
Faces do not share vertices across box faces (each vertex has one normal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from safnet_ros.data.synth.appearance import MaterialTable
from safnet_ros.data.synth.rooms import Part, SceneObject, rot_z

#: Size of a segment block (metres) for ScanNet-style over-segmentation ids.
SEGMENT_BLOCK = 0.5
_FACE_AXIS = {"+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0), "+z": (2, 1.0), "-z": (2, -1.0)}
_UV_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


@dataclass
class SceneMesh:
    """A triangle mesh of a whole scene.

    ``vertices`` (V, 3) float64 metres, ``normals`` (V, 3) unit, ``faces`` (F, 3)
    int32; ``vertex_part`` (V,) / ``face_part`` (F,) part ids (index into
    ``part_object`` and the material table); ``vertex_segment`` (V,) int64
    over-segmentation ids (patches of at most ~0.5 m of one face);
    ``part_object`` (P,) object index of each part.
    """

    vertices: np.ndarray
    normals: np.ndarray
    faces: np.ndarray
    vertex_part: np.ndarray
    face_part: np.ndarray
    vertex_segment: np.ndarray
    part_object: np.ndarray

    @property
    def vertex_object(self) -> np.ndarray:
        """(V,) object index of every vertex."""
        return self.part_object[self.vertex_part]


def _divisions(length: float, spacing: float | None) -> int:
    """Cells along ``length`` metres at most ``spacing`` long (one cell when ``spacing`` is None)."""
    return 1 if spacing is None else max(1, math.ceil(length / spacing - 1e-9))


def _box_face(part: Part, face: str, spacing: float | None,
              face_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One box face as a grid: local vertices (n, 3), normals, triangles (m, 3), segment keys (n,)."""
    axis, sign = _FACE_AXIS[face]
    ua, va = _UV_AXES[axis]
    size = part.size
    us, vs = (np.linspace(-size[k] / 2, size[k] / 2, _divisions(size[k], spacing) + 1) for k in (ua, va))
    nu, nv = len(us) - 1, len(vs) - 1
    uu, vv = np.meshgrid(us, vs, indexing="ij")  # (nu+1, nv+1)
    verts = np.zeros((uu.size, 3))
    verts[:, axis] = sign * size[axis] / 2
    verts[:, ua] = uu.ravel()
    verts[:, va] = vv.ravel()
    idx = np.arange(uu.size).reshape(nu + 1, nv + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    keep = np.ones(nu * nv, dtype=bool)
    if part.holes and spacing is not None:
        uc = ((us[:-1] + us[1:]) / 2)[:, None].repeat(nv, 1).ravel()
        vc = ((vs[:-1] + vs[1:]) / 2)[None, :].repeat(nu, 0).ravel()
        # Hole rectangles are given as (s, t) = (local x or y, local z) relative to the part centre.
        for s0, s1, t0, t1 in part.holes:
            keep &= ~((uc > s0) & (uc < s1) & (vc > t0) & (vc < t1))
    # Outward winding: cross(e_u, e_v) is +e_axis for x and z faces, -e_axis for y faces.
    outward = sign * (-1.0 if axis == 1 else 1.0)
    if outward > 0:
        tris = np.concatenate([np.stack([a, b, c], 1)[keep], np.stack([a, c, d], 1)[keep]])
    else:
        tris = np.concatenate([np.stack([a, c, b], 1)[keep], np.stack([a, d, c], 1)[keep]])
    normals = np.zeros_like(verts)
    normals[:, axis] = sign
    bu = np.floor((verts[:, ua] + size[ua] / 2) / SEGMENT_BLOCK).clip(0, 99)
    bv = np.floor((verts[:, va] + size[va] / 2) / SEGMENT_BLOCK).clip(0, 99)
    seg = face_index * 10000 + bu * 100 + bv
    return verts, normals, tris, seg.astype(np.int64)


def cylinder_segments(part: Part) -> int:
    """Number of sides of a cylinder: independent of the spacing so dense and render meshes coincide."""
    return int(np.clip(math.ceil(math.pi * max(part.size[0], part.size[1]) / 0.05), 8, 40))


def _cylinder(part: Part, spacing: float | None):
    rx, ry, h = part.size[0] / 2, part.size[1] / 2, part.size[2]
    n = cylinder_segments(part)
    ang = np.arange(n) * (2 * math.pi / n)
    cs, sn = np.cos(ang), np.sin(ang)
    nh = _divisions(h, spacing)
    zs = np.linspace(-h / 2, h / 2, nh + 1)
    # Side: (nh+1) rings of n vertices.
    verts = [np.stack([np.tile(rx * cs, nh + 1), np.tile(ry * sn, nh + 1), np.repeat(zs, n)], 1)]
    nrm = np.stack([cs / max(rx, 1e-6), sn / max(ry, 1e-6), np.zeros(n)], 1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    normals = [np.tile(nrm, (nh + 1, 1))]
    ring = np.arange(n)
    tris = []
    for k in range(nh):
        a = k * n + ring
        b = k * n + (ring + 1) % n
        c, d = b + n, a + n
        tris += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
    sector = np.floor(ang / (math.pi / 2))
    segs = [np.tile(sector, nh + 1) * 100 + np.repeat(np.floor((zs + h / 2) / SEGMENT_BLOCK), n)]
    count = (nh + 1) * n
    for cap, z, sgn in (("+z", h / 2, 1.0), ("-z", -h / 2, -1.0)):
        if cap not in part.faces:
            continue
        nr = _divisions(max(rx, ry), spacing)
        fr = np.arange(1, nr + 1) / nr
        cv = np.concatenate([[[0.0, 0.0, z]], np.stack([np.outer(fr, rx * cs).ravel(), np.outer(fr, ry * sn).ravel(),
                                                       np.full(nr * n, z)], 1)])
        verts.append(cv)
        normals.append(np.tile([0.0, 0.0, sgn], (len(cv), 1)))
        centre = count
        first = count + 1 + ring
        t = [np.stack([np.full(n, centre), first, count + 1 + (ring + 1) % n], 1)]
        for k in range(nr - 1):
            a = count + 1 + k * n + ring
            b = count + 1 + k * n + (ring + 1) % n
            t += [np.stack([a, a + n, b + n], 1), np.stack([a, b + n, b], 1)]
        t = np.concatenate(t)
        tris.append(t if sgn > 0 else t[:, ::-1])
        segs.append(np.full(len(cv), 9000 if sgn > 0 else 9100))
        count += len(cv)
    return (np.concatenate(verts), np.concatenate(normals), np.concatenate(tris).astype(np.int64),
            np.concatenate(segs).astype(np.int64))


def part_mesh(part: Part, spacing: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mesh of one part in its local frame: (verts (n,3), normals (n,3), tris (m,3), segment keys (n,)).

    Unused vertices (cut out by holes) are dropped.
    """
    if part.shape == "cylinder":
        v, nrm, t, seg = _cylinder(part, spacing)
    else:
        pieces = [_box_face(part, f, spacing, i) for i, f in enumerate(part.faces) if f in _FACE_AXIS]
        offs = np.cumsum([0] + [len(p[0]) for p in pieces])
        v = np.concatenate([p[0] for p in pieces])
        nrm = np.concatenate([p[1] for p in pieces])
        t = np.concatenate([p[2] + o for p, o in zip(pieces, offs)])
        seg = np.concatenate([p[3] for p in pieces])
    used = np.zeros(len(v), dtype=bool)
    used[t.ravel()] = True
    if not used.all():
        remap = np.cumsum(used) - 1
        v, nrm, seg, t = v[used], nrm[used], seg[used], remap[t]
    return v, nrm, t, seg


def build_scene_mesh(objects: list[SceneObject], spacing: float | None) -> SceneMesh:
    """Mesh every part of every object (world frame parts) into one :class:`SceneMesh`.

    Part ids count parts in object order, so the dense and render meshes of the
    same (or moved) objects share ids.
    """
    verts, norms, tris, vpart, fpart, segs, part_obj = [], [], [], [], [], [], []
    offset = 0
    pid = 0
    for oi, obj in enumerate(objects):
        for part in obj.parts:
            v, nrm, t, seg = part_mesh(part, spacing)
            r = rot_z(part.yaw)
            verts.append(v @ r.T + part.center)
            norms.append(nrm @ r.T)
            tris.append(t + offset)
            vpart.append(np.full(len(v), pid, dtype=np.int32))
            fpart.append(np.full(len(t), pid, dtype=np.int32))
            segs.append(seg + pid * 1_000_000)
            part_obj.append(oi)
            offset += len(v)
            pid += 1
    seg_all = np.concatenate(segs)
    _, seg_ids = np.unique(seg_all, return_inverse=True)
    return SceneMesh(
        vertices=np.concatenate(verts), normals=np.concatenate(norms),
        faces=np.concatenate(tris).astype(np.int32), vertex_part=np.concatenate(vpart),
        face_part=np.concatenate(fpart), vertex_segment=seg_ids.astype(np.int64).ravel(),
        part_object=np.asarray(part_obj, dtype=np.int32),
    )


def material_table(objects: list[SceneObject]) -> MaterialTable:
    """Per-part materials and frames (world) in the part-id order of :func:`build_scene_mesh`."""
    parts = [p for obj in objects for p in obj.parts]
    return MaterialTable.from_parts([p.material for p in parts], np.array([p.center for p in parts]),
                                    np.array([p.yaw for p in parts]), np.array([p.size for p in parts]))
