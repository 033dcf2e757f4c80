"""data/period_files.py: the update's files keep their format and rows, and joins check their columns."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunesmith.data.period_files import joined_rows, sha256, split_rows
from tunesmith.errors import DataError


def test_jsonl_rows_with_lists_split_and_join_back_as_they_were(tmp_path):
    rows = [{"tokens": ["a", str(i)], "tags": ["O", "O"], "id": i} for i in range(10)]
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = split_rows(str(new), 0.2, 0, tmp_path / "out")
    back = [json.loads(line) for line in open(train)] + [json.loads(line) for line in open(val)]
    assert sorted(back, key=lambda r: r["id"]) == rows and len(open(val).readlines()) == 2
    joined = joined_rows(train, val, None, 0, tmp_path / "out" / "all")
    assert sorted((json.loads(line) for line in open(joined)), key=lambda r: r["id"]) == rows


def test_csv_cells_stay_text_and_a_share_of_old_rows_is_replayed(tmp_path):
    pd.DataFrame({"zip": ["0150", "0151", "0152", "0153"], "label": ["a", "b", "a", "b"]}).to_csv(tmp_path / "old.csv", index=False)
    pd.DataFrame({"zip": ["0999", "0998"], "label": ["a", "b"]}).to_csv(tmp_path / "new.csv", index=False)
    joined = joined_rows(str(tmp_path / "new.csv"), str(tmp_path / "old.csv"), 0.5, 0, tmp_path / "j")
    frame = pd.read_csv(joined, dtype=str)
    assert frame["zip"].tolist()[:2] == ["0999", "0998"] and len(frame) == 3 and frame["zip"][2].startswith("015")
    assert sha256(joined) == sha256(joined) and len(sha256(tmp_path)) == 64


def test_joining_tables_with_other_columns_or_a_folder_is_refused(tmp_path):
    pd.DataFrame({"a": ["1"]}).to_csv(tmp_path / "x.csv", index=False)
    pd.DataFrame({"b": ["1"]}).to_csv(tmp_path / "y.csv", index=False)
    with pytest.raises(DataError, match=r"have different columns \(only in the old rows: \['b'\]; only in the new: \['a'\]\)"):
        joined_rows(str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), None, 0, tmp_path / "z")
    with pytest.raises(DataError, match="needs a CSV, TSV, JSONL or Parquet file, not a folder"):
        joined_rows(str(tmp_path / "x.csv"), str(tmp_path), None, 0, tmp_path / "z")
