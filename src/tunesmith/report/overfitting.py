"""The overfitting watch: after every run, is the train/validation gap widening while validation worsens?

Fine-tuning a large model on a few thousand rows over-fits quickly: the training loss keeps
falling while the validation loss turns up and the validation metric drops from its best.
`watch_overfitting` reads the run's evaluation records and warns in the log when an evaluation
after the best one is worse on *both* counts: the selection metric dropped by more than the
validation split's noise (`metric_noise`: at least one row's worth, and for a rate such as
accuracy the binomial standard error) and the validation loss rose more than 1% above its value
at the best,
with a wider gap (validation loss minus training loss) than at the best. The warning names the
best epoch (the model kept in `best/`), the epoch where early stopping stopped or would have
stopped, and advice that fits the strategy that trained. The report shows the same message.
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


# Metrics that are a share of validation rows (or a mean of per-row scores in [0, 1]): one row moves
# them by 1/n, and their sampling noise is binomial.
RATE_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "f1", "precision", "recall", "exact_match")
# The records keep no per-row losses, so the validation loss has no standard error to test against;
# a rise under 1% of the best loss is below any over-fitting worth a warning and above the jitter of
# an evaluation run in another batch order.
LOSS_NOISE = 0.01


def watch_overfitting(records: list[dict[str, Any]], config: RunConfig, stopped_early: bool,
                      rows: int | None = None) -> str | None:
    """Logs and returns a warning when the run over-fitted after its best evaluation, else None.

    Args:
        rows: Validation rows; when not given, the evaluations' per-class supports are summed.
    """
    if not getattr(config.task_settings, "losses_comparable", True):
        return None  # the task's training and validation losses measure different things (an RL policy's)
    message = overfitting_message(records, config.metric, config.greater_is_better,
                                  config.training.early_stopping_patience, stopped_early,
                                  rows=rows or _rows_from(records), advice=strategy_advice(config))
    if message:
        log.warning(message)
    return message


def overfitting_message(records: list[dict[str, Any]], metric: str, greater: bool, patience: int | None,
                        stopped_early: bool, rows: int | None = None, advice: str | None = None) -> str | None:
    """The warning for a run's records, or None unless validation worsened beyond noise with a wider gap."""
    evals = [r for r in records if r.get("phase") == "eval" and _finite(r.get(metric)) and _finite(r.get("loss"))]
    if len(evals) < 2:
        return None
    best = _best_index(evals, records, metric, greater)
    gaps = [_gap(r, records) for r in evals]
    best_gap = gaps[best]
    if best_gap is None:
        return None
    b, noise = evals[best], metric_noise(metric, evals[best][metric], rows)
    loss_noise = LOSS_NOISE * abs(b["loss"])
    worse = [j for j in range(best + 1, len(evals))
             if _worse(evals[j][metric], b[metric], greater, loss_noise if metric == "loss" else noise)
             and evals[j]["loss"] > b["loss"] + loss_noise and (gap := gaps[j]) is not None and gap > best_gap]
    if not worse:
        return None
    w = evals[worse[-1]]
    band = f" (more than the noise of {noise:.4f} on {rows} validation rows)" if noise and rows else ""
    return (f"overfitting: after epoch {b['epoch']:g} the gap between validation and training loss widened "
            f"from {gaps[best]:.3f} to {gaps[worse[-1]]:.3f} (epoch {w['epoch']:g}) while validation {metric} "
            f"went from {b[metric]:.4f} to {w[metric]:.4f}{band} and validation loss rose from {b['loss']:.4f} to "
            f"{w['loss']:.4f}. {_stopping(evals, best, patience, stopped_early)} The model kept in best/ is the "
            f"best one, from epoch {b['epoch']:g}; to over-fit less, {advice or _FULL_ADVICE}.")


def metric_noise(metric: str, value: float, rows: int | None) -> float:
    """How far the metric moves by chance on `rows` validation rows: the larger of one row's worth
    (1/n) and the binomial standard error sqrt(p(1-p)/n); 0 for other metrics or unknown n."""
    if not rows or metric not in RATE_METRICS or not 0.0 <= value <= 1.0:
        return 0.0
    return max(1.0 / rows, math.sqrt(value * (1.0 - value) / rows))


_FULL_ADVICE = ("lower the learning rate or the epochs, freeze more groups (strategy.freeze), lower "
                "strategy.layer_lr_decay so the lower layers move less, or raise model.dropout or weight decay")


def strategy_advice(config: RunConfig) -> str:
    """What to change against over-fitting, for the strategy that trained: a head-only probe or a
    LoRA adapter has nothing left to freeze, so only rate, epochs and regularisation help. A task's
    section may say what regularises its models (`overfitting_advice`: a recommender's L2 and width)."""
    own = getattr(config.task_settings, "overfitting_advice", None)
    if own:
        return own
    if config.lora.enabled:
        return ("lower the learning rate or the epochs, lower lora.r, or raise lora.dropout, weight decay or "
                "label smoothing")
    if config.strategy.freeze == "head_only":
        return "lower the learning rate or the epochs, or raise weight decay or label smoothing"
    return _FULL_ADVICE


def _rows_from(records: list[dict[str, Any]]) -> int | None:
    """Validation rows, from the per-class supports of an evaluation record (classification tasks)."""
    per_class = next((r["per_class"] for r in records if r.get("phase") == "eval" and r.get("per_class")), None)
    if not per_class:
        return None
    return sum(v.get("support", 0) for v in per_class.values()) or None


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


def _worse(value: float, best: float, greater: bool, noise: float = 0.0) -> bool:
    return value < best - noise if greater else value > best + noise


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
