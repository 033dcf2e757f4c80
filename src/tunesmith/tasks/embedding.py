"""Embeddings for retrieval and similarity: an encoder of texts or images fine-tuned on pairs or classes.

Rows pair an anchor (a query, a question, a face) with a positive that should embed near it (its
passage, a paraphrase, another photo of the person), optionally with a hard negative that should
not. The encoder (tasks/_embedding_encoders.py) is a sentence-transformers model for text (`best/`
loads with `SentenceTransformer(path)`) or a timm model's pooled features for images (dlib's face
ResNet as `demo:face-resnet`, or any timm backbone; `best/` loads with timm). The loss is in-batch negatives by
default (every other row's positive is a negative for this anchor, the negative column adds one more),
or a triplet loss on the negative column. Validation is retrieval: each validation anchor searches the
validation rows' distinct positives and negatives, scored by nDCG@10, recall@k and MRR@10. When
tunesmith holds out the validation rows itself, rows that share a positive stay on one side, so
validation measures passages the model has not trained on. Pairs labelled matching or not
(`label_column`) are a verification set instead: a contrastive loss, and ROC AUC, TAR at a false-accept
rate and the equal error rate of the pairs' cosine similarity. Rows of one input with a class
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
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.report.ranking_metrics import retrieval_metrics, verification_metrics
from tunesmith.tasks import ClassBatches, OneOutputPerRow, read_rows, register_task
from tunesmith.tasks._embedding import (
    MARGIN_HEAD_FILE,
    PAIR_LABELS,
    EmbeddingConfig,
    WithMarginHead,
    at_threshold,
    class_metrics,
    in_batch_negatives,
    nearest,
    read_threshold,
    unit_vectors,
    write_threshold,
)
from tunesmith.tasks._embedding_encoders import ImageEncoder, encoder_for

log = logging.getLogger("tunesmith")


@register_task("embedding")
class EmbeddingTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("ndcg_at_10", "recall_at_10", "mrr_at_10", "recall_at_1", "recall_at_5",
                                               "roc_auc", "best_threshold_accuracy", "tar_at_far_0.01",
                                               "tar_at_far_0.001", "eer")
    minimize: ClassVar[tuple[str, ...]] = ("loss", "eer", "mean_rank")
    settings: ClassVar[type[Section] | None] = EmbeddingConfig
    supports_activation_cache: ClassVar[bool] = False  # two or three inputs per row, each through the encoder
    defaults: ClassVar[dict[str, Any]] = {"data.max_length": 256}  # passages run longer than sentences
    pipeline_tag: ClassVar[str] = "sentence-similarity"
    vector_column: ClassVar[str] = "embedding"  # the prediction `predict --output x.npy` writes as a matrix
    start_competes: ClassVar[bool] = True  # a pre-trained encoder already retrieves: a fine-tune that does worse keeps it

    def __init__(self, config: RunConfig):
        self.config = config
        self.encoder = encoder_for(config)  # text or images: the model, its inputs and its folder
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # no label set: pairs, pair labels or classes are the supervision
        self.truncated = 0
        self.data_checks: dict[str, int] = {}
        self.model: nn.Module | None = None  # kept by load_trained: `predict` embeds the gallery with it
        self._loss: nn.Module | None = None  # a sentence-transformers loss (`_library_loss`), made on first use
        self.validation_threshold: float | None = None  # the last validation's best verification cut: saved in best/
        self.saved_threshold: float | None = None  # a trained model's (load_trained): evaluate and predict apply it

    @property
    def options(self) -> EmbeddingConfig:
        """This task's section, `config.embedding`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    @property
    def columns(self) -> list[str]:
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
        rows = load_labelled(path, self.columns, label or self.options.class_column, self.config.data.bad_rows,
                             settings=("embedding.anchor_column / positive_column / negative_column",
                                       "embedding.label_column" if label else "embedding.class_column"))
        if label:
            values = [PAIR_LABELS.get(str(v).strip().lower()) for v in rows.labels]
            bad = [(line, v) for line, v, parsed in zip(rows.lines, rows.labels, values) if parsed is None]
            if bad:
                raise DataError(f"{path}: line {bad[0][0]}: {label} is {bad[0][1]!r} ({len(bad)} such rows); a pair's "
                                "label is 1 / true for matching texts and 0 / false for others")
            rows.labels = values
        return self.encoder.checked(rows, self.columns)

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Inputs to embed (the anchor column), scored against their positive where the file has that column."""
        o = self.options
        header = read_table(path).columns
        columns = [o.anchor_column] + ([o.positive_column] if o.positive_column in header else [])
        rows = load_labelled(path, columns, None, self.config.data.bad_rows, settings=("embedding.anchor_column", ""))
        return self.encoder.checked(rows, columns)

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
        if isinstance(self.encoder, ImageEncoder):
            facts["unusable_images"] = self.encoder.bad_images
        else:
            facts["truncated_to_max_length"] = self.truncated
        facts.update(self.data_checks)
        return facts

    # ---- model ----------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The encoder; with `loss: arcface`, wrapped with its margin head over the training classes."""
        model = self.encoder.build()
        o = self.options
        if o.objective != "arcface":
            return model
        classes = len(set(read_rows(self.train_rows, "training").labels))
        return WithMarginHead(model, classes, self.encoder.width(model), o.scale, o.margin)

    def load_trained(self) -> nn.Module:
        self.model = self.encoder.load()
        self.saved_threshold = read_threshold(Path(self.config.model.source).expanduser())
        return self.model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """The encoder's groups; with an ArcFace head, then `margin_head` (its class directions)."""
        if not isinstance(model, WithMarginHead):
            return self.encoder.layer_groups(model)
        groups = self.encoder.layer_groups(model.encoder)
        for group in groups:
            group.params = [(f"encoder.{n}", p) for n, p in group.params]
        head = [(f"margin_head.{n}", p) for n, p in model.margin_head.named_parameters()]
        return [*groups, LayerGroup("margin_head", [model.margin_head], head)]

    def card_usage(self) -> str:
        return self.encoder.card_usage()

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Writes the encoder's folder (sentence-transformers' or timm's); `weights` (gathered from
        shards) replace the model's own. With pair labels or classes, the verification threshold
        chosen on validation goes beside them (`THRESHOLD_FILE`); an ArcFace head's class directions
        too (`MARGIN_HEAD_FILE`), which plain libraries ignore."""
        if isinstance(model, WithMarginHead):
            from safetensors.torch import save_file

            own = weights if weights is not None else model.state_dict()
            self.encoder.save(model.encoder, folder, {k.removeprefix("encoder."): v for k, v in own.items()
                                                      if k.startswith("encoder.")} if weights is not None else None)
            save_file({k.removeprefix("margin_head."): v.detach().contiguous().cpu() for k, v in own.items()
                       if k.startswith("margin_head.")}, str(Path(folder) / MARGIN_HEAD_FILE))
        else:
            self.encoder.save(model, folder, weights)
        if self.validation_threshold is not None and self.options.mode != "pairs":
            write_threshold(Path(folder), self.validation_threshold)

    def saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """What `save` wrote, keyed as the model's state dict (the engine restores `best/` with it)."""
        weights = self.encoder.saved_weights(folder)
        if (folder / MARGIN_HEAD_FILE).is_file():
            from safetensors.torch import load_file

            heads = load_file(str(folder / MARGIN_HEAD_FILE))
            weights = {**{f"encoder.{k}": v for k, v in weights.items()}, **{f"margin_head.{k}": v for k, v in heads.items()}}
        return weights

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> Any:
        """The encoder's inputs for each column (anchor, positive[, negative]): token ids or images.
        Labels: the index of the row's positive among the distinct positives (rows that share a
        positive are not each other's negatives) or of its class, or a labelled pair's label."""
        o = self.options
        columns = self.columns if labelled else [c for c in (o.anchor_column, o.positive_column) if c in rows.inputs]
        labels = None
        if labelled and self.options.mode == "labelled_pairs":
            labels = list(rows.labels)
        elif labelled:  # the index of the row's positive, or of its class, among this dataset's
            index: dict[Any, int] = {}
            labels = [index.setdefault(group, len(index)) for group in self._groups(rows)]
        data, truncated = self.encoder.dataset(rows, columns, train, labels)
        self.truncated += truncated
        return data

    def class_batches(self, dataset: Any) -> ClassBatches | None:
        """P x K training batches for rows with classes (the engine's sampler draws them), else None."""
        if self.options.mode != "classes":
            return None
        labels = dataset.labels if hasattr(dataset, "labels") else [f["labels"] for f in dataset]  # images: not decoded
        return ClassBatches(labels, self.options.per_class)

    def lengths(self, dataset: Any) -> list[int] | None:
        return self.encoder.lengths(dataset)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The encoder's tensors per column (`input_ids_<c>` and `attention_mask_<c>`, or
        `pixel_values_<c>`; 0 anchor, 1 positive, 2 negative) and (B,) `labels`."""
        batch = self.encoder.collate(features)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """(B, D) embeddings of each column of the batch, in column order."""
        return self.encoder.embed(model, batch)  # a WithMarginHead forwards to its encoder

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.embed(model, batch), dim=1)  # (B, columns, D)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        columns = self.embed(model, batch)
        objective = self.options.objective
        inner = getattr(model, "module", model)  # under DDP, the wrapped model
        if isinstance(inner, WithMarginHead):
            if inner.training:
                return inner.margin_head(columns[0].float(), batch["labels"]), torch.stack(columns, dim=1)
            model, objective = inner.encoder, "batch_hard_triplet"  # held-out classes have no direction in the head
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
        if self.options.mode != "pairs":
            if self.options.mode == "labelled_pairs":
                pairs = unit_vectors(embeddings[:, :2])
                scores, same = (pairs[:, 0] * pairs[:, 1]).sum(-1), np.array(rows.labels)
                result = {**verification_metrics(scores, same), **at_threshold(scores, same, self.saved_threshold)}
            else:
                result = class_metrics(unit_vectors(embeddings[:, 0]), rows.labels, self.saved_threshold)
            if rows is self.eval_rows and "threshold" in result:  # the full validation set: `save` keeps its cut
                self.validation_threshold = result["threshold"]
            return result
        corpus: dict[str, int] = {}
        vectors = []
        for c, column in enumerate(self.columns[1:], start=1):
            for i, text in enumerate(rows.inputs[column]):
                if text not in corpus:
                    corpus[text] = len(corpus)
                    vectors.append(embeddings[i, c])
        correct = np.array([corpus[t] for t in rows.inputs[self.options.positive_column]])
        scores = unit_vectors(embeddings[:, 0]) @ unit_vectors(np.stack(vectors)).T
        return {**retrieval_metrics(scores, correct), "corpus_size": len(corpus)}

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: its text, its embedding (unit length), the pair's `score` where the file has
        positives (and `match`, the score at or above the saved verification threshold), and with
        `embedding.gallery` its nearest gallery inputs."""
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
                if self.saved_threshold is not None:
                    record["match"] = bool(record["score"] >= self.saved_threshold)
        if o.gallery:
            self._add_neighbours(records, embeddings[:, 0])
        return records

    def _add_neighbours(self, records: list[dict[str, Any]], queries: np.ndarray) -> None:
        o = self.options
        assert o.gallery is not None and self.model is not None  # predict loads the model first
        gallery = load_labelled(o.gallery, [o.gallery_column], None, self.config.data.bad_rows,
                                settings=("embedding.gallery_column", ""))
        texts = self.encoder.checked(gallery, [o.gallery_column]).inputs[o.gallery_column]
        vectors = self.encoder.encode(self.model, texts, self.config.training.per_device_eval_batch_size)
        key = "image" if self.encoder.inputs == "images" else "text"
        scores, top = nearest(queries, vectors, min(o.top_k, len(texts)))
        for record, row_scores, row_top in zip(records, scores, top):
            record["neighbours"] = [{key: texts[j], "score": round(float(v), 6)} for j, v in zip(row_top, row_scores)]
