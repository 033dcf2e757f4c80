"""Batches: length-grouped, seeded and epoch-keyed, so less padding is computed and runs repeat.

Each epoch's order is a pure function of (seed, epoch, effective batch): a permutation of the
rows is cut into mega-batches of 50 optimizer-step batches, each mega-batch is sorted by length
and cut into step batches, and the step batches are shuffled. Rows of similar length then share a
batch, which on short-text data like SST-2 cuts the padded tokens several-fold, while batches
still arrive in random order. Each step batch is then cut into micro-batches (gradient
accumulation), so how a step is split never changes which rows it holds: a run at micro-batch 8
with accumulation 4 sees the rows of a run at 32 x 1, and a run whose micro-batch is halved after
running out of memory (engine/oom.py) continues on the same rows.

A task that learns from classes inside a batch (metric learning: a triplet loss mines each row's
hardest same-class and other-class rows) gives `ClassBatches` instead: each class's rows are shuffled
and cut into runs of `per_class`, and each step takes one run from each of P distinct classes (those
with the most runs left, ties drawn at random), so a step of 32 at 4 per class holds 8 classes with 4
rows each (P x K sampling; length grouping is off then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tunesmith.tasks import ClassBatches, EpochDataset, Examples


class GroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of row indices; call `start_epoch` before each epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 group_by_length: bool = True, mega_batch: int = 50, accumulation: int = 1,
                 class_batches: ClassBatches | None = None):
        """`batch_size` is the micro-batch; `accumulation` micro-batches make one optimizer step;
        `class_batches` (training only) draws P x K batches instead of length-grouped ones."""
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega_batch = mega_batch
        self.class_batches = class_batches
        self.epoch = 0
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Selects the epoch's order; `skip` leaves out its first batches (resuming mid-epoch)."""
        self.epoch = epoch
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        """Ignored: Accelerate calls this with its own count of iterations, which restarts at 0
        after a resume. The training loop owns the epoch and sets it with `start_epoch`."""

    def resize(self, batch_size: int, accumulation: int) -> None:
        """Splits each step batch into `accumulation` micro-batches of `batch_size` from now on."""
        self.batch_size, self.accumulation = batch_size, accumulation

    @property
    def step_size(self) -> int:
        """Rows per optimizer step (micro-batch x accumulation)."""
        return self.batch_size * self.accumulation

    @property
    def num_batches(self) -> int:
        """Micro-batches in a whole epoch."""
        full, rest = divmod(len(self.lengths), self.step_size)
        return full * self.accumulation + -(-rest // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches - self.skip

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.skip :]

    def share(self, batch: int) -> float:
        """The share of its optimizer step's rows that micro-batch `batch` (0-based, in the epoch) holds:
        1/accumulation, except in the epoch's last step, which may hold fewer micro-batches or a smaller
        last one (96 rows at 16 x 4: a step of 64, then one of 32). The loop weights each micro-batch's
        mean loss by it, so a step's gradient is the mean over its rows and 16 x 4 trains as 64 x 1."""
        start = batch - batch % self.accumulation
        if start + self.accumulation < self.num_batches:  # a full step: equal micro-batches
            return 1 / self.accumulation
        step = self.epoch_batches()[start:]
        return len(step[batch - start]) / sum(len(b) for b in step)

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order, regardless of `skip`."""
        return list(self._batches())

    def _batches(self) -> Iterator[list[int]]:
        for step in self._step_batches():
            yield from (step[i : i + self.batch_size] for i in range(0, len(step), self.batch_size))

    def _step_batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.step_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i]) if self.group_by_length else list(range(n))
            return [order[i : i + size] for i in range(0, n, size)]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.class_batches is not None:
            order = self._class_order(self.class_batches, generator)
            return [order[i : i + size] for i in range(0, n, size)]
        order = torch.randperm(n, generator=generator).tolist()
        if self.group_by_length:
            span = size * self.mega_batch
            order = [i for s in range(0, n, span) for i in sorted(order[s : s + span], key=lambda j: -self.lengths[j])]
        batches = [order[i : i + size] for i in range(0, n, size)]
        if self.group_by_length:
            # Shuffle the full steps only: a short one stays the epoch's last, where the loop (and the
            # redo after out of memory) expects it; anywhere else accumulation would mix two steps.
            full = n // size
            batch_order = torch.randperm(full, generator=generator).tolist() + list(range(full, len(batches)))
            batches = [batches[i] for i in batch_order]
        return batches

    def _class_order(self, batches: ClassBatches, generator: torch.Generator) -> list[int]:
        """Every row once, as steps of runs of `per_class` rows of one class, each class at most once in
        a step while enough classes have rows left (a class's last run may be shorter)."""
        by_class: dict[int, list[int]] = {}
        for i, k in enumerate(batches.classes):
            by_class.setdefault(k, []).append(i)
        runs: dict[int, list[list[int]]] = {}
        for c, rows in sorted(by_class.items()):
            shuffled = [rows[j] for j in torch.randperm(len(rows), generator=generator).tolist()]
            runs[c] = [shuffled[j : j + batches.per_class] for j in range(0, len(shuffled), batches.per_class)]
        per_step = max(1, self.step_size // batches.per_class)  # P
        order: list[int] = []
        while runs:
            # P classes, those with more runs left first (ties broken at random), so none is left to the end alone
            ties = dict(zip(runs, torch.rand(len(runs), generator=generator).tolist()))
            chosen = sorted(runs, key=lambda c: (-len(runs[c]), ties[c]))[:per_step]
            for c in chosen:
                order += runs[c].pop()
                if not runs[c]:
                    del runs[c]
        return order


class GroupedLoader(DataLoader):
    """A DataLoader whose batches come from a `GroupedBatchSampler` (only the type says more)."""

    batch_sampler: GroupedBatchSampler


def make_loader(dataset: Examples, collate: Callable, batch_size: int, seed: int, train: bool,
                lengths: Sequence[int] | None = None, group_by_length: bool = True,
                num_workers: int | None = None, with_index: bool = False, accumulation: int = 1,
                class_batches: ClassBatches | None = None) -> GroupedLoader:
    """A DataLoader with a `GroupedBatchSampler`; evaluation batches are unshuffled (length-sorted
    when lengths are given). Without lengths, batching falls back to plain seeded shuffling.
    `num_workers=None` takes an `EpochDataset`'s `preferred_workers` (0 for other datasets: in-memory rows).
    `with_index` adds each batch's row indices as `batch["_index"]` (the activation cache keys on them).
    `accumulation`: micro-batches per optimizer step (the order depends on `batch_size x accumulation` only).
    `class_batches`: P x K training batches (see the module's docstring)."""
    if num_workers is None:
        num_workers = dataset.preferred_workers if isinstance(dataset, EpochDataset) else 0
    source: Examples = dataset
    if with_index:
        source, collate = _Indexed(dataset), _IndexedCollate(collate)
    grouped = group_by_length and lengths is not None
    lengths = lengths if lengths is not None else [0] * len(dataset)
    sampler = GroupedBatchSampler(lengths, batch_size, seed, shuffle=train, group_by_length=grouped,
                                  accumulation=accumulation, class_batches=class_batches if train else None)
    # An own generator, so creating an epoch's iterator never draws from the global torch RNG
    # (which would shift dropout after a resume).
    # A plain sequence is all a DataLoader needs (it only indexes it); torch types it as Dataset.
    return GroupedLoader(cast(Dataset, source), batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                         generator=torch.Generator().manual_seed(seed))


class _Indexed:
    """A dataset whose items carry their index. It deliberately has no `set_epoch`: Accelerate
    calls that with its own iteration count, and the loop sets the epoch on the real dataset."""

    def __init__(self, dataset: Examples):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexedCollate:
    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> dict[str, Any]:
        batch = self.collate([item for _, item in items])
        batch["_index"] = torch.tensor([index for index, _ in items], dtype=torch.long)
        return batch
