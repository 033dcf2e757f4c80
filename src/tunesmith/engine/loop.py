"""The training loop on Accelerate: `setup` builds a run, `fit` trains it, top to bottom.

`fit` evaluates the pre-trained model (under a new head also its features, engine/evaluation.py), then trains
with the strategy's frozen groups and per-group learning rates; it evaluates per epoch or every N steps, keeps
the best model (the start among them where the task's `start_competes`: a parent run no epoch beats stays), writes step checkpoints, stops early when the chosen metric stalls, and finally restores the
best weights. `setup` builds everything it trains with into a `TrainingRun`, whose short methods are the
loop's parts: an epoch, a micro-batch, an optimizer step, what follows a step (log, evaluation, checkpoint).
The loop does gradient accumulation itself, counting micro-batches in its state. A checkpoint captures the
whole loop (epoch position, running sums, random generators, early stopping and unfreezing state,
engine/loop_state.py), so a resumed run continues exactly as an uninterrupted one would. Non-finite losses and
SIGTERM/Ctrl-C are handled between steps. Out of memory in a micro-batch is an explicit outcome: the step is
abandoned and the epoch's batches start again at it, in smaller micro-batches (engine/oom.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator

from tunesmith.config import RunConfig
from tunesmith.engine.accelerator import refuse_launched_accumulation
from tunesmith.engine.activation_cache import ActivationCache, begin_epoch, cached, make_cache, seq_len
from tunesmith.engine.batching import GroupedBatchSampler, make_loader
from tunesmith.engine.checkpoint import latest, save_checkpoint
from tunesmith.engine.evaluation import SHARDED, baseline_scores, evaluate
from tunesmith.engine.loop_state import (STATE_KEYS, LoopState, improved, non_finite_step, resume_state,
                                         warn_precision_change)
from tunesmith.engine.oom import OutOfMemory, TrainStepGuard
from tunesmith.engine.optimizer import make_optimizer, make_scheduler
from tunesmith.engine.progress import ProgressDisplay
from tunesmith.engine.seeding import capture_rng
from tunesmith.engine.sharding import finite_norm, gather_weights, refuse_sharded_resume, restore_best, save_best
from tunesmith.engine.signals import StopRequest, graceful_stop
from tunesmith.errors import TrainingInterrupted
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.report.history import History
from tunesmith.strategies.anchor import anchor_weights
from tunesmith.strategies.freezing import apply_freezing, trainable_from
from tunesmith.tasks import EpochDataset, Examples, Task, read_rows

__all__ = ["STATE_KEYS", "FitResult", "LoopState", "StepOutcome", "TrainingRun", "fit", "make_optimizer", "setup"]


@dataclass
class FitResult:
    baseline: dict[str, Any]
    best: dict[str, Any] | None
    final: dict[str, Any]
    state: LoopState
    steps_per_epoch: int


class StepOutcome(Enum):
    """What one micro-batch did to the optimizer step it belongs to."""

    ACCUMULATED = "accumulated"  # its gradients were added; the step's next micro-batch follows
    STEP_DONE = "step done"  # it was the step's last: the update was applied (or skipped as non-finite)
    REDO_STEP = "redo step"  # out of memory: the step was abandoned, its rows come again in smaller micro-batches


@dataclass
class TrainingRun:
    """Everything one `fit` trains with, built by `setup`; its methods are the loop's parts."""

    task: Task
    config: RunConfig
    run_dir: Path
    accelerator: Accelerator
    display: ProgressDisplay
    model: Any  # prepared by Accelerate, as are the optimizer, scheduler and loaders
    groups: list[LayerGroup]
    optimizer: Any
    scheduler: Any
    train_data: Examples
    eval_data: Examples
    train_loader: Any
    eval_loader: Any
    sampler: GroupedBatchSampler  # the training loader's: the loop sets its epoch and micro-batch size
    steps_per_epoch: int
    total_steps: int
    state: LoopState
    history: History
    cache: ActivationCache | None
    guard: TrainStepGuard
    best_entry: dict[str, Any] | None
    running_loss: torch.Tensor  # () on the device: the sum of step losses since the last log
    window_loss: torch.Tensor  # () on the device: the sum of this step's micro-batch losses
    clock: float = 0.0  # when training time was last added to `state.train_seconds`

    @property
    def done(self) -> bool:
        return self.state.global_step >= self.total_steps or self.state.stopped_early

    def start(self) -> None:
        self.display.start(self.total_steps)
        self.display.update(self.state.global_step, self.state.global_step / self.steps_per_epoch)
        self.clock = time.perf_counter()

    def train_epoch(self, stop_request: StopRequest) -> None:
        """Trains the rest of the epoch (from `state.batch_in_epoch`), or until the run is done.

        A micro-batch that runs out of memory abandons its step (engine/oom.py): the epoch's batches then
        start again at that step, which comes in the smaller micro-batches.
        """
        batches, cache_mode = self._epoch_batches()
        while not self.done and (batch := next(batches, None)) is not None:
            outcome = self.micro_batch(batch, cache_mode)
            if outcome is StepOutcome.REDO_STEP:
                batches, cache_mode = self._epoch_batches()
            elif outcome is StepOutcome.STEP_DONE:
                self.end_step(stop_request)

    def _epoch_batches(self) -> tuple[Iterator[dict[str, Any]], str | None]:
        """The epoch's remaining micro-batches and its activation-cache mode; freezes the epoch's groups."""
        s, strategy = self.state, self.config.strategy
        s.lowest_trainable = trainable_from(len(self.groups), strategy.freeze, strategy.gradual_unfreezing, s.epoch)
        apply_freezing(self.model, self.groups, s.lowest_trainable, strategy.freeze_groups)
        self.sampler.start_epoch(s.epoch, skip=s.batch_in_epoch)
        if isinstance(self.train_data, EpochDataset):
            self.train_data.set_epoch(s.epoch)
        cache_mode = begin_epoch(self.cache, s.lowest_trainable, self.train_data)
        return iter(self.train_loader), cache_mode

    def micro_batch(self, batch: dict[str, Any], cache_mode: str | None) -> StepOutcome:
        """Forward and backward of one micro-batch; after the last of its step, the optimizer step."""
        s = self.state
        self.guard.at_micro_batch(s)
        s.batch_in_epoch += 1
        indices = batch.pop("_index")
        # A step is `accumulation` micro-batches; an epoch's last step may be shorter.
        last = s.batch_in_epoch % s.accumulation == 0 or s.batch_in_epoch == self.sampler.num_batches
        loss = self.guard.run(s, partial(self._forward_backward, batch, indices, cache_mode, last))
        if isinstance(loss, OutOfMemory):  # the guard has rewound the state to the step's start
            self.window_loss.zero_()
            return StepOutcome.REDO_STEP
        self.window_loss += loss.detach() * self.sampler.share(s.batch_in_epoch - 1)
        if last:
            self.optimizer_step()
        s.samples += len(indices)  # rows, also when packing makes the batch one row
        return StepOutcome.STEP_DONE if last else StepOutcome.ACCUMULATED

    def _forward_backward(self, batch: dict[str, Any], indices: torch.Tensor, cache_mode: str | None,
                          last: bool) -> torch.Tensor:
        cache, device = self.cache, self.accelerator.device
        with _accumulating(self.accelerator, self.model, last):
            with cached(cache, cache_mode, indices, batch, device):
                loss, _ = self.task.loss(self.model, batch)
            # The step's gradient is the mean over its rows: each micro-batch's mean weighted by its share.
            self.accelerator.backward(loss * self.sampler.share(self.state.batch_in_epoch - 1))
            if cache_mode == "record" and cache is not None and cache.usable and not cache.checked:
                cache.check(indices, seq_len(batch), device, partial(self.task.forward, self.model, batch))
        return loss

    def optimizer_step(self) -> None:
        """Clips the step's gradients and applies them, unless they are not finite (`training.nan_policy`)."""
        t, s = self.config.training, self.state
        # One host-device sync per optimizer step: is this update finite? Under fp16 the
        # grad scaler owns overflowing gradients (it skips those steps itself).
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm or math.inf)
        finite = torch.isfinite(self.window_loss)
        if self.accelerator.mixed_precision != "fp16":
            finite = finite & finite_norm(norm)  # DeepSpeed's norm is a float or None
        if not bool(finite):
            non_finite_step(s, self.config, self.run_dir, self.sampler, self.task, latest(self.run_dir / "checkpoints"))
            self.optimizer.zero_grad(set_to_none=True)  # skip this update entirely
        else:
            self.running_loss += self.window_loss
            s.running_count += 1
        self.optimizer.step()
        self.scheduler.step()  # Accelerate steps it once per call: batches are split (engine/accelerator.py)
        self.optimizer.zero_grad(set_to_none=True)
        self.window_loss.zero_()

    def end_step(self, stop_request: StopRequest) -> None:
        """After an optimizer step: logs, evaluates, checkpoints and stops when each is due."""
        s, t = self.state, self.config.training
        s.global_step += 1
        epoch_done = s.batch_in_epoch == self.sampler.num_batches
        final = s.global_step == self.total_steps
        eval_due = final or (t.eval_strategy == "epoch" and epoch_done) or (
            t.eval_strategy == "steps" and t.eval_steps is not None and s.global_step % t.eval_steps == 0)
        log_due = final or s.global_step % t.logging_steps == 0
        train_loss = self._mean_train_loss() if log_due or eval_due else None
        if log_due:
            self.log(train_loss)
        if eval_due:
            self.evaluate_and_keep_best(train_loss)
        if epoch_done:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        stop_request.agree(self.accelerator)  # one all-reduce per step, only under DDP
        if stop_request:
            self.interrupt(stop_request)
        if eval_due or (t.save_steps and s.global_step % t.save_steps == 0):
            self.checkpoint()

    def _mean_train_loss(self) -> float | None:
        """The mean step loss since the last log (over all processes); None when no step counted."""
        if not self.state.running_count:
            return None
        # One host-device sync per logging interval, not per step.
        mean = self.running_loss / self.state.running_count
        loss = (self.accelerator.reduce(mean, "mean") if self.accelerator.num_processes > 1 else mean).item()
        self.running_loss.zero_()
        self.state.running_count = 0
        return loss

    def log(self, train_loss: float | None) -> None:
        lr = self.scheduler.get_last_lr()[-1]
        self.record("train", {"train_loss": train_loss, "lr": lr, "lrs": _group_rates(self.optimizer)})
        self.display.update(self.state.global_step, self.state.global_step / self.steps_per_epoch, train_loss, lr)

    def evaluate_and_keep_best(self, train_loss: float | None) -> None:
        """Evaluates; writes `best/` when the metric improved; stops early when it stalled for the patience."""
        s, t = self.state, self.config.training
        trained = [g for g in self.groups[s.lowest_trainable:] if g.name not in self.config.strategy.freeze_groups]
        started = time.perf_counter()
        scores = evaluate(self.model, self.eval_loader, self.task, self.accelerator)
        s.eval_seconds += time.perf_counter() - started
        entry = self.record("eval", scores, train_loss=train_loss, lr=self.scheduler.get_last_lr()[-1],
                            trainable_groups=[g.name for g in trained], trainable_params=sum(g.num_params for g in trained))
        self.keep_if_best(entry)
        if t.early_stopping_patience is not None and s.evals_without_improvement >= t.early_stopping_patience:
            s.stopped_early = True
            self.display.note(f"early stopping: {self.config.metric} has not improved for {s.evals_without_improvement} "
                              f"evaluations (best {s.best_metric:.4f} at step {s.best_step})")

    def keep_if_best(self, entry: dict[str, Any]) -> None:
        """Writes `best/` (on every process: it gathers sharded weights) when `entry`'s metric is the best so far."""
        if improved(entry, self.state, self.config.metric, self.config.greater_is_better,
                    self.config.training.early_stopping_threshold):
            self.best_entry = entry
            save_best(self.task, self.accelerator, self.model, self.run_dir)

    def checkpoint(self) -> Path:
        """Saves the whole loop (weights, optimizer, schedule, loop state, random generators); its folder."""
        self._count_train_time()
        s = self.state
        s.running_loss = float(self.running_loss)
        saved = {**asdict(s), "steps_per_epoch": self.steps_per_epoch, "rng": capture_rng()}
        path = self.run_dir / "checkpoints" / f"step-{s.global_step}"
        weights = gather_weights(self.accelerator, self.model)  # every process: a collective when the weights are sharded
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.run_dir / "checkpoints", self.accelerator.unwrap_model(self.model), self.optimizer,
                                   self.scheduler, saved, self.config.training.save_total_limit, weights)
        return path

    def interrupt(self, stop_request: StopRequest) -> NoReturn:
        """Checkpoints and raises TrainingInterrupted after SIGTERM or Ctrl-C."""
        path = self.checkpoint()
        self.display.stop()
        raise TrainingInterrupted(stop_request.message(self.state.global_step, path, self.run_dir),
                                  stop_request.exit_code)

    def finish(self) -> dict[str, Any]:
        """Restores the best weights and evaluates them (writing the validation predictions); the final record."""
        self.display.stop()
        self._count_train_time()
        self.accelerator.wait_for_everyone()  # the main process has finished writing best/
        if self.best_entry is not None and (self.run_dir / "best").exists():
            restore_best(self.accelerator, self.model, self.run_dir, self.task)
        predictions = self.run_dir / "predictions_validation.jsonl" if self.accelerator.is_main_process else None
        return self.record("final", evaluate(self.model, self.eval_loader, self.task, self.accelerator, predictions),
                           best_step=self.state.best_step, nan_skips=self.state.nan_skips)

    def record(self, phase: str, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
        step = self.state.global_step
        entry = {"phase": phase, "step": step, "epoch": round(step / self.steps_per_epoch, 4), **extra, **results}
        self.history.append(entry)
        if phase != "train":
            self.display.note(_summary(phase, entry, self.config))
        return entry

    def _count_train_time(self) -> None:
        now = time.perf_counter()
        self.state.train_seconds += now - self.clock
        self.clock = now


def fit(task: Task, model, config: RunConfig, run_dir: Path, accelerator: Accelerator, display: ProgressDisplay,
        resume_from: Path | None = None, restart_epoch: bool = False,
        on_record: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Trains `model` on the task's data; returns the baseline, best and final records and the loop state.

    Raises:
        NonFiniteLossError: a non-finite step under `nan_policy: stop`, or more than `max_nan_skips`.
        TrainingInterrupted: SIGTERM or Ctrl-C; a checkpoint of the last whole step was saved.
        GPUMemoryError: out of memory at a micro-batch of 1, or with several processes.
        LaunchError: `accelerate launch` set Accelerate to accumulate micro-batches (the loop does).
    """
    run = setup(task, model, config, run_dir, accelerator, display, resume_from, restart_epoch, on_record)
    baseline = run.history.find("baseline")
    if baseline is None:
        baseline = run.record("baseline", baseline_scores(run.model, run.eval_loader, run.eval_data, task, accelerator, config))
        if getattr(task, "start_competes", False):  # a trained start (a parent run) is kept if no epoch beats it
            run.keep_if_best(baseline)
    run.start()
    with graceful_stop() as stop_request:
        while not run.done:
            run.train_epoch(stop_request)
    final = run.finish()
    return FitResult(baseline, run.best_entry, final, run.state, run.steps_per_epoch)


def setup(task: Task, model, config: RunConfig, run_dir: Path, accelerator: Accelerator, display: ProgressDisplay,
          resume_from: Path | None = None, restart_epoch: bool = False,
          on_record: Callable[[dict[str, Any]], None] | None = None) -> TrainingRun:
    """Builds a run: data, optimizer, schedule, activation cache and loop state (a checkpoint's when
    resuming), all prepared by Accelerate. Nothing is trained or evaluated yet."""
    t, world = config.training, accelerator.num_processes
    groups = task.layer_groups(model)
    train_data, eval_data, train_loader, eval_loader = _loaders(task, config, world)
    sampler = train_loader.batch_sampler
    steps_per_epoch = max(1, math.ceil(len(sampler) / t.gradient_accumulation_steps))
    total_steps = t.max_steps or math.ceil(t.num_train_epochs * steps_per_epoch)
    optimizer = make_optimizer(groups, config)
    scheduler = make_scheduler(optimizer, config, total_steps)
    state = LoopState(label_names=list(task.label_names), precision=accelerator.mixed_precision)
    cache = make_cache(config, task, groups, train_data, world, run_dir, math.ceil(total_steps / steps_per_epoch))
    anchor_weights(optimizer, groups, config, task, accelerator.distributed_type in SHARDED)  # before resuming
    if resume_from is not None:
        refuse_sharded_resume(accelerator, resume_from)
        state = resume_state(resume_from, model, optimizer, scheduler, state)
        if restart_epoch:
            state.batch_in_epoch = 0
        warn_precision_change(resume_from, state.precision, accelerator.mixed_precision)
        state.precision = accelerator.mixed_precision
    guard = TrainStepGuard(accelerator, sampler, optimizer, run_dir, world)
    guard.adopt(state, config)  # a micro-batch found after running out of memory is kept on resume
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)
    refuse_launched_accumulation(accelerator)  # after prepare: DeepSpeed's config may set it there
    history = History(run_dir / "metrics.jsonl", keep_until_step=state.global_step if resume_from else None,
                      write=accelerator.is_main_process, on_append=on_record)
    device = accelerator.device
    return TrainingRun(task, config, run_dir, accelerator, display, model, groups, optimizer, scheduler, train_data,
                       eval_data, train_loader, eval_loader, sampler, steps_per_epoch, total_steps, state, history,
                       cache, guard, best_entry=history.find_step("eval", state.best_step) or history.find_step("baseline", state.best_step),
                       running_loss=torch.tensor(state.running_loss, device=device),
                       window_loss=torch.zeros((), device=device))


@contextlib.contextmanager
def _accumulating(accelerator: Accelerator, model, last: bool) -> Iterator[None]:
    """Around a micro-batch that is not its step's last: DDP keeps its gradients local (`no_sync`), and
    Accelerate's `sync_gradients` is off, which under DeepSpeed holds back the engine's step in `backward`.

    The loop counts micro-batches itself rather than through `accelerator.accumulate`: Accelerate's count
    cannot be set back when out of memory abandons a step. `sync_gradients` is a public setter of the
    Accelerator (huggingface/accelerate#1233); it is True again once the micro-batch is done or failed.
    """
    if last:
        yield
        return
    accelerator.sync_gradients = False
    try:
        with accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True


def _loaders(task: Task, config: RunConfig, world: int):
    """(train data, eval data, train loader, eval loader); loaders build whole-world batches, Accelerate splits them."""
    t = config.training
    train_data = task.dataset(read_rows(task.train_rows, "training"), train=True)
    eval_data = task.dataset(read_rows(task.eval_rows, "validation"), train=False)
    train_loader = make_loader(train_data, task.collate, t.per_device_train_batch_size * world, t.seed, train=True,
                               lengths=task.lengths(train_data), group_by_length=t.group_by_length,
                               num_workers=t.dataloader_num_workers, with_index=True,
                               accumulation=t.gradient_accumulation_steps,
                               class_batches=getattr(task, "class_batches", lambda _: None)(train_data))  # optional: P x K
    eval_loader = make_loader(eval_data, task.collate, t.per_device_eval_batch_size * world, t.seed, train=False,
                              lengths=task.lengths(eval_data), num_workers=t.dataloader_num_workers)
    return train_data, eval_data, train_loader, eval_loader


def _group_rates(optimizer) -> dict[str, float]:
    """The current learning rate of each layer group (its `.no_decay` twin has the same rate)."""
    return {g["group_name"].removesuffix(".no_decay"): g["lr"] for g in optimizer.param_groups}


def _summary(phase: str, entry: dict[str, Any], config: RunConfig) -> str:
    parts = [f"{phase:>8} step {entry['step']:>6} epoch {entry['epoch']:.2f}"]
    parts += [f"{key} {entry[key]:.4f}" for key in config.task_schema.shown(entry)]
    return "  ".join(parts)
