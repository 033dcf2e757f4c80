"""The baseline's features probe: scored only under a new head, never a reason for a run to fail."""

from __future__ import annotations

import logging

import numpy as np
import torch
from accelerate import Accelerator

from tunesmith.config import load_config
from tunesmith.engine.evaluation import feature_probe, linear_probe
from tunesmith.tasks import get_task


def image_task(color_images):
    config = load_config({"task": "image-classification", "model": {"source": "demo:efficientnet-lite0"},
                          "data": {"train": str(color_images), "validation_split": 0.25},
                          "image_classification": {"image_size": 64}, "training": {"dataloader_num_workers": 0}})
    task = get_task(config)
    task.preflight()
    return config, task, task.build_model()


def test_running_out_of_memory_skips_the_probe_with_a_warning(color_images, monkeypatch, caplog):
    config, task, model = image_task(color_images)
    assert task.fresh_head

    def out_of_memory(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(task, "pooled_features", out_of_memory)
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        probe = feature_probe(model, task, task.dataset(task.eval_rows, train=False), Accelerator(cpu=True), config)
    assert probe is None and "no linear-probe score" in caplog.text


def test_a_head_taken_from_the_weights_gets_no_probe(color_images):
    config, task, model = image_task(color_images)
    task.fresh_head = False  # as for a run folder fine-tuned on the same classes
    assert feature_probe(model, task, task.dataset(task.eval_rows, train=False), Accelerator(cpu=True), config) is None


def test_sharded_weights_get_no_probe(color_images):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    config, task, model = image_task(color_images)
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)  # the unwrapped model is one shard of it
    assert feature_probe(model, task, task.dataset(task.eval_rows, train=False), fsdp, config) is None


def test_the_probe_does_not_count_truncated_training_texts_twice(tiny_bert, reviews):
    data = {"train": str(reviews), "max_length": 8, "max_train_samples": 40, "max_eval_samples": 10}
    config = load_config({"model": {"source": str(tiny_bert)}, "data": data})
    task = get_task(config)
    task.preflight()
    model = task.build_model()
    task.fresh_head = True  # tiny_bert's own two-label head fits these labels; probe it anyway
    task.dataset(task.train_rows, train=True)
    eval_data = task.dataset(task.eval_rows, train=False)
    counted = task.truncated
    probe = feature_probe(model, task, eval_data, Accelerator(cpu=True), config)
    assert counted > 0 and task.truncated == counted and probe["train_rows"] == 40


def test_a_sample_of_one_class_predicts_that_class():
    probs = linear_probe(torch.randn(4, 3), torch.tensor([1, 1, 1, 1]), torch.randn(2, 3), 3)
    assert np.array_equal(probs, [[0, 1, 0], [0, 1, 0]])
