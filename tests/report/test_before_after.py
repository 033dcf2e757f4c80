"""The before/after table: the untrained head's chance score is labelled so, the linear probe beside it."""

from __future__ import annotations

from tunesmith.report.before_after import FEATURES_COLUMN, before_after_table, features_note

FINAL = {"accuracy": 0.9, "macro_f1": 0.88, "loss": 0.3}
FEATURES = {"probe": "logistic regression", "train_rows": 18, "accuracy": 0.95, "macro_f1": 0.94, "seconds": 0.2}


def test_without_features_the_table_is_the_plain_before_and_after():
    headers, rows = before_after_table({"accuracy": 0.5, "loss": 0.69}, FINAL, ["accuracy", "loss"])
    assert headers == ["metric", "pre-trained", "fine-tuned", "change"]
    assert rows == [["accuracy", "0.5000", "0.9000", "+0.4000"], ["loss", "0.6900", "0.3000", "-0.3900"]]
    assert features_note({"accuracy": 0.5}) is None


def test_under_a_new_head_the_probe_column_sits_beside_the_untrained_head():
    baseline = {"accuracy": 0.5, "macro_f1": 0.33, "loss": 0.69, "features": FEATURES}
    headers, rows = before_after_table(baseline, FINAL, ["accuracy", "loss"])
    assert headers == ["metric", "pre-trained, untrained head", FEATURES_COLUMN, "fine-tuned", "change"]
    assert rows[0] == ["accuracy", "0.5000", "0.9500", "0.9000", "+0.4000"]
    assert rows[1] == ["loss", "0.6900", "", "0.3000", "-0.3900"]  # the probe's loss is not kept: an empty cell
    note = features_note(baseline)
    assert "chance" in note and "logistic regression" in note and "18 training rows" in note
