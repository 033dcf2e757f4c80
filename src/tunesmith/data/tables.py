"""Tables of numeric and categorical columns for the tabular tasks: read, type, fit and check.

Rows are read as text by the shared readers (CSV, TSV, JSONL, Parquet), so a missing cell is "" and
nothing is guessed. Each feature column is numeric when every present training cell is a finite
number, categorical otherwise; `categorical` and `numeric` lists override that. The preprocessing
(means and stds, category lists) is fitted on the training rows only and kept in the model's spec
(models/tabular_network.py). Cells that a numeric column cannot read are bad rows, named by line and
skipped or refused as `data.bad_rows` says. Before training, the columns are checked for what
silently ruins tabular models: an id column, a near-unique category, and a column that alone ranks
the label almost perfectly (a leak, such as a call's duration known only after its outcome).

Each saved model keeps a profile of its training rows (each numeric column's shares in ten
quantile bins, each category's share, missing cells as their own bin), so fine-tuning it on newer
rows first says which columns moved: the population stability index (PSI) per column, the industry's
reading being below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a major one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tunesmith.data.labelled import LabelledRows, load_labelled
from tunesmith.errors import DataError
from tunesmith.models.tabular_network import is_missing, numbers

log = logging.getLogger("tunesmith")

# One column alone ranking the label this well, this far above every other column, is worth a warning:
# a leak stands alone (bank marketing's call duration: 0.946, next 0.584), where strong real measurements
# come in groups (breast-cancer cell sizes: 0.977, 0.972, 0.971, ...).
LEAK_AUC, LEAK_GAP = 0.9, 0.15
ID_ROWS = 50  # below this, distinct values per row say nothing


def read_tabular(path: str, label_column: str | None, bad_rows: str, key: str,
                 features: list[str] | None = None) -> LabelledRows:
    """Rows of `path` (cells as text, "" where missing) with their label, and `features` as inputs when given.

    Raises:
        DataError: the file does not read, the label column is absent, no usable rows.
    """
    rows = load_labelled(path, [], label_column, bad_rows, settings=(f"{key}.features", "data.label_column"))
    return rows if features is None else with_features(rows, features, key)


def with_features(rows: LabelledRows, features: list[str], key: str) -> LabelledRows:
    """`rows` with `features` as inputs.

    Raises:
        DataError: a feature column is not in the file.
    """
    absent = [c for c in features if c not in rows.columns]
    if absent:
        found = ", ".join(repr(c) for c in rows.columns)
        raise DataError(f"{rows.source}: feature column {absent[0]!r} not found; columns are {found} "
                        f"(set {key}.features, or add the column to the file)")
    rows.inputs = {c: rows.columns[c] for c in features}
    return rows


def feature_columns(rows: LabelledRows, label_column: str, chosen: list[str] | None, drop: list[str], key: str) -> list[str]:
    """The columns the model reads: `chosen`, or every column but the label and `drop`.

    Raises:
        DataError: a dropped column is not in the file (a typo would keep a leaking column in), or
            no column is left.
    """
    unknown = [c for c in drop if c not in rows.columns]
    if unknown:
        raise DataError(f"{key}.drop: column {unknown[0]!r} is not in {rows.source}; columns are "
                        f"{', '.join(repr(c) for c in rows.columns)}")
    names = chosen or [c for c in rows.columns if c != label_column and c not in drop]
    if label_column in names:
        raise DataError(f"{key}.features includes the label column {label_column!r}; remove it")
    if not names:
        raise DataError(f"{rows.source}: no feature columns left besides the label {label_column!r}")
    return names


def fit_columns(train: LabelledRows, categorical: list[str], numeric: list[str], key: str) -> dict[str, Any]:
    """The spec's `numeric` and `categorical` column lists, fitted on the training rows.

    Raises:
        DataError: a column has no value in any training row.
    """
    spec: dict[str, Any] = {"numeric": [], "categorical": []}
    for name, cells in train.inputs.items():
        present = np.array([not is_missing(c) for c in cells])
        if not present.any():
            raise DataError(f"{train.source}: column {name!r} is empty in every training row; drop it with {key}.drop")
        values = numbers(cells)
        parsed = ~np.isnan(values)
        is_numeric = name in numeric or (name not in categorical and bool((parsed == present).all()))
        if is_numeric:
            seen = values[parsed]
            std = float(seen.std()) if seen.size else 1.0
            spec["numeric"].append({"name": name, "mean": float(seen.mean()) if seen.size else 0.0,
                                    "std": std if std > 0 else 1.0, "missing": bool((~parsed).any())})
        else:
            spec["categorical"].append({"name": name, "categories": sorted({str(c).strip() for c in np.array(cells, dtype=object)[present]})})
    return spec


def unreadable_numbers(rows: LabelledRows, spec: dict[str, Any], bad_rows: str, key: str) -> LabelledRows:
    """`rows` without those whose numeric cells hold something that is not a number, named by line.

    Raises:
        DataError: under `data.bad_rows: error`, naming the lines, the column and a value.
    """
    bad: dict[int, str] = {}
    for column in spec["numeric"]:
        cells = rows.inputs[column["name"]]
        unread = np.isnan(numbers(cells)) & np.array([not is_missing(c) for c in cells])
        for i in np.flatnonzero(unread):
            bad.setdefault(int(i), f"{column['name']}={cells[i]!r}")
    if not bad:
        return rows
    shown = ", ".join(f"line {rows.lines[i]} ({what})" for i, what in list(bad.items())[:5]) + (" ..." if len(bad) > 5 else "")
    fix = f"fix the cells, list the column in {key}.categorical, or set data.bad_rows: skip"
    if bad_rows == "error":
        raise DataError(f"{rows.source}: {len(bad)} rows have a numeric column cell that is not a number: {shown}; {fix}")
    log.warning("%s: skipping %d rows whose numeric cells are not numbers: %s", rows.source, len(bad), shown)
    kept = rows.subset([i for i in range(len(rows)) if i not in bad])
    kept.skipped = rows.skipped + len(bad)
    if not len(kept):
        raise DataError(f"{rows.source}: no usable rows left; {fix}")
    return kept


def column_warnings(train: LabelledRows, spec: dict[str, Any], positive: str | None, key: str) -> dict[str, float]:
    """Warns about id-like columns, near-unique categories and (for two labels) a column that alone ranks
    the label with ROC AUC >= 0.9, far above the next column; returns each column's single-column ROC AUC (two labels only)."""
    n = len(train)
    for column in spec["numeric"]:
        values = numbers(train.inputs[column["name"]])
        if n >= ID_ROWS and np.unique(values).size == n and np.all(values == np.round(values)):
            log.warning("column %r holds a different whole number in every training row, like an id: a model can "
                        "learn row order from it; drop it with %s.drop", column["name"], key)
    for column in spec["categorical"]:
        if n >= ID_ROWS and len(column["categories"]) > max(ID_ROWS, n // 2):
            log.warning("column %r has %d categories in %d training rows, like an id or free text: most validation "
                        "values will be unseen; drop it with %s.drop", column["name"], len(column["categories"]), n, key)
    if positive is None:
        return {}
    aucs = single_column_auc(train, spec, positive)
    ranked = list(aucs.items())
    if ranked and ranked[0][1] >= LEAK_AUC and (len(ranked) == 1 or ranked[0][1] - ranked[1][1] >= LEAK_GAP):
        name, auc = ranked[0]
        log.warning("column %r alone ranks the label with ROC AUC %.3f on the training rows, far above any other "
                    "column (next %s): a column known only after the outcome leaks it, and the model will fail where "
                    "it is not yet known; if so, drop it with %s.drop", name, auc,
                    f"{ranked[1][1]:.3f}" if len(ranked) > 1 else "none", key)
    return aucs


def single_column_auc(train: LabelledRows, spec: dict[str, Any], positive: str) -> dict[str, float]:
    """{column: ROC AUC of that column alone} (numbers as they are, categories by their positive rate; a
    column ranking the label backwards counts as well as forwards), strongest first."""
    from sklearn.metrics import roc_auc_score

    y = np.array([label == positive for label in train.labels])
    if y.all() or not y.any():
        return {}
    scores = {}
    for column in spec["numeric"]:
        values = numbers(train.inputs[column["name"]])
        scores[column["name"]] = np.where(np.isnan(values), np.nanmean(values), values)
    for column in spec["categorical"]:
        cells = np.array([str(c).strip() for c in train.inputs[column["name"]]], dtype=object)
        _, codes = np.unique(cells, return_inverse=True)
        rate = np.bincount(codes, weights=y) / np.bincount(codes)
        scores[column["name"]] = rate[codes]
    aucs = {name: float(roc_auc_score(y, s)) for name, s in scores.items()}
    return dict(sorted(((n, round(max(a, 1 - a), 4)) for n, a in aucs.items()), key=lambda t: -t[1]))


PSI_MODERATE, PSI_MAJOR = 0.1, 0.25


def profile(rows: LabelledRows, spec: dict[str, Any]) -> dict[str, Any]:
    """{"rows": n, "columns": {column: {"edges": ..., "shares": ...}}} for numbers (ten quantile bins,
    then missing) and {column: {"shares": {category: share}}} for categories (missing as "")."""
    out: dict[str, Any] = {}
    for column in spec["numeric"]:
        values = numbers(rows.inputs[column["name"]])
        seen = values[~np.isnan(values)]
        edges = np.unique(np.quantile(seen, np.linspace(0.1, 0.9, 9))).tolist() if seen.size else []
        out[column["name"]] = {"edges": edges, "shares": _number_shares(values, edges).tolist()}
    for column in spec["categorical"]:
        cells = ["" if is_missing(c) else str(c).strip() for c in rows.inputs[column["name"]]]
        names, counts = np.unique(cells, return_counts=True)
        out[column["name"]] = {"shares": {str(n): float(c) / len(cells) for n, c in zip(names, counts)}}
    return {"rows": len(rows), "columns": out}


def _number_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Shares of `values` in the bins `edges` make, then the share missing."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return np.append(counts, values.size - present.size) / max(values.size, 1)


def drift(before: dict[str, Any], rows: LabelledRows) -> dict[str, float]:
    """{column: PSI of `rows` against the profile `before`}, largest first (columns the profile has)."""
    psi = {}
    for name, seen in before["columns"].items():
        if name not in rows.inputs:
            continue
        if "edges" in seen:
            expected, actual = np.array(seen["shares"]), _number_shares(numbers(rows.inputs[name]), seen["edges"])
        else:
            cells = ["" if is_missing(c) else str(c).strip() for c in rows.inputs[name]]
            names = sorted(set(seen["shares"]) | set(cells))
            counts = {n: 0 for n in names}
            for c in cells:
                counts[c] += 1
            expected = np.array([seen["shares"].get(n, 0.0) for n in names])
            actual = np.array([counts[n] / len(cells) for n in names])
        expected, actual = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)  # an empty bin is rare, not impossible
        psi[name] = round(float(((actual - expected) * np.log(actual / expected)).sum()), 4)
    return dict(sorted(psi.items(), key=lambda t: -t[1]))


def report_drift(psi: dict[str, float], before: dict[str, Any], rows: int, parent: str) -> None:
    """Logs the columns whose distribution moved since the parent model's training rows (`before`).

    PSI between two samples of one distribution is not 0: it is about (bins - 1) x (1/n + 1/m), 0.12 for
    100 new rows against 400 in ten bins. A column is named only when its PSI is also three times that."""
    def noise(name: str) -> float:
        seen = before["columns"][name]
        bins = len(seen["edges"]) + 2 if "edges" in seen else len(seen["shares"]) + 1
        return (bins - 1) * (1 / max(rows, 1) + 1 / max(before["rows"], 1))

    moved = {n: v for n, v in psi.items() if v >= max(PSI_MODERATE, 3 * noise(n))}
    if not moved:
        log.info("drift since %s: no column moved beyond what %d rows vary by (largest PSI %.2f)", parent, rows,
                 max(psi.values(), default=0.0))
        return
    shown = ", ".join(f"{n} {v:.2f}{' (major)' if v >= PSI_MAJOR else ''}" for n, v in list(moved.items())[:8])
    log.warning("drift since %s: %d of %d columns moved (population stability index, 0.1 moderate, 0.25 major): %s",
                parent, len(moved), len(psi), shown)
