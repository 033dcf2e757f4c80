"""Interactions for recommendation: (user, item, rating or implicit signal, time) rows, and item texts.

A file is CSV, TSV, JSONL or Parquet with one interaction per row. Ids are read as text, so
`0110912` and `110912` are different items, as they are in the file. A rating that is not a number
and a time that is neither a number (Unix seconds) nor a date are bad rows, named by line. The
held-out rows are always later than the training rows (never a random split: that would let the
model learn from the future it is scored on): the latest share of the rows by time, or each user's
last interaction (leave-last-out).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.labelled import LabelledRows, load_labelled
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")


def read_interactions(path: str, columns: list[str], rating: str | None, bad_rows: str, key: str) -> LabelledRows:
    """Rows of `path` with `columns` (user, item[, time]) as inputs and `rating` as the label.

    Raises:
        DataError: a column is missing, or bad rows under `data.bad_rows: error`.
    """
    rows = load_labelled(path, columns, rating, bad_rows, settings=(f"{key}.user_column", f"{key}.rating_column"))
    bad: dict[int, str] = {}
    if rating is not None:
        values = pd.to_numeric(pd.Series(rows.labels), errors="coerce").to_numpy(dtype=float)
        bad.update({int(i): f"{rating} {rows.labels[i]!r} is not a number" for i in np.flatnonzero(~np.isfinite(values))})
    if len(columns) > 2:
        times = times_of(rows.inputs[columns[2]])
        bad.update({int(i): f"{columns[2]} {rows.inputs[columns[2]][i]!r} is neither a number nor a date"
                    for i in np.flatnonzero(np.isnan(times)) if i not in bad})
    if not bad:
        return rows
    shown = ", ".join(f"line {rows.lines[i]} ({why})" for i, why in sorted(bad.items())[:5]) + (" ..." if len(bad) > 5 else "")
    if bad_rows == "error":
        raise DataError(f"{path}: {len(bad)} bad rows: {shown}; fix them or set data.bad_rows: skip")
    log.warning("%s: skipping %d bad rows: %s", path, len(bad), shown)
    kept = rows.subset([i for i in range(len(rows)) if i not in bad])
    kept.skipped = rows.skipped + len(bad)
    if not len(kept):
        raise DataError(f"{path}: no usable rows")
    return kept


def times_of(cells: list[str]) -> np.ndarray:
    """(N,) seconds: numbers as they are (Unix time), other cells parsed as dates; NaN where neither."""
    values = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=float, copy=True)
    dated = np.flatnonzero(np.isnan(values))
    if dated.size:
        dates = pd.to_datetime(pd.Series([cells[i] for i in dated]), errors="coerce", utc=True, format="mixed")
        values[dated] = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
    return values


def later_split(rows: LabelledRows, fraction: float, time_column: str | None, user_column: str,
                holdout: str) -> tuple[LabelledRows, LabelledRows]:
    """(train, held-out) with every held-out row later than the training rows (`time`), or each user's
    last row held out for users with two or more (`last_per_user`). Without a time column, file order
    is time order.

    Raises:
        DataError: too few rows to hold any out.
    """
    order = np.arange(len(rows)) if time_column is None else np.argsort(times_of(rows.inputs[time_column]), kind="stable")
    if holdout == "last_per_user":
        last: dict[str, int] = {}
        count: dict[str, int] = {}
        for i in order:
            user = rows.inputs[user_column][i]
            last[user], count[user] = int(i), count.get(user, 0) + 1
        held = sorted(i for u, i in last.items() if count[u] > 1)
    else:
        n = max(1, int(round(len(rows) * fraction)))
        held = sorted(int(i) for i in order[len(rows) - n:])
    if not held or len(held) >= len(rows):
        raise DataError(f"{rows.source}: {len(rows)} rows are too few to hold out later ones for validation; "
                        "add rows or give data.validation")
    kept = sorted(set(range(len(rows))) - set(held))
    return rows.subset(kept), rows.subset(held, f"{rows.source} (latest rows held out)")


def item_texts(path: str, item_column: str, text_columns: list[str], key: str) -> dict[str, str]:
    """{item id: its text columns joined with " | "} from the item file (titles, genres, descriptions).

    Raises:
        DataError: the file lacks the item column or a text column.
    """
    rows = load_labelled(path, [item_column], None, "skip", settings=(f"{key}.item_column", f"{key}.item_text_columns"))
    absent = [c for c in text_columns if c not in rows.columns]
    if absent or not text_columns:
        found = ", ".join(repr(c) for c in rows.columns)
        what = f"column {absent[0]!r} not found" if absent else "no text columns named"
        raise DataError(f"{path}: {what}; columns are {found} (set {key}.item_text_columns)")
    return {item: " | ".join(str(rows.columns[c][i]) for c in text_columns if str(rows.columns[c][i]).strip())
            for i, item in enumerate(rows.inputs[item_column])}


def sentence_vectors(source: str, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(N, width) mean-pooled, L2-normalised sentence-encoder embeddings (as sentence-transformers'
    MiniLM pools them) of `texts`, computed once without gradients."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tunesmith.models.sources import resolve_source

    where = resolve_source(source).location
    tokenizer, model = AutoTokenizer.from_pretrained(where), AutoModel.from_pretrained(where)
    model.eval()
    out: list[Any] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    width = model.config.hidden_size
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)
