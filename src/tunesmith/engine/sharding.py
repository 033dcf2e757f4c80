"""Whole-model weights when each process holds only a shard of them (FSDP, DeepSpeed).

Under FSDP's FULL_SHARD every process keeps a slice of each parameter, so the full state dict is
a collective: all processes must ask for it together (Accelerate's `get_state_dict`), and the
main process alone receives the tensors, on its CPU. Writing `best/` or a checkpoint therefore
gathers on every process and writes on the main one; restoring `best/` loads the full weights on
every process and lets FSDP keep each one's shard. A checkpoint's optimizer state is still each
process's own shard, so a sharded run is not resumed from it (yet). Without sharding (one process, DDP) every
process holds the whole model and nothing is gathered. The gradient-norm check lives here too,
because DeepSpeed's `clip_grad_norm_` returns a float or None where the others return a tensor.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch import nn

from tunesmith.engine.checkpoint import atomic_folder, checkpoints
from tunesmith.errors import CheckpointError, RunDirError

if TYPE_CHECKING:
    from tunesmith.tasks import Task

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def gather_weights(accelerator: Accelerator, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full weights of the prepared `model`, on the main process; every process must call this.

    None without sharding (the unwrapped model's own `state_dict()` is then whole, and gathering
    would only copy it) and on the other processes, which receive no tensors.
    """
    if accelerator.distributed_type not in SHARDED:
        return None
    weights = accelerator.get_state_dict(model)  # a collective under FULL_SHARD: never on one process only
    return weights if accelerator.is_main_process else None


def save_best(task: Task, accelerator: Accelerator, model: nn.Module, run_dir: Path) -> None:
    """Writes `best/` in the task's own format; every process must call this, the main one writes.

    Raises:
        RunDirError: disk full or unwritable; the message names the last good checkpoint.
    """
    weights = gather_weights(accelerator, model)
    if not accelerator.is_main_process:
        return
    try:
        with atomic_folder(run_dir / "best") as tmp:
            task.save(accelerator.unwrap_model(model), str(tmp), weights)
    except RunDirError as exc:
        found = checkpoints(run_dir / "checkpoints")
        raise RunDirError(f"{exc}; last good checkpoint: {found[0].name if found else 'none'}") from None


def restore_best(accelerator: Accelerator, model: nn.Module, run_dir: Path, task: Task) -> None:
    """Loads `best/` back into the prepared `model` on every process: its `model.safetensors`, or what the
    task's `saved_weights(folder)` reads where its library's layout keys the files otherwise."""
    unwrapped = accelerator.unwrap_model(model)
    if (run_dir / "best" / "adapter_config.json").exists():  # lora.enabled: best/ holds the adapter only
        from tunesmith.strategies.lora import restore_adapter

        return restore_adapter(unwrapped, run_dir / "best")
    # Any values: torch hints set_model_state_dict with its own invariant ValueType, not Tensor.
    read = getattr(task, "saved_weights", None)  # optional: keyed as the model's state_dict
    weights: dict[str, Any] = read(run_dir / "best") if read else load_file(str(run_dir / "best" / "model.safetensors"))
    if accelerator.distributed_type == DistributedType.FSDP:
        # The unwrapped module's parameters are this process's shards: FSDP scatters the full tensors.
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        missing, unexpected = set_model_state_dict(
            model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        missing, unexpected = unwrapped.load_state_dict(weights, strict=False)
    # Tied copies are not saved; `all_tied_weights_keys` also names those of sub-models (an EncoderDecoderModel's decoder).
    tied = set(getattr(unwrapped, "all_tied_weights_keys", None) or getattr(unwrapped, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise CheckpointError(f"{run_dir / 'best'} does not match the trained model (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}): best/ was changed or written by another run; train again")


def refuse_sharded_resume(accelerator: Accelerator, path: Path) -> None:
    """Raises CheckpointError when a sharded run would resume from `path`.

    The checkpoint's weights are whole (gathered), but its `optimizer.pt` holds the main process's
    shard of the optimizer state only: loaded into the whole model's optimizer it would not match.

    Raises:
        CheckpointError: the run is sharded (FSDP, DeepSpeed).
    """
    if accelerator.distributed_type in SHARDED:
        raise CheckpointError(
            f"cannot resume from {path} under {accelerator.distributed_type.value}: its optimizer state is one "
            f"process's shard, not the whole. Its weights are complete ({path / 'model.safetensors'}); to continue, "
            f"start a new run (resume: null) from the best model so far with model.source: {path.parents[1] / 'best'} "
            "(docs/scaling.md)")


def finite_norm(norm: torch.Tensor | float | None) -> torch.Tensor | bool:
    """Whether a gradient norm from `clip_grad_norm_` is finite. A tensor stays on the device, so the
    loop syncs once per step; DeepSpeed gives a float, or None when it has no norm to report (its
    own overflow check then skips bad fp16 steps), which leaves nothing to check."""
    if norm is None:
        return True
    if isinstance(norm, torch.Tensor):
        return torch.isfinite(norm)
    return math.isfinite(norm)
