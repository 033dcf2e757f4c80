"""Labelled rows: read a file, check the columns and rows, split, and map labels to ids.

This is the preflight for every supervised task with columns of inputs and one label column.
It runs before any weights load, so a bad file fails in a second, not after a model download.
Problems are reported with the file and line numbers and what to do about them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith.data.readers import read_table, require_text
from tunesmith.errors import DataError

if TYPE_CHECKING:
    from tunesmith.config import DataConfig

log = logging.getLogger("tunesmith")


@dataclass
class LabelledRows:
    """Rows of one split: input columns, labels, and the line each row came from.

    Cells are strings for table files; sequence and chat readers hold richer cells (a sentence's
    tokens and tags, a conversation's messages, a SQuAD row's answers), hence `Any`.
    """

    source: str
    inputs: dict[str, list[Any]]
    labels: list[Any]
    lines: list[int]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)
    """Every column of the kept rows as read, in file order (ids, the label, any others), so
    `predict` can write them back beside the predictions and `evaluate --by` can group on one;
    empty for readers that do not keep them."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int] | np.ndarray, source: str | None = None) -> LabelledRows:
        idx = [int(i) for i in indices]
        return LabelledRows(
            source=source or self.source,
            inputs={c: [v[i] for i in idx] for c, v in self.inputs.items()},
            labels=[self.labels[i] for i in idx],
            lines=[self.lines[i] for i in idx],
            columns={c: [v[i] for i in idx] for c, v in self.columns.items()},
        )


def load_labelled(
    path: str | Path, input_columns: list[str], label_column: str | None, bad_rows: str,
    settings: tuple[str, str] = ("data.text_column", "data.label_column"),
) -> LabelledRows:
    """Reads a file and keeps rows whose inputs and label are present.

    Args:
        path: CSV, TSV, JSONL or Parquet file.
        input_columns: Columns that must hold non-empty text.
        label_column: Column holding the label, or None for unlabelled data (prediction).
        bad_rows: "skip" drops rows with an empty input or label and warns with the count;
            "error" raises naming the first offending lines.
        settings: the config keys naming the input and the label column, for error messages.

    Raises:
        DataError: missing columns (the columns found are listed), bad rows under "error",
            or no usable rows.
    """
    frame = read_table(path)
    wanted = input_columns + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        found = ", ".join(repr(c) for c in frame.columns)
        keys = {c: settings[1] if c == label_column else settings[0] for c in missing}
        fix = "; ".join(f"set {keys[c]} to the right name" for c in missing[:1])
        raise DataError(f"{path}: column {missing[0]!r} not found; columns are {found} ({fix})")
    require_text(frame, wanted, path)
    cells = frame[wanted].apply(lambda col: col.str.strip())
    empty = cells.eq("")
    bad = empty.any(axis=1)
    lines = [int(i) for i in frame.index]
    if bad.any():
        bad_lines = [i for i, b in zip(lines, bad.tolist()) if b]
        what = _describe_bad(empty[bad], input_columns, label_column)
        shown = ", ".join(str(n) for n in bad_lines[:10]) + (" ..." if len(bad_lines) > 10 else "")
        if bad_rows == "error":
            raise DataError(
                f"{path}: {len(bad_lines)} rows with {what} (lines {shown}); fix them or set data.bad_rows: skip"
            )
        log.warning("%s: skipping %d rows with %s (lines %s)", path, len(bad_lines), what, shown)
    keep = ~bad.to_numpy()
    rows = LabelledRows(
        source=str(path),
        inputs={c: frame[c][keep].tolist() for c in input_columns},
        labels=frame[label_column][keep].str.strip().tolist() if label_column else [""] * int(keep.sum()),
        lines=[n for n, k in zip(lines, keep) if k],
        skipped=int(bad.sum()),
        columns={str(c): frame[c][keep].tolist() for c in frame.columns},
    )
    if len(rows) == 0:
        raise DataError(f"{path}: no usable rows (all {len(frame)} rows have an empty input or label)")
    return rows


def _describe_bad(empty, input_columns: list[str], label_column: str | None) -> str:
    parts = []
    if empty[input_columns].any(axis=None):
        parts.append("empty text")
    if label_column and empty[label_column].any():
        parts.append("a missing label")
    return " or ".join(parts)


