"""ScanNet ``.sens`` (version 4) reader and writer; byte layout: docs/design.md §2.2.

Poses of lost tracking are ``-inf``.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Self, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from safnet_ros.errors import ConfigError, DataFormatError
from safnet_ros.validation import require_file

#: The only ``.sens`` version ScanNet writes and we read.
SENS_VERSION = 4

#: Colour compression codes (ScanNet's ``COMPRESSION_TYPE_COLOR``).
COLOR_UNKNOWN, COLOR_RAW, COLOR_PNG, COLOR_JPEG = -1, 0, 1, 2
#: Depth compression codes (ScanNet's ``COMPRESSION_TYPE_DEPTH``).
DEPTH_UNKNOWN, DEPTH_RAW_USHORT, DEPTH_ZLIB_USHORT, DEPTH_OCCI_USHORT = -1, 0, 1, 2

_COLOR_NAMES = {COLOR_UNKNOWN: "unknown", COLOR_RAW: "raw", COLOR_PNG: "png", COLOR_JPEG: "jpeg"}
_DEPTH_NAMES = {DEPTH_UNKNOWN: "unknown", DEPTH_RAW_USHORT: "raw_ushort",
                DEPTH_ZLIB_USHORT: "zlib_ushort", DEPTH_OCCI_USHORT: "occi_ushort"}

# Fixed-size header parts and the per-frame header.
_VERSION = struct.Struct("<I")
_NAME_LEN = struct.Struct("<Q")
_MATRICES = struct.Struct("<64f")
_FORMAT = struct.Struct("<ii4If")
_COUNT = struct.Struct("<Q")
#: Per-frame header: 16 float32 pose, 4 uint64 (timestamps, payload sizes) = 96 bytes.
FRAME_HEADER = struct.Struct("<16f4Q")
# A sensor name longer than this is a corrupt length field, not a name.
_MAX_NAME_LEN = 1 << 16
#: Accepted depth shifts (raw units per metre): 1000 is millimetres (ScanNet), 5000 TUM's 0.2 mm.
DEPTH_SHIFT_RANGE = (100.0, 100000.0)


#: Largest deviation of R^T R from the identity for a pose to count as a rotation (float32 poses
#: of ScanNet are orthonormal to ~1e-6; a zero or scaled rotation is a corrupt pose, not a pose).
POSE_ORTHONORMAL_TOL = 1e-2


def valid_pose_mask(poses: np.ndarray) -> np.ndarray:
    """(F,) bool for (F, 4, 4) camera-to-world poses: finite, with an orthonormal right-handed rotation.

    ScanNet marks lost tracking with ``-inf``; a finite pose whose rotation is zero,
    scaled or a reflection is just as unusable (it would silently project every point
    to one pixel), so it counts as invalid too and is reported with the others.
    """
    p = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    finite = np.isfinite(p).all(axis=(1, 2))
    r = np.where(finite[:, None, None], p[:, :3, :3], 0.0)
    gram = np.einsum("fji,fjk->fik", r, r)
    ortho = np.abs(gram - np.eye(3)).max(axis=(1, 2)) <= POSE_ORTHONORMAL_TOL
    return finite & ortho & (np.linalg.det(r) > 0)


class Closeable:
    """``with obj:`` calls ``obj.close()`` on the way out (the class defines ``close``)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SensHeader:
    """Everything before the first frame of a ``.sens`` file.

    Matrices are (4, 4) float32; sizes in pixels; ``depth_shift`` converts raw
    depth to metres (metres = raw / depth_shift; 1000 for millimetres).
    """

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int

    @property
    def color_size(self) -> tuple[int, int]:
        """(width, height) of the colour images in pixels."""
        return self.color_width, self.color_height

    @property
    def depth_size(self) -> tuple[int, int]:
        """(width, height) of the depth images in pixels."""
        return self.depth_width, self.depth_height


