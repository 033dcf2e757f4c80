"""The run's Accelerator (engine/accelerator.py): sharding launches refused without GPUs, no accumulation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.engine.accelerator import make_accelerator, refuse_launched_accumulation
from tunesmith.errors import LaunchError


@pytest.mark.parametrize(("variable", "name"), [("ACCELERATE_USE_FSDP", "FSDP"),
                                                ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_fsdp_or_deepspeed_launched_without_gpus_is_one_clear_error(tiny_config, monkeypatch, variable, name):
    """Without it, FSDP fails inside Accelerate ("There are currently no available devices found")
    and DeepSpeed quietly trains plain DDP on the CPU process group."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(LaunchError, match=rf"{name} needs GPUs.*--multi_gpu --num_processes 2"):
        make_accelerator(load_config(tiny_config))


def test_the_loop_gets_an_accelerator_that_does_not_accumulate(tiny_config):
    """The loop counts micro-batches and scales the loss itself; Accelerate counting too would scale it twice."""
    config = load_config(tiny_config, ["training.gradient_accumulation_steps=4"])
    accelerator = make_accelerator(config)
    assert accelerator.gradient_accumulation_steps == 1 and accelerator.sync_gradients
    refuse_launched_accumulation(accelerator)
    with pytest.raises(LaunchError, match="set to accumulate 4 micro-batches .* tunesmith accumulates itself"):
        refuse_launched_accumulation(SimpleNamespace(gradient_accumulation_steps=4))
