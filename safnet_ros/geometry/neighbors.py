"""Neighbour search on batched point clouds: kNN, ball query, FPS, 3-NN interpolation.

One interface, two implementations picked by the tensor's device:

* ``"torch"`` (default for CUDA tensors): blocks of queries against all references
  with :func:`torch.cdist` + :func:`torch.topk`, so memory stays bounded
  (``block_rows x M <= _MAX_BLOCK_ELEMENTS`` distances at a time).
* ``"kdtree"`` (default for CPU tensors; a dense distance matrix is far too slow
  there): a KD-tree per batch element, queried with all cores. The tree is
  pykdtree's where it is installed (faster; docs/model.md) and
  :class:`scipy.spatial.cKDTree` otherwise; ``SAFNET_KDTREE=scipy`` or
  ``pykdtree`` forces one. Both search exactly, in float64, so they return the
  same neighbours. Farthest point sampling runs the torch path's loop in numpy
  (same arithmetic, same indices, less per-call overhead).

The backend can be forced with the ``backend=`` keyword or the environment variable
``SAFNET_NEIGHBORS_BACKEND`` (``auto`` | ``torch`` | ``kdtree``), which is how the
tests compare the two paths on the CPU.

Conventions shared by all functions:

* coordinates are ``(B, N, 3)`` float tensors in metres;
* ``ref_mask`` / ``mask`` are ``(B, M)`` bool, ``False`` for padding; padded points
  are never returned as neighbours or samples;
* indices are ``long`` and carry no gradient; distances are recomputed in torch
  from the gathered coordinates, so they are differentiable w.r.t. both clouds.

Unlike the original PointNet++ CUDA ``ball_query`` (the *first* k points in index
order inside the radius), :func:`ball_query` here returns the k *nearest* points
inside the radius, sorted by distance: the result then does not depend on the
order of the points, and both backends agree.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

from safnet_ros.errors import ConfigError

__all__ = [
    "knn",
    "ball_query",
    "farthest_point_sample",
    "three_nn_interpolate",
    "three_nn_weights",
    "interpolate_rows",
    "gather",
    "BACKENDS",
    "KDTREE_LIBRARY",
]

BACKENDS = ("auto", "torch", "kdtree")


_ENV_KDTREE = "SAFNET_KDTREE"


def _kdtree_library() -> str:
    """``$SAFNET_KDTREE`` (``pykdtree`` | ``scipy``) if set, else pykdtree when installed."""
    wanted = os.environ.get(_ENV_KDTREE, "auto").strip().lower()
    if wanted not in ("auto", "pykdtree", "scipy"):
        raise ConfigError(f"${_ENV_KDTREE} must be auto, pykdtree or scipy, got {wanted!r}")
    if wanted == "scipy":
        return "scipy"
    try:
        import pykdtree.kdtree  # noqa: F401, PLC0415 - optional dependency (scipy is the fallback)
    except ImportError as exc:
        if wanted == "pykdtree":
            raise ConfigError(f"${_ENV_KDTREE}=pykdtree but pykdtree is not installed (pip install pykdtree)") from exc
        return "scipy"
    return "pykdtree"


# The CPU KD-tree: "pykdtree" when installed, else "scipy" (module docstring).
KDTREE_LIBRARY = _kdtree_library()
_ENV_BACKEND = "SAFNET_NEIGHBORS_BACKEND"
# Most distances held at once by the torch path (64M float32 = 256 MiB).
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024


# --------------------------------------------------------------------------- helpers
def gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched row lookup: ``values (B, M, C)`` at ``idx (B, ...)`` long in ``[0, M)`` -> ``(B, ..., C)``.

    Differentiable w.r.t. ``values``. One ``index_select`` over the flattened
    ``(B * M, C)`` rows: the values of ``torch.gather`` with an expanded index,
    several times faster on a CPU.
    """
    batch, rows, channels = values.shape
    offset = (torch.arange(batch, device=idx.device) * rows).view(batch, *([1] * (idx.dim() - 1)))
    flat = values.reshape(batch * rows, channels).index_select(0, (idx + offset).reshape(-1))
    return flat.view(*idx.shape, channels)


