"""Tasks: one module per task, registered by the name used in the config's `task` key.

A task owns everything task-specific: its own config section (a `Section` subclass named by its
`settings` attribute, read as `config.<task_name>`), how rows become tensors, which head sits on the
backbone, the loss, its metrics (`metric_names`, the first selecting the best model by default) and
its defaults for shared keys (`defaults`), and how outputs become predictions. The engine talks to a
task only through the `Task` protocol (mypy checks each registered class against it); a dataset
whose items change by epoch (image augmentation) is an `EpochDataset`. Adding a task is one new
file in this folder with `@register_task("name")` on its class; `import tunesmith` imports every
task module (`load_all`), so the config schema, `tunesmith tasks` and `config-reference` include it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from tunesmith.config import TaskSchema, register_task_schema

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tunesmith.config import RunConfig, Section
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.models.layer_groups import LayerGroup

_TASKS: dict[str, type[Task]] = {}


class Examples(Protocol):
    """A task's dataset as the engine reads it: its length and items by index (a list is one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@runtime_checkable
class EpochDataset(Examples, Protocol):
    """A task dataset with per-epoch state (image augmentation keyed on the epoch), as the engine uses it.

    `Task.dataset` returns either a plain sequence of ready features (text tasks: nothing varies by
    epoch) or one of these; the engine tells them apart with `isinstance(data, EpochDataset)`, so a
    dataset must declare all four members to be treated as one.
    """

    inputs_needed: bool
    """Set false by the activation cache while it replays a frozen prefix: items may then skip loading inputs."""
    preferred_workers: int
    """DataLoader workers to use when `training.dataloader_num_workers` is unset (decoding images wants some)."""

    @property
    def varies_by_epoch(self) -> bool:
        """Whether an item's inputs change between epochs (random augmentation): no activation cache then."""

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before each epoch, so random draws are keyed on (seed, epoch, index)."""


@dataclass(frozen=True)
class ClassBatches:
    """What a task's optional `class_batches(train_dataset)` returns to have P x K training batches
    (engine/batching.py): per example its class, and how many examples of a class go together."""

    classes: Sequence[int]
    per_class: int


class Task(Protocol):
    """What the engine needs from a task."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    """Metrics `training.metric_for_best_model` may name, the default first (`loss` is always allowed)."""
    settings: ClassVar[type[Section] | None]
    """The task's own config section, or None."""
    supports_activation_cache: ClassVar[bool]
    """Whether a frozen prefix's outputs can be recorded once and replayed (engine/activation_cache.py)."""
    train_rows: LabelledRows | None
    eval_rows: LabelledRows | None
    label_names: list[str]
    truncated: Any
    """Inputs cut to fit so far: a count, or counts by kind (seq2seq: sources, targets)."""

    def __init__(self, config: RunConfig) -> None: ...

    def preflight(self) -> None:
        """Reads and checks all data; raises DataError before any weights load."""

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Rows to predict (no labels) from a file, or whatever else the task reads (an image folder)."""

    def build_model(self) -> nn.Module:
        """Loads the pre-trained backbone with this task's head."""

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as saved (head and labels included), for evaluate/predict."""

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]: ...

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> Examples:
        """Model inputs for `rows`: a list of features, or an `EpochDataset` where items depend on
        the epoch (train=True may augment; its `set_epoch` is called before each epoch)."""

    def lengths(self, dataset: Any) -> list[int] | None:
        """Per-example lengths of what this task's `dataset()` returned, for length-grouped batching,
        or None when lengths do not vary."""

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]: ...

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """Model outputs for a batch, labels ignored: what `batch_outputs` reads (logits as a tensor
        for the tasks that export to ONNX; generated ids for the generating tasks)."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Returns (loss, outputs) for a labelled batch; the outputs are what `batch_outputs` reads."""

    def batch_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> list[Any]:
        """One output per example of the batch, from `forward`'s or `loss`'s outputs: on the CPU, of
        any shape or type, padding removed (a row's logits, a window's start/end scores, a generated
        text with its loss). Evaluation gathers these across processes and puts them in dataset order."""

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        """One output per row of `rows`, from the outputs of the examples `dataset(rows)` made, in
        that order: the examples' own where each row is one example (`OneOutputPerRow`); question
        answering joins a question's windows into its answer."""

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """The task's scores of `outputs` (`row_outputs`, one per row) against the labels of `rows`,
        which may be any subset of the validation rows (`evaluate --by` scores each group)."""

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One output record per row of `rows` from its `row_outputs`, for `tunesmith predict`."""

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Writes the model in the format its own library loads (with tokenizer etc.); `weights`, when
        given, are the full state dict gathered from sharded processes and are written instead of
        `model.state_dict()` (engine/sharding.py)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the model card and the log."""

    def card_usage(self) -> str:
        """Markdown for the model card: how to load `best/` with the model family's own library."""


TaskClass = TypeVar("TaskClass", bound="type[Task]")


