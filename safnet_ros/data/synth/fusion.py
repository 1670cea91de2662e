"""The scanned mesh as ScanNet makes it: TSDF fusion of the frames, extraction, decimation, labels.

ScanNet's ``_vh_clean_2.ply`` is fused from the very depth frames of the
``.sens`` at the recorded poses (BundleFusion), extracted by marching cubes,
cleaned and decimated; annotators then paint labels on it. We do the same with
open3d's TSDF integration (docs/synthetic_data.md, step 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from safnet_ros.data.synth.meshes import SceneMesh

#: Vertices farther than this from every exact surface stay unannotated (metres).
LABEL_TOLERANCE = 0.06


@dataclass
class FusedMesh:
    """A fused mesh: ``vertices`` (V, 3) float64 metres, ``colors`` (V, 3) uint8, ``faces`` (F, 3) int32,
    ``normals`` (V, 3) unit."""

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray
    normals: np.ndarray


class TSDFFusion:
    """Integrates RGB-D frames into a sparse TSDF voxel-block grid (open3d ``t.geometry.VoxelBlockGrid``).

    ``voxel`` metres; truncation 4 voxels. ``K`` (3, 3) and ``size`` (w, h)
    describe the depth camera; colour is given at the depth size. Depth beyond
    ``max_depth`` metres is ignored.
    """

    def __init__(self, voxel: float, K: np.ndarray, size: tuple[int, int], max_depth: float = 5.0):
        c = o3d.core
        self.voxel = float(voxel)
        self.max_depth = float(max_depth)
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(c.float32, c.float32, c.float32),
            attr_channels=((1), (1), (3)), voxel_size=self.voxel, block_resolution=8, block_count=20000,
            device=c.Device("CPU:0"))
        self.size = (int(size[0]), int(size[1]))
        self.K = c.Tensor(np.asarray(K, dtype=np.float64))
        self.frames = 0

    def integrate(self, color: np.ndarray, depth_mm: np.ndarray, camera_to_world: np.ndarray) -> None:
        """Add one frame: ``color`` (H, W, 3) uint8 at the depth size, ``depth_mm`` (H, W) uint16, pose (4, 4).

        Frames with a non-finite pose (lost tracking) are skipped, as a reconstruction skips them.
        """
        if not np.isfinite(camera_to_world).all():
            return
        c = o3d.core
        depth = o3d.t.geometry.Image(c.Tensor(np.ascontiguousarray(depth_mm, dtype=np.uint16)))
        colour = o3d.t.geometry.Image(c.Tensor(np.ascontiguousarray(color, dtype=np.uint8)))
        extrinsic = c.Tensor(np.linalg.inv(np.asarray(camera_to_world, dtype=np.float64)))
        blocks = self.grid.compute_unique_block_coordinates(depth, self.K, extrinsic, 1000.0, self.max_depth,
                                                            trunc_voxel_multiplier=4.0)
        self.grid.integrate(blocks, depth, colour, self.K, self.K, extrinsic, 1000.0, self.max_depth,
                            trunc_voxel_multiplier=4.0)
        self.frames += 1

    def extract(self) -> o3d.geometry.TriangleMesh:
        """The marching-cubes mesh as an open3d legacy TriangleMesh with vertex colours (0..1).

        Voxels seen by fewer than two frames are left out (one-off outliers) when 150 or more frames were fused;
        sparser scans keep what one frame saw.
        """
        threshold = 1.5 if self.frames >= 150 else 0.5
        mesh = self.grid.extract_triangle_mesh(weight_threshold=threshold)
        return mesh.to_legacy()


def clean_and_decimate(mesh: o3d.geometry.TriangleMesh, spacing: float | None, min_piece: int = 60) -> FusedMesh:
    """Remove pieces of fewer than ``min_piece`` triangles, decimate to a mean vertex ``spacing``, tidy.

    Decimation (quadric edge collapse) targets the vertex count of a regular
    triangulation of the same area at ``spacing`` metres; ``None`` keeps the
    marching-cubes resolution. Raises ValueError when nothing is left.
    """
    if len(mesh.triangles) == 0:
        raise ValueError("the TSDF holds no surface (no valid depth was integrated)")
    mesh = canonical_order(mesh)
    clusters, counts, _ = mesh.cluster_connected_triangles()
    clusters, counts = np.asarray(clusters), np.asarray(counts)
    small = counts[clusters] < min(min_piece, max(counts.max() // 10, 1))
    if small.any():
        mesh.remove_triangles_by_mask(small)
        mesh.remove_unreferenced_vertices()
    if spacing is not None and len(mesh.triangles):
        area = mesh.get_surface_area()
        target_vertices = int(area * 2.0 / (np.sqrt(3.0) * spacing * spacing))
        if target_vertices * 2 < len(mesh.triangles):
            mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=max(4, 2 * target_vertices))
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_unreferenced_vertices()
    if len(mesh.triangles) == 0:
        raise ValueError("the fused mesh is empty after cleaning")
    mesh.compute_vertex_normals()
    colors = np.asarray(mesh.vertex_colors)
    rgb = np.clip(np.rint(colors * 255.0), 0, 255).astype(np.uint8) if len(colors) else \
        np.full((len(mesh.vertices), 3), 128, np.uint8)
    return FusedMesh(np.asarray(mesh.vertices, dtype=np.float64), rgb, np.asarray(mesh.triangles, dtype=np.int32),
                     np.asarray(mesh.vertex_normals, dtype=np.float64))


def canonical_order(mesh: o3d.geometry.TriangleMesh) -> o3d.geometry.TriangleMesh:
    """The same mesh with vertices sorted by position and faces sorted (orientation kept).

    The voxel-block hash map is filled in parallel, so marching cubes emits the
    same surface in a varying order; sorting makes everything after it (and the
    written bytes) deterministic.
    """
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.triangles).astype(np.int64)
    col = np.asarray(mesh.vertex_colors)
    order = np.lexsort((v[:, 2], v[:, 1], v[:, 0]))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    f = rank[f]
    roll = np.argmin(f, axis=1)  # rotate each face so its smallest index comes first
    f = np.stack([f[np.arange(len(f)), (roll + k) % 3] for k in range(3)], 1)
    f = f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]
    out = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v[order]), o3d.utility.Vector3iVector(f.astype(np.int32)))
    if len(col) == len(v):
        out.vertex_colors = o3d.utility.Vector3dVector(col[order])
    return out


def _closest_object(scene_mesh: SceneMesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance (N,), object index (N,)) of the nearest surface of a :class:`SceneMesh` to ``points`` (N, 3)."""
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(scene_mesh.vertices.astype(np.float32)),
                     o3d.core.Tensor(scene_mesh.faces.astype(np.uint32)))
    q = o3d.core.Tensor(points.astype(np.float32))
    ans = rs.compute_closest_points(q)
    prim = ans["primitive_ids"].numpy().astype(np.int64)
    dist = np.linalg.norm(ans["points"].numpy() - points.astype(np.float32), axis=1)
    obj = scene_mesh.part_object[scene_mesh.face_part[prim]].astype(np.int64)
    return dist, obj


