"""scripts/moved_similarity_report.py: S on moved vs static surfaces summed over `safnet data stats --json` files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.data.view_similarity import sighting_rows

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "moved_similarity_report.py"
nan = np.nan


def _report():
    spec = importlib.util.spec_from_file_location("moved_similarity_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pooled(vertices: int, s: float) -> dict:
    return {"vertices": vertices, "s_mean": s}


def _scan(path: Path, name: str, s: np.ndarray, moved: np.ndarray, classes: np.ndarray) -> Path:
    """A stats JSON as `safnet data stats --model --json` writes it, its per_view block from sighting_rows."""
    per_view = sighting_rows(s, np.zeros_like(s, bool), moved, np.ones(len(moved), bool), classes)
    data = {"scene": name, "moved_similarity": {
        "static": _pooled(10, 1.0), "moved": _pooled(2, 0.9), "moved_chosen_through": _pooled(1, 0.5),
        "moved_chosen_sees": _pooled(1, 1.1), "per_view": per_view}}
    path.write_text(json.dumps(data))
    return path


def test_sums_sightings_over_scans_weighted_by_count_and_bootstraps_over_scans(tmp_path, capsys):
    # scan a: static (class 4) sightings 1.0, 0.8; moved (class 4) 0.5  | scan b: static 0.9 x3, moved (class 7) 0.6, 0.7
    a = _scan(tmp_path / "a.json", "a", np.array([[1.0, 0.5], [0.8, nan]]), np.array([False, True]), np.array([4, 4]))
    b = _scan(tmp_path / "b.json", "b", np.array([[0.9, 0.6], [0.9, 0.7], [0.9, nan]]), np.array([False, True]),
              np.array([1, 7]))
    report = _report()
    scans = report.load([str(a), str(b)])
    assert report.weighted([s["per_view"]["static"] for s in scans], "sightings") == (5, pytest.approx(4.5 / 5))
    assert report.weighted([s["per_view"]["moved"] for s in scans], "sightings") == (3, pytest.approx(1.8 / 3))
    # only scan a has a class shared by moved and static sightings: moved 0.5 against static class 4's 0.9
    assert report.same_classes(scans) == (1, pytest.approx(0.5), pytest.approx(0.9))
    assert report.differences(scans) == {"moved - static": pytest.approx(0.6 - 0.9),
                                         "moved - static, same classes": pytest.approx(-0.4)}
    assert report.main([str(a), str(b), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "| static | 20 | 1.000 |" in out  # the pooled rows: 10 vertices a scan at S 1.0
    assert "| on moved objects | 3 | 2 | 0.600 |" in out and "moved below static in 2 of 2 scans" in out
    assert "Paired bootstrap over scans (50 draws)" in out and "| moved - static | -0.300 |" in out


def test_a_stats_file_without_s_view_by_view_is_one_error_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"scene": "x", "moved_similarity": {"static": _pooled(1, 1.0)}}))
    with pytest.raises(SystemExit, match="error: .*no S view by view"):
        _report().main([str(old)])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="error: .*not a `safnet data stats --json` file"):
        _report().main([str(tmp_path / "bad.json")])
