"""scripts/table3_report.py: Table III / Fig. 5 from `safnet eval --json` files (seeds averaged or pooled)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "table3_report.py"
BINS = ["< 5 cm", "5-10 cm", "10-20 cm", "20-50 cm", ">= 50 cm", "no view"]


def _report():
    spec = importlib.util.spec_from_file_location("table3_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_json(path: Path, miou: dict, near: tuple[int, float]) -> str:
    """A one-model eval JSON with by_views, oa_by_views, per_class_by_views and accuracy_by_view_distance."""
    views = {k: [{"bin": b, "points": 0, "accuracy": None} for b in BINS] for k in miou}
    for k in miou:
        views[k][0] = {"bin": BINS[0], "points": near[0], "accuracy": near[1]}
        views[k][4] = {"bin": BINS[4], "points": 100, "accuracy": 0.5}
    data = {"by_views": miou, "oa_by_views": {k: 0.8 for k in miou},
            "per_class_by_views": {k: {"wall": 0.9, "floor": None} for k in miou},
            "accuracy_by_view_distance": views}
    path.write_text(json.dumps(data))
    return str(path)


def test_rows_average_seeds_and_pool_the_distance_bins(tmp_path, capsys):
    a = _eval_json(tmp_path / "a.json", {"1": 0.20, "3": 0.30, "5": 0.32}, (300, 0.9))
    b = _eval_json(tmp_path / "b.json", {"1": 0.24, "3": 0.34, "5": 0.34}, (100, 0.5))
    c = _eval_json(tmp_path / "c.json", {"1": 0.25, "3": 0.27, "5": 0.27}, (100, 0.7))
    assert _report().main(["--row", f"full={a},{b}", "--row", f"concat={c}", "--per-class", "3",
                           "--by-view-distance", "1,5"]) == 0
    out = capsys.readouterr().out
    assert "| full | 2 | 22.0 (20.0 / 24.0) | 32.0 (30.0 / 34.0) | 33.0 (32.0 / 34.0) | 80.0 | -11.0 |" in out
    assert "| concat | 1 | 25.0 | 27.0 | 27.0 | 80.0 | -2.0 |" in out
    assert "| wall | 90.0 | 90.0 |" in out and "| floor | – | – |" in out
    # pooled: (300 * 0.9 + 100 * 0.5) / 400 = 80 %, 400 of 600 points in the first bin
    assert "| full | 1 | 80.0 (67 %) | – | – | – | 50.0 (33 %) | – |" in out


def test_bad_inputs_are_one_error_line(tmp_path):
    report = _report()
    with pytest.raises(SystemExit, match="NAME=FILE"):
        report.main(["--row", "no-equals-sign"])
    (tmp_path / "x.json").write_text(json.dumps({"miou": 0.3}))
    with pytest.raises(SystemExit, match="no by_views"):
        report.main(["--row", f"x={tmp_path / 'x.json'}"])
    with pytest.raises(SystemExit, match="x.json"):
        report.main(["--row", f"x={tmp_path / 'missing' / 'x.json'}"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"by_views": {"1": 0.2}, "oa_by_views": {"1": 0.8}}))
    with pytest.raises(SystemExit, match="accuracy_by_view_distance"):
        report.main(["--row", f"old={old}", "--by-view-distance", "1"])


def _scene_json(path: Path, per_scene: dict[str, dict[str, tuple[int, int]]]) -> str:
    """An eval JSON whose rooms hold one class each: per_scene[views][room] = (right, wrong) wall points."""
    conf, by_views = {}, {}
    for k, rooms in per_scene.items():
        conf[k] = {}
        total = np.zeros((20, 21), np.int64)
        for room, (right, wrong) in rooms.items():
            m = np.zeros((20, 21), np.int64)
            m[0, 0], m[0, 1] = right, wrong  # wall rows: right, or called floor
            conf[k][room] = m.tolist()
            total += m
        by_views[k] = float(total[0, 0] / total[0].sum()) / 2  # mIoU: wall IoU, floor IoU 0
    path.write_text(json.dumps({"by_views": by_views, "oa_by_views": {k: 0.5 for k in by_views},
                                "per_class_by_views": {k: {"wall": 0.5} for k in by_views},
                                "per_scene_confusion": conf}))
    return str(path)


def test_scenes_subset_and_the_paired_bootstrap_over_rooms(tmp_path, capsys):
    # A loses nothing from 5 to 1 views in every room; B loses in every room: every draw favours A.
    a = _scene_json(tmp_path / "a.json", {k: {"r1": (80, 20), "r2": (60, 40), "r3": (90, 10)} for k in "135"})
    b = _scene_json(tmp_path / "b.json", {"1": {"r1": (50, 50), "r2": (30, 70), "r3": (60, 40)},
                                          "3": {"r1": (70, 30), "r2": (50, 50), "r3": (80, 20)},
                                          "5": {"r1": (80, 20), "r2": (60, 40), "r3": (90, 10)}})
    report = _report()
    res = report.bootstrap_compare([report.load_row(f"A={a}"), report.load_row(f"B={b}")], ["A", "B"], 200)
    assert res["rooms"] == 3 and res["drop"]["A"] == pytest.approx(0.0)
    assert res["drop"]["B"] < 0 and res["drop_diff"] > 0 and res["p_a_loses_less"] == 1.0
    lo, hi = res["drop_diff_ci"]
    assert 0 < lo <= res["drop_diff"] <= hi
    # --scenes: the figures of rooms r1 and r2 pooled. A: wall IoU 140 / 200, floor (predicted, never
    # true) 0, so mIoU 35 %, OA 70 %; B's wall IoU grows from 80 / 200 at 1 view to 140 / 200 at 5
    assert report.main(["--row", f"A={a}", "--row", f"B={b}", "--scenes", "r1,r2",
                        "--bootstrap", "50", "--compare", "A", "B"]) == 0
    out = capsys.readouterr().out
    assert "| A | 1 | 35.0 | 35.0 | 35.0 | 70.0 | +0.0 |" in out
    assert "| B | 1 | 20.0 | 30.0 | 35.0 | 60.0 | -15.0 |" in out
    assert "Paired bootstrap over 2 rooms (50 draws), A minus B:" in out
    assert "| 1 view − 5 views (mIoU points) | +0.0 | -15.0 | +15.0 |" in out
    assert "A loses fewer points from 5 to 1 views than B in 100 % of the draws." in out
    # bad combinations are one error line
    with pytest.raises(SystemExit, match="--compare"):
        report.main(["--row", f"A={a}", "--bootstrap", "10"])
    with pytest.raises(SystemExit, match="no --row"):
        report.main(["--row", f"A={a}", "--row", f"B={b}", "--bootstrap", "10", "--compare", "A", "C"])
    with pytest.raises(SystemExit, match="no scene r9"):
        report.main(["--row", f"A={a}", "--scenes", "r9"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"by_views": {"1": 0.2}, "oa_by_views": {"1": 0.8}}))
    with pytest.raises(SystemExit, match="per_scene_confusion"):
        report.main(["--row", f"old={old}", "--scenes", "r1"])
