"""The arms of a comparison: what each changes in the user's config, and running one.

- `pretrained`: the model as it is, before any training: the `baseline` record of the fine-tune
  (or probe) run, which evaluates the same model with the same seed before its first step. Its
  head is the source's own when the source has one for these labels (zero-shot), otherwise new.
- `probe`: only the head trains (`strategy.freeze: head_only`), at `compare.probe_learning_rate`.
- `finetune`: the config as the user wrote it.
- `scratch`: the same architecture from random initialization (`model.pretrained: false`), all
  groups trained at one rate (`compare.scratch_learning_rate`, else the fine-tune's).
- `probe_then_finetune`: the config's fine-tune, starting from the trained probe (LP-FT).
Every run gets the same data config, so the seeded, stratified held-out split is the same.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.errors import RunDirError
from tunesmith.report.overfitting import read_records

ARM_ORDER = ("pretrained", "probe", "finetune", "scratch", "probe_then_finetune")
ARM_TITLES = {
    "pretrained": "pre-trained, as it is",
    "probe": "probe (head only, frozen backbone)",
    "finetune": "fine-tune (this config)",
    "scratch": "same architecture from scratch",
    "probe_then_finetune": "probe, then fine-tune",
}


@dataclass
class ArmResult:
    """One row of the comparison: an arm's validation metrics and what it cost."""

    arm: str
    metrics: dict[str, Any]
    train_seconds: float | None
    wall_seconds: float | None
    trainable_params: int
    run_dir: Path | None = None
    best_epoch: float | None = None
    overfitting: str | None = None
    seed: int | None = None
    seed_runs: list[ArmResult] = field(default_factory=list)
    """With `compare.arm_seeds` > 1, the runs this row is the mean of (the first is the row's run_dir)."""

    @property
    def title(self) -> str:
        return ARM_TITLES[self.arm]


def arm_overrides(arm: str, config: RunConfig, start_from: Path | None = None) -> list[str]:
    """The `--set` overrides that turn the user's config into this arm's run."""
    c = config.compare
    if arm == "probe":
        return ["strategy.freeze=head_only", "strategy.gradual_unfreezing=false",
                f"training.learning_rate={c.probe_learning_rate}"]
    if arm == "scratch":
        rate = c.scratch_learning_rate or config.training.learning_rate
        # Every weight trains from random initialization: LoRA adapters on a frozen random backbone would
        # train almost nothing, so the from-scratch arm is a full training of the architecture.
        return ["model.pretrained=false", "strategy.freeze=none", "strategy.gradual_unfreezing=false",
                "strategy.layer_lr_decay=1.0", f"training.learning_rate={rate}", "lora.enabled=false"]
    if arm == "probe_then_finetune":
        return [f"model.source={json.dumps(str(start_from))}", "model.pretrained=true"]
    return []


def run_arm(arm: str, config: RunConfig, folder: Path, quiet: bool, extra: list[str] | None = None,
            start_from: ArmResult | None = None) -> ArmResult:
    """Trains one arm into `folder` (for `probe_then_finetune`, from the probe in `start_from`)."""
    from tunesmith.run import finetune

    source = start_from.run_dir if start_from is not None else None
    overrides = arm_overrides(arm, config, source) + [f"output_dir={json.dumps(str(folder))}", "resume=null"]
    started = time.perf_counter()
    result = finetune(config, overrides + list(extra or []), quiet=quiet)
    wall = time.perf_counter() - started
    records = read_records(result.run_dir / "metrics.jsonl")
    evals = [r for r in records if r["phase"] == "eval"]
    arm_result = ArmResult(
        arm, arm_metrics(result.final), result.train_seconds, wall,
        max((r.get("trainable_params", 0) for r in evals), default=0), result.run_dir,
        next((r["epoch"] for r in evals if r["step"] == result.best_step), None), result.overfitting)
    if start_from is not None:  # the probe stage is part of this arm's cost
        arm_result.train_seconds = (arm_result.train_seconds or 0) + (start_from.train_seconds or 0)
        arm_result.wall_seconds = (arm_result.wall_seconds or 0) + (start_from.wall_seconds or 0)
    return arm_result


def mean_over_seeds(runs: list[ArmResult]) -> ArmResult:
    """One row for an arm trained with several seeds: the mean of every scalar metric, `<metric>_std`
    beside it, and the mean time. Lists and tables (per_class, confusion_matrix), the best epoch and
    the over-fitting note stay the first seed's: a mean confusion matrix is no one's."""
    first = runs[0]
    if len(runs) == 1:
        return first
    metrics = dict(first.metrics)
    for key in first.metrics:
        values = [float(v) for r in runs if isinstance(v := r.metrics.get(key), int | float) and not isinstance(v, bool)]
        if len(values) == len(runs):
            metrics[key], metrics[f"{key}_std"] = statistics.fmean(values), statistics.stdev(values)
    return ArmResult(first.arm, metrics, _mean([r.train_seconds for r in runs]), _mean([r.wall_seconds for r in runs]),
                     first.trainable_params, first.run_dir, first.best_epoch, first.overfitting, first.seed, list(runs))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def pretrained_row(trained: ArmResult) -> ArmResult:
    """The `pretrained` row: the baseline evaluation logged by a trained arm before its first step."""
    if trained.run_dir is None:
        raise RunDirError(f"the {trained.arm} arm left no run directory to read its baseline from")
    records = read_records(trained.run_dir / "metrics.jsonl")
    baseline = next(r for r in records if r["phase"] == "baseline")
    return ArmResult("pretrained", arm_metrics(baseline), None, None, 0, trained.run_dir)


def arm_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a record, without bookkeeping (step, time, learning rate ...)."""
    from tunesmith.report.run_report import NOT_METRICS

    return {k: v for k, v in record.items() if k not in NOT_METRICS and k != "phase"}
