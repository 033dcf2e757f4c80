"""Ranking, calibration and threshold metrics of report/probability_metrics.py against plain definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from tunesmith.report.probability_metrics import calibration, choose_threshold, decisions, ranking_and_calibration


def scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    return np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1), y


def test_the_chosen_threshold_is_the_best_f1_and_the_cheapest_under_costs():
    p, y = scores()
    best = choose_threshold(p, y, None)
    f1 = {t: f1_score(y, p >= t) for t in np.unique(p)}
    assert f1_score(y, p >= best) == pytest.approx(max(f1.values()))
    cost = {t: 1 * ((p >= t) & ~y).sum() + 20 * ((p < t) & y).sum() for t in np.unique(p)}
    cheap = choose_threshold(p, y, (1.0, 20.0))
    assert cost[cheap] == min(cost.values()) and cheap <= best  # missing a positive is dear: flag more
    assert choose_threshold(p, np.zeros_like(y), None) == 0.5


def test_decisions_count_at_the_threshold_and_in_the_top_k():
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    y = np.array([True, False, True, False, False])
    out = decisions(p, y, 0.35, (1.0, 5.0), top_k=2)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert out["cost"] == pytest.approx(1 / 5)  # one false alarm at cost 1 over five rows
    assert (out["precision_at_k"], out["recall_at_k"]) == (0.5, 0.5)


def test_ranking_matches_sklearn_and_calibration_bins_weigh_rows():
    p, y = scores()
    probs = np.stack([1 - p, p], 1)
    out = ranking_and_calibration(probs, y.astype(int))
    assert out["auprc"] == pytest.approx(average_precision_score(y, p))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert sum(b["rows"] for b in out["reliability"]) == len(p)
    perfect = calibration(np.array([0.75] * 4), np.array([True, True, True, False]))
    assert perfect["ece"] == pytest.approx(0.0)
    assert calibration(np.array([0.95, 0.95]), np.array([False, False]))["ece"] == pytest.approx(0.95)


def test_two_label_ranking_is_the_positive_labels_wherever_it_sorts():
    p, y = scores()
    probs = np.stack([p, 1 - p], 1)  # the positive ("fraud") first, as sorted labels put it before "ok"
    out = ranking_and_calibration(probs, (~y).astype(int), positive=0)
    assert out["auprc"] == pytest.approx(average_precision_score(y, p))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, p))
