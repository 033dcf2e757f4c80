"""Evaluation: run a model over a loader and score it with the task's metrics.

Outputs are gathered across processes and mapped back to the original row order, so predictions
line up with the input file. Batches are split between processes (see engine/accelerator.py), so
gathering one batch from all processes gives its rows in the sampler's order. Out of memory
halves the evaluation batch and starts the evaluation again; evaluation draws no random numbers,
so the training run is unaffected. `evaluate --by` scores each value of a column separately
(`grouped_metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from tunesmith.engine.oom import is_out_of_memory, shrink_eval_batch
from tunesmith.errors import DataError


def collect_outputs(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator,
                    on_rows: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Returns (outputs in original row order, labels or None, mean loss or None).

    `on_rows`, if given, is called with the number of rows of each batch done (a progress bar).
    Out of memory halves the evaluation batch and evaluates again (engine/oom.py).
    """
    while True:
        try:
            return _collect(model, loader, task, accelerator, on_rows)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        shrink_eval_batch(_sampler(loader), accelerator)  # outside `except`: the failed batch is freed


@torch.no_grad()
def _collect(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator,
             on_rows: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    was_training = model.training
    model.eval()
    try:
        outputs, labels, loss_sum, count = _run_batches(model, loader, task, accelerator, on_rows)
    finally:
        if was_training:
            model.train()
    order = np.array([i for b in _sampler(loader).epoch_batches() for i in b])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    stacked = torch.cat(outputs).numpy()[inverse]
    y = torch.cat(labels).numpy()[inverse] if labels else None
    if not labels:
        return stacked, None, None
    return stacked, y, float(accelerator.reduce(loss_sum, "sum") / accelerator.reduce(count, "sum").clamp(min=1))


def _run_batches(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator,
                 on_rows: Callable[[int], None] | None = None):
    outputs, labels = [], []
    loss_sum, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        if "labels" in batch:
            loss, out = task.loss(model, batch)
            loss_sum += loss.detach() * len(batch["labels"])
            count += len(batch["labels"])
            labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
        else:
            out = task.forward(model, batch)
        outputs.append(accelerator.gather_for_metrics(out.float()).cpu())
        if on_rows is not None:
            on_rows(len(outputs[-1]))
    return outputs, labels, loss_sum, count


def _sampler(loader: DataLoader):
    """tunesmith's GroupedBatchSampler, also when Accelerate has wrapped it for several processes."""
    sampler = loader.batch_sampler
    return getattr(sampler, "batch_sampler", sampler)


def evaluate(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator,
             predictions_file: Path | None = None) -> dict[str, Any]:
    """Loss plus the task's metrics on a labelled loader of `task.eval_rows`; with
    `predictions_file`, also writes each row's prediction there (for the report's worst examples)."""
    outputs, labels, loss = collect_outputs(model, loader, task, accelerator)
    if predictions_file is not None:
        write_predictions(predictions_file, task, outputs)
    return {"loss": loss, **task.metrics(outputs, labels)}


def write_predictions(path: Path, task, outputs: np.ndarray) -> None:
    """One JSONL record per evaluated row: its file line, the true label and the task's prediction."""
    rows = task.eval_rows
    with path.open("w", encoding="utf-8") as f:
        for line, true, record in zip(rows.lines, rows.labels, task.predictions(rows, outputs)):
            f.write(json.dumps({"line": line, "true_label": true, **record}, ensure_ascii=False) + "\n")


def group_values(rows, column: str) -> list[str]:
    """The value of `column` for each row, for `evaluate --by`.

    Raises:
        DataError: the file has no such column, or the task's reader keeps no columns but its inputs.
    """
    if not rows.columns:
        raise DataError(f"{rows.source}: --by needs a CSV/TSV/JSONL/Parquet file of rows; this task's reader "
                        "keeps no other columns")
    if column not in rows.columns:
        found = ", ".join(repr(c) for c in rows.columns)
        raise DataError(f"{rows.source}: --by column {column!r} not found; columns are {found}")
    return [str(v) for v in rows.columns[column]]


def grouped_metrics(task, outputs: np.ndarray, labels: np.ndarray, groups: list[str]) -> dict[str, dict[str, Any]]:
    """The task's metrics on the rows of each group value (sorted), with the group's row count."""
    values = np.asarray(groups)
    result = {}
    for value in sorted(set(groups)):
        idx = np.flatnonzero(values == value)
        result[value] = {"rows": len(idx), **task.metrics(outputs[idx], labels[idx])}
    return result


def plain_json(value: Any) -> Any:
    """`json.dumps` default: numpy scalars and arrays as numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
