"""What a recommendation model is built from: the task's settings, its id tables' start, and their fold-in.

`RecommendationTask` (tasks/recommendation.py) reads the rows and scores them; this half makes the
network: a new one at the bias baseline, or the parent run's in grown tables, the new rows started at
their bias-baseline value, with the parent's rows held still under `update_ids: new`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.interactions import item_texts, sentence_vectors
from tunesmith.data.labelled import LabelledRows
from tunesmith.models.recommender import UNKNOWN, WEIGHTS_FILE, Recommender

log = logging.getLogger("tunesmith")

SHRINK = 5.0  # the bias baseline's shrinkage: a user or item with n ratings keeps n / (n + 5) of its mean deviation


class RecommendationConfig(Section):
    """`recommendation`: the columns, the feedback kind, the model's size and which rows train."""

    user_column: str = "user_id"
    item_column: str = "item_id"
    rating_column: str | None = "rating"
    """The rating (explicit feedback). `null` with `feedback: implicit`: every row is one interaction."""
    timestamp_column: str | None = "timestamp"
    """Unix seconds or dates; orders the held-out split. `null`: the file's order is time order."""
    feedback: Literal["explicit", "implicit"] = "explicit"
    """`explicit`: ratings, squared error. `implicit`: clicks, plays, purchases: BPR ranking loss."""
    holdout: Literal["time", "last_per_user"] = "time"
    """Without `data.validation`: hold out the latest `data.validation_split` of the rows by time, or
    each user's last interaction (leave-last-out). Never a random split: it would leak the future."""
    factors: int = Field(32, ge=1)
    """Width of the user and item vectors. New models only."""
    hidden_size: int = Field(128, ge=1)
    """two-tower: width of each tower's hidden layer."""
    regularization: float = Field(0.01, ge=0)
    """L2 on the rows each batch uses (vectors and biases), added to the loss; rows a batch does not
    use are left alone (unlike `training.weight_decay`, which shrinks every row every step)."""
    top_k: int = Field(10, ge=1)
    """The k of recall, nDCG, MAP, hit rate and coverage at k, and of `predict`'s recommendations."""
    relevant_rating: float | None = None
    """Explicit feedback: a held-out rating counts as relevant for the ranking metrics at or above
    this; `null`: every held-out interaction does."""
    update_ids: Literal["all", "new"] = "all"
    """Fine-tuning a run: `new` trains only the rows of users and items the parent run had not seen
    (fold-in); the parent's rows stay exactly as they were."""
    items: str | None = None
    """two-tower: a table of items (the item column plus `item_text_columns`) whose texts the item
    tower reads, through `item_encoder`."""
    item_text_columns: list[str] = []
    """Columns of `items` joined into each item's text (`[title, genres]`)."""
    item_encoder: str = "demo:minilm"
    """The sentence encoder that embeds the item texts once, before training (it is not fine-tuned)."""

    @property
    def overfitting_advice(self) -> str:
        """What the overfitting warning suggests (report/overfitting.py): this task's own regularisers."""
        return ("lower the learning rate or the epochs, raise recommendation.regularization, lower "
                "recommendation.factors, or freeze a side (strategy.freeze_groups)")

    @property
    def default_metric(self) -> str:
        """What selects the best model when `training.metric_for_best_model` is unset."""
        return "rmse" if self.feedback == "explicit" else "ndcg_at_k"


def network(model: nn.Module) -> Recommender:
    """The recommender itself, also inside a wrapper (DDP's `module`), for its methods besides `forward`."""
    return cast(Recommender, getattr(model, "module", model))



