"""L2-SP, a forgetting guard: keep the weights near where fine-tuning started (`strategy.l2_sp`).

Li et al. 2018 ("Explicit inductive bias for transfer learning with convolutional networks") replace
weight decay's pull toward zero, which forgets what pre-training learnt, by a pull toward the starting
weights. Here it is decoupled from the loss as AdamW decouples weight decay: after every optimizer step
each anchored parameter moves `lr x l2_sp` of the way back toward its start, so the strength reads like
`weight_decay` and does not depend on the loss's scale. The start is the model as built, before any
step: the pre-trained weights, or the parent run's when fine-tuning a trained model on newer data
(`tunesmith update`). A new head (a task's `fresh_head`) is not anchored: its start is random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tunesmith.errors import ConfigError
from tunesmith.models.layer_groups import LayerGroup

if TYPE_CHECKING:
    from tunesmith.config import RunConfig


class Anchor:
    """The starting value of every anchored parameter, and the pull back toward it."""

    def __init__(self, groups: list[LayerGroup], strength: float, fresh_head: bool):
        self.strength = strength
        self.start: dict[int, torch.Tensor] = {
            id(p): p.detach().clone() for g in groups if not (fresh_head and g.name == "head") for _, p in g.params}

    @torch.no_grad()
    def pull(self, optimizer: torch.optim.Optimizer) -> None:
        """After a step: w += lr x strength x (start - w), at each parameter group's own learning rate."""
        for group in optimizer.param_groups:
            rate = group["lr"] * self.strength
            for p in group["params"]:
                start = self.start.get(id(p))
                if start is not None:
                    if start.device != p.device:  # recorded before Accelerate moved the model
                        start = self.start[id(p)] = start.to(p.device)
                    p.add_(start.to(p.dtype) - p, alpha=rate)


def anchor_weights(optimizer: torch.optim.Optimizer, groups: list[LayerGroup], config: RunConfig, task: Any,
                   sharded: bool) -> Anchor | None:
    """Records the starting weights and pulls toward them after every step `optimizer` takes (a step
    skipped as non-finite, or by fp16's grad scaler, pulls nothing); None when `strategy.l2_sp` is 0.

    Raises:
        ConfigError: the weights will be sharded (FSDP, DeepSpeed), where a process holds a slice only.
    """
    strength = config.strategy.l2_sp
    if strength == 0:
        return None
    if sharded:
        raise ConfigError(["strategy.l2_sp: not available when the weights are sharded (FSDP, DeepSpeed); "
                           "run on one device or under DDP, or set strategy.l2_sp: 0"])
    anchor = Anchor(groups, strength, fresh_head=bool(getattr(task, "fresh_head", False)))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: anchor.pull(opt))
    return anchor
