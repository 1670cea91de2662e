"""Silent inputs on /diagnostics: a mis-wired node must not look healthy (docs/ros_node.md, "/diagnostics").

A cloud topic remapped to nowhere, a camera that never delivers a synchronised set or clouds that never
find a transform raise no error; after ``input_timeout`` seconds (0 = off) without an input this turns
the silence into a WARN naming it. It reads the node's own counters (:data:`EVIDENCE`; one ``rgbd.N``
input per camera N of ``cameras``), so it needs no hook in the callbacks. ``transform`` is judged only
while clouds or sets arrive: without any input, the missing input is the news.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

#: input -> the counters whose growth shows it arrived.
EVIDENCE: dict[str, tuple[str, ...]] = {
    "cloud": ("clouds_received",),
    "rgbd": ("frames_synced",),
    "transform": ("clouds_segmented", "views_kept", "views_not_keyframe"),
}


def camera_evidence(cameras: list[str]) -> dict[str, tuple[str, ...]]:
    """:data:`EVIDENCE` with one ``rgbd.N`` input per camera N (its ``frames_synced.N`` counter); [] = EVIDENCE."""
    if not cameras:
        return dict(EVIDENCE)
    return {"cloud": EVIDENCE["cloud"], **{f"rgbd.{name}": (f"frames_synced.{name}",) for name in cameras},
            "transform": EVIDENCE["transform"]}


@dataclass(frozen=True)
class Silence:
    """One silent input: its name and the words naming it and how long it has been silent."""

    name: str
    text: str


class InputWatchdog:
    """Tracks when each input last showed up; :meth:`silent` lists those quiet for ``timeout_s``.

    describe: input name -> words naming it for the user (its topic, or the frames);
    evidence: input name -> counters (default :data:`EVIDENCE`; :func:`camera_evidence` for several cameras).
    """

    def __init__(self, timeout_s: float, describe: dict[str, str], counters: Optional[dict[str, int]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 evidence: Optional[dict[str, tuple[str, ...]]] = None):
        self.timeout_s = float(timeout_s)
        self.describe = dict(describe)
        self.evidence = dict(evidence or EVIDENCE)
        self._clock = clock
        now = clock()
        self._last_seen: dict[str, float] = {name: now for name in self.evidence}
        self._ever: dict[str, bool] = {name: False for name in self.evidence}
        self._counts = self._totals(counters or {})  # at activation: what came before does not count

    def _totals(self, counters: dict[str, int]) -> dict[str, int]:
        return {name: sum(int(counters.get(key, 0)) for key in keys) for name, keys in self.evidence.items()}

    def observe(self, counters: dict[str, int]) -> None:
        """Note which inputs arrived since the previous call, from the node's counters."""
        now = self._clock()
        totals = self._totals(counters)
        for name, total in totals.items():
            if total > self._counts[name]:
                self._last_seen[name] = now
                self._ever[name] = True
        self._counts = totals

    def silent(self) -> list[Silence]:
        """The inputs silent for at least ``timeout_s`` seconds (empty when the watchdog is off)."""
        if self.timeout_s <= 0:
            return []
        now = self._clock()
        quiet = {name: now - seen for name, seen in self._last_seen.items() if now - seen >= self.timeout_s}
        inputs_flow = any(name not in quiet for name in self.evidence if name != "transform")
        out = []
        for name in self.evidence:
            if name not in quiet or (name == "transform" and not inputs_flow):
                continue
            seconds = quiet[name]
            kind, _, camera = name.partition(".")
            what = {"cloud": "no PointCloud2", "rgbd": "no synchronised RGB-D set",
                    "transform": "no transform"}[kind] + (f" from camera '{camera}'" if camera else "")
            when = "since the last one" if self._ever[name] else "since activation"
            out.append(Silence(name, f"{what} {self.describe.get(name, '')} for {seconds:.0f} s ({when})"
                                     .replace("  ", " ")))
        return out

    def check(self, counters: dict[str, int], status: DiagnosticStatus, logger: Any,
              warn_period_s: float) -> None:
        """The node's hook at each /diagnostics: :meth:`observe` the counters, raise ``status`` to at least
        WARN with the silent inputs first in its message (and in its ``silent_inputs`` value), log them."""
        self.observe(counters)
        silences = self.silent()
        if silences:
            words = "; ".join(s.text for s in silences)
            if status.level < DiagnosticStatus.WARN:
                status.level = DiagnosticStatus.WARN
                status.message = ""
            status.message = f"{words}; {status.message}" if status.message else words
            logger.warning(words, throttle_duration_sec=warn_period_s)
        names = ",".join(s.name for s in silences)
        status.values = list(status.values) + [KeyValue(key="silent_inputs", value=names)]


def describe_inputs(node: Any, cloud_topic: str, fixed_frame: str,
                    camera_topics: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Words naming each input of the node: its resolved topics and the transform's target frame.

    camera_topics: the node's ``camera_topics()`` ({'': ...}: the single camera, input ``rgbd``; else one
    input ``rgbd.N`` per camera N).
    """
    def resolve(name: str) -> str:
        try:
            return node.resolve_topic_name(name)
        except Exception:  # noqa: BLE001 - an unresolvable name is shown as given
            return name

    out = {"cloud": f"on {resolve(cloud_topic)}"}
    for camera, topics in camera_topics.items():
        out[f"rgbd.{camera}" if camera else "rgbd"] = "on " + ", ".join(resolve(str(t)) for t in topics)
    out["transform"] = f"from the clouds' or camera's frame into '{fixed_frame}' (TF)"
    return out


__all__ = ["EVIDENCE", "camera_evidence", "InputWatchdog", "Silence", "describe_inputs"]
