"""Classification metrics: accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix.

scikit-learn computes them; this module only fixes the label order (so the matrix rows match the
model's ids) and returns plain JSON-ready values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Metrics for predicted vs true class ids.

    Returns:
        `accuracy`, `macro_f1`, `per_class` ({name: precision, recall, f1, support}) and
        `confusion_matrix` (rows: true label, columns: predicted, in label-id order).
    """
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0
    )
    present = support > 0
    return {
        "accuracy": float((predictions == labels).mean()) if len(labels) else 0.0,
        # Macro F1 over the classes present in the evaluated data, so a small validation set
        # missing a rare class is not scored as if the model had failed on it.
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
    }
