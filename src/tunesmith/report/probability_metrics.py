"""Metrics of predicted probabilities that suit rare positives: ranking, calibration and decisions.

Ranking: AUPRC (average precision) and ROC AUC, one-vs-rest macro averages beyond two labels.
Calibration: log loss, Brier score, and the expected calibration error over 10 equal-width bins of
the top probability, with the bins kept (`reliability`) for the report's reliability diagram.
Decisions, for two labels: the threshold on the positive probability is chosen on the rows scored
(the validation rows during training) to maximise F1, or to minimise the cost when a cost per false
positive and false negative is given, unless one is fixed; precision, recall, F1 and cost at it,
and precision and recall among the top-k scores. Accuracy is reported, never chosen by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10


def ranking_and_calibration(probs: np.ndarray, y: np.ndarray, positive: int = 1) -> dict[str, Any]:
    """AUPRC, ROC AUC, log loss, Brier score, ECE and the reliability bins of (N, K) probabilities; for
    two labels AUPRC and ROC AUC are the `positive` label's (index), else one-vs-rest macro averages."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n, k = probs.shape
    onehot = np.eye(k)[y]
    present = [c for c in range(k) if 0 < onehot[:, c].sum() < n]  # a class absent (or alone) has no ranking
    cols = [positive] if k == 2 else present
    scores: dict[str, Any] = {
        "auprc": float(np.mean([average_precision_score(onehot[:, c], probs[:, c]) for c in cols])) if present else float("nan"),
        "roc_auc": float(np.mean([roc_auc_score(onehot[:, c], probs[:, c]) for c in cols])) if present else float("nan"),
        "log_loss": float(-np.log(np.clip(probs[np.arange(n), y], 1e-12, 1)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }
    scores.update(calibration(probs.max(1), probs.argmax(1) == y))
    return scores


def calibration(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """`ece`: the row-weighted gap between confidence and accuracy per bin; `reliability`: the bins."""
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, BINS - 1)
    bins, ece = [], 0.0
    for b in range(BINS):
        mask = which == b
        if mask.any():
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += mask.mean() * abs(conf - acc)
            bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": conf,
                         "accuracy": acc, "rows": int(mask.sum())})
    return {"ece": float(ece), "reliability": bins}


def choose_threshold(p: np.ndarray, positive: np.ndarray, costs: tuple[float, float] | None) -> float:
    """The positive-probability threshold with the best F1 (or, given (false positive, false negative)
    costs, the lowest cost) on these rows; 0.5 where no row is positive."""
    if not positive.any():
        return 0.5
    candidates = np.unique(p)
    order = np.argsort(-p)
    sorted_p, hits = p[order], positive[order]
    tp = np.cumsum(hits)  # predicted positive = the top i+1 scores
    fp = np.cumsum(~hits)
    last = np.searchsorted(-sorted_p, -candidates, side="right") - 1  # for each candidate: rows >= it
    tp, fp = tp[last], fp[last]
    fn = positive.sum() - tp
    if costs is None:
        value = -2 * tp / np.maximum(2 * tp + fp + fn, 1)
    else:
        value = costs[0] * fp + costs[1] * fn
    return float(candidates[int(np.argmin(value))])


def decisions(p: np.ndarray, positive: np.ndarray, threshold: float, costs: tuple[float, float] | None,
              top_k: int) -> dict[str, Any]:
    """Precision, recall, F1 and cost per row at `threshold`; precision and recall in the top `top_k` scores."""
    predicted = p >= threshold
    tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    fp_cost, fn_cost = costs or (1.0, 1.0)
    top = np.argsort(-p, kind="stable")[:top_k]
    return {
        "threshold": threshold,
        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "cost": (fp_cost * fp + fn_cost * fn) / max(len(p), 1),
        "k": int(len(top)), "precision_at_k": float(positive[top].mean()) if len(top) else 0.0,
        "recall_at_k": float(positive[top].sum() / max(positive.sum(), 1)),
    }
