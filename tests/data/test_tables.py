"""Column typing, preprocessing and cell checks of data/tables.py and the spec encoding it feeds."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.data.labelled import LabelledRows
from tunesmith.data.tables import fit_columns, single_column_auc, unreadable_numbers
from tunesmith.errors import DataError
from tunesmith.models.tabular_network import MISSING, UNSEEN, encode


def rows(columns: dict[str, list[str]], labels: list[str] | None = None) -> LabelledRows:
    n = len(next(iter(columns.values())))
    return LabelledRows("t.csv", columns, labels or ["0"] * n, list(range(2, n + 2)), columns=columns)


def test_numbers_with_gaps_are_numeric_and_anything_else_categorical():
    spec = fit_columns(rows({"age": ["30", "", "50"], "city": ["oslo", "lima", ""], "zip": ["0150", "0151", "0150"]}),
                       categorical=["zip"], numeric=[], key="k")
    assert [c["name"] for c in spec["numeric"]] == ["age"]
    assert spec["numeric"][0] == {"name": "age", "mean": 40.0, "std": 10.0, "missing": True}
    assert spec["categorical"] == [{"name": "city", "categories": ["lima", "oslo"]},
                                   {"name": "zip", "categories": ["0150", "0151"]}]


def test_encoding_standardises_flags_gaps_and_maps_unseen_and_missing_categories():
    spec = fit_columns(rows({"age": ["30", "", "50"], "city": ["oslo", "lima", "oslo"]}), [], [], "k")
    num, cat = encode({"age": ["40", "", "inf"], "city": ["lima", "paris", " "]}, spec)
    np.testing.assert_allclose(num, [[0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # mean 40; infinity counts as missing
    assert cat[:, 0].tolist() == [2, UNSEEN, MISSING]


def test_a_constant_column_gets_unit_scale_and_an_empty_one_is_refused():
    spec = fit_columns(rows({"c": ["7", "7"]}), [], [], "k")
    assert spec["numeric"][0]["std"] == 1.0
    with pytest.raises(DataError, match="column 'e' is empty in every training row; drop it with k.drop"):
        fit_columns(rows({"e": ["", " "]}), [], [], "k")


def test_a_declared_numeric_column_skips_or_refuses_rows_that_are_no_number():
    table = rows({"amount": ["1.5", "n/a", "3"]})
    spec = fit_columns(table, [], ["amount"], "k")
    with pytest.raises(DataError, match=r"1 rows have a numeric column cell that is not a number: line 3 \(amount='n/a'\)"):
        unreadable_numbers(table, spec, "error", "k")
    kept = unreadable_numbers(table, spec, "skip", "k")
    assert kept.inputs["amount"] == ["1.5", "3"] and kept.skipped == 1


def test_single_column_auc_counts_a_backwards_ranking_and_rates_categories():
    table = rows({"down": ["3", "2", "1", "0"], "group": ["a", "a", "b", "b"]}, ["0", "0", "1", "1"])
    spec = fit_columns(table, [], [], "k")
    assert single_column_auc(table, spec, "1") == {"down": 1.0, "group": 1.0}


def test_nan_and_infinity_written_as_text_are_missing_numbers_not_categories():
    spec = fit_columns(rows({"x": ["1", "NaN", "inf", "3"]}), [], [], "k")
    assert spec["numeric"] == [{"name": "x", "mean": 2.0, "std": 1.0, "missing": True}]


def test_drift_is_zero_on_the_same_rows_and_names_the_column_that_moved():
    from tunesmith.data.tables import drift, profile

    rng = np.random.default_rng(0)
    old = rows({"rate": [f"{v:.3f}" for v in rng.normal(4, 1, 500)], "job": list(rng.choice(["a", "b"], 500))})
    new = rows({"rate": [f"{v:.3f}" for v in rng.normal(1, 1, 500)], "job": list(rng.choice(["a", "b"], 500))})
    spec = fit_columns(old, [], [], "k")
    before = profile(old, spec)
    assert drift(before, old) == {"rate": 0.0, "job": 0.0}
    moved = drift(before, new)
    assert list(moved) == ["rate", "job"] and moved["rate"] > 1 and moved["job"] < 0.05


def test_only_drift_beyond_sampling_noise_is_named(caplog):
    import logging

    from tunesmith.data.tables import drift, profile, report_drift

    rng = np.random.default_rng(0)
    old = rows({"x": [f"{v:.3f}" for v in rng.normal(0, 1, 400)]})
    same, shifted = (rows({"x": [f"{v:.3f}" for v in rng.normal(mu, 1, 60)]}) for mu in (0, 2))
    before = profile(old, fit_columns(old, [], [], "k"))
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        report_drift(drift(before, same), before, 60, "parent")
        report_drift(drift(before, shifted), before, 60, "parent")
    assert "no column moved beyond what 60 rows vary by" in caplog.text
    assert "1 of 1 columns moved (population stability index, 0.1 moderate, 0.25 major): x " in caplog.text
