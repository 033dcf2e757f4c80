"""The one setup every verb shares: config -> task -> preflight -> model -> LoRA -> layer groups.

`finetune`, `merge`, `inspect`, `lr-find`, `tune` and `compare` all start from these steps, so what
they build cannot drift apart: `lr-find` once swept the full model on a LoRA config, and `inspect`
showed a two-label head whatever the data said. The loop (`engine/loop.py`) starts where this ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import RunConfig, load_config

if TYPE_CHECKING:
    from torch import nn

    from tunesmith.models.layer_groups import LayerGroup
    from tunesmith.tasks import Task


def prepared(config: str | Path | dict[str, Any] | RunConfig, overrides: list[str] | None = None,
             data: bool = True) -> tuple[RunConfig, Task]:
    """The validated config and its task, the data read and checked (`data`), before any weights load.

    Raises:
        ConfigError, DataError: problems the user can fix, all found here.
    """
    from tunesmith.strategies.lora import check_lora
    from tunesmith.strategies.pseudo_label import check_pseudo_label, with_pseudo_labels
    from tunesmith.tasks import get_task

    config = load_config(config, overrides)
    check_lora(config)
    task = get_task(config)
    check_pseudo_label(config, task)
    if data:
        task.preflight()
        if config.strategy.pseudo_label.labels:
            with_pseudo_labels(task, config)
    return config, task


def built(task: Task, config: RunConfig) -> nn.Module:
    """The task's model from its source, seeded, with LoRA adapters when `lora.enabled`."""
    from accelerate.utils import set_seed

    from tunesmith.strategies.lora import apply_lora

    quiet_libraries()
    set_seed(config.training.seed)
    return apply_lora(task.build_model(), config)


def frozen_as_configured(task: Task, model: nn.Module, config: RunConfig, epoch: int = 0) -> list[LayerGroup]:
    """The model's layer groups with the strategy's freezing for `epoch` applied."""
    from tunesmith.strategies.freezing import apply_freezing, trainable_from

    groups = task.layer_groups(model)
    s = config.strategy
    apply_freezing(model, groups, trainable_from(len(groups), s.freeze, s.gradual_unfreezing, epoch), s.freeze_groups)
    return groups


def quiet_libraries() -> None:
    """transformers' and timm's own progress bars and info lines stay out of tunesmith's output."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("timm").setLevel(logging.WARNING)
