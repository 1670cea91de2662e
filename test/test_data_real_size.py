"""ScanNet's native sizes end to end, as a user makes them: ``safnet data synth --color-size 1296x968
--depth-size 640x480`` writes a .sens laid out like ScanNet's (JPEG colour at 1296x968, zlib depth at
640x480, each camera with its own intrinsics) and ``safnet bag convert`` keeps its recorded 30 Hz stamps.

Three frames only: the sizes, not the length, are what is tested (the benchmark stream of
docs/benchmarks.md, "Real-size stream", is the same command with ``--frames 300``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safnet_ros.cli import main
from safnet_ros.data.scannet import ScanNetScene
from safnet_ros.data.sens import SensReader
from safnet_ros.ros import codecs
from safnet_ros.tools import bag_io as bio

COLOR_WH, DEPTH_WH = (1296, 968), (640, 480)
FRAMES = 3


@pytest.fixture(scope="module")
def real_size_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_size") / "synth"
    assert main(["data", "synth", str(out), "--scenes", "1", "--seed", "41", "--frames", str(FRAMES),
                 "--color-size", "1296x968", "--depth-size", "640x480", "--vertex-spacing", "0.1",
                 "--invalid-poses", "0", "--quiet"]) == 0
    (scene,) = [p for p in out.iterdir() if p.is_dir()]
    return scene


def test_synth_writes_scannets_native_layout(real_size_scene: Path):
    name = real_size_scene.name
    with SensReader(real_size_scene / f"{name}.sens") as r:
        h = r.header
        assert (h.color_width, h.color_height) == COLOR_WH and (h.depth_width, h.depth_height) == DEPTH_WH
        assert len(r) == FRAMES
        frame = r.frame(1)
        assert frame.color_bytes[:2] == b"\xff\xd8", "colour is stored as JPEG, as in ScanNet's .sens"
        assert frame.decode_color().shape == (COLOR_WH[1], COLOR_WH[0], 3)
        depth = frame.decode_depth()
        assert depth.shape == (DEPTH_WH[1], DEPTH_WH[0]) and np.count_nonzero(depth) > 0.5 * depth.size
        Kc, Kd = h.intrinsic_color[:3, :3], h.intrinsic_depth[:3, :3]
        # each camera its own intrinsics, principal points at its own image centre (ScanNet: fx ~1170 at
        # 1296 wide for colour, ~577 at 640 for depth) ...
        np.testing.assert_allclose(Kc[:2, 2], np.array(COLOR_WH) / 2, atol=1.0)
        np.testing.assert_allclose(Kd[:2, 2], np.array(DEPTH_WH) / 2, atol=1.0)
        assert 1000 < Kc[0, 0] < 1300 and 500 < Kd[0, 0] < 650
        # ... covering the same field of view (registered streams)
        assert Kc[0, 0] / COLOR_WH[0] == pytest.approx(Kd[0, 0] / DEPTH_WH[0], rel=1e-3)
        stamps = np.array([r.frame(i).color_timestamp for i in range(len(r))])
        np.testing.assert_allclose(np.diff(stamps), 1e6 / 30, atol=1)  # microseconds, 30 Hz
    # the scene folder's .txt carries both cameras' sizes and intrinsics, as ScanNet's does
    meta = dict(line.split(" = ", 1) for line in (real_size_scene / f"{name}.txt").read_text().splitlines())
    assert (int(meta["colorWidth"]), int(meta["colorHeight"])) == COLOR_WH
    assert (int(meta["depthWidth"]), int(meta["depthHeight"])) == DEPTH_WH
    assert float(meta["fx_color"]) == pytest.approx(Kc[0, 0], rel=1e-5)
    assert float(meta["fx_depth"]) == pytest.approx(Kd[0, 0], rel=1e-5)
    scene = ScanNetScene(real_size_scene)
    assert scene.sens_path.is_file()


def test_bag_convert_keeps_the_recorded_30hz_stamps_at_full_size(real_size_scene: Path, tmp_path: Path):
    from rosbags.rosbag2 import Reader

    out = tmp_path / "bag"
    assert main(["bag", "convert", str(real_size_scene), str(out), "--cloud-rate", "0"]) == 0
    stamps: dict[str, list[int]] = {}
    first: dict[str, object] = {}
    with Reader(out) as reader:
        for conn, t_ns, raw in reader.messages():
            if conn.topic in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC):
                msg = bio.deserialize(raw, conn.msgtype)
                stamps.setdefault(conn.topic, []).append(codecs.stamp_to_ns(msg.header.stamp))
                assert t_ns == stamps[conn.topic][-1], "recorded at its stamp"
                first.setdefault(conn.topic, msg)
    for topic in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC):
        assert len(stamps[topic]) == FRAMES
        np.testing.assert_allclose(np.diff(stamps[topic]), 1e9 / 30, atol=1000)  # ns: the recorded 30 Hz
    color, depth, info = (first[t] for t in (bio.COLOR_TOPIC, bio.DEPTH_TOPIC, bio.CAMERA_INFO_TOPIC))
    assert (color.width, color.height, color.encoding) == (*COLOR_WH, "rgb8")
    assert (depth.width, depth.height, depth.encoding) == (*COLOR_WH, "16UC1")  # registered to colour
    assert (info.width, info.height) == COLOR_WH
    with SensReader(real_size_scene / f"{real_size_scene.name}.sens") as r:
        Kd = r.header.intrinsic_depth[:3, :3]
    # K: the depth intrinsics scaled to the registered (colour) size, what back-projection uses
    K = codecs.camera_info_to_K(info)
    np.testing.assert_allclose(K[0, 0], Kd[0, 0] * COLOR_WH[0] / DEPTH_WH[0], rtol=1e-5)
    np.testing.assert_allclose(K[1, 1], Kd[1, 1] * COLOR_WH[1] / DEPTH_WH[1], rtol=1e-5)
