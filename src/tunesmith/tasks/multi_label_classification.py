"""Multi-label text classification: each text has any number of labels (tags, topics, entity types).

Rows are a text column and a label column holding the row's labels joined by
`multi_label_classification.label_separator` (`sports|politics`), or `none_label` for a row with
none. The head is `AutoModelForSequenceClassification` with `problem_type: multi_label_classification`
(one sigmoid per label, trained with binary cross-entropy), so `best/` loads in plain transformers and
its pipeline applies sigmoids. A label is predicted when its probability reaches `threshold`.
Everything else (tokenization, batching, the encoder and its layer groups) is text classification's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.metrics import f1_score
from torch import nn

from tunesmith.config import Section
from tunesmith.data.labelled import LabelledRows, duplicates_and_leaks, load_labelled, random_split, sample
from tunesmith.errors import DataError
from tunesmith.tasks import register_task, stacked
from tunesmith.tasks.text_classification import TextClassificationTask


class MultiLabelClassificationConfig(Section):
    label_separator: str = Field("|", min_length=1)
    """Separates a row's labels in the label column (`sports|politics`)."""
    none_label: str = "none"
    """The label cell of a row that has no label at all (an empty cell is a bad row, as elsewhere)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """A label is predicted when its sigmoid probability reaches this."""


@register_task("multi-label-classification")
class MultiLabelClassificationTask(TextClassificationTask):
    metric_names: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "subset_accuracy")
    settings: ClassVar[type[Section] | None] = MultiLabelClassificationConfig
    supports_activation_cache: ClassVar[bool] = True  # the text classifier's inputs and groups

    @property
    def options(self) -> MultiLabelClassificationConfig:
        """This task's section, `config.multi_label_classification`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the rows; the label set is every label seen in training. Validation is a random split
        (a stratified one would need each combination of labels to recur)."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None:
            raise DataError("no training data: set data.train (multi-label classification learns its labels from it)")
        train = load_labelled(d.train, self.input_columns, d.label_column, d.bad_rows)
        if d.validation is None:
            train, val = random_split(train, d.validation_split, seed)
        else:
            val = load_labelled(d.validation, self.input_columns, d.label_column, d.bad_rows)
        self.label_names = sorted({name for cell in train.labels for name in self.split(cell)})
        if not self.label_names:
            raise DataError(f"{train.source}: no row has a label (every label cell is "
                            f"{self.options.none_label!r})")
        unseen = sorted({name for cell in val.labels for name in self.split(cell)} - set(self.label_names))
        if unseen:
            raise DataError(f"{val.source}: labels not seen in training: {', '.join(unseen[:10])}; add training rows "
                            "with them or remove them")
        self.train_rows = sample(train, d.max_train_samples, seed)
        self.data_checks = duplicates_and_leaks(self.train_rows, val)
        self.eval_rows = sample(val, d.max_eval_samples, seed)

    def split(self, cell: str) -> list[str]:
        """The labels of one label cell."""
        s = self.options
        if cell.strip() == s.none_label:
            return []
        return [part.strip() for part in cell.split(s.label_separator) if part.strip()]

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split]["label_counts"] = dict(Counter(n for cell in rows.labels for n in self.split(cell)))
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        names = self.label_names
        model = self.hf.build({"num_labels": len(names), "id2label": dict(enumerate(names)),
                               "label2id": {n: i for i, n in enumerate(names)},
                               "problem_type": "multi_label_classification"})
        self.tokenizer = self.hf.tokenizer
        return model

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Token ids per row and, when labelled, its labels as a 0/1 vector (one entry per label)."""
        features = super().dataset(rows, train, labelled=False)
        if labelled:
            for feature, hot in zip(features, self._multi_hot(rows)):
                feature["labels"] = hot.tolist()
        return features

    def _multi_hot(self, rows: LabelledRows) -> np.ndarray:
        """(N, labels) 0/1: which labels each row's cell names."""
        ids = {n: i for i, n in enumerate(self.label_names)}
        hot = np.zeros((len(rows), len(ids)), dtype=np.int64)
        for i, cell in enumerate(rows.labels):
            hot[i, [ids[name] for name in self.split(cell)]] = 1
        return hot

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)  # (B, num_labels)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float()), logits

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        labels = self._multi_hot(rows)
        predicted = (1 / (1 + np.exp(-stacked(outputs, len(self.label_names)))) >= self.options.threshold).astype(int)
        per_label = f1_score(labels, predicted, average=None, zero_division=0)
        return {
            "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
            # Over the labels present in the evaluated rows, as classification's macro_f1.
            "macro_f1": float(per_label[labels.sum(0) > 0].mean()) if labels.any() else 0.0,
            "subset_accuracy": float((predicted == labels).all(axis=1).mean()) if len(labels) else 0.0,
            "per_label_f1": {n: float(f) for n, f in zip(self.label_names, per_label)},
        }

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per row: the predicted labels (joined as in the input) and each label's probability."""
        s = self.options
        probs = 1 / (1 + np.exp(-stacked(outputs, len(self.label_names)).astype(np.float64)))
        records = []
        for i in range(len(rows)):
            names = [n for n, p in zip(self.label_names, probs[i]) if p >= s.threshold]
            record: dict[str, Any] = {"predicted_label": s.label_separator.join(names) or s.none_label}
            record.update({f"prob_{n}": round(float(p), 6) for n, p in zip(self.label_names, probs[i])})
            records.append(record)
        return records

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import pipeline\n"
            'classify = pipeline("text-classification", model="path/to/best", top_k=None)  # sigmoid per label\n'
            'print(classify("your text"))\n```'
        )
