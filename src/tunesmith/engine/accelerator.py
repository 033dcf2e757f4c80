"""The Accelerator for a run: mixed precision, and how batches split across processes.

Batches are built for the whole world (per-device batch size x processes) and split between the
processes (`split_batches`), so N processes see exactly the batches one process would: a
2-process DDP run matches a single-process run with the same effective batch. With any freezing
configured, DDP looks for unused parameters: frozen groups get no gradients, and with gradual
unfreezing the set of trained groups changes between epochs. FSDP and DeepSpeed need GPUs: on a
CPU process group Accelerate would fail (FSDP) or quietly run DDP instead, so they are refused.
Gradient accumulation is the training loop's own (engine/loop.py): the Accelerator it gets counts
no micro-batches and scales no loss.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from tunesmith.config import RunConfig
from tunesmith.errors import LaunchError

SHARDING_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def make_accelerator(config: RunConfig, accumulation: int = 1) -> Accelerator:
    """The run's Accelerator; `accumulation` is for `accelerator.accumulate` (the learning-rate finder), not `fit`."""
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
        gradient_accumulation_steps=accumulation,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=freezes)],
    )



def refuse_launched_accumulation(accelerator: Accelerator) -> None:
    """Raises LaunchError when Accelerate accumulates micro-batches itself (set by the launcher, e.g. a DeepSpeed
    config's `gradient_accumulation_steps`): the training loop does, and the loss would be scaled twice.

    Raises:
        LaunchError: the prepared Accelerator counts more than one micro-batch per step.
    """
    if accelerator.gradient_accumulation_steps != 1:
        raise LaunchError(
            f"Accelerate was set to accumulate {accelerator.gradient_accumulation_steps} micro-batches per step by "
            "`accelerate launch` (--gradient_accumulation_steps, or gradient_accumulation_steps in its DeepSpeed "
            "config); tunesmith accumulates itself: set training.gradient_accumulation_steps in the run config and "
            "leave Accelerate's at auto (examples/accelerate/deepspeed.yaml)")

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
