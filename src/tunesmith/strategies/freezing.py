"""Which layer groups train, and when: freeze none, the head only, the first k, or unfreeze gradually;
and groups frozen by name (`strategy.freeze_groups`), whatever their place.

Frozen groups get `requires_grad=False` (so autograd never computes their gradients and the
optimizer skips them, leaving them bit-identical) and are put in eval mode, so dropout does not
perturb the features they feed upward and normalization statistics stay put.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.models.layer_groups import LayerGroup


def freeze_floor(num_groups: int, freeze: str | int) -> int:
    """Number of bottom groups that never train under the `freeze` setting (the head always trains)."""
    if freeze == "none":
        return 0
    if freeze == "head_only":
        return num_groups - 1
    return min(int(freeze), num_groups - 1)


def trainable_from(num_groups: int, freeze: str | int, gradual: bool, epoch: int) -> int:
    """Index of the lowest trainable group at `epoch` (0-based); groups below it are frozen.

    With gradual unfreezing, epoch 0 trains the head only and each later epoch adds one group
    from the top down, stopping at the freeze floor (ULMFiT).
    """
    floor = freeze_floor(num_groups, freeze)
    if not gradual:
        return floor
    return max(floor, num_groups - 1 - epoch)


def trains(groups: list[LayerGroup], lowest_trainable: int, by_name: Collection[str] = ()) -> list[bool]:
    """Whether each group trains: at or above `lowest_trainable` and not named in `by_name`.

    Raises:
        ConfigError: a name in `by_name` is no group of this model.
    """
    names = [g.name for g in groups]
    unknown = [n for n in by_name if n not in names]
    if unknown:
        raise ConfigError([f"strategy.freeze_groups: {unknown[0]!r} is no layer group of this model; its groups are "
                           f"{', '.join(names)}"])
    return [i >= lowest_trainable and g.name not in by_name for i, g in enumerate(groups)]


def apply_freezing(model: nn.Module, groups: list[LayerGroup], lowest_trainable: int, by_name: Collection[str] = ()) -> None:
    """Sets requires_grad and train/eval mode so that groups below `lowest_trainable`, and those
    named in `by_name`, are frozen."""
    model.train()
    for group, trainable in zip(groups, trains(groups, lowest_trainable, by_name)):
        for _, param in group.params:
            param.requires_grad_(trainable)
        if not trainable:
            for module in group.modules:
                module.eval()
            for module in group.train_when_frozen:
                module.train()
                module.requires_grad_(True)
