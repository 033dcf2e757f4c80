"""Text classification (sentiment, topics, intents, sentence pairs) on a transformer encoder.

Rows are a text column (plus an optional second text for pairs) and a label column. Texts are
tokenized once, unpadded; batches are padded to their own longest row. The head is the model's
own `AutoModelForSequenceClassification` head, so `best/` loads in plain transformers, with the
label names stored as `id2label`/`label2id`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig
from tunesmith.data.labelled import (
    LabelledRows,
    balanced_class_weights,
    check_known_labels,
    duplicates_and_leaks,
    label_names_of,
    load_labelled,
    sample,
    stratified_split,
)
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import DataError
from tunesmith.models.layer_groups import LayerGroup, transformer_layer_groups
from tunesmith.models.sources import (dropout_overrides, from_pretrained_kwargs, loading, resolve_source,
                                     source_label_names, token_limit)
from tunesmith.report.classification_metrics import classification_metrics
from tunesmith.tasks import register_task

log = logging.getLogger("tunesmith")


@register_task("text-classification")
class TextClassificationTask:
    primary_metrics = ("accuracy", "macro_f1")
    supports_activation_cache = True  # inputs are fixed token ids; groups are embeddings + blocks

    def __init__(self, config: RunConfig):
        self.config = config
        self.resolved = resolve_source(config.model.source, config.model.trust_remote_code)
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.tokenizer = None
        self.truncated = 0
        self.data_checks: dict[str, int] = {}

    # ---- data -------------------------------------------------------------------------------

    @property
    def input_columns(self) -> list[str]:
        d = self.config.data
        return [d.text_column] + ([d.text_pair_column] if d.text_pair_column else [])

    def preflight(self) -> None:
        """Reads and checks the data. Without a training file, labels come from the model."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (and optionally data.validation)")
        if d.train is not None:
            train = load_labelled(d.train, self.input_columns, d.label_column, d.bad_rows)
            if d.validation is None:
                train, val = stratified_split(train, d.validation_split, seed)
            else:
                val = load_labelled(d.validation, self.input_columns, d.label_column, d.bad_rows)
            self.label_names = label_names_of(train)
            self.train_rows = sample(train, d.max_train_samples, seed)
            self.data_checks = duplicates_and_leaks(self.train_rows, val)
        else:
            self.label_names = source_label_names(self.resolved, self.config.model.trust_remote_code)
            val = load_labelled(d.validation, self.input_columns, d.label_column, d.bad_rows)
        check_known_labels(val, self.label_names)
        self.eval_rows = sample(val, d.max_eval_samples, seed)

    def unlabelled_rows(self, path: str) -> LabelledRows:
        return load_labelled(path, self.input_columns, None, self.config.data.bad_rows)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "label_counts": dict(Counter(rows.labels))}
        facts["truncated_to_max_length"] = self.truncated
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's encoder with a head for these labels; under `model.pretrained: false` the
        same architecture from random initialization, with the source's tokenizer."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        trust = self.config.model.trust_remote_code
        kwargs = from_pretrained_kwargs(self.resolved, trust)
        names = self.label_names
        head = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)},
                **dropout_overrides(self.resolved, self.config.model.dropout, self.config.model.trust_remote_code)}
        with loading(self.resolved):
            self.tokenizer = AutoTokenizer.from_pretrained(self.resolved.location, **kwargs)
            if not self.config.model.pretrained:
                model_config = AutoConfig.from_pretrained(self.resolved.location, **head, **kwargs)
                return AutoModelForSequenceClassification.from_config(model_config, trust_remote_code=trust)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.resolved.location,
                # A source fine-tuned on other labels has a head of another size: replace it.
                ignore_mismatched_sizes=True,
                **head,
                **kwargs,
            )
        return model

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as it is (head and labels included), for evaluate/predict."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        kwargs = from_pretrained_kwargs(self.resolved, self.config.model.trust_remote_code)
        with loading(self.resolved):
            self.tokenizer = AutoTokenizer.from_pretrained(self.resolved.location, **kwargs)
            model = AutoModelForSequenceClassification.from_pretrained(self.resolved.location, **kwargs)
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return transformer_layer_groups(model)

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            'model = AutoModelForSequenceClassification.from_pretrained("path/to/best")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/best")\n```'
        )

    def save(self, model: nn.Module, folder: str) -> None:
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Token ids per row, tokenized once and unpadded (no augmentation, so `train` is unused)."""
        max_length = token_limit(self.tokenizer, self.config.data.max_length)
        columns, cut = [], [False] * len(rows)
        for c in self.input_columns:
            texts, cut_here = cap_texts(rows.inputs[c], char_limit(max_length))
            columns.append(texts)
            cut = [a or b for a, b in zip(cut, cut_here)]
        encoded = self.tokenizer(*columns, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        label_ids = {n: i for i, n in enumerate(self.label_names)}
        features = []
        for i in range(len(rows)):
            feature = {k: encoded[k][i] for k in keys}
            if labelled:
                feature["labels"] = label_ids[rows.labels[i]]
            features.append(feature)
        truncated = sum(len(f["input_ids"]) >= max_length or c for f, c in zip(features, cut))
        if truncated:
            log.info("%s: %d of %d texts reached max_length=%d and were truncated", rows.source, truncated, len(rows), max_length)
        self.truncated += truncated
        return features

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [len(f["input_ids"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pads a batch to its own longest row: (B, T) ids, mask and token types, (B,) labels."""
        longest = max(len(f["input_ids"]) for f in features)
        batch_size = len(features)
        input_ids = torch.full((batch_size, longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
        has_types = "token_type_ids" in features[0]
        token_type_ids = torch.zeros((batch_size, longest), dtype=torch.long) if has_types else None
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"])
            attention_mask[i, :n] = 1
            if has_types:
                token_type_ids[i, :n] = torch.tensor(f["token_type_ids"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if has_types:
            batch["token_type_ids"] = token_type_ids
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, num_labels)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)
        t = self.config.training
        loss = F.cross_entropy(
            logits.float(),
            batch["labels"],
            weight=self._class_weights(logits.device),
            label_smoothing=t.label_smoothing_factor,
        )
        return loss, logits

    def _class_weights(self, device: torch.device) -> torch.Tensor | None:
        if self.config.training.class_weights != "balanced" or self.train_rows is None:
            return None
        if not hasattr(self, "_weights"):
            self._weights = torch.tensor(balanced_class_weights(self.train_rows.labels, self.label_names))
        return self._weights.to(device)

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return classification_metrics(outputs.argmax(-1), labels, self.label_names)

    def predictions(self, rows: LabelledRows, outputs: np.ndarray) -> list[dict[str, Any]]:
        """One record per row: the inputs, the predicted label and the probability of each label."""
        probs = torch.softmax(torch.from_numpy(outputs).float(), dim=-1).numpy()
        records = []
        for i in range(len(rows)):
            record = {c: rows.inputs[c][i] for c in self.input_columns}
            record["label"] = self.label_names[int(probs[i].argmax())]
            record["score"] = round(float(probs[i].max()), 6)
            record.update({f"prob_{n}": round(float(p), 6) for n, p in zip(self.label_names, probs[i])})
            records.append(record)
        return records
