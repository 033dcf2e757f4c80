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
