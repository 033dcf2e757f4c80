"""Automatic batch size: halving on out-of-memory, accumulation that keeps the effective batch, and
a whole run on CPU with out-of-memory injected into the probe (the GPU path without a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

import tunesmith
from tunesmith.config import load_config
from tunesmith.engine import batch_size
from tunesmith.engine.accelerator import make_accelerator
from tunesmith.errors import GPUMemoryError


def test_halving_stops_at_the_first_size_that_fits():
    tried = []

    def try_size(size: int) -> None:
        tried.append(size)
        if size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    assert batch_size.largest_fitting(try_size, 32, make_accelerator(load_config())) == 8
    assert tried == [32, 16, 8]


def test_not_even_one_example_fitting_says_what_to_do():
    def never(size: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(GPUMemoryError, match="even a micro-batch of 1 does not fit.*strategy.freeze"):
        batch_size.largest_fitting(never, 4, make_accelerator(load_config()))


def test_accumulation_keeps_the_effective_batch():
    config = load_config(None, ["training.per_device_train_batch_size=32", "training.gradient_accumulation_steps=2"])
    t = batch_size.keep_effective_batch(config, 8).training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (8, 8)
    assert batch_size.keep_effective_batch(config, 32) is config


def test_an_effective_batch_that_cannot_be_kept_exactly_warns(caplog):
    config = load_config(None, ["training.per_device_train_batch_size=25"])
    t = batch_size.keep_effective_batch(config, 12).training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (9, 3)
    assert "cannot be split into micro-batches of at most 12; training with 9 x 3 = 27" in caplog.text


def test_on_cpu_nothing_is_probed(tiny_config):
    config = load_config(tiny_config, ["training.auto_find_batch_size=true"])
    assert batch_size.fit_batch_size(None, None, config, make_accelerator(config)) is config


def test_injected_out_of_memory_gives_8_x_4_and_the_same_steps(tiny_config, monkeypatch):
    seen = []
    real = batch_size.forward_backward

    def forward_backward(task, model, batch, accelerator):
        seen.append(len(batch["labels"]))
        if len(batch["labels"]) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        real(task, model, batch, accelerator)

    monkeypatch.setattr(batch_size, "can_run_out_of_memory", lambda accelerator: True)
    monkeypatch.setattr(batch_size, "forward_backward", forward_backward)
    tiny_config["training"].update(per_device_train_batch_size=32, auto_find_batch_size=True)
    result = tunesmith.finetune(tiny_config, quiet=True)
    assert seen == [32, 16, 8]
    saved = load_config(result.run_dir / "config.yaml").training  # what a resume with this file uses
    assert (saved.per_device_train_batch_size, saved.gradient_accumulation_steps) == (8, 4)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # 96 rows, effective batch 32: 3 optimizer steps per epoch, as without the probe
    assert [r["step"] for r in records if r["phase"] == "eval"] == [3, 6]
    assert max(r["step"] for r in records if r["phase"] == "train") == 6
