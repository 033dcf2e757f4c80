"""The run report: `report.html` in every run directory, one static page that reads offline.

Sections: the run at a glance (data, model, settings, the full config), the pre-trained model
(and, under a new head, a linear probe of its features: report/before_after.py) against the
fine-tuned one, the overfitting watch, the curves (loss, metrics, learning rate per
layer group, which groups trained when), the confusion matrix, the validation examples the model
got most wrong, and the per-class table. It is built from what the run directory already holds
(`metrics.jsonl`, `data.json`, `predictions_validation.jsonl`, `config.yaml`); the plots are also
saved as PNG files under `plots/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.report.before_after import before_after_table, features_note, per_class_table, starting_point, timing_note
from tunesmith.report.html import Raw, as_yaml, esc, image, page, signed, table, thumbnail
from tunesmith.report.overfitting import read_records
from tunesmith.report.run_plots import run_plots
from tunesmith.report.validation_size import small_validation_message

# Record keys that are bookkeeping, not metrics.
NOT_METRICS = {"step", "epoch", "time", "train_loss", "lr", "best_step", "nan_skips", "trainable_params"}
WORST_SHOWN = 10


def scalar_metrics(record: dict[str, Any], first: str | None = None) -> list[str]:
    """The numeric metric names of a record (`first` leading), e.g. accuracy, macro_f1, loss."""
    names = [k for k, v in record.items() if k not in NOT_METRICS and isinstance(v, int | float)
             and not isinstance(v, bool)]
    return sorted(names, key=lambda k: (k != first, k == "loss"))


def write_run_report(run_dir: Path, config: RunConfig, summary: dict[str, Any], overfitting: str | None) -> Path:
    """Writes `report.html` and `plots/*.png` for a finished run; returns the report's path."""
    records = read_records(run_dir / "metrics.jsonl")
    baseline = next((r for r in records if r["phase"] == "baseline"), {})
    final = next((r for r in records if r["phase"] == "final"), {})
    metrics = scalar_metrics(final, config.training.metric_for_best_model)
    plots = run_plots(records, run_dir / "plots", [m for m in metrics if m != "loss"])
    data = json.loads((run_dir / "data.json").read_text(encoding="utf-8")) if (run_dir / "data.json").exists() else {}
    sections = [
        ("run", "The run", _run_section(run_dir, config, data, summary)),
        ("results", "Before and after fine-tuning", _small_validation(data, config)
         + _results_section(baseline, final, metrics, config)),
        ("overfitting", "Overfitting watch", _overfitting_section(overfitting)),
        ("curves", "Curves", _curves_section(plots)),
        ("confusion-matrix", "Confusion matrix", _plot_or_note(plots, "confusion_matrix", "no confusion matrix")),
        ("worst-examples", "Worst-predicted validation examples",
         _worst_section(run_dir / "predictions_validation.jsonl")),
        ("per-class", "Per class", _per_class_section(final)),
    ]
    subtitle = f"{config.task} · {config.model.source} · {run_dir}"
    path = run_dir / "report.html"
    path.write_text(page(f"tunesmith run report: {run_dir.name}", subtitle, sections), encoding="utf-8")
    return path


def _run_section(run_dir: Path, config: RunConfig, data: dict[str, Any], summary: dict[str, Any]) -> str:
    t, s, m = config.training, config.strategy, config.model
    rows: list[list[Any]] = [
        ["model", f"{m.source}" + ("" if m.pretrained else " (random initialization, model.pretrained: false)")],
        ["labels", ", ".join(data.get("labels", []))],
    ]
    for split in ("train", "validation"):
        if isinstance(data.get(split), dict):
            info = data[split]
            rows.append([f"{split} rows", f"{info['rows']:,} from {info['source']}"
                         + (f" ({info['skipped']} skipped)" if info.get("skipped") else "")])
    rows += [
        ["trained", f"{summary.get('steps', 0)} steps, {summary.get('epochs', 0):.2f} epochs, "
                    f"{summary.get('train_seconds', 0):.0f} s"
                    + timing_note(summary)
                    + ("; stopped early" if summary.get("stopped_early") else "")],
        ["learning rate", f"{t.learning_rate:g} (head), layer decay {s.layer_lr_decay:g}, {t.lr_scheduler_type} schedule"],
        ["frozen", f"freeze: {s.freeze}, gradual unfreezing: {as_yaml(s.gradual_unfreezing)}"],
        ["batch", f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps} accumulation"],
        ["regularization", f"weight decay {t.weight_decay:g}, label smoothing {t.label_smoothing_factor:g}, "
                           f"dropout {m.dropout if m.dropout is not None else 'as pre-trained'}"],
        ["best model by", f"validation {t.metric_for_best_model}, early stopping patience "
                          f"{as_yaml(t.early_stopping_patience)}"],
        ["seed", t.seed],
    ]
    saved = run_dir / "config.yaml"
    full = saved.read_text(encoding="utf-8") if saved.exists() else ""
    return table(["", ""], rows, numeric_from=9) + (
        f"\n<details><summary>full config (config.yaml)</summary><pre>{esc(full)}</pre></details>" if full else "")


