"""Out of memory during a run: shrink the micro-batch, redo the step, lose nothing.

When a training micro-batch runs out of memory (`torch.OutOfMemoryError`, or a `RuntimeError`
saying "out of memory"), the optimizer step it belongs to is abandoned before its update: its
gradients are dropped, memory is freed, and the torch random generators and the loop's position
go back to where the step began. The micro-batch shrinks to the largest divisor of the effective
batch that is at most half of it (32 -> 16 -> 8 for an effective batch of 32) and gradient
accumulation grows to match, so the effective batch is unchanged. `TrainStepGuard.run` returns
this as its result (`OutOfMemory` in place of the loss), and the loop answers by starting the
epoch's batches again at the abandoned step; the loop counts micro-batches itself
(engine/loop.py), so no count inside Accelerate has to be set back. The batch sampler orders rows
by optimizer step (engine/batching.py), so the redone step holds exactly the rows of the abandoned
one: nothing is skipped or counted twice, `global_step` carries on, and from there the run is the
run it would have been had it started at the smaller size. One log line says so once the smaller
size works; the size is kept in the loop state (so in every checkpoint) and in the run's
`config.yaml`, and a resume uses it. Evaluation has no optimizer state: out of memory there halves
only the evaluation batch and evaluates again.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from tunesmith.errors import GPUMemoryError

log = logging.getLogger("tunesmith")

REMEDY = ("freeze more layer groups (strategy.freeze), shorten data.max_length or image_classification.image_size, use "
          "training.mixed_precision: bf16 or fp16, or a GPU with more memory")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def smaller_micro_batch(micro: int, effective: int) -> int:
    """The largest divisor of `effective` that is at most half of `micro` (0 when `micro` is 1)."""
    return next((d for d in range(micro // 2, 0, -1) if effective % d == 0), 0)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class OutOfMemory:
    """`TrainStepGuard.run`'s result when the micro-batch ran out of memory: optimizer step `step` was
    abandoned at micro-batches of `failed_at`, and the loop is set back to redo it at `micro_batch`."""

    step: int
    failed_at: int
    micro_batch: int


class TrainStepGuard:
    """Runs each micro-batch's forward and backward; on out of memory, sets the loop up to redo the step.

    The loop calls `at_micro_batch` before each micro-batch and `run` for its forward and backward;
    `run` returns `OutOfMemory` when the step must be redone, and the loop then starts its epoch's
    batches again (the sampler skips the steps already done).
    """

    def __init__(self, accelerator, sampler, optimizer, run_dir: Path, world: int):
        self.accelerator, self.sampler, self.optimizer = accelerator, sampler, optimizer
        self.run_dir, self.world = run_dir, world
        self.step_start: tuple[int, int, list[torch.Tensor]] | None = None  # batch_in_epoch, samples, rng
        self.note: tuple[int, int] | None = None  # (step, micro-batch that ran out of memory), logged once it fits

    def adopt(self, state, config) -> None:
        """Uses the loop state's micro-batch (found after running out of memory) when it splits the
        configured effective batch; otherwise the configured sizes. Call after a resume."""
        t = config.training
        micro, accumulation = t.per_device_train_batch_size, t.gradient_accumulation_steps
        saved = (state.micro_batch, state.accumulation)
        if state.shrunk_from and saved[0] < micro and saved[0] * saved[1] == micro * accumulation:
            log.warning("resuming with a micro-batch of %d x gradient accumulation %d, found when a micro-batch of %d "
                        "ran out of memory (effective batch %d)", *saved, state.shrunk_from, micro * accumulation)
            micro, accumulation = saved
            if self.accelerator.is_main_process:
                _save_sizes(self.run_dir / "config.yaml", micro, accumulation)
        steps_done = state.batch_in_epoch // (saved[1] if saved[0] else accumulation)  # checkpoints end a step
        self._use(state, micro, accumulation)
        state.batch_in_epoch = steps_done * accumulation

    def at_micro_batch(self, state) -> None:
        if state.batch_in_epoch % state.accumulation == 0:  # the first micro-batch of an optimizer step
            cuda = self.accelerator.device.type == "cuda"
            rng = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.accelerator.device)] if cuda else [])
            self.step_start = (state.batch_in_epoch, state.samples, rng)

    def run(self, state, forward_backward: Callable[[], torch.Tensor]) -> torch.Tensor | OutOfMemory:
        """The micro-batch's loss, or `OutOfMemory` (the step is then set up to be redone).

        Raises:
            GPUMemoryError: out of memory at a micro-batch of 1, or with several processes.
        """
        try:
            loss = forward_backward()
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            failed = True  # handled below, once the traceback (and the activations it holds) is released
        else:
            failed = False
        if failed:
            return self._shrink(state)
        if self.note is not None:
            log.warning("out of memory in step %d at a micro-batch of %d: continuing with micro-batches of %d and "
                        "gradient accumulation x%d (effective batch %d unchanged); saved in %s", self.note[0],
                        self.note[1], state.micro_batch, state.accumulation, state.micro_batch * state.accumulation,
                        self.run_dir / "config.yaml")
            self.note = None
        return loss

    def _shrink(self, state) -> OutOfMemory:
        micro, effective = state.micro_batch, state.micro_batch * state.accumulation
        smaller = smaller_micro_batch(micro, effective)
        where = f"out of memory in training step {state.global_step + 1} at a micro-batch of {micro}"
        if smaller == 0:
            raise GPUMemoryError(f"{where}: not even one example fits; {REMEDY}")
        if self.world > 1:
            raise GPUMemoryError(f"{where} on one of {self.world} processes; set training.per_device_train_batch_size "
                                 f"to {smaller} and training.gradient_accumulation_steps to {effective // smaller}, "
                                 f"or {REMEDY}")
        self.optimizer.zero_grad(set_to_none=True)
        free_memory()
        if self.step_start is None:  # run() records it before the step that can run out of memory
            raise RuntimeError("out-of-memory retry without a recorded step start")
        batch_in_epoch, samples, rng = self.step_start
        torch.set_rng_state(rng[0])
        if len(rng) > 1:
            torch.cuda.set_rng_state(rng[1], self.accelerator.device)
        steps_done = batch_in_epoch // state.accumulation
        self._use(state, smaller, effective // smaller)
        state.batch_in_epoch, state.samples = steps_done * state.accumulation, samples
        self.note = self.note or (state.global_step + 1, micro)
        state.shrunk_from = state.shrunk_from or micro
        if self.accelerator.is_main_process:
            _save_sizes(self.run_dir / "config.yaml", state.micro_batch, state.accumulation)
        return OutOfMemory(state.global_step + 1, micro, state.micro_batch)

    def _use(self, state, micro: int, accumulation: int) -> None:
        state.micro_batch, state.accumulation = micro, accumulation
        self.sampler.resize(micro * self.world, accumulation)


def _save_sizes(path: Path, micro: int, accumulation: int) -> None:
    """Records the working sizes in the run's config.yaml (written whole under a temporary name)."""
    if not path.exists():
        return
    config: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.setdefault("training", {}).update(per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def shrink_eval_batch(sampler, accelerator) -> None:
    """Halves the evaluation batch after out of memory (the training batch is not touched).

    Raises:
        GPUMemoryError: the evaluation batch is already 1, or several processes run.
    """
    free_memory()
    if sampler.batch_size == 1 or accelerator.num_processes > 1:
        raise GPUMemoryError(f"out of memory in evaluation at a batch of {sampler.batch_size}; lower "
                             f"training.per_device_eval_batch_size, or {REMEDY}")
    log.warning("out of memory in evaluation at a batch of %d: evaluating with batches of %d (training is not "
                "affected)", sampler.batch_size, sampler.batch_size // 2)
    sampler.resize(sampler.batch_size // 2, 1)
