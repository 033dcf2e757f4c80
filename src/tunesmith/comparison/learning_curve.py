"""The learning curve: the metric against the number of labelled rows, per arm, over seeds.

For each seed the training rows are cut into stratified, nested subsets
(`tunesmith.data.labelled.nested_fractions`): the 5% subset lies inside the 10% one, and so on,
so a point differs from the next only by added labels. Every subset is written to
`<compare>/data/` as JSONL and trained on with the same validation rows (written once), the
same config and the same number of epochs; repeat `s` uses seed `training.seed + s` for both
the subset and the training. `labels_saved` turns the curve into one sentence: with how few
labels fine-tuning matched training from scratch on all of them.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.comparison.arms import ArmResult, run_arm
from tunesmith.config import RunConfig
from tunesmith.data.labelled import nested_fractions, write_jsonl

from tunesmith.tasks import read_rows

if TYPE_CHECKING:
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")


@dataclass
class CurvePoint:
    """One trained arm at one fraction and seed."""

    arm: str
    fraction: float
    seed: int
    train_rows: int
    result: ArmResult


def learning_curve(config: RunConfig, task: Task, folder: Path, table: dict[str, ArmResult], quiet: bool) -> list[CurvePoint]:
    """Trains every curve arm at every fraction and seed; reuses the table's runs for (1.0, first seed).

    `task` is the config's task after `preflight()`: its training and validation rows are the
    ones every point is cut from and scored on.
    """
    c, label_column = config.compare, config.data.label_column
    validation = write_jsonl(read_rows(task.eval_rows, "validation"), label_column, folder / "data" / "validation.jsonl")
    points = []
    for repeat in range(c.seeds):
        seed = config.training.seed + repeat
        for fraction, rows in nested_fractions(read_rows(task.train_rows, "training"), c.fractions or [], seed).items():
            train = write_jsonl(rows, label_column, folder / "data" / f"train-seed{seed}-{fraction:g}.jsonl")
            data = _data_overrides(train, validation, seed)
            for arm in c.curve_arms:
                if repeat == 0 and fraction == 1.0 and arm in table:
                    result = table[arm]
                else:
                    log.info("learning curve: %s on %d rows (%g of the training rows), seed %d", arm, len(rows),
                             fraction, seed)
                    result = run_arm(arm, config, folder / "curve" / f"seed{seed}" / f"{fraction:g}" / arm, quiet, data)
                points.append(CurvePoint(arm, fraction, seed, len(rows), result))
    return points


def _data_overrides(train: Path, validation: Path, seed: int) -> list[str]:
    # Image paths in the rows were resolved against the working directory when they were read.
    return [f"data.train={json.dumps(str(train))}", f"data.validation={json.dumps(str(validation))}",
            "data.max_train_samples=null", "data.max_eval_samples=null",
            f"image_classification.image_root={json.dumps(os.getcwd())}", f"training.seed={seed}"]


def summarize(points: list[CurvePoint], metric: str) -> dict[str, list[dict[str, Any]]]:
    """{arm: [{fraction, train_rows, mean, std, values}, ...]} in increasing fraction."""
    curve: dict[str, list[dict[str, Any]]] = {}
    for arm in dict.fromkeys(p.arm for p in points):
        for fraction in sorted({p.fraction for p in points if p.arm == arm}):
            at = [p for p in points if p.arm == arm and p.fraction == fraction]
            values = [p.result.metrics[metric] for p in at]
            curve.setdefault(arm, []).append({
                "fraction": fraction, "train_rows": at[0].train_rows, "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values})
    return curve


def labels_saved(curve: dict[str, list[dict[str, Any]]], metric: str, greater: bool) -> str | None:
    """One sentence: the fewest labels with which fine-tuning matched scratch on the most labels."""
    if "finetune" not in curve or "scratch" not in curve:
        return None
    target = curve["scratch"][-1]
    better = (lambda a, b: a >= b) if greater else (lambda a, b: a <= b)
    match = next((p for p in curve["finetune"] if better(p["mean"], target["mean"])), None)
    scratch = f"training from scratch on {target['train_rows']:,} labelled rows ({metric} {target['mean']:.4f})"
    if match is None:
        return f"Fine-tuning did not reach {scratch} at any fraction tried."
    fewer = target["train_rows"] / match["train_rows"]
    smallest = ", the smallest fraction tried" if match is curve["finetune"][0] else ""
    if fewer < 1.5:
        return f"Fine-tuning matched {scratch} only with {match['train_rows']:,} labelled rows ({metric} {match['mean']:.4f})."
    return (f"Fine-tuning on {match['train_rows']:,} labelled rows ({metric} {match['mean']:.4f}{smallest}) "
            f"matched {scratch}: {fewer:.3g}x fewer labels.")
