"""Frozen-prefix activation cache: compute the frozen groups' outputs once, train only the top after.

When the first k layer groups are frozen (and stay frozen), they run in eval mode and an example's
inputs are the same every epoch, so their output for that example never changes. During one epoch
the cache records the output of the last frozen group for every training row (a forward hook, no
extra pass); in later epochs the frozen modules are stubbed out (the embeddings return the cached
hidden states, frozen blocks pass them through) and only the trainable top runs. The numbers are
the same as without the cache: the cached values are exactly what the frozen prefix computes, and
padded positions, which differ, are masked out of attention.

Rows are stored unpadded in one flat float32 buffer (tokens x hidden), in memory or, above
`activation_cache_max_gb`, in a disk-backed memmap in the run directory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tunesmith.models.layer_groups import LayerGroup

log = logging.getLogger("tunesmith")


class ActivationCache:
    """Outputs of groups[:depth] for every training row, recorded once and replayed after."""

    def __init__(self, groups: list[LayerGroup], depth: int, lengths: Sequence[int], hidden_size: int,
                 memory_limit_bytes: float, folder: Path):
        self.groups, self.depth = groups, depth
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.hidden_size = hidden_size
        self.filled = np.zeros(len(lengths), dtype=bool)
        size = int(self.offsets[-1]) * hidden_size * 4
        self.on_disk = size > memory_limit_bytes
        if self.on_disk:
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"activations-depth{depth}.f32"
            self.buffer = torch.from_numpy(np.memmap(self.path, np.float32, "w+", shape=(int(self.offsets[-1]), hidden_size)))
        else:
            self.buffer = torch.empty((int(self.offsets[-1]), hidden_size), dtype=torch.float32)
        log.info("activation cache: %s frozen; caching their outputs (%.0f MB %s) from the next epoch on",
                 ", ".join(g.name for g in groups[:depth]), size / 2**20, "on disk" if self.on_disk else "in memory")

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    @contextlib.contextmanager
    def record(self, indices: torch.Tensor) -> Iterator[None]:
        """Stores the last frozen group's output for these rows while the batch runs normally."""
        rows = indices.tolist()

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, H)
            values = hidden.detach().float().cpu()
            for b, row in enumerate(rows):
                start, n = int(self.offsets[row]), int(self.lengths[row])
                self.buffer[start : start + n] = values[b, :n]
                self.filled[row] = True

        handle = self.groups[self.depth - 1].modules[0].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def replay(self, indices: torch.Tensor, seq_len: int, device: torch.device) -> Iterator[None]:
        """Runs the batch with the frozen prefix replaced by its cached output, (B, T, H)."""
        hidden = torch.zeros((len(indices), seq_len, self.hidden_size), dtype=torch.float32)
        for b, row in enumerate(indices.tolist()):
            start, n = int(self.offsets[row]), int(self.lengths[row])
            hidden[b, :n] = self.buffer[start : start + n]
        hidden = hidden.to(device)
        embeddings, blocks = self.groups[0].modules[0], [g.modules[0] for g in self.groups[1 : self.depth]]
        embeddings.forward = lambda *args, **kwargs: hidden
        for block in blocks:
            block.forward = _pass_through
        try:
            yield
        finally:
            for module in [embeddings, *blocks]:
                del module.forward

    def release(self) -> None:
        self.buffer = torch.empty(0)
        if self.on_disk:
            self.path.unlink(missing_ok=True)


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


def plan_cache(config, task, groups: list[LayerGroup], train_data, world: int, lowest_trainable_by_epoch) -> int:
    """Depth (number of frozen groups) to cache, or 0 when caching is off, unsafe or pointless.

    Safe only when: the task declares support, inputs are not randomly augmented (the dataset has
    no per-epoch state), the frozen prefix is the same in at least two epochs, and one process
    trains (under DDP each process sees other rows every epoch).
    """
    if config.training.activation_cache == "off":
        return 0
    reasons = []
    if not getattr(task, "supports_activation_cache", False):
        reasons.append(f"the {config.task} task does not support it")
    if hasattr(train_data, "start_epoch") or hasattr(train_data, "set_epoch"):
        reasons.append("training inputs change between epochs (augmentation)")
    if world > 1:
        reasons.append("several processes train")
    if config.training.torch_compile:
        reasons.append("torch_compile is on (the cache swaps modules the compiled graph was traced with)")
    if groups[0].name != "embeddings":
        reasons.append("the model has no embeddings group")
    depths = lowest_trainable_by_epoch
    stable = [d for d, nxt in zip(depths, depths[1:]) if d == nxt and d > 0]
    if not stable:
        reasons.append("no frozen prefix stays the same for two epochs")
    if reasons:
        log.debug("activation cache off: %s", "; ".join(reasons))
        return 0
    return stable[0]
