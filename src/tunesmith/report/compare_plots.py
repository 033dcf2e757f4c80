"""The plots of `tunesmith compare`: the arms side by side, the training curve and the learning curve.

`arms_plot` draws the validation metric of every arm (dots) next to its training time (bars,
with the trainable parameters written on them); `curve_plot` draws the metric against the number of
labelled rows (log scale) per arm, the mean over seeds with a band of one standard deviation,
and the pre-trained model as a flat line; `training_curve_plot` draws the metric against the
optimizer step per arm, the mean over training seeds with the same band, and the threshold dashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.report.figures import COLORS, bound_rate_axis, new_figure, save_png, style

ARM_COLORS = {"pretrained": "#999999", "probe": COLORS[4], "finetune": COLORS[0], "scratch": COLORS[1],
              "probe_then_finetune": COLORS[2]}


def arms_plot(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """`rows`: {arm, title, metrics, train_seconds, trainable_params} per arm, in table order."""
    fig, (left, right) = new_figure(width=10.5, height=0.9 + 0.55 * len(rows), ncols=2)
    names = [r["title"] for r in rows][::-1]
    colors = [ARM_COLORS.get(r["arm"], COLORS[7]) for r in rows][::-1]
    values = [r["metrics"].get(metric, 0.0) for r in rows][::-1]
    # Dots, not bars: scores sit in a narrow band far from zero, and the differences are the point.
    left.scatter(values, names, color=colors, s=70, zorder=3)
    for value, name in zip(values, names):
        left.annotate(f"{value:.4f}", (value, name), textcoords="offset points", xytext=(8, 4), fontsize=9)
    spread = (max(values) - min(values)) or abs(max(values)) or 1.0
    left.set_xlim(min(values) - 0.15 * spread, max(values) + 0.35 * spread)
    bound_rate_axis(left, [metric], axis="x")
    style(left, f"Validation {metric}", metric, "")
    seconds = [r["train_seconds"] or 0.0 for r in rows][::-1]
    params = [r["trainable_params"] for r in rows][::-1]
    bars = right.barh(names, seconds, color=colors)
    right.bar_label(bars, [f"{s:.0f} s, {_count(p)} trainable" for s, p in zip(seconds, params)], padding=3, fontsize=9)
    right.set_xlim(0, max(seconds) * 1.6 if max(seconds) > 0 else 1)
    right.set_yticks([])
    style(right, "Training time and trainable parameters", "seconds", "")
    return save_png(fig, path)


def curve_plot(curve: dict[str, list[dict[str, Any]]], metric: str, baseline: float | None, path: Path) -> Path:
    """`curve`: {arm: [{train_rows, mean, std}, ...]} as `learning_curve.summarize` returns it."""
    fig, ax = new_figure(width=7.0, height=4.2)
    for arm, points in curve.items():
        _mean_and_band(ax, arm, [p["train_rows"] for p in points], points, markersize=6)
    if baseline is not None:
        ax.axhline(baseline, color=ARM_COLORS["pretrained"], linestyle=":", label="pre-trained, as it is")
    bound_rate_axis(ax, [metric])
    ax.set_xscale("log")
    ticks = sorted({p["train_rows"] for points in curve.values() for p in points})
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    style(ax, f"Learning curve: validation {metric} against labelled rows", "labelled training rows (log scale)", metric)
    ax.legend(frameon=False)
    return save_png(fig, path)


def training_curve_plot(curve: dict[str, list[dict[str, Any]]], metric: str, threshold: float | None,
                        path: Path) -> Path:
    """`curve`: {arm: [{step, mean, std, seeds}, ...]} as `training_curve.over_seeds` returns it."""
    fig, ax = new_figure(width=7.0, height=4.2)
    for arm, points in curve.items():
        _mean_and_band(ax, arm, [p["step"] for p in points], points, markersize=3)
    if threshold is not None:
        ax.axhline(threshold, color="#555555", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    bound_rate_axis(ax, [metric])
    style(ax, f"Training curve: validation {metric} during training", "optimizer step", metric)
    ax.legend(frameon=False)
    return save_png(fig, path)


def _mean_and_band(ax: Any, arm: str, x: list[float], points: list[dict[str, Any]], markersize: float) -> None:
    """An arm's mean line, and a band of one standard deviation when its points vary over seeds."""
    mean, std = [p["mean"] for p in points], [p["std"] for p in points]
    color = ARM_COLORS.get(arm, COLORS[7])
    ax.plot(x, mean, marker="o", markersize=markersize, color=color, label=arm.replace("_", " "))
    if any(std):
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.15, linewidth=0)


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k" if n >= 10_000 else f"{n:,}"
