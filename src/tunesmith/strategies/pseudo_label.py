"""Self-training with pseudo-labels (`strategy.pseudo_label`): unlabelled rows the model is sure of, trained on.

Labels are scarce and unlabelled rows plentiful. One round of self-training (pseudo-labelling, Lee
2013; the teacher-student round of Xie et al. 2020 without the noise) in three stages, run by
`tunesmith train` when `strategy.pseudo_label.data` names the unlabelled rows:

1. labelled only: the config as written, into `<output_dir>/self_train/labelled_only/`;
2. pseudo-labels: that run's best model predicts every unlabelled row with its calibrated
   probabilities (the temperature fitted on validation, tasks/_calibration.py), and the rows whose
   top probability reaches `threshold` are written to `<output_dir>/self_train/pseudo_labels.jsonl`
   (one line each: the row's `line` in the unlabelled file, its `label`, the `probability`, its inputs);
3. self-trained: the config again, from the same pre-trained source, on the labelled rows plus those,
   into `output_dir` itself. Its `config.yaml` names the file in `strategy.pseudo_label.labels`, so
   the run can be repeated exactly, and a reviewed or edited file can be trained on the same way.

`resume: auto` continues an interrupted self-training from the stage it reached.

`<output_dir>/self_train/summary.json` holds both runs' final metrics on the same validation rows and
the rows added per label. Single-label classifiers only (text, image, audio): they carry a calibration.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.data.labelled import LabelledRows, duplicates_and_leaks
from tunesmith.errors import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunesmith.config import RunConfig
    from tunesmith.run import RunResult
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")

FOLDER = "self_train"
LABELS_FILE = "pseudo_labels.jsonl"


def check_pseudo_label(config: RunConfig, task: Task) -> None:
    """Refuses `strategy.pseudo_label` on a task without calibrated class probabilities."""
    p = config.strategy.pseudo_label
    if (p.data or p.labels) and getattr(task, "calibration", None) is None:
        raise ConfigError([f"strategy.pseudo_label: self-training labels rows by the model's calibrated class "
                           f"probabilities; {config.task} has none (text-, image- and audio-classification do); "
                           "remove strategy.pseudo_label"])
    if p.labels and not p.data:
        raise ConfigError(["strategy.pseudo_label.labels: needs strategy.pseudo_label.data, the unlabelled file "
                           "its lines refer to"])


def self_train(config: RunConfig, quiet: bool, on_record: Callable[[dict[str, Any]], None] | None) -> RunResult:
    """The three stages above; returns the self-trained run, its `self_training` summary filled in."""
    from tunesmith.engine.run_dir import cleared_outputs, prepare_run_dir
    from tunesmith.run import finetune
    from tunesmith.tasks import get_task

    check_pseudo_label(config, get_task(config))  # the first stage runs without strategy.pseudo_label.data
    p = config.strategy.pseudo_label
    folder = Path(config.output_dir) / FOLDER
    labels_path, summary_path = folder / LABELS_FILE, folder / "summary.json"
    if config.resume is None:
        prepare_run_dir(config.output_dir, config.overwrite_output_dir)  # the last stage's, refused before the first trains
        cleared_outputs(folder, ("labelled_only", LABELS_FILE, "summary.json"), config.overwrite_output_dir,
                        "a self-training run", "choose another output_dir, set overwrite_output_dir: true (--overwrite), "
                        "or continue it with resume: auto (--resume)")
    if config.resume is not None and labels_path.is_file() and summary_path.is_file():
        log.info("self-training: stages 1 and 2 are done (%s); resuming the last stage", labels_path)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    else:
        log.info("self-training 1/3: labelled rows only")
        first = finetune(config, [f"output_dir={json.dumps(str(folder / 'labelled_only'))}",
                                  "strategy.pseudo_label.data=null", f"resume={json.dumps(config.resume)}"],
                         quiet=quiet, on_record=on_record)
        if first.best_model_dir is None:
            raise DataError(f"{first.run_dir}: the labelled-only run saved no best model to pseudo-label with "
                            "(no evaluation ran); give it a validation split and at least one step")
        log.info("self-training 2/3: pseudo-labelling %s at calibrated probability >= %g", p.data, p.threshold)
        chosen, pool, highest = pseudo_labels(str(first.best_model_dir), str(p.data), p.threshold)
        if not chosen:
            raise DataError(f"strategy.pseudo_label: no row of {p.data} reached calibrated probability {p.threshold:g} "
                            f"(the highest was {highest:.3f}), so self-training would only repeat the labelled-only "
                            f"run ({first.run_dir}); lower strategy.pseudo_label.threshold")
        labels_path.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
        summary = {"threshold": p.threshold, "unlabelled_rows": pool, "pseudo_labelled_rows": len(chosen),
                   "pseudo_label_counts": dict(Counter(r["label"] for r in chosen)), "metric": config.metric,
                   "labelled_only": {"run_dir": str(first.run_dir), "final": first.final}}
        write_json(summary_path, summary)  # before the last stage, so a resumed one finds it
        log.info("self-training 3/3: %d labelled + %d pseudo-labelled rows (of %d unlabelled)",
                 first_rows(first), len(chosen), pool)
    final = finetune(config, [f"strategy.pseudo_label.labels={json.dumps(str(labels_path))}"], quiet=quiet,
                     on_record=on_record)
    summary["self_trained"] = {"run_dir": str(final.run_dir), "final": final.final}
    final.self_training = write_json(summary_path, summary)
    return final


def write_json(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Writes `summary` to `path` and returns it as read back (plain JSON values)."""
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


