"""The plots of one run, drawn from its `metrics.jsonl` records and saved under `<run_dir>/plots/`.

Loss (training per logging step, validation per evaluation), the validation metrics against the
pre-trained baseline, the learning rate of every layer group, which groups were trainable at
each evaluation, the confusion matrix of the final (best) model and, for tasks that score calibration
(a `reliability` record of confidence bins), its reliability diagram. The best evaluation is
marked on the curves, since that is the model `best/` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.report.figures import COLORS, bound_rate_axis, new_figure, save_png, style

Records = list[dict[str, Any]]


def run_plots(records: Records, folder: Path, metrics: list[str]) -> dict[str, Path]:
    """Draws every plot the records support; returns {name: png path}."""
    drawers = {"loss": lambda: loss_plot(records), "metrics": lambda: metric_plot(records, metrics),
               "learning_rates": lambda: lr_plot(records), "trainable_groups": lambda: trainable_plot(records),
               "confusion_matrix": lambda: confusion_plot(_phase(records, "final")),
               "reliability": lambda: reliability_plot(_phase(records, "baseline"), _phase(records, "final"))}
    plots = {}
    for name, draw in drawers.items():
        fig = draw()
        if fig is not None:
            plots[name] = save_png(fig, folder / f"{name}.png")
    return plots


def _phase(records: Records, phase: str) -> dict[str, Any]:
    return next((r for r in records if r.get("phase") == phase), {})


def _best_epoch(records: Records) -> float | None:
    best_step = _phase(records, "final").get("best_step")
    return next((r["epoch"] for r in records if r.get("phase") == "eval" and r["step"] == best_step), None)


def _mark_best(ax: Any, records: Records) -> None:
    epoch = _best_epoch(records)
    if epoch is not None:
        ax.axvline(epoch, color="#888888", linestyle="--", linewidth=1, label=f"best (epoch {epoch:g})")


def loss_plot(records: Records) -> Any:
    train = [(r["epoch"], r["train_loss"]) for r in records if r.get("phase") == "train" and r.get("train_loss") is not None]
    val = [(r["epoch"], r["loss"]) for r in records if r.get("phase") in ("baseline", "eval") and r.get("loss") is not None]
    if not train and not val:
        return None
    fig, ax = new_figure()
    if train:
        ax.plot(*zip(*train), color=COLORS[0], linewidth=1.2, label="training loss")
    if val:
        ax.plot(*zip(*val), color=COLORS[1], marker="o", linewidth=1.6, label="validation loss")
    _mark_best(ax, records)
    style(ax, "Loss", "epoch", "loss")
    ax.legend(frameon=False)
    return fig


def metric_plot(records: Records, metrics: list[str]) -> Any:
    evals = [r for r in records if r.get("phase") == "eval"]
    baseline = _phase(records, "baseline")
    shown = [m for m in metrics if any(isinstance(r.get(m), int | float) for r in evals)]
    if not shown:
        return None
    fig, ax = new_figure()
    for color, metric in zip(COLORS, shown):
        points = [(0.0, baseline[metric])] if isinstance(baseline.get(metric), int | float) else []
        points += [(r["epoch"], r[metric]) for r in evals if isinstance(r.get(metric), int | float)]
        ax.plot(*zip(*points), color=color, marker="o", label=f"validation {metric}")
    _mark_best(ax, records)
    bound_rate_axis(ax, shown)
    style(ax, "Validation metrics (epoch 0: the model before training)", "epoch", "score")
    ax.legend(frameon=False)
    return fig


def lr_plot(records: Records) -> Any:
    train = [r for r in records if r.get("phase") == "train"]
    if not train:
        return None
    groups = list(train[-1].get("lrs") or {"head": None})
    fig, ax = new_figure()
    cmap = _colormap("viridis", len(groups))
    for i, group in enumerate(groups):
        points = [(r["epoch"], (r.get("lrs") or {}).get(group, r.get("lr"))) for r in train]
        points = [(e, v) for e, v in points if v is not None]
        if points:
            ax.plot(*zip(*points), color=cmap(i), linewidth=1.4, label=group)
    style(ax, "Learning rate per layer group", "epoch", "learning rate")
    ax.legend(frameon=False, fontsize=7, ncols=2 if len(groups) > 8 else 1, loc="upper right")
    return fig


def trainable_plot(records: Records) -> Any:
    evals = [r for r in records if r.get("phase") == "eval" and r.get("trainable_groups") is not None]
    lrs = next((r.get("lrs") for r in reversed(records) if r.get("lrs")), None)
    groups = list(lrs) if lrs else _ordered_groups(evals)
    if not evals or not groups:
        return None
    grid = [[1.0 if g in r["trainable_groups"] else 0.0 for r in evals] for g in reversed(groups)]
    fig, ax = new_figure(width=6.4, height=min(6.0, 1.2 + 0.25 * len(groups)))
    ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1.25, interpolation="nearest")
    ax.set_yticks(range(len(groups)), list(reversed(groups)), fontsize=8)
    ax.set_xticks(range(len(evals)), [f"{r['epoch']:g}" for r in evals], fontsize=8)
    ax.set_xlabel("evaluation (epoch)")
    ax.set_title("Trainable layer groups at each evaluation (green: trained)", fontsize=11, loc="left")
    return fig


def _ordered_groups(evals: Records) -> list[str]:
    """Group names from the widest trainable set (input to output), when no rates were logged."""
    return max((r["trainable_groups"] for r in evals), key=len, default=[])


def confusion_plot(final: dict[str, Any]) -> Any:
    matrix, labels = final.get("confusion_matrix"), list(final.get("per_class") or {})
    if not matrix or len(labels) != len(matrix):
        return None
    size = min(9.0, 2.5 + 0.45 * len(labels))
    fig, ax = new_figure(width=size + 1.0, height=size)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("Confusion matrix (validation, best model)", fontsize=11, loc="left")
    if len(labels) <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                        color="white" if count > peak / 2 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def reliability_plot(baseline: dict[str, Any], final: dict[str, Any]) -> Any:
    """Accuracy against confidence per bin, before and after training: on the diagonal is calibrated."""
    if not final.get("reliability"):
        return None
    fig, ax = new_figure()
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="calibrated")
    for record, name, color in ((baseline, "before", COLORS[1]), (final, "fine-tuned", COLORS[0])):
        bins = record.get("reliability") or []
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=color,
                    label=f"{name} (ECE {record.get('ece', float('nan')):.3f})")
    scaled = final.get("reliability_calibrated") or []
    if scaled:
        ax.plot([b["confidence"] for b in scaled], [b["accuracy"] for b in scaled], marker="s", color=COLORS[2],
                linestyle=":", label=f"fine-tuned, temperature {final['temperature']:.2f} "
                                     f"(ECE {final['ece_calibrated']:.3f})")
    style(ax, "Reliability (validation)", "confidence of the predicted label", "share correct")
    ax.legend(frameon=False)
    return fig


def _colormap(name: str, n: int) -> Any:
    from matplotlib import colormaps

    cmap = colormaps[name]
    return lambda i: cmap(0.1 + 0.8 * i / max(1, n - 1))
