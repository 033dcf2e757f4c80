"""The training loop: one function, top to bottom, on Accelerate.

`fit` evaluates the pre-trained model (under a new head also its features, engine/evaluation.py), then trains
with the strategy's frozen groups and per-group learning rates; it evaluates per epoch or every N steps, keeps
the best model, writes step checkpoints, stops early when the chosen metric stalls, and finally restores the
best weights. A checkpoint captures the whole loop (epoch position, running sums, random generators, early
stopping and unfreezing state), so a resumed run continues exactly as an uninterrupted one would. Non-finite
losses and SIGTERM/Ctrl-C are handled between steps; out of memory in a step redoes its rows in smaller micro-batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from tunesmith.config import RunConfig
from tunesmith.engine.activation_cache import ActivationCache, begin_epoch, cached, make_cache, seq_len
from tunesmith.engine.batching import make_loader
from tunesmith.engine.checkpoint import latest, save_checkpoint
from tunesmith.engine.evaluation import baseline_scores, evaluate
from tunesmith.engine.loop_state import STATE_KEYS, LoopState, improved, non_finite_step, resume_state
from tunesmith.engine.oom import TrainStepGuard
from tunesmith.engine.progress import ProgressDisplay
from tunesmith.engine.seeding import capture_rng
from tunesmith.engine.sharding import finite_norm, gather_weights, refuse_sharded_resume, restore_best, save_best
from tunesmith.engine.signals import graceful_stop
from tunesmith.errors import TrainingInterrupted
from tunesmith.report.history import History
from tunesmith.strategies.freezing import apply_freezing, trainable_from
from tunesmith.strategies.learning_rates import optimizer_param_groups
from tunesmith.tasks import EpochDataset, Task, read_rows

__all__ = ["STATE_KEYS", "FitResult", "LoopState", "fit", "make_optimizer"]


@dataclass
class FitResult:
    baseline: dict[str, Any]
    best: dict[str, Any] | None
    final: dict[str, Any]
    state: LoopState
    steps_per_epoch: int


def fit(task: Task, model, config: RunConfig, run_dir: Path, accelerator: Accelerator, display: ProgressDisplay,
        resume_from: Path | None = None, restart_epoch: bool = False,
        on_record: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    t, s = config.training, config.strategy
    metric, greater = config.metric, config.greater_is_better
    groups = task.layer_groups(model)
    world = accelerator.num_processes
    train_data, eval_data, train_loader, eval_loader = _loaders(task, config, world)
    sampler = train_loader.batch_sampler
    steps_per_epoch = max(1, math.ceil(len(sampler) / t.gradient_accumulation_steps))
    total_steps = t.max_steps or math.ceil(t.num_train_epochs * steps_per_epoch)
    optimizer = make_optimizer(groups, config)
    scheduler = _make_scheduler(optimizer, config, total_steps)
    state = LoopState(label_names=list(task.label_names))
    cache = make_cache(config, task, groups, train_data, world, run_dir, math.ceil(total_steps / steps_per_epoch))
    if resume_from is not None:
        refuse_sharded_resume(accelerator, resume_from)
        state = resume_state(resume_from, model, optimizer, scheduler, state)
        if restart_epoch:
            state.batch_in_epoch = 0
    oom = TrainStepGuard(accelerator, sampler, optimizer, run_dir, world)
    oom.adopt(state, config)  # a micro-batch found after running out of memory is kept on resume
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)
    main = accelerator.is_main_process
    history = History(run_dir / "metrics.jsonl", keep_until_step=state.global_step if resume_from else None, write=main,
                      on_append=on_record)

    def record(phase: str, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
        entry = {"phase": phase, "step": state.global_step, "epoch": round(state.global_step / steps_per_epoch, 4),
                 **extra, **results}
        history.append(entry)
        if phase != "train":
            display.note(_summary(phase, entry, config))
        return entry

    def checkpoint() -> Path:
        state.train_seconds += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        state.running_loss = float(running_loss)
        saved = {**asdict(state), "steps_per_epoch": steps_per_epoch, "rng": capture_rng()}
        path = run_dir / "checkpoints" / f"step-{state.global_step}"
        weights = gather_weights(accelerator, model)  # every process: a collective when the weights are sharded
        if main:
            path = save_checkpoint(run_dir / "checkpoints", accelerator.unwrap_model(model), optimizer, scheduler,
                                   saved, t.save_total_limit, weights)
        return path

    baseline = history.find("baseline") or record(
        "baseline", baseline_scores(model, eval_loader, eval_data, task, accelerator, config))
    best_entry = history.find_step("eval", state.best_step)
    running_loss = torch.tensor(state.running_loss, device=accelerator.device)
    window_loss = torch.zeros((), device=accelerator.device)
    display.start(total_steps)
    display.update(state.global_step, state.global_step / steps_per_epoch)
    clock = [time.perf_counter()]
    with graceful_stop() as stop_request:
        while state.global_step < total_steps and not state.stopped_early:
            state.lowest_trainable = trainable_from(len(groups), s.freeze, s.gradual_unfreezing, state.epoch)
            apply_freezing(model, groups, state.lowest_trainable)
            sampler.start_epoch(state.epoch, skip=state.batch_in_epoch)
            if isinstance(train_data, EpochDataset):
                train_data.set_epoch(state.epoch)
            cache_mode = begin_epoch(cache, state.lowest_trainable, train_data)
            for batch in train_loader:
                oom.at_micro_batch(state)
                state.batch_in_epoch += 1
                indices = batch.pop("_index")
                with accelerator.accumulate(model):
                    loss = oom.run(state, lambda: _forward_backward(task, model, batch, accelerator, cache, cache_mode,
                                                                    indices))
                    if loss is None:  # out of memory: this step's rows again, in smaller micro-batches
                        window_loss.zero_()
                        break
                    window_loss += loss.detach()
                    if accelerator.sync_gradients:
                        # One host-device sync per optimizer step: is this update finite? Under fp16 the
                        # grad scaler owns overflowing gradients (it skips those steps itself).
                        norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm or math.inf)
                        finite = torch.isfinite(window_loss)
                        if accelerator.mixed_precision != "fp16":
                            finite = finite & finite_norm(norm)  # DeepSpeed's norm is a float or None
                        if not bool(finite):
                            non_finite_step(state, config, run_dir, sampler, task, latest(run_dir / "checkpoints"))
                            optimizer.zero_grad(set_to_none=True)  # skip this update entirely
                        else:
                            running_loss += window_loss / state.accumulation
                            state.running_count += 1
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.samples += len(indices)  # rows, also when packing makes the batch one row
                if not accelerator.sync_gradients:
                    continue
                window_loss.zero_()
                state.global_step += 1
                epoch_done = state.batch_in_epoch == sampler.num_batches
                due = (t.eval_strategy == "steps" and t.eval_steps is not None and state.global_step % t.eval_steps == 0) or (
                    t.eval_strategy == "epoch" and epoch_done) or state.global_step == total_steps
                log_due = state.global_step % t.logging_steps == 0 or state.global_step == total_steps
                train_loss = None
                if (log_due or due) and state.running_count:
                    # One host-device sync per logging interval, not per step.
                    mean = running_loss / state.running_count
                    train_loss = (accelerator.reduce(mean, "mean") if world > 1 else mean).item()
                    running_loss.zero_()
                    state.running_count = 0
                if log_due:
                    record("train", {"train_loss": train_loss, "lr": scheduler.get_last_lr()[-1],
                                     "lrs": _group_rates(optimizer)})
                    display.update(state.global_step, state.global_step / steps_per_epoch, train_loss,
                                   scheduler.get_last_lr()[-1])
                if due:
                    entry = record("eval", evaluate(model, eval_loader, task, accelerator), train_loss=train_loss,
                                   lr=scheduler.get_last_lr()[-1],
                                   trainable_groups=[g.name for g in groups[state.lowest_trainable:]],
                                   trainable_params=sum(g.num_params for g in groups[state.lowest_trainable:]))
                    if improved(entry, state, metric, greater, t.early_stopping_threshold):
                        best_entry = entry
                        save_best(task, accelerator, model, run_dir)  # every process: it gathers sharded weights
                    if t.early_stopping_patience is not None and state.evals_without_improvement >= t.early_stopping_patience:
                        state.stopped_early = True
                        display.note(f"early stopping: {metric} has not improved for {state.evals_without_improvement} "
                                     f"evaluations (best {state.best_metric:.4f} at step {state.best_step})")
                if epoch_done:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                stop_request.agree(accelerator)  # one all-reduce per step, only under DDP
                if due or (t.save_steps and state.global_step % t.save_steps == 0) or stop_request:
                    path = checkpoint()
                if stop_request:
                    display.stop()
                    raise TrainingInterrupted(stop_request.message(state.global_step, path, run_dir),
                                              stop_request.exit_code)
                if state.global_step >= total_steps or state.stopped_early:
                    break
    display.stop()
    state.train_seconds += time.perf_counter() - clock[0]
    accelerator.wait_for_everyone()  # the main process has finished writing best/
    if best_entry is not None and (run_dir / "best").exists():
        restore_best(accelerator, model, run_dir)
    predictions = run_dir / "predictions_validation.jsonl" if main else None
    final = record("final", evaluate(model, eval_loader, task, accelerator, predictions), best_step=state.best_step,
                   nan_skips=state.nan_skips)
    return FitResult(baseline, best_entry, final, state, steps_per_epoch)


def _loaders(task: Task, config: RunConfig, world: int):
    """(train data, eval data, train loader, eval loader); loaders build whole-world batches, Accelerate splits them."""
    t = config.training
    train_data = task.dataset(read_rows(task.train_rows, "training"), train=True)
    eval_data = task.dataset(read_rows(task.eval_rows, "validation"), train=False)
    train_loader = make_loader(train_data, task.collate, t.per_device_train_batch_size * world, t.seed, train=True,
                               lengths=task.lengths(train_data), group_by_length=t.group_by_length,
                               num_workers=t.dataloader_num_workers, with_index=True,
                               accumulation=t.gradient_accumulation_steps)
    eval_loader = make_loader(eval_data, task.collate, t.per_device_eval_batch_size * world, t.seed, train=False,
                              lengths=task.lengths(eval_data), num_workers=t.dataloader_num_workers)
    return train_data, eval_data, train_loader, eval_loader


def _forward_backward(task: Task, model, batch, accelerator: Accelerator, cache: ActivationCache | None, mode: str | None,
                      indices: torch.Tensor) -> torch.Tensor:
    with cached(cache, mode, indices, batch, accelerator.device):
        loss, _ = task.loss(model, batch)
    accelerator.backward(loss)
    if mode == "record" and cache is not None and cache.usable and not cache.checked:
        cache.check(indices, seq_len(batch), accelerator.device, lambda: task.forward(model, batch))
    return loss


def make_optimizer(groups, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the layer groups with their discriminative rates (also used by `tunesmith lr-find`)."""
    t = config.training
    params = optimizer_param_groups(groups, t.learning_rate, config.strategy.layer_lr_decay, t.weight_decay)
    kwargs: dict[str, Any] = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels are missing for some devices and dtypes
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def _make_scheduler(optimizer, config: RunConfig, total_steps: int):
    ratio, steps = config.warmup
    warmup = steps if steps is not None else int((ratio or 0.0) * total_steps)
    # With split batches (engine/accelerator.py) Accelerate steps the scheduler once per step.
    return get_scheduler(config.training.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


def _group_rates(optimizer) -> dict[str, float]:
    """The current learning rate of each layer group (its `.no_decay` twin has the same rate)."""
    return {g["group_name"].removesuffix(".no_decay"): g["lr"] for g in optimizer.param_groups}


def _summary(phase: str, entry: dict[str, Any], config: RunConfig) -> str:
    parts = [f"{phase:>8} step {entry['step']:>6} epoch {entry['epoch']:.2f}"]
    parts += [f"{key} {entry[key]:.4f}" for key in config.task_schema.shown(entry)]
    return "  ".join(parts)
