"""``safnet bench map``: update times per cloud and the read-out's cost, printed as a table or JSON."""
from __future__ import annotations

import json

from safnet_ros.cli import main


def test_bench_map_reports_update_and_read_out_times_for_each_row(capsys):
    assert main(["bench", "map", "--points", "3000", "--clouds", "4", "--warmup", "1", "--evict-max-voxels", "500",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["row"] for r in rows] == ["count", "log", "count, evicting"]
    for r in rows:
        assert r["clouds_timed"] == 3 and r["mean_ms"] > 0 and r["voxels"] > 0
        assert r["smoothing"] == 1.0 and r["read_ms"] > 0 and r["read_raw_ms"] > 0 and 0 < r["locked_ms"]
    assert rows[2]["peak_voxels"] <= 500 and rows[2]["evicted"] > 0
    assert main(["bench", "map", "--points", "2000", "--clouds", "3", "--warmup", "1", "--smoothing", "0"]) == 0
    table = capsys.readouterr().out
    assert "read-out smoothing 0" in table and "read ms" in table and "locked" in table