def _resolve_backend(device: torch.device, backend: Optional[str]) -> str:
    """Which implementation runs: ``"torch"`` or ``"kdtree"``."""
    choice = backend if backend is not None else os.environ.get(_ENV_BACKEND, "auto")
    choice = choice.strip().lower()
    if choice not in BACKENDS:
        raise ConfigError(
            f"neighbour backend must be one of {BACKENDS}, got {choice!r}"
            f" (keyword backend= or ${_ENV_BACKEND})"
        )
    if choice == "auto":
        return "kdtree" if device.type == "cpu" else "torch"
    return choice


def _check_clouds(query: torch.Tensor, ref: torch.Tensor, ref_mask: Optional[torch.Tensor]) -> None:
    if query.dim() != 3 or query.shape[-1] != 3:
        raise ValueError(f"query must be (B, N, 3), got {tuple(query.shape)}")
    if ref.dim() != 3 or ref.shape[-1] != 3:
        raise ValueError(f"ref must be (B, M, 3), got {tuple(ref.shape)}")
    if query.shape[0] != ref.shape[0]:
        raise ValueError(f"batch sizes differ: query {query.shape[0]}, ref {ref.shape[0]}")
    if ref_mask is not None and tuple(ref_mask.shape) != tuple(ref.shape[:2]):
        raise ValueError(f"ref_mask must be {tuple(ref.shape[:2])}, got {tuple(ref_mask.shape)}")