class RecommenderModels:
    """The model-building half of the recommendation task."""

    config: RunConfig
    options: RecommendationConfig
    spec: dict[str, Any]
    parent: Path | None
    train_rows: LabelledRows | None

    def _ratings(self, rows: LabelledRows) -> np.ndarray:
        return np.asarray(rows.labels, dtype=np.float64) if self.options.feedback == "explicit" else np.ones(len(rows))

    def _indices(self, spec: dict[str, Any], rows: LabelledRows) -> tuple[np.ndarray, np.ndarray]:
        """((N,) user rows, (N,) item rows) of `rows`, UNKNOWN for ids without a row."""
        o = self.options
        users = {u: i for i, u in enumerate(spec["users"])}
        items = {v: i for i, v in enumerate(spec["items"])}
        return (np.array([users.get(u, UNKNOWN) for u in rows.inputs[o.user_column]], dtype=np.int64),
                np.array([items.get(v, UNKNOWN) for v in rows.inputs.get(o.item_column, [None] * len(rows))],
                         dtype=np.int64))


    def build_model(self) -> nn.Module:
        """The parent's weights in grown tables when fine-tuning one, else the bias baseline's start.

        A new id's vector starts at zero, the fallback's (where its side is frozen it stays there rather
        than at random noise), and its bias at the bias baseline's estimate from the training rows.
        """
        from safetensors.torch import load_file

        spec = self.spec
        if spec["architecture"]["kind"] == "two-tower" and not spec["architecture"]["item_features"]:
            spec["architecture"]["item_features"] = self._item_features_width()
        network = Recommender(spec)
        if self.parent is not None and self.config.model.pretrained:
            state = network.state_dict()
            for name, value in load_file(str(self.parent / WEIGHTS_FILE)).items():
                if value.shape != state[name].shape:  # a grown table: the parent's rows, then zeros for the new ids
                    value = torch.cat([value, torch.zeros_like(state[name][len(value):])])
                state[name] = value
            network.load_state_dict(state)
            self._bias_start(network, tuple(self.spec["parent_rows"]))  # the new rows only
        else:
            self._bias_start(network)
        if network.two_tower:
            self._set_item_features(network)
        if self.options.update_ids == "new":
            self._freeze_known_rows(network)
        return network

    def _item_features_width(self) -> int:
        from transformers import AutoConfig

        from tunesmith.models.sources import resolve_source

        return int(AutoConfig.from_pretrained(resolve_source(self.spec["architecture"]["item_encoder"]).location).hidden_size)

    def _set_item_features(self, network: Recommender) -> None:
        """Embeds the item texts (once, frozen) into the item tower's feature buffer; rows without a text stay zero."""
        o, known = self.options, self.spec["parent_rows"][1] if self.parent and self.config.model.pretrained else 0
        if not o.items:
            return
        texts = item_texts(o.items, o.item_column, o.item_text_columns, "recommendation")
        todo = [(i, texts[v]) for i, v in enumerate(self.spec["items"]) if i >= known and v in texts]
        if todo:
            log.info("recommendation: embedding %d item texts with %s", len(todo), self.spec["architecture"]["item_encoder"])
            vectors = sentence_vectors(self.spec["architecture"]["item_encoder"], [t for _, t in todo])
            network.item_features[torch.tensor([i for i, _ in todo])] = torch.from_numpy(vectors)

    @torch.no_grad()
    def _bias_start(self, network: Recommender, first: tuple[int, int] = (0, 0)) -> None:
        """Biases of the rows from `first` (user row, item row) on: explicit, the shrunk mean deviations
        (items from the ratings less the user biases, then users from what the item biases leave: the
        bias baseline, and for a fold-in each new user's own offset from a few ratings); implicit, the
        items' log popularity."""
        if self.train_rows is None:
            return
        users, items = self._indices(self.spec, self.train_rows)
        item_bias, user_bias = network.item_biases.weight[:, 0], network.user_biases.weight[:, 0]
        if self.options.feedback == "implicit":
            counts = np.log1p(np.asarray(self.spec["counts"], dtype=np.float64))
            item_bias[first[1]:] = torch.from_numpy(counts - counts.mean()).float()[first[1]:]
            return
        residual = self._ratings(self.train_rows) - self.spec["offset"]
        for bias, rows, other, other_rows, start in ((item_bias, items, user_bias, users, first[1]),
                                                     (user_bias, users, item_bias, items, first[0])):
            left = residual - other.double().numpy()[other_rows]
            sums, counts = np.bincount(rows, left, minlength=len(bias)), np.bincount(rows, minlength=len(bias))
            bias[start:] = torch.from_numpy(sums / (counts + SHRINK)).float()[start:]

    def _freeze_known_rows(self, network: Recommender) -> None:
        """`update_ids: new`: gradients of the parent's rows are zeroed, so only new ids' rows move."""
        users, items = self.spec["parent_rows"] if self.parent is not None else (0, 0)
        for table, known in ((network.user_embeddings, users), (network.user_biases, users),
                             (network.item_embeddings, items), (network.item_biases, items)):
            if known:
                table.weight.register_hook(lambda grad, known=known: torch.cat([torch.zeros_like(grad[:known]), grad[known:]]))
