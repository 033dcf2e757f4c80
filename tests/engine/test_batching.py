"""How the engine reads a task's dataset: per-epoch hooks come only from an `EpochDataset`."""

from __future__ import annotations

from typing import Any

from tunesmith.engine.activation_cache import ActivationCache
from tunesmith.engine.batching import GroupedBatchSampler, make_loader
from tunesmith.tasks import EpochDataset


class Augmented:
    """The smallest `EpochDataset`: every member declared."""

    def __init__(self, varies: bool = True):
        self.inputs_needed = True
        self.preferred_workers = 2
        self.varies = varies
        self.epochs: list[int] = []

    @property
    def varies_by_epoch(self) -> bool:
        return self.varies

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Any:
        return {"x": index}


class WorkersOnly:
    """Names one hook but not the others: not an `EpochDataset`, so the engine ignores the hook."""

    preferred_workers = 3

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Any:
        return {"x": index}


def collate(items):
    return {"x": [i["x"] for i in items]}


def test_an_epoch_dataset_is_recognised_and_a_list_is_not():
    assert isinstance(Augmented(), EpochDataset)
    assert not isinstance([{"x": 0}], EpochDataset)
    assert not isinstance(WorkersOnly(), EpochDataset)


def test_workers_come_from_an_epoch_dataset_only():
    assert make_loader(Augmented(), collate, 2, seed=0, train=True).num_workers == 2
    assert make_loader([{"x": i} for i in range(4)], collate, 2, seed=0, train=True).num_workers == 0
    assert make_loader(WorkersOnly(), collate, 2, seed=0, train=True).num_workers == 0
    assert make_loader(Augmented(), collate, 2, seed=0, train=True, num_workers=1).num_workers == 1


def test_the_loader_batches_with_a_grouped_sampler():
    loader = make_loader([{"x": i} for i in range(5)], collate, 2, seed=0, train=False, with_index=True)
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    assert [b["_index"].tolist() for b in loader] == [[0, 1], [2, 3], [4]]


def test_the_cache_tells_only_an_epoch_dataset_to_skip_inputs():
    data, cache = Augmented(), ActivationCache.__new__(ActivationCache)
    cache.prepare_epoch(data, "replay")
    assert data.inputs_needed is False
    cache.prepare_epoch(data, "record")
    assert data.inputs_needed is True
    cache.prepare_epoch([{"x": 0}], "replay")  # a list has nothing to tell, and is left alone


def test_the_cache_plan_reads_varies_by_epoch_from_an_epoch_dataset():
    from types import SimpleNamespace

    from tunesmith.engine.activation_cache import AUGMENTED, plan_cache

    config = SimpleNamespace(task="t", training=SimpleNamespace(activation_cache="auto", torch_compile=False))
    task = SimpleNamespace(supports_activation_cache=True)
    groups = [SimpleNamespace(train_when_frozen=[]), SimpleNamespace(train_when_frozen=[])]

    def depth(data) -> int:
        return plan_cache(config, task, groups, data, world=1, lowest_trainable_by_epoch=[1, 1])

    assert depth(Augmented(varies=False)) == 1
    assert depth([{"x": 0}]) == 1
    assert depth(Augmented(varies=True)) == 0, AUGMENTED


def test_class_batches_hold_k_rows_of_each_of_p_classes():
    from collections import Counter

    from tunesmith.tasks import ClassBatches

    classes = [c for c in range(6) for _ in range(8)]  # 6 classes x 8 rows
    sampler = GroupedBatchSampler([0] * len(classes), 8, seed=1, class_batches=ClassBatches(classes, 4))
    batches = sampler.epoch_batches()
    assert sorted(i for b in batches for i in b) == list(range(len(classes)))  # every row once
    assert all(sorted(Counter(classes[i] for i in b).values()) == [4, 4] for b in batches)  # P=2 x K=4
    sampler.start_epoch(1)
    assert sampler.epoch_batches() != batches  # a new draw each epoch, keyed on the seed
    again = GroupedBatchSampler([0] * len(classes), 8, seed=1, class_batches=ClassBatches(classes, 4))
    assert again.epoch_batches() == batches