def transfer_labels(points: np.ndarray, state_meshes: list[SceneMesh], tolerance: float = LABEL_TOLERANCE) -> np.ndarray:
    """(N,) object index per fused vertex, -1 where unannotated.

    ``state_meshes``: the exact scene (a :class:`~safnet_ros.data.synth.meshes.SceneMesh`
    with consistent object indices) in each state it had during the scan. A
    vertex takes the object of the nearest exact surface in each state where
    that surface is within ``tolerance``; states that disagree make it
    ambiguous (-1), as does no surface within reach (fusion artefacts).
    """
    n = len(points)
    label = np.full(n, -1, dtype=np.int64)
    conflict = np.zeros(n, dtype=bool)
    for sm in state_meshes:
        dist, obj = _closest_object(sm, points)
        near = dist < tolerance
        fresh = near & (label < 0)
        conflict |= near & (label >= 0) & (label != obj)
        label[fresh] = obj[fresh]
    label[conflict] = -1
    return label


def near_objects(points: np.ndarray, state_meshes: list[SceneMesh], objects: set[int],
                 tolerance: float = 0.08) -> np.ndarray:
    """(N,) bool: points within ``tolerance`` of a surface of one of ``objects`` in any state (moved objects)."""
    out = np.zeros(len(points), dtype=bool)
    if not objects:
        return out
    for sm in state_meshes:
        dist, obj = _closest_object(sm, points)
        out |= (dist < tolerance) & np.isin(obj, sorted(objects))
    return out


def segment_ids(vertices: np.ndarray, normals: np.ndarray, vertex_object: np.ndarray, block: float = 0.5) -> np.ndarray:
    """(V,) over-segmentation ids: one per (object, dominant normal direction, ``block`` m cube).

    Every segment lies on one object (or on unannotated vertices only), as
    ScanNet's segments lie within one annotated instance.
    """
    axis = np.argmax(np.abs(normals), axis=1)
    sign = np.take_along_axis(normals, axis[:, None], 1)[:, 0] >= 0
    cell = np.floor(vertices / block).astype(np.int64)
    cell -= cell.min(axis=0) if len(cell) else 0
    key = np.stack([vertex_object + 1, axis * 2 + sign, cell[:, 0], cell[:, 1], cell[:, 2]], 1)
    _, ids = np.unique(key, axis=0, return_inverse=True)
    return ids.astype(np.int64).ravel()
