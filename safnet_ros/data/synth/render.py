"""RGB-D rendering of a scene mesh by CPU ray casting (open3d ``RaycastingScene``).

Cameras follow the OpenCV optical convention (z forward, x right, y down) and
poses are camera-to-world (4, 4), as ScanNet stores them. A pixel (u, v) looks
along ``K^-1 [u, v, 1]`` (pixel centres at integer coordinates, the convention
our back-projection uses). Because that direction has camera z = 1, open3d's
hit distance (in units of the direction length) *is* the z-depth.

Colour = procedural albedo at the hit point (:func:`appearance.albedo`) times
Lambert lighting (:func:`appearance.shade`), with mild vignetting; everything
is vectorised over the frame's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from safnet_ros.data.synth.appearance import Lighting, MaterialTable, albedo, shade
from safnet_ros.data.synth.meshes import SceneMesh

#: Darkening of the image corners (1 - VIGNETTING * r^2 / 2, r = 1 at the middle of the left/right edge).
VIGNETTING = 0.22


def pinhole(width: int, height: int, hfov_deg: float = 58.0) -> np.ndarray:
    """A (3, 3) intrinsic matrix with the given horizontal field of view, square pixels, centred."""
    fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])


def camera_rays(K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel ray directions in the camera frame, z = 1: (H*W, 3) float64, row-major."""
    w, h = size
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x.ravel(), y.ravel(), np.ones(w * h)], axis=1).astype(np.float32)


@dataclass
class DepthRender:
    """z-depth (H, W) float32 metres (0 where no surface), |cos| of the incidence angle (H, W), and
    ``glass`` (H, W) bool where the surface is a window pane (no structured-light return), when known."""

    depth: np.ndarray
    incidence: np.ndarray
    glass: np.ndarray | None = None


class Renderer:
    """Ray-casts one scene mesh; build once per scene state (moved objects need their own).

    ``mesh`` is usually the coarse render mesh (``build_scene_mesh(..., None)``),
    ``table`` its per-part materials and frames, ``lighting`` in world metres.
    """

    def __init__(self, mesh: SceneMesh, table: MaterialTable, lighting: Lighting):
        self.table = table
        self.lighting = lighting
        self.face_part = mesh.face_part
        self.scene = o3d.t.geometry.RaycastingScene()
        tmesh = o3d.t.geometry.TriangleMesh()
        tmesh.vertex.positions = o3d.core.Tensor(mesh.vertices.astype(np.float32))
        tmesh.triangle.indices = o3d.core.Tensor(mesh.faces.astype(np.int32))
        self.scene.add_triangles(tmesh)
        self._ray_cache: dict[tuple, np.ndarray] = {}

    def _cast(self, camera_to_world: np.ndarray, K: np.ndarray, size: tuple[int, int]):
        key = (tuple(np.round(K.ravel(), 9)), tuple(size))
        dirs_cam = self._ray_cache.get(key)
        if dirs_cam is None:
            dirs_cam = self._ray_cache[key] = camera_rays(K, size)
        R = camera_to_world[:3, :3].astype(np.float32)
        rays = np.empty((len(dirs_cam), 6), dtype=np.float32)
        rays[:, :3] = camera_to_world[:3, 3]
        # Rotate without BLAS: a (N,3)@(3,3) matmul wakes BLAS threads that fight open3d's for 2 cores.
        dirs = rays[:, 3:]
        np.multiply(dirs_cam[:, 0:1], R[:, 0], out=dirs)
        dirs += dirs_cam[:, 1:2] * R[:, 1]
        dirs += dirs_cam[:, 2:3] * R[:, 2]
        out = self.scene.cast_rays(o3d.core.Tensor(rays))
        t_hit = out["t_hit"].numpy()
        prim = out["primitive_ids"].numpy()
        normals = out["primitive_normals"].numpy()
        return dirs, t_hit, prim, normals

    @staticmethod
    def _depth_from_cast(size, dirs, t_hit, normals) -> DepthRender:
        w, h = size
        hit = np.isfinite(t_hit)
        depth = np.where(hit, t_hit, np.float32(0.0)).astype(np.float32)
        dot = dirs[:, 0] * normals[:, 0] + dirs[:, 1] * normals[:, 1] + dirs[:, 2] * normals[:, 2]
        cos = np.abs(dot) / np.sqrt(dirs[:, 0] ** 2 + dirs[:, 1] ** 2 + dirs[:, 2] ** 2)
        inc = np.where(hit, np.nan_to_num(cos), np.float32(0.0)).astype(np.float32)
        return DepthRender(depth.reshape(h, w), inc.reshape(h, w))

    def render_rgbd(self, camera_to_world: np.ndarray, K_color: np.ndarray, color_size: tuple[int, int],
                    K_depth: np.ndarray, depth_size: tuple[int, int]) -> tuple[np.ndarray, DepthRender]:
        """Colour (Hc, Wc, 3) float32 in 0..1 and depth of one pose; one ray cast when the depth camera
        equals the colour camera (same intrinsics and size)."""
        cast = self._cast(camera_to_world, K_color, color_size)
        color = self._color_from_cast(camera_to_world, color_size, *cast)
        if tuple(color_size) != tuple(depth_size) or not np.allclose(K_color, K_depth):
            cast = self._cast(camera_to_world, K_depth, depth_size)
        dirs, t_hit, prim, normals = cast
        d = self._depth_from_cast(depth_size, dirs, t_hit, normals)
        hit = np.isfinite(t_hit)
        glass = np.zeros(len(prim), dtype=bool)
        if hit.any():
            glass[hit] = self.table.emissive[self.face_part[prim[hit]]]
        d.glass = glass.reshape(depth_size[1], depth_size[0])
        return color, d

    def _vignette(self, size: tuple[int, int]) -> np.ndarray:
        key = ("vignette", tuple(size))
        v = self._ray_cache.get(key)
        if v is None:
            w, h = size
            u = (np.arange(w) - w / 2.0) / (w / 2.0)
            y = (np.arange(h) - h / 2.0) / (w / 2.0)
            r2 = y[:, None] ** 2 + u[None, :] ** 2
            v = self._ray_cache[key] = (1.0 - VIGNETTING * r2 / 2.0).astype(np.float32)[:, :, None]
        return v

    def _color_from_cast(self, camera_to_world, size, dirs, t_hit, prim, normals) -> np.ndarray:
        w, h = size
        hit = np.isfinite(t_hit)
        all_hit = bool(hit.all())
        rgb = np.zeros((len(t_hit), 3), dtype=np.float32)
        if all_hit or hit.any():
            sel = slice(None) if all_hit else np.flatnonzero(hit)
            hit_dirs = dirs if all_hit else np.take(dirs, sel, axis=0)
            pts = camera_to_world[:3, 3].astype(np.float32) + hit_dirs * t_hit[sel, None]
            part = self.face_part[prim[sel]]
            nrm = normals if all_hit else np.take(normals, sel, axis=0)
            base = albedo(self.table, part, pts, nrm)
            rgb[sel] = shade(base, self.table.emissive[part], pts, nrm, self.lighting)
        rgb = rgb.reshape(h, w, 3)
        rgb *= self._vignette(size)
        return np.clip(rgb, 0.0, 1.0, out=rgb)
