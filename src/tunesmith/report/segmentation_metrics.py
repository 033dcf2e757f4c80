"""Per-pixel scores of class maps against their true masks: IoU and Dice per class, their means.

Scores come from one confusion matrix summed over every image of the rows scored (pixels marked 255
in the truth left out), so a subset of rows (`evaluate --by`) is scored the same way as the whole.
`miou` averages IoU over the classes present in the truth or the predictions (classes absent from
both have no IoU); `dice` is the mean Dice of the foreground classes (for one object class on a
background, the Dice score medical imaging reports).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.data.masks import IGNORE


def segmentation_metrics(truths: list[np.ndarray], predictions: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """`miou`, `dice`, `pixel_accuracy` and `per_class` ({name: iou, dice, pixels}) of per-image maps."""
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)  # (true, predicted)
    for truth, predicted in zip(truths, predictions):
        keep = truth != IGNORE
        confusion += np.bincount(truth[keep].astype(np.int64) * k + predicted[keep].astype(np.int64),
                                 minlength=k * k).reshape(k, k)
    hits = np.diag(confusion).astype(np.float64)
    true_pixels, predicted_pixels = confusion.sum(1), confusion.sum(0)
    union = true_pixels + predicted_pixels - hits
    iou = np.divide(hits, union, out=np.full(k, np.nan), where=union > 0)
    dice = np.divide(2 * hits, true_pixels + predicted_pixels, out=np.full(k, np.nan), where=union > 0)
    foreground = dice[1:] if k > 1 else dice
    total = confusion.sum()
    return {
        "miou": _mean(iou),
        "dice": _mean(foreground),
        "pixel_accuracy": float(hits.sum() / total) if total else 0.0,
        "per_class": {name: {"iou": _value(iou[i]), "dice": _value(dice[i]), "pixels": int(true_pixels[i])}
                      for i, name in enumerate(names)},
    }


def _mean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else 0.0


def _value(v: float) -> float:
    return 0.0 if np.isnan(v) else float(v)
