"""The Accelerator for a run: mixed precision, accumulation, and how batches split across processes.

Batches are built for the whole world (per-device batch size x processes) and split between the
processes (`split_batches`), so N processes see exactly the batches one process would: a
2-process DDP run matches a single-process run with the same effective batch. With any freezing
configured, DDP looks for unused parameters: frozen groups get no gradients, and with gradual
unfreezing the set of trained groups changes between epochs. FSDP and DeepSpeed need GPUs: on a
CPU process group Accelerate would fail (FSDP) or quietly run DDP instead, so they are refused.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from tunesmith.config import RunConfig
from tunesmith.errors import LaunchError

SHARDING_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def make_accelerator(config: RunConfig) -> Accelerator:
    s = config.strategy
    freezes = s.freeze != "none" or s.gradual_unfreezing
    # Accelerate only forms a multi-process CPU group (gloo) when told to use the CPU; launched by
    # `accelerate launch --multi_gpu` or torchrun on a machine without GPUs, say so.
    cpu_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if cpu_group:
        refuse_sharding_on_cpu()
    return Accelerator(
        cpu=cpu_group,
        mixed_precision=mixed_precision(config),
        gradient_accumulation_steps=config.training.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=freezes)],
    )


def refuse_sharding_on_cpu() -> None:
    """Raises LaunchError when `accelerate launch` asked for FSDP or DeepSpeed on a machine without GPUs.

    Accelerate's FSDP plugin raises "There are currently no available devices found, must be one of
    'XPU', 'CUDA', 'MLU', 'NPU', 'MUSA', or 'HPU'." without a GPU, and a CPU process group never
    applies FSDP or DeepSpeed (it would train plain DDP under a sharding config).

    Raises:
        LaunchError: the launch environment names FSDP or DeepSpeed.
    """
    for variable, name in SHARDING_LAUNCHES.items():
        if os.environ.get(variable, "false").lower() == "true":
            raise LaunchError(
                f"{name} needs GPUs: this machine has none ({variable}=true was set by `accelerate launch`, e.g. "
                f"from a config with distributed_type: {name.upper()}). Accelerate does not shard on CPU. To train "
                "on several CPU processes, use DDP over gloo: accelerate launch --multi_gpu --num_processes 2 "
                "-m tunesmith.cli train my-run.yaml (docs/scaling.md)")


def mixed_precision(config: RunConfig) -> str:
    """`auto`: bf16 on GPUs that support it, fp16 on other GPUs, full precision on CPU."""
    choice = config.training.mixed_precision
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
