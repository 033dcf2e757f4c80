"""`compare`: run the arms (and the learning curve) on the same splits and budget, then sum up.

The data is read and checked once, before any weights load; each arm is then an ordinary
`tunesmith.finetune` run in `<output_dir>/compare/<arm>/` with its own run report, and the
summary (`compare.json`, `summary.md`, `plots/`, `report.html`) goes in `<output_dir>/compare/`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.comparison.arms import ARM_ORDER, ARM_TITLES, ArmResult, pretrained_row, run_arm
from tunesmith.comparison.learning_curve import CurvePoint, labels_saved, learning_curve, summarize
from tunesmith.comparison.reuse import reusable_finetune
from tunesmith.comparison.summary import row_dict, write_summary
from tunesmith.config import RunConfig
from tunesmith.engine.run_dir import cleared_outputs

log = logging.getLogger("tunesmith")

OUTPUTS = (*ARM_ORDER, "curve", "data", "plots", "compare.json", "summary.md", "report.html")


@dataclass
class CompareResult:
    """What `compare` measured: one row per arm and, with fractions, the learning curve."""

    folder: Path
    metric: str
    rows: list[ArmResult]
    curve: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    points: list[CurvePoint] = field(default_factory=list)
    labels_saved: str | None = None

    @property
    def report(self) -> Path:
        return self.folder / "report.html"

    def row(self, arm: str) -> ArmResult:
        return next(r for r in self.rows if r.arm == arm)


def compare(config: str | Path | dict | RunConfig, overrides: list[str] | None = None,
            fractions: list[float] | None = None, seeds: int | None = None, arms: list[str] | None = None,
            quiet: bool = False) -> CompareResult:
    """Compares the pre-trained model, a probe, the fine-tune and training from scratch on the user's data.

    Args:
        config: The run config (path, dict or RunConfig); its `compare` section sets the arms.
        overrides: `key=value` overrides, as for `finetune`.
        fractions, seeds, arms: Override `compare.fractions`, `compare.seeds`, `compare.arms`.

    Raises:
        ConfigError, DataError, ModelSourceError: as `finetune`.
        RunDirError: `<output_dir>/compare` already holds a comparison and overwriting is off.
    """
    from tunesmith.recipe import prepared

    extra = [f"compare.{key}={json.dumps(value)}" for key, value in
             (("fractions", fractions), ("seeds", seeds), ("arms", arms)) if value is not None]
    config, task = prepared(config, list(overrides or []) + extra)  # bad data fails here, before any weights load
    folder = cleared_outputs(Path(config.output_dir) / "compare", OUTPUTS, config.overwrite_output_dir, "a comparison",
                             "choose another output_dir or set overwrite_output_dir: true (--overwrite)")
    metric = config.metric
    table = _run_table(config, folder, quiet, task.describe())
    result = CompareResult(folder, metric, [table[a] for a in ARM_ORDER if a in table])
    if config.compare.fractions:
        result.points = learning_curve(config, task, folder, table, quiet)
        result.curve = summarize(result.points, metric)
        result.labels_saved = labels_saved(result.curve, metric, config.greater_is_better)
    _write(result, config)
    return result


def _run_table(config: RunConfig, folder: Path, quiet: bool, facts: dict[str, Any]) -> dict[str, ArmResult]:
    """Trains the table's arms; `pretrained` is read from the fine-tune's (or probe's) baseline, and
    the fine-tune is the one `train` left in output_dir when that matches (comparison/reuse.py)."""
    wanted = config.compare.arms
    runs = [a for a in ("probe", "finetune", "scratch") if a in wanted]
    if "probe_then_finetune" in wanted and "probe" not in runs:
        runs.insert(0, "probe")  # its first stage
    if "pretrained" in wanted and not {"probe", "finetune"} & set(runs):
        runs.insert(0, "finetune")  # the baseline evaluation comes with a trained arm
    table: dict[str, ArmResult] = {}
    for i, arm in enumerate(runs + (["probe_then_finetune"] if "probe_then_finetune" in wanted else [])):
        log.info("compare %d/%d: %s", i + 1, len(runs) + ("probe_then_finetune" in wanted), ARM_TITLES[arm])
        start = table.get("probe") if arm == "probe_then_finetune" else None
        reused = reusable_finetune(config, facts) if arm == "finetune" else None
        table[arm] = reused or run_arm(arm, config, folder / arm, quiet, start_from=start)
    if "pretrained" in wanted:
        table["pretrained"] = pretrained_row(table.get("finetune") or table["probe"])
    return table


def _write(result: CompareResult, config: RunConfig) -> None:
    from tunesmith.report.compare_plots import arms_plot, curve_plot
    from tunesmith.report.run_report import scalar_metrics

    rows = [row_dict(r) for r in result.rows]
    metrics = scalar_metrics(result.rows[0].metrics, result.metric)
    plots = {"arms": arms_plot(rows, result.metric, result.folder / "plots" / "arms.png")}
    baseline = next((r.metrics.get(result.metric) for r in result.rows if r.arm == "pretrained"), None)
    if result.curve:
        plots["learning_curve"] = curve_plot(result.curve, result.metric, baseline,
                                             result.folder / "plots" / "learning_curve.png")
    points = [{"arm": p.arm, "fraction": p.fraction, "seed": p.seed, "train_rows": p.train_rows,
               "metrics": p.result.metrics, "train_seconds": p.result.train_seconds,
               "run_dir": str(p.result.run_dir)} for p in result.points]
    summary = {"task": config.task, "model": config.model.source, "metric": result.metric,
               "greater_is_better": config.greater_is_better, "seeds": config.compare.seeds, "arms": rows,
               "curve": result.curve, "curve_points": points, "labels_saved": result.labels_saved}
    write_summary(result.folder, summary, metrics, plots)
