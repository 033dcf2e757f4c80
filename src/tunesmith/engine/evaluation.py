"""Evaluation: run a model over a loader and score it with the task's metrics.

Outputs are gathered across processes and mapped back to the original row order, so predictions
line up with the input file. Batches are split between processes (see engine/accelerator.py), so
gathering one batch from all processes gives its rows in the sampler's order. Out of memory
halves the evaluation batch and starts the evaluation again; evaluation draws no random numbers,
so the training run is unaffected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from tunesmith.engine.oom import is_out_of_memory, shrink_eval_batch


def collect_outputs(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Returns (outputs in original row order, labels or None, mean loss or None).

    Out of memory halves the evaluation batch and evaluates again (engine/oom.py).
    """
    while True:
        try:
            return _collect(model, loader, task, accelerator)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        shrink_eval_batch(_sampler(loader), accelerator)  # outside `except`: the failed batch is freed


@torch.no_grad()
def _collect(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    was_training = model.training
    model.eval()
    try:
        outputs, labels, loss_sum, count = _run_batches(model, loader, task, accelerator)
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


def _run_batches(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator):
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
