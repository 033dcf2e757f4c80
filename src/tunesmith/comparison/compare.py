"""`compare`: run the arms (and the learning curve) on the same splits and budget, then sum up.

The data is read and checked once, before any weights load; each arm is then an ordinary
`tunesmith.finetune` run in `<output_dir>/compare/<arm>/` with its own run report (with
`compare.arm_seeds` > 1, the further training seeds in `compare/seeds/seed<seed>/<arm>/`), and the
summary (`compare.json`, `summary.md`, `plots/`, `report.html`) goes in `<output_dir>/compare/`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.comparison.arms import ARM_ORDER, ARM_TITLES, ArmResult, mean_over_seeds, pretrained_row, run_arm
from tunesmith.comparison.learning_curve import CurvePoint, labels_saved, learning_curve, summarize
from tunesmith.comparison.reuse import reusable_finetune
from tunesmith.comparison.summary import row_dict, shown_metrics, write_summary
from tunesmith.comparison.training_curve import training_curves
from tunesmith.config import RunConfig
from tunesmith.engine.run_dir import cleared_outputs

log = logging.getLogger("tunesmith")

OUTPUTS = (*ARM_ORDER, "seeds", "curve", "data", "plots", "compare.json", "summary.md", "report.html")


@dataclass
class CompareResult:
    """What `compare` measured: one row per arm (the mean over `arm_seeds`), the training curve and,
    with fractions, the learning curve."""

    folder: Path
    metric: str
    rows: list[ArmResult]
    curve: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    points: list[CurvePoint] = field(default_factory=list)
    labels_saved: str | None = None
    training_curve: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    curve_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    threshold: float | None = None

    @property
    def report(self) -> Path:
        return self.folder / "report.html"

    def row(self, arm: str) -> ArmResult:
        return next(r for r in self.rows if r.arm == arm)


def compare(config: str | Path | dict | RunConfig, overrides: list[str] | None = None,
            fractions: list[float] | None = None, seeds: int | None = None, arms: list[str] | None = None,
            quiet: bool = False, arm_seeds: int | None = None) -> CompareResult:
    """Compares the pre-trained model, a probe, the fine-tune and training from scratch on the user's data.

    Args:
        config: The run config (path, dict or RunConfig); its `compare` section sets the arms.
        overrides: `key=value` overrides, as for `finetune`.
        fractions, seeds, arms, arm_seeds: Override `compare.fractions`, `compare.seeds`, `compare.arms`,
            `compare.arm_seeds`.

    Raises:
        ConfigError, DataError, ModelSourceError: as `finetune`.
        RunDirError: `<output_dir>/compare` already holds a comparison and overwriting is off.
    """
    from tunesmith.recipe import prepared

    extra = [f"compare.{key}={json.dumps(value)}" for key, value in
             (("fractions", fractions), ("seeds", seeds), ("arms", arms), ("arm_seeds", arm_seeds))
             if value is not None]
    config, task = prepared(config, list(overrides or []) + extra)  # bad data fails here, before any weights load
    folder = cleared_outputs(Path(config.output_dir) / "compare", OUTPUTS, config.overwrite_output_dir, "a comparison",
                             "choose another output_dir or set overwrite_output_dir: true (--overwrite)")
    metric = config.metric
    runs = _run_arms(config, folder, quiet, task.describe())
    first = {arm: seeds[0] for arm, seeds in runs.items()}
    table = {arm: mean_over_seeds(seeds) for arm, seeds in runs.items()}
    if "pretrained" in config.compare.arms:
        table["pretrained"] = pretrained_row(first.get("finetune") or first["probe"])
    result = CompareResult(folder, metric, [table[a] for a in ARM_ORDER if a in table], threshold=config.compare.threshold)
    result.training_curve, result.curve_summary = training_curves(
        {a: [r.run_dir for r in runs[a] if r.run_dir] for a in ARM_ORDER if a in runs}, metric,
        config.compare.threshold, config.greater_is_better)
    if config.compare.fractions:
        result.points = learning_curve(config, task, folder, first, quiet)
        result.curve = summarize(result.points, metric)
        result.labels_saved = labels_saved(result.curve, metric, config.greater_is_better)
    _write(result, config)
    return result


def _run_arms(config: RunConfig, folder: Path, quiet: bool, facts: dict[str, Any]) -> dict[str, list[ArmResult]]:
    """Trains the table's arms, every training seed: {arm: [run per seed]}. `pretrained` is read
    later from the fine-tune's (or probe's) baseline; the first seed's fine-tune is the one `train`
    left in output_dir when that matches (comparison/reuse.py)."""
    wanted, n_seeds = config.compare.arms, config.compare.arm_seeds
    order: list[str] = [a for a in ("probe", "finetune", "scratch") if a in wanted]
    if "probe_then_finetune" in wanted and "probe" not in order:
        order.insert(0, "probe")  # its first stage
    if "pretrained" in wanted and not {"probe", "finetune"} & set(order):
        order.insert(0, "finetune")  # the baseline evaluation comes with a trained arm
    order += ["probe_then_finetune"] if "probe_then_finetune" in wanted else []
    runs: dict[str, list[ArmResult]] = {}
    for i in range(n_seeds):
        seed = config.training.seed + i
        for j, arm in enumerate(order):
            log.info("compare %d/%d: %s%s", i * len(order) + j + 1, n_seeds * len(order), ARM_TITLES[arm],
                     f", seed {seed}" if n_seeds > 1 else "")
            start = runs["probe"][i] if arm == "probe_then_finetune" else None
            reused = reusable_finetune(config, facts) if arm == "finetune" and i == 0 else None
            where = folder / arm if i == 0 else folder / "seeds" / f"seed{seed}" / arm
            result = reused or run_arm(arm, config, where, quiet, [f"training.seed={seed}"], start_from=start)
            result.seed = seed
            runs.setdefault(arm, []).append(result)
    return runs


def _write(result: CompareResult, config: RunConfig) -> None:
    from tunesmith.report.compare_plots import arms_plot, curve_plot, training_curve_plot

    rows = [row_dict(r) for r in result.rows]
    metrics = shown_metrics(result.rows[0].metrics, result.metric)
    plots = {"arms": arms_plot(rows, result.metric, result.folder / "plots" / "arms.png")}
    baseline = next((r.metrics.get(result.metric) for r in result.rows if r.arm == "pretrained"), None)
    if result.curve:
        plots["learning_curve"] = curve_plot(result.curve, result.metric, baseline,
                                             result.folder / "plots" / "learning_curve.png")
    if result.training_curve:
        plots["training_curve"] = training_curve_plot(result.training_curve, result.metric, config.compare.threshold,
                                                      result.folder / "plots" / "training_curve.png")
    points = [{"arm": p.arm, "fraction": p.fraction, "seed": p.seed, "train_rows": p.train_rows,
               "metrics": p.result.metrics, "train_seconds": p.result.train_seconds,
               "run_dir": str(p.result.run_dir)} for p in result.points]
    summary = {"task": config.task, "model": config.model.source, "metric": result.metric,
               "greater_is_better": config.greater_is_better, "seeds": config.compare.seeds, "arms": rows,
               "curve": result.curve, "curve_points": points, "labels_saved": result.labels_saved,
               "arm_seeds": config.compare.arm_seeds, "threshold": config.compare.threshold,
               "training_curve": result.training_curve, "curve_summary": result.curve_summary}
    write_summary(result.folder, summary, metrics, plots)
