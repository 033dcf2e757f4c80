"""What the embedding task (tasks/embedding.py) is built from: its settings, its in-batch loss and
metrics, and the sentence-transformers folder it reads and writes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tunesmith.config import Section
from tunesmith.report.ranking_metrics import RETRIEVAL_KS, verification_metrics

log = logging.getLogger("tunesmith")


class EmbeddingConfig(Section):
    """`embedding`: what the columns hold, the loss, and what `predict` searches."""

    inputs: Literal["auto", "text", "images"] = "auto"
    """What the columns hold. `auto`: images when `model.source` is an image model (`demo:face-resnet`,
    a timm name, folder or weights file), else text."""
    image_root: str | None = None
    """images: the folder relative image paths start from (default: the data file's own folder)."""
    face_detector: Literal["demo:mtcnn"] | None = None
    """images: find the largest face in each image first (MTCNN, `pip install --no-deps
    facenet-pytorch==2.6.0`), level its eyes and crop a square around it; an image with no face found
    is unusable (`data.bad_rows`). Unset: images are used whole (already cropped faces)."""
    face_margin: float = Field(0.0, ge=0.0, le=1.0)
    """face_detector: how much wider than the detector's box the crop is, on every side, as a share of
    the box's size. 0: the box itself, which verified best with demo:face-resnet on the ORL training
    people (ROC AUC 0.998 at 0, 0.994 at 0.1, 0.981 at 0.2)."""

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
    loss: Literal["auto", "in_batch_negatives", "triplet", "contrastive", "batch_hard_triplet", "arcface"] = "auto"
    """`auto`: `contrastive` with a `label_column`, `batch_hard_triplet` with a `class_column`, else
    `in_batch_negatives`. `in_batch_negatives`:
    softmax over the anchor's similarity to every positive and negative in the batch (InfoNCE,
    sentence-transformers' MultipleNegativesRankingLoss); larger batches give more negatives. `triplet`:
    the positive must be nearer than the row's negative by `margin`. `contrastive` (labelled pairs):
    matching pairs pulled together, others pushed at least `margin` apart (sentence-transformers'
    ContrastiveLoss). `batch_hard_triplet` (classes): each row's farthest same-class row must be
    nearer than its nearest other-class row by `margin` (sentence-transformers' BatchHardTripletLoss).
    `arcface` (classes): an additive angular margin head, one learned direction per training class,
    `margin` radians added to a row's angle to its own class and logits times `scale`
    (pytorch-metric-learning's ArcFaceLoss); the head is its own layer group, `margin_head`, used for
    training only (validation loss is the batch-hard triplet loss, as the held-out classes have no
    direction), and kept in best/ as `margin_head.safetensors`."""
    scale: float = Field(20.0, gt=0)
    """in_batch_negatives, arcface: cosine similarities are multiplied by this before the softmax (1 / temperature)."""
    margin: float = Field(0.5, gt=0)
    """triplet: how much farther (in cosine distance) the negative must be than the positive;
    contrastive: the cosine distance beyond which a non-matching pair no longer adds to the loss;
    arcface: the angle, in radians, added between a row and its class's direction."""
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
        if self.loss == "arcface" and not self.class_column:
            raise ValueError("loss: arcface learns a direction per class: set embedding.class_column to the column "
                             "holding each row's class, or use loss: in_batch_negatives")
        if self.class_column and self.loss not in ("auto", "batch_hard_triplet", "arcface"):
            raise ValueError(f"rows with a class (embedding.class_column) train with loss: batch_hard_triplet, arcface "
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


def class_metrics(vectors: np.ndarray, classes: list[Any], threshold: float | None = None) -> dict[str, float]:
    """Held-out classes: each row searches the other rows (`recall_at_k`: a row of its class in the top
    k; `mrr_at_10` by the first), and every pair of rows is a verification pair (same class or not),
    also scored at a saved `threshold` (`at_threshold`)."""
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
    pairs, matching = scores[upper], same[upper].astype(int)
    return {**metrics, **verification_metrics(pairs, matching), **at_threshold(pairs, matching, threshold)}


def at_threshold(scores: np.ndarray, same: np.ndarray, threshold: float | None) -> dict[str, float]:
    """Verification at a threshold chosen before (on validation, saved with the model), as a deployed
    model decides: `accuracy_at_saved_threshold`, and its true and false accept rates. {} without one."""
    if threshold is None or not len(scores):
        return {}
    accept, same = np.asarray(scores) >= threshold, np.asarray(same).astype(bool)
    return {"accuracy_at_saved_threshold": float((accept == same).mean()),
            "tar_at_saved_threshold": float(accept[same].mean()) if same.any() else 0.0,
            "far_at_saved_threshold": float(accept[~same].mean()) if (~same).any() else 0.0}


THRESHOLD_FILE = "tunesmith_verification.json"  # beside the weights in best/; plain libraries ignore it


def write_threshold(folder: Path, threshold: float) -> None:
    note = ("cosine similarity at or above which two inputs are taken to match: the cut with the best accuracy "
            "on the validation pairs of the step this model was kept from")
    (folder / THRESHOLD_FILE).write_text(json.dumps({"threshold": threshold, "meaning": note}, indent=2) + "\n",
                                         encoding="utf-8")


def read_threshold(source: Path) -> float | None:
    """The verification threshold saved with a trained model (a run directory or its best/), or None."""
    for folder in (source, source / "best"):
        if (folder / THRESHOLD_FILE).is_file():
            return float(json.loads((folder / THRESHOLD_FILE).read_text(encoding="utf-8"))["threshold"])
    return None


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
def library_quiet() -> Iterator[None]:
    """sentence-transformers at WARNING for a load or save: its INFO lines ("Loading SentenceTransformer
    model from ...", "Saving model to .tmp-best-...") repeat what tunesmith's own log says."""
    library = logging.getLogger("sentence_transformers")
    level = library.level
    library.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        library.setLevel(level)


def with_projection(model: Any) -> Any:
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


def module_files(folder: Path) -> list[tuple[str, Path]]:
    """(state-dict prefix, weights file) of each module of a saved SentenceTransformer (`modules.json`):
    the transformer's file at the root, a later module's (a Dense projection) in its own folder."""
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return [(TRANSFORMER_PREFIX if m["idx"] == 0 else f"{m['idx']}.", folder / m["path"] / "model.safetensors")
            for m in modules]


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class WithMarginHead(nn.Module):
    """An encoder and, for training only, an ArcFace head over the training classes.

    The head is pytorch-metric-learning's ArcFaceLoss, whose (D, classes) weight is the class directions;
    it lives in the model so the engine's optimizer, devices and checkpoints reach it like any layer group.
    """

    def __init__(self, encoder: nn.Module, classes: int, width: int, scale: float, margin: float):
        # The directions start at the library's random init. Starting them at each class's mean pre-trained
        # embedding was tried on ORL faces and did worse: held-out ROC AUC 0.922 against 0.942.
        from pytorch_metric_learning.losses import ArcFaceLoss

        super().__init__()
        self.encoder = encoder
        self.margin_head = ArcFaceLoss(classes, width, margin=math.degrees(margin), scale=scale)  # its margin: degrees

    def forward(self, *inputs: Any, **options: Any) -> Any:
        """The encoder's forward: embedding goes through the wrapper, so Accelerate's wrappers see the call."""
        return self.encoder(*inputs, **options)


MARGIN_HEAD_FILE = "margin_head.safetensors"  # in best/: the class directions, for training on from it


INDEX_ABOVE = 4096  # gallery items from which `nearest` searches with faiss (when installed)


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) cosine similarities and gallery indices of each unit query's k nearest unit gallery vectors,
    best first. Above `INDEX_ABOVE` items, faiss's exact inner-product index (pip install faiss-cpu)
    searches with its own blocked, multi-threaded kernels; below, or without faiss, NumPy does, a block of
    queries at a time. Both are exact, so the neighbours are the same (ties aside)."""
    if len(gallery) > INDEX_ABOVE:
        try:
            import faiss
        except ImportError:
            log.info("a gallery of %d items: pip install faiss-cpu searches it faster (NumPy does it now)", len(gallery))
        else:
            index = faiss.IndexFlatIP(gallery.shape[1])
            index.add(np.ascontiguousarray(gallery, dtype=np.float32))
            scores, top = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return scores, top
    found_scores, found_top = [], []
    for start in range(0, len(queries), 1024):  # (1024, gallery) scores at a time
        block = queries[start:start + 1024] @ gallery.T
        top = np.argsort(-block, axis=1, kind="stable")[:, :k]
        found_scores.append(np.take_along_axis(block, top, axis=1))
        found_top.append(top)
    if not found_top:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    return np.concatenate(found_scores), np.concatenate(found_top)
