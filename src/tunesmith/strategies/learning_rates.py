"""Optimizer parameter groups: discriminative learning rates per layer group, and decay rules.

The head gets `learning_rate`; each group below gets the rate of the group above times
`layer_lr_decay`. Biases and normalization weights (every tensor with fewer than two dimensions)
get no weight decay. Every parameter is given to the optimizer from the start, frozen or not, so
gradual unfreezing needs no optimizer rebuild: AdamW skips parameters whose gradient is None.
"""

from __future__ import annotations

from typing import Any

from tunesmith.models.layer_groups import LayerGroup


def group_learning_rates(num_groups: int, learning_rate: float, layer_lr_decay: float) -> list[float]:
    """Learning rate of each group, bottom (embeddings) to top (head)."""
    return [learning_rate * layer_lr_decay ** (num_groups - 1 - i) for i in range(num_groups)]


def optimizer_param_groups(
    groups: list[LayerGroup], learning_rate: float, layer_lr_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Param groups for torch optimizers, two per layer group (with and without weight decay).

    Each dict carries `group_name` so logs and tests can tell which rate belongs to which group.
    """
    rates = group_learning_rates(len(groups), learning_rate, layer_lr_decay)
    param_groups = []
    for group, lr in zip(groups, rates):
        decay = [p for _, p in group.params if p.ndim >= 2]
        no_decay = [p for _, p in group.params if p.ndim < 2]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, ".no_decay")):
            if params:
                param_groups.append({"params": params, "lr": lr, "weight_decay": wd, "group_name": group.name + suffix})
    return param_groups
