"""Automatic batch size (`training.auto_find_batch_size`): the largest micro-batch that fits the GPU.

Before training, one forward and backward pass on the longest training rows is tried at the
requested micro-batch, halving it on `torch.OutOfMemoryError` until it fits. Gradient accumulation
is then raised so that per-device batch x accumulation stays the requested effective batch, and
the run's `config.yaml` records the found values (resume with that file and nothing is probed
again: the saved size fits). The probe also holds room for AdamW's two moment tensors per
trainable parameter, which the real run allocates at its first step. The training loop is not
involved: it simply runs with the adjusted config. On a CPU nothing can run out of GPU memory,
so the config is returned unchanged.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

from tunesmith.config import RunConfig
from tunesmith.errors import GPUMemoryError
from tunesmith.strategies.freezing import apply_freezing, freeze_floor

from tunesmith.tasks import read_rows

if TYPE_CHECKING:
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")


def fit_batch_size(task: Task, model, config: RunConfig, accelerator: Accelerator) -> RunConfig:
    """The config with the largest micro-batch that fits and the accumulation that keeps the effective batch.

    Raises:
        GPUMemoryError: not even one example fits.
    """
    t = config.training
    if not t.auto_find_batch_size:
        return config
    if not can_run_out_of_memory(accelerator):
        log.debug("auto_find_batch_size: %s is not a CUDA device; keeping per_device_train_batch_size=%d",
                  accelerator.device, t.per_device_train_batch_size)
        return config
    examples = longest_examples(task, t.per_device_train_batch_size)
    fits = largest_fitting(lambda size: probe(task, model, examples[:size], accelerator, config),
                           t.per_device_train_batch_size, accelerator)
    if accelerator.num_processes > 1:
        # Every process must train with the same micro-batch: take the smallest any of them found.
        fits = int(accelerator.gather(torch.tensor([fits], device=accelerator.device)).min())
    return keep_effective_batch(config, fits)


def can_run_out_of_memory(accelerator: Accelerator) -> bool:
    return accelerator.device.type == "cuda"


def largest_fitting(try_size: Callable[[int], None], start: int, accelerator: Accelerator) -> int:
    """Halves `start` until `try_size` runs without running out of memory; returns that size."""
    size = start
    while True:
        try:
            try_size(size)
            return size
        except torch.OutOfMemoryError:
            _free_memory()
            if size == 1:
                raise GPUMemoryError(
                    f"training.auto_find_batch_size: even a micro-batch of 1 does not fit in the memory of "
                    f"{accelerator.device}; freeze more layer groups (strategy.freeze), shorten data.max_length, "
                    "use training.mixed_precision: bf16 or fp16, or a GPU with more memory") from None
            log.debug("auto_find_batch_size: a micro-batch of %d does not fit; trying %d", size, size // 2)
            size //= 2


def keep_effective_batch(config: RunConfig, fits: int) -> RunConfig:
    """The config with a micro-batch of at most `fits` and accumulation raised to keep the effective batch."""
    t = config.training
    requested = t.per_device_train_batch_size
    if fits >= requested:
        log.info("auto_find_batch_size: the requested micro-batch of %d fits", requested)
        return config
    effective = requested * t.gradient_accumulation_steps
    accumulation = math.ceil(effective / fits)
    micro = math.ceil(effective / accumulation)
    if micro * accumulation != effective:
        log.warning("auto_find_batch_size: an effective batch of %d cannot be split into micro-batches of at most %d; "
                    "training with %d x %d = %d", effective, fits, micro, accumulation, micro * accumulation)
    log.info("auto_find_batch_size: a micro-batch of %d does not fit in GPU memory; training with micro-batches of %d "
             "and gradient accumulation x%d (effective batch %d)", requested, micro, accumulation, micro * accumulation)
    training = t.model_copy(update={"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation})
    return config.model_copy(update={"training": training})


def probe(task: Task, model, rows: list[Any], accelerator: Accelerator, config: RunConfig) -> None:
    """One forward and backward pass on `rows` with every group that will ever train unfrozen.

    Raises:
        torch.OutOfMemoryError: it does not fit.
    """
    model.to(accelerator.device)
    groups = task.layer_groups(model)
    apply_freezing(model, groups, freeze_floor(len(groups), config.strategy.freeze), config.strategy.freeze_groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cuda = accelerator.device.type == "cuda"
    moments = None
    # Dropout in the probe must not shift the run's random stream.
    with torch.random.fork_rng(devices=[accelerator.device] if cuda else []):
        try:
            moments = [torch.empty_like(p) for p in trainable for _ in range(2)]  # AdamW's exp_avg, exp_avg_sq
            batch = send_to_device(task.collate(rows), accelerator.device)
            forward_backward(task, model, batch, accelerator)
            if cuda:
                torch.cuda.synchronize(accelerator.device)
        finally:
            del moments
            model.zero_grad(set_to_none=True)


def forward_backward(task: Task, model, batch: dict[str, Any], accelerator: Accelerator) -> None:
    with accelerator.autocast():
        loss, _ = task.loss(model, batch)
    loss.backward()


def longest_examples(task: Task, count: int) -> list[Any]:
    """Model inputs of the `count` longest training rows (by characters), longest first: the
    batch that needs the most memory. Only these rows are encoded."""
    rows = read_rows(task.train_rows, "training")
    chars = [sum(len(str(column[i])) for column in rows.inputs.values()) for i in range(len(rows))]
    longest = sorted(range(len(rows)), key=lambda i: -chars[i])[:count]
    truncated = copy.deepcopy(task.truncated)  # a copy: seq2seq counts in a dict it mutates
    data = task.dataset(rows.subset(longest), train=True)
    task.truncated = truncated  # the loop encodes the training rows again and counts them then
    lengths = task.lengths(data)
    order = sorted(range(len(data)), key=lambda i: -lengths[i]) if lengths is not None else range(len(data))
    return [data[i] for i in order]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
