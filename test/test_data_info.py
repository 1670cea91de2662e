"""``safnet data info``: JSON and table output on a small scene written in ScanNet's format."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.cli import main
from safnet_ros.data import info as info_cmd
from safnet_ros.data.ply import write_scannet_mesh
from safnet_ros.data.sens import SensWriter
from safnet_ros.errors import MissingDataError

NAME = "scene0042_00"


def write_scene(root, n_frames=6, lost=(1, 4), labels=True, sens=True):
    d = root / NAME
    d.mkdir(parents=True)
    if sens:
        k = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
        with SensWriter(d / f"{NAME}.sens", intrinsic_color=k, intrinsic_depth=k / 2 + np.diag([0, 0, 0.5]),
                        color_size=(64, 48), depth_size=(32, 24)) as w:
            for i in range(n_frames):
                pose = np.full((4, 4), -np.inf) if i in lost else np.eye(4)
                w.write_frame(pose, np.full((48, 64, 3), 20 * i, np.uint8), np.full((24, 32), 1500, np.uint16))
    rng = np.random.default_rng(1)
    n = 40
    xyz = rng.uniform(0, 3, size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    write_scannet_mesh(d / f"{NAME}_vh_clean_2.ply", xyz, rgb, faces)
    if labels:
        # 10 wall (1), 7 chair (5), 3 otherfurniture (39), 12 ceiling (22, not benchmark), 8 unannotated (0)
        lab = np.array([1] * 10 + [5] * 7 + [39] * 3 + [22] * 12 + [0] * 8, np.uint16)
        write_scannet_mesh(d / f"{NAME}_vh_clean_2.labels.ply", xyz, rgb, faces, labels=lab)
    (d / f"{NAME}.txt").write_text("axisAlignment = " + " ".join(map(str, np.eye(4).ravel())) + "\n")
    return d


def test_cli_json(tmp_path, capsys):
    d = write_scene(tmp_path)
    assert main(["data", "info", str(d), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)  # exactly one JSON object
    assert info["scene"] == NAME
    assert (info["frames"], info["valid_frames"], info["invalid_frames"]) == (6, 4, 2)
    assert info["points"] == 40 and info["faces"] == 2
    assert info["color_wh"] == [64, 48] and info["depth_wh"] == [32, 24]
    assert info["nyu40_hist"] == {"1": 10, "5": 7, "39": 3}
    assert info["labelled_points"] == 20
    assert info["axis_aligned"] is True and info["label_file"] is True and info["frame_source"] == "sens"


def test_a_reader_that_goes_away_is_not_a_bug(tmp_path):
    """``safnet data info SCENE --json | head -c 0``: the pipe closes before safnet writes. No traceback, no
    'internal error' line, exit status 1 (Python's convention for a closed stdout)."""
    d = write_scene(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before safnet writes anything
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "safnet_ros.cli", "data", "info", str(d), "--json"],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=repo))
    os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""


def test_cli_missing_parts_is_one_error(tmp_path, capsys):
    d = tmp_path / NAME
    d.mkdir()
    assert main(["data", "info", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"mesh {NAME}_vh_clean_2.ply" in err and f"{NAME}.sens" in err


def _run(argv):
    parser = argparse.ArgumentParser()
    info_cmd.add_arguments(parser)
    return info_cmd.run(parser.parse_args(argv))


def test_run_table_and_json_without_labels(tmp_path, capsys):
    d = write_scene(tmp_path, labels=False)
    assert _run([str(d)]) == 0
    table = capsys.readouterr().out
    assert NAME in table and "6 (4 valid, 2 lost tracking) from sens" in table and "64x48" in table
    assert _run([str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["label_file"] is False and info["nyu40_hist"] == {}


def test_run_table_histogram(tmp_path, capsys):
    d = write_scene(tmp_path)
    assert _run([str(d)]) == 0
    table = capsys.readouterr().out
    assert "chair" in table and "otherfurniture" in table and "ceiling" not in table
    assert table.rstrip().endswith("20")


def test_missing_mesh_and_frames_raise_one_missing_data_error(tmp_path):
    d = write_scene(tmp_path, sens=False)
    (d / f"{NAME}_vh_clean_2.ply").unlink()
    with pytest.raises(MissingDataError) as exc:
        _run([str(d), "--json"])
    assert "mesh" in str(exc.value) and "RGB-D frames" in str(exc.value)
    with pytest.raises(MissingDataError, match="scene folder is missing"):
        _run([str(tmp_path / "nowhere")])
