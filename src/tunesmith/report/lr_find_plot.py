"""The plot of a learning-rate range test: loss against the head's learning rate, with the suggestions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.report.figures import COLORS, new_figure, save_png, style


def lr_find_plot(result: Any, path: Path) -> Path:
    """Raw and smoothed loss on a log-rate axis; the steepest-fall and minimum/10 rates marked.

    Args:
        result: An `LRFindResult` (lrs, losses, smoothed, suggested_lr, min_loss_lr).
    """
    fig, ax = new_figure(6.4, 3.8)
    ax.plot(result.lrs, result.losses, color=COLORS[0], alpha=0.25, linewidth=1, label="loss")
    ax.plot(result.lrs[: len(result.smoothed)], result.smoothed, color=COLORS[0], linewidth=2, label="smoothed loss")
    for rate, name, color in ((result.suggested_lr, "steepest fall", COLORS[1]),
                              (result.min_loss_lr, "minimum / 10", COLORS[2])):
        if rate is not None:
            ax.axvline(rate, color=color, linestyle="--", linewidth=1.2, label=f"{name}: {rate:.1e}")
    ax.set_xscale("log")
    if result.smoothed:
        # Keep the diverged tail from squashing the useful part of the curve.
        low, start = min(result.smoothed), result.smoothed[0]
        ax.set_ylim(low - 0.05 * abs(low), max(start, low) + 0.5 * (max(start, low) - low) + 1e-3)
    style(ax, "learning-rate range test", "head learning rate", "training loss")
    ax.legend(fontsize=8, frameon=False)
    return save_png(fig, path)
