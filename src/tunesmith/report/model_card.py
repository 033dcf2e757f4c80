"""The model card: a short README.md with the data, the settings and the before/after results.

Its front matter follows the Hugging Face model card: `base_model` is the hub id the weights came
from (a `demo:` alias names its upstream id; a local folder with no id is left out), and settings
read as the YAML the user wrote (`false`, not Python's `False`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.models.sources import base_model_id
from tunesmith.report.before_after import before_after_table, features_note, per_class_table, timing_note
from tunesmith.report.html import as_yaml


def write_model_card(path: Path, config: RunConfig, data: dict[str, Any], baseline: dict[str, Any],
                     final: dict[str, Any], facts: dict[str, Any], usage: str) -> None:
    t, s = config.training, config.strategy
    metrics = [m for m in config.task_schema.shown(final) if baseline.get(m) is not None]
    headers, cells = before_after_table(baseline, final, metrics, lower_is_better=config.task_schema.minimize)
    rows = "\n".join(f"| {' | '.join(row)} |" for row in [headers, ["---"] * len(headers), *cells])
    note = features_note(baseline)
    note = f"\n{note}\n" if note else ""
    class_headers, class_rows = per_class_table(final)  # none for regression, generation, recommendation
    per_class = "\n".join(f"| {' | '.join(row)} |" for row in [class_headers, ["---"] * len(class_headers), *class_rows]
                          ) if class_rows else ""
    labels = f"Labels: {', '.join(data['labels'])}\n\n" if data.get("labels") else ""
    calibrated = calibration_note(final)
    frozen = f", frozen by name: {', '.join(s.freeze_groups)}" if s.freeze_groups else ""
    timing = timing_note(facts)
    splits = "\n".join(
        f"- {split}: {info['rows']} {info.get('unit', 'rows')} from `{info['source']}`"
        + (f" ({info['skipped']} bad rows skipped)" if info.get("skipped") else "")
        for split, info in data.items() if isinstance(info, dict) and "rows" in info
    )
    base = base_model_id(config.model.source)
    tag = config.task_schema.pipeline_tag or config.task
    front = "\n".join([f"pipeline_tag: {tag}", *([f"base_model: {base}"] if base else []), "tags: [tunesmith]"])
    text = f"""---
{front}
---

# Fine-tuned {config.task} model

Fine-tuned with [tunesmith](https://pypi.org/project/tunesmith/) from `{config.model.source}`.

Load it without tunesmith:

{usage}

## Data

{labels}{splits}

## Settings

- learning rate {t.learning_rate}, layer LR decay {s.layer_lr_decay}, weight decay {t.weight_decay}
- batch size {t.per_device_train_batch_size} x {t.gradient_accumulation_steps} accumulation, {t.lr_scheduler_type} schedule
- freeze: {s.freeze}{frozen}, gradual unfreezing: {as_yaml(s.gradual_unfreezing)}
- label smoothing {t.label_smoothing_factor}, class weights: {t.class_weights}, seed {t.seed}
- best checkpoint chosen by validation {t.metric_for_best_model}; trained {facts['steps']} steps
  ({facts['epochs']:.2f} epochs) in {facts['train_seconds']:.0f} s{timing}{"; stopped early" if facts['stopped_early'] else ""}

## Results on the validation split

{rows}
{note}
{per_class}
{calibrated}"""
    path.write_text(text, encoding="utf-8")


def calibration_note(final: dict[str, Any]) -> str:
    """How to get the calibrated probabilities, where the task fitted a temperature (tasks/_calibration.py)."""
    if not final.get("temperature"):
        return ""
    t = final["temperature"]
    return (f"\nCalibrated probabilities: divide the logits by the temperature {t:.4f} (fitted on the validation "
            f"split, kept in `calibration.json`) before the softmax; expected calibration error "
            f"{final['ece']:.4f} raw, {final['ece_calibrated']:.4f} scaled, on that split.\n")
