"""ScanNet scene folder -> rosbag2 (mcap or sqlite3), written with rosbags: no ROS install needed.

Topics, frames, QoS and the design decisions (``map`` is the axis-aligned scene
frame, registration, stamps, skipped frames, the second camera, compressed
images, staging): docs/bags.md, ``safnet bag convert``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from rosbags.rosbag2 import Writer
from tqdm import tqdm

from safnet_ros import output_dir as od
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.data.sens import COLOR_JPEG
from safnet_ros.errors import MissingDataError
from safnet_ros.geometry.camera import project, resize_nearest, scale_intrinsics
from safnet_ros.ros.compressed import COLOR_JPEG_FORMAT, compressed_topics, encode_color, encode_depth_mm
from safnet_ros.tools import bag_io as bio

#: Stamp of the first written frame (1 s: a zero stamp means "latest" to TF lookups).
START_NS = 1_000_000_000
#: Frame rate assumed where recorded timestamps do not increase.
FALLBACK_RATE_HZ = 30.0
#: Closest depth a cloud point may have in the camera (metres).
MIN_RANGE_M = 0.1
#: JPEG quality of colour that has to be encoded (resized) for ``compressed`` bags.
JPEG_QUALITY = 90
#: Largest gap between consecutive recorded frame stamps taken as real (1 hour); beyond it the
#: stamp is corrupt and synthesised like a repeated one.
MAX_STAMP_GAP_NS = 3600 * 10**9
#: The bag's cameras: (colour, depth, camera_info topic, link frame, optical frame); the second is
#: ``--second-camera``'s.
CAMERAS = (
    (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC, bio.CAMERA_LINK_FRAME, bio.OPTICAL_FRAME),
    (bio.CAMERA2_COLOR_TOPIC, bio.CAMERA2_DEPTH_TOPIC, bio.CAMERA2_INFO_TOPIC, bio.CAMERA2_LINK_FRAME,
     bio.CAMERA2_OPTICAL_FRAME),
)


@dataclass
class ConvertSummary:
    """What :func:`convert_scene` wrote."""

    out: str
    storage: str
    frames_written: int = 0
    frames_invalid_pose: int = 0
    frames_skipped_by_skip: int = 0
    camera2_offset_frames: int = 0  # second camera: frames ahead of the first (0 = no second camera)
    clouds_written: int = 0
    cloud_points_mean: float = 0.0
    stamps_synthesised: int = 0
    image_size: tuple[int, int] = (0, 0)
    duration_s: float = 0.0
    elapsed_s: float = 0.0
    size_bytes: int = 0
    axis_alignment: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"wrote {self.out} ({self.storage}, {self.size_bytes / 1e6:.1f} MB) in {self.elapsed_s:.1f} s",
            f"  frames: {self.frames_written} written, {self.frames_invalid_pose} skipped (invalid pose), "
            f"{self.frames_skipped_by_skip} left out by --skip; images {self.image_size[0]}x{self.image_size[1]}",
            f"  clouds: {self.clouds_written} on {bio.POINTS_TOPIC}, {self.cloud_points_mean:.0f} points on average",
            f"  bag duration {self.duration_s:.2f} s; {self.stamps_synthesised} stamps synthesised",
        ] + ([f"  second camera on /camera2/...: each frame {self.camera2_offset_frames} frames ahead of "
              f"{bio.COLOR_TOPIC} (wrapping)"] if self.camera2_offset_frames else [])


def registered_frame(color: np.ndarray, depth_m: np.ndarray, out_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The images a bag stores for one frame at ``out_wh``: rgb (H, W, 3) uint8 (bilinear, PIL; unchanged
    at equal sizes) and depth (H, W) uint16 millimetres (nearest; rounded, non-finite as 0, clipped at
    65.535 m)."""
    if (color.shape[1], color.shape[0]) == tuple(out_wh):
        rgb = np.ascontiguousarray(color)
    else:
        rgb = np.asarray(Image.fromarray(color).resize(tuple(out_wh), Image.BILINEAR))
    d = np.nan_to_num(resize_nearest(depth_m, out_wh).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return rgb, np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)


def open_scene(scene_dir: str | os.PathLike, need_mesh: bool):
    """The ScanNetScene of ``scene_dir`` after checking every part the conversion needs.

    Raises one MissingDataError naming every missing part (frames, mesh).
    """
    path = Path(scene_dir)
    scene = ScanNetScene(path)  # a missing path, or a file there, is named by ScanNetScene
    missing = []
    if not scene.has_frames:
        missing.append(f"RGB-D frames ({scene.sens_path.name} or exported color/ depth/ pose/ intrinsic/)")
    if need_mesh and not os.path.lexists(scene.mesh_path):  # a folder or FIFO there: named when read
        missing.append(f"mesh {scene.mesh_path.name} (needed for {bio.POINTS_TOPIC}; --cloud-rate 0 skips it)")
    if missing:
        raise MissingDataError(path, "scene parts: " + "; ".join(missing))
    return scene


