"""Tabular classification (fraud, credit risk, churn, diagnoses) on numeric and categorical columns.

Rows are a CSV, TSV, JSONL or Parquet table with a label column; every other column is a feature
unless `tabular_classification.features` or `drop` says otherwise, typed and checked by
data/tables.py. The model is a new MLP or FT-Transformer (`model.source: mlp | ft-transformer`) or
a trained tabular model to fine-tune on newer rows (a run directory), see tasks/_tabular.py.

Rare positives are the usual case, so the default metric that selects the best model is AUPRC, never
accuracy; the report adds ROC AUC, log loss, Brier score, calibration (ECE and the reliability
bins), and for two labels the decision threshold chosen on validation (best F1, or lowest cost
given the cost of a false positive and of a false negative), precision, recall and cost at it, and
precision and recall in the top-k scores, and sensitivity and specificity at the thresholds that
reach a sensitivity of 0.90 and 0.95 on validation (`operating_points`, tasks/_calibration.py). All
thresholds are saved with the model; `predict` decides with `threshold`. `training.class_weights: balanced` and `loss: focal` weigh the rare class up.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tunesmith.config import Section
from tunesmith.data.labelled import LabelledRows, balanced_class_weights, check_known_labels, label_names_of
from tunesmith.data.tables import column_warnings
from tunesmith.errors import DataError
from tunesmith.report.classification_metrics import classification_metrics
from tunesmith.report.probability_metrics import choose_threshold, decisions, ranking_and_calibration
from tunesmith.tasks import ClassWeights, OneOutputPerRow, label_ids, label_probabilities, register_task, stacked
from tunesmith.tasks._calibration import operating_points, sensitivity_thresholds
from tunesmith.tasks._tabular import TabularSettings, TabularTask

log = logging.getLogger("tunesmith")


class TabularClassificationConfig(TabularSettings):
    """`tabular_classification`: the tabular keys, and how two-label decisions are made and scored."""

    positive_label: str | None = None
    """Two labels: the one whose probability is thresholded (fraud, default, disease). Default: the
    rarer training label."""
    threshold: float | None = Field(None, gt=0, lt=1)
    """Two labels: a fixed decision threshold on the positive probability. Default: chosen on the
    validation rows (best F1, or lowest cost with the costs below), saved with the model, used by predict."""
    cost_false_positive: float | None = Field(None, ge=0)
    """Cost of flagging a negative row (a false alarm); set with `cost_false_negative` to choose the
    threshold by cost and report `cost` per row."""
    cost_false_negative: float | None = Field(None, ge=0)
    """Cost of missing a positive row (fraud let through)."""
    top_k: float = Field(0.05, gt=0)
    """`precision_at_k` / `recall_at_k` look at the k highest scores: a count (1 or more) or a
    fraction of the rows (below 1), as many as a team can review."""
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    """`focal` down-weights easy rows (Lin et al. 2017), for very rare positives."""
    focal_gamma: float = Field(2.0, ge=0)
    """Focal loss focusing strength; 0 is cross-entropy."""

    @model_validator(mode="after")
    def _costs_come_in_pairs(self) -> TabularClassificationConfig:
        if (self.cost_false_positive is None) != (self.cost_false_negative is None):
            raise ValueError("set both cost_false_positive and cost_false_negative, or neither")
        return self

    @property
    def costs(self) -> tuple[float, float] | None:
        if self.cost_false_positive is None or self.cost_false_negative is None:
            return None
        return self.cost_false_positive, self.cost_false_negative


@register_task("tabular-classification")
class TabularClassificationTask(OneOutputPerRow, TabularTask):
    metric_names: ClassVar[tuple[str, ...]] = (
        "auprc", "roc_auc", "log_loss", "brier", "ece", "accuracy", "macro_f1", "f1", "precision", "recall", "cost",
        "precision_at_k", "recall_at_k")
    minimize = ("loss", "log_loss", "brier", "ece", "cost")
    settings: ClassVar[type[Section] | None] = TabularClassificationConfig
    task_kind: ClassVar[str] = "classification"

    def __init__(self, config: Any):
        super().__init__(config)
        self.positive: str | None = None
        self.threshold: float | None = None  # the one in use: fixed, saved, or chosen at the last full evaluation
        self.fixed_threshold = self.options.threshold
        self.screening: dict[str, float] | None = None  # target sensitivity -> threshold, chosen like `threshold`
        self.saved_screening: dict[str, float] | None = None
        self.class_weights = ClassWeights()  # training.class_weights: balanced
        self.column_auc: dict[str, float] = {}

    @property
    def options(self) -> TabularClassificationConfig:
        return self.config.task_settings

    # ---- labels -----------------------------------------------------------------------------

    def set_labels(self, parent: dict[str, Any] | None) -> None:
        """Labels from the parent model or the training rows; the positive label for two; the architecture."""
        if parent is not None:
            self.label_names = list(parent["labels"])
        else:
            self.label_names = label_names_of(self.train_rows or self.eval_rows)  # type: ignore[arg-type]  # preflight set one
        for rows in (self.train_rows, self.eval_rows):
            if rows is not None:
                check_known_labels(rows, self.label_names)
        self.positive = self._positive(parent)
        if parent is not None and parent.get("label_shares") and self.train_rows is not None:
            self._label_drift(parent["label_shares"])
        self.spec["architecture"] = self.architecture_spec(len(self.label_names))
        if self.train_rows is not None:
            self.column_auc = column_warnings(self.train_rows, self.spec, self.positive, self.key)

    def _label_drift(self, before: dict[str, float]) -> None:
        """Logs how the label shares of the new training rows differ from the parent model's."""
        now = self._label_shares()
        moved = ", ".join(f"{n!r} {before.get(n, 0):.1%} -> {now.get(n, 0):.1%}" for n in self.label_names)
        log.info("label shares since %s: %s", self.parent, moved)

    def _label_shares(self) -> dict[str, float]:
        counts = Counter(self.train_rows.labels) if self.train_rows is not None else Counter()
        return {n: counts[n] / max(sum(counts.values()), 1) for n in self.label_names}

    def _positive(self, parent: dict[str, Any] | None) -> str | None:
        if len(self.label_names) != 2:
            return None
        chosen = self.options.positive_label or (parent or {}).get("positive_label")
        if chosen is not None and chosen not in self.label_names:
            raise DataError(f"{self.key}.positive_label: {chosen!r} is not a label; labels are "
                            f"{', '.join(repr(n) for n in self.label_names)}")
        if chosen is None:
            counts = Counter((self.train_rows or self.eval_rows).labels)  # type: ignore[union-attr]  # preflight set one
            chosen = min(reversed(self.label_names), key=lambda n: counts[n])  # the rarer; the second on a tie
            log.info("positive label: %r (the rarer, %d of %d training rows); set %s.positive_label to change it",
                     chosen, counts[chosen], sum(counts.values()), self.key)
        return chosen

    def loaded_spec(self, spec: dict[str, Any]) -> None:
        self.label_names, self.positive = list(spec["labels"]), spec.get("positive_label")
        self.fixed_threshold = self.threshold = self.options.threshold or spec.get("threshold")
        self.saved_screening = spec.get("sensitivity_thresholds")

    def saved_spec(self) -> dict[str, Any]:
        shares = self._label_shares() if self.train_rows is not None else self.spec.get("label_shares")
        return {**self.spec, "labels": self.label_names, "positive_label": self.positive, "threshold": self.threshold,
                "sensitivity_thresholds": self.screening, "label_shares": shares}

    def booster_weights(self) -> np.ndarray | None:
        if self.config.training.class_weights != "balanced" or self.train_rows is None:
            return None
        return np.array(balanced_class_weights(self.train_rows.labels, self.label_names))

    def targets(self, rows: LabelledRows) -> np.ndarray:
        return label_ids(rows, self.label_names)

    def describe(self) -> dict[str, Any]:
        facts = {"labels": self.label_names, "positive_label": self.positive, **self.describe_columns()}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split]["label_counts"] = dict(Counter(rows.labels))
        if self.column_auc:
            facts["single_column_roc_auc"] = dict(list(self.column_auc.items())[:5])
        return facts

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch).float()
        weight = self.class_weights(self.config, self.train_rows, self.label_names, logits.device)
        labels = batch["labels"]
        if self.options.loss == "focal":
            log_p = F.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]
            per_row = -((1 - log_p.exp()) ** self.options.focal_gamma) * log_p
            if weight is not None:
                per_row = per_row * weight[labels]
            return per_row.mean(), logits
        smoothing = self.config.training.label_smoothing_factor
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing), logits

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Ranking, calibration and (two labels) the decision metrics at the threshold: the fixed or saved
        one, or the best on these rows when they are the validation rows of a training run."""
        probs = torch.softmax(torch.from_numpy(stacked(outputs, len(self.label_names))), -1).numpy().astype(np.float64)
        y = label_ids(rows, self.label_names)
        if self.positive is None:
            return {**classification_metrics(probs.argmax(1), y, self.label_names), **ranking_and_calibration(probs, y),
                    "cost": float((probs.argmax(1) != y).mean())}
        pos = self.label_names.index(self.positive)
        p, is_pos, costs = probs[:, pos], y == pos, self.options.costs
        if self.fixed_threshold is not None:
            self.threshold = self.fixed_threshold
        elif rows is self.eval_rows or self.threshold is None:
            self.threshold = choose_threshold(p, is_pos, costs)
        if self.saved_screening is not None:
            self.screening = self.saved_screening
        elif rows is self.eval_rows or self.screening is None:
            self.screening = sensitivity_thresholds(p, is_pos)
        top = self.options.top_k
        k = int(top) if top >= 1 else max(1, round(top * len(p)))
        predicted = np.where(p >= self.threshold, pos, 1 - pos)
        return {**classification_metrics(predicted, y, self.label_names), **ranking_and_calibration(probs, y, pos),
                **decisions(p, is_pos, self.threshold, costs, k),
                "operating_points": operating_points(p, is_pos, self.screening)}

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: the probability of each label and the decision (two labels: at the saved threshold)."""
        records = label_probabilities(outputs, self.label_names)
        if self.positive is not None:
            threshold = self.threshold if self.threshold is not None else 0.5
            negative = next(n for n in self.label_names if n != self.positive)
            for r in records:
                r["predicted_label"] = self.positive if r[f"prob_{self.positive}"] >= threshold else negative
                r["score"] = r[f"prob_{r['predicted_label']}"]
                r["threshold"] = threshold
        return records
