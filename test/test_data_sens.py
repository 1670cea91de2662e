"""ScanNet .sens v4: byte layout, round trip, lost-tracking poses and every bad-input error."""
from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from safnet_ros.data.sens import FRAME_HEADER, SensReader, SensWriter
from safnet_ros.errors import DataFormatError

K_COLOR = np.array([[1170.2, 0, 647.7], [0, 1170.2, 483.7], [0, 0, 1]])
K_DEPTH = np.array([[571.6, 0, 319.5], [0, 571.6, 239.5], [0, 0, 1]])
CW, CH, DW, DH = 40, 30, 20, 16


def smooth_rgb(w: int, h: int, phase: float = 0.0) -> np.ndarray:
    """A smooth colour gradient (JPEG reproduces it closely)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / w * np.pi + phase)
    g = 40 + 180 * y / h
    b = 90 + 60 * np.cos((x + y) / (w + h) * np.pi)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def depth_mm(w: int, h: int, k: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    d = (500 + 37 * x + 11 * y + 101 * k).astype(np.uint16)
    d[0, 0] = 0  # an invalid pixel stays 0
    return d


def pose(k: int) -> np.ndarray:
    c, s = np.cos(0.1 * k), np.sin(0.1 * k)
    return np.array([[c, -s, 0, 0.5 * k], [s, c, 0, 1.25], [0, 0, 1, 1.5], [0, 0, 0, 1]], dtype=np.float32)


def write_sens(path, n: int = 4, invalid: tuple[int, ...] = ()) -> None:
    with SensWriter(path, intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH,
                    color_size=(CW, CH), depth_size=(DW, DH)) as w:
        for k in range(n):
            p = np.full((4, 4), -np.inf, np.float32) if k in invalid else pose(k)
            w.write_frame(p, smooth_rgb(CW, CH, 0.3 * k), depth_mm(DW, DH, k),
                          color_timestamp=1_000_000 + 33_333 * k, depth_timestamp=1_000_100 + 33_333 * k)


def handcrafted_sens(frames: list[tuple[np.ndarray, bytes, bytes, int, int]], *, version: int = 4,
                     name: bytes = b"StructureSensor", count: int | None = None) -> bytes:
    """A .sens file built with ``struct`` straight from docs/design.md §2.2, independent of SensWriter."""
    k_c, k_d = np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)
    k_c[:3, :3], k_d[:3, :3] = K_COLOR, K_DEPTH
    out = [struct.pack("<I", version), struct.pack("<Q", len(name)), name]
    for m in (k_c, np.eye(4), k_d, np.eye(4)):
        out.append(struct.pack("<16f", *np.asarray(m, np.float32).ravel()))
    out.append(struct.pack("<ii", 2, 1))
    out.append(struct.pack("<IIII", CW, CH, DW, DH))
    out.append(struct.pack("<f", 1000.0))
    out.append(struct.pack("<Q", len(frames) if count is None else count))
    for cam, cbytes, dbytes, cts, dts in frames:
        out.append(struct.pack("<16f", *cam.ravel()))
        out.append(struct.pack("<QQ", cts, dts))
        out.append(struct.pack("<QQ", len(cbytes), len(dbytes)))
        out += [cbytes, dbytes]
    return b"".join(out)


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_layout_matches_spec_to_the_byte(tmp_path):
    frames = [(pose(k), jpeg(smooth_rgb(CW, CH, 0.3 * k)),
               zlib.compress(depth_mm(DW, DH, k).astype("<u2").tobytes(), 6),
               1_000_000 + 33_333 * k, 1_000_100 + 33_333 * k) for k in range(3)]
    expected = handcrafted_sens(frames)
    write_sens(tmp_path / "w.sens", n=3)
    assert (tmp_path / "w.sens").read_bytes() == expected

    (tmp_path / "h.sens").write_bytes(expected)
    with SensReader(tmp_path / "h.sens") as r:
        h = r.header
        assert (h.version, h.sensor_name, h.num_frames) == (4, "StructureSensor", 3)
        assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (CW, CH, DW, DH)
        assert (h.color_compression, h.depth_compression, h.depth_shift) == (2, 1, 1000.0)
        np.testing.assert_array_equal(h.intrinsic_color[:3, :3], K_COLOR.astype(np.float32))
        np.testing.assert_array_equal(h.intrinsic_depth[:3, :3], K_DEPTH.astype(np.float32))
        np.testing.assert_array_equal(h.extrinsic_depth, np.eye(4))
        f = r.frame(2)
        assert (f.color_timestamp, f.depth_timestamp) == (1_066_666, 1_066_766)
        assert f.color_bytes == frames[2][1] and f.depth_bytes == frames[2][2]


def test_round_trip_poses_depth_exact_colour_close(tmp_path):
    path = tmp_path / "scene.sens"
    write_sens(path, n=5)
    with SensReader(path) as r:
        assert len(r) == 5 and r.header.num_frames == 5
        assert r.valid_indices == [0, 1, 2, 3, 4] and r.num_invalid_poses == 0
        for k, f in enumerate(r):
            assert f.index == k and f.pose_valid
            np.testing.assert_array_equal(f.camera_to_world, pose(k))
            np.testing.assert_array_equal(f.decode_depth(), depth_mm(DW, DH, k))
            assert f.decode_depth().dtype == np.uint16
            rgb = f.decode_color()
            assert rgb.shape == (CH, CW, 3) and rgb.dtype == np.uint8
            err = np.abs(rgb.astype(int) - smooth_rgb(CW, CH, 0.3 * k).astype(int)).mean()
            assert err < 3.0
            assert f.color_timestamp == 1_000_000 + 33_333 * k
        np.testing.assert_array_equal(r.frame(-1).camera_to_world, pose(4))
        with pytest.raises(IndexError):
            r.frame(5)


def test_writer_is_deterministic(tmp_path):
    write_sens(tmp_path / "a.sens")
    write_sens(tmp_path / "b.sens")
    assert (tmp_path / "a.sens").read_bytes() == (tmp_path / "b.sens").read_bytes()


def test_lost_tracking_frames_are_skipped_and_counted(tmp_path):
    path = tmp_path / "lost.sens"
    write_sens(path, n=5, invalid=(1, 3))
    with SensReader(path) as r:
        assert len(r) == 5
        assert r.valid_indices == [0, 2, 4]
        assert r.num_invalid_poses == 2
        assert not r.frame(3).pose_valid
        assert np.isneginf(r.frame(1).camera_to_world).all()


def test_file_shorter_than_header(tmp_path):
    path = tmp_path / "short.sens"
    path.write_bytes(handcrafted_sens([])[:100])
    with pytest.raises(DataFormatError, match="short.sens.*file ends inside the header"):
        SensReader(path)


def test_wrong_version(tmp_path):
    path = tmp_path / "v3.sens"
    path.write_bytes(handcrafted_sens([], version=3))
    with pytest.raises(DataFormatError, match=r"v3.sens: unsupported .sens version 3, expected 4"):
        SensReader(path)


def test_truncated_frame_names_index_and_complete_count(tmp_path):
    path = tmp_path / "cut.sens"
    write_sens(path, n=4)
    data = path.read_bytes()
    path.write_bytes(data[:-50])  # inside the last frame's depth payload
    with pytest.raises(DataFormatError) as info:
        SensReader(path)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg and "frame 3" in msg and "3 of 4 frames are complete" in msg


def test_frame_count_does_not_match_content(tmp_path):
    frames = [(pose(k), jpeg(smooth_rgb(CW, CH)), zlib.compress(depth_mm(DW, DH, k).tobytes()), 0, 0)
              for k in range(3)]
    more = tmp_path / "more.sens"
    more.write_bytes(handcrafted_sens(frames, count=5))
    with pytest.raises(DataFormatError, match=r"more.sens: header declares 5 frames .* 3 complete frames"):
        SensReader(more)
    fewer = tmp_path / "fewer.sens"
    fewer.write_bytes(handcrafted_sens(frames, count=2))
    with pytest.raises(DataFormatError, match=r"fewer.sens: header declares 2 frames but \d+ more bytes .*3 complete"):
        SensReader(fewer)


@pytest.mark.parametrize("what", ["jpeg", "zlib", "size"])
def test_undecodable_payloads_name_file_and_frame(tmp_path, what):
    good_c, good_d = jpeg(smooth_rgb(CW, CH)), zlib.compress(depth_mm(DW, DH, 0).tobytes())
    bad = {"jpeg": (b"\xff\xd8not a jpeg at all", good_d),
           "zlib": (good_c, b"\x78\x9cgarbage"),
           "size": (good_c, zlib.compress(np.zeros((DH, DW - 1), np.uint16).tobytes()))}[what]
    frames = [(pose(0), good_c, good_d, 0, 0), (pose(1), *bad, 0, 0)]
    path = tmp_path / f"bad_{what}.sens"
    path.write_bytes(handcrafted_sens(frames))
    with SensReader(path) as r:
        r.frame(0).decode_color()
        f = r.frame(1)
        with pytest.raises(DataFormatError) as info:
            f.decode_color() if what == "jpeg" else f.decode_depth()
    msg = str(info.value)
    assert str(path) in msg and "frame 1" in msg
    if what == "size":
        assert f"expected {DW}*{DH}*2 = {DW * DH * 2}" in msg


def test_indexing_only_reads_frame_headers(tmp_path):
    """A sparse file declaring 64 MiB payloads per frame (4 GiB in all) indexes at once."""
    path = tmp_path / "huge.sens"
    n, payload = 64, 64 << 20
    with open(path, "wb") as f:
        f.write(handcrafted_sens([], count=n))
        for k in range(n):
            f.write(FRAME_HEADER.pack(*pose(k).ravel(), k, k, payload, 0))
            f.seek(payload, os.SEEK_CUR)
        f.truncate()
    if os.stat(path).st_blocks * 512 > 64 << 20:  # pragma: no cover - filesystem without sparse files
        pytest.skip("filesystem does not support sparse files")
    tracemalloc.start()
    t0 = time.perf_counter()
    with SensReader(path) as r:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(r) == n and r.valid_indices == list(range(n))
        np.testing.assert_array_equal(r.frame(7).camera_to_world, pose(7))
    assert elapsed < 2.0
    assert peak < 8 << 20
