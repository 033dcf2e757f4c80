"""The small-validation warning: can this validation split tell the epochs apart at all?

Best-model selection and early stopping compare validation scores between evaluations. On a
few rows per class those scores move in coarse steps (accuracy in steps of 1/n) and by chance
more than fine-tuning moves them, so the "best" epoch is a coin toss. `small_validation_message`
reads the run's data facts (`data.json`: validation rows and per-class counts) and says so,
with the metric's step size and binomial noise; the log and the run report show it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tunesmith.report.overfitting import RATE_METRICS

log = logging.getLogger("tunesmith")

# Fewer validation rows than this in the rarest class: a single row of that class moves its recall
# by 10% or more, and two evaluations rarely differ by more than chance.
MIN_ROWS_PER_CLASS = 10
# Tasks without classes (tagging, QA, generation): a rate metric on fewer rows steps by over 3%.
MIN_ROWS = 30


def small_validation_message(facts: dict[str, Any], metric: str) -> str | None:
    """The warning for a validation split too small to select a model on, else None."""
    validation = facts.get("validation")
    if not isinstance(validation, dict) or not validation.get("rows"):
        return None
    rows, counts = validation["rows"], validation.get("label_counts") or {}
    if counts:
        rarest = min(counts, key=lambda label: counts[label])
        if counts[rarest] >= MIN_ROWS_PER_CLASS:
            return None
        size = (f"{rows} rows, {counts[rarest]} of class '{rarest}' (the fewest; "
                f"{rows / len(counts):.1f} per class on average)")
        wanted = f"at least {MIN_ROWS_PER_CLASS} rows of every class"
    elif rows < MIN_ROWS and metric in RATE_METRICS:
        size, wanted = f"{rows} rows", f"at least {MIN_ROWS} rows"
    else:
        return None
    return (f"small validation split: {size}. {_resolution(metric, rows)}, so the best epoch and early "
            f"stopping may rest on a row or two. Give it {wanted}: raise data.validation_split or name a "
            "larger data.validation file.")


def warn_small_validation(facts: dict[str, Any], metric: str) -> str | None:
    """Logs and returns the small-validation warning (None when the split is large enough)."""
    message = small_validation_message(facts, metric)
    if message:
        log.warning(message)
    return message


def _resolution(metric: str, rows: int) -> str:
    """How finely the metric can move on `rows` rows: its step (one row) and its chance spread."""
    if metric not in RATE_METRICS:
        return f"Validation {metric} on so few rows varies by chance between evaluations"
    spread = math.sqrt(0.25 / rows)  # the binomial standard error at its largest, p = 0.5
    step = "moves in steps of" if metric in ("accuracy", "top5_accuracy", "exact_match") else "moves by about"
    return (f"Validation {metric} {step} 1/{rows} = {1 / rows:.4f} (one row) and varies by chance by up to "
            f"±{spread:.4f} (binomial standard error)")
