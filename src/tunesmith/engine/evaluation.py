"""Evaluation: run a model over a loader and score it with the task's metrics.

Outputs are gathered across processes and returned in the loader's row order mapped back to
the original order, so predictions line up with the input file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def collect_outputs(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Returns (outputs in original row order, labels or None, mean loss or None)."""
    was_training = model.training
    model.eval()
    outputs, labels, loss_sum, count = [], [], torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        if "labels" in batch:
            loss, out = task.loss(model, batch)
            loss_sum += loss.detach() * len(batch["labels"])
            count += len(batch["labels"])
            labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
        else:
            out = task.forward(model, batch)
        outputs.append(accelerator.gather_for_metrics(out.float()).cpu())
    if was_training:
        model.train()
    order = np.array([i for b in loader.batch_sampler for i in b]) if _single(accelerator) else None
    stacked = torch.cat(outputs).numpy()
    y = torch.cat(labels).numpy() if labels else None
    if order is not None:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        stacked = stacked[inverse]
        y = y[inverse] if y is not None else None
    mean_loss = float(accelerator.reduce(loss_sum, "sum").item() / max(1, count * accelerator.num_processes)) if labels else None
    return stacked, y, mean_loss


def _single(accelerator: Accelerator) -> bool:
    return accelerator.num_processes == 1


def evaluate(model: nn.Module, loader: DataLoader, task, accelerator: Accelerator) -> dict[str, Any]:
    """Loss plus the task's metrics on a labelled loader."""
    outputs, labels, loss = collect_outputs(model, loader, task, accelerator)
    return {"loss": loss, **task.metrics(outputs, labels)}
