"""A tree of time-stamped transforms, looked up at any stamp (numpy only, no rclpy).

The one TF implementation of the package: the node's drop-in ``tf2_ros.Buffer`` (:mod:`safnet_ros.ros.tf_buffer`)
and ``safnet segment-bag`` both hold a :class:`TfTree`. Transforms are ``T_parent_child`` (child-frame points
into the parent frame), quaternions (x, y, z, w); lookups behave as docs/ros_compat.md, "What the drop-in
Buffer does", tells. Not thread-safe: the caller locks.
"""
from __future__ import annotations

import bisect
import functools
from typing import Any, Optional

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from safnet_ros.errors import SafnetError
from safnet_ros.geometry.transforms import invert_transform, transform_from_quat
from safnet_ros.ros.codecs import stamp_to_ns


class FallbackTransformException(SafnetError):
    """Base of the drop-in tf2 errors (tf2_ros.TransformException)."""


class FallbackLookupException(FallbackTransformException):
    """A frame is unknown to the tree."""


class FallbackConnectivityException(FallbackTransformException):
    """The two frames are in different trees."""


class FallbackExtrapolationException(FallbackTransformException):
    """The requested time lies outside the data of some link of the chain."""


class FallbackInvalidArgumentException(FallbackTransformException):
    """An empty frame id or a malformed transform."""


class FallbackTimeoutException(FallbackTransformException):
    """Reserved for API parity (tf2_ros raises it from async waits)."""


def slerp(q0: np.ndarray, q1: np.ndarray, ratio: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w) along the shorter arc, ratio in [0, 1]."""
    return Slerp([0.0, 1.0], Rotation.from_quat([q0, q1]))(ratio).as_quat()


def strip_frame(frame_id: str) -> str:
    return str(frame_id).lstrip("/")


class _Link:
    """History of one child frame's transform to its parent (T_parent_child), sorted by stamp (ns)."""

    __slots__ = ("parent", "static", "stamps", "translations", "rotations")

    def __init__(self, parent: str, static: bool) -> None:
        self.parent = parent
        self.static = static
        self.stamps: list[int] = []
        self.translations: list[np.ndarray] = []
        self.rotations: list[np.ndarray] = []

    def insert(self, stamp: int, translation: np.ndarray, rotation: np.ndarray, cache_ns: Optional[int]) -> None:
        if self.static:
            self.stamps, self.translations, self.rotations = [stamp], [translation], [rotation]
            return
        pos = bisect.bisect_left(self.stamps, stamp)
        if pos < len(self.stamps) and self.stamps[pos] == stamp:
            self.translations[pos], self.rotations[pos] = translation, rotation
        else:
            self.stamps.insert(pos, stamp)
            self.translations.insert(pos, translation)
            self.rotations.insert(pos, rotation)
        if cache_ns is not None:
            cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
            if cut:
                del self.stamps[:cut], self.translations[:cut], self.rotations[:cut]

    def at(self, stamp: int, child: str) -> np.ndarray:
        """(4, 4) T_parent_child at ``stamp`` (ns): linear translation, slerp rotation between the bracketing
        entries."""
        if self.static:
            return transform_from_quat(self.translations[0], self.rotations[0])
        stamps = self.stamps
        if stamp > stamps[-1] or stamp < stamps[0]:
            direction = "future" if stamp > stamps[-1] else "past"
            raise FallbackExtrapolationException(
                f"Lookup would require extrapolation into the {direction}. Requested time "
                f"{stamp / 1e9:.9f} but the data for [{self.parent}] -> [{child}] spans "
                f"{stamps[0] / 1e9:.9f} .. {stamps[-1] / 1e9:.9f}"
            )
        k = bisect.bisect_left(stamps, stamp)
        if stamps[k] == stamp:
            return transform_from_quat(self.translations[k], self.rotations[k])
        t0, t1 = stamps[k - 1], stamps[k]
        ratio = (stamp - t0) / (t1 - t0)
        translation = self.translations[k - 1] + ratio * (self.translations[k] - self.translations[k - 1])
        return transform_from_quat(translation, slerp(self.rotations[k - 1], self.rotations[k], ratio))