def convert_scene(
    scene_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    storage: str = "mcap",
    rate: Optional[float] = None,
    skip: int = 1,
    resize: Optional[tuple[int, int]] = None,
    cloud_rate: float = 2.0,
    max_range: float = 5.0,
    overwrite: bool = False,
    progress: bool = True,
    second_camera: Optional[float] = None,
    compressed: bool = False,
) -> ConvertSummary:
    """Write the scene's frames, poses and a LiDAR-like cloud into a rosbag2 at ``out``.

    storage ``"mcap"`` or ``"sqlite3"``; rate (Hz) synthesises stamps instead of
    the recorded ones; skip keeps every ``skip``-th frame id; resize (w, h) sets
    the image size (default: the colour size); cloud_rate (Hz, 0 = no cloud)
    and max_range (metres) shape ``/points``; second_camera (seconds, > 0)
    adds a second camera that many seconds of frames ahead of the first;
    compressed writes image_transport's compressed image topics instead of
    the raw ones (both: docs/bags.md).  The ranges are the CLI's (checked by
    argparse).  An existing ``out`` raises ConfigError unless ``overwrite``;
    missing scene parts raise one MissingDataError naming them.
    """
    started = time.perf_counter()
    plugin = bio.bag_storage_plugin(storage)
    out = od.claim(out, "bag convert", overwrite=overwrite, inputs=[scene_dir], what="output bag")
    scene = open_scene(scene_dir, need_mesh=cloud_rate > 0)
    source = scene.frames
    out_wh = tuple(resize) if resize is not None else tuple(source.color_size)
    K = scale_intrinsics(source.intrinsic_depth, source.depth_size, out_wh)
    align = scene.axis_alignment
    cloud_xyz = cloud_rgb = None
    if cloud_rate > 0:
        xyz, rgb = scene.load_points(aligned=True)
        cloud_xyz, cloud_rgb = np.asarray(xyz, dtype=np.float64), bio.pack_rgb(rgb)

    summary = ConvertSummary(out=str(out), storage=storage, image_size=out_wh,
                             axis_alignment=[float(v) for v in align.reshape(-1)])
    settings = {"scene_dir": os.path.abspath(scene_dir), "storage": storage, "rate": rate, "skip": skip,
                "resize": resize, "cloud_rate": cloud_rate, "max_range": max_range, "second_camera": second_camera,
                "compressed": compressed}
    try:
        # built beside OUT and swapped in at the end (docs/reliability.md, "Output folders")
        with od.output_lock(out, "output bag"), od.staged_folder(out, "bag convert", settings, create=False,
                                                                          overwrite=overwrite) as tmp, \
                Writer(tmp, version=bio.BAG_VERSION, storage_plugin=plugin) as writer:
            cameras = CAMERAS if second_camera is not None else CAMERAS[:1]
            conns = _add_connections(writer, cameras, with_points=cloud_rate > 0, compressed=compressed)
            _write_frames(writer, conns, source, cameras, _FrameSettings(align, K, out_wh, rate, skip, cloud_rate,
                                                                         max_range, second_camera, compressed),
                          cloud_xyz, cloud_rgb, summary, progress)
            writer.set_custom_data("safnet.source_scene", scene.name)
            writer.set_custom_data("safnet.axis_alignment", " ".join(repr(v) for v in summary.axis_alignment))
            writer.set_custom_data("safnet.summary", json.dumps(
                {k: v for k, v in asdict(summary).items() if k not in ("out", "axis_alignment")}))
    finally:
        scene.close()
    summary.size_bytes = bio.bag_size(out)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _add_connections(writer: Any, cameras: tuple, with_points: bool, compressed: bool) -> dict[str, Any]:
    """The bag's connections by topic, with the QoS profiles they offer (``/tf_static`` transient local).

    With ``compressed`` the image connections are image_transport's compressed topics, still keyed by
    the raw topic names (what :func:`_write_camera` is given)."""
    image = bio.COMPRESSED_IMAGE if compressed else bio.IMAGE
    topics = []  # (key, topic, type, qos)
    for color, depth, info, _link, _optical in cameras:
        color_out, depth_out = compressed_topics(color, depth) if compressed else (color, depth)
        topics += [(color, color_out, image, bio.DEFAULT_QOS), (depth, depth_out, image, bio.DEFAULT_QOS),
                   (info, info, bio.CAMERA_INFO, bio.DEFAULT_QOS)]
    topics += [(t, t, bio.TF_MESSAGE, q) for t, q in ((bio.TF_TOPIC, bio.make_qos(100)),
                                                       (bio.TF_STATIC_TOPIC, bio.STATIC_QOS))]
    if with_points:
        topics.append((bio.POINTS_TOPIC, bio.POINTS_TOPIC, bio.POINTCLOUD2, bio.DEFAULT_QOS))
    return {key: writer.add_connection(topic, msgtype, typestore=bio.TYPESTORE, offered_qos_profiles=[qos])
            for key, topic, msgtype, qos in topics}


