"""The before/after table of a run, one definition for the CLI, `report.html` and the model card.

"Before" is the `baseline` record: the model as it is, before any training (named by the record's
`starting_point` where the task gives one: a new tabular network is untrained, not pre-trained). Where the head starts
untrained (a new head for these labels), that score is chance by construction, so the table says
so in its header and adds the `features` score of the same record (engine/evaluation.py
`feature_probe`): a logistic regression on the frozen pre-trained features, what the backbone
already knows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

FEATURES_COLUMN = "pre-trained features (linear probe)"


def plain_change(delta: float, higher_is_better: bool) -> str:
    return f"{delta:+.4f}"


def before_after_table(baseline: dict[str, Any], final: dict[str, Any], metrics: list[str],
                       change: Callable[[float, bool], Any] = plain_change,
                       lower_is_better: Collection[str] = ("loss",)) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): a metric per row, its baseline, linear-probe (if any) and fine-tuned values and
    the change from the baseline; `change(delta, higher_is_better)` formats the change cell, with
    `lower_is_better` the metrics that improve downwards (the task's `minimize`).
    A value the record does not have is an empty cell."""
    features = baseline.get("features") or {}
    headers = ["metric", starting_point(baseline),
               *([FEATURES_COLUMN] if features else []), "fine-tuned", "change"]
    rows = []
    for name in metrics:
        before, after = _number(baseline.get(name)), _number(final.get(name))
        probe = [_cell(_number(features.get(name)))] if features else []
        delta = change(after - before, name not in lower_is_better) if before is not None and after is not None else ""
        rows.append([name, _cell(before), *probe, _cell(after), delta])
    return headers, rows


def starting_point(baseline: dict[str, Any]) -> str:
    """The name of the "before" column: the task's `starting_point`, else the pre-trained model (with a new head)."""
    return baseline.get("starting_point") or ("pre-trained, untrained head" if baseline.get("features") else "pre-trained")


def features_note(baseline: dict[str, Any]) -> str | None:
    """What the linear-probe column measures, and why the untrained head's column is chance; None without one."""
    features = baseline.get("features")
    if not features:
        return None
    return (f"The head is new and untrained, so the pre-trained model scores about chance with it. Pre-trained "
            f"features (linear probe): a {features['probe']} on the frozen backbone's features of "
            f"{features['train_rows']} training rows, scored on the validation rows before any training: what "
            "the pre-trained model already knows.")


def timing_note(summary: dict[str, Any]) -> str:
    """What follows a run's training seconds in the card and the report: " (12 s validating), bf16 autocast"."""
    note = f" ({summary['eval_seconds']:.0f} s validating)" if summary.get("eval_seconds") else ""
    return note + (f", {summary['precision']}" if summary.get("precision") else "")


HEADINGS = {"roc_auc": "ROC AUC", "f1": "F1", "iou": "IoU", "dice": "Dice", "ap": "AP", "ap_50": "AP@.5"}


def per_class_table(final: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The final record's `per_class` scores as (headers, rows), one row per class: the columns are the
    scores the task gives (precision/recall/F1/support for labels, IoU/Dice/pixels for masks)."""
    per_class = final.get("per_class") or {}
    if not per_class:
        return [], []
    keys = list(next(iter(per_class.values())))
    rows = [[str(name), *[f"{v[k]:.3f}" if isinstance(v[k], float) else str(v[k]) for k in keys]]
            for name, v in per_class.items()]
    return ["class", *[HEADINGS.get(k, k) for k in keys]], rows


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
