"""What `tunesmith compare` leaves in `<output_dir>/compare/`: JSON, Markdown, plots and one HTML page.

`compare.json` holds every number (rows, training and learning curves, seeds); `summary.md` the
tables, ready to paste into a README or an issue; `plots/arms.png`, `plots/training_curve.png` and
`plots/learning_curve.png` the figures; `report.html` all of it on one offline page, with a link to
each arm's own run report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunesmith.comparison.arms import ArmResult
from tunesmith.report.html import Raw, esc, image, page, table

ARM_NOTES = {
    "pretrained": "the model before any training (zero-shot where the source already has a head for these labels, "
                  "otherwise its new, untrained head)",
    "probe": "only the head trains, on the frozen pre-trained backbone (compare.probe_learning_rate)",
    "finetune": "the config as written",
    "scratch": "the same architecture from random initialization, every layer trained",
    "probe_then_finetune": "the config's fine-tune, starting from the trained probe (LP-FT)",
}


def row_dict(row: ArmResult) -> dict[str, Any]:
    """A table row as compare.json keeps it, with the runs it is the mean of when there are several seeds."""
    out: dict[str, Any] = {"arm": row.arm, "title": row.title, "metrics": row.metrics,
                           "train_seconds": row.train_seconds,
                           "wall_seconds": row.wall_seconds, "trainable_params": row.trainable_params,
                           "best_epoch": row.best_epoch, "overfitting": row.overfitting,
                           "run_dir": str(row.run_dir) if row.run_dir else None, "seed": row.seed}
    if row.seed_runs:  # the row is a mean over these
        out["seed_runs"] = [{"seed": r.seed, "run_dir": str(r.run_dir) if r.run_dir else None,
                             "train_seconds": r.train_seconds, "metrics": r.metrics} for r in row.seed_runs]
    return out


def shown_metrics(metrics: dict[str, Any], first: str | None = None) -> list[str]:
    """The table's metric columns: the scalar metrics, without the `<metric>_std` that `table_cells` writes
    beside their mean."""
    from tunesmith.report.run_report import scalar_metrics

    names = scalar_metrics(metrics, first)
    return [m for m in names if not (m.endswith("_std") and m[:-4] in names)]


def table_cells(row: dict[str, Any], metrics: list[str]) -> list[str]:
    """One table row as text: arm, metrics (mean ± std over arm seeds), training and wall seconds,
    trainable parameters."""
    seconds = [f"{row[k]:.0f}" if row[k] is not None else "-" for k in ("train_seconds", "wall_seconds")]
    values = [_number(row["metrics"].get(m), row["metrics"].get(f"{m}_std")) for m in metrics]
    return [row["title"], *values, *seconds, f"{row['trainable_params']:,}"]


def _number(value: Any, std: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value:.4f}" + (f" ± {std:.4f}" if isinstance(std, int | float) else "")


AREA_NOTE = ("area: the validation {metric} averaged over the training steps (the area under the metric-vs-step "
             "curve, trapezoid rule, divided by the step span), in the metric's units, so arms trained for the same "
             "steps compare on it; it rewards reaching a good {metric} early.")


def curve_summary_cells(summary: dict[str, dict[str, Any]], threshold: float | None) -> tuple[list[str], list[list[str]]]:
    """The training curve's numbers as a table: one row per arm, area (and steps to the threshold) mean ± std."""
    headers = ["arm", "area"] + ([f"steps to {threshold:g}", "reached"] if threshold is not None else [])
    rows = []
    for arm, s in summary.items():
        cells = [arm.replace("_", " "), _number(s["area"], s["area_std"] if s["seeds"] > 1 else None)]
        if threshold is not None:
            steps = s["steps_to_threshold"]
            std = f" ± {s['steps_to_threshold_std']:.0f}" if s["steps_to_threshold_std"] is not None else ""
            cells += [f"{steps:.0f}{std}" if steps is not None else "never", s["reached"]]
        rows.append(cells)
    return headers, rows


