"""The loop for models that train by their own algorithm, not by gradient steps (boosted trees).

Such a model (`FitsItself`) grows in rounds: `fit_round` trains one (a block of boosting iterations,
or a leaf refit), and this loop does around it what the gradient loop (engine/loop.py) does around an
epoch: it evaluates the starting model first (the `baseline` record), evaluates after every round, keeps
`best/` when the chosen metric improves, stops early when it stalls for `early_stopping_patience`
rounds, and restores the best model for the `final` record and the validation predictions. The run
directory, report and model card are those of every run. A round is one "epoch" in the records, and
`training.num_train_epochs` rounds at most are trained. There are no step checkpoints to resume from:
a round takes seconds, so an interrupted run starts again.

A model that also has layer groups trained by gradient steps inside its own algorithm (an RL policy,
`TrainsLayerGroups`) gets tunesmith's strategy as every gradient-trained model does: its optimizer's
param groups carry the discriminative rates (`strategy.layer_lr_decay`), and before each round the
groups below the freeze floor, or not yet unfrozen (`strategy.gradual_unfreezing`, a round per step
down), and those named in `strategy.freeze_groups` are frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from accelerate import Accelerator

from tunesmith.config import RunConfig
from tunesmith.engine.batching import make_loader
from tunesmith.engine.evaluation import baseline_scores, evaluate
from tunesmith.engine.loop import FitResult
from tunesmith.engine.loop_state import LoopState, improved
from tunesmith.engine.progress import ProgressDisplay
from tunesmith.engine.sharding import save_best
from tunesmith.errors import ConfigError
from tunesmith.report.history import History
from tunesmith.strategies.freezing import apply_freezing, trainable_from
from tunesmith.strategies.learning_rates import optimizer_param_groups
from tunesmith.tasks import Examples, Task, read_rows


@runtime_checkable
class TrainsLayerGroups(Protocol):
    """A `FitsItself` model whose algorithm takes gradient steps on layer groups (models/policy.py)."""

    def use_param_groups(self, param_groups: list[dict[str, Any]], head_rate: float) -> None:
        """Trains with these optimizer param groups (`optimizer_param_groups`); the head's rate is `head_rate`."""

    def train_loss(self) -> float | None:
        """The algorithm's training loss in the round just trained, for the `train` record (None: none logged)."""


@runtime_checkable
class FitsItself(Protocol):
    """A model the engine trains by calling it round by round (models/boosted.py)."""

    def fit_round(self, train_data: Examples, number: int) -> bool:
        """Trains round `number` (0-based) on the task's training examples; False once there is nothing
        left to train (a refit is one round)."""

    def load_best(self, folder: Path) -> None:
        """Takes back the model saved in `folder` (the run's `best/`)."""


def fit_itself(task: Task, model: Any, config: RunConfig, run_dir: Path, accelerator: Accelerator,
               display: ProgressDisplay, resume_from: Path | None = None, restart_epoch: bool = False,
               on_record: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Trains a `FitsItself` model round by round; the same records and result as the gradient loop.

    Raises:
        ConfigError: resuming was asked for, or the run is launched on several processes.
    """
    if resume_from is not None or accelerator.num_processes > 1:
        raise ConfigError(["resume / accelerate launch: a model that trains by its own algorithm (boosted trees) "
                           "runs in one process and starts again instead of resuming; set resume: null"])
    strategy, plain = config.strategy, type(config.strategy)()
    grouped = isinstance(model, TrainsLayerGroups)
    keys = ("l2_sp",) if grouped else ("freeze", "freeze_groups", "gradual_unfreezing", "layer_lr_decay", "l2_sp")
    unused = [f"strategy.{k}" for k in keys
              if getattr(strategy, k) != getattr(plain, k)] + (["lora.enabled"] if config.lora.enabled else [])
    if unused:
        raise ConfigError([f"{k}: acts on layer groups trained by tunesmith's gradient loop, which this model "
                           f"({type(model).__name__}) does not use; remove it" for k in unused])
    t = config.training
    groups = task.layer_groups(model) if grouped else []
    rates: dict[str, float] = {}
    if grouped:
        param_groups = optimizer_param_groups(groups, t.learning_rate, strategy.layer_lr_decay, t.weight_decay)
        model.use_param_groups(param_groups, t.learning_rate)
        rates = {g["group_name"].removesuffix(".no_decay"): g["lr"] for g in param_groups}
    train_data = task.dataset(read_rows(task.train_rows, "training"), train=True)
    eval_data = task.dataset(read_rows(task.eval_rows, "validation"), train=False)
    eval_loader = make_loader(eval_data, task.collate, t.per_device_eval_batch_size, t.seed, train=False,
                              lengths=task.lengths(eval_data), num_workers=0)
    state, history = LoopState(label_names=list(task.label_names)), History(run_dir / "metrics.jsonl", on_append=on_record)
    rounds = math.ceil(t.num_train_epochs) if t.max_steps is None else t.max_steps

    def record(phase: str, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
        entry = {"phase": phase, "step": state.global_step, "epoch": float(state.global_step), **extra, **results}
        history.append(entry)
        display.note(f"{phase} round {state.global_step}: {config.metric} {entry.get(config.metric, float('nan')):.4f}")
        return entry

    baseline = record("baseline", baseline_scores(model, eval_loader, eval_data, task, accelerator, config))
    best, more = None, True
    while more and state.global_step < rounds and not state.stopped_early:
        if grouped:
            apply_freezing(model, groups, trainable_from(len(groups), strategy.freeze, strategy.gradual_unfreezing,
                                                         state.global_step), strategy.freeze_groups)
        started = time.perf_counter()
        more = model.fit_round(train_data, state.global_step)
        state.train_seconds += time.perf_counter() - started
        state.global_step += 1
        state.samples += getattr(model, "samples_per_round", len(train_data))  # a policy: environment steps
        loss = model.train_loss() if grouped else None
        if loss is not None:
            history.append({"phase": "train", "step": state.global_step, "epoch": float(state.global_step),
                            "train_loss": loss, "lr": t.learning_rate, "lrs": rates})
        trainable = sum(p.numel() for g in groups for _, p in g.params if p.requires_grad)
        entry = record("eval", evaluate(model, eval_loader, task, accelerator), trainable_params=trainable)
        if improved(entry, state, config.metric, config.greater_is_better, t.early_stopping_threshold):
            best = entry
            save_best(task, accelerator, model, run_dir)
        state.stopped_early = (t.early_stopping_patience is not None
                               and state.evals_without_improvement >= t.early_stopping_patience)
    if best is not None:
        model.load_best(run_dir / "best")
    predictions = run_dir / "predictions_validation.jsonl"
    final = record("final", evaluate(model, eval_loader, task, accelerator, predictions), best_step=state.best_step,
                   nan_skips=0)
    return FitResult(baseline, best, final, state, 1)
