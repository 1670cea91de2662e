"""scripts/map_smoothing_study.py: the vote and the map read with several smoothings, on real tiny rooms end to end."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from safnet_ros.mapping.map_ply import load_map
from safnet_ros.mapping.score import score_labels, transfer_labels

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "map_smoothing_study.py"


def _study():
    spec = importlib.util.spec_from_file_location("map_smoothing_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_scores_the_vote_and_each_read_out_of_one_fused_map(tmp_path, capsys):
    study = _study()
    assert study.parse_seeds("3,5-6") == [3, 5, 6]
    out = tmp_path / "rooms"
    png = tmp_path / "room.png"
    assert study.main([str(out), "--seeds", "3", "--fast", "--weights", "0,1", "--cells", "0.16",
                       "--per-class", "1@0.16", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("1 rooms (seeds 3)"):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:4]}
    assert set(rows) == {"0@0.16", "1@0.16"}
    assert "per-class IoU %, pooled over the rooms:" in table and png.stat().st_size > 10_000
    # the map was fused once, raw (smoothing 0 in the file), and each row is that map re-read
    ply = out / "seed3" / "map.ply"
    raw = load_map(ply)
    assert raw.smoothing == 0.0 and len(raw) > 0
    scene = study.room(out, 3, None, 24, True)[0]  # reused from the cache
    for key, (w, c) in {"0@0.16": (0.0, 0.16), "1@0.16": (1.0, 0.16)}.items():
        labels = transfer_labels(load_map(ply, smoothing=w, smoothing_cell=c).snapshot(), scene.xyz)
        assert float(rows[key][1]) == round(100 * score_labels(scene.truth, labels)["miou"], 2)
    # the vote: every labelled cloud's labels voted per vertex
    voted = study.vote(scene, out / "seed3" / "labelled")
    assert (voted >= 0).any() and np.isin(voted[voted >= 0], np.arange(20)).all()