@dataclass(frozen=True)
class _FrameSettings:
    """What every frame of a conversion shares: alignment (4,4), K (3,3) at out_wh, stamp and cloud options."""

    align: np.ndarray
    K: np.ndarray
    out_wh: tuple[int, int]
    rate: Optional[float]
    skip: int
    cloud_rate: float
    max_range: float
    second_camera: Optional[float] = None  # seconds ahead of the first camera; None = no second camera
    compressed: bool = False  # image_transport's compressed topics instead of raw images


class FrameStamper:
    """Bag stamps (int ns) for frames in id order (docs/bags.md, "Stamps"); ``synthesised`` counts the
    recorded stamps replaced."""

    def __init__(self, rate: Optional[float] = None):
        self.rate = rate
        self.first: Optional[tuple[int, int]] = None  # (frame id, timestamp us)
        self.prev: Optional[tuple[int, int]] = None  # (frame id, stamp ns)
        self.synthesised = 0

    def __call__(self, frame_id: int, timestamp_us: int) -> int:
        if self.first is None:
            self.first = (frame_id, int(timestamp_us))
            ns = START_NS
        elif self.rate is not None:
            ns = START_NS + int(round((frame_id - self.first[0]) * 1e9 / self.rate))
        else:
            ns = START_NS + (int(timestamp_us) - self.first[1]) * 1000
            # not increasing, or an implausible jump (a corrupt 2^64-1 stamp would overflow the
            # message's int32 seconds): synthesise it and count it, as for a repeated stamp
            if ns <= self.prev[1] or ns - self.prev[1] > MAX_STAMP_GAP_NS:
                ns = self.prev[1] + int(round((frame_id - self.prev[0]) * 1e9 / FALLBACK_RATE_HZ))
                self.synthesised += 1
        self.prev = (frame_id, ns)
        return ns


def frustum_cloud_any(xyz: np.ndarray, packed_rgb: np.ndarray, K: np.ndarray, poses: list[np.ndarray],
                      wh: tuple[int, int], max_range: float) -> np.ndarray:
    """(M,) :data:`bag_io.XYZRGB_DTYPE` points of ``xyz`` (N, 3) world metres inside any of the cameras'
    frustums, MIN_RANGE_M < camera depth <= max_range (each point once)."""
    inside = np.zeros(len(xyz), dtype=bool)
    for pose in poses:
        _, z, in_image = project(xyz, K, pose, wh)
        inside |= in_image & (z > MIN_RANGE_M) & (z <= max_range)
    pts = np.zeros(int(inside.sum()), dtype=bio.XYZRGB_DTYPE)
    sel = xyz[inside].astype(np.float32)
    pts["x"], pts["y"], pts["z"] = sel[:, 0], sel[:, 1], sel[:, 2]
    pts["rgb"] = packed_rgb[inside]
    return pts


def stored_jpeg(source: Any, i: int) -> Optional[bytes]:
    """Frame ``i``'s colour as the scene stores it when that is a JPEG (a .sens payload or an exported
    .jpg), else None: a compressed bag passes these bytes on without re-encoding."""
    reader = getattr(source, "reader", None)
    if reader is not None:
        f = reader.frame(i)
        return bytes(f.color_bytes) if f.color_compression == COLOR_JPEG else None
    color_path = getattr(source, "color_path", None)
    if color_path is not None:
        path = Path(color_path(i))
        return path.read_bytes() if path.suffix.lower() in (".jpg", ".jpeg") else None
    return None


def _compressed_images(source: Any, frame: Any, cfg: _FrameSettings) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """((format, data) colour, (format, data) depth) of a compressed bag's frame: the stored JPEG when
    the colour keeps its size, else one JPEG encoding of the resized colour; depth as compressedDepth PNG."""
    jpeg = stored_jpeg(source, frame.index) if tuple(cfg.out_wh) == (frame.color.shape[1], frame.color.shape[0]) else None
    rgb, mm = registered_frame(frame.color, frame.depth, cfg.out_wh)
    color = (COLOR_JPEG_FORMAT, jpeg) if jpeg is not None else encode_color(rgb, "jpeg", JPEG_QUALITY)
    return color, encode_depth_mm(mm)


