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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, duplicates_and_leaks, grouped_split, load_labelled, sample
from tunesmith.data.readers import read_table
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup, transformer_layer_groups
from tunesmith.models.sources import loading, token_limit
from tunesmith.report.ranking_metrics import retrieval_metrics, verification_metrics
from tunesmith.tasks import ClassBatches, OneOutputPerRow, register_task
from tunesmith.tasks._embedding import (
    PAIR_LABELS,
    TRANSFORMER_PREFIX,
    EmbeddingConfig,
    class_metrics,
    in_batch_negatives,
    library_quiet,
    module_files,
    unit_vectors,
    with_projection,
)

log = logging.getLogger("tunesmith")


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
            model = with_projection(model)
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
        with loading(resolved), library_quiet():
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
        with library_quiet():
            encoder.save(folder, create_model_card=False)
        if weights is None:
            return
        from safetensors.torch import save_file

        for prefix, path in module_files(Path(folder)):
            own = {k[len(prefix):]: v.contiguous() for k, v in weights.items() if k.startswith(prefix)}
            if prefix == TRANSFORMER_PREFIX:  # transformers' own layout (shards, tied weights)
                encoder[0].model.save_pretrained(folder, state_dict=own)
            elif own:
                save_file(own, str(path))

    def saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """What `save` wrote, keyed as the model's state dict (the engine restores `best/` with it)."""
        from safetensors.torch import load_file

        weights = {}
        for prefix, path in module_files(folder):
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
            pairs = unit_vectors(embeddings[:, :2])
            return verification_metrics((pairs[:, 0] * pairs[:, 1]).sum(-1), np.array(rows.labels))
        if self.options.mode == "classes":
            return class_metrics(unit_vectors(embeddings[:, 0]), rows.labels)
        corpus: dict[str, int] = {}
        vectors = []
        for c, column in enumerate(self.text_columns[1:], start=1):
            for i, text in enumerate(rows.inputs[column]):
                if text not in corpus:
                    corpus[text] = len(corpus)
                    vectors.append(embeddings[i, c])
        correct = np.array([corpus[t] for t in rows.inputs[self.options.positive_column]])
        scores = unit_vectors(embeddings[:, 0]) @ unit_vectors(np.stack(vectors)).T
        return {**retrieval_metrics(scores, correct), "corpus_size": len(corpus)}

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: its text, its embedding (unit length), the pair's `score` where the file has
        positives, and with `embedding.gallery` its nearest gallery texts."""
        o = self.options
        if not outputs:
            return []
        embeddings = unit_vectors(np.stack(outputs))  # (N, columns, D)
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