@dataclass
class SensFrame:
    """One recorded frame, payloads still compressed until ``decode_*`` is called.

    ``camera_to_world`` is (4, 4) float32 (``-inf`` everywhere when tracking was
    lost); timestamps are microseconds. The trailing fields carry what decoding
    needs from the header and the file name for error messages.
    """

    index: int
    camera_to_world: np.ndarray
    color_timestamp: int
    depth_timestamp: int
    color_bytes: bytes
    depth_bytes: bytes
    color_compression: int
    depth_compression: int
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    path: str = field(repr=False)

    @property
    def pose_valid(self) -> bool:
        """True when the pose is finite (tracking was not lost) and its rotation a rotation."""
        return bool(valid_pose_mask(self.camera_to_world)[0])

    def decode_color(self) -> np.ndarray:
        """Decode the colour payload to (Hc, Wc, 3) uint8 RGB."""
        return decode_color(self.color_bytes, self.color_compression, self.color_size,
                            path=self.path, index=self.index)

    def decode_depth(self) -> np.ndarray:
        """Decode the depth payload to (Hd, Wd) uint16 raw values (metres = raw / depth_shift)."""
        return decode_depth(self.depth_bytes, self.depth_compression, self.depth_size,
                            path=self.path, index=self.index)


def decode_color(data: bytes, compression: int, size: tuple[int, int],
                 *, path: str | os.PathLike | None = None, index: int = -1) -> np.ndarray:
    """Colour payload -> (H, W, 3) uint8 RGB; ``size`` is the header's (w, h).

    Raises DataFormatError naming ``path`` and the frame ``index`` when the
    payload does not decode or its size disagrees with the header.
    """
    where = f"frame {index}: colour"
    if compression == COLOR_RAW:
        w, h = size
        if len(data) != w * h * 3:
            raise DataFormatError(path, f"{where} raw payload is {len(data)} bytes, expected "
                                        f"{w}*{h}*3 = {w * h * 3}")
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()
    if compression not in (COLOR_JPEG, COLOR_PNG):
        name = _COLOR_NAMES.get(compression, str(compression))
        raise DataFormatError(path, f"colour compression {compression} ({name}) is not supported; "
                                    "only jpeg (2), png (1) and raw (0) are")
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataFormatError(path, f"{where} payload ({len(data)} bytes) does not decode: {exc}") from exc
    if (rgb.shape[1], rgb.shape[0]) != tuple(size):
        raise DataFormatError(path, f"{where} image is {rgb.shape[1]}x{rgb.shape[0]}, "
                                    f"header says {size[0]}x{size[1]}")
    return rgb


def decode_depth(data: bytes, compression: int, size: tuple[int, int],
                 *, path: str | os.PathLike | None = None, index: int = -1) -> np.ndarray:
    """Depth payload -> (H, W) uint16 raw depth; ``size`` is the header's (w, h).

    Supports zlib_ushort (1) and raw_ushort (0), both little-endian uint16.
    """
    where = f"frame {index}: depth"
    if compression == DEPTH_ZLIB_USHORT:
        try:
            raw = zlib.decompress(data)
        except zlib.error as exc:
            raise DataFormatError(path, f"{where} payload ({len(data)} bytes) is not valid zlib: {exc}") from exc
    elif compression == DEPTH_RAW_USHORT:
        raw = data
    else:
        name = _DEPTH_NAMES.get(compression, str(compression))
        raise DataFormatError(path, f"depth compression {compression} ({name}) is not supported; "
                                    "only zlib_ushort (1) and raw_ushort (0) are")
    w, h = size
    if len(raw) != w * h * 2:
        raise DataFormatError(path, f"{where} holds {len(raw)} bytes, expected {w}*{h}*2 = {w * h * 2}")
    return np.frombuffer(raw, dtype="<u2").reshape(h, w).astype(np.uint16)


