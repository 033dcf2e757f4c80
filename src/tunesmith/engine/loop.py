"""The training loop: one function, top to bottom, on Accelerate.

`fit` evaluates the pre-trained model, then trains with the strategy's frozen groups and
per-group learning rates, evaluates per epoch or every N steps, saves the best model and a step
checkpoint at each evaluation, stops early when the chosen metric stops improving, and finally
restores the best weights. Every evaluation is appended to `metrics.jsonl`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import get_scheduler

from tunesmith.config import RunConfig
from tunesmith.engine.batching import make_loader
from tunesmith.engine.checkpoint import atomic_folder, save_checkpoint
from tunesmith.engine.evaluation import evaluate
from tunesmith.engine.progress import ProgressDisplay
from tunesmith.report.history import History
from tunesmith.strategies.freezing import apply_freezing, trainable_from
from tunesmith.strategies.learning_rates import optimizer_param_groups


@dataclass
class LoopState:
    """Everything about the loop's position and progress that a checkpoint records."""

    global_step: int = 0
    epoch: int = 0
    lowest_trainable: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


@dataclass
class FitResult:
    baseline: dict[str, Any]
    best: dict[str, Any] | None
    final: dict[str, Any]
    state: LoopState
    train_seconds: float
    train_samples: int
    steps_per_epoch: int


def fit(task, model, config: RunConfig, run_dir: Path, accelerator: Accelerator, display: ProgressDisplay) -> FitResult:
    t, s = config.training, config.strategy
    metric, greater = t.metric_for_best_model, config.greater_is_better
    groups = task.layer_groups(model)
    train_data = task.dataset(task.train_rows, train=True)
    eval_data = task.dataset(task.eval_rows, train=False)
    train_loader = make_loader(train_data, task.collate, t.per_device_train_batch_size, t.seed, train=True,
                               lengths=task.lengths(train_data), group_by_length=t.group_by_length,
                               num_workers=t.dataloader_num_workers)
    eval_loader = make_loader(eval_data, task.collate, t.per_device_eval_batch_size, t.seed, train=False,
                              lengths=task.lengths(eval_data), num_workers=t.dataloader_num_workers)
    sampler = train_loader.batch_sampler
    optimizer = _make_optimizer(groups, config)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / t.gradient_accumulation_steps))
    total_steps = t.max_steps or math.ceil(t.num_train_epochs * steps_per_epoch)
    ratio, warmup_steps = config.warmup
    warmup = warmup_steps if warmup_steps is not None else int(ratio * total_steps)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)
    history = History(run_dir / "metrics.jsonl")
    state = LoopState()

    def record(phase: str, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
        entry = {"phase": phase, "step": state.global_step, "epoch": round(state.global_step / steps_per_epoch, 4),
                 **extra, **results}
        history.append(entry)
        display.note(_summary(phase, entry, metric))
        return entry

    baseline = record("baseline", evaluate(model, eval_loader, task, accelerator))
    best_entry = None
    running_loss, running_count, samples = torch.zeros((), device=accelerator.device), 0, 0
    display.start(total_steps)
    started = _now()
    while state.global_step < total_steps and not state.stopped_early:
        state.lowest_trainable = trainable_from(len(groups), s.freeze, s.gradual_unfreezing, state.epoch)
        apply_freezing(model, groups, state.lowest_trainable)
        sampler.set_epoch(state.epoch)
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(state.epoch)
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss, _ = task.loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            running_count += 1
            samples += len(batch["labels"])
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if state.global_step % t.logging_steps == 0 or state.global_step == total_steps:
                # One host-device sync per logging interval, not per step.
                display.update(state.global_step, state.global_step / steps_per_epoch,
                               (running_loss / running_count).item(), scheduler.get_last_lr()[-1])
            at_epoch_end = state.global_step % steps_per_epoch == 0
            due = (t.eval_strategy == "steps" and state.global_step % t.eval_steps == 0) or (
                t.eval_strategy == "epoch" and at_epoch_end) or state.global_step == total_steps
            if due:
                train_loss = (running_loss / max(1, running_count)).item()
                running_loss.zero_()
                running_count = 0
                entry = record("eval", evaluate(model, eval_loader, task, accelerator),
                               train_loss=train_loss, lr=scheduler.get_last_lr()[-1],
                               trainable_groups=[g.name for g in groups[state.lowest_trainable:]])
                if _improved(entry, state, metric, greater, t.early_stopping_threshold):
                    best_entry = entry
                    _save_best(task, accelerator.unwrap_model(model), run_dir)
                save_checkpoint(run_dir / "checkpoints", accelerator.unwrap_model(model), optimizer, scheduler,
                                {**asdict(state), "steps_per_epoch": steps_per_epoch}, t.save_total_limit)
                if t.early_stopping_patience is not None and state.evals_without_improvement >= t.early_stopping_patience:
                    state.stopped_early = True
                    display.note(f"early stopping: {metric} has not improved for {state.evals_without_improvement} "
                                 f"evaluations (best {state.best_metric:.4f} at step {state.best_step})")
            if state.global_step >= total_steps or state.stopped_early:
                break
        state.epoch += 1
    display.stop()
    train_seconds = _now() - started
    if best_entry is not None:
        _restore_best(accelerator.unwrap_model(model), run_dir)
    final = record("final", evaluate(model, eval_loader, task, accelerator), best_step=state.best_step)
    return FitResult(baseline, best_entry, final, state, train_seconds, samples, steps_per_epoch)


def _make_optimizer(groups, config: RunConfig) -> torch.optim.Optimizer:
    t = config.training
    params = optimizer_param_groups(groups, t.learning_rate, config.strategy.layer_lr_decay, t.weight_decay)
    kwargs = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels are missing for some devices and dtypes
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def _improved(entry: dict[str, Any], state: LoopState, metric: str, greater: bool, threshold: float) -> bool:
    value = entry.get(metric)
    if value is None or not math.isfinite(value) or not math.isfinite(entry.get("loss") or 0.0):
        state.evals_without_improvement += 1
        return False  # a diverged model is never kept as the best
    better = state.best_metric is None or (
        value > state.best_metric + threshold if greater else value < state.best_metric - threshold)
    if better:
        state.best_metric, state.best_step, state.evals_without_improvement = value, entry["step"], 0
    else:
        state.evals_without_improvement += 1
    return better


def _save_best(task, model, run_dir: Path) -> None:
    with atomic_folder(run_dir / "best") as tmp:
        task.save(model, str(tmp))


def _restore_best(model, run_dir: Path) -> None:
    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise RuntimeError(f"best model does not match the trained model: missing {missing}, unexpected {unexpected}")


def _summary(phase: str, entry: dict[str, Any], metric: str) -> str:
    parts = [f"{phase:>8} step {entry['step']:>6} epoch {entry['epoch']:.2f}"]
    for key in ("loss", "accuracy", "macro_f1", "train_loss"):
        if entry.get(key) is not None:
            parts.append(f"{key} {entry[key]:.4f}")
    return "  ".join(parts)


def _now() -> float:
    import time

    return time.perf_counter()
