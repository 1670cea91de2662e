"""Draw the class legend: each class's colour (as on ~/labeled_cloud, ~/semantic_map and in RViz), its name,
its class index and its nyu40 id (docs/images/label_legend.png; docs/ros_node.md, "Labels").

    python scripts/label_legend.py [OUT.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from safnet_ros.data.labels import CLASS_COLORS, CLASS_NAMES, IGNORE_COLOR, IGNORE_INDEX, NYU40_IDS  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "label_legend.png"


def draw_legend(out: Path) -> Path:
    """Write the legend PNG (two columns of swatches, the unlabelled colour last) and return its path."""
    rows = [(tuple(int(c) for c in CLASS_COLORS[i]), name, str(i), str(NYU40_IDS[i]))
            for i, name in enumerate(CLASS_NAMES)]
    rows.append((IGNORE_COLOR, "not labelled", str(IGNORE_INDEX), "0"))
    per_column = (len(rows) + 1) // 2
    fig, ax = plt.subplots(figsize=(7.6, 0.34 * per_column + 0.8), dpi=100)
    ax.set_xlim(0, 2)
    ax.set_ylim(per_column + 0.6, -0.9)
    ax.axis("off")
    for col in range(2):
        ax.text(col + 0.02, -0.45, "colour  index  nyu40  class", fontsize=9, fontweight="bold", va="center")
    for k, (rgb, name, index, nyu) in enumerate(rows):
        col, row = divmod(k, per_column)
        x = col * 1.0
        ax.add_patch(Rectangle((x + 0.02, row + 0.1), 0.12, 0.8, facecolor=[c / 255 for c in rgb],
                               edgecolor="0.3", linewidth=0.5))
        ax.text(x + 0.2, row + 0.5, f"{index:>3}", fontsize=9, va="center", family="monospace")
        ax.text(x + 0.33, row + 0.5, f"{nyu:>3}", fontsize=9, va="center", family="monospace")
        ax.text(x + 0.47, row + 0.5, name, fontsize=9, va="center")
    fig.suptitle("SAFNet classes: colour, class index (label_ids: index) and nyu40 id (label_ids: nyu40, PLY files)",
                 fontsize=8.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    print(draw_legend(parser.parse_args().out))