def _pair_distance(query: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ``(B, N, k)`` between each query point and ``ref`` at ``idx``.

    Computed from the gathered coordinates so autograd reaches both clouds.
    """
    neighbours = gather(ref, idx)  # (B, N, k, 3)
    return torch.linalg.vector_norm(query.unsqueeze(2) - neighbours, dim=-1)


# --------------------------------------------------------------------------- raw search
def _search_torch(
    query: torch.Tensor, ref: torch.Tensor, k: int, ref_mask: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest valid refs by blocked cdist + topk.

    Returns ``(found (B,N,k) bool, idx (B,N,k) long)`` sorted by distance; slots
    beyond the number of valid refs are ``found=False``.
    """
    batch, n, _ = query.shape
    m = ref.shape[1]
    idx = torch.zeros(batch, n, k, dtype=torch.long, device=query.device)
    found = torch.zeros(batch, n, k, dtype=torch.bool, device=query.device)
    k_eff = min(k, m)
    if k_eff == 0 or n == 0:
        return found, idx
    rows = max(1, _MAX_BLOCK_ELEMENTS // m)
    q_all = query.detach()
    r_all = ref.detach()
    for b in range(batch):
        # Centre on the reference cloud: keeps float32 distances well conditioned.
        centre = r_all[b].mean(dim=0, keepdim=True)
        r = (r_all[b] - centre).unsqueeze(0)
        for start in range(0, n, rows):
            q = (q_all[b, start:start + rows] - centre).unsqueeze(0)
            d = torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist")[0]
            if ref_mask is not None:
                d = d.masked_fill(~ref_mask[b].unsqueeze(0), float("inf"))
            dk, ik = torch.topk(d, k_eff, dim=1, largest=False, sorted=True)
            stop = start + q.shape[1]
            idx[b, start:stop, :k_eff] = torch.where(torch.isfinite(dk), ik, 0)
            found[b, start:stop, :k_eff] = torch.isfinite(dk)
    return found, idx


def _search_kdtree(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    ref_mask: Optional[torch.Tensor],
    upper_bound: float = float("inf"),
    query_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest valid refs (closer than ``upper_bound``) with a KD-tree per batch element.

    Same return convention as :func:`_search_torch`. Query rows with ``query_mask``
    False are not searched (nothing found).
    """
    batch, n, _ = query.shape
    q_np = query.detach().to("cpu", torch.float64).numpy()
    r_np = ref.detach().to("cpu", torch.float64).numpy()
    m_np = None if ref_mask is None else ref_mask.detach().to("cpu").numpy()
    qm_np = None if query_mask is None else query_mask.detach().to("cpu").numpy()
    idx = np.zeros((batch, n, k), dtype=np.int64)
    found = np.zeros((batch, n, k), dtype=bool)
    for b in range(batch):
        valid_ids = np.arange(r_np.shape[1]) if m_np is None else np.flatnonzero(m_np[b])
        if valid_ids.size == 0 or n == 0:
            continue
        rows = slice(None) if qm_np is None else np.flatnonzero(qm_np[b])
        hit, local = _tree_query(np.ascontiguousarray(r_np[b, valid_ids]), np.ascontiguousarray(q_np[b, rows]), k,
                                 upper_bound)
        found[b, rows] = hit
        idx[b, rows] = np.where(hit, valid_ids[np.minimum(local, valid_ids.size - 1)], 0)
    device = query.device
    return torch.from_numpy(found).to(device), torch.from_numpy(idx).to(device)


def _tree_query(ref: np.ndarray, query: np.ndarray, k: int, upper_bound: float) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of ``ref (M, 3)`` (float64, M >= 1) for every row of ``query
    (n, 3)`` closer than ``upper_bound``, ascending: ``(hit (n, k) bool, local (n, k)
    int64)``; ``local`` is meaningless where ``hit`` is False. Exact search with
    :data:`KDTREE_LIBRARY`'s tree."""
    n, m = query.shape[0], ref.shape[0]
    if KDTREE_LIBRARY == "pykdtree":
        from pykdtree.kdtree import KDTree  # noqa: PLC0415 - optional dependency, present when KDTREE_LIBRARY says so

        bound = None if upper_bound == float("inf") else upper_bound
        _, local = KDTree(ref).query(query, k=k, distance_upper_bound=bound)
        # pykdtree marks a missing neighbour with index M (beyond the bound) or
        # 2**32 - 1 (k > M): any index >= M is a miss.
        local = local.astype(np.int64).reshape(n, k)
        hit = local < m
        return hit, np.where(hit, local, 0)
    # Unbalanced, non-compact nodes: faster to build and query on scan-like clouds;
    # the search is exact either way.
    tree = cKDTree(ref, balanced_tree=False, compact_nodes=False)
    dist, local = tree.query(query, k=k, distance_upper_bound=upper_bound, workers=-1)
    hit = np.isfinite(dist.reshape(n, k))
    return hit, np.where(hit, local.reshape(n, k), 0)


def _search(query: torch.Tensor, ref: torch.Tensor, k: int, ref_mask: Optional[torch.Tensor],
            backend: Optional[str], query_mask: Optional[torch.Tensor], upper_bound: float = float("inf")
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked inputs, then ``(found, idx)`` of the backend's search (see :func:`_search_torch`)."""
    _check_clouds(query, ref, ref_mask)
    if int(k) < 1:
        raise ConfigError(f"number of neighbours k must be >= 1, got {k}")
    with torch.no_grad():
        if _resolve_backend(query.device, backend) == "torch":
            return _search_torch(query, ref, int(k), ref_mask)
        return _search_kdtree(query, ref, int(k), ref_mask, upper_bound, query_mask)


# --------------------------------------------------------------------------- public API
def knn(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    ref_mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    query_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest reference points (``ref (B, M, 3)``) of every query point (``query (B, N, 3)``);
    k may exceed the number of valid refs. Masks and ``backend``: the module docstring.

    ``query_mask (B, N)`` bool, False = a query row whose result is not needed (padding):
    the KD-tree skips it (it may then find nothing); the torch path searches every row.

    Returns:
        ``dist (B, N, k)`` Euclidean metres, ascending, differentiable w.r.t. the
        coordinates; ``idx (B, N, k)`` long into ``ref``. Slots with no valid
        reference left hold ``dist = +inf`` and ``idx = 0``.
    """
    found, idx = _search(query, ref, k, ref_mask, backend, query_mask)
    if ref.shape[1] == 0:
        return query.new_full(idx.shape, float("inf")), idx
    return _pair_distance(query, ref, idx).masked_fill(~found, float("inf")), idx


def ball_query(
    query: torch.Tensor,
    ref: torch.Tensor,
    radius: float,
    k: int,
    ref_mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    query_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k nearest reference points strictly closer than ``radius`` (metres).

    Sorted by distance (not the "first k in index order" of the original CUDA
    op, see the module docstring). ``query_mask`` as in :func:`knn`.

    Returns:
        ``idx (B, N, k)`` long and ``valid (B, N, k)`` bool. Valid slots come
        first; invalid slots repeat the first valid index of that row (0 when the
        neighbourhood is empty), so gathering with ``idx`` is always safe.
    """
    if not radius > 0:
        raise ConfigError(f"ball query radius must be > 0 metres, got {radius}")
    # The KD-tree's bound is slightly larger; the exact radius test below decides.
    found, idx = _search(query, ref, k, ref_mask, backend, query_mask, float(radius) * (1 + 1e-5) + 1e-9)
    with torch.no_grad():
        if ref.shape[1] == 0:
            return idx, found
        dist = _pair_distance(query.detach(), ref.detach(), idx)
        valid = found & (dist < float(radius))
        first = torch.where(valid[..., :1], idx[..., :1], torch.zeros_like(idx[..., :1]))
        idx = torch.where(valid, idx, first.expand_as(idx))
    return idx, valid


def _fps_loop_torch(points: torch.Tensor, valid: torch.Tensor, steps: int, out: torch.Tensor) -> None:
    """FPS loop in torch (any device, no host sync): fills ``out[:, :steps]``."""
    batch = points.shape[0]
    coords = points.permute(2, 0, 1).contiguous()  # (3, B, N): one plane per axis
    # Padded points sit at -1 so argmax never picks them (min with d2 >= 0 keeps -1).
    min_dist = torch.full(valid.shape, float("inf"), device=points.device)
    min_dist = min_dist.masked_fill(~valid, -1.0)
    current = torch.argmax(valid.to(torch.uint8), dim=1)  # first valid (0 if none)
    rows = torch.arange(batch, device=points.device)
    for step in range(steps):
        out[:, step] = current
        centre = coords[:, rows, current].unsqueeze(-1)  # (3, B, 1)
        diff = coords - centre
        d2 = diff[0] * diff[0]
        d2 = d2 + diff[1] * diff[1]
        d2 = d2 + diff[2] * diff[2]
        min_dist = torch.minimum(min_dist, d2)
        current = torch.argmax(min_dist, dim=1)


def _fps_loop_numpy(points: torch.Tensor, valid: torch.Tensor, steps: int, out: torch.Tensor) -> None:
    """The same loop in numpy with preallocated buffers (about 10x faster on CPU:
    the per-iteration work is small, so torch's per-op overhead dominates)."""
    coords = np.ascontiguousarray(points.cpu().numpy().transpose(2, 0, 1))  # (3, B, N)
    valid_np = valid.cpu().numpy()
    min_dist = np.where(valid_np, np.float32(np.inf), np.float32(-1.0)).astype(np.float32)
    current = np.argmax(valid_np.astype(np.uint8), axis=1)
    rows = np.arange(coords.shape[1])
    result = np.zeros((coords.shape[1], steps), dtype=np.int64)
    d2 = np.empty_like(min_dist)
    diff = np.empty_like(coords)
    for step in range(steps):
        result[:, step] = current
        centre = coords[:, rows, current][:, :, None]  # (3, B, 1)
        # All three axes per call (fewer numpy calls per step); the float32
        # arithmetic is the torch loop's: (dx*dx + dy*dy) + dz*dz.
        np.subtract(coords, centre, out=diff)
        np.multiply(diff, diff, out=diff)
        np.add(diff[0], diff[1], out=d2)
        np.add(d2, diff[2], out=d2)
        np.minimum(min_dist, d2, out=min_dist)
        current = np.argmax(min_dist, axis=1)
    out[:, :steps] = torch.from_numpy(result).to(out.device)


def farthest_point_sample(
    xyz: torch.Tensor,
    m: int,
    mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Farthest point sampling: ``m`` well-spread indices into ``xyz (B, N, 3)``.

    Deterministic: starts at the first valid point (index 0 without a mask), then
    repeatedly takes the point farthest from all chosen ones (ties -> lowest
    index). When ``m`` exceeds the number of valid points, all of them are
    returned first and the remaining slots repeat the first sample. Padded points
    (``mask`` False) are never chosen; a batch element with no valid point gets
    index 0 everywhere. Backends: the module docstring.

    Returns:
        ``(B, m)`` long.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be (B, N, 3), got {tuple(xyz.shape)}")
    if int(m) < 1:
        raise ConfigError(f"number of samples m must be >= 1, got {m}")
    m = int(m)
    batch, n, _ = xyz.shape
    device = xyz.device
    out = torch.zeros(batch, m, dtype=torch.long, device=device)
    if n == 0:
        return out
    if mask is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    else:
        if tuple(mask.shape) != (batch, n):
            raise ValueError(f"mask must be {(batch, n)}, got {tuple(mask.shape)}")
        valid = mask.to(device=device, dtype=torch.bool)
    steps = min(m, n)
    with torch.no_grad():
        points = xyz.detach().float()
        if _resolve_backend(device, backend) == "torch":
            _fps_loop_torch(points, valid, steps, out)
        else:
            _fps_loop_numpy(points, valid, steps, out)
        # Past the number of valid points, repeat the first sample.
        n_valid = valid.sum(dim=1, keepdim=True)
        slot = torch.arange(m, device=device).unsqueeze(0)
        out = torch.where(slot < n_valid, out, out[:, :1].expand_as(out))
    return out


def three_nn_weights(
    unknown: torch.Tensor,
    known: torch.Tensor,
    known_mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    query_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 nearest known points of every unknown point and their interpolation weights.

    ``unknown (B, n, 3)``, ``known (B, m, 3)`` (m >= 1), ``known_mask (B, m)``; ``query_mask (B, n)``:
    unknown rows that need no result (weights 0 where skipped). Weights ``w_j = 1 / (d_j + 1e-8)``
    normalised to sum 1 (PointNet++ feature propagation); with fewer than 3 valid known points only
    those count (the missing slots have weight 0 and index 0), with none all weights are 0. No
    gradient (as in PointNet++).

    Returns:
        ``idx (B, n, 3)`` long into ``known`` and ``weight (B, n, 3)`` (dtype of ``known``).
    """
    with torch.no_grad():
        dist, idx = knn(unknown, known, 3, known_mask, backend=backend, query_mask=query_mask)
        weight = 1.0 / (dist + 1e-8)  # +inf distance -> weight 0
        weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return idx, weight


def interpolate_rows(values: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of rows, channels last: ``values (B, m, C)`` at ``idx (B, n, k)``
    with ``weight (B, n, k)`` -> ``(B, n, C)``, summed over the k slots in order.

    Differentiable w.r.t. ``values``. One row lookup and one multiply-add per slot
    into a ``(B * n, C)`` output: the ``(B, n, k, C)`` gathered rows are never built.
    """
    batch, rows, channels = values.shape
    _, n, k = idx.shape
    if k == 0:
        return values.new_zeros(batch, n, channels)
    flat = values.reshape(batch * rows, channels)
    flat_idx = idx + (torch.arange(batch, device=idx.device) * rows).view(batch, 1, 1)
    w = weight.to(values.dtype)
    out = flat.index_select(0, flat_idx[..., 0].reshape(-1)) * w[..., 0].reshape(-1, 1)
    for slot in range(1, k):
        out = out.addcmul_(flat.index_select(0, flat_idx[..., slot].reshape(-1)), w[..., slot].reshape(-1, 1))
    return out.view(batch, n, channels)


def three_nn_interpolate(
    unknown: torch.Tensor,
    known: torch.Tensor,
    known_feats: torch.Tensor,
    known_mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Inverse-distance interpolation of ``known_feats (B, C, m)`` at ``known (B, m, 3)`` onto
    ``unknown (B, n, 3)`` (metres) -> ``(B, C, n)``. Weights and ``known_mask`` as
    :func:`three_nn_weights` (no gradient); the features carry one.
    """
    if known_feats.dim() != 3 or known_feats.shape[0] != known.shape[0] or known_feats.shape[2] != known.shape[1]:
        raise ValueError(
            f"known_feats must be (B, C, m) = ({known.shape[0]}, C, {known.shape[1]}),"
            f" got {tuple(known_feats.shape)}"
        )
    batch, channels, _ = known_feats.shape
    n = unknown.shape[1]
    if known.shape[1] == 0:
        return known_feats.new_zeros(batch, channels, n)
    idx, weight = three_nn_weights(unknown, known, known_mask, backend=backend)
    out = interpolate_rows(known_feats.transpose(1, 2), idx, weight)  # (B, n, C)
    return out.transpose(1, 2).contiguous()
