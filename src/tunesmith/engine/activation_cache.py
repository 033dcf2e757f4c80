"""Frozen-prefix activation cache: compute the frozen groups' outputs once, train only the top after.

When the first k layer groups are frozen (and stay frozen), they run in eval mode and an example's
inputs are the same every epoch, so their output for that example never changes. During one epoch
the cache records the output of the last frozen group for every training row (a forward hook, no
extra pass); in later epochs the frozen modules are stubbed out (the first one returns the cached
output, the others pass it through) and only the trainable top runs. The numbers are those of a
run without the cache to float rounding, not bitwise: a row's cached value is what the frozen
prefix computed for it inside the recording epoch's batch, and the same row in another batch
(another padded length, so other matrix shapes and summation order) differs in the last bits;
padded positions themselves are masked out of attention. The cache is not part of a checkpoint,
so a resumed run records it again from the resume point on, and its later epochs match the
uninterrupted run's to that rounding too (the hostile-user test of issue #16 measured at most
3.6e-7 on the losses), not bitwise. `training.activation_cache: off` gives a bitwise resume.

Stubbing relies on the frozen groups' modules running one after the other with nothing between
them. The first recorded batch checks that: the first trainable module must receive the same
input with the stubs in place as in the real forward (a parameter-free module outside the groups
that sits between them, such as a ResNet's max-pool or a ViT's position embedding, would be
applied to the cached value again and change it). If it does not, the cache turns itself off.

Token rows (text) are stored unpadded in one flat float32 buffer (tokens x hidden); fixed-shape
rows (image feature maps) as one (rows, ...) buffer. The buffer is in memory or, above
`activation_cache_max_gb`, a disk-backed memmap in the run directory. During replayed epochs a
dataset that is an `EpochDataset` (tasks/__init__.py) is told it may skip loading the inputs (images are not
decoded).
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.config import RunConfig
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.strategies.freezing import trainable_from
from tunesmith.tasks import EpochDataset, Examples, Task

log = logging.getLogger("tunesmith")
AUGMENTED = "training inputs change between epochs (augmentation)"


class _Reached(Exception):
    """Raised by a pre-hook to stop a probing forward at the first trainable module."""

    def __init__(self, value: tuple[torch.nn.Module, torch.Tensor]):
        self.value = value


class ActivationCache:
    """Outputs of groups[:depth] for every training row, recorded once and replayed after."""

    def __init__(self, groups: list[LayerGroup], depth: int, rows: int, lengths: Sequence[int] | None,
                 memory_limit_bytes: float, folder: Path):
        """`lengths`: tokens per row for token rows (text), None for fixed-shape rows (images)."""
        self.groups, self.depth = groups, depth
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.offsets = None if self.lengths is None else np.concatenate([[0], np.cumsum(self.lengths)])
        self.filled = np.zeros(rows, dtype=bool)
        self.memory_limit_bytes, self.folder = memory_limit_bytes, folder
        self.buffer: torch.Tensor | None = None  # allocated at the first recorded batch, when shapes are known
        self.on_disk, self.channels_last = False, False
        self.path: Path | None = None  # the memmap file, when the buffer is on disk
        self.usable, self.checked = True, False
        self.real_input: tuple | None = None  # (module, input): where the real forward entered the trainable top

    @property
    def complete(self) -> bool:
        return self.usable and bool(self.filled.all())

    def _on_first_trainable(self, hook: Callable) -> list:
        """Pre-hooks on every module of the first trainable group: whichever runs first is the point
        where the frozen prefix hands over."""
        return [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self.groups[self.depth].modules]

    def _allocate(self, values: torch.Tensor) -> torch.Tensor:
        shape: tuple[int, ...]
        if self.offsets is not None:
            shape = (int(self.offsets[-1]), values.shape[-1])  # tokens x hidden
        else:
            shape = (len(self.filled), *values.shape[1:])
        size = math.prod(shape) * 4
        self.on_disk = size > self.memory_limit_bytes
        if self.on_disk:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = path = self.folder / f"activations-depth{self.depth}.f32"
            self.buffer = torch.from_numpy(np.memmap(path, np.float32, "w+", shape=shape))
            weakref.finalize(self, path.unlink, missing_ok=True)  # the file goes with the run's cache
        else:
            self.buffer = torch.empty(shape, dtype=torch.float32)
        log.info("activation cache: %s frozen; caching their outputs (%.0f MB %s) from the next epoch on",
                 ", ".join(g.name for g in self.groups[: self.depth]), size / 2**20,
                 "on disk" if self.on_disk else "in memory")
        return self.buffer

    def _store(self, rows: list[int], values: torch.Tensor) -> None:
        buffer = self.buffer
        if buffer is None:
            buffer = self._allocate(values)
            # Replayed feature maps keep the recorded memory layout: convolution kernels, and so the
            # last bits of their results, differ between NCHW and channels-last inputs.
            self.channels_last = values.dim() == 4 and values.is_contiguous(memory_format=torch.channels_last)
        lengths, offsets = self.lengths, self.offsets
        if lengths is None or offsets is None:
            buffer[torch.tensor(rows)] = values
        else:
            for b, row in enumerate(rows):
                start, n = int(offsets[row]), int(lengths[row])
                buffer[start : start + n] = values[b, :n]
        self.filled[rows] = True

    def _rows(self, indices: torch.Tensor, seq_len: int | None) -> torch.Tensor:
        """The cached outputs of these rows as one batch: (B, ...), token rows zero-padded to seq_len."""
        buffer, lengths, offsets = self.buffer, self.lengths, self.offsets
        if buffer is None:  # replay comes only after a recorded epoch
            raise RuntimeError("activation cache: replay before any row was recorded")
        if lengths is None or offsets is None or seq_len is None:
            rows = buffer[indices]
            return rows.contiguous(memory_format=torch.channels_last) if self.channels_last else rows
        hidden = torch.zeros((len(indices), seq_len, buffer.shape[1]), dtype=torch.float32)
        for b, row in enumerate(indices.tolist()):
            start, n = int(offsets[row]), int(lengths[row])
            hidden[b, :n] = buffer[start : start + n]
        return hidden

    @contextlib.contextmanager
    def record(self, indices: torch.Tensor) -> Iterator[None]:
        """Stores the last frozen group's output for these rows while the batch runs normally; until
        `check` has run, also keeps what the first trainable module receives."""
        rows = indices.tolist()

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self._store(rows, hidden.detach().float().cpu())

        def pre_hook(module, args, kwargs):
            if self.real_input is None:
                self.real_input = (module, _first_tensor(args, kwargs).detach())

        handles = [self.groups[self.depth - 1].modules[-1].register_forward_hook(hook)]
        if not self.checked:
            handles += self._on_first_trainable(pre_hook)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def check(self, indices: torch.Tensor, seq_len: int | None, device: torch.device,
              forward: Callable[[], object]) -> None:
        """After the first recorded batch: with the stubs in place, does the first trainable module
        get what it got in the real forward? `forward` runs the batch's forward again; a pre-hook
        stops it at the first trainable module, so nothing trainable runs and no statistics move,
        and the random generators are restored after."""
        self.checked = True
        real, self.real_input = self.real_input, None

        def stop(module, args, kwargs):
            raise _Reached((module, _first_tensor(args, kwargs).detach()))

        replayed = None
        handles = self._on_first_trainable(stop)
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                    self.replay(indices, seq_len, device):
                forward()
        except _Reached as reached:
            replayed = reached.value
        finally:
            for handle in handles:
                handle.remove()
        same = (real is not None and replayed is not None and real[0] is replayed[0]
                and _same_input(real[1], replayed[1], self.lengths, indices))
        if not same:
            self.usable = False
            self.release()
            log.info("activation cache off: with the frozen groups replayed, %s does not get the input it gets "
                     "in the real forward (a module outside the layer groups sits between them)",
                     self.groups[self.depth].name)

    @contextlib.contextmanager
    def replay(self, indices: torch.Tensor, seq_len: int | None, device: torch.device) -> Iterator[None]:
        """Runs the batch with the frozen prefix replaced by its cached output."""
        hidden = self._rows(indices, seq_len).to(device)
        frozen = [m for g in self.groups[: self.depth] for m in g.modules]
        frozen[0].forward = lambda *args, **kwargs: hidden
        for module in frozen[1:]:
            module.forward = _pass_through
        try:
            yield
        finally:
            for module in frozen:
                del module.forward

    def prepare_epoch(self, dataset: Examples, mode: str | None) -> None:
        """Tells an `EpochDataset` (it can skip loading inputs) whether this epoch needs them."""
        if isinstance(dataset, EpochDataset):
            dataset.inputs_needed = mode != "replay"

    def release(self) -> None:
        self.buffer = None
        if self.on_disk and self.path is not None:
            self.path.unlink(missing_ok=True)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _same_input(real: torch.Tensor, replayed: torch.Tensor, lengths, indices: torch.Tensor) -> bool:
    """Equal up to the float error of the cache's float32 copy of a lower-precision forward; token
    rows are compared on each row's own tokens (padded positions differ and are masked anyway)."""
    if real.shape != replayed.shape:
        return False
    tolerance = 1e-5 if real.dtype == torch.float32 else 2e-2
    real, replayed = real.float().cpu(), replayed.float().cpu()
    pairs = [(real, replayed)] if lengths is None or real.dim() != 3 else [
        (real[b, :n], replayed[b, :n]) for b, n in enumerate(lengths[indices.numpy()].tolist())]
    return all(torch.allclose(x, y, rtol=tolerance, atol=tolerance) for x, y in pairs)


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


