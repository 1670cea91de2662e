"""The segmentation pipeline the node and ``safnet segment-bag`` both drive (ROS-free).

The caller decodes messages and looks up poses (through
:mod:`safnet_ros.ros.tf_tree`); the pipeline owns the rest, so the two cannot
drift apart: the keyframe decision in the cheap order (the stamp interval in
:meth:`~SegmentationPipeline.frame_due` before a frame is decoded or its pose
looked up, then the pose in :meth:`~SegmentationPipeline.offer_frame`), one
decode and resize of each keyframe into the
:class:`~safnet_ros.engine.view_buffer.ViewBuffer`, the segmentation of each
cloud in the fixed frame and the fusion of its probabilities into the semantic map.
Newly kept views wait in a queue for :meth:`~SegmentationPipeline.prepare_new_views`, which the
node's worker runs while no cloud waits.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from safnet_ros.engine.batching import PosedView, prepare_view
from safnet_ros.engine.view_buffer import ViewBuffer

#: What :meth:`SegmentationPipeline.offer_frame` did with a frame.
KEPT, NOT_KEYFRAME, REFUSED = "kept", "not_keyframe", "refused"


def transform_points(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) rigid transform to (N, 3) points; returns (N, 3) float32 metres."""
    T = np.asarray(T, dtype=np.float64)
    return (np.asarray(xyz, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)


@dataclass
class CloudOutput:
    """One segmented cloud: the inputs as the model saw them and its result."""

    xyz: np.ndarray  # (N, 3) float32 metres, the cloud's own frame
    world: np.ndarray  # (N, 3) float32 metres, the fixed frame
    origin: np.ndarray  # (3,) sensor position in the fixed frame, metres
    views: list[PosedView]  # the buffered views offered to the model
    result: Any  # engine.inference.SegmentResult
    seconds: float  # wall time of Segmenter.segment

    @property
    def used_views(self) -> list[PosedView]:
        """The views the model used (drawn as frustums)."""
        return [self.views[i] for i in self.result.views_used if 0 <= i < len(self.views)]

    @property
    def three_d_only(self) -> bool:
        """No view covered the cloud: labelled from geometry alone."""
        return not self.views or not self.result.views_used


class SegmentationPipeline:
    """Keyframes -> view buffer -> Segmenter -> semantic map (see the module docstring).

    segmenter: anything with ``segment(points (N, 3), views) -> SegmentResult`` (and, with
    ``prepare_idle``, ``prepare_views(views) -> int``: a :class:`~safnet_ros.engine.inference.Segmenter`);
    buffer: the keyframe buffer; semantic_map: anything with
    ``integrate(points, probabilities, sensor_origin=...)`` (a
    :class:`~safnet_ros.mapping.SemanticVoxelMap`, or the node's map
    component), None = no map; prepare_idle: queue each kept view for :meth:`prepare_new_views` (the
    node, whose worker has idle time between clouds; offline there is none).
    """

    def __init__(self, segmenter: Any, buffer: ViewBuffer, semantic_map: Any = None,
                 prepare_idle: bool = False) -> None:
        self.segmenter = segmenter
        self.buffer = buffer
        self.semantic_map = semantic_map
        self.prepare_idle = prepare_idle
        # Views kept since the last prepare_new_views (deque: appended by the frame thread, taken by the
        # segmenting one); bounded, the oldest would have left the buffer first.
        self._new_views: deque[PosedView] = deque(maxlen=64)

    # ------------------------------------------------------------------ frames
    def frame_due(self, stamp_s: float, camera: str = "") -> bool:
        """Whether a frame of ``camera`` at ``stamp_s`` is far enough in time from that camera's last kept
        view to become a keyframe (the policy's ``min_interval``); False = drop it before decoding or
        looking up its pose."""
        last = self.buffer.last(camera)
        return last is None or stamp_s - last.stamp >= self.buffer.policy.min_interval

    def offer_frame(self, stamp_s: float, pose: np.ndarray,
                    decode: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]], camera: str = "") -> str:
        """Keep a frame of ``camera`` ('' = the only one) as a view when the keyframe policy takes it at
        this pose (against that camera's last kept view): :data:`KEPT`,
        :data:`NOT_KEYFRAME` (not decoded) or :data:`REFUSED` (by the buffer's bounds).

        decode: returns (colour (H, W, 3) uint8 RGB, depth (H, W) float32 m, K (3, 3) of the depth
        image); called only for a keyframe. Its errors (MessageDecodeError, ...) and prepare_view's
        SafnetError for unusable shapes propagate to the caller, which counts them.
        """
        if not self.buffer.decide(stamp_s, pose, camera):
            return NOT_KEYFRAME
        color, depth, K = decode()
        view = prepare_view(color, depth, K, pose, stamp=stamp_s)
        view.camera = camera
        if not self.buffer.offer(view):
            return REFUSED
        if self.prepare_idle:
            self._new_views.append(view)
        return KEPT

    def clear_views(self) -> None:
        """Forget the buffered views and those still to be prepared (the time went back)."""
        self.buffer.clear()
        self._new_views.clear()

    def prepare_new_views(self, limit: int = 2) -> int:
        """Encode and back-project up to ``limit`` of the views kept since the last call (oldest first;
        :meth:`Segmenter.prepare_views <safnet_ros.engine.inference.Segmenter.prepare_views>`), so that the next cloud finds them ready; returns how many
        it prepared (0 once none is left that needs it). Call it on the thread that segments, while no
        cloud waits."""
        while self._new_views:  # skip past views that need nothing
            batch = [self._new_views.popleft() for _ in range(min(limit, len(self._new_views)))]
            prepared = self.segmenter.prepare_views(batch)
            if prepared:
                return prepared
        return 0

    # ------------------------------------------------------------------ clouds
    def segment_cloud(self, xyz: np.ndarray, T_fixed_cloud: np.ndarray) -> CloudOutput:
        """Segment one cloud: xyz (N, 3) metres in its frame, T_fixed_cloud (4, 4) its pose in the fixed frame."""
        world = transform_points(T_fixed_cloud, xyz)
        views = self.buffer.views()
        start = time.perf_counter()
        result = self.segmenter.segment(world, views)
        return CloudOutput(xyz, world, np.asarray(T_fixed_cloud, dtype=np.float64)[:3, 3].copy(), views, result,
                           time.perf_counter() - start)

    def update_map(self, out: CloudOutput, **kwargs: Any) -> Optional[Any]:
        """Fuse a segmented cloud's probabilities into the semantic map; returns what its integrate
        returned (None without a map or probabilities). kwargs go to the map's integrate."""
        probs = out.result.probs
        if self.semantic_map is None or probs is None:
            return None
        seg = np.asarray(out.result.segmented, bool)
        return self.semantic_map.integrate(out.world[seg], probs[seg], sensor_origin=out.origin, **kwargs)
