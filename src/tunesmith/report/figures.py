"""Figures for the reports: matplotlib figures drawn off-screen and saved as PNG files.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), not pyplot, so no
window, no backend choice and no global state: drawing a report never disturbs a notebook's
plots, and figures are freed as soon as they are saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Colours that stay apart in print and for common colour blindness (Okabe-Ito).
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def new_figure(width: float = 6.4, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    """A figure and its axes (a list when `ncols` > 1)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def save_png(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def bound_rate_axis(ax: Any, metrics: list[str], axis: str = "y") -> None:
    """Stops the metric axis at 1 (and 0) when every metric on it is a share of rows, such as accuracy:
    matplotlib's margin would show 1.05, a score no model can reach. Points on the bound stay whole."""
    from tunesmith.report.overfitting import RATE_METRICS

    if not metrics or any(m not in RATE_METRICS for m in metrics):
        return
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    (ax.set_ylim if axis == "y" else ax.set_xlim)(max(low, 0.0), min(high, 1.0))
    for artist in [*ax.lines, *ax.collections]:
        artist.set_clip_on(False)
