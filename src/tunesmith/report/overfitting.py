"""The overfitting watch: after every run, is the train/validation gap widening while validation worsens?

Fine-tuning a large model on a few thousand rows over-fits quickly: the training loss keeps
falling while the validation loss turns up and the validation metric drops from its best.
`watch_overfitting` reads the run's evaluation records and, when an evaluation after the best
one scores worse on the selection metric with a wider gap (validation loss minus training loss)
than at the best, warns in the log, naming the best epoch (the model kept in `best/`) and the
epoch where early stopping stopped or would have stopped. The report shows the same message.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig

log = logging.getLogger("tunesmith")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl` (an empty list when there is none yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def watch_overfitting(records: list[dict[str, Any]], config: RunConfig, stopped_early: bool) -> str | None:
    """Logs and returns a warning when the run over-fitted after its best evaluation, else None."""
    message = overfitting_message(records, config.training.metric_for_best_model, config.greater_is_better,
                                  config.training.early_stopping_patience, stopped_early)
    if message:
        log.warning(message)
    return message


def overfitting_message(records: list[dict[str, Any]], metric: str, greater: bool, patience: int | None,
                        stopped_early: bool) -> str | None:
    """The warning for a run's records, or None when the gap did not widen while validation worsened."""
    evals = [r for r in records if r.get("phase") == "eval" and _finite(r.get(metric)) and _finite(r.get("loss"))]
    if len(evals) < 2:
        return None
    best = _best_index(evals, records, metric, greater)
    gaps = [_gap(r, records) for r in evals]
    if gaps[best] is None:
        return None
    worse = [j for j in range(best + 1, len(evals))
             if _worse(evals[j][metric], evals[best][metric], greater) and gaps[j] is not None and gaps[j] > gaps[best]]
    if not worse:
        return None
    b, w = evals[best], evals[worse[-1]]
    return (f"overfitting: after epoch {b['epoch']:g} the gap between validation and training loss widened "
            f"from {gaps[best]:.3f} to {gaps[worse[-1]]:.3f} (epoch {w['epoch']:g}) while validation {metric} "
            f"went from {b[metric]:.4f} to {w[metric]:.4f}. {_stopping(evals, best, patience, stopped_early)} "
            f"The model kept in best/ is the best one, from epoch {b['epoch']:g}; to over-fit less, lower the "
            "learning rate or the epochs, freeze more groups, or raise model.dropout or weight decay.")


def _stopping(evals: list[dict[str, Any]], best: int, patience: int | None, stopped_early: bool) -> str:
    if stopped_early:
        return f"Early stopping stopped the run at epoch {evals[-1]['epoch']:g}."
    wait = patience if patience is not None else 3
    if best + wait < len(evals):
        return f"Early stopping with patience {wait} would have stopped it at epoch {evals[best + wait]['epoch']:g}."
    return f"The run ended before early stopping's patience ({wait}) ran out."


def _best_index(evals: list[dict[str, Any]], records: list[dict[str, Any]], metric: str, greater: bool) -> int:
    """The evaluation early stopping chose (the final record's `best_step`), else the best score."""
    final = next((r for r in records if r.get("phase") == "final"), {})
    steps = [r["step"] for r in evals]
    if final.get("best_step") in steps:
        return steps.index(final["best_step"])
    values = [r[metric] if greater else -r[metric] for r in evals]
    return values.index(max(values))


def _gap(entry: dict[str, Any], records: list[dict[str, Any]]) -> float | None:
    """Validation loss minus the training loss logged last at or before this evaluation."""
    train_loss = entry.get("train_loss")
    if not _finite(train_loss):
        logged = [r["train_loss"] for r in records if r.get("phase") == "train" and r["step"] <= entry["step"]
                  and _finite(r.get("train_loss"))]
        train_loss = logged[-1] if logged else None
    return entry["loss"] - train_loss if train_loss is not None else None


def _worse(value: float, best: float, greater: bool) -> bool:
    return value < best if greater else value > best


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