def curve_cells(curve: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """The learning curve as a table: one row per fraction, one column per arm (mean ± std)."""
    arms = list(curve)
    fractions = sorted({p["fraction"] for points in curve.values() for p in points})
    rows = []
    for fraction in fractions:
        at = {arm: next((p for p in curve[arm] if p["fraction"] == fraction), None) for arm in arms}
        n = next(p["train_rows"] for p in at.values() if p)
        cells = [f"{p['mean']:.4f}" + (f" ± {p['std']:.4f}" if p["std"] else "") if p else "" for p in at.values()]
        rows.append([f"{n:,}", f"{fraction:g}", *cells])
    return ["labelled rows", "fraction", *[a.replace("_", " ") for a in arms]], rows


def over_seeds(seeds: int) -> str:
    """How the curve's points were summed up: one seed has no spread to show."""
    return "one seed, so no standard deviation" if seeds == 1 else f"mean ± std over {seeds} seeds"


def write_summary(folder: Path, result: dict[str, Any], metrics: list[str], plots: dict[str, Path]) -> None:
    """Writes compare.json, summary.md and report.html from the comparison's results dict."""
    (folder / "compare.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    headers = ["arm", *metrics, "train s", "wall s", "trainable params"]
    lines = [_markdown(headers, [table_cells(r, metrics) for r in result["arms"]])]
    if result.get("curve_summary"):
        curve_headers, curve_rows = curve_summary_cells(result["curve_summary"], result.get("threshold"))
        lines += [f"\nTraining curve (validation {result['metric']}, {over_seeds(result['arm_seeds'])}):\n",
                  _markdown(curve_headers, curve_rows), "\n" + AREA_NOTE.format(metric=result["metric"])]
    if result.get("curve"):
        curve_headers, curve_rows = curve_cells(result["curve"])
        lines += [f"\nLearning curve (validation {result['metric']}, {over_seeds(result['seeds'])}):\n",
                  _markdown(curve_headers, curve_rows)]
    if result.get("labels_saved"):
        lines.append(f"\n{result['labels_saved']}")
    (folder / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(_html(folder, result, metrics, plots), encoding="utf-8")


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(row) + " |" for row in rows])


def _html(folder: Path, result: dict[str, Any], metrics: list[str], plots: dict[str, Path]) -> str:
    rows = [table_cells(r, metrics) for r in result["arms"]]
    arms_note = "<ul>" + "".join(f"<li><b>{esc(r['title'])}</b>: {esc(ARM_NOTES[r['arm']])}</li>"
                                 for r in result["arms"]) + "</ul>"
    seeds = result.get("arm_seeds", 1)
    same = ("Same data, splits, seed and epochs" if seeds == 1
            else f"Same data, splits and epochs; mean ± std over {seeds} training seeds")
    sections = [("arms", "Arms", f"<p>{same}; validation {esc(result['metric'])}.</p>"
                 + table(["arm", *metrics, "train s", "wall s", "trainable params"], rows) + arms_note
                 + (image(plots["arms"], "arms compared") if "arms" in plots else ""))]
    if result.get("curve_summary"):
        sections.append(_training_section(result, plots))
    if result.get("curve"):
        headers, curve_rows = curve_cells(result["curve"])
        saved = f"<p class=\"ok\">{esc(result['labels_saved'])}</p>" if result.get("labels_saved") else ""
        sections.append(("learning-curve", "Learning curve", saved + image(plots["learning_curve"], "learning curve",
                         "stratified, nested subsets of the training rows; " + (
                             f"band: one standard deviation over {result['seeds']} seeds" if result["seeds"] > 1
                             else "one seed, so no band"))
                         + table(headers, curve_rows, numeric_from=2)))
    warnings = [f"<li><b>{esc(r['title'])}</b>: {esc(r['overfitting'])}</li>" for r in result["arms"] if r["overfitting"]]
    sections.append(("overfitting", "Overfitting watch", f"<ul class=\"warn\">{''.join(warnings)}</ul>" if warnings
                     else '<p class="ok">No arm over-fitted after its best evaluation.</p>'))
    links = [[r["title"], Raw(f'<a href="{esc(_relative(r["run_dir"], folder))}/report.html">'
                              f'{esc(_relative(r["run_dir"], folder))}/report.html</a>')]
             for r in result["arms"] if r["run_dir"] and r["arm"] != "pretrained"]
    sections.append(("runs", "Run reports", table(["arm", "report"], links, numeric_from=9)))
    return page("tunesmith compare", f"{result['task']} · {result['model']} · {folder}", sections)


def _training_section(result: dict[str, Any], plots: dict[str, Path]) -> tuple[str, str, str]:
    """The training curve: the plot, then area (and steps to the threshold) per arm."""
    headers, rows = curve_summary_cells(result["curve_summary"], result.get("threshold"))
    seeds = result["arm_seeds"]
    caption = (f"validation {result['metric']} at every evaluation during training; "
               + (f"band: one standard deviation over {seeds} seeds" if seeds > 1 else "one seed, so no band")
               + (f"; dashed: the threshold {result['threshold']:g}" if result.get("threshold") is not None else ""))
    figure = image(plots["training_curve"], "training curve", caption) if "training_curve" in plots else ""
    return ("training-curve", "Training curve", figure + table(headers, rows)
            + f"<p>{esc(AREA_NOTE.format(metric=result['metric']))}</p>")


def _relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()
