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
from torch import nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from tunesmith.config import RunConfig
from tunesmith.errors import LaunchError

CPU_BF16_VARIABLE = "TUNESMITH_CPU_BF16"
PRECISION_NAMES = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast", "fp8": "fp8"}  # logs, model card
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
    precision = mixed_precision(config)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        # Accelerate keeps one precision per process and refuses another ("restart your runtime"); a
        # notebook comparing fp32 with bf16 runs twice in one process. Only the precision state is
        # dropped: the process group (PartialState) stays. Accelerate's own tests reset it this way.
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=cpu_group,
        mixed_precision=precision,
        gradient_accumulation_steps=accumulation,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=freezes)],
    )



def fp32_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The prepared model unwrapped, its forward without Accelerate's autocast wrapper, for what must compute
    in fp32 as the weights are saved: the LoRA merge check (under bf16 the adapter model's outputs differed
    from the merged one's by bf16's rounding, and the merge was refused) and the ONNX export (a graph traced
    under bf16 holds bf16 ops that onnxruntime's CPU kernels lack). It changes `model` in place."""
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False)


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
    """Accelerate's mixed-precision mode for the run (`precision_choice` says why)."""
    return precision_choice(config)[0]


def precision_choice(config: RunConfig) -> tuple[str, str]:
    """The run's mixed-precision mode and the reason, for the log.

    `auto`: bf16 on GPUs that support it, fp16 on other GPUs; on a CPU, bf16 where it has bf16 matrix
    instructions (AMX or AVX512-BF16: 1.16-1.53x the samples/s of fp32 at equal accuracy on SST-2,
    CoNLL-2003 and ants vs bees, benchmarks/RESULTS.md) and full precision elsewhere, where bf16 is
    emulated and slower.

    Raises:
        LaunchError: TUNESMITH_CPU_BF16 is set to something other than 0 or 1.
    """
    choice = config.training.mixed_precision
    if choice != "auto":
        return choice, f"training.mixed_precision: {choice}"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU computes in bf16"
        return "fp16", "auto: this GPU has no bf16; fp16 with a gradient scaler"
    units = cpu_bf16_units()
    if units:
        return "bf16", f"auto: this CPU has bf16 matrix instructions ({units}); training.mixed_precision: no for fp32"
    return "no", "auto: this CPU has no bf16 matrix instructions (AMX or AVX512-BF16), where fp32 is faster"


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix instructions ("AMX, AVX512-BF16"), None without them.

    TUNESMITH_CPU_BF16=0 or 1 overrides the probe, so that runs on a fleet of mixed CPUs (and the
    test suite) compute alike. The probes are torch's own (cpuinfo, the ones its kernels dispatch on);
    they are private, so a torch without them counts as a CPU without bf16 units.

    Raises:
        LaunchError: the variable is set to anything else.
    """
    forced = os.environ.get(CPU_BF16_VARIABLE)
    if forced is not None:
        if forced.strip() not in ("0", "1"):
            raise LaunchError(f"{CPU_BF16_VARIABLE}={forced!r}: set it to 1 (bf16 on this CPU), 0 (fp32) "
                              "or unset it (detect the CPU's bf16 instructions)")
        return f"{CPU_BF16_VARIABLE}=1" if forced.strip() == "1" else None
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    found = [name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)()]
    return ", ".join(found) or None
