"""The results of a search: one row per trial, `tune_results.csv`, `trial.json` and `best_config.yaml`.

Rows are read back from the study itself, so they include trials run earlier, by a crashed
process or by other machines sharing the study. `best_config.yaml` is the base config with the
best trial's values and a fresh `output_dir`; `tunesmith train` takes it as it is.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, dump_config


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    number: int
    state: str
    """`complete`, `pruned`, `fail` or `running`."""
    value: float | None
    """The validation `metric_for_best_model`: of the best model for a completed trial, of the
    last evaluation for a pruned one."""
    seconds: float | None
    params: dict[str, Any]
    run_dir: Path
    evaluations: int = 0


def trial_rows(study, folder: Path) -> list[TrialRow]:
    """Every trial of the study, in order."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        run_dir = trial.user_attrs.get("run_dir")
        rows.append(TrialRow(trial.number, trial.state.name.lower(), value, seconds, dict(trial.params),
                             Path(run_dir) if run_dir else folder / "trials" / f"trial-{trial.number}",
                             len(trial.intermediate_values)))
    return rows


def param_keys(rows: list[TrialRow]) -> list[str]:
    """The searched keys over all rows, in first-seen order (a resumed study may have added some)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    return list(keys)


def write_results(rows: list[TrialRow], folder: Path, config: RunConfig) -> Path:
    """Writes `tune_results.csv` and each finished trial's `trial.json`; returns the CSV path."""
    metric = config.training.metric_for_best_model
    keys = param_keys(rows)
    path = folder / "tune_results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", metric, "evaluations", "seconds", *keys, "run_dir"])
        for r in rows:
            writer.writerow([r.number, r.state, _round(r.value), r.evaluations, _round(r.seconds, 1),
                             *(r.params.get(k, "") for k in keys), r.run_dir])
    tmp.replace(path)  # a reader never sees half a table
    for r in rows:
        if r.state != "running" and r.run_dir is not None and r.run_dir.is_dir():
            record = {"trial": r.number, "state": r.state, metric: r.value, "evaluations": r.evaluations,
                      "seconds": r.seconds, "params": r.params}
            (r.run_dir / "trial.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def write_best_config(best_config: RunConfig, best: TrialRow, folder: Path) -> Path:
    """Writes `best_config.yaml` with a header naming the trial and how to train with it."""
    path = folder / "best_config.yaml"
    dump_config(best_config.model_copy(update={"resume": None}), path)
    metric = best_config.training.metric_for_best_model
    header = (f"# tunesmith tune: trial {best.number} had the best validation {metric} ({best.value:.4f}); "
              f"its model is in {best.run_dir / 'best'}\n"
              f"# train with these settings: tunesmith train {path}\n")
    path.write_text(header + path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _round(value: float | None, digits: int = 6) -> float | str:
    return "" if value is None else round(value, digits)


def table_cells(rows: list[TrialRow], metric: str, best: TrialRow | None) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of the results table (the best trial marked with *)."""
    keys = param_keys(rows)
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k for k in keys}  # two sections share a name: keep the full keys
    headers = ["trial", "state", metric, "evals", "seconds", *short.values()]
    cells = []
    for r in rows:
        mark = "*" if best is not None and r.number == best.number else ""
        value = "" if r.value is None else f"{r.value:.4f}"
        seconds = "" if r.seconds is None else f"{r.seconds:.0f}"
        params = [_cell(r.params.get(k)) for k in keys]
        cells.append([f"{r.number}{mark}", r.state, value, str(r.evaluations), seconds, *params])
    return headers, cells


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
