"""Embeddings for retrieval and similarity: a sentence encoder fine-tuned on (anchor, positive) pairs.

Rows pair an anchor (a query, a question) with a positive that should embed near it (its passage, a
paraphrase), optionally with a hard negative that should not. The model is a sentence-transformers
model: the source's transformer, its pooling and normalization as saved (a plain transformers encoder
gets mean pooling), so `best/` loads with `SentenceTransformer(path)`. The loss is in-batch negatives by
default (every other row's positive is a negative for this anchor, the negative column adds one more),
or a triplet loss on the negative column. Validation is retrieval: each validation anchor searches the
validation rows' distinct positives and negatives, scored by nDCG@10, recall@k and MRR@10. When
tunesmith holds out the validation rows itself, rows that share a positive stay on one side, so
validation measures passages the model has not trained on. Pairs labelled matching or not
(`label_column`) are a verification set instead: a contrastive loss, and ROC AUC, TAR at a false-accept
rate and the equal error rate of the pairs' cosine similarity. Rows of one text with a class
(`class_column`: an identity, an intent) train on P x K batches with a batch-hard triplet loss, and
are validated on held-out classes: every validation row searches the others for its class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, duplicates_and_leaks, grouped_split, load_labelled, sample
from tunesmith.data.readers import read_table
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup, transformer_layer_groups
from tunesmith.models.sources import loading, token_limit
from tunesmith.report.ranking_metrics import RETRIEVAL_KS, retrieval_metrics, verification_metrics
from tunesmith.tasks import ClassBatches, OneOutputPerRow, register_task

log = logging.getLogger("tunesmith")


class EmbeddingConfig(Section):
    """`embedding`: the columns of a pair, the loss, and what `predict` searches."""

    anchor_column: str = "anchor"
    """The text that searches: a query, a question. `predict` embeds this column."""
    positive_column: str = "positive"
    """The text that belongs with the anchor: its passage, an answer, a paraphrase. A `predict` file
    that has this column too gets each pair's cosine similarity (`score`)."""
    negative_column: str | None = None
    """A hard negative per row (a passage that looks right but is not): one more candidate for its
    anchor in the in-batch loss; required by `loss: triplet`."""
    label_column: str | None = None
    """Pairs labelled matching (1, true) or not (0, false): a verification set. The positive column then
    holds each pair's second text; training uses `loss: contrastive` and validation scores verification
    (`roc_auc`, the default selector, `best_threshold_accuracy`, `tar_at_far_0.01`, `eer`)."""
    class_column: str | None = None
    """Rows of one text (the anchor column) and its class: an identity, an intent, a product category.
    Batches hold `per_class` rows of each of several classes, trained with `loss: batch_hard_triplet`;
    without `data.validation`, whole classes are held out, and validation scores how well a row finds
    others of its class (`recall_at_1`, ...: any of them in the top k) and verification over all
    pairs of validation rows (`roc_auc`, the default selector, `tar_at_far_0.01`, `eer`)."""
    per_class: int = Field(4, ge=2)
    """class_column: rows of one class that go into a batch together (K of P x K; keep it a divisor
    of the batch size)."""
    loss: Literal["auto", "in_batch_negatives", "triplet", "contrastive", "batch_hard_triplet"] = "auto"
    """`auto`: `contrastive` with a `label_column`, `batch_hard_triplet` with a `class_column`, else
    `in_batch_negatives`. `in_batch_negatives`:
    softmax over the anchor's similarity to every positive and negative in the batch (InfoNCE,
    sentence-transformers' MultipleNegativesRankingLoss); larger batches give more negatives. `triplet`:
    the positive must be nearer than the row's negative by `margin`. `contrastive` (labelled pairs):
    matching pairs pulled together, others pushed at least `margin` apart (sentence-transformers'
    ContrastiveLoss). `batch_hard_triplet` (classes): each row's farthest same-class row must be
    nearer than its nearest other-class row by `margin` (sentence-transformers' BatchHardTripletLoss)."""
    scale: float = Field(20.0, gt=0)
    """in_batch_negatives: cosine similarities are multiplied by this before the softmax (1 / temperature)."""
    margin: float = Field(0.5, gt=0)
    """triplet: how much farther (in cosine distance) the negative must be than the positive;
    contrastive: the cosine distance beyond which a non-matching pair no longer adds to the loss."""
    projection: bool = False
    """Add a linear map after pooling (D x D, started at the identity, so the pre-trained embeddings are
    unchanged at first): the `head` layer group, saved as sentence-transformers' Dense module. With
    `strategy.freeze: head_only` it is a linear probe of the frozen encoder. A source that already has a
    Dense module (a run's best/) keeps its own."""
    gallery: str | None = None
    """predict: a file of texts to search (its `gallery_column`); each predicted row gets its `top_k`
    nearest gallery texts with their cosine similarity."""
    gallery_column: str = "text"
    """predict: the gallery file's text column."""
    top_k: int = Field(10, ge=1)
    """predict: how many gallery neighbours each row gets."""

    @model_validator(mode="after")
    def _loss_fits_the_columns(self) -> EmbeddingConfig:
        if self.loss == "triplet" and not self.negative_column:
            raise ValueError("loss: triplet needs a negative per row: set embedding.negative_column to the column "
                             "holding it, or use loss: in_batch_negatives")
        if self.loss == "contrastive" and not self.label_column:
            raise ValueError("loss: contrastive trains on pairs labelled matching or not: set embedding.label_column "
                             "to the column holding the labels (1/0), or use loss: in_batch_negatives")
        if self.loss == "batch_hard_triplet" and not self.class_column:
            raise ValueError("loss: batch_hard_triplet mines triplets from classes: set embedding.class_column to "
                             "the column holding each row's class, or use loss: in_batch_negatives")
        if self.class_column and (self.label_column or self.negative_column):
            raise ValueError("class_column gives one text per row with its class; it does not combine with "
                             "label_column or negative_column (pairs): set one kind of data")
        if self.label_column and self.loss not in ("auto", "contrastive"):
            raise ValueError(f"labelled pairs (embedding.label_column) train with loss: contrastive (or auto), "
                             f"not {self.loss}")
        if self.class_column and self.loss not in ("auto", "batch_hard_triplet"):
            raise ValueError(f"rows with a class (embedding.class_column) train with loss: batch_hard_triplet "
                             f"(or auto), not {self.loss}")
        return self

    @property
    def mode(self) -> Literal["pairs", "labelled_pairs", "classes"]:
        """What a row is: an (anchor, positive) pair, a pair labelled matching or not, or a text and its class."""
        return "classes" if self.class_column else "labelled_pairs" if self.label_column else "pairs"

    @property
    def objective(self) -> str:
        """The loss `auto` stands for."""
        if self.loss != "auto":
            return self.loss
        return {"pairs": "in_batch_negatives", "labelled_pairs": "contrastive", "classes": "batch_hard_triplet"}[self.mode]

    @property
    def default_metric(self) -> str:
        """What selects the best model when `training.metric_for_best_model` is unset."""
        return "ndcg_at_10" if self.mode == "pairs" else "roc_auc"


