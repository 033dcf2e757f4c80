"""Evaluation: run a model over a loader and score it with the task's metrics.

Each batch's outputs become one per example (the task's `batch_outputs`, of any shape: logits, a
window's start/end scores, a generated text with its loss), gathered across processes and put back
in dataset order; the task joins them into one per row (`row_outputs`) and scores them against the
rows' own labels (`metrics`), so predictions line up with the input file. Batches are split between processes (see engine/accelerator.py), so
gathering one batch from all processes gives its rows in the sampler's order. Out of memory
halves the evaluation batch and starts the evaluation again; evaluation draws no random numbers,
so the training run is unaffected. `evaluate --by` scores each value of a column separately
(`grouped_metrics`).

The `baseline` record (`baseline_scores`) is the model before training. Where the task's head
starts untrained on a pre-trained backbone, that score is chance by construction, so the record
also holds `features`: a logistic regression on the frozen backbone's pooled features
(`feature_probe`), what the pre-trained model already knows before its head learns anything.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.utils.data import DataLoader

from tunesmith.data.labelled import LabelledRows, sample
from tunesmith.engine.batching import make_loader
from tunesmith.engine.oom import is_out_of_memory, shrink_eval_batch
from tunesmith.errors import DataError
from tunesmith.tasks import ProbesFeatures, read_rows

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.tasks import FeatureProbeTask, Task

log = logging.getLogger("tunesmith")

# The features probe reads at most this many training rows (a seeded sample): a forward pass
# over them and the validation rows, without gradients, costs less than a training epoch.
PROBE_ROWS = 2000
# Each process holds a slice of every parameter: the unwrapped model cannot run on its own.
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def collect_outputs(model: nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator,
                    on_rows: Callable[[int], None] | None = None) -> tuple[list[Any], float | None]:
    """Returns (one output per example in dataset order, mean loss or None for unlabelled batches).

    The outputs are the task's `batch_outputs`, of any shape. `on_rows`, if given, is called with
    the number of examples of each batch done (a progress bar). Out of memory halves the evaluation
    batch and evaluates again (engine/oom.py).
    """
    while True:
        try:
            return _collect(model, loader, task, accelerator, on_rows)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        shrink_eval_batch(_sampler(loader), accelerator)  # outside `except`: the failed batch is freed


@torch.no_grad()
def _collect(model: nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator,
             on_rows: Callable[[int], None] | None = None) -> tuple[list[Any], float | None]:
    was_training = model.training
    model.eval()
    try:
        outputs, loss_sum, count = _run_batches(model, loader, task, accelerator, on_rows)
    finally:
        if was_training:
            model.train()
    order = [i for b in _sampler(loader).epoch_batches() for i in b]
    in_order: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        in_order[index] = outputs[position]
    if count is None:
        return in_order, None
    return in_order, float(accelerator.reduce(loss_sum, "sum") / accelerator.reduce(count, "sum").clamp(min=1))


def _run_batches(model: nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator,
                 on_rows: Callable[[int], None] | None = None) -> tuple[list[Any], torch.Tensor, torch.Tensor | None]:
    """Every batch's per-example outputs, gathered from all processes in the sampler's order, and
    the loss summed over labelled examples with their count (None when no batch had labels)."""
    outputs: list[Any] = []
    loss_sum, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    labelled = False
    for batch in loader:
        if "labels" in batch:
            loss, out = task.loss(model, batch)
            loss_sum += loss.detach() * len(batch["labels"])
            count += len(batch["labels"])
            labelled = True
        else:
            out = task.forward(model, batch)
        examples = task.batch_outputs(out, batch)
        if accelerator.num_processes > 1:  # Python objects of any shape: gathered as objects
            examples = accelerator.gather_for_metrics(examples, use_gather_object=True)
        outputs += examples
        if on_rows is not None:
            on_rows(len(examples))
    return outputs, loss_sum, count if labelled else None


def _sampler(loader: DataLoader):
    """tunesmith's GroupedBatchSampler, also when Accelerate has wrapped it for several processes."""
    sampler = loader.batch_sampler
    return getattr(sampler, "batch_sampler", sampler)


EXAMPLES_DRAWN = 12  # validation rows a task with predicted files draws for the run report


def evaluate(model: nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator,
             predictions_file: Path | None = None) -> dict[str, Any]:
    """Loss plus the task's metrics on a labelled loader of `task.eval_rows`; with
    `predictions_file`, also writes each row's prediction there (for the report's worst examples)."""
    rows = read_rows(task.eval_rows, "validation")
    examples, loss = collect_outputs(model, loader, task, accelerator)
    if loss is None:
        raise DataError(f"{rows.source}: the rows have no labels; evaluation scores predictions against each "
                        "row's label")
    outputs = task.row_outputs(rows, examples)
    if predictions_file is not None:
        write_predictions(predictions_file, task, rows, outputs)
    return {"loss": loss, **task.metrics(rows, outputs)}


def write_predictions(path: Path, task: Task, rows: LabelledRows, outputs: list[Any]) -> None:
    """One JSONL record per evaluated row: its file line, the true label and the task's prediction
    (files a task writes per row go to `<name>_files/`, the first `EXAMPLES_DRAWN` drawn for the report)."""
    from tunesmith.prediction_file import task_records

    records = task_records(task, rows, outputs, path, EXAMPLES_DRAWN)
    with path.open("w", encoding="utf-8") as f:
        for line, true, record in zip(rows.lines, rows.labels, records):
            f.write(json.dumps({"line": line, "true_label": true, **record}, ensure_ascii=False) + "\n")


