"""Tasks: one module per task, registered by the name used in the config's `task` key.

A task owns everything task-specific: its own config section (a `Section` subclass named by its
`settings` attribute, read as `config.<task_name>`), how rows become tensors, which head sits on the
backbone, the loss, its metrics (`metric_names`, the first selecting the best model by default) and
its defaults for shared keys (`defaults`), and how outputs become predictions. The engine talks to a
task only through the `Task` protocol. Adding a task is one new file in this folder with
`@register_task("name")` on its class; `import tunesmith` imports every task module (`load_all`), so
the config schema, `tunesmith tasks` and `config-reference` include it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tunesmith.config import TaskSchema, register_task_schema

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from tunesmith.config import RunConfig, Section
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.models.layer_groups import LayerGroup

_TASKS: dict[str, type] = {}


class Task(Protocol):
    """What the engine needs from a task."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    """Metrics `training.metric_for_best_model` may name, the default first (`loss` is always allowed)."""
    settings: ClassVar[type[Section] | None]
    """The task's own config section, or None."""
    defaults: ClassVar[Mapping[str, Any]]
    """Shared keys whose default differs for this task (`{"data.max_length": 384}`)."""
    supports_activation_cache: ClassVar[bool]
    """Whether a frozen prefix's outputs can be recorded once and replayed (engine/activation_cache.py)."""
    train_rows: LabelledRows | None
    eval_rows: LabelledRows | None
    label_names: list[str]
    truncated: Any
    """Inputs cut to fit so far: a count, or counts by kind (seq2seq: sources, targets)."""
    fresh_head: bool
    """Optional (opt-in, with `pooled_features`): set by `build_model`, true when the head starts
    untrained on a pre-trained backbone, so the pre-trained model scores chance with it by
    construction. The baseline then also scores the backbone's features with a linear probe
    (engine/evaluation.py `feature_probe`). A task without it gets no such score."""

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

    def pooled_features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Optional (with `fresh_head`): (B, D) features the head would read, one vector per row,
        from the backbone as it is (the engine runs it in eval mode, without gradients)."""

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]: ...

    def predictions(self, rows: LabelledRows, outputs: np.ndarray) -> list[dict[str, Any]]:
        """One output record per input row, for `tunesmith predict`."""

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Writes the model in the format its own library loads (with tokenizer etc.); `weights`, when
        given, are the full state dict gathered from sharded processes and are written instead of
        `model.state_dict()` (engine/sharding.py)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the model card and the log."""

    def card_usage(self) -> str:
        """Markdown for the model card: how to load `best/` with the model family's own library."""


def register_task(name: str) -> Callable[[type], type]:
    """Registers a task class under `name` and its config needs (section, metrics, defaults) with the schema."""

    def wrap(cls: type) -> type:
        cls.name = name
        _TASKS[name] = cls
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()  # its module's first line
        register_task_schema(TaskSchema(
            name=name, metrics=tuple(cls.metric_names), settings=getattr(cls, "settings", None),
            minimize=frozenset(getattr(cls, "minimize", ("loss", "perplexity"))),
            defaults=dict(getattr(cls, "defaults", {})), summary=doc[0] if doc else "",
            pipeline_tag=getattr(cls, "pipeline_tag", None)))
        return cls

    return wrap


def available_tasks() -> list[str]:
    """Task names, one per module file in this folder (`text_classification.py` -> `text-classification`)."""
    return sorted(p.stem.replace("_", "-") for p in Path(__file__).parent.glob("[!_]*.py"))


def load_all() -> None:
    """Imports every task module, so each registers itself (and its config section)."""
    for name in available_tasks():
        if name not in _TASKS:
            importlib.import_module(f"tunesmith.tasks.{name.replace('-', '_')}")


def task_class(name: str) -> type:
    load_all()
    return _TASKS[name]


def get_task(config: RunConfig) -> Task:
    return task_class(config.task)(config)
