"""`tunesmith predict`'s output file: joined to the input rows, its path checked before the model loads."""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest

import tunesmith
from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import DataError
from tunesmith.prediction_file import check_output, joined_records


def _read(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_keeps_every_input_column_and_the_line(tiny_bert, tmp_path, suffix):
    data = tmp_path / "labelled.csv"
    data.write_text("id,text,label,domain\n"
                    "a7,Loved it.,positive,books\n"
                    "b2,,negative,toys\n"  # empty text: skipped, so line 3 is missing from the output
                    "c9,Broke in a day.,negative,toys\n")
    rows = _read(tunesmith.predict(str(tiny_bert), str(data), str(tmp_path / f"out{suffix}")))
    assert [str(r["line"]) for r in rows] == ["2", "4"]
    assert [(r["id"], r["text"], r["label"], r["domain"]) for r in rows] == [
        ("a7", "Loved it.", "positive", "books"), ("c9", "Broke in a day.", "negative", "toys")]
    assert list(rows[0])[:5] == ["line", "id", "text", "label", "domain"]
    for r in rows:
        assert r["predicted_label"] in ("LABEL_0", "LABEL_1")  # the label column is left as it was
        assert float(r["prob_LABEL_0"]) + float(r["prob_LABEL_1"]) == pytest.approx(1.0, abs=1e-5)


def test_added_columns_that_the_input_has_are_renamed_not_overwritten(caplog):
    rows = LabelledRows("in.csv", {"text": ["hi", "yo"]}, ["", ""], [2, 5],
                        columns={"line": ["x", "y"], "text": ["hi", "yo"], "score": ["9", "8"]})
    predictions = [{"text": "hi", "predicted_label": "a", "score": 0.75}, {"text": "yo", "predicted_label": "b", "score": 0.5}]
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        records = joined_records(rows, predictions)
    assert records[1] == {"tunesmith_line": 5, "line": "y", "text": "yo", "score": "8", "predicted_label": "b",
                          "tunesmith_score": 0.5}
    assert "tunesmith_line, tunesmith_score" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "preds.csv").mkdir(), "is a directory"),
    (lambda p: (p / "file.txt").write_text("x"), "is a file, not a folder"),
    (lambda p: None, "use a .csv or .jsonl or .parquet or .npy file name"),
])
def test_a_bad_output_is_refused_before_the_model_loads(tmp_path, reviews, make, message):
    make(tmp_path)
    target = {"is a directory": "preds.csv", "is a file, not a folder": "file.txt/sub/preds.csv"}.get(message, "p.txt")
    with pytest.raises(DataError, match=message) as error:  # the model does not exist: it was never loaded
        tunesmith.predict(str(tmp_path / "no-such-model"), str(reviews), str(tmp_path / target))
    assert str(tmp_path / target) in str(error.value)


def test_a_npy_output_needs_a_task_that_predicts_vectors(tmp_path):
    from tunesmith.prediction_file import check_vectors, write_records

    with pytest.raises(DataError, match="predicts no vectors .* use a .csv, .jsonl or .parquet"):
        check_vectors(tmp_path / "p.npy", None)
    check_vectors(tmp_path / "p.npy", "embedding")
    out = write_records(tmp_path / "p.npy", [{"line": 1, "embedding": [0.5, 1.0]}, {"line": 2, "embedding": [1.0, 0.0]}],
                        "embedding")
    assert np.load(out).tolist() == [[0.5, 1.0], [1.0, 0.0]]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(DataError, match="not writable"):
            check_output(folder / "preds.csv")
    finally:
        folder.chmod(0o700)


def test_long_predictions_report_progress(tiny_bert, reviews, tmp_path, caplog, monkeypatch):
    from tunesmith.engine import progress

    monkeypatch.setattr(progress, "LOG_FROM_ROWS", 100)  # as a 50k-row file logs, without its minutes
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        tunesmith.predict(str(tiny_bert), str(reviews), str(tmp_path / "p.csv"), ["data.max_length=16"])
    counts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict: ")]
    assert len(counts) == 10 and counts[-1] == "predict: 600 of 600 rows"
