"""scripts/plot_training.py: training curves from `safnet train` metrics.csv files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_training.py"
HEADER = ("epoch,stage,lr,train_loss,train_acc,train_miou,val_loss,val_acc,val_miou,steps,samples,"
          "chunks_without_views,seconds\n")


def _script():
    spec = importlib.util.spec_from_file_location("plot_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curves_from_metrics_csv_and_bad_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [f"{e},3d,0.001,{3 - 0.2 * e},0.8,{0.1 + 0.03 * e},,,{'0.2' if e == 2 else ''},8,64,0,50\n" for e in range(5)]
    (run / "metrics.csv").write_text(HEADER + "".join(rows))
    script = _script()
    cols = script.read_run(run)
    assert cols["step"].tolist() == [8, 16, 24, 32, 40]  # cumulative optimiser steps
    assert script.smooth(cols["train_loss"], 2)[1] == pytest.approx((3.0 + 2.8) / 2)
    out = tmp_path / "curves.png"
    assert script.main([f"{run}=my run", "--out", str(out)]) == 0
    assert out.stat().st_size > 5_000
    with pytest.raises(SystemExit, match="metrics.csv"):
        script.main([str(tmp_path / "missing"), "--out", str(out)])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="no train_loss"):
        script.main([str(tmp_path / "other"), "--out", str(out)])
