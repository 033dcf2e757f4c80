"""What the training loop knows between steps, and the judgements that change it.

`LoopState` is the loop's position and progress (epoch, step, running sums, best score, patience,
micro-batch size); every checkpoint saves it whole, and `resume_state` loads a checkpoint back into
the model, optimizer and schedule and returns its state, so a resumed run continues exactly as an
uninterrupted one would. After an evaluation, `improved` decides whether it is the best so far
(early stopping counts the others); after a non-finite step, `non_finite_step` records its rows and
applies `training.nan_policy`. A resumed run that computes in another precision than it started in
(`mixed_precision: auto` on another machine) is warned about (`warn_precision_change`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.engine.accelerator import PRECISION_NAMES
from tunesmith.engine.batching import GroupedBatchSampler
from tunesmith.engine.checkpoint import check_state_keys, load_checkpoint
from tunesmith.engine.seeding import restore_rng
from tunesmith.errors import NonFiniteLossError
from tunesmith.tasks import Task, read_rows

log = logging.getLogger("tunesmith")


@dataclass
class LoopState:
    """Everything about the loop's position and progress that a checkpoint records."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    lowest_trainable: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_loss: float | None = None  # validation loss at best_step: it breaks ties of the metric
    evals_without_improvement: int = 0
    stopped_early: bool = False
    running_loss: float = 0.0
    running_count: int = 0
    samples: int = 0
    nan_skips: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # validation passes inside the loop's train_seconds (boosted trees, policies: 0)
    label_names: list[str] = field(default_factory=list)
    micro_batch: int = 0  # per device, as trained: smaller than configured after running out of memory
    accumulation: int = 1
    shrunk_from: int = 0  # the micro-batch that ran out of memory (engine/oom.py); 0: never
    precision: str = ""  # Accelerate's mixed precision the run trained in ("": a checkpoint from before it was kept)


STATE_KEYS = {*LoopState.__dataclass_fields__, "rng", "steps_per_epoch"}  # what state.json may hold


def resume_state(path: Path, model, optimizer, scheduler, fresh: LoopState) -> LoopState:
    """Loads a verified checkpoint into the model, optimizer and scheduler; returns its loop state."""
    saved = load_checkpoint(path)
    check_state_keys(path, saved["state"], STATE_KEYS)
    model.load_state_dict(saved["weights"], strict=False)
    configured = [g["initial_lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if configured != list(scheduler.base_lrs):
        # The config's learning rate changed since the checkpoint: the new one applies from here.
        scheduler.base_lrs = configured
        for group, base, factor in zip(optimizer.param_groups, configured, scheduler.lr_lambdas):
            group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    restore_rng(saved["state"].pop("rng"))
    saved["state"].pop("steps_per_epoch", None)
    return LoopState(**{**asdict(fresh), **saved["state"]})


def warn_precision_change(path: Path, trained: str, now: str) -> None:
    """Warns when a resumed run computes in another precision than it started in: `mixed_precision: auto`
    picks by the machine (engine/accelerator.py), and a run resumed on another CPU or GPU may differ."""
    if trained and trained != now:
        log.warning("%s was trained in %s and this run continues in %s, so its losses will not match an "
                    "uninterrupted run's; set training.mixed_precision: %s to continue as it started",
                    path, PRECISION_NAMES.get(trained, trained), PRECISION_NAMES.get(now, now), trained)


def improved(entry: dict[str, Any], state: LoopState, metric: str, greater: bool, threshold: float) -> bool:
    """Whether the evaluation `entry` is the best so far; records it as such in `state`, or counts a stall."""
    value, loss = entry.get(metric), entry.get("loss")
    if value is None or not math.isfinite(value) or not math.isfinite(loss or 0.0):
        state.evals_without_improvement += 1
        return False  # a diverged model is never kept as the best
    better = state.best_metric is None or (
        value > state.best_metric + threshold if greater else value < state.best_metric - threshold)
    # A tie is common where the metric moves in coarse steps (accuracy: 1/n on n validation rows), and
    # counting every tie as a stall would stop a run that is still learning. A tie with a lower
    # validation loss is the same score, more confidently right, so it counts as an improvement (and
    # becomes the best); a tie with an equal or higher loss does not, so a real plateau still stops.
    # Only an exact tie: a change smaller than a non-zero early_stopping_threshold is the user's no.
    tie = (not better and value == state.best_metric and loss is not None and state.best_loss is not None
           and loss < state.best_loss)
    if better or tie:
        state.best_metric, state.best_step, state.evals_without_improvement = value, entry["step"], 0
        state.best_loss = loss
    else:
        state.evals_without_improvement += 1
    return better or tie


def non_finite_step(state: LoopState, config: RunConfig, run_dir: Path, sampler: GroupedBatchSampler, task: Task,
                    checkpoint_path: Path | None) -> None:
    """Records the rows of a non-finite step in `bad_batches.json`; under `nan_policy: skip` counts it.

    Raises:
        NonFiniteLossError: under `nan_policy: stop`, or past `max_nan_skips`.
    """
    t = config.training
    batches = sampler.epoch_batches()[state.batch_in_epoch - state.accumulation: state.batch_in_epoch]
    train_rows = read_rows(task.train_rows, "training")
    rows = sorted({train_rows.lines[i] for b in batches for i in b})
    report = {"step": state.global_step + 1, "epoch": state.epoch, "source": train_rows.source, "lines": rows}
    with (run_dir / "bad_batches.json").open("a", encoding="utf-8") as f:
        f.write(json.dumps(report) + "\n")
    state.nan_skips += 1
    if t.nan_policy == "skip" and state.nan_skips <= t.max_nan_skips:
        return
    last = f"last good checkpoint: {checkpoint_path.name}" if checkpoint_path else "no checkpoint was saved yet"
    limit = f" ({state.nan_skips} non-finite steps, more than max_nan_skips={t.max_nan_skips})" if t.nan_policy == "skip" else ""
    raise NonFiniteLossError(
        f"loss or gradients became NaN/inf at step {state.global_step + 1} (epoch {state.epoch + 1}){limit}; the update "
        f"was not applied. Rows of that batch: {train_rows.source} lines {rows[:20]} (all in "
        f"{run_dir / 'bad_batches.json'}); {last}. Lower training.learning_rate, check those rows, "
        "or set training.nan_policy: skip")
