"""The run config's shape: the shared sections, plus one section per task, assembled from the registry.

`RunConfig` holds what every run has (`task`, `output_dir`, `model`, `data`, `training`, ...).
`assemble` builds the schema a config file is validated against from it: one field per task that
declares its own section (`question_answering:` for `task: question-answering`), and the rules that
depend on the task (its metrics, which one selects the best model, its defaults), given as
`TaskSchema`s. This package never imports the tasks: the task registry calls `assemble` with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, create_model, model_validator

from tunesmith.config._section import Section
from tunesmith.config.augmentation import AugmentationConfig
from tunesmith.config.lora import LoraConfig
from tunesmith.config.reporting import CompareConfig, TrackingConfig
from tunesmith.config.search import SearchConfig
from tunesmith.config.sections import DataConfig, ModelConfig, StrategyConfig, TrainingConfig


@dataclass(frozen=True)
class TaskSchema:
    """What the config needs to know of one task; the task class declares each of these."""

    name: str
    """The `task:` value (`question-answering`)."""
    metrics: tuple[str, ...]
    """Metrics `training.metric_for_best_model` may name; the first is the default, unless the task's
    section has a `default_metric` (a property reading its other settings). `loss` is always allowed."""
    settings: type[Section] | None = None
    """The task's own section, or None when it reads only the shared ones."""
    minimize: frozenset[str] = frozenset({"loss", "perplexity"})
    """Metrics that are better when lower."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Shared keys whose default differs for this task (`{"data.max_length": 384}`), applied when unset."""
    summary: str = ""
    """One line for `tunesmith tasks`."""
    pipeline_tag: str | None = None
    """The Hugging Face Hub's name for the task, for the model card (`text-generation`); None: the task's name."""

    @property
    def section(self) -> str:
        """The task's section key: its name in snake case (`question_answering`)."""
        return self.name.replace("-", "_")

    @property
    def selectable(self) -> tuple[str, ...]:
        return self.metrics + (("loss",) if "loss" not in self.metrics else ())

    def shown(self, results: Mapping[str, Any], extra: tuple[str, ...] = ()) -> list[str]:
        """The scalar metrics of `results` to show, in this task's order: its metrics, `extra`, loss, perplexity."""
        order = dict.fromkeys((*self.metrics, *extra, "loss", "perplexity"))
        return [k for k in order if isinstance(results.get(k), int | float) and not isinstance(results.get(k), bool)]