def _write_camera(write: Any, conns: dict[str, Any], cfg: _FrameSettings, frame: Any, ns: int,
                  camera: tuple[str, ...], optical_to_link: np.ndarray, source: Any) -> np.ndarray:
    """One camera (of :data:`CAMERAS`): its TF (map -> link), colour, depth and camera_info at ``ns``;
    returns its (4, 4) optical pose."""
    *topics, link, optical = camera
    pose = cfg.align @ frame.camera_to_world
    pose[:3, :3] = bio.orthonormalize(pose[:3, :3])  # float32 poses are not exactly rigid; TF needs a rotation
    write(conns[bio.TF_TOPIC], ns, bio.serialize(bio.tf_message(
        [bio.transform_stamped(pose @ optical_to_link, bio.MAP_FRAME, link, ns)])))
    if cfg.compressed:
        for conn, (fmt, data) in zip(topics[:2], _compressed_images(source, frame, cfg)):
            write(conns[conn], ns, bio.serialize(bio.compressed_image_message(fmt, data, ns, optical)))
    else:
        rgb, mm = registered_frame(frame.color, frame.depth, cfg.out_wh)
        write(conns[topics[0]], ns, bio.serialize(bio.image_message(rgb, "rgb8", ns, optical)))
        write(conns[topics[1]], ns, bio.serialize(bio.image_message(mm, "16UC1", ns, optical)))
    write(conns[topics[2]], ns, bio.serialize(bio.camera_info_message(cfg.K, cfg.out_wh, ns, optical)))
    return pose


def _write_frames(writer: Any, conns: dict[str, Any], source: Any, cameras: tuple, cfg: _FrameSettings,
                  cloud_xyz: Optional[np.ndarray], cloud_rgb: Optional[np.ndarray],
                  summary: ConvertSummary, progress: bool) -> None:
    """The frame loop of :func:`convert_scene`: one decoded frame in memory at a time."""
    valid = set(source.valid_indices)
    ids = source.indices
    kept = ids[:: cfg.skip]
    summary.frames_skipped_by_skip = len(ids) - len(kept)
    written_ids = [i for i in kept if i in valid]
    offset = 0
    if cfg.second_camera is not None and written_ids:
        frame_rate = (cfg.rate or FALLBACK_RATE_HZ) / cfg.skip
        offset = max(1, int(round(cfg.second_camera * frame_rate))) % len(written_ids) or 1
        summary.camera2_offset_frames = offset
    camera2_of = {i: written_ids[(k + offset) % len(written_ids)] for k, i in enumerate(written_ids)} if offset else {}
    optical_to_link = np.linalg.inv(bio.LINK_TO_OPTICAL)
    stamper = FrameStamper(cfg.rate)
    cloud_period = int(round(1e9 / cfg.cloud_rate)) if cfg.cloud_rate > 0 else 0
    last_cloud_ns: Optional[int] = None
    points_total = 0
    write = writer.write
    for i in tqdm(kept, desc="converting", unit="frame", disable=not progress, leave=False):
        if i not in valid:
            summary.frames_invalid_pose += 1
            continue
        frame = source.get(i)
        ns = stamper(i, frame.timestamp_us)
        if summary.frames_written == 0:
            statics = [bio.transform_stamped(bio.LINK_TO_OPTICAL, link, optical, ns)
                       for *_topics, link, optical in cameras]
            write(conns[bio.TF_STATIC_TOPIC], ns, bio.serialize(bio.tf_message(statics)))
        poses = [_write_camera(write, conns, cfg, frame, ns, cameras[0], optical_to_link, source)]
        del frame
        if camera2_of:  # the frame `offset` ahead, published now as the second camera (decoded again)
            poses.append(_write_camera(write, conns, cfg, source.get(camera2_of[i]), ns, cameras[1],
                                       optical_to_link, source))
        if cloud_xyz is not None and (last_cloud_ns is None or ns - last_cloud_ns >= cloud_period - 1000):
            pts = frustum_cloud_any(cloud_xyz, cloud_rgb, cfg.K, poses, cfg.out_wh, cfg.max_range)
            write(conns[bio.POINTS_TOPIC], ns, bio.serialize(bio.pointcloud_message(pts, ns, bio.MAP_FRAME)))
            summary.clouds_written += 1
            points_total += pts.shape[0]
            last_cloud_ns = ns
        summary.frames_written += 1
    if summary.frames_written == 0:
        raise MissingDataError(getattr(source, "path", getattr(source, "root", "scene")),
                               f"frames with a valid pose (all {summary.frames_invalid_pose} considered are invalid)")
    summary.stamps_synthesised = stamper.synthesised
    summary.duration_s = (stamper.prev[1] - START_NS) / 1e9
    summary.cloud_points_mean = points_total / max(summary.clouds_written, 1)
