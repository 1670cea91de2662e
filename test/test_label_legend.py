"""The label legend (scripts/label_legend.py -> docs/images/label_legend.png) shows every class colour."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safnet_ros.data.labels import CLASS_COLORS

REPO = Path(__file__).resolve().parents[1]


def _colours(path: Path) -> set[tuple[int, int, int]]:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(rgb, axis=0)}


def test_the_script_draws_every_class_colour(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "legend.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "label_legend.py"), str(out)], check=True,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True)
    drawn = _colours(out)
    missing = [tuple(int(v) for v in c) for c in CLASS_COLORS if tuple(int(v) for v in c) not in drawn]
    assert not missing, missing


def test_the_shipped_legend_matches_the_palette():
    drawn = _colours(REPO / "docs" / "images" / "label_legend.png")
    assert all(tuple(int(v) for v in c) in drawn for c in CLASS_COLORS)