def _read_exact(f: BinaryIO, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataFormatError(path, f"file ends inside the {what}: needed {n} bytes, found {len(data)}")
    return data


def read_header(f: BinaryIO, path: str) -> SensHeader:
    """Parse the header from the start of ``f``; leaves ``f`` at the first frame."""
    (version,) = _VERSION.unpack(_read_exact(f, _VERSION.size, path, "header (version)"))
    if version != SENS_VERSION:
        raise DataFormatError(path, f"unsupported .sens version {version}, expected {SENS_VERSION}")
    (name_len,) = _NAME_LEN.unpack(_read_exact(f, _NAME_LEN.size, path, "header (sensor name length)"))
    if name_len > _MAX_NAME_LEN:
        raise DataFormatError(path, f"sensor name length {name_len} is implausible; header is corrupt")
    name = _read_exact(f, name_len, path, "header (sensor name)").decode("utf-8", errors="replace")
    mats = np.array(_MATRICES.unpack(_read_exact(f, _MATRICES.size, path, "header (calibration)")),
                    dtype=np.float32).reshape(4, 4, 4)
    ccomp, dcomp, cw, ch, dw, dh, shift = _FORMAT.unpack(
        _read_exact(f, _FORMAT.size, path, "header (image format)"))
    (count,) = _COUNT.unpack(_read_exact(f, _COUNT.size, path, "header (frame count)"))
    if not (math.isfinite(shift) and DEPTH_SHIFT_RANGE[0] <= shift <= DEPTH_SHIFT_RANGE[1]):
        raise DataFormatError(path, f"depth shift {shift:g} is implausible (raw depth units per metre; ScanNet "
                                    f"writes 1000 = millimetres; accepted {DEPTH_SHIFT_RANGE[0]:g}.."
                                    f"{DEPTH_SHIFT_RANGE[1]:g}): every depth would be off by that factor")
    return SensHeader(version=version, sensor_name=name,
                      intrinsic_color=mats[0].copy(), extrinsic_color=mats[1].copy(),
                      intrinsic_depth=mats[2].copy(), extrinsic_depth=mats[3].copy(),
                      color_compression=ccomp, depth_compression=dcomp,
                      color_width=cw, color_height=ch, depth_width=dw, depth_height=dh,
                      depth_shift=float(shift), num_frames=int(count))


class SensReader(Closeable):
    """Lazy reader of a ScanNet ``.sens`` file.

    Opening reads the header and indexes every frame (pose, timestamps, payload
    offsets and sizes) by reading the 96-byte frame headers and seeking past the
    payloads, so memory stays O(frames * 100 bytes) and no image is decoded until
    :meth:`frame` is called. Use as a context manager (or call :meth:`close`).

    Raises DataFormatError (naming the file) for a file shorter than its header,
    a version other than 4, a truncated frame (with its index and the number of
    complete frames) and a frame count that does not match the content.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(require_file(path, ".sens file"))
        self._file: BinaryIO | None = open(self.path, "rb")
        try:
            self.header = read_header(self._file, self.path)
            self._index(self._file)
        except BaseException:
            self.close()
            raise

    # ---- indexing -------------------------------------------------------
    def _index(self, f: BinaryIO) -> None:
        n = self.header.num_frames
        file_size = os.fstat(f.fileno()).st_size
        pos = f.tell()
        remaining = file_size - pos
        # Every frame needs at least its 96-byte header: reject absurd counts before allocating.
        if n > remaining // FRAME_HEADER.size:
            n_fit = self._count_frames_from(f, pos, file_size)
            raise DataFormatError(self.path, f"header declares {n} frames but the file holds "
                                             f"only {n_fit} complete frames ({remaining} bytes after the header)")
        poses = np.empty((n, 16), dtype=np.float32)
        meta = np.empty((n, 4), dtype=np.uint64)   # color ts, depth ts, color size, depth size
        offsets = np.empty(n, dtype=np.int64)      # start of the colour payload
        unpack, hsize = FRAME_HEADER.unpack, FRAME_HEADER.size
        for i in range(n):
            head = f.read(hsize)
            if len(head) != hsize:
                if not head:
                    raise DataFormatError(self.path, f"header declares {n} frames but the file ends after "
                                                     f"{i} complete frames")
                raise DataFormatError(self.path, f"truncated: file ends inside the header of frame {i} "
                                                 f"({len(head)} of {hsize} bytes); {i} of {n} frames are complete")
            values = unpack(head)
            poses[i] = values[:16]
            meta[i] = values[16:]
            pos += hsize
            payload = values[18] + values[19]
            if pos + payload > file_size:
                raise DataFormatError(self.path, f"truncated: frame {i} declares {values[18]} colour + "
                                                 f"{values[19]} depth bytes but only {file_size - pos} bytes "
                                                 f"remain; {i} of {n} frames are complete")
            offsets[i] = pos
            pos += payload
            f.seek(pos)
        if pos != file_size:
            extra = self._count_frames_from(f, pos, file_size)
            raise DataFormatError(self.path, f"header declares {n} frames but {file_size - pos} more bytes "
                                             f"follow them ({n + extra} complete frames in all)")
        self._poses = poses.reshape(n, 4, 4)
        self._meta = meta
        self._offsets = offsets
        self._valid = valid_pose_mask(self._poses)

    @staticmethod
    def _count_frames_from(f: BinaryIO, pos: int, file_size: int) -> int:
        """Number of complete frames from byte ``pos`` on (for error messages only)."""
        count = 0
        while pos + FRAME_HEADER.size <= file_size:
            f.seek(pos)
            values = FRAME_HEADER.unpack(f.read(FRAME_HEADER.size))
            pos += FRAME_HEADER.size + values[18] + values[19]
            if pos > file_size:
                break
            count += 1
        return count

    # ---- access ----------------------------------------------------------
    def __len__(self) -> int:
        return int(self._poses.shape[0])

    @property
    def valid_indices(self) -> list[int]:
        """Indices of the frames whose pose is finite, ascending."""
        return np.flatnonzero(self._valid).tolist()

    @property
    def num_invalid_poses(self) -> int:
        """How many frames have a non-finite (lost tracking) pose."""
        return int((~self._valid).sum())

    def _check_index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.path}: frame {i} out of range (file has {n} frames)")
        return j

    def frame(self, i: int) -> SensFrame:
        """Read frame ``i`` (payloads still compressed) from disk."""
        if self._file is None:  # closed: the index stays valid, reopen the file
            self._file = open(self.path, "rb")
        i = self._check_index(i)
        cts, dts, csize, dsize = (int(v) for v in self._meta[i])
        self._file.seek(int(self._offsets[i]))
        color = self._file.read(csize)
        depth = self._file.read(dsize)
        if len(color) != csize or len(depth) != dsize:  # the file changed under us
            raise DataFormatError(self.path, f"truncated: frame {i} payload could not be read")
        h = self.header
        return SensFrame(index=i, camera_to_world=self._poses[i].copy(),
                         color_timestamp=cts, depth_timestamp=dts,
                         color_bytes=color, depth_bytes=depth,
                         color_compression=h.color_compression, depth_compression=h.depth_compression,
                         color_size=h.color_size, depth_size=h.depth_size, path=self.path)

    def __iter__(self) -> Iterator[SensFrame]:
        """Yield every frame in order, one at a time (only one frame's bytes in memory)."""
        for i in range(len(self)):
            yield self.frame(i)

    def close(self) -> None:
        """Close the file handle; a later :meth:`frame` call reopens it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def _as_matrix(m: np.ndarray | Sequence[float] | None, name: str) -> np.ndarray:
    """A 3x3 or 4x4 matrix (or None = identity) as a (4, 4) float32 array."""
    if m is None:
        return np.eye(4, dtype=np.float32)
    a = np.asarray(m, dtype=np.float64)
    if a.shape == (3, 3):
        out = np.eye(4)
        out[:3, :3] = a
        a = out
    if a.shape != (4, 4):
        raise ConfigError(f"{name} must be 3x3 or 4x4, got shape {a.shape}")
    return a.astype(np.float32)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (Pillow; identical bytes for identical input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_depth_zlib(depth: np.ndarray, level: int = 6) -> bytes:
    """(H, W) uint16 -> zlib of the little-endian uint16 bytes (row-major)."""
    return zlib.compress(np.ascontiguousarray(depth, dtype="<u2").tobytes(), level)


class SensWriter(Closeable):
    """Write a ScanNet ``.sens`` v4 file: JPEG colour, zlib depth.

    The header is written at once with a frame count of 0 and patched on
    :meth:`close`. Intrinsics may be 3x3 or 4x4; extrinsics default to identity.
    Output bytes depend only on the inputs (deterministic).
    """

    def __init__(self, path: str | os.PathLike, *, intrinsic_color: np.ndarray, intrinsic_depth: np.ndarray,
                 color_size: tuple[int, int], depth_size: tuple[int, int], depth_shift: float = 1000.0,
                 sensor_name: str = "StructureSensor", extrinsic_color: np.ndarray | None = None,
                 extrinsic_depth: np.ndarray | None = None, jpeg_quality: int = 90):
        self.path = os.fspath(path)
        self.color_size = (int(color_size[0]), int(color_size[1]))
        self.depth_size = (int(depth_size[0]), int(depth_size[1]))
        self.jpeg_quality = int(jpeg_quality)
        self.num_frames = 0
        mats = [_as_matrix(intrinsic_color, "intrinsic_color"), _as_matrix(extrinsic_color, "extrinsic_color"),
                _as_matrix(intrinsic_depth, "intrinsic_depth"), _as_matrix(extrinsic_depth, "extrinsic_depth")]
        name = sensor_name.encode("utf-8")
        header = b"".join([
            _VERSION.pack(SENS_VERSION), _NAME_LEN.pack(len(name)), name,
            np.stack(mats).astype("<f4").tobytes(),
            _FORMAT.pack(COLOR_JPEG, DEPTH_ZLIB_USHORT, *self.color_size, *self.depth_size, float(depth_shift)),
        ])
        self._count_offset = len(header)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb")
        self._file.write(header + _COUNT.pack(0))

    def write_frame(self, camera_to_world: np.ndarray, color: np.ndarray, depth: np.ndarray,
                    color_timestamp: int = 0, depth_timestamp: int = 0) -> None:
        """Append one frame: pose (4, 4) camera-to-world (``-inf`` for lost tracking),
        colour (Hc, Wc, 3) uint8 RGB, depth (Hd, Wd) uint16 raw, timestamps in microseconds."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        pose = np.asarray(camera_to_world, dtype=np.float32)
        color = np.asarray(color)
        depth = np.asarray(depth)
        cw, ch = self.color_size
        dw, dh = self.depth_size
        i = self.num_frames
        if pose.shape != (4, 4):
            raise DataFormatError(self.path, f"frame {i}: pose must be 4x4, got {pose.shape}")
        if color.shape != (ch, cw, 3) or color.dtype != np.uint8:
            raise DataFormatError(self.path, f"frame {i}: colour must be ({ch}, {cw}, 3) uint8, "
                             f"got {color.shape} {color.dtype}")
        if depth.shape != (dh, dw) or depth.dtype != np.uint16:
            raise DataFormatError(self.path, f"frame {i}: depth must be ({dh}, {dw}) uint16, "
                             f"got {depth.shape} {depth.dtype}")
        cbytes = encode_jpeg(color, self.jpeg_quality)
        dbytes = encode_depth_zlib(depth)
        self._file.write(FRAME_HEADER.pack(*pose.ravel().tolist(), int(color_timestamp), int(depth_timestamp),
                                           len(cbytes), len(dbytes)))
        self._file.write(cbytes)
        self._file.write(dbytes)
        self.num_frames += 1

    def close(self) -> None:
        """Patch the frame count into the header and close the file."""
        if self._file is None:
            return
        self._file.seek(self._count_offset)
        self._file.write(_COUNT.pack(self.num_frames))
        self._file.close()
        self._file = None