class OneOutputPerRow:
    """`row_outputs` for a task whose dataset makes one example per row (every task but question
    answering), and `batch_outputs` for one whose outputs are a (B, ...) tensor: each row's output is
    its slice, as a float32 array (the generating tasks override it)."""

    def batch_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> list[Any]:
        return list(outputs.detach().float().cpu().numpy())

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        return examples


def stacked(outputs: list[Any], width: int) -> np.ndarray:
    """Per-row vectors as one (N, width) matrix; (0, width) for no rows."""
    return np.stack(outputs) if outputs else np.zeros((0, width), dtype=np.float32)


def label_probabilities(outputs: list[Any], names: list[str], temperature: float | None = None) -> list[dict[str, Any]]:
    """Per row of single-label logits: `predicted_label`, its `score` and `prob_<label>` for each label;
    the probabilities are those of the logits divided by `temperature` where one is given (calibrated)."""
    import torch

    logits = torch.from_numpy(stacked(outputs, len(names)))
    probs = torch.softmax(logits / (temperature or 1.0), dim=-1).numpy()
    return [{"predicted_label": names[int(p.argmax())], "score": round(float(p.max()), 6),
             **{f"prob_{n}": round(float(v), 6) for n, v in zip(names, p)}} for p in probs]


def label_ids(rows: LabelledRows, names: list[str]) -> np.ndarray:
    """(N,) the index in `names` of each row's label (preflight has checked that all are known)."""
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[label] for label in rows.labels], dtype=np.int64)


class ClassWeights:
    """`training.class_weights: balanced` for a single-label task: each label weighs n / (labels x count)
    in the loss, computed once from the training labels; None when the setting is off or there are none."""

    def __init__(self) -> None:
        self._weights: torch.Tensor | None = None

    def __call__(self, config: RunConfig, train_rows: LabelledRows | None, names: list[str],
                 device: torch.device) -> torch.Tensor | None:
        import torch

        from tunesmith.data.labelled import balanced_class_weights

        if config.training.class_weights != "balanced" or train_rows is None:
            return None
        if self._weights is None:
            self._weights = torch.tensor(balanced_class_weights(train_rows.labels, names))
        return self._weights.to(device)


@runtime_checkable
class ProbesFeatures(Protocol):
    """Opt-in for a task (classification): a linear probe of its backbone's features in the baseline.

    The engine asks `isinstance(task, ProbesFeatures)`; a task without both members gets no such score.
    """

    fresh_head: bool
    """Set by `build_model`, true when the head starts untrained on a pre-trained backbone, so the
    pre-trained model scores chance with it by construction. The baseline then also scores the
    backbone's features with a linear probe (engine/evaluation.py `feature_probe`)."""

    def pooled_features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) features the head would read, one vector per row, from the backbone as it is (the
        engine runs it in eval mode, without gradients)."""


class FeatureProbeTask(Task, ProbesFeatures, Protocol):
    """A task that opts in to the baseline's linear probe (what `isinstance(task, ProbesFeatures)` narrows to)."""


def read_rows(rows: LabelledRows | None, split: str) -> LabelledRows:
    """`task.train_rows` or `task.eval_rows` for code that runs after `preflight()`, which reads them."""
    if rows is None:
        raise RuntimeError(f"the task has no {split} rows: its preflight() must run before training or evaluation")
    return rows


def register_task(name: str) -> Callable[[TaskClass], TaskClass]:
    """Registers a task class under `name` and its config needs (section, metrics, defaults) with the schema.

    Besides the `Task` members, a class may declare `defaults` (shared keys whose default differs
    for it: `{"data.max_length": 384}`), `minimize` (metrics better when lower) and `pipeline_tag`
    (the Hub's name for the task); only the registry reads these. A task whose `save` writes another
    layout than one `model.safetensors` keyed like the model may give `saved_weights(folder)`, the saved
    weights keyed as the model's state dict, with which the engine restores `best/`; and one whose
    loss mines triplets in a batch may give `class_batches(train_dataset)` (a `ClassBatches`) for P x K
    training batches; one whose prediction is a vector names its column in `vector_column`, and
    `predict` can then write those vectors alone as `.npy`. `ordered_by` names the key of the
    task's section holding a time column: `tunesmith update` then holds out the latest rows, not random ones.
    A task whose predictions are files (masks) gives `write_predicted_files(rows, outputs, folder, examples)`
    (`prediction_file.task_records`); one whose labels are no names (masks, boxes) gives `check_labels(rows)`
    in place of `evaluate`'s known-label check; one whose inputs vary along more axes than the batch names
    them for the ONNX export in `dynamic_axes` (`{"pixel_values": (2, 3)}`).
    """

    def wrap(cls: TaskClass) -> TaskClass:
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


def task_class(name: str) -> type[Task]:
    load_all()
    return _TASKS[name]


def get_task(config: RunConfig) -> Task:
    return task_class(config.task)(config)
