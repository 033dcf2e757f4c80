"""The tables the command line prints: before/after, compare, metrics, per class, confusion matrix."""

from __future__ import annotations

from tunesmith._terminal import console, print_table


def print_metrics(title: str, columns: dict[str, dict], shown: list[str]) -> None:
    """One row per metric, one column per group of rows (all rows first; then each --by value)."""
    counted = len(columns) > 1 and any("rows" in m for m in columns.values())
    rows = [["rows", *(str(m.get("rows", "")) for m in columns.values())]] if counted else []
    for key in shown:
        rows.append([key, *(f"{m[key]:.4f}" if m.get(key) is not None else "-" for m in columns.values())])
    print_table(title, ["metric", *columns], rows)


def print_before_after(result) -> None:
    from tunesmith.report.before_after import before_after_table, features_note

    metrics = [k for k in result.config.task_schema.shown(result.final) if result.baseline.get(k) is not None]
    headers, rows = before_after_table(result.baseline, result.final, metrics,
                                        lower_is_better=result.config.task_schema.minimize)
    print_table(f"validation results ({result.run_dir})", headers, rows)
    note = features_note(result.baseline)
    if note:
        console.print(note, highlight=False)
    best = (f"best model: {result.best_model_dir} (step {result.best_step})" if result.best_model_dir is not None
            else "no best model was saved (no evaluation during training gave a usable score)")
    console.print(f"{best}{', stopped early' if result.stopped_early else ''}; "
                  f"{result.samples_per_second:.1f} training samples/s")
    console.print(f"report: {result.report}")


def print_self_training(result) -> None:
    """Labelled-only against self-trained, on the same validation rows (`strategy.pseudo_label`)."""
    summary = result.self_training
    shown = [k for k in result.config.task_schema.shown(result.final) if result.final.get(k) is not None]
    print_metrics("self-training, validation split",
                  {"labelled only": summary["labelled_only"]["final"], "self-trained": summary["self_trained"]["final"]},
                  shown)
    counts = ", ".join(f"{label} {n}" for label, n in summary["pseudo_label_counts"].items()) or "none"
    console.print(f"pseudo-labelled {summary['pseudo_labelled_rows']} of {summary['unlabelled_rows']} unlabelled rows "
                  f"at calibrated probability >= {summary['threshold']:g} ({counts})", highlight=False)


def print_compare(result) -> None:
    from tunesmith.comparison.summary import curve_cells, curve_summary_cells, row_dict, shown_metrics, table_cells

    metrics = shown_metrics(result.rows[0].metrics, result.metric)
    print_table(f"compare ({result.folder}), validation split", ["arm", *metrics, "train s", "wall s", "trainable params"],
                [table_cells(row_dict(row), metrics) for row in result.rows])
    if result.curve_summary:
        headers, rows = curve_summary_cells(result.curve_summary, result.threshold)
        print_table(f"training curve: validation {result.metric} over steps (area: step-weighted mean)", headers, rows)
    if result.curve:
        headers, rows = curve_cells(result.curve)
        print_table(f"learning curve: validation {result.metric}", headers, rows, left=0)
    if result.labels_saved:
        console.print(result.labels_saved)
    console.print(f"report: {result.report}")


def print_per_class(metrics: dict) -> None:
    names = ["precision", "recall", "f1", "roc_auc"]
    shown = [k for k in names if all(k in v for v in metrics["per_class"].values())]
    print_table("per class", ["class", *shown, "support"],
                [[name, *(f"{v[k]:.3f}" for k in shown), str(v["support"])] for name, v in metrics["per_class"].items()])


def print_confusion(metrics: dict, most: int = 20) -> None:
    names = list(metrics["per_class"])
    if len(names) > most or "confusion_matrix" not in metrics:
        return  # too wide to read; metrics.jsonl and the report hold it
    print_table("confusion matrix (rows: true, columns: predicted)", ["", *names],
                [[name, *(str(v) for v in row)] for name, row in zip(names, metrics["confusion_matrix"])])
