"""The memory estimate before a run: its arithmetic on a tiny model, and the warning when it will not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tunesmith
from tunesmith.engine import memory_estimate
from tunesmith.engine.memory_estimate import activation_bytes, estimate_memory, free_memory


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_parts_add_up_for_a_tiny_model():
    model = tiny()
    params = (4 * 8 + 8) + (8 * 2 + 2)  # 58 float32 weights
    acts = activation_bytes(model, lambda: model(torch.zeros(1, 4)))
    assert acts == (8 + 8 + 2) * 4  # Linear, ReLU and Linear outputs of one example
    all_trained = estimate_memory(model, list(model.parameters()), 16, acts)
    assert (all_trained.weights, all_trained.gradients, all_trained.optimizer) == (58 * 4, 58 * 4, 58 * 8)
    assert all_trained.activations == 16 * 72 and all_trained.total == 58 * 16 + 16 * 72
    head_only = estimate_memory(model, list(model[2].parameters()), 16, acts)
    assert (head_only.weights, head_only.gradients, head_only.optimizer) == (58 * 4, 18 * 4, 18 * 8)
    assert "activations for a micro-batch of 16" in head_only.describe()


def test_tied_weights_and_half_precision_are_counted_as_stored():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)).half()
    model[1].weight = model[0].weight  # tied, as in language models
    estimate = estimate_memory(model, list(model.parameters()), 1, 0)
    assert estimate.weights == 40 * 2 and estimate.gradients == 40 * 2 and estimate.optimizer == 40 * 8


def test_the_forward_leaves_mode_and_random_state_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    state = torch.get_rng_state()
    activation_bytes(model, lambda: model(torch.ones(3, 4)))
    assert model.training and torch.equal(torch.get_rng_state(), state)


def test_cpu_free_memory_without_psutil_reads_proc_meminfo(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    found = free_memory(torch.device("cpu"))
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert found is not None and found[1] == "available RAM"
    assert found[0] == pytest.approx(available, rel=0.2)


def test_a_run_that_does_not_fit_warns_before_training(tiny_config, monkeypatch, caplog):
    monkeypatch.setattr(memory_estimate, "free_memory", lambda device: (1000, "available RAM"))
    tunesmith.finetune(tiny_config, ["training.max_steps=1"], quiet=True)
    warning = next(r.message for r in caplog.records if "more than the available RAM" in r.message)
    assert "gradients" in warning and "activations for a micro-batch of 16" in warning
    assert "per_device_train_batch_size" in warning
