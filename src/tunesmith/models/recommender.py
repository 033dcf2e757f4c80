"""Recommenders: biased matrix factorisation and a two-tower model, with the id maps that name their rows.

A score is `offset + user bias + item bias + user vector . item vector`. In `mf` the vectors are the
embedding rows themselves; in `two-tower` each side's row goes through a small MLP, and the item
side also reads a fixed feature vector per item (a sentence encoder's embedding of its title and
genres), so an item nobody has rated yet still has a vector. Row i of a user table is the user
`spec["users"][i]`; an id without a row (never seen in training) gets the fallback: a zero vector
and zero bias, so a rating falls back to the offset plus the known side's bias, and a ranking for an
unknown user is the items by popularity.

This file is copied into every recommendation `best/` as `recommender_model.py`: it needs numpy,
torch and safetensors, not tunesmith, so a trained model can be served anywhere (`load(folder)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SPEC_FILE = "recommender.json"
WEIGHTS_FILE = "model.safetensors"
SEEN_FILE = "seen.safetensors"  # each user's training items (CSR), left out of their recommendations
UNKNOWN = -1  # the row index of an id the model has no row for


class Recommender(nn.Module):
    """The network of `spec["architecture"]` over `spec["users"]` x `spec["items"]`."""

    offset: torch.Tensor
    item_features: torch.Tensor

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        arch = spec["architecture"]
        users, items, width = len(spec["users"]), len(spec["items"]), arch["factors"]
        self.two_tower = arch["kind"] == "two-tower"
        self.user_embeddings = nn.Embedding(users, width)
        self.item_embeddings = nn.Embedding(items, width)
        self.user_biases = nn.Embedding(users, 1)
        self.item_biases = nn.Embedding(items, 1)
        self.register_buffer("offset", torch.tensor(float(spec["offset"])))
        if self.two_tower:
            hidden, features = arch["hidden_size"], arch["item_features"]
            self.register_buffer("item_features", torch.zeros(items, features))
            self.user_tower = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
            self.item_tower = nn.Sequential(nn.Linear(width + features, hidden), nn.ReLU(), nn.Linear(hidden, width))
        for table in (self.user_embeddings, self.item_embeddings):
            nn.init.normal_(table.weight, std=arch.get("init_std", 0.05))
        for table in (self.user_biases, self.item_biases):
            nn.init.zeros_(table.weight)

    @staticmethod
    def _rows(table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
        """The rows of `index`, zeros where it is UNKNOWN."""
        known = index >= 0
        rows = table(index.clamp(min=0))
        return rows * known.unsqueeze(-1).to(rows.dtype)

    def user_vectors(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, factors) vectors, (B,) biases) of user rows (UNKNOWN: zeros)."""
        vectors = self._rows(self.user_embeddings, users)
        if self.two_tower:
            vectors = self.user_tower(vectors) * (users >= 0).unsqueeze(-1).to(vectors.dtype)
        return vectors, self._rows(self.user_biases, users)[:, 0]

    def item_vectors(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, factors), (N,)) of item rows, or of every item when `items` is None."""
        if items is None:
            items = torch.arange(self.item_embeddings.num_embeddings, device=self.offset.device)
        vectors = self._rows(self.item_embeddings, items)
        if self.two_tower:  # an unknown item has no features either: zero
            known = (items >= 0).unsqueeze(-1).to(vectors.dtype)
            vectors = self.item_tower(torch.cat([vectors, self.item_features[items.clamp(min=0)] * known], -1)) * known
        return vectors, self._rows(self.item_biases, items)[:, 0]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) the score of each (user, item) pair."""
        u, ub = self.user_vectors(users)
        v, ib = self.item_vectors(items)
        return self.offset + ub + ib + (u * v).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """(B, items) every item's score for each user."""
        u, ub = self.user_vectors(users)
        v, ib = self.item_vectors()
        return self.offset + ub[:, None] + ib[None, :] + u @ v.T

    def regularizer(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the batch's own rows (vectors and biases): L2 that leaves unseen rows alone."""
        parts = [self._rows(t, i).pow(2).sum(-1) for t, i in ((self.user_embeddings, users), (self.user_biases, users),
                                                              (self.item_embeddings, items), (self.item_biases, items))]
        return torch.stack(parts).sum(0).mean()


def seen_matrix(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr (num_users + 1,), items) of each user's distinct items: CSR of the (user, item) row indices."""
    keep = (users >= 0) & (items >= 0)
    pairs = np.unique(np.stack([users[keep], items[keep]], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.add.at(indptr, pairs[:, 0] + 1, 1)
    return np.cumsum(indptr), pairs[:, 1].astype(np.int64)


def top_items(scores: torch.Tensor, users: torch.Tensor, indptr: torch.Tensor, seen: torch.Tensor,
              popular: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, k) item rows, (B, k) scores): each user's best items not among their training items; an
    UNKNOWN user gets the `popular` order (item rows by training count) with its scores."""
    scores = scores.clone()
    known = users >= 0
    starts, ends = indptr[users.clamp(min=0)], indptr[users.clamp(min=0) + 1]
    counts = torch.where(known, ends - starts, torch.zeros_like(starts))
    if int(counts.sum()):
        rows = torch.repeat_interleave(torch.arange(len(users), device=scores.device), counts)
        offsets = torch.arange(int(counts.sum()), device=scores.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        scores[rows, seen[torch.repeat_interleave(starts, counts) + offsets]] = float("-inf")
    k = min(k, scores.shape[1])
    best, order = scores.topk(k, dim=1)
    if not known.all():
        fallback = popular[:k].to(order.device)
        order[~known] = fallback
        best[~known] = scores[~known][:, fallback]
    return order, best


class LoadedRecommender:
    """A saved recommender: scores for (user, item) pairs and top-k items per user, by the file's own ids."""

    def __init__(self, folder: str | Path):
        from safetensors.torch import load_file

        folder = Path(folder)
        self.spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
        self.network = Recommender(self.spec)
        self.network.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        self.network.eval()
        seen = load_file(str(folder / SEEN_FILE))
        self.indptr, self.seen = seen["indptr"], seen["items"]
        self.popular = torch.tensor(self.spec["popular"], dtype=torch.int64)
        self.user_index = {u: i for i, u in enumerate(self.spec["users"])}
        self.item_index = {v: i for i, v in enumerate(self.spec["items"])}

    def rows(self, users: list[Any], items: list[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row indices of the ids (as text, the way they were read), UNKNOWN for ids without a row."""
        u = torch.tensor([self.user_index.get(str(x), UNKNOWN) for x in users], dtype=torch.int64)
        v = None if items is None else torch.tensor([self.item_index.get(str(x), UNKNOWN) for x in items], dtype=torch.int64)
        return u, v

    def clipped(self, scores: torch.Tensor) -> np.ndarray:
        low, high = self.spec.get("rating_range") or (None, None)
        return (scores.clamp(low, high) if low is not None else scores).numpy()

    @torch.no_grad()
    def score(self, users: list[Any], items: list[Any]) -> np.ndarray:
        """(N,) the predicted rating (explicit feedback, clipped to the training ratings' range) or
        ranking score (implicit) of each (user, item) pair."""
        u, v = self.rows(users, items)
        assert v is not None
        return self.clipped(self.network(u, v))

    @torch.no_grad()
    def recommend(self, users: list[Any], k: int = 10) -> list[list[tuple[str, float]]]:
        """Each user's top `k` (item id, score), leaving out the items they rated in training."""
        u, _ = self.rows(users)
        order, best = top_items(self.network.score_all(u), u, self.indptr, self.seen, self.popular, k)
        items = self.spec["items"]
        return [[(items[int(i)], float(s)) for i, s in zip(o, b)] for o, b in zip(order, best)]


def load(folder: str | Path) -> LoadedRecommender:
    """The recommender saved in `folder` (a `best/`)."""
    return LoadedRecommender(folder)
