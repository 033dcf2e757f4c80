"""The small-validation warning: when it fires, and the step size and noise it names."""

from __future__ import annotations

import logging

from tunesmith.report.validation_size import MIN_ROWS_PER_CLASS, small_validation_message, warn_small_validation


def facts(rows: int, counts: dict[str, int] | None = None) -> dict:
    validation = {"rows": rows, "source": "reviews.csv"}
    if counts is not None:
        validation["label_counts"] = counts
    return {"labels": sorted(counts or {}), "validation": validation}


def test_a_few_rows_per_class_is_too_small_to_select_a_model():
    message = small_validation_message(facts(12, {"pos": 7, "neg": 5}), "accuracy")
    assert message.startswith("small validation split: 12 rows, 5 of class 'neg' (the fewest; 6.0 per class")
    assert "accuracy moves in steps of 1/12 = 0.0833 (one row)" in message
    assert "±0.1443 (binomial standard error)" in message  # sqrt(0.25 / 12)
    assert "data.validation_split" in message


def test_enough_rows_of_every_class_gives_no_warning():
    counts = {"pos": MIN_ROWS_PER_CLASS, "neg": 3 * MIN_ROWS_PER_CLASS}
    assert small_validation_message(facts(4 * MIN_ROWS_PER_CLASS, counts), "accuracy") is None
    assert small_validation_message(facts(240, {"pos": 120, "neg": 120}), "macro_f1") is None


def test_tasks_without_classes_warn_on_few_rows_for_a_rate_metric():
    assert "small validation split: 20 rows." in small_validation_message(facts(20), "exact_match")
    assert small_validation_message(facts(20), "loss") is None  # a mean over tokens, not a share of rows
    assert small_validation_message(facts(200), "f1") is None


def test_loss_as_the_metric_names_no_step():
    message = small_validation_message(facts(8, {"a": 4, "b": 4}), "loss")
    assert "Validation loss on so few rows varies by chance" in message and "1/8" not in message


def test_the_warning_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        warn_small_validation(facts(6, {"a": 3, "b": 3}), "accuracy")
    assert "small validation split: 6 rows" in caplog.text