def first_rows(result: RunResult) -> int:
    facts = json.loads((result.run_dir / "data.json").read_text(encoding="utf-8"))
    return int(facts.get("train", {}).get("rows", 0))


def pseudo_labels(model: str, data: str, threshold: float) -> tuple[list[dict[str, Any]], int, float]:
    """The rows of `data` whose top calibrated probability under `model` is at least `threshold`, as
    pseudo-label records; how many rows `data` had; the highest top probability among them."""
    from tunesmith.engine.evaluation import collect_outputs
    from tunesmith.run import _inference_config, _inference_model, _inference_task
    from tunesmith.tasks import read_rows

    config = _inference_config(model, None, validation=data)
    task = _inference_task(config, labelled=False)
    net, accelerator, loader = _inference_model(task, config, labelled=False)
    rows = read_rows(task.eval_rows, "prediction")
    examples, _ = collect_outputs(net, loader, task, accelerator)
    predictions = task.predictions(rows, task.row_outputs(rows, examples))
    chosen = [{"line": rows.lines[i], "label": p["predicted_label"], "probability": p["score"],
               **{c: _plain(v[i]) for c, v in rows.inputs.items()}}
              for i, p in enumerate(predictions) if p["score"] >= threshold]
    return chosen, len(rows), max((p["score"] for p in predictions), default=0.0)


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def with_pseudo_labels(task: Task, config: RunConfig) -> None:
    """Adds the rows of `strategy.pseudo_label.labels` to the task's training rows (after preflight).

    Raises:
        DataError: the file is unreadable, a line names no row of the unlabelled file, or a label is
            not one of the task's.
    """
    p = config.strategy.pseudo_label
    path = Path(str(p.labels)).expanduser()
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a pseudo-label file (JSON lines with `line` and `label`): {e}; "
                        "delete strategy.pseudo_label.labels to pseudo-label afresh") from e
    pool = task.unlabelled_rows(str(p.data))
    where = {line: i for i, line in enumerate(pool.lines)}
    known = set(task.label_names)
    picked, labels = [], []
    for n, record in enumerate(records, start=1):
        line, label = (record.get("line"), record.get("label")) if isinstance(record, dict) else (None, None)
        if line not in where:
            raise DataError(f"{path}, line {n}: `line` {line!r} is no row of {p.data}; pseudo-labels refer to the "
                            "rows of strategy.pseudo_label.data, as self-training wrote them")
        if label not in known:
            raise DataError(f"{path}, line {n}: label {label!r} is not one of the task's labels "
                            f"({', '.join(task.label_names)}); correct it or delete the line")
        picked.append(where[line])
        labels.append(label)
    added = pool.subset(picked)
    added.labels = labels
    if task.eval_rows is not None:  # pseudo-labelled copies of validation rows would flatter its score
        duplicates_and_leaks(added, task.eval_rows)
    task.train_rows = joined(task.train_rows, added, f"{p.data} (pseudo-labelled, {path.name})")
    log.info("training on %d pseudo-labelled rows of %s besides the labelled ones", len(added), p.data)


def joined(train: LabelledRows | None, added: LabelledRows, source: str) -> LabelledRows:
    """The training rows with the pseudo-labelled ones after them; columns both sides have are kept."""
    if train is None:
        raise ConfigError(["strategy.pseudo_label: needs data.train, the labelled rows"])
    missing = sorted(set(train.inputs) - set(added.inputs))
    if missing:
        raise DataError(f"{source}: no input column {', '.join(missing)}; the unlabelled rows need the columns the "
                        "labelled ones have")
    columns = {c: train.columns[c] + added.columns[c] for c in train.columns if c in added.columns}
    return LabelledRows(source=f"{train.source} + {source}",
                        inputs={c: train.inputs[c] + added.inputs[c] for c in train.inputs},
                        labels=train.labels + added.labels, lines=train.lines + added.lines,
                        skipped=train.skipped, notes=train.notes, columns=columns)
