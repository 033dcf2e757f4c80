"""Tasks: one module per task, registered by the name used in the config's `task` key.

A task owns how rows become tensors, which head sits on the backbone, the loss, the metrics and
how outputs become predictions. The engine talks to a task only through the `Task` protocol.
Adding a task is one new file in this folder with `@register_task("name")` on its class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from tunesmith.config import RunConfig
    from tunesmith.models.layer_groups import LayerGroup

_TASKS: dict[str, type] = {}


class Task(Protocol):
    """What the engine needs from a task."""

    name: str
    primary_metrics: tuple[str, ...]

    def preflight(self) -> None:
        """Reads and checks all data; raises DataError before any weights load."""

    def build_model(self) -> nn.Module:
        """Loads the pre-trained backbone with this task's head."""

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]: ...

    def train_features(self) -> list[dict[str, Any]]: ...

    def eval_features(self) -> list[dict[str, Any]]: ...

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, outputs) for a batch."""

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]: ...

    def save(self, model: nn.Module, folder: str) -> None:
        """Writes the model in the format its own library loads (with tokenizer etc.)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the model card and the log."""


def register_task(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def get_task(config: RunConfig) -> Task:
    name = config.task
    if name not in _TASKS:
        # Task modules are imported on first use so optional dependencies stay lazy.
        importlib.import_module(f"tunesmith.tasks.{name.replace('-', '_')}")
    return _TASKS[name](config)
