"""The run's Accelerator (engine/accelerator.py): sharding launches refused without GPUs."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.engine.accelerator import make_accelerator
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
