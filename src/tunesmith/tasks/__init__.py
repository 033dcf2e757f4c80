"""Tasks: one module per task, registered by the name used in the config's `task` key.

A task owns how rows become tensors, which head sits on the backbone, the loss, the metrics and
how outputs become predictions. The engine talks to a task only through the `Task` protocol.
Adding a task is one new file in this folder with `@register_task("name")` on its class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from tunesmith.config import RunConfig
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.models.layer_groups import LayerGroup

_TASKS: dict[str, type] = {}


class Task(Protocol):
    """What the engine needs from a task."""

    name: str
    primary_metrics: tuple[str, ...]
    train_rows: LabelledRows | None
    eval_rows: LabelledRows | None
    label_names: list[str]

    def preflight(self) -> None:
        """Reads and checks all data; raises DataError before any weights load."""

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Rows to predict (no labels) from a file, or whatever else the task reads (an image folder)."""

    def build_model(self) -> nn.Module:
        """Loads the pre-trained backbone with this task's head."""

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as saved (head and labels included), for evaluate/predict."""

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]: ...

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> Sequence[Any]:
        """Model inputs for `rows` (train=True may augment; a `set_epoch(epoch)` method, if
        present, is called before each epoch so random draws are keyed on (seed, epoch, index))."""

    def lengths(self, dataset: Sequence[Any]) -> list[int] | None:
        """Per-example lengths for length-grouped batching, or None when lengths do not vary."""

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]: ...

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Model outputs (e.g. logits) for a batch, labels ignored."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, outputs) for a labelled batch."""

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]: ...

    def predictions(self, rows: LabelledRows, outputs: np.ndarray) -> list[dict[str, Any]]:
        """One output record per input row, for `tunesmith predict`."""

    def save(self, model: nn.Module, folder: str) -> None:
        """Writes the model in the format its own library loads (with tokenizer etc.)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the model card and the log."""

    def card_usage(self) -> str:
        """Markdown for the model card: how to load `best/` with the model family's own library."""


def register_task(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def available_tasks() -> list[str]:
    """Task names, one per module file in this folder (`text_classification.py` -> `text-classification`)."""
    from pathlib import Path

    return sorted(p.stem.replace("_", "-") for p in Path(__file__).parent.glob("[!_]*.py"))


def get_task(config: RunConfig) -> Task:
    name = config.task
    if name not in _TASKS:
        # Task modules are imported on first use so optional dependencies stay lazy.
        importlib.import_module(f"tunesmith.tasks.{name.replace('-', '_')}")
    return _TASKS[name](config)
