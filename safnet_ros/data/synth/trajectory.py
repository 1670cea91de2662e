"""Camera paths through a room: a handheld scan in free space (:func:`scan_trajectory`, ``--trajectory
scan``) and the older outward loop (:func:`handheld_trajectory`, ``--trajectory loop``).

Both are deterministic given the generator and return (frames, 4, 4) camera-to-world
poses in the room's aligned frame ``[0, W] x [0, D]``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra


def look_at_pose(position: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV optical axes, for a camera at ``position`` (3,) metres.

    ``yaw`` is the heading about +z (0 = looking along +x), ``pitch`` > 0 looks
    down, ``roll`` rotates about the optical axis (radians).
    """
    f = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    cr, sr = math.cos(roll), math.sin(roll)
    x = cr * right + sr * down
    y = -sr * right + cr * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, f, position
    return pose


def handheld_trajectory(rng: np.random.Generator, width: float, depth: float, frames: int,
                        overlap: float | None = None, hfov_deg: float = 58.0, margin: float = 1.3) -> np.ndarray:
    """The outward loop: (frames, 4, 4) camera-to-world poses in the room's aligned frame.

    The camera walks a rounded-rectangle loop at least ``margin`` metres (and 28 %
    of the room's size) inside the walls, at 1.2-1.7 m height, looking outwards
    with a slow sideways sway, pitched down 13-37 degrees, with a little roll and
    hand jitter; all motion is smooth (low-frequency sinusoids of the loop angle).
    By default the frames cover one loop; ``overlap`` in (0, 1) instead advances
    the view ``(1 - overlap)`` of the horizontal field of view per frame.
    """
    if frames <= 0:
        return np.zeros((0, 4, 4))
    step = 2 * math.pi / frames if overlap is None else (1.0 - float(overlap)) * math.radians(hfov_deg)
    phi0 = float(rng.uniform(0, 2 * math.pi))
    direction = 1.0 if rng.uniform() < 0.5 else -1.0
    phi = phi0 + direction * step * np.arange(frames)
    ph = rng.uniform(0, 2 * math.pi, size=8)
    a = max(min(width / 2 - margin, 0.22 * width), 0.3)
    b = max(min(depth / 2 - margin, 0.22 * depth), 0.3)
    # Rounded rectangle (smooth: tanh-squashed circle), with a slow radial wobble.
    k = 1.8
    c, s = np.tanh(k * np.cos(phi)) / math.tanh(k), np.tanh(k * np.sin(phi)) / math.tanh(k)
    wobble = 1.0 + 0.06 * np.sin(3 * phi + ph[0])
    x = width / 2 + a * c * wobble
    y = depth / 2 + b * s * wobble
    z = 1.45 + 0.18 * np.sin(2 * phi + ph[1]) + 0.05 * np.sin(7 * phi + ph[2])
    outward = np.arctan2(y - depth / 2, (x - width / 2) * (depth / width))
    yaw = outward + 0.9 * np.sin(2 * phi + ph[3]) + 0.25 * np.sin(5 * phi + ph[4])
    pitch = np.radians(25.0 + 12.0 * np.sin(3 * phi + ph[5]))
    roll = np.radians(3.0 * np.sin(4 * phi + ph[6]))
    # Hand jitter: small, smooth, a few mm and a fraction of a degree.
    t = np.arange(frames)
    jitter = 0.004 * np.stack([np.sin(0.31 * t + ph[7]), np.sin(0.23 * t + ph[0]), np.sin(0.37 * t + ph[1])], 1)
    pos = np.stack([x, y, z], 1) + jitter
    yaw = yaw + np.radians(0.3) * np.sin(0.29 * t + ph[2])
    return np.stack([look_at_pose(pos[i], yaw[i], pitch[i], roll[i]) for i in range(frames)])


# ------------------------------------------------------------------ handheld scan of a furnished room

#: Clearance (metres) the scan path keeps from walls and from furniture footprints.
WALL_CLEARANCE = 0.4
FURNITURE_CLEARANCE = 0.3
#: Cell size (metres) of the free-space grid the path is planned on.
GRID_CELL = 0.04