def stratified_split(rows: LabelledRows, fraction: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
    """Holds out `fraction` of the rows for validation, keeping the label proportions.

    Raises:
        DataError: a label has a single row (it cannot be in both splits) or the split is empty.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(rows.labels)
    names, counts = np.unique(labels, return_counts=True)
    lonely = names[counts < 2].tolist()
    if lonely:
        raise DataError(
            f"{rows.source}: labels {lonely[:5]} have a single row, too few to split into train and validation; "
            "add rows, drop those labels, or give data.validation"
        )
    n_val = max(len(names), int(round(len(rows) * fraction)))
    if n_val >= len(rows):
        raise DataError(f"{rows.source}: {len(rows)} rows are too few to hold out a validation split")
    train_idx, val_idx = train_test_split(
        np.arange(len(rows)), test_size=n_val, stratify=labels, random_state=seed
    )
    return rows.subset(sorted(train_idx)), rows.subset(sorted(val_idx), f"{rows.source} (held-out split)")


def label_names_of(train: LabelledRows) -> list[str]:
    """The label vocabulary: integers in numeric order, otherwise names in sorted order.

    Raises:
        DataError: only one label occurs in the training data.
    """
    names = sorted(set(train.labels))
    if all(_is_int(n) for n in names):
        names = sorted(names, key=int)
    if len(names) < 2:
        raise DataError(
            f"{train.source}: only one label ({names[0]!r}) in the training data; classification needs at least two"
        )
    return names


def check_known_labels(rows: LabelledRows, label_names: list[str]) -> None:
    """Raises DataError when `rows` hold labels the model was not trained on, naming lines."""
    known = set(label_names)
    unseen: dict[str, list[int]] = {}
    for label, line in zip(rows.labels, rows.lines):
        for name in label if isinstance(label, list) else [label]:  # sequence tasks: one label per token
            if name not in known and unseen.get(name, [None])[-1] != line:
                unseen.setdefault(name, []).append(line)
    if unseen:
        listed = "; ".join(
            f"{label!r} (lines {', '.join(map(str, lines[:5]))}{' ...' if len(lines) > 5 else ''})"
            for label, lines in list(unseen.items())[:5]
        )
        raise DataError(
            f"{rows.source}: labels not seen in training: {listed}. Known labels: {', '.join(label_names)}. "
            "Fix the labels or add training rows for them"
        )


def duplicates_and_leaks(train: LabelledRows, val: LabelledRows) -> dict[str, int]:
    """Counts repeated inputs in training and validation inputs that also occur in training.

    Both are reported (warnings, and in the run's data.json) rather than dropped: repeats can be
    deliberate, but validation rows seen in training make the validation score too optimistic.
    """
    def keys(rows: LabelledRows) -> list[tuple[str, ...]]:
        return list(zip(*(v for v in rows.inputs.values())))

    first_line: dict[tuple[str, ...], int] = {}
    repeats = []  # (line, line of the first row with the same input)
    for key, line in zip(keys(train), train.lines):
        if key in first_line:
            repeats.append((line, first_line[key]))
        first_line.setdefault(key, line)
    duplicates = len(repeats)
    leaked = [line for key, line in zip(keys(val), val.lines) if key in first_line]
    conflicting = _conflicting_labels(train)
    if duplicates:
        shown = ", ".join(f"{line} repeats {first}" for line, first in repeats[:10]) + (" ..." if duplicates > 10 else "")
        log.warning("%s: %d rows repeat an earlier row's input%s (line %s)", train.source, duplicates,
                    f" ({conflicting} of them with a different label)" if conflicting else "", shown)
    if leaked:
        shown = ", ".join(map(str, leaked[:10])) + (" ..." if len(leaked) > 10 else "")
        log.warning("%s: %d validation rows also occur in the training data (lines %s); the validation score "
                    "will be optimistic", val.source, len(leaked), shown)
    return {"train_duplicates": duplicates, "train_conflicting_duplicates": conflicting,
            "validation_rows_in_train": len(leaked)}


def _conflicting_labels(rows: LabelledRows) -> int:
    labels: dict[tuple[str, ...], set[str]] = {}
    for key, label in zip(zip(*(v for v in rows.inputs.values())), rows.labels):
        labels.setdefault(key, set()).add(label)
    return sum(1 for v in labels.values() if len(v) > 1)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def sample(rows: LabelledRows, limit: int | None, seed: int) -> LabelledRows:
    """At most `limit` rows, drawn with the seed (all rows, in order, when limit is None)."""
    if limit is None or limit >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    return rows.subset(sorted(rng.permutation(len(rows))[:limit]))


def random_split(rows: LabelledRows, fraction: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
    """Holds out a seeded random `fraction` of the rows for validation (file order kept); for rows
    without one label each (sentences, chats, questions), where a stratified split does not apply.

    Raises:
        DataError: too few rows to hold any out.
    """
    n_val = max(1, int(round(len(rows) * fraction)))
    if n_val >= len(rows):
        raise DataError(f"{rows.source}: {len(rows)} rows are too few to hold out a validation split; "
                        "add rows or give data.validation")
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.subset(sorted(order[n_val:])), rows.subset(sorted(order[:n_val]), f"{rows.source} (held-out split)")


def grouped_split(rows: LabelledRows, groups: Sequence[Any], fraction: float, seed: int,
                  ) -> tuple[LabelledRows, LabelledRows]:
    """Holds out about `fraction` of the rows for validation with every group on one side only (the
    questions of one passage, the photos of one person), so validation scores unseen groups.

    Raises:
        DataError: fewer than two groups, so none can be held out.
    """
    names = list(dict.fromkeys(groups))
    if len(names) < 2:
        raise DataError(f"{rows.source}: all {len(rows)} rows share one group, so none can be held out for "
                        "validation; add rows of other groups or give data.validation")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(len(names) - 1, max(1, int(round(len(names) * fraction))))
    held = {names[i] for i in order[:n_val]}
    val = [i for i, g in enumerate(groups) if g in held]
    return (rows.subset([i for i, g in enumerate(groups) if g not in held]),
            rows.subset(val, f"{rows.source} (held-out split, {n_val} of {len(names)} groups)"))


def nested_fractions(rows: LabelledRows, fractions: list[float], seed: int) -> dict[float, LabelledRows]:
    """Stratified, nested subsets for a learning curve: {fraction: rows}.

    Each label's rows are shuffled once with `seed`, and fraction f keeps the first
    round(f * n) rows of every label (at least one). Every subset therefore keeps the label
    proportions, holds every smaller subset drawn with the same seed, and keeps file order.

    Raises:
        DataError: a fraction outside (0, 1].
    """
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise DataError(f"learning-curve fractions must be in (0, 1], got {bad}; e.g. --fractions 0.1,0.5,1.0")
    rng = np.random.default_rng(seed)
    labels = np.asarray(rows.labels)
    shuffled = [rng.permutation(np.flatnonzero(labels == name)) for name in sorted(set(rows.labels))]
    subsets = {}
    for fraction in sorted(set(fractions)):
        keep = [i for order in shuffled for i in order[: max(1, int(fraction * len(order) + 0.5))]]
        subsets[fraction] = rows.subset(sorted(keep))
    return subsets


def write_jsonl(rows: LabelledRows, label_column: str, path: Path) -> Path:
    """Writes rows as JSONL (their input columns and `label_column`), as `load_labelled` reads them."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(rows)):
            record = {column: values[i] for column, values in rows.inputs.items()}
            f.write(json.dumps({**record, label_column: rows.labels[i]}, ensure_ascii=False) + "\n")
    return path


def balanced_class_weights(labels: Sequence[Any], names: Sequence[Any]) -> list[float]:
    """`class_weights: balanced`: n / (classes x count) per class, so each class weighs the same in the loss."""
    counts = Counter(labels)
    return [len(labels) / (len(names) * max(1, counts[name])) for name in names]


def read_splits(data: DataConfig, seed: int, read: Callable[[str], LabelledRows],
                as_text: Callable[[LabelledRows], LabelledRows] = lambda rows: rows,
                ) -> tuple[LabelledRows | None, LabelledRows, dict[str, int]]:
    """Training rows (None without `data.train`), validation rows and the data checks, as `data` asks.

    Validation is `data.validation`, or a seeded `validation_split` of the training file; both are
    sampled to `max_train_samples` / `max_eval_samples`. Repeats and validation rows seen in training
    are counted on `as_text` views of the rows (for rows whose inputs are not plain text).

    Raises:
        DataError: neither file is given, or too few rows to hold out a validation split.
    """
    if data.train is None and data.validation is None:
        raise DataError("no data given: set data.train (and optionally data.validation)")
    val = read(data.validation) if data.validation else None
    train, checks = None, {}
    if data.train is not None:
        train = read(data.train)
        if val is None:
            train, val = random_split(train, data.validation_split, seed)
        train = sample(train, data.max_train_samples, seed)
        checks = duplicates_and_leaks(as_text(train), as_text(val))
    assert val is not None  # read from data.validation or split off data.train, one of which is set
    return train, sample(val, data.max_eval_samples, seed), checks
