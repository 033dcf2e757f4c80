"""How much memory a run will need, estimated before it starts, with a warning when it will not fit.

The estimate adds four parts: the weights; a gradient per trainable weight; AdamW's two moment
tensors per trainable weight (both kept in float32); and the activations of one micro-batch,
measured by running the longest training example once through the model (in eval mode, under
the run's autocast, random generators untouched) and adding up the outputs of every leaf module,
times the micro-batch. Counting every leaf output over-estimates a little (a frozen prefix keeps
no activations for backward; in-place ops share memory), which suits a warning. "Trainable" is
the most the run ever trains: every group above the `strategy.freeze` floor. The estimate is
compared with the free memory of the GPU (`torch.cuda.mem_get_info`; the model is not on it yet)
or, on CPU, less the weights (already loaded), with the available RAM (psutil when installed, else
/proc/meminfo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

if TYPE_CHECKING:
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")

GIB = 2**30
ADAM_MOMENTS = 2


@dataclass
class MemoryEstimate:
    """Bytes per part; `total` is what the run needs at its peak (one step of one micro-batch)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    micro_batch: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = (("weights", self.weights), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                 (f"activations for a micro-batch of {self.micro_batch}", self.activations))
        return f"{self.total / GIB:.2f} GiB (" + ", ".join(f"{name} {b / GIB:.2f}" for name, b in parts) + ")"


def estimate_memory(model: nn.Module, trainable: list[nn.Parameter], micro_batch: int,
                    activation_bytes_per_example: int) -> MemoryEstimate:
    """The four parts for `model` when `trainable` train with AdamW at `micro_batch` examples."""
    seen: set[int] = set()
    weights = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:  # tied weights count once
            seen.add(id(tensor))
            weights += tensor.numel() * tensor.element_size()
    trained = {id(p): p for p in trainable}.values()
    gradients = sum(p.numel() * p.element_size() for p in trained)
    optimizer = sum(p.numel() * 4 * ADAM_MOMENTS for p in trained)  # AdamW keeps its moments in float32
    return MemoryEstimate(weights, gradients, optimizer, activation_bytes_per_example * micro_batch, micro_batch)


def activation_bytes(model: nn.Module, run_forward: Callable[[], object]) -> int:
    """Bytes of the tensors every leaf module outputs while `run_forward` runs the model once."""
    total = [0]

    def count(module, args, output) -> None:
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.numel() * tensor.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total[0]


def free_memory(device: torch.device) -> tuple[int, str] | None:
    """(free bytes, what they are) on `device`: free GPU memory, or available RAM for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device}"
    try:
        import psutil

        return psutil.virtual_memory().available, "available RAM"
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM"
    return None


def check_memory(task: Task, model: nn.Module, config, accelerator) -> MemoryEstimate:
    """Estimates the run's memory and warns when it exceeds what the device has free."""
    from accelerate.utils import send_to_device

    from tunesmith.engine.batch_size import longest_examples
    from tunesmith.strategies.freezing import freeze_floor

    groups = task.layer_groups(model)
    floor = freeze_floor(len(groups), config.strategy.freeze)
    trainable = [p for g in groups[floor:] if g.name not in config.strategy.freeze_groups for _, p in g.params]
    batch = task.collate(longest_examples(task, 1))

    device = next((p.device for p in model.parameters()), accelerator.device)  # boosted trees have no parameters

    def forward() -> None:
        with accelerator.autocast():
            task.forward(model, send_to_device(batch, device))

    micro = config.training.per_device_train_batch_size
    estimate = estimate_memory(model, trainable, micro, activation_bytes(model, forward))
    free = free_memory(accelerator.device)
    # On the CPU the weights are loaded already, so the available RAM excludes them.
    needed = estimate.total - (estimate.weights if accelerator.device.type == "cpu" else 0)
    if free is not None and needed > free[0]:
        log.warning("this run needs about %s, more than the %s (%.2f GiB); it may run out of memory. Lower "
                    "training.per_device_train_batch_size (raising gradient_accumulation_steps keeps the effective "
                    "batch), freeze more layer groups (strategy.freeze), or use training.mixed_precision: bf16",
                    estimate.describe(), free[1], free[0] / GIB)
    else:
        log.info("estimated memory for this run: %s", estimate.describe())
    return estimate
