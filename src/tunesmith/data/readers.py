"""Reading tabular data files (CSV, TSV, JSONL, Parquet) into a DataFrame of strings.

Everything is read as text with no "NA" guessing, so a review that says "null" stays a review;
missing values become empty strings and the validation step decides what to do with them. Each
reader turns parser failures into a `DataError` that names the file and, where known, the line.
Cells that are not text (JSONL lists and objects, Parquet lists, structs and bytes) are noted per
column, and `require_text` refuses the columns a task reads as text or labels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from tunesmith.errors import DataError

NON_TEXT = "tunesmith_non_text"  # frame.attrs key: {column: where its first list/object/bytes cell is}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def read_table(path: str | Path) -> pd.DataFrame:
    """Reads a data file into a DataFrame whose cells are strings ("" where missing).

    The frame's index is the human line/row number used in error messages (1-based, counting
    a CSV header as line 1).

    Raises:
        DataError: the file is missing, empty, of an unknown format, or does not parse.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(not_found(path))
    if path.is_dir():
        raise DataError(f"expected a data file but got a directory: {path}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown data format {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); it needs a header row and at least one data row")
    frame = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "parquet": _read_parquet}[
        fmt
    ](path)
    if len(frame) == 0:
        raise DataError(f"{path} has no data rows (only a header?)")
    return frame


def not_found(path: Path, what: str = "data file") -> str:
    """`<what> not found: <path>`, saying which folder a relative path was looked up in (the
    working directory), since "not found" alone hides that the run started somewhere else."""
    where = "" if path.expanduser().is_absolute() else f" (looked up relative to the working directory {Path.cwd()})"
    return f"{what} not found: {path}{where}"


def _read_delimited(path: Path) -> pd.DataFrame:
    tsv = path.suffix.lower() == ".tsv"
    try:
        frame = pd.read_csv(
            path,
            sep="\t" if tsv else ",",
            # GLUE-style TSV files are unquoted: a lone " inside a sentence is text, not a quote.
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
        )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); re-save the file as UTF-8"
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: cannot parse as {'TSV' if tsv else 'CSV'}: {_first_line(exc)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; it needs a header row and at least one data row") from None
    frame.index = _record_lines(path, tsv, len(frame))
    return frame


def _record_lines(path: Path, tsv: bool, rows: int) -> list[int]:
    """The file line where each data row starts (after blank lines and quoted line breaks), or
    2, 3, ... when the file cannot be followed line by line the way pandas read it."""
    starts, previous = [], 0
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        try:
            for record in reader:
                # pandas skips blank lines, including a lone cell of spaces
                if record and not (len(record) == 1 and record[0] and not record[0].strip(" \t")):
                    starts.append(previous + 1)
                previous = reader.line_num
        except csv.Error:
            starts = []
    return starts[1:] if len(starts) == rows + 1 else list(range(2, rows + 2))


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = jsonl_objects(path)
    rows = [{k: _as_text(v) for k, v in row.items()} for _, row in records]
    frame = pd.DataFrame(rows, index=[number for number, _ in records], dtype=str).fillna("")
    non_text: dict[str, str] = {}
    for number, row in records:
        for key, value in row.items():
            if key not in non_text and isinstance(value, (list, dict)):
                kind = "a JSON list" if isinstance(value, list) else "a JSON object"
                non_text[key] = f"line {number} holds {kind} ({json.dumps(value)[:60]})"
    frame.attrs[NON_TEXT] = non_text
    return frame


def require_text(frame: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    """Refuses `columns` of `frame` (as `read_table` read it) whose cells are lists, objects, structs or
    bytes: turned into text they would be their Python spelling (a 2,000-word list as `['a' 'b' ... ]`).

    Raises:
        DataError: naming the file, the column, its type and the first offending row.
    """
    for column in columns:
        problem = frame.attrs.get(NON_TEXT, {}).get(column)
        if problem:
            raise DataError(f"{path}: column {column!r} does not hold text or numbers: {problem}; "
                            "store one text (or label) per cell, e.g. join a list of words with spaces")


def read_utf8(path: Path) -> str:
    """The whole file as text.

    Raises:
        DataError: the file is not UTF-8 (the offset of the first bad byte is named).
    """
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); re-save the file as UTF-8") from None


def jsonl_objects(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; every task's JSONL reader uses it.

    Raises:
        DataError: not UTF-8, a line that is not JSON, or JSON that is not an object (line named).
    """
    records = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}); each line must be one object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        records.append((number, row))
    return records


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None
    non_text = {}
    for column, dtype in _arrow_types(path).items():
        if column in frame.columns:
            # the first row that holds a value, the one that would be turned into a misleading string
            first = next((i for i, v in enumerate(frame[column], start=1) if v is not None), None)
            if first is not None:
                non_text[column] = f"its Parquet type is {dtype} (first value in row {first})"
    frame = frame.apply(lambda col: col.map(_as_text)).astype(str)
    frame.index = range(1, len(frame) + 1)
    frame.attrs[NON_TEXT] = non_text
    return frame


def _arrow_types(path: Path) -> dict[str, str]:
    """Columns whose Parquet type is nested (list, struct, map) or binary, with the type's name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    return {field.name: str(field.type)[:60] for field in pq.read_schema(path)
            if pa.types.is_nested(field.type) or any(test(field.type) for test in binary)}


def _as_text(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