class RunConfig(Section):
    task: str = "text-classification"
    """What is being fine-tuned: one of the tasks `tunesmith tasks` lists with what each does
    (`text-classification`, `image-classification`, `tabular-classification`, ...)."""
    output_dir: str = "runs/run"
    """The run directory: config, metrics, checkpoints, `best/` and the model card go here."""
    overwrite_output_dir: bool = False
    """Replace an earlier run in `output_dir` (otherwise a directory holding a run is refused)."""
    resume: str | None = None
    """Continue the run in `output_dir`: `auto` (from its newest intact checkpoint, or from the
    start when there is none), or a checkpoint name (`step-300`) or path. `null` starts fresh."""
    model: ModelConfig = ModelConfig()
    """Where the pre-trained model comes from and how it is set up."""
    data: DataConfig = DataConfig()
    """The labelled files and how to read them."""
    training: TrainingConfig = TrainingConfig()
    """The optimization loop (names as in Hugging Face TrainingArguments)."""
    strategy: StrategyConfig = StrategyConfig()
    """Which layer groups train when, and at which learning rates."""
    augmentation: AugmentationConfig = AugmentationConfig()
    """Random transforms of training images, mixup and cutmix (image tasks)."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment tracking: TensorBoard and MLflow."""
    compare: CompareConfig = CompareConfig()
    """`tunesmith compare`: the arms, and the learning curve's fractions and seeds."""
    search: SearchConfig = SearchConfig()
    """`tunesmith tune`: the search space, budget, pruning and where the study is stored."""
    lora: LoraConfig = LoraConfig()
    """Parameter-efficient fine-tuning with LoRA/DoRA adapters (peft), and QLoRA."""

    tasks: ClassVar[Mapping[str, TaskSchema]] = {}
    """The registered tasks; set on the schema `assemble` builds."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        problems, t = self.search.problems(self), self.training
        if t.warmup_ratio is not None and t.warmup_steps is not None:
            problems.append("training.warmup_ratio and training.warmup_steps are both set; keep one")
        if t.eval_strategy == "steps" and not t.eval_steps:
            problems.append("training.eval_strategy is 'steps' but training.eval_steps is not set")
        problems += self._task_problems()
        if problems:
            # Raised as ValueError so pydantic merges these with any field errors.
            raise ValueError("; ".join(problems))
        return self

    def _task_problems(self) -> list[str]:
        """Applies the task's defaults and checks the metric; unknown tasks are named with the known ones."""
        spec = self.tasks.get(self.task)
        if spec is None:
            return [f"task: unknown task {self.task!r}; choose one of {', '.join(sorted(self.tasks))}"] if self.tasks else []
        for key, value in {**spec.defaults, **_source_defaults(self.model.source, self.task)}.items():
            section, name = key.split(".")
            _set_default(getattr(self, section), name, value)
        t = self.training
        if t.metric_for_best_model is None:  # the task's section may choose by its own settings (`default_metric`)
            chosen = getattr(getattr(self, spec.section, None), "default_metric", None) if spec.settings else None
            _set_default(t, "metric_for_best_model", chosen or spec.metrics[0])
        if t.metric_for_best_model not in spec.selectable:
            return [f"training.metric_for_best_model: unknown metric {t.metric_for_best_model!r} for {self.task}; "
                    f"choose one of {', '.join(spec.selectable)}"]
        return []

    @property
    def task_settings(self) -> Any:
        """This run's task section (`config.question_answering` for question-answering), or None."""
        spec = self.tasks.get(self.task)
        return getattr(self, spec.section) if spec is not None and spec.settings is not None else None

    @property
    def task_schema(self) -> TaskSchema:
        """What the registry knows of this run's task (its metrics, defaults, section)."""
        return self.tasks.get(self.task) or TaskSchema(self.task, ("accuracy", "macro_f1"))

    @property
    def metric(self) -> str:
        """The metric that selects the best model (`training.metric_for_best_model`, always set once validated)."""
        return self.training.metric_for_best_model or "loss"

    @property
    def greater_is_better(self) -> bool:
        spec = self.tasks.get(self.task)
        return self.metric not in (spec.minimize if spec else {"loss", "perplexity"})

    @property
    def warmup(self) -> tuple[float | None, int | None]:
        t = self.training
        if t.warmup_ratio is None and t.warmup_steps is None:
            return 0.1, None
        return t.warmup_ratio, t.warmup_steps


def _source_defaults(source: str, task: str) -> dict[str, Any]:
    """What a `demo:` alias's weights fine-tune well with for `task` (`Demo.defaults`); {} for other sources."""
    if not source.startswith("demo:"):
        return {}
    from tunesmith.errors import TunesmithError
    from tunesmith.models.demos import find_demo

    try:
        demo = find_demo(source)
    except TunesmithError:  # an unknown alias: refused, with the known ones, where the model loads
        return {}
    return dict(demo.defaults.get(task, {})) if demo is not None else {}


def _set_default(section: Section, name: str, value: Any) -> None:
    """Sets a task's default where the user gave none, still counted as unset (so a dump of the keys
    the user set, as `with_inferred_task` makes, does not carry one task's defaults to another)."""
    if name not in section.model_fields_set:
        setattr(section, name, value)
        section.model_fields_set.discard(name)


def assemble(tasks: Mapping[str, TaskSchema]) -> type[RunConfig]:
    """The run config schema for these tasks: RunConfig plus one section field per task that has one."""
    fields: dict[str, Any] = {
        spec.section: (spec.settings, Field(default_factory=spec.settings, description=spec.summary or None))
        for spec in tasks.values() if spec.settings is not None
    }
    schema = create_model("RunConfig", __base__=RunConfig, __module__=__name__, **fields)
    schema.tasks = dict(tasks)
    return schema
