"""Token classification (named entities and other tagging) on a transformer encoder.

Rows are sentences: words and one BIO/BIOES tag per word, read from CoNLL column files or JSONL
(`data/sequences.py`). Words are split into sub-tokens by the fast tokenizer; the first sub-token
of each word carries the word's tag and the others are ignored in the loss (-100), unless
`data.label_all_subtokens` gives them the tag too (B- continued as I-). Scores are entity-level
precision, recall and F1 (seqeval) on the words' first sub-tokens; words cut off by `max_length`
are not scored (as in Hugging Face's run_ner) and are tagged `O` by `predict`. The head is
`AutoModelForTokenClassification`'s, so `best/` loads in plain transformers with `id2label`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, check_known_labels, duplicates_and_leaks, random_split, sample
from tunesmith.data.sequences import TOKENS, as_text_rows, read_tagged, tag_names, tag_scheme
from tunesmith.data.text_limits import cap_words, char_limit
from tunesmith.errors import DataError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import load_fast_tokenizer, source_label_names, token_limit
from tunesmith.report.entity_metrics import entity_metrics, entity_spans
from tunesmith.tasks import register_task

log = logging.getLogger("tunesmith")
IGNORE = -100  # label of positions the loss and the scores skip


class TokenClassificationConfig(Section):
    tokens_column: str = "tokens"
    """JSONL key of each sentence's word list (CoNLL files: the first column)."""
    tags_column: str = "tags"
    """JSONL key of the BIO/BIOES tags, one per word (CoNLL files: the last column)."""
    label_all_subtokens: bool = False
    """Train on every sub-token of a word (B- continued as I-), not only the first."""


def _fast_tokenizer(resolved, kwargs: dict[str, Any]):
    """Word alignment needs `word_ids()`, which only fast (Rust) tokenizers give."""
    return load_fast_tokenizer(resolved, kwargs, "token classification", "to align tags with sub-words")


