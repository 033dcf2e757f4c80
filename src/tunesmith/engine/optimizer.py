"""The optimizer and learning-rate schedule of a training run: AdamW over the layer groups, and the schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import get_scheduler

from tunesmith.strategies.learning_rates import optimizer_param_groups

if TYPE_CHECKING:
    from tunesmith.config import RunConfig


def make_optimizer(groups, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over the layer groups with their discriminative rates (also used by `tunesmith lr-find`)."""
    t = config.training
    params = optimizer_param_groups(groups, t.learning_rate, config.strategy.layer_lr_decay, t.weight_decay)
    kwargs: dict[str, Any] = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels are missing for some devices and dtypes
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int) -> Any:
    """The learning-rate schedule: `training.lr_scheduler_type` with its warm-up, over `total_steps`."""
    ratio, steps = config.warmup
    warmup = steps if steps is not None else int((ratio or 0.0) * total_steps)
    return get_scheduler(config.training.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)