def free_space(width: float, depth: float,
               footprints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-space grid of a room for the camera holder: (free (nx, ny) bool, cell centres x (nx,), y (ny,)).

    A GRID_CELL cell is free when it lies WALL_CLEARANCE inside the walls and
    FURNITURE_CLEARANCE outside every footprint ``[xmin, ymin, xmax, ymax]``
    (K, 4) metres (aligned frame): the camera is never inside or over furniture.
    """
    cell, wall, c = GRID_CELL, WALL_CLEARANCE, FURNITURE_CLEARANCE
    xs = np.arange(cell / 2, width, cell)
    ys = np.arange(cell / 2, depth, cell)
    free = ((xs[:, None] > wall) & (xs[:, None] < width - wall)
            & (ys[None, :] > wall) & (ys[None, :] < depth - wall))
    for x0, y0, x1, y1 in np.asarray(footprints, dtype=np.float64).reshape(-1, 4):
        ix = (xs > x0 - c) & (xs < x1 + c)
        iy = (ys > y0 - c) & (ys < y1 + c)
        free[np.ix_(ix, iy)] = False
    return free, xs, ys


class _FreeSpace:
    """Projects points (N, 2) onto the nearest free cell of a :func:`free_space` grid."""

    def __init__(self, free: np.ndarray, xs: np.ndarray, ys: np.ndarray, cell: float):
        # Keep the largest connected free region: pockets cut off by furniture are never walked into.
        lab, n = ndimage.label(free, structure=np.ones((3, 3)))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            free = lab == int(np.argmax(sizes))
        self.free, self.xs, self.ys, self.cell = free, xs, ys, cell
        _, idx = ndimage.distance_transform_edt(~free, return_indices=True)
        self.nearest = idx  # (2, nx, ny) indices of the nearest free cell
        self._g: csr_matrix | None = None  # the cell graph, built on first use (_graph)

    def cells(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid indices (ix (N,), iy (N,)) of points ``p`` (N, 2) metres, clipped to the grid."""
        ix = np.clip(np.floor(p[:, 0] / self.cell).astype(np.int64), 0, len(self.xs) - 1)
        iy = np.clip(np.floor(p[:, 1] / self.cell).astype(np.int64), 0, len(self.ys) - 1)
        return ix, iy

    def is_free(self, p: np.ndarray) -> np.ndarray:
        """(N,) bool: the cell of each point ``p`` (N, 2) is in the kept free region."""
        ix, iy = self.cells(p)
        return self.free[ix, iy]

    def _graph(self) -> csr_matrix:
        """8-connected graph of the free cells (scipy sparse, edge weights in metres), built once."""
        if self._g is None:
            nx, ny = self.free.shape
            ids = np.arange(nx * ny).reshape(nx, ny)
            rows, cols, w = [], [], []
            for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
                a = self.free[max(0, -dx):nx - max(0, dx), max(0, -dy):ny - max(0, dy)]
                b = self.free[max(0, dx):nx - max(0, -dx) or None, max(0, dy):ny - max(0, -dy) or None]
                both = a & b
                ia = ids[max(0, -dx):nx - max(0, dx), max(0, -dy):ny - max(0, dy)][both]
                ib = ids[max(0, dx):nx - max(0, -dx) or None, max(0, dy):ny - max(0, -dy) or None][both]
                rows += [ia, ib]
                cols += [ib, ia]
                w += [np.full(2 * len(ia), self.cell * math.hypot(dx, dy))]
            self._g = coo_matrix((np.concatenate(w) if w else np.zeros(0),
                                  (np.concatenate(rows), np.concatenate(cols))), shape=(nx * ny, nx * ny)).tocsr()
        return self._g

    def connect(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cell centres (K, 2) of a shortest free-space walk from free point ``a`` (2,) to ``b`` (2,), ends excluded;
        empty when they are not connected."""
        ny = self.free.shape[1]
        (ia,), (ja,) = self.cells(a[None])
        (ib,), (jb,) = self.cells(b[None])
        src, dst = ia * ny + ja, ib * ny + jb
        dist, pred = dijkstra(self._graph(), indices=src, return_predecessors=True)
        if not np.isfinite(dist[dst]):
            return np.zeros((0, 2))
        path = []
        k = pred[dst]
        while k >= 0 and k != src:
            path.append(k)
            k = pred[k]
        path = np.array(path[::-1], dtype=np.int64)
        return np.stack([self.xs[path // ny], self.ys[path % ny]], 1)

    def project(self, p: np.ndarray) -> np.ndarray:
        """Points in obstacles move to the nearest free cell centre; free points stay."""
        ix, iy = self.cells(p)
        out = p.copy()
        bad = ~self.free[ix, iy]
        if bad.any():
            jx, jy = self.nearest[0][ix[bad], iy[bad]], self.nearest[1][ix[bad], iy[bad]]
            out[bad, 0], out[bad, 1] = self.xs[jx], self.ys[jy]
        return out


def _smooth_noise(rng: np.random.Generator, n: int, corr: float, dims: int = 1) -> np.ndarray:
    """(n, dims) zero-mean, unit-std noise, smooth over ``corr`` samples (Gaussian-filtered white noise)."""
    white = rng.standard_normal((n + int(6 * corr) + 2, dims))
    sm = ndimage.gaussian_filter1d(white, max(corr, 1e-3), axis=0, mode="wrap")[: n]
    return sm / max(float(sm.std()), 1e-9) if n > 1 else sm * 0.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def scan_trajectory(rng: np.random.Generator, width: float, depth: float, height: float, frames: int,
                    footprints: np.ndarray, targets: np.ndarray, hfov_deg: float = 58.0,
                    frames_per_loop: int = 300) -> np.ndarray:
    """(frames, 4, 4) camera-to-world poses of a handheld scan of a furnished room (aligned frame).

    The way a person scans a room for ScanNet (docs/synthetic_data.md, step 2):
    loops in free space (:func:`free_space`) at varying distance from the walls,
    one per ``frames_per_loop`` frames, with vertical sweeps, sideways sway,
    inward views and close passes of furniture (``targets`` (K, 3): its centre,
    aligned frame). ``footprints`` (K', 4) are the obstacles ``[xmin, ymin, xmax, ymax]``.
    Raises ValueError when the room has no free space for the walk.
    """
    if frames <= 0:
        return np.zeros((0, 4, 4))
    free, xs, ys = free_space(width, depth, footprints)
    if free.sum() < 20:
        raise ValueError(f"the room ({width:.2f} x {depth:.2f} m) has no free floor for a scan trajectory")
    fs = _FreeSpace(free, xs, ys, GRID_CELL)
    loops = max(1.0, frames / float(frames_per_loop))
    ph = rng.uniform(0, 2 * math.pi, size=16)
    direction = 1.0 if rng.uniform() < 0.5 else -1.0
    # Control path: 96 points per loop on rays from the room centre through a rounded rectangle; on each
    # ray the camera stands at the wanted distance from the wall, or further in where furniture is there
    # (the inset widened smoothly before and after it), so the walk goes around furniture without jumps.
    n_ctrl = int(math.ceil(96 * loops))
    s = np.arange(n_ctrl) / 96.0  # loop parameter (1 = one loop)
    phi = ph[0] + direction * 2 * math.pi * s
    half = min(width, depth) / 2
    max_inset = max(0.45, half - 0.3)
    want = 1.3 + 0.55 * np.sin(2 * math.pi * s * 1.37 + ph[1]) + 0.3 * np.sin(2 * math.pi * s * 3.1 + ph[2])
    want = np.clip(want, 0.6, max(0.6, min(2.2, max_inset)))
    k = 1.8
    c, sn = np.tanh(k * np.cos(phi)) / math.tanh(k), np.tanh(k * np.sin(phi)) / math.tanh(k)

    def at(inset: np.ndarray) -> np.ndarray:
        return np.stack([width / 2 + c * (width / 2 - inset), depth / 2 + sn * (depth / 2 - inset)], -1)

    cand = np.arange(0.4, max_inset + 1e-9, GRID_CELL)
    pts = np.stack([width / 2 + c[:, None] * (width / 2 - cand[None, :]),
                    depth / 2 + sn[:, None] * (depth / 2 - cand[None, :])], -1)  # (n_ctrl, n_cand, 2)
    ok = fs.is_free(pts.reshape(-1, 2)).reshape(len(c), len(cand))
    inward_ok = ok & (cand[None, :] >= want[:, None] - 1e-9)
    first_in = np.where(inward_ok.any(1), cand[np.argmax(inward_ok, 1)], np.nan)
    # No free spot further in: the free spot nearest to the wanted distance.
    nearest = cand[np.argmin(np.where(ok, np.abs(cand[None, :] - want[:, None]), np.inf), 1)]
    need = np.where(np.isnan(first_in), nearest, first_in)
    mode = "wrap" if abs(loops - round(loops)) < 1e-9 else "nearest"
    inset = ndimage.gaussian_filter1d(ndimage.maximum_filter1d(need, size=7, mode=mode), 2.0, mode=mode)
    inset = np.maximum(inset, need)
    p = fs.project(at(inset))
    # Where the free space forces a detour, walk around the obstacle on the grid instead of jumping.
    for smooth_after in (True, False):
        hops = np.linalg.norm(np.diff(p, axis=0), axis=1)
        if not (hops > 0.25).any():
            break
        pieces = [p[:1]]
        for i in range(1, len(p)):
            if hops[i - 1] > 0.25:
                pieces.append(fs.connect(p[i - 1], p[i]))
            pieces.append(p[i:i + 1])
        p = np.concatenate(pieces)
        if smooth_after:
            p = fs.project(ndimage.gaussian_filter1d(p, 1.0, axis=0, mode="nearest"))
    keep = np.concatenate([[True], np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-6])
    p, s = p[keep], np.interp(np.flatnonzero(keep), np.arange(len(keep)),
                              np.interp(np.arange(len(keep)), np.linspace(0, len(keep) - 1, len(s)), s))
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, arc[-1], frames) if frames > 1 else np.zeros(1)
    pos = np.stack([np.interp(t, arc, p[:, 0]), np.interp(t, arc, p[:, 1])], 1)
    wob = 0.03 * _smooth_noise(rng, frames, 8.0, 2)
    pos = np.where(fs.is_free(pos + wob)[:, None], pos + wob, pos)
    pos = fs.project(pos)
    u = np.interp(t, arc, s)  # loop parameter per frame

    centre = np.array([width / 2, depth / 2])
    rel = (pos - centre) / np.array([width, depth])
    outward = np.arctan2(rel[:, 1], rel[:, 0])
    sway = 0.75 * np.sin(2 * math.pi * u * 3.3 + ph[3]) + 0.3 * np.sin(2 * math.pi * u * 7.7 + ph[4])
    yaw_dir = np.stack([np.cos(outward + sway), np.sin(outward + sway)], 1)
    # Inward episodes: a few per loop, the view turns to the middle of the room.
    w_in = _smoothstep((np.sin(2 * math.pi * u * 2.3 + ph[5]) - 0.55) / 0.3)
    inward = centre + 0.6 * _smooth_noise(rng, frames, 20.0, 2) - pos
    inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-6)
    # Close passes: turn to furniture within 1.5 m.
    tg = np.asarray(targets, dtype=np.float64).reshape(-1, 3)
    w_f = np.zeros(frames)
    to_f = yaw_dir.copy()
    pitch_f = np.zeros(frames)
    if len(tg):
        d = np.linalg.norm(pos[:, None, :] - tg[None, :, :2], axis=2)
        j = np.argmin(d, axis=1)
        dmin = d[np.arange(frames), j]
        w_f = 0.8 * _smoothstep((1.5 - dmin) / 0.6) * _smoothstep(np.sin(2 * math.pi * u * 4.1 + ph[6]) + 0.3)
        to_f = tg[j, :2] - pos
        to_f /= np.maximum(np.linalg.norm(to_f, axis=1, keepdims=True), 1e-6)
        cam_z = 1.45
        pitch_f = np.arctan2(cam_z - tg[j, 2], np.maximum(dmin, 0.3))
    sigma = 2.5 if frames >= 30 else 1e-3
    w_f = ndimage.gaussian_filter1d(w_f, sigma, mode="nearest")
    to_f = ndimage.gaussian_filter1d(to_f, sigma, axis=0, mode="nearest")
    pitch_f = ndimage.gaussian_filter1d(pitch_f, sigma, mode="nearest")
    # Turning between outward and inward views goes through the side the sway points to.
    side = np.stack([-yaw_dir[:, 1], yaw_dir[:, 0]], 1) * np.sign(np.sin(sway) + 1e-9)[:, None]
    look = yaw_dir * (1 - w_in)[:, None] + inward * w_in[:, None] + side * (4 * w_in * (1 - w_in))[:, None]
    look = look * (1 - w_f)[:, None] + to_f * w_f[:, None]
    look = ndimage.gaussian_filter1d(look, sigma, axis=0, mode="nearest")
    weak = np.linalg.norm(look, axis=1) < 1e-3
    look[weak] = yaw_dir[weak]
    yaw = ndimage.gaussian_filter1d(np.unwrap(np.arctan2(look[:, 1], look[:, 0])), sigma / 2, mode="nearest")
    # Vertical sweeps: up to the upper walls and the ceiling edge, down to the floor by the walls.
    sweep = (np.sin(2 * math.pi * u * 9.0 + ph[7]) + 0.25 * np.sin(2 * math.pi * u * 23.0 + ph[8])) / 1.25
    pitch = np.radians(6.0 + 50.0 * sweep)  # -44 .. +56 degrees (positive looks down)
    pitch = pitch * (1 - w_in) + np.radians(28.0) * w_in
    pitch = pitch * (1 - w_f) + pitch_f * w_f
    z = 1.45 + 0.15 * np.sin(2 * math.pi * u * 1.9 + ph[9]) + 0.05 * _smooth_noise(rng, frames, 10.0)[:, 0]
    z = np.clip(z, 1.2, min(1.75, height - 0.4))
    roll = np.radians(3.0) * _smooth_noise(rng, frames, 15.0)[:, 0]
    # Hand jitter: a few mm and a fraction of a degree, correlated over a few frames.
    jit = _smooth_noise(rng, frames, 3.0, 5)
    yaw = yaw + np.radians(0.8) * jit[:, 0]
    pitch = pitch + np.radians(0.8) * jit[:, 1]
    xyz = np.concatenate([pos, z[:, None]], 1)
    xyz[:, :2] += 0.004 * jit[:, 2:4]
    xyz[:, 2] += 0.004 * jit[:, 4]
    return np.stack([look_at_pose(xyz[i], yaw[i], pitch[i], roll[i]) for i in range(frames)])