def plan_cache(config: RunConfig, task: Task, groups: list[LayerGroup], train_data: Examples, world: int,
               lowest_trainable_by_epoch: list[int]) -> int:
    """Depth (number of frozen groups) to cache, or 0 when caching is off, unsafe or pointless.

    Safe only when: the task declares support, inputs are not randomly augmented (the dataset is
    a plain sequence, or an `EpochDataset` whose `varies_by_epoch` is false), the frozen prefix is the same in at
    least two epochs, and one process trains (under DDP each process sees other rows every epoch).
    """
    if config.training.activation_cache == "off":
        return 0
    reasons = []
    if not task.supports_activation_cache:
        reasons.append(f"the {config.task} task does not support it")
    if isinstance(train_data, EpochDataset) and train_data.varies_by_epoch:
        reasons.append(AUGMENTED)
    if world > 1:
        reasons.append("several processes train")
    if config.training.torch_compile:
        reasons.append("torch_compile is on (the cache swaps modules the compiled graph was traced with)")
    depths = lowest_trainable_by_epoch
    stable = [d for d, nxt in zip(depths, depths[1:]) if d == nxt and d > 0]
    if not stable:
        reasons.append("no frozen prefix stays the same for two epochs")
    elif any(group.train_when_frozen for group in groups[: stable[0]]):
        reasons.append("normalization layers in the frozen groups train (model.train_batchnorm)")
    if reasons == [AUGMENTED]:  # the one reason a user may want to lift (only image datasets augment)
        log.info("activation cache off: %s; with augmentation.preset: none, epochs after the first would skip "
                 "the frozen groups (and image decoding)", AUGMENTED)
    elif reasons:
        log.debug("activation cache off: %s", "; ".join(reasons))
    return 0 if reasons else stable[0]


