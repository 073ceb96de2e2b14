"""``--plot PNG``: frames/s per configuration as bars, each labelled with its speedup over the reference.

matplotlib is not a dependency (a plot is a convenience, and the GPU CI job installs it itself), so it
is imported only here, and :func:`require_matplotlib` is called before the benchmark starts: a missing
plotting library must not cost a twenty-minute run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from virnucpro_trt.bench.config_names import EAGER, REFERENCE
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import atomic_output

INSTALL_HINT = "pip install matplotlib"
_COLOURS = {REFERENCE: "#7f7f7f", EAGER: "#1f77b4"}
_ENGINE_COLOUR = "#2ca02c"


def require_matplotlib() -> None:
    """Fail in one line, saying how to install it, when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"--plot needs matplotlib, which is not installed here: {INSTALL_HINT}")


def draw(report: dict[str, Any], path: Path) -> Path:
    """Write the bar chart to ``path`` (PNG); rows that did not run appear as empty, labelled slots."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI runner
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = [r["config"] for r in rows]
    values = [r["frames_per_s"] or 0.0 for r in rows]
    colours = [_COLOURS.get(r["backend"], _ENGINE_COLOUR) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.5))
    bars = ax.bar(range(len(rows)), values, color=colours)
    top = max(values) if any(values) else 1.0
    for bar, row in zip(bars, rows, strict=True):
        if row["status"] == "ok":
            speedup = row["speedup_vs_reference"]
            label = "-" if speedup is None else f"{speedup:.2f}x"
        else:
            label = row["status"]
        ax.text(
            bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01 * top, label, ha="center", va="bottom"
        )
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    ax.set_ylabel("kept frames / s (whole path, median pass)")
    hw, wl = report["hardware"], report["workload"]
    ax.set_title(
        f"{wl['frames']:,} frames from {wl['reads']:,} reads on {hw.get('gpu') or 'CPU'}", fontsize=10
    )
    ax.set_ylim(0, top * 1.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as handle:  # whole or not at all, never through a link at the name
        fig.savefig(handle, dpi=120, format="png")
    plt.close(fig)
    return path