class TfTree:
    """Links child -> parent with their samples; ``cache_ns`` = how far behind its newest sample a
    dynamic link keeps data (None: everything, a recorded bag)."""

    def __init__(self, cache_ns: Optional[int] = None) -> None:
        self.cache_ns = cache_ns
        self.links: dict[str, _Link] = {}
        self.num_rejected = 0

    def add(self, transform: Any, static: bool) -> bool:
        """Store one geometry_msgs/TransformStamped (rclpy or rosbags message); False (counted in
        ``num_rejected``) for a malformed, self-parented or too old one (tf2's TF_OLD_DATA)."""
        parent = strip_frame(transform.header.frame_id)
        child = strip_frame(transform.child_frame_id)
        tr, ro = transform.transform.translation, transform.transform.rotation
        translation = np.array([tr.x, tr.y, tr.z], dtype=np.float64)
        rotation = np.array([ro.x, ro.y, ro.z, ro.w], dtype=np.float64)
        norm = float(np.linalg.norm(rotation))
        if not (parent and child and parent != child and np.isfinite(translation).all()
                and np.isfinite(rotation).all() and norm > 1e-6):
            self.num_rejected += 1
            return False
        stamp = stamp_to_ns(transform.header.stamp)
        link = self.links.get(child)
        if link is None or link.parent != parent or link.static != static:
            link = self.links[child] = _Link(parent, static)
        elif (not static and self.cache_ns is not None and link.stamps
              and stamp < link.stamps[-1] - self.cache_ns):
            self.num_rejected += 1
            return False
        link.insert(stamp, translation, rotation / norm, self.cache_ns)
        return True

    def clear(self) -> None:
        """Forget every dynamic transform; static ones stay, as in tf2 (a latched topic would not resend them)."""
        self.links = {child: link for child, link in self.links.items() if link.static}

    def frames(self) -> set[str]:
        return set(self.links) | {link.parent for link in self.links.values()}

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root."""
        chain, seen = [frame], {frame}
        while chain[-1] in self.links:
            parent = self.links[chain[-1]].parent
            if parent in seen:
                raise FallbackConnectivityException(f"frames {chain} form a loop")
            chain.append(parent)
            seen.add(parent)
        return chain

    def lookup(self, target: str, source: str, stamp: int) -> tuple[int, np.ndarray]:
        """(time used ns, (4, 4) T_target_source); ``stamp`` 0 = the latest time every link of the chain has
        data."""
        target, source = strip_frame(target), strip_frame(source)
        for name, frame in (("target_frame", target), ("source_frame", source)):
            if not frame:
                raise FallbackInvalidArgumentException(f"{name} is empty: frame ids cannot be empty")
        if target == source:  # as tf2: identity, even for a frame it has not seen
            return stamp, np.eye(4)
        known = self.frames()
        for name, frame in (("target_frame", target), ("source_frame", source)):
            if frame not in known:
                raise FallbackLookupException(f'"{frame}" passed to lookup_transform argument {name} does not exist.')
        up_source, up_target = self._chain(source), self._chain(target)
        target_set = set(up_target)
        common = next((f for f in up_source if f in target_set), None)
        if common is None:
            raise FallbackConnectivityException(
                f"Could not find a connection between '{target}' and '{source}' because they are not "
                f"part of the same tree (roots '{up_target[-1]}' and '{up_source[-1]}')."
            )
        source_links = up_source[: up_source.index(common)]
        target_links = up_target[: up_target.index(common)]
        if stamp == 0:
            dynamic = [self.links[c].stamps[-1] for c in source_links + target_links if not self.links[c].static]
            stamp = min(dynamic) if dynamic else 0
        def from_common(chain: list[str]) -> np.ndarray:  # T_common_frame = T_common_p @ ... @ T_p_frame
            return functools.reduce(lambda acc, child: self.links[child].at(stamp, child) @ acc, chain, np.eye(4))

        return stamp, invert_transform(from_common(target_links)) @ from_common(source_links)

    def lookup_matrix(self, target: str, source: str, stamp: int) -> np.ndarray:
        """(4, 4) T_target_source at ``stamp`` ns (raises the Fallback* exceptions)."""
        return self.lookup(target, source, stamp)[1]
