"""The public entry points: `finetune`, `evaluate`, `predict` and `inspect`.

Each takes a config (path, dict or RunConfig), checks the data before any weights load, and
returns plain results. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.recipe import built, prepared, quiet_libraries

if TYPE_CHECKING:
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")


@dataclass
class RunResult:
    """What a fine-tuning run produced."""

    run_dir: Path
    baseline: dict[str, Any]
    final: dict[str, Any]
    best_step: int | None
    stopped_early: bool
    train_seconds: float
    samples_per_second: float
    overfitting: str | None = None
    """The overfitting watch's warning, when the run over-fitted after its best evaluation."""
    config: RunConfig | None = None
    """The resolved config the run trained with."""
    self_training: dict[str, Any] | None = None
    """Self-training (`strategy.pseudo_label`): `self_train/summary.json`; this result is the last stage's run."""

    @property
    def best_model_dir(self) -> Path | None:
        """`run_dir/best`, or None when the run saved no best model (no evaluation improved, no step trained)."""
        best = self.run_dir / "best"
        return best if best.is_dir() else None

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"


def finetune(config: str | Path | dict | RunConfig, overrides: list[str] | None = None, quiet: bool = False,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Fine-tunes the configured pre-trained model and writes the run directory.

    `on_record`, if given, sees every metrics record (baseline, train, eval, final) after it is
    written; an exception it raises (`tunesmith tune` prunes a trial so) ends the run, lock released.

    Raises:
        ConfigError, DataError, ModelSourceError, RunDirError: problems the user can fix.
    """

    from tunesmith.engine.accelerator import PRECISION_NAMES, fp32_model, make_accelerator, precision_choice
    from tunesmith.engine.batch_size import fit_batch_size
    from tunesmith.engine.memory_estimate import check_memory
    from tunesmith.engine.fitted import FitsItself, fit_itself
    from tunesmith.engine.loop import fit
    from tunesmith.engine.progress import ProgressDisplay
    from tunesmith.engine.run_dir import prepare_run_dir, run_lock
    from tunesmith.report.model_card import write_model_card
    from tunesmith.report.overfitting import read_records, watch_overfitting
    from tunesmith.report.run_report import write_run_report
    from tunesmith.report.tracking import open_trackers
    from tunesmith.report.validation_size import warn_small_validation
    from tunesmith.strategies.lora import merge_on_validation
    from tunesmith.strategies.pseudo_label import self_train
    config = load_config(config, overrides)
    if config.strategy.pseudo_label.data and not config.strategy.pseudo_label.labels:
        return self_train(config, quiet, on_record)  # its stages call finetune, which reads the data
    config, task = prepared(config)
    run_dir = prepare_run_dir(config.output_dir, config.overwrite_output_dir, resuming=config.resume is not None)
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process  # under DDP only the main process writes the run directory
    with run_lock(run_dir, enabled=main) as manifest:
        resume_from, restart_epoch = _resume_point(run_dir, config, task)
        accelerator.wait_for_everyone()
        if main:
            if resume_from is None:
                manifest.clear_earlier_run()  # only what tunesmith runs wrote; refuses a folder with anything else
            else:
                log.info("resuming from %s", resume_from)
        accelerator.wait_for_everyone()
        model = built(task, config)  # with LoRA adapters when lora.enabled
        fits_itself = isinstance(model, FitsItself)  # boosted trees, a policy: their own algorithm's precision
        if not fits_itself:
            log.info("precision: %s (%s)", PRECISION_NAMES[accelerator.mixed_precision], precision_choice(config)[1])
        config = fit_batch_size(task, model, config, accelerator)  # training.auto_find_batch_size, GPU only
        check_memory(task, model, config, accelerator)  # warns when the run will not fit
        if config.training.torch_compile:  # in place: the same module and state_dict keys, only __call__ compiles
            model.compile(dynamic=True)
        if main:
            dump_config(config.model_copy(update={"resume": None, "overwrite_output_dir": False}), run_dir / "config.yaml")
            manifest.sync()
        facts = task.describe()
        labels = f", labels: {', '.join(task.label_names)}" if task.label_names else ""
        log.info("training on %d %s, validating on %d %s%s", facts["train"]["rows"], facts["train"].get("unit", "rows"),
                 facts["validation"]["rows"], facts["validation"].get("unit", "rows"), labels)
        warn_small_validation(facts, config.metric)
        with open_trackers(config, run_dir, enabled=main) as trackers:
            train = fit_itself if fits_itself else fit  # boosted trees grow by their own algorithm
            result = train(task, model, config, run_dir, accelerator, ProgressDisplay(quiet or not main), resume_from,
                           restart_epoch, on_record=_chain(manifest.sync, trackers, on_record))
        state, overfitting = result.state, None
        if main:
            summary = {"steps": state.global_step, "epochs": state.global_step / result.steps_per_epoch,
                       "train_seconds": state.train_seconds, "eval_seconds": state.eval_seconds,
                       "stopped_early": state.stopped_early,
                       "precision": None if fits_itself else PRECISION_NAMES.get(accelerator.mixed_precision)}
            facts = task.describe()
            (run_dir / "data.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
            write_model_card(run_dir / "README.md", config, facts, result.baseline, result.final, summary,
                             task.card_usage())
            if (run_dir / "best").exists():
                shutil.copy(run_dir / "README.md", run_dir / "best" / "README.md")
            overfitting = watch_overfitting(read_records(run_dir / "metrics.jsonl"), config, state.stopped_early,
                                            rows=facts.get("validation", {}).get("rows"))
            if config.lora.enabled and config.lora.merge and (run_dir / "best").exists():
                merge_on_validation(task, fp32_model(accelerator, model), run_dir / "best")
            write_run_report(run_dir, config, summary, overfitting)
    return RunResult(run_dir, result.baseline, result.final, state.best_step, state.stopped_early,
                     state.train_seconds, state.samples / max(state.train_seconds, 1e-9), overfitting, config)


def _chain(*callbacks: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None] | None:
    """One record callback calling each given one in order (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def each(record: dict[str, Any]) -> None:
        for callback in given:
            callback(record)

    return each


def merge(run: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """`tunesmith merge`: folds a LoRA run's adapter (`best/`) into the weights in `best/merged/`.

    Rebuilds the base model from the run's config, loads the adapter, and checks that merged and
    adapter outputs agree on validation rows; returns that check (`max_abs_diff` and more).

    Raises:
        RunDirError: `run` is not a run directory with a LoRA adapter in `best/`.
    """
    from tunesmith.errors import RunDirError
    from tunesmith.strategies.lora import load_adapter, merge_on_validation

    run_dir = Path(run).expanduser()
    if not (run_dir / "best" / "adapter_config.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} is not a run trained with lora.enabled: expected config.yaml and "
                          "best/adapter_config.json in it")
    config, task = prepared(run_dir / "config.yaml", overrides)
    quiet_libraries()
    model = load_adapter(task.build_model(), run_dir / "best")  # the base model, then the run's adapter
    return merge_on_validation(task, model, run_dir / "best")


def _resume_point(run_dir: Path, config: RunConfig, task) -> tuple[Path | None, bool]:
    """The checkpoint to continue from (None: start fresh) and whether its epoch must restart."""
    from tunesmith.engine.checkpoint import find_resume_point
    from tunesmith.engine.run_dir import check_resume_config

    if config.resume is None:
        return None, False
    path = find_resume_point(run_dir / "checkpoints", config.resume)
    if path is None:
        log.info("resume: auto found no checkpoint in %s; starting from the beginning", run_dir)
        return None, False
    from tunesmith.engine.checkpoint import check_state_keys
    from tunesmith.engine.loop import STATE_KEYS

    saved = json.loads((path / "state.json").read_text(encoding="utf-8"))
    check_state_keys(path, saved, STATE_KEYS)  # before any weights load
    return path, check_resume_config(run_dir, config, saved.get("label_names", []), task.label_names)




def evaluate(model: str, data: str, overrides: list[str] | None = None, output: str | Path | None = None,
             by: str | None = None) -> dict[str, Any]:
    """Scores a model (folder, run directory or hub id) on a labelled file.

    A fine-tuned model is scored on the labels it was trained on (the file's labels must be among
    them). A source with no trained head for the task (a pre-trained encoder such as demo:minilm) is
    scored with a fresh head on the file's labels, seeded by `training.seed`: the pre-trained
    baseline that fine-tuning starts from, marked `"head": "untrained"` in the result.

    Args:
        output: also write the metrics to this `.json` file.
        by: a column of `data`; the result's `by` then holds the metrics for each of its values.

    Raises:
        ConfigError, DataError, ModelSourceError: problems the user can fix, all found before the
            model loads where they can be (a bad `output` path, a missing `by` column).
    """
    from tunesmith.engine.evaluation import collect_outputs, group_values, grouped_metrics, plain_json
    from tunesmith.tasks import ProbesFeatures, read_rows
    from tunesmith.prediction_file import check_output

    out = Path(output).expanduser() if output is not None else None
    if out is not None:
        check_output(out, (".json",))
    config = _inference_config(model, overrides, validation=data)
    task = _inference_task(config, labelled=True)
    rows = read_rows(task.eval_rows, "validation")
    groups = group_values(rows, by) if by else None
    model_obj, accelerator, loader = _inference_model(task, config, labelled=True)
    with _row_progress(len(rows), "evaluate") as progress:
        examples, loss = collect_outputs(model_obj, loader, task, accelerator, progress.advance)
    outputs = task.row_outputs(rows, examples)
    metrics = {"rows": len(rows), "loss": loss, **task.metrics(rows, outputs)}
    if isinstance(task, ProbesFeatures) and task.fresh_head:  # a source without a trained head
        metrics["head"] = "untrained"
    if groups is not None:
        metrics["by"] = {by: grouped_metrics(task, rows, outputs, groups)}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, default=plain_json) + "\n", encoding="utf-8")
    return metrics


def predict(model: str, data: str, output: str, overrides: list[str] | None = None) -> Path:
    """Writes a prediction for every row of `data` to CSV, JSONL or Parquet (or a task's vectors alone to
    .npy): per row its `line`, its columns as read, and the task's (`tunesmith.prediction_file`).

    Raises:
        DataError: `output` is not a writable .csv/.jsonl/.parquet (vectors: .npy) file name (checked
            before the model loads), or `data` cannot be read.
    """
    from tunesmith.engine.evaluation import collect_outputs
    from tunesmith.prediction_file import check_output, check_vectors, joined_records, task_records, write_records
    from tunesmith.tasks import read_rows

    out = Path(output).expanduser()
    check_output(out)
    config = _inference_config(model, overrides, validation=data)
    task = _inference_task(config, labelled=False)
    check_vectors(out, vectors := getattr(task, "vector_column", None))  # optional: the column a .npy file holds
    model_obj, accelerator, loader = _inference_model(task, config, labelled=False)
    rows = read_rows(task.eval_rows, "prediction")
    with _row_progress(len(rows), "predict") as progress:
        examples, _ = collect_outputs(model_obj, loader, task, accelerator, progress.advance)
    return write_records(out, joined_records(rows, task_records(task, rows, task.row_outputs(rows, examples), out)), vectors)


def _row_progress(total: int, label: str):
    from tunesmith.engine.progress import RowProgress

    return RowProgress(total, label)


def export_onnx(model: str, data: str, output: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Exports a fine-tuned model to ONNX and checks its outputs against PyTorch on the rows of `data`
    (for images: a folder of images or a CSV/JSONL of paths).

    Raises:
        DataError: `output` is not a writable .onnx file name (checked before the model loads).
        ExportError: the export fails or does not match PyTorch; no file is left at `output`.
    """
    from tunesmith.engine.accelerator import fp32_model
    from tunesmith.export.onnx import export_and_check
    from tunesmith.prediction_file import check_output

    out = Path(output).expanduser()
    check_output(out, (".onnx",))
    config = _inference_config(model, overrides, validation=data)
    task = _inference_task(config, labelled=False)
    model_obj, accelerator, loader = _inference_model(task, config, labelled=False)
    return export_and_check(task, fp32_model(accelerator, model_obj), loader, out)


def _inference_config(model: str, overrides: list[str] | None, validation: str) -> RunConfig:
    """The config to score or predict with: the run's task, that task's own section as trained (its
    column names, input settings) and the data section's column names and length, then `overrides`."""
    task = _saved_task(model)
    saved = _saved_config(model)
    trained = saved.get(task.replace("-", "_"))  # None for a source that is no run directory
    own = {task.replace("-", "_"): trained} if isinstance(trained, dict) else {}
    data = {k: v for k, v in (saved.get("data") or {}).items() if k in _TRAINED_DATA_KEYS}
    return with_inferred_task(load_config({"task": task, "model": {"source": model},
                                           "data": {**data, "validation": validation}, **own}, overrides))


# The data keys that describe the model's input as trained, carried to evaluate/predict/export.
_TRAINED_DATA_KEYS = ("text_column", "text_pair_column", "label_column", "max_length")


def with_inferred_task(config: RunConfig) -> RunConfig:
    """The config with the task its model source implies (a demo alias serves one modality), when the
    task was left at its default; a task the user set is kept (and a mismatch is refused when loading)."""
    from tunesmith.models.demos import inferred_task

    task = inferred_task(config.model.source)
    if task is None or task == config.task or config.task != type(config).model_fields["task"].default:
        return config
    log.info("task: %s (inferred from model.source %s)", task, config.model.source)
    return load_config(config.model_dump(exclude_unset=True) | {"task": task})


def _saved_task(model: str) -> str:
    """The task a run directory (or its `best/`) was trained for, or a demo alias serves; else the default task."""
    from tunesmith.models.demos import inferred_task

    task = _saved_config(model).get("task") or inferred_task(model)
    return task if isinstance(task, str) else RunConfig.model_fields["task"].default


def _saved_config(model: str) -> dict[str, Any]:
    """The resolved config a run directory (or its `best/`, or `best/merged/`) was trained with; empty
    for other sources."""
    import yaml

    path = Path(model).expanduser()
    run = path.parent.parent if path.name == "merged" and path.parent.name == "best" else path.parent
    for saved in (path / "config.yaml", run / "config.yaml" if path.name in ("best", "merged") else None):
        if saved is not None and saved.is_file():
            with contextlib.suppress(yaml.YAMLError, OSError, AttributeError):
                loaded = yaml.safe_load(saved.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and isinstance(loaded.get("task"), str):
                    return loaded
    return {}


def _inference_task(config: RunConfig, labelled: bool) -> Task:
    """The task with its rows read and checked (`eval_rows`), before any weights load."""
    from tunesmith.tasks import get_task

    task = get_task(config)
    if labelled:
        task.preflight()
    else:
        task.eval_rows = task.unlabelled_rows(str(config.data.validation))  # the --data file, always given here
    return task


def _inference_model(task: Task, config: RunConfig, labelled: bool):
    """(model, accelerator, loader) for `task.eval_rows`, the model loaded as saved."""
    from accelerate.utils import set_seed

    from tunesmith.engine.accelerator import make_accelerator
    from tunesmith.engine.batching import make_loader
    from tunesmith.tasks import read_rows

    quiet_libraries()
    set_seed(config.training.seed)  # a head that is not in the source is drawn as fine-tuning's baseline draws it
    model = task.load_trained()
    rows = read_rows(task.eval_rows, "validation")
    if labelled and task.label_names:  # causal-lm answers are free text, not classes
        from tunesmith.data.labelled import check_known_labels

        getattr(task, "check_labels", lambda r: check_known_labels(r, task.label_names))(rows)  # optional: masks
    accelerator = make_accelerator(config)
    data = task.dataset(rows, train=False, labelled=labelled)
    loader = make_loader(data, task.collate, config.training.per_device_eval_batch_size, 0, train=False,
                         lengths=task.lengths(data))
    model, loader = accelerator.prepare(model, loader)
    return model, accelerator, loader


def inspect(config: str | Path | dict | RunConfig | None, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Layer groups of the configured model with parameter counts and, per epoch, whether they train.

    Returns one dict per group: name, parameters, learning rate, and `trains_in_epoch` (a list
    of booleans for the first epochs, showing gradual unfreezing).
    """
    import math

    from tunesmith.strategies.freezing import trainable_from
    from tunesmith.strategies.learning_rates import group_learning_rates

    config = with_inferred_task(load_config(config, overrides))
    config, task = prepared(config, data=config.data.train is not None or config.data.validation is not None)
    task.label_names = task.label_names or ["0", "1"]  # no data: a two-label head stands in for the real one
    model = built(task, config)
    groups = task.layer_groups(model)
    s, t = config.strategy, config.training
    rates = group_learning_rates(len(groups), t.learning_rate, s.layer_lr_decay)
    epochs = max(1, math.ceil(t.num_train_epochs))
    lowest = [trainable_from(len(groups), s.freeze, s.gradual_unfreezing, e) for e in range(epochs)]
    return [
        {"group": g.name, "parameters": g.num_params, "learning_rate": lr,
         "trains_in_epoch": [i >= low and g.name not in s.freeze_groups for low in lowest]}
        for i, (g, lr) in enumerate(zip(groups, rates))
    ]
