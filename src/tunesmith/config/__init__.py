"""The run config: typed sections, loaded from YAML plus `--set key=value` overrides.

The field docstrings are the help text (`tunesmith config-reference` prints them), names follow
Hugging Face `TrainingArguments` where one exists, bounds sit on the fields, and unknown keys are
rejected with the nearest valid key. All problems in a file are reported together as one
`ConfigError`.

This package holds the shared sections and the machinery; a task declares its own section in its
own file (`tunesmith/tasks/question_answering.py` owns `question_answering:`) and registers it here
with `register_task_schema` when its module is imported (`import tunesmith` imports every task);
`schema()` assembles the full schema from what is registered. Imports run one way: tasks import
config, never back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config._loading import dump_config, raw_config, validate_raw
from tunesmith.config._run import RunConfig, TaskSchema, assemble
from tunesmith.config._section import Section, section_fields
from tunesmith.config.augmentation import AugmentationConfig
from tunesmith.config.lora import LoraConfig
from tunesmith.config.reporting import CompareConfig, TrackingConfig
from tunesmith.config.search import SearchConfig
from tunesmith.config.sections import DataConfig, ModelConfig, StrategyConfig, TrainingConfig

__all__ = [
    "AugmentationConfig", "CompareConfig", "DataConfig", "LoraConfig", "ModelConfig", "RunConfig", "SearchConfig",
    "Section", "StrategyConfig", "TaskSchema", "TrackingConfig", "TrainingConfig",
    "assemble", "dump_config", "load_config", "reference_markdown", "register_task_schema", "schema", "section_fields",
    "task_schemas", "validate_dict",
]


_TASK_SCHEMAS: dict[str, TaskSchema] = {}
_ASSEMBLED: dict[tuple[str, ...], type[RunConfig]] = {}


def register_task_schema(task: TaskSchema) -> None:
    """Adds a task's config needs to the schema (called by `tunesmith.tasks.register_task`)."""
    _TASK_SCHEMAS[task.name] = task


def task_schemas() -> dict[str, TaskSchema]:
    return dict(sorted(_TASK_SCHEMAS.items()))


def schema() -> type[RunConfig]:
    """The full run config schema: the shared sections plus every registered task's own section."""
    key = tuple(sorted(_TASK_SCHEMAS))
    if key not in _ASSEMBLED:
        _ASSEMBLED[key] = assemble(task_schemas())
    return _ASSEMBLED[key]


def load_config(
    source: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Builds a validated RunConfig from a YAML file, a dict or an existing config, plus overrides.

    Args:
        source: Path to a YAML file, a nested dict, a RunConfig, or None for all defaults.
        overrides: `key=value` strings; keys are dotted (`training.learning_rate=1e-4`) or bare
            when the name is unique (`learning_rate=1e-4`). Values are parsed as YAML.

    Raises:
        ConfigError: listing every problem found, each with the key, the value and a fix.
    """
    if isinstance(source, RunConfig) and not overrides:
        return source.model_copy(deep=True)  # validated when built (and on every assignment since)
    full = schema()
    raw, label = raw_config(source, overrides, full)
    return validate_raw(full, raw, label)


def validate_dict(raw: dict[str, Any], label: str | None = None) -> RunConfig:
    return validate_raw(schema(), raw, label)


def reference_markdown() -> str:
    """Every key of every section, the tasks' own included, as Markdown tables (the README's reference)."""
    from tunesmith.config._loading import reference_markdown as markdown

    return markdown(schema())
