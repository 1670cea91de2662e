"""``safnet segment-bag --map`` and ``safnet map score`` on a real synthetic ScanNet scene and its bag."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from safnet_ros.cli import main
from safnet_ros.tools import bag_io as bio


@pytest.fixture(scope="module")
def scene_and_bag(tmp_path_factory) -> tuple[Path, Path]:
    from safnet_ros.data.synth.generate import SynthConfig, generate_scene
    from safnet_ros.tools.bag_convert import convert_scene

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(frames=12, color_size=(80, 60), depth_size=(40, 30), vertex_spacing=0.12, progress=False)
    scene = root / generate_scene(root, seed=11, index=0, cfg=cfg)["name"]
    bag = root / "scene.mcap_bag"
    convert_scene(scene, bag, cloud_rate=4.0, progress=False)
    return scene, bag


def test_segment_bag_writes_the_map_and_map_score_scores_it(scene_and_bag, tmp_path, capsys):
    from rosbags.rosbag2 import Reader

    from safnet_ros.data.labels import IGNORE_INDEX
    from safnet_ros.mapping.map_ply import load_map

    scene, bag = scene_and_bag
    out, map_path = tmp_path / "labelled", tmp_path / "maps" / "scene.ply"
    assert main(["segment-bag", str(bag), str(out), "--map", str(map_path), "--map-voxel-size", "0.1",
                 "--max-views", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"map: {map_path}" in printed and "ms per map update" in printed
    vmap = load_map(map_path)
    assert vmap.voxel_size == 0.1 and vmap.fusion == "count" and len(vmap) > 0
    assert (vmap.smoothing, vmap.smoothing_cell) == (1.0, 0.16)  # the node's defaults
    # every segmented point of every labelled cloud in the output bag is in the map once
    segmented = 0
    with Reader(out) as reader:
        for conn, _t, raw in reader.messages():
            if conn.topic == bio.LABELED_CLOUD_TOPIC:
                arr = bio.pointcloud_to_array(bio.deserialize(raw, conn.msgtype))
                segmented += int((arr["label"] != IGNORE_INDEX).sum())
    assert segmented > 0 and int(vmap.snapshot().observations.sum()) == segmented

    assert main(["map", "score", str(map_path), str(scene), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["voxels"] == len(vmap) and result["max_distance"] == 0.1
    assert 0 < result["coverage"] <= 1 and 0 <= result["miou_all_vertices"] <= result["miou"] <= 1
    assert 0 < result["labelled_vertices"] <= result["vertices"]
    assert main(["map", "score", str(map_path), str(scene), "--max-distance", "0.5"]) == 0
    table = capsys.readouterr().out
    assert "coverage" in table and "mIoU, all vertices" in table and "within 0.500 m" in table
    assert "read with smoothing 1 over 0.16 m" in table
    # the same map read voxel by voxel: what its labels are with smoothing 0
    assert main(["map", "score", str(map_path), str(scene), "--smoothing", "0", "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["smoothing"] == 0.0 and raw["labelled_vertices"] == result["labelled_vertices"]


@pytest.mark.parametrize("argv, words", [
    (["map", "score", "{tmp}/missing.ply", "{scene}"], "missing.ply: semantic map PLY is missing"),
    (["map", "score", "{mesh}", "{scene}"], "not a semantic map PLY: vertex properties"),
    (["map", "score", "{mesh}", "{tmp}/no_scene"], "no_scene: scene folder is missing"),
    (["map", "score", "{mesh}", "{scene}", "--smoothing", "-2"], "map smoothing weight must be in [0, 100]"),
    (["segment-bag", "{bag}", "{tmp}/o", "--map", "{tmp}/m.ply", "--map-voxel-size", "-1"],
     "argument --map-voxel-size: must be"),
    (["segment-bag", "{bag}", "{tmp}/o", "--map", "{tmp}/m.ply", "--map-max-voxels", "0"],
     "argument --map-max-voxels: must be an integer >= 1"),
    (["segment-bag", "{bag}", "{tmp}/o", "--map", "{tmp}/m.ply", "--map-smoothing", "-1"],
     "map smoothing weight must be in [0, 100] (0 = off)"),
    (["segment-bag", "{bag}", "{tmp}/o", "--map", "{tmp}/m.ply", "--map-smoothing-cell", "nan"],
     "map smoothing cell must be in (0, 100] metres"),
])
def test_bad_input_is_one_error_line(scene_and_bag, tmp_path, capsys, argv, words):
    scene, bag = scene_and_bag
    mesh = next(scene.glob("*_vh_clean_2.labels.ply"))
    args = [a.format(tmp=tmp_path, scene=scene, mesh=mesh, bag=bag) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]  # argparse's comes after its usage lines
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.ply").exists()