@register_task("token-classification")
class TokenClassificationTask:
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "accuracy", "macro_f1")
    settings: ClassVar[type[Section] | None] = TokenClassificationConfig
    supports_activation_cache: ClassVar[bool] = True  # inputs are fixed token ids; groups are embeddings + blocks

    @property
    def options(self) -> TokenClassificationConfig:
        """This task's section, `config.token_classification`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModelForTokenClassification", config.model, tokenizer=_fast_tokenizer)
        self.resolved = self.hf.resolved
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.scheme = "BIO"
        self.tokenizer: Any = None  # read with the model (HFModel.tokenizer); transformers types it loosely
        self.truncated = 0
        self.data_checks: dict[str, int] = {}

    # ---- data -------------------------------------------------------------------------------

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        d = self.config.data
        s = self.options
        return read_tagged(path, s.tokens_column, s.tags_column if labelled else None, d.bad_rows)

    def preflight(self) -> None:
        """Reads and checks the data. Without a training file, the tags come from the model."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (and optionally data.validation)")
        if d.train is not None:
            train = self._read(d.train)
            if d.validation:
                val = self._read(d.validation)
            else:
                train, val = random_split(train, d.validation_split, seed)
            self.label_names = tag_names(train)
            self.train_rows = sample(train, d.max_train_samples, seed)
            self.data_checks = duplicates_and_leaks(as_text_rows(self.train_rows), as_text_rows(val))
        elif d.validation is not None:
            self.label_names = source_label_names(self.resolved, self.config.model.trust_remote_code)
            val = self._read(d.validation)
        check_known_labels(val, self.label_names)
        self.scheme = tag_scheme(self.train_rows or val)
        self.eval_rows = sample(val, d.max_eval_samples, seed)

    def unlabelled_rows(self, path: str) -> LabelledRows:
        return self._read(path, labelled=False)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names, "tag_scheme": self.scheme}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                tags = Counter(t[2:] for row in rows.labels for t in row if t[0] in "BS")
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "words": sum(len(w) for w in rows.inputs[TOKENS]), "entity_counts": dict(tags)}
        facts["truncated_to_max_length"] = self.truncated
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's encoder with a tagging head for these labels; under `model.pretrained: false`
        the same architecture from random initialization, with the source's tokenizer."""
        names = self.label_names
        model = self.hf.build({"num_labels": len(names), "id2label": dict(enumerate(names)),
                               "label2id": {n: i for i, n in enumerate(names)}})
        self.tokenizer = self.hf.tokenizer
        return model

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned tagger as it is (head and tag names included), for evaluate/predict."""
        model = self.hf.load_trained()
        self.tokenizer = self.hf.tokenizer
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]  # type: ignore[index, arg-type]  # a saved classifier's config has both; transformers types them Optional
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import pipeline\n"
            'tagger = pipeline("token-classification", model="path/to/best", aggregation_strategy="first")\n'
            'tagger("George Washington went to Washington")\n```'
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)

    # ---- tensors ----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return token_limit(self.tokenizer, self.config.data.max_length)

    def _encode(self, rows: LabelledRows):
        """The sentences tokenized, and whether each was cut by characters first (see `data/text_limits.py`)."""
        words, cut = cap_words(rows.inputs[TOKENS], char_limit(self.max_length))
        return self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length), cut

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Token ids and aligned tag ids per sentence, tokenized once and unpadded (`train` unused)."""
        encoded, cut = self._encode(rows)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        features, truncated = [], 0
        for i in range(len(rows)):
            feature = {k: encoded[k][i] for k in keys}
            word_ids = encoded.word_ids(i)
            truncated += cut[i] or max((w for w in word_ids if w is not None), default=-1) + 1 < len(rows.inputs[TOKENS][i])
            if labelled:
                feature.update(self._aligned_labels(word_ids, rows.labels[i]))
            features.append(feature)
        if truncated:
            log.info("%s: %d of %d sentences reached max_length=%d and were truncated (their cut-off words are "
                     "not scored)", rows.source, truncated, len(rows), self.max_length)
        self.truncated += truncated
        return features

    def _aligned_labels(self, word_ids: list[int | None], tags: list[str]) -> dict[str, list[int]]:
        """`labels`: the tag id on each word's first sub-token, -100 elsewhere (what is scored);
        with `label_all_subtokens`, also `subtoken_labels` for the loss, continuations tagged."""
        ids = {n: i for i, n in enumerate(self.label_names)}
        first: list[int] = []
        every: list[int] = []
        previous = None
        for word in word_ids:
            if word is None:  # a special token
                first.append(IGNORE)
                every.append(IGNORE)
            elif word != previous:  # a word's first sub-token
                first.append(ids[tags[word]])
                every.append(ids[tags[word]])
            else:
                first.append(IGNORE)
                every.append(ids[self._continued(tags[word])])
            previous = word
        if self.options.label_all_subtokens:
            return {"labels": first, "subtoken_labels": every}
        return {"labels": first}

    def _continued(self, tag: str) -> str:
        """The tag of a word's later sub-tokens: B-X becomes I-X where I-X is a known tag."""
        inside = "I-" + tag[2:]
        return inside if tag.startswith("B-") and inside in self.label_names else tag

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [len(f["input_ids"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pads inputs and labels to the batch's longest row, (B, T)."""
        longest, size = max(len(f["input_ids"]) for f in features), len(features)
        batch = {"input_ids": torch.full((size, longest), self.tokenizer.pad_token_id or 0, dtype=torch.long),
                 "attention_mask": torch.zeros((size, longest), dtype=torch.long)}
        label_keys = [k for k in ("labels", "subtoken_labels") if k in features[0]]
        keys = [k for k in ("token_type_ids",) if k in features[0]]
        batch.update({k: torch.zeros((size, longest), dtype=torch.long) for k in keys})
        batch.update({k: torch.full((size, longest), IGNORE, dtype=torch.long) for k in label_keys})
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(f["input_ids"])
            batch["attention_mask"][i, :n] = 1
            for k in keys + label_keys:
                batch[k][i, : len(f[k])] = torch.tensor(f[k])
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "subtoken_labels")}
        return model(**inputs).logits  # (B, T, num_labels)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._logits(model, batch)  # (B, T, num_labels)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._logits(model, batch)
        labels = batch.get("subtoken_labels", batch["labels"])  # (B, T)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), weight=self._class_weights(logits.device),
                               ignore_index=IGNORE, label_smoothing=self.config.training.label_smoothing_factor)
        return loss, logits

    def batch_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[Any]:
        """Per sentence: (tokens, num_labels) logits of its real tokens, padding dropped."""
        lengths = batch["attention_mask"].sum(1).tolist()
        logits = outputs.detach().float().cpu().numpy()
        return [row[:n] for row, n in zip(logits, lengths)]

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        """Per sentence: (words, num_labels) logits of each word's first sub-token; NaN for the words
        the model did not see (cut off by truncation, or no tokens at all)."""
        encoded, _ = self._encode(rows)
        outputs = []
        for i, logits in enumerate(examples):
            firsts = _first_subtokens(encoded.word_ids(i), len(rows.inputs[TOKENS][i]))
            words = np.full((len(firsts), logits.shape[-1]), np.nan, dtype=np.float32)
            seen = [w for w, p in enumerate(firsts) if p is not None]
            words[seen] = logits[[firsts[w] for w in seen]]
            outputs.append(words)
        return outputs

    def _class_weights(self, device: torch.device) -> torch.Tensor | None:
        if self.config.training.class_weights != "balanced" or self.train_rows is None:
            return None
        if not hasattr(self, "_weights"):
            counts = Counter(t for row in self.train_rows.labels for t in row)
            n, k = sum(counts.values()), len(self.label_names)
            self._weights = torch.tensor([n / (k * max(counts[name], 1)) for name in self.label_names])
        return self._weights.to(device)

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Entity-level scores over the words the model saw (outputs: one (words, C) array per row)."""
        true_tags, predicted_tags = [], []
        for tags, logits in zip(rows.labels, outputs):
            seen = np.flatnonzero(~np.isnan(logits[:, 0])) if len(logits) else np.zeros(0, dtype=np.int64)
            true_tags.append([tags[w] for w in seen])
            predicted_tags.append([self.label_names[int(logits[w].argmax())] for w in seen])
        return entity_metrics(true_tags, predicted_tags)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per sentence: the words, their space-joined text, a tag and confidence per word, and the
        entities with character offsets into that text (a word the model did not see: "O", no score)."""
        records = []
        for words, logits in zip(rows.inputs[TOKENS], outputs):
            probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()  # (words, C); NaN rows stay NaN
            seen = ~np.isnan(probs[:, 0]) if len(probs) else np.zeros(0, dtype=bool)
            tags = [self.label_names[int(p.argmax())] if ok else "O" for p, ok in zip(probs, seen)]
            scores = [round(float(p.max()), 6) if ok else None for p, ok in zip(probs, seen)]
            records.append({"text": " ".join(words), "tokens": words, "tags": tags, "scores": scores,
                            "entities": entity_spans(words, tags)})
        return records


def _first_subtokens(word_ids: list[int | None], n_words: int) -> list[int | None]:
    """Position of each word's first sub-token (None for words cut off by truncation)."""
    first: list[int | None] = [None] * n_words
    for position, word in enumerate(word_ids):
        if word is not None and first[word] is None:
            first[word] = position
    return first