def make_cache(config: RunConfig, task: Task, groups: list[LayerGroup], train_data: Examples, world: int,
               run_dir: Path, epochs: int) -> ActivationCache | None:
    """The run's cache over `epochs` of freezing (engine/loop.py), or None when `plan_cache` turns it off."""
    s = config.strategy
    depths = [trainable_from(len(groups), s.freeze, s.gradual_unfreezing, e) for e in range(epochs)]
    depth = plan_cache(config, task, groups, train_data, world, depths)
    if not depth:
        return None
    return ActivationCache(groups, depth, len(train_data), task.lengths(train_data),
                           config.training.activation_cache_max_gb * 2**30, run_dir / ".activation_cache")


def begin_epoch(cache: ActivationCache | None, lowest_trainable: int, train_data: Examples) -> str | None:
    """The epoch's cache mode: `replay` when the cache is full for this epoch's frozen prefix,
    `record` while it fills; tells the dataset whether it must load inputs this epoch."""
    if cache is None or not cache.usable or lowest_trainable != cache.depth:
        mode = None
    else:
        mode = "replay" if cache.complete else "record"
    if cache is not None:
        cache.prepare_epoch(train_data, mode)
    return mode


def cached(cache: ActivationCache | None, mode: str | None, indices: torch.Tensor, batch: dict[str, Any],
           device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Around a training micro-batch's forward: records or replays the frozen prefix's output."""
    if cache is None or not cache.usable:  # also when its check turned it off during this epoch
        return contextlib.nullcontext()
    if mode == "record":
        return cache.record(indices)
    if mode == "replay":
        return cache.replay(indices, seq_len(batch), device)
    return contextlib.nullcontext()


def seq_len(batch: dict[str, Any]) -> int | None:
    """Padded length of a batch of token rows; None for fixed-shape inputs (images)."""
    return batch["input_ids"].shape[1] if "input_ids" in batch else None
