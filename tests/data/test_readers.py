"""Data readers: every format, and clear errors for files that cannot be read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunesmith.data.readers import read_table
from tunesmith.errors import DataError


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_each_format_reads_the_same_rows(tmp_path, suffix):
    frame = pd.DataFrame({"text": ["good film", "null", "bad, \"really\" bad"], "label": ["pos", "neg", "neg"]})
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in frame.itertuples(index=False)))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    read = read_table(path)
    assert read["text"].tolist() == frame["text"].tolist()  # "null" stays text
    assert read["label"].tolist() == frame["label"].tolist()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_table(tmp_path / "missing.csv")


def test_a_missing_relative_path_names_the_folder_it_was_looked_up_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"data file not found: data/train.csv \\(looked up relative to the working "
                                        f"directory {tmp_path}\\)"):
        read_table("data/train.csv")


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "e.csv")


def test_header_only(tmp_path):
    (tmp_path / "h.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(tmp_path / "h.csv")


def test_bad_json_line_is_named(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match="line 2"):
        read_table(tmp_path / "d.jsonl")


def test_non_utf8(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_table(tmp_path / "d.csv")


def test_unknown_extension(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown data format"):
        read_table(tmp_path / "d.xlsx")


def test_ragged_csv(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\na,1\nb,1,extra,more\n")
    with pytest.raises(DataError, match="cannot parse as CSV"):
        read_table(tmp_path / "d.csv")
