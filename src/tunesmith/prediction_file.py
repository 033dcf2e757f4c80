"""The file `tunesmith predict` writes: its path checked up front, each prediction joined to its input row.

A prediction file must join back to the file it came from. Every record therefore starts with the
input row's `line` (its line in a CSV/TSV, its record number in a JSONL or Parquet file, so rows
skipped as bad leave a visible gap) and every column of the input as read (an `id`, a true
`label`, a `domain`), followed by the task's prediction columns (`predicted_label`, `score`,
`prob_<label>` for classification). Nothing of the input is overwritten: an added column whose
name the input already uses is written as `tunesmith_<name>` and the rename is logged.

The file is CSV (a list or record cell as JSON), JSONL, or Parquet (lists and records as Parquet's
own nested columns: an embedding is a list<double>). A task whose prediction is a vector (embeddings:
its `vector_column`) may also write `.npy`: that matrix alone, one row per predicted row in order.
A task whose prediction is a file per row (segmentation: a mask PNG) writes those files into a folder
beside the table, `<name>_files/`, and the records hold their paths (`task_records`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

FORMATS = (".csv", ".jsonl", ".parquet", ".npy")


def check_output(path: Path, formats: tuple[str, ...] = FORMATS, option: str = "--output") -> None:
    """Checks, before any model loads, that `path` is a file name that can be written.

    Raises:
        DataError: a wrong suffix, a directory, a path under a file, or a read-only place.
    """
    if path.is_dir():
        example = {".json": "metrics.json", ".onnx": "model.onnx"}.get(formats[0], f"predictions{formats[0]}")
        raise DataError(f"{option} {path} is a directory; give a file name such as {path / example}")
    if path.suffix.lower() not in formats:
        raise DataError(f"{option} {path}: use a {' or '.join(formats)} file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest part of the path that exists; the rest is created
    if not folder.is_dir():
        raise DataError(f"{option} {path}: {folder} is a file, not a folder, so nothing can be written under it")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        where = path if path.exists() else folder
        raise DataError(f"{option} {path}: {where} is not writable; choose another path or fix its permissions")


def task_records(task: Any, rows: LabelledRows, outputs: list[Any], table: Path, examples: int = 0) -> list[dict[str, Any]]:
    """The task's prediction records for the file `table`, with the paths of the files it writes per row
    into `<table name>_files/` (an optional task member, `write_predicted_files(rows, outputs, folder,
    examples)`, returns those columns of paths; `examples` rows also get a picture for the run report,
    in a column ending in `_image`)."""
    records = task.predictions(rows, outputs)
    write = getattr(task, "write_predicted_files", None)
    if write is None:
        return records
    columns = write(rows, outputs, table.with_name(f"{table.stem}_files"), examples)
    return [{**record, **{name: paths[i] for name, paths in columns.items()}} for i, record in enumerate(records)]


def joined_records(rows: LabelledRows, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per input row: `line`, the input's columns, then the prediction columns (renamed on a clash)."""
    if not predictions:
        return []
    columns = rows.columns
    echoed = {k for k in predictions[0] if k in columns and [r[k] for r in predictions] == columns[k]}
    added = (["line"] if len(rows.lines) == len(predictions) else []) + [k for k in predictions[0] if k not in echoed]
    names = _free_names(added, set(columns))
    renamed = {k: v for k, v in names.items() if k != v}
    if renamed:
        log.warning("%s already has columns named %s; the predictions write them as %s", rows.source,
                    ", ".join(renamed), ", ".join(renamed.values()))
    records = []
    for i, prediction in enumerate(predictions):
        record: dict[str, Any] = {names["line"]: rows.lines[i]} if "line" in names else {}
        record.update({c: values[i] for c, values in columns.items()})
        record.update({names[k]: v for k, v in prediction.items() if k not in echoed})
        records.append(record)
    return records


def _free_names(added: list[str], taken: set[str]) -> dict[str, str]:
    """`name` for each added column, or `tunesmith_<name>` (then a number) when the input has it."""
    names = {}
    for key in added:
        name, n = key, 1
        while name in taken:
            name = f"tunesmith_{key}" if n == 1 else f"tunesmith_{key}_{n}"
            n += 1
        names[key] = name
        taken.add(name)
    return names


def check_vectors(path: Path, vector_column: str | None) -> None:
    """Refuses, before any model loads, a `.npy` output for a task whose predictions are no vectors.

    Raises:
        DataError: naming the formats that task can write.
    """
    if path.suffix.lower() == ".npy" and vector_column is None:
        raise DataError(f"--output {path}: a .npy file holds one vector per row, and this task predicts no vectors "
                        "(embeddings do); use a .csv, .jsonl or .parquet file name")


def write_records(path: Path, records: list[dict[str, Any]], vector_column: str | None = None) -> Path:
    """Writes CSV, JSONL, Parquet or (the `vector_column` alone) NumPy's .npy, by suffix, under a
    temporary name, then moves it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            check_vectors(path, vector_column)
            assert vector_column is not None  # check_vectors refused the rest
            with partial.open("wb") as f:
                np.save(f, np.array([r[vector_column] for r in records], dtype=np.float32))
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), str(partial))
        else:
            _write_text(partial, suffix, records)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_text(partial: Path, suffix: str, records: list[dict[str, Any]]) -> None:
    with partial.open("w", newline="", encoding="utf-8") as f:
        if suffix == ".jsonl":
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else [])
            writer.writeheader()
            # a list or record cell (a recommender's top-k items) as JSON, which any reader parses back
            writer.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                              for k, v in r.items()} for r in records)
