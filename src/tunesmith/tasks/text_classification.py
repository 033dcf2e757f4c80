"""Text classification (sentiment, topics, intents, sentence pairs) on a transformer encoder.

Rows are a text column (plus an optional second text for pairs) and a label column. Texts are
tokenized once, unpadded; batches are padded to their own longest row. The head is the model's
own `AutoModelForSequenceClassification` head, so `best/` loads in plain transformers, with the
label names stored as `id2label`/`label2id`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import (
    LabelledRows,
    check_known_labels,
    duplicates_and_leaks,
    label_names_of,
    load_labelled,
    sample,
    stratified_split,
)
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import DataError, ModelSourceError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import source_label_names, token_limit
from tunesmith.tasks import ClassWeights, OneOutputPerRow, label_ids, label_probabilities, register_task, stacked
from tunesmith.tasks._calibration import TemperatureScaling

log = logging.getLogger("tunesmith")


@register_task("text-classification")
class TextClassificationTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "roc_auc")
    settings: ClassVar[type[Section] | None] = None  # reads only the shared sections
    supports_activation_cache: ClassVar[bool] = True  # inputs are fixed token ids; groups are embeddings + blocks

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModelForSequenceClassification", config.model)
        self.resolved = self.hf.resolved
        self.train_rows: LabelledRows | None = None
        self.class_weights = ClassWeights()  # training.class_weights: balanced
        self.calibration = TemperatureScaling()  # fitted on validation, saved as calibration.json
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.tokenizer: Any = None  # read with the model (HFModel.tokenizer); transformers types it loosely
        self.truncated = 0
        self.data_checks: dict[str, int] = {}
        self.untrained_head = False  # evaluate on a source with no classification head: scored as the baseline
        self.fresh_head = False  # build_model: the head starts untrained, so the baseline also probes the features

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
        elif d.validation is not None:
            val = load_labelled(d.validation, self.input_columns, d.label_column, d.bad_rows)
            self.label_names = self._evaluation_labels(val)
        check_known_labels(val, self.label_names)
        self.eval_rows = sample(val, d.max_eval_samples, seed)

    def _evaluation_labels(self, val: LabelledRows) -> list[str]:
        """Labels to score with no training file: the source's own, or (a source with no trained
        classification head, such as a pre-trained encoder) the file's, on a head drawn afresh."""
        if self._has_head():
            return source_label_names(self.resolved, self.config.model.trust_remote_code)
        self.untrained_head = True
        names = label_names_of(val)
        log.warning("%s has no trained classification head: scoring it with an untrained head on the labels of %s "
                    "(%s), the pre-trained baseline that fine-tuning starts from", self.config.model.source,
                    val.source, ", ".join(names))
        return names

    def _has_head(self) -> bool:
        """Whether the source was saved with a sequence-classification head (its config's architectures)."""
        model_config = self.hf.model_config()
        return any(a.endswith("ForSequenceClassification") for a in model_config.architectures or [])

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
        names = self.label_names
        model = self.hf.build({"num_labels": len(names), "id2label": dict(enumerate(names)),
                               "label2id": {n: i for i, n in enumerate(names)}})
        self.tokenizer = self.hf.tokenizer
        self.fresh_head = self.hf.fresh_head
        return model

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as it is (head and labels included), for evaluate/predict."""
        if self.untrained_head:  # see _evaluation_labels
            return self.build_model()
        if not self._has_head():  # its head would be random: predictions and exports would mean nothing
            raise ModelSourceError(f"{self.config.model.source} has no trained classification head, so its "
                                   "predictions would be random; fine-tune it first (tunesmith train) and use the run "
                                   "directory, or score it as the pre-trained baseline with tunesmith evaluate")
        model = self.hf.load_trained()
        self.tokenizer = self.hf.tokenizer
        if self.resolved.local:
            self.calibration.read(self.resolved.location)
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]  # type: ignore[index, arg-type]  # a saved classifier's config has both; transformers types them Optional
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            'model = AutoModelForSequenceClassification.from_pretrained("path/to/best")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/best")\n```'
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)
        self.calibration.write(folder)

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
            if token_type_ids is not None:
                token_type_ids[i, :n] = torch.tensor(f["token_type_ids"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, num_labels)

    def pooled_features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) the last hidden layer averaged over each row's real tokens: one rule for every
        encoder (heads pool differently: BERT's pooler, RoBERTa's first token), and the pooling
        sentence encoders such as MiniLM were trained with."""
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1), 0 on padding
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)
        t = self.config.training
        loss = F.cross_entropy(
            logits.float(),
            batch["labels"],
            weight=self.class_weights(self.config, self.train_rows, self.label_names, logits.device),
            label_smoothing=t.label_smoothing_factor,
        )
        return loss, logits

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Accuracy, macro F1, per-class table and confusion matrix, ROC AUC, and calibration before and
        after temperature scaling (tasks/_calibration.py)."""
        logits = stacked(outputs, len(self.label_names))
        return self.calibration.scores(logits, label_ids(rows, self.label_names), self.label_names,
                                       fit=rows is self.eval_rows and self.train_rows is not None)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per row: the inputs, the predicted label and the probability of each label."""
        return [{**{c: rows.inputs[c][i] for c in self.input_columns}, **record}
                for i, record in enumerate(label_probabilities(outputs, self.label_names, self.calibration.temperature))]