@register_task("embedding")
class EmbeddingTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("ndcg_at_10", "recall_at_10", "mrr_at_10", "recall_at_1", "recall_at_5",
                                               "roc_auc", "best_threshold_accuracy", "tar_at_far_0.01",
                                               "tar_at_far_0.001", "eer")
    minimize: ClassVar[tuple[str, ...]] = ("loss", "eer", "mean_rank")
    settings: ClassVar[type[Section] | None] = EmbeddingConfig
    supports_activation_cache: ClassVar[bool] = False  # two or three texts per row, each through the encoder
    defaults: ClassVar[dict[str, Any]] = {"data.max_length": 256}  # passages run longer than sentences
    pipeline_tag: ClassVar[str] = "sentence-similarity"
    start_competes: ClassVar[bool] = True  # a pre-trained encoder already retrieves: a fine-tune that does worse keeps it

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModel", config.model)  # resolves the source; its dropout and config
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # no label set: pairs, pair labels or classes are the supervision
        self.tokenizer: Any = None
        self.truncated = 0
        self.data_checks: dict[str, int] = {}
        self.model: nn.Module | None = None  # kept by load_trained: `predict` embeds the gallery with it
        self._loss: nn.Module | None = None  # a sentence-transformers loss (`_library_loss`), made on first use

    @property
    def options(self) -> EmbeddingConfig:
        """This task's section, `config.embedding`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    @property
    def text_columns(self) -> list[str]:
        o = self.options
        if o.mode == "classes":
            return [o.anchor_column]
        return [o.anchor_column, o.positive_column] + ([o.negative_column] if o.negative_column else [])

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the rows. Without `data.validation`, whole groups (a positive's rows, an anchor's labelled
        pairs, a class) are held out together (`grouped_split`)."""
        d, o, seed = self.config.data, self.options, self.config.training.seed
        if self.config.lora.enabled:  # peft's adapters inside a SentenceTransformer are not wired up here yet
            raise ConfigError(["lora.enabled: the embedding task fine-tunes the whole encoder or a linear probe "
                               "(embedding.projection: true with strategy.freeze: head_only); set lora.enabled: false"])
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (and optionally data.validation)")
        val = self._read(d.validation) if d.validation else None
        if d.train is not None:
            train = self._read(d.train)
            if val is None:  # a passage's questions, an anchor's labelled pairs, a class's rows: on one side only
                train, val = grouped_split(train, self._groups(train), d.validation_split, seed)
            self.train_rows = sample(train, d.max_train_samples, seed)
            assert val is not None
            self.data_checks = duplicates_and_leaks(self.train_rows, val)
            if o.mode != "labelled_pairs":
                seen = set(self._groups(self.train_rows))
                key = "validation_classes_in_train" if o.mode == "classes" else "validation_positives_in_train"
                self.data_checks[key] = sum(g in seen for g in set(self._groups(val)))
        assert val is not None  # read from data.validation or split off data.train
        self.eval_rows = sample(val, d.max_eval_samples, seed)

    def _groups(self, rows: LabelledRows) -> list[Any]:
        """What a held-out split keeps together: each row's positive, anchor (labelled pairs) or class."""
        o = self.options
        if o.mode == "classes":
            return rows.labels
        return rows.inputs[o.anchor_column if o.mode == "labelled_pairs" else o.positive_column]

    def _read(self, path: str) -> LabelledRows:
        """The rows of a file; with `label_column`, labels read as 1 (matching) or 0, else a DataError."""
        label = self.options.label_column
        rows = load_labelled(path, self.text_columns, label or self.options.class_column, self.config.data.bad_rows,
                             settings=("embedding.anchor_column / positive_column / negative_column",
                                       "embedding.label_column" if label else "embedding.class_column"))
        if label:
            values = [PAIR_LABELS.get(str(v).strip().lower()) for v in rows.labels]
            bad = [(line, v) for line, v, parsed in zip(rows.lines, rows.labels, values) if parsed is None]
            if bad:
                raise DataError(f"{path}: line {bad[0][0]}: {label} is {bad[0][1]!r} ({len(bad)} such rows); a pair's "
                                "label is 1 / true for matching texts and 0 / false for others")
            rows.labels = values
        return rows

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Texts to embed (the anchor column), scored against their positive where the file has that column."""
        o = self.options
        header = read_table(path).columns
        columns = [o.anchor_column] + ([o.positive_column] if o.positive_column in header else [])
        return load_labelled(path, columns, None, self.config.data.bad_rows,
                             settings=("embedding.anchor_column", ""))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped}
                mode = self.options.mode
                if mode == "classes":
                    facts[split]["classes"] = len(set(rows.labels))
                else:
                    facts[split].update(unit="pairs", distinct_positives=len(set(rows.inputs[self.options.positive_column])))
                if mode == "labelled_pairs":
                    facts[split]["matching_pairs"] = int(sum(rows.labels))
        facts["truncated_to_max_length"] = self.truncated
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source as a SentenceTransformer; under `model.pretrained: false` its transformer is
        drawn afresh from the same config (pooling and tokenizer kept)."""
        model = self._sentence_transformer()
        if not self.config.model.pretrained:
            from transformers import AutoModel

            model[0].model = AutoModel.from_config(model[0].model.config)
        if self.options.projection and not any(type(m).__name__ == "Dense" for m in model.children()):
            model = _with_projection(model)
        return self._ready(model)

    def load_trained(self) -> nn.Module:
        self.model = self._ready(self._sentence_transformer())
        return self.model

    def _sentence_transformer(self) -> Any:
        from sentence_transformers import SentenceTransformer

        resolved = self.hf.resolved
        if resolved.gguf_file:
            raise ModelSourceError(f"{self.config.model.source} is a GGUF file; the embedding task reads transformer "
                              "encoders (a sentence-transformers or transformers folder, or demo:minilm)")
        with loading(resolved), _library_quiet():
            return SentenceTransformer(resolved.location, device="cpu", local_files_only=resolved.local,
                                       trust_remote_code=self.config.model.trust_remote_code,
                                       config_kwargs=self.hf.dropout() or None)

    def _ready(self, model: Any) -> nn.Module:
        # A BERT-style pooler sits on the transformer but the embedding pools the token states itself:
        # no gradient reaches it, so it is held still and belongs to no layer group.
        for name, param in model.named_parameters():
            if ".pooler." in name:
                param.requires_grad_(False)
        self.tokenizer = model.tokenizer
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """The transformer's groups (embeddings, each block), then any trained module after pooling
        (a Dense projection) as the head."""
        names = {id(p): n for n, p in model.named_parameters()}
        groups = transformer_layer_groups(model[0].model)  # type: ignore[index]  # a SentenceTransformer is a Sequential
        claimed: set[int] = set()
        for group in groups:
            group.params = [(names[id(p)], p) for _, p in group.params if p.requires_grad]
            claimed.update(id(p) for _, p in group.params)
        head = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in claimed
                and not n.startswith("0.")]
        groups = [g for g in groups if g.name != "head"]
        if head:
            groups.append(LayerGroup("head", list(model.children())[1:], head))
        return groups

    def card_usage(self) -> str:
        return ("```python\nfrom sentence_transformers import SentenceTransformer\n"
                'model = SentenceTransformer("path/to/best")\n'
                'embeddings = model.encode(["a query", "a passage"], normalize_embeddings=True)\n'
                "similarity = embeddings[0] @ embeddings[1]\n```")

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Writes a sentence-transformers folder; `weights` (gathered from shards) replace each module's own."""
        encoder: Any = model  # a SentenceTransformer
        with _library_quiet():
            encoder.save(folder, create_model_card=False)
        if weights is None:
            return
        from safetensors.torch import save_file

        for prefix, path in _module_files(Path(folder)):
            own = {k[len(prefix):]: v.contiguous() for k, v in weights.items() if k.startswith(prefix)}
            if prefix == TRANSFORMER_PREFIX:  # transformers' own layout (shards, tied weights)
                encoder[0].model.save_pretrained(folder, state_dict=own)
            elif own:
                save_file(own, str(path))

    def saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """What `save` wrote, keyed as the model's state dict (the engine restores `best/` with it)."""
        from safetensors.torch import load_file

        weights = {}
        for prefix, path in _module_files(folder):
            if path.is_file():
                weights.update({prefix + k: v for k, v in load_file(str(path)).items()})
        return weights

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Per row, the token ids of each text (anchor, positive[, negative]), unpadded, and under
        `labels` the index of its positive among the distinct positives (rows that share a positive
        are not each other's negatives), or for labelled pairs the pair's label."""
        max_length = token_limit(self.tokenizer, self.config.data.max_length)
        columns = self.text_columns if labelled else [c for c in self.text_columns[:2] if c in rows.inputs]
        ids_by_column, cut = [], [False] * len(rows)
        for column in columns:
            texts, cut_here = cap_texts(rows.inputs[column], char_limit(max_length))
            ids = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
            cut = [a or len(i) >= max_length or b for a, i, b in zip(cut, ids, cut_here)]
            ids_by_column.append(ids)
        truncated = sum(cut)
        if truncated:
            log.info("%s: %d of %d rows had a text reach max_length=%d, truncated", rows.source, truncated, len(rows),
                     max_length)
        self.truncated += truncated
        features: list[dict[str, Any]] = [{"texts": [ids[i] for ids in ids_by_column]} for i in range(len(rows))]
        if labelled and self.options.mode == "labelled_pairs":
            for feature, label in zip(features, rows.labels):
                feature["labels"] = label
        elif labelled:  # the index of the row's positive, or of its class, among this dataset's
            index: dict[Any, int] = {}
            for feature, group in zip(features, self._groups(rows)):
                feature["labels"] = index.setdefault(group, len(index))
        return features

    def class_batches(self, dataset: list[dict[str, Any]]) -> ClassBatches | None:
        """P x K training batches for rows with classes (the engine's sampler draws them), else None."""
        if self.options.mode != "classes":
            return None
        return ClassBatches([f["labels"] for f in dataset], self.options.per_class)

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [sum(len(t) for t in f["texts"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Each text column padded to its own longest row: `input_ids_<c>` and `attention_mask_<c>`
        (B, T_c) for column c (0 anchor, 1 positive, 2 negative), and (B,) `labels`, the positive's index."""
        batch: dict[str, torch.Tensor] = {}
        pad = self.tokenizer.pad_token_id or 0
        for c in range(len(features[0]["texts"])):
            texts = [f["texts"][c] for f in features]
            ids = torch.full((len(texts), max(map(len, texts))), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(texts):
                ids[i, :len(t)] = torch.tensor(t)
                mask[i, :len(t)] = 1
            batch[f"input_ids_{c}"], batch[f"attention_mask_{c}"] = ids, mask
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """(B, D) sentence embeddings of each text column of the batch, in column order."""
        columns: list[torch.Tensor] = []
        while f"input_ids_{len(columns)}" in batch:
            c = len(columns)
            features = {"input_ids": batch[f"input_ids_{c}"], "attention_mask": batch[f"attention_mask_{c}"]}
            columns.append(model(features)["sentence_embedding"])
        return columns

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.embed(model, batch), dim=1)  # (B, columns, D)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        columns = self.embed(model, batch)
        objective = self.options.objective
        if objective == "in_batch_negatives":
            loss = in_batch_negatives(columns, batch["labels"], self.options.scale)
        else:
            loss = self._library_loss(model, objective).compute_loss_from_embeddings(
                [c.float() for c in columns], batch["labels"])
        return loss, torch.stack(columns, dim=1)

    def _library_loss(self, model: nn.Module, objective: str) -> Any:
        """sentence-transformers' triplet, contrastive or batch-hard triplet loss, on cosine distance, made once."""
        if self._loss is None:
            from sentence_transformers.sentence_transformer import losses

            margin = self.options.margin
            if objective == "batch_hard_triplet":
                self._loss = losses.BatchHardTripletLoss(
                    model, distance_metric=losses.BatchHardTripletLossDistanceFunction.cosine_distance, margin=margin)  # type: ignore[arg-type]  # the task's SentenceTransformer
            elif objective == "triplet":
                self._loss = losses.TripletLoss(model, distance_metric=losses.TripletDistanceMetric.COSINE,  # type: ignore[arg-type]  # the task's SentenceTransformer
                                                triplet_margin=margin)
            else:
                self._loss = losses.ContrastiveLoss(model, distance_metric=losses.SiameseDistanceMetric.COSINE_DISTANCE,  # type: ignore[arg-type]  # the task's SentenceTransformer
                                                    margin=margin, size_average=True)
        return self._loss

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Each anchor searches the rows' distinct positives (and negatives); its own positive is the hit.
        Labelled pairs: verification of each pair's cosine similarity against its label."""
        if not outputs:
            return {}
        embeddings = np.stack(outputs)  # (N, columns, D)
        if self.options.mode == "labelled_pairs":
            pairs = _unit(embeddings[:, :2])
            return verification_metrics((pairs[:, 0] * pairs[:, 1]).sum(-1), np.array(rows.labels))
        if self.options.mode == "classes":
            return class_metrics(_unit(embeddings[:, 0]), rows.labels)
        corpus: dict[str, int] = {}
        vectors = []
        for c, column in enumerate(self.text_columns[1:], start=1):
            for i, text in enumerate(rows.inputs[column]):
                if text not in corpus:
                    corpus[text] = len(corpus)
                    vectors.append(embeddings[i, c])
        correct = np.array([corpus[t] for t in rows.inputs[self.options.positive_column]])
        scores = _unit(embeddings[:, 0]) @ _unit(np.stack(vectors)).T
        return {**retrieval_metrics(scores, correct), "corpus_size": len(corpus)}

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: its text, its embedding (unit length), the pair's `score` where the file has
        positives, and with `embedding.gallery` its nearest gallery texts."""
        o = self.options
        if not outputs:
            return []
        embeddings = _unit(np.stack(outputs))  # (N, columns, D)
        records = [{o.anchor_column: rows.inputs[o.anchor_column][i],
                    "embedding": [round(float(x), 6) for x in embeddings[i, 0]]} for i in range(len(rows))]
        if embeddings.shape[1] > 1:
            for i, record in enumerate(records):
                record[o.positive_column] = rows.inputs[o.positive_column][i]
                record["score"] = round(float(embeddings[i, 0] @ embeddings[i, 1]), 6)
        if o.gallery:
            self._add_neighbours(records, embeddings[:, 0])
        return records

    def _add_neighbours(self, records: list[dict[str, Any]], queries: np.ndarray) -> None:
        o = self.options
        assert o.gallery is not None and self.model is not None  # predict loads the model first
        gallery = load_labelled(o.gallery, [o.gallery_column], None, self.config.data.bad_rows,
                                settings=("embedding.gallery_column", ""))
        texts = gallery.inputs[o.gallery_column]
        vectors = self.model.encode(texts, batch_size=self.config.training.per_device_eval_batch_size,  # type: ignore[operator]  # SentenceTransformer.encode
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        k = min(o.top_k, len(texts))
        for start in range(0, len(queries), 1024):  # a block of queries at a time: (1024, gallery) scores
            scores = queries[start:start + 1024] @ vectors.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            for record, row, best in zip(records[start:start + 1024], scores, top):
                record["neighbours"] = [{"text": texts[j], "score": round(float(row[j]), 6)} for j in best]


def class_metrics(vectors: np.ndarray, classes: list[Any]) -> dict[str, float]:
    """Held-out classes: each row searches the other rows (`recall_at_k`: a row of its class in the top
    k; `mrr_at_10` by the first), and every pair of rows is a verification pair (same class or not)."""
    labels = np.array([str(c) for c in classes])
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)  # a row does not find itself
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    searching = same.any(axis=1)  # rows whose class has another row
    metrics: dict[str, float] = {}
    if searching.any():
        order = np.argsort(-scores[searching], axis=1, kind="stable")
        hits = np.take_along_axis(same[searching], order, axis=1)
        first = hits.argmax(axis=1) + 1  # rank of the first row of the same class
        metrics = {f"recall_at_{k}": float((first <= k).mean()) for k in RETRIEVAL_KS}
        metrics["mrr_at_10"] = float(np.where(first <= 10, 1.0 / first, 0.0).mean())
    upper = np.triu_indices(len(labels), k=1)
    return {**metrics, **verification_metrics(scores[upper], same[upper].astype(int))}


def in_batch_negatives(columns: list[torch.Tensor], positives: torch.Tensor, scale: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: each anchor's softmax over its cosine similarity (times `scale`)
    to every positive and negative of the batch, its own positive the target.

    Written here rather than taken from sentence-transformers' MultipleNegativesRankingLoss, whose math
    it shares, because that loss counts another row with the same positive as a negative: its trainer
    avoids such batches with its no-duplicates sampler, while tunesmith's batches (grouped by length,
    shared by every task) may hold several questions about one passage. Here `positives` (B,), each
    row's positive's index, masks those rows' positives out of each other's negatives.
    """
    anchors = F.normalize(columns[0].float(), dim=-1)
    candidates = F.normalize(torch.cat(columns[1:]).float(), dim=-1)  # (B * (columns - 1), D): positives first
    scores = scale * anchors @ candidates.T
    n = len(anchors)
    shared = (positives[:, None] == positives[None, :]) & ~torch.eye(n, dtype=torch.bool, device=positives.device)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, :n] = shared
    return F.cross_entropy(scores.masked_fill(mask, float("-inf")), torch.arange(n, device=scores.device))


@contextmanager
def _library_quiet() -> Iterator[None]:
    """sentence-transformers at WARNING for a load or save: its INFO lines ("Loading SentenceTransformer
    model from ...", "Saving model to .tmp-best-...") repeat what tunesmith's own log says."""
    library = logging.getLogger("sentence_transformers")
    level = library.level
    library.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        library.setLevel(level)


def _with_projection(model: Any) -> Any:
    """`model` with an identity-started, bias-free linear map after pooling (before normalization)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense

    modules = list(model.children())
    at = next((i for i, m in enumerate(modules) if type(m).__name__ == "Normalize"), len(modules))
    width = model.get_embedding_dimension()
    dense = Dense(width, width, bias=False, activation_function=None, init_weight=torch.eye(width))
    return SentenceTransformer(modules=[*modules[:at], dense, *modules[at:]], device="cpu")


PAIR_LABELS = {"1": 1, "true": 1, "yes": 1, "same": 1, "1.0": 1, "0": 0, "false": 0, "no": 0, "different": 0, "0.0": 0}

TRANSFORMER_PREFIX = "0.model."  # the transformer's parameters in a SentenceTransformer's state dict


def _module_files(folder: Path) -> list[tuple[str, Path]]:
    """(state-dict prefix, weights file) of each module of a saved SentenceTransformer (`modules.json`):
    the transformer's file at the root, a later module's (a Dense projection) in its own folder."""
    import json

    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return [(TRANSFORMER_PREFIX if m["idx"] == 0 else f"{m['idx']}.", folder / m["path"] / "model.safetensors")
            for m in modules]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
