"""Table files of two periods, for `tunesmith update`: hashed, split, sampled and joined, format kept.

An update trains on files the tasks read as they always do, so the new period's validation rows, the
replayed share of the old rows and "all rows" for the retrained model are written as files of the
input's own format (CSV, TSV, JSONL, Parquet) into the update's `data/` folder. Cells are read as text
from CSV/TSV and as they are from JSONL/Parquet (token lists, nested fields), so what is written back
reads exactly as the original did. Folders of images or clips cannot be joined this way: the update
then needs its validation files given and runs without replay and retraining.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tunesmith.data.readers import FORMATS, not_found
from tunesmith.errors import DataError


def sha256(path: str | Path) -> str:
    """The file's SHA-256 (a folder's: of its files' relative paths and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_table(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in FORMATS


def read_rows(path: str | Path, why: str) -> pd.DataFrame:
    """The rows of a table file as pandas reads them back losslessly.

    Raises:
        DataError: `path` is missing, or a folder or other file where `why` needs a table.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(not_found(path))
    if not is_table(path):
        raise DataError(f"{path}: {why} needs a CSV, TSV, JSONL or Parquet file, not "
                        f"{'a folder' if path.is_dir() else 'this'}; give the table, or leave out what needs it")
    fmt = FORMATS[path.suffix.lower()]
    if fmt in ("csv", "tsv"):
        return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_parquet(path)


def write_rows(frame: pd.DataFrame, like: str | Path, path: Path) -> str:
    """Writes `frame` as a file of the format of `like`, at `path` with that suffix; returns its path."""
    suffix = Path(like).suffix.lower()
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[suffix]
    if fmt in ("csv", "tsv"):
        frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def split_rows(path: str, fraction: float, seed: int, folder: Path, latest: tuple[bool, str | None] = (False, None),
               ) -> tuple[str, str]:
    """(train, validation) files: a `fraction` of the rows of `path` held out, written in `folder`.

    The held-out rows are a seeded random draw, or with `latest` = (True, column) the latest rows by
    that column (Unix seconds or dates; file order when it is None), for a task whose rows are time
    ordered (a random split would let it learn from the future it is scored on).
    """
    from tunesmith.data.interactions import times_of

    frame = read_rows(path, "holding out the new period's validation rows")
    if len(frame) < 2:
        raise DataError(f"{path}: {len(frame)} row; an update needs at least 2, or a --validation file")
    by_time, column = latest
    if column is not None and column not in frame.columns:
        raise DataError(f"{path}: time column {column!r} not found; columns are {', '.join(map(repr, frame.columns))}")
    if by_time:
        order = np.arange(len(frame))[::-1] if column is None else np.argsort(
            -times_of(frame[column].astype(str).tolist()), kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(len(frame))
    held = max(1, round(fraction * len(frame)))
    return (write_rows(frame.iloc[np.sort(order[held:])], path, folder / "new_train"),
            write_rows(frame.iloc[np.sort(order[:held])], path, folder / "new_validation"))


def joined_rows(new: str, old: str, share: float | None, seed: int, path: Path) -> str:
    """The new rows followed by the old ones (all, or a seeded sample of `share` x the new rows' count),
    written as a file of the new rows' format.

    Raises:
        DataError: either is not a table, or their columns differ.
    """
    fresh, earlier = read_rows(new, "joining old and new rows"), read_rows(old, "joining old and new rows")
    if set(fresh.columns) != set(earlier.columns):
        gone, added = sorted(set(earlier.columns) - set(fresh.columns)), sorted(set(fresh.columns) - set(earlier.columns))
        raise DataError(f"{new} and {old} have different columns (only in the old rows: {gone}; only in the new: "
                        f"{added}); rename them to match, or leave out replay and retraining")
    if share is not None:
        count = min(len(earlier), max(1, round(share * len(fresh))))
        earlier = earlier.iloc[np.sort(np.random.default_rng(seed).permutation(len(earlier))[:count])]
    return write_rows(pd.concat([fresh, earlier[fresh.columns]], ignore_index=True), new, path)