def group_values(rows: LabelledRows, column: str) -> list[str]:
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


def grouped_metrics(task: Task, rows: LabelledRows, outputs: list[Any], groups: list[str]) -> dict[str, dict[str, Any]]:
    """The task's metrics on the rows of each group value (sorted), with the group's row count."""
    values = np.asarray(groups)
    result = {}
    for value in sorted(set(groups)):
        idx = np.flatnonzero(values == value)
        result[value] = {"rows": len(idx), **task.metrics(rows.subset(idx), [outputs[i] for i in idx])}
    return result


def plain_json(value: Any) -> Any:
    """`json.dumps` default: numpy scalars and arrays as numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def baseline_scores(model: nn.Module, loader: DataLoader, eval_data, task: Task, accelerator: Accelerator,
                    config: RunConfig) -> dict[str, Any]:
    """The `baseline` record: `evaluate` of the model before training, plus `features`
    (`feature_probe`) where the task's head starts untrained."""
    results = evaluate(model, loader, task, accelerator)
    start = getattr(task, "starting_point", None)  # optional: what "before" is when not a pre-trained model
    if start:
        results["starting_point"] = start
    features = feature_probe(accelerator.unwrap_model(model), task, eval_data, accelerator, config)
    return {**results, "features": features} if features is not None else results


def feature_probe(model: nn.Module, task: Task, eval_data, accelerator: Accelerator,
                  config: RunConfig) -> dict[str, Any] | None:
    """The task's metrics of a linear probe on the frozen backbone's pooled features: a logistic
    regression fitted on (up to `PROBE_ROWS`) training rows, scored on the validation rows.

    Only for a task that opts in (a `ProbesFeatures` task, tasks/__init__.py, whose `fresh_head`
    is true) and has training rows. Every process computes the same numbers on its own device,
    so nothing is gathered; under FSDP or DeepSpeed (sharded weights) there is no probe. Running
    out of memory skips the probe: it never stops a run.
    """
    if not isinstance(task, ProbesFeatures) or not task.fresh_head or task.train_rows is None:
        return None
    if accelerator.distributed_type in SHARDED:
        log.info("no linear probe of the pre-trained features: the weights are sharded (%s)",
                 accelerator.distributed_type.value)
        return None
    started = time.perf_counter()
    rows = sample(task.train_rows, PROBE_ROWS, config.training.seed)
    counted = copy.deepcopy(task.truncated)  # these rows were counted when training's inputs were built
    train_data = task.dataset(rows, train=False)
    task.truncated = counted
    try:
        train_x, train_y = _pooled(model, task, train_data, accelerator, config)
        val_x, _ = _pooled(model, task, eval_data, accelerator, config)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        log.warning("out of memory while scoring the pre-trained features; the baseline has no linear-probe score")
        return None
    probabilities = linear_probe(train_x, train_y, val_x, len(task.label_names))
    # the task's metrics read logits: log-probabilities are the logits of these probabilities
    metrics = task.metrics(read_rows(task.eval_rows, "validation"), list(np.log(np.clip(probabilities, 1e-12, 1))))
    probe = {"probe": "logistic regression", "train_rows": len(rows),
             **{m: metrics[m] for m in task.metric_names if m in metrics},
             "seconds": round(time.perf_counter() - started, 2)}
    log.info("pre-trained features (logistic regression on %d training rows): %s", len(rows),
             ", ".join(f"{m} {probe[m]:.4f}" for m in task.metric_names if m in probe))
    return probe


@torch.no_grad()
def _pooled(model: nn.Module, task: FeatureProbeTask, data, accelerator: Accelerator,
            config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled features and (N,) labels of a labelled dataset, in eval mode, in dataset order
    (the validation rows' are scored against those rows)."""
    t = config.training
    loader = make_loader(data, task.collate, t.per_device_eval_batch_size, t.seed, train=False,
                         lengths=task.lengths(data), num_workers=t.dataloader_num_workers)
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                features.append(task.pooled_features(model, batch).float().cpu())
            labels.append(batch["labels"].cpu())
    finally:
        if was_training:
            model.train()
    order = torch.tensor([i for b in _sampler(loader).epoch_batches() for i in b], dtype=torch.long)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return torch.cat(features)[inverse], torch.cat(labels)[inverse]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, num_classes: int) -> np.ndarray:
    """(Q, num_classes) probabilities of a logistic regression on L2-normalised features.

    A linear probe, not a k-NN: a text encoder's nearest neighbours share a topic more than a
    label (on the quickstart's reviews a 5-NN scores 0.53, this 0.68, the head fine-tuned 0.85).
    C stays at sklearn's 1.0: tuning it on the validation rows would flatter the score.
    """
    from sklearn.linear_model import LogisticRegression

    x, y, query = F.normalize(train_x, dim=1).numpy(), train_y.numpy(), F.normalize(query_x, dim=1).numpy()
    probs = np.zeros((len(query), num_classes))
    if len(np.unique(y)) < 2:  # the sampled rows hold one class: that is all a probe could say
        probs[:, y[0]] = 1.0
        return probs
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    probs[:, fitted.classes_] = fitted.predict_proba(query)  # classes missing from the sample keep 0
    return probs