def _results_section(baseline: dict[str, Any], final: dict[str, Any], metrics: list[str], config: RunConfig) -> str:
    if not final:
        return "<p>The run has no final evaluation.</p>"
    headers, rows = before_after_table(baseline, final, metrics, signed, config.task_schema.minimize)
    note = (f"<p>Validation split, {config.training.metric_for_best_model} selects the best model. "
            f"<i>{esc(starting_point(baseline))}</i> is the model before any training (with a new, untrained head "
            "where the source has none for these labels); <i>fine-tuned</i> is the best checkpoint, kept in best/.</p>")
    features = features_note(baseline)
    return note + (f"<p>{esc(features)}</p>" if features else "") + table(headers, rows)


def _small_validation(data: dict[str, Any], config: RunConfig) -> str:
    message = small_validation_message(data, config.metric)
    return f'<p class="warn">{esc(message)}</p>' if message else ""


def _overfitting_section(message: str | None) -> str:
    if message:
        return f'<p class="warn">{esc(message)}</p>'
    return ('<p class="ok">No overfitting seen: no evaluation after the best one had both a worse validation '
            "metric (by more than one row's worth or its binomial noise) and a higher validation loss, with a "
            "wider gap between validation and training loss.</p>")


def _curves_section(plots: dict[str, Path]) -> str:
    captions = {
        "loss": ("Training loss (per logging step) and validation loss (per evaluation)", ""),
        "metrics": ("Validation metrics per evaluation", "epoch 0 is the pre-trained model; the dashed line marks the best"),
        "learning_rates": ("Learning rate of each layer group", "warm-up, decay, and the per-group factors"),
        "trainable_groups": ("Which layer groups trained at each evaluation", "frozen groups stay as pre-trained"),
        "reliability": ("Reliability diagram", "share of correct predictions per confidence bin; on the diagonal is calibrated"),
    }
    parts = [image(plots[name], alt, caption) for name, (alt, caption) in captions.items() if name in plots]
    if not parts:
        return "<p>No curves: the run logged no evaluations.</p>"
    return '<div class="grid">\n' + "\n".join(parts) + "\n</div>"


def _plot_or_note(plots: dict[str, Path], name: str, note: str) -> str:
    return image(plots[name], name.replace("_", " ")) if name in plots else f"<p>{esc(note)}</p>"


def _worst_section(path: Path) -> str:
    if not path.exists():
        return "<p>No validation predictions were saved.</p>"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pictures = [r[k] for r in records for k in r if k.endswith("_image") and r[k] and Path(r[k]).is_file()]
    if pictures:  # a task that draws its predictions (segmentation: image, true mask, predicted mask)
        return (f"<p>The first {len(pictures)} validation images, each beside its true and predicted labels; every "
                f"row's prediction is in {esc(path.name)}.</p>" + "".join(image(Path(p), Path(p).name) for p in pictures))
    if records and "predicted_label" not in records[0]:  # tagging tasks: one prediction per word, not per row
        return f"<p>Per-row predictions of the best model are in {esc(path.name)}.</p>"
    for r in records:
        r["_p_true"] = r.get(f"prob_{r['true_label']}", 0.0)
    wrong = sum(r["predicted_label"] != r["true_label"] for r in records)
    worst = sorted(records, key=lambda r: r["_p_true"])[:WORST_SHOWN]
    inputs = [k for k in worst[0] if k not in ("line", "true_label", "predicted_label", "score", "_p_true")
              and not k.startswith("prob_")] if worst else []
    root = _image_root([r[k] for r in records for k in inputs])
    rows = [[r["line"], *[_input_cell(r[k], root) for k in inputs], r["true_label"], r["predicted_label"],
             f"{r['_p_true']:.3f}"]
            for r in worst]
    note = (f"<p>{wrong} of {len(records)} validation rows are misclassified by the best model. These are the "
            f"{len(worst)} with the lowest probability on their true label (line: where the row is in its file).</p>")
    return note + table(["line", *inputs, "true", "predicted", "p(true)"], rows, numeric_from=len(inputs) + 3)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _image_root(values: list[Any]) -> str | None:
    """The folder all image paths of the validation rows share (the data folder), to show paths from."""
    paths = [os.path.abspath(str(v)) for v in values if Path(str(v)).suffix.lower() in IMAGE_SUFFIXES]
    return os.path.dirname(os.path.commonpath(paths)) if len(paths) == 1 else (os.path.commonpath(paths) if paths else None)


def _input_cell(value: Any, root: str | None = None) -> Any:
    text = str(value)
    if Path(text).suffix.lower() in IMAGE_SUFFIXES:
        thumb = thumbnail(text)
        if thumb:
            # `ants/0.png`, not `0.png`: the same file name recurs in every class folder.
            shown = os.path.relpath(os.path.abspath(text), root) if root else Path(text).name
            return Raw(f"{thumb}<br><small>{esc(shown)}</small>")
    return Raw(f'<div class="text">{esc(text[:400] + ("…" if len(text) > 400 else ""))}</div>')


def _per_class_section(final: dict[str, Any]) -> str:
    headers, rows = per_class_table(final)
    return table(headers, rows) if rows else "<p>No per-class results.</p>"
