"""Calibrated probabilities for the single-label classifiers (text, image, audio).

A fine-tuned network's softmax is usually over-confident. Temperature scaling (Guo et al. 2017)
divides the logits by one number T, fitted on the validation rows to minimise their log loss: the
predicted labels stay the same, the probabilities become honest. The task fits T whenever it
scores its validation rows during training, saves it beside the model as `calibration.json`, and
reads it back for evaluate/predict, where it is applied and never refitted (refitting on the rows
being scored would flatter them).

For two labels the same file keeps operating points for a screening use (medical imaging, fraud):
the threshold on the positive label's calibrated probability that reaches a target sensitivity
(0.90, 0.95) on validation, and the sensitivity and specificity each threshold then gives on the
rows scored. The positive label is the second name in label order ("1", "positive", "malignant").

Metrics added to accuracy and macro F1: ROC AUC (the positive label's, one-vs-rest macro beyond
two) and each label's own (NaN for a label absent from the rows), AUPRC, log loss, Brier score, ECE with its reliability bins, and each of
ECE, log loss and the bins again after scaling (`*_calibrated`), with the `temperature` used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ModelSourceError
from tunesmith.report.classification_metrics import classification_metrics
from tunesmith.report.probability_metrics import calibration, ranking_and_calibration

FILE = "calibration.json"
TARGET_SENSITIVITIES = (0.90, 0.95)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return float((log_z - shifted[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the log loss of softmax(logits / T) on these rows (a
    one-dimensional bounded search on log T; the loss is convex in 1/T)."""
    from scipy.optimize import minimize_scalar

    logits = logits.astype(np.float64)
    best = minimize_scalar(lambda log_t: log_loss(logits / np.exp(log_t), y), bounds=(-3.0, 3.0), method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))


def per_class_roc_auc(probs: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, float]:
    """One-vs-rest ROC AUC of each label present (and not alone) in `y`."""
    from sklearn.metrics import roc_auc_score

    return {name: float(roc_auc_score(y == c, probs[:, c])) for c, name in enumerate(names)
            if 0 < (y == c).sum() < len(y)}


def sensitivity_thresholds(p: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """For each target sensitivity, the highest threshold on `p` whose rows at or above it hold at
    least that share of the positives; empty without positives."""
    if not positive.any():
        return {}
    ranked = np.sort(p[positive])[::-1]
    return {f"{t:.2f}": float(ranked[min(int(np.ceil(t * len(ranked))), len(ranked)) - 1]) for t in TARGET_SENSITIVITIES}


def operating_points(p: np.ndarray, positive: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    """Sensitivity and specificity on these rows at each target's threshold."""
    points = {}
    for target, threshold in thresholds.items():
        flagged = p >= threshold
        points[target] = {"threshold": threshold,
                          "sensitivity": float(flagged[positive].mean()) if positive.any() else float("nan"),
                          "specificity": float((~flagged[~positive]).mean()) if (~positive).any() else float("nan")}
    return points


class TemperatureScaling:
    """The temperature (and two-label thresholds) of one classifier: `fitted` on the validation rows
    during training, or `saved` with the model and read back for evaluate/predict."""

    def __init__(self) -> None:
        self.fitted: dict[str, Any] | None = None
        self.saved: dict[str, Any] | None = None

    @property
    def temperature(self) -> float | None:
        current = self.saved or self.fitted
        return None if current is None else float(current["temperature"])

    def scores(self, logits: np.ndarray, y: np.ndarray, names: list[str], fit: bool) -> dict[str, Any]:
        """Classification, ranking and calibration metrics of (N, K) logits against (N,) label ids,
        before and after temperature scaling; `fit` refits the temperature on these rows, unless
        one was saved with the model."""
        results = classification_metrics(logits.argmax(-1), y, names)
        if not len(y):
            return results
        probs = softmax(logits.astype(np.float64))
        results.update(ranking_and_calibration(probs, y))
        aucs = per_class_roc_auc(probs, y, names)
        for name, row in results["per_class"].items():
            row["roc_auc"] = aucs.get(name, float("nan"))
        if fit and self.saved is None:
            t = fit_temperature(logits, y)
            fitted: dict[str, Any] = {"temperature": t}
            if len(names) == 2:
                fitted["positive_label"] = names[1]
                fitted["thresholds"] = sensitivity_thresholds(softmax(logits / t)[:, 1], y == 1)
            self.fitted = fitted
        current = self.saved or self.fitted
        if current is None:
            return results
        t = float(current["temperature"])
        scaled = softmax(logits.astype(np.float64) / t)
        after = calibration(scaled.max(1), scaled.argmax(1) == y)
        results.update(temperature=t, ece_calibrated=after["ece"], reliability_calibrated=after["reliability"],
                       log_loss_calibrated=log_loss(logits / t, y))
        if current.get("thresholds"):
            results["operating_points"] = operating_points(scaled[:, 1], y == 1, current["thresholds"])
        return results

    def write(self, folder: str) -> None:
        """`calibration.json` in a saved model's folder, when a temperature has been fitted."""
        if self.fitted is not None:
            (Path(folder) / FILE).write_text(json.dumps(self.fitted, indent=2) + "\n", encoding="utf-8")

    def read(self, folder: str | Path) -> None:
        """Reads `calibration.json` from a fine-tuned model's folder, if it has one.

        Raises:
            ModelSourceError: the file is not JSON with a positive `temperature`.
        """
        path = Path(folder) / FILE
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            ok = isinstance(saved, dict) and float(saved["temperature"]) > 0
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ModelSourceError(f"{path}: not a calibration file (JSON with a positive \"temperature\"); "
                                   "delete it to use the model's raw probabilities, or train again to write it anew")
        self.saved = saved
