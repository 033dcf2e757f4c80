"""Recommendation: collaborative filtering on (user, item, rating) interactions, with fold-in of new users and items.

Rows are interactions (data/interactions.py): explicit ratings (mean squared error, RMSE selects the
best model) or implicit feedback (`feedback: implicit`: BPR with one sampled negative per row, nDCG
at k selects). `model.source` is an architecture to train anew (`mf`: biased matrix factorisation;
`two-tower`: towers over the rows, the item side also reading a sentence encoder's embedding of each
item's text, so an unrated item has a vector) or a recommendation run directory to fine-tune. A
new model starts from the user + item bias baseline (explicit: shrunk mean deviations; implicit: item
popularity), which is the "before" of the report.

Fine-tuning a run directory grows its tables: users and items of the training rows it never saw get
new rows, the old ones keep theirs. The layer groups are the item side (`item_embeddings`,
`item_biases`, the item tower) then the user side, so `strategy.freeze_groups` freezes a side:
fold-in of new users is `freeze_groups: [item_embeddings, item_biases]` with `update_ids: new` (only
the new users' rows move: a few gradient steps, not a retrain); new items freeze the user side; a
newer period is `tunesmith update`, whose held-out rows are the latest by time. Ids without a row
fall back (a rating: the offset plus the known side's bias; a ranking: items by popularity).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.interactions import (
    item_texts,
    later_split,
    read_interactions,
)
from tunesmith.data.labelled import LabelledRows, sample
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.models import recommender
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.recommender import (
    SEEN_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    Recommender,
    seen_matrix,
    top_items,
)
from tunesmith.report.ranking_metrics import ranking_metrics
from tunesmith.tasks import register_task
from tunesmith.tasks._recommendation import (
    RecommendationConfig,
    RecommenderModels,
    network,
)

log = logging.getLogger("tunesmith")

ARCHITECTURES = ("mf", "two-tower")
STANDALONE = "recommender_model.py"  # the copy of models/recommender.py in each best/


@register_task("recommendation")
class RecommendationTask(RecommenderModels):
    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]] = ("rmse", "mae", "ndcg_at_k", "recall_at_k", "map_at_k", "hit_rate_at_k",
                                               "coverage_at_k")
    minimize = ("loss", "rmse", "mae")
    settings: ClassVar[type[Section] | None] = RecommendationConfig
    supports_activation_cache: ClassVar[bool] = False
    ordered_by: ClassVar[str] = "timestamp_column"  # `tunesmith update` holds out the latest rows by this key
    defaults: ClassVar[dict[str, Any]] = {
        "model.source": "mf", "training.learning_rate": 1e-2, "training.per_device_train_batch_size": 1024,
        "training.per_device_eval_batch_size": 1024, "training.num_train_epochs": 20, "training.weight_decay": 0.0,
        "training.early_stopping_patience": 3, "training.warmup_ratio": 0.0}

    def __init__(self, config: RunConfig):
        self.config = config
        self.options: RecommendationConfig = config.task_settings
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.truncated = 0
        self.spec: dict[str, Any] = {}
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None  # each user row's training items (CSR)
        self._popular: torch.Tensor | None = None  # item rows by training count, for the unknown-user fallback
        self.parent = self._parent()
        self.architecture = None if self.parent is not None else config.model.source
        if self.options.update_ids == "new" and config.training.weight_decay:
            raise ConfigError(["recommendation.update_ids: new keeps the parent's rows as they were, but "
                               "training.weight_decay shrinks every row each step; set training.weight_decay: 0 "
                               "(recommendation.regularization is the L2 that leaves unused rows alone)"])
        trained = self.parent is not None and config.model.pretrained
        self.start_competes = True  # the parent, or the bias baseline: a real model, kept if no epoch beats it
        self.starting_point = "parent model" if trained else "user + item bias baseline" if \
            self.options.feedback == "explicit" else "item popularity"

    def _parent(self) -> Path | None:
        source = self.config.model.source
        if source in ARCHITECTURES:
            return None
        path = Path(source).expanduser()
        folder = path / "best" if (path / "best" / SPEC_FILE).is_file() else path
        if (folder / SPEC_FILE).is_file():
            return folder
        raise ModelSourceError(f"model.source: {source!r} is no recommender architecture ({', '.join(ARCHITECTURES)}) "
                               f"and no recommendation run directory (or its best/, holding {SPEC_FILE}); "
                               "set model.source: mf to train a new model")

    def _parent_spec(self) -> dict[str, Any]:
        assert self.parent is not None
        spec = json.loads((self.parent / SPEC_FILE).read_text(encoding="utf-8"))
        if spec["feedback"] != self.options.feedback:
            raise ModelSourceError(f"{self.parent} was trained on {spec['feedback']} feedback; set "
                                   f"recommendation.feedback: {spec['feedback']} to fine-tune it")
        return spec

    # ---- data -------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        o = self.options
        return [o.user_column, o.item_column] + ([o.timestamp_column] if o.timestamp_column else [])

    def _read(self, path: str) -> LabelledRows:
        o = self.options
        rating = o.rating_column if o.feedback == "explicit" or o.rating_column else None
        if o.feedback == "explicit" and rating is None:
            raise ConfigError(["recommendation.rating_column: explicit feedback needs the rating column; "
                               "set it, or recommendation.feedback: implicit"])
        return read_interactions(path, self.columns, rating, self.config.data.bad_rows, "recommendation")

    def preflight(self) -> None:
        """Reads the rows, holds out later ones when no validation file is given, sizes the id tables."""
        d, o, seed = self.config.data, self.options, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (a CSV, JSONL or Parquet table of interactions)")
        val = self._read(d.validation) if d.validation else None
        if d.train is not None:
            train = self._read(d.train)
            if val is None:
                train, val = later_split(train, d.validation_split, o.timestamp_column, o.user_column, o.holdout)
            self.train_rows = sample(train, d.max_train_samples, seed)
        assert val is not None
        self.eval_rows = sample(val, d.max_eval_samples, seed)
        parent = self._parent_spec() if self.parent is not None else None
        self.spec = self._grown(parent)

    def _grown(self, parent: dict[str, Any] | None) -> dict[str, Any]:
        """The spec: the parent's id maps extended by the training rows' new ids, the offset, the architecture."""
        o, rows = self.options, self.train_rows
        users = list(parent["users"]) if parent else []
        items = list(parent["items"]) if parent else []
        if rows is not None:
            for known, new in ((users, rows.inputs[o.user_column]), (items, rows.inputs[o.item_column])):
                seen = set(known)
                known += [x for x in dict.fromkeys(new) if x not in seen]
        if o.items and (parent is None or parent["architecture"]["kind"] == "two-tower"):
            texts = item_texts(o.items, o.item_column, o.item_text_columns, "recommendation")
            seen = set(items)
            items += [x for x in texts if x not in seen]  # items nobody rated yet: the tower gives them a vector
        if not users or not items:
            raise DataError("no training rows: a new recommender needs data.train to learn its users and items")
        ratings = self._ratings(rows) if rows is not None else np.zeros(0)
        spec: dict[str, Any] = {"feedback": o.feedback, "users": users, "items": items,
                "parent_rows": [len(parent["users"]), len(parent["items"])] if parent else [0, 0],
                "offset": parent["offset"] if parent else float(ratings.mean()) if o.feedback == "explicit" else 0.0,
                "rating_range": parent["rating_range"] if parent else
                [float(ratings.min()), float(ratings.max())] if o.feedback == "explicit" else None,
                "architecture": dict(parent["architecture"]) if parent else self._architecture()}
        index = self._indices(spec, rows) if rows is not None else None
        counts = np.zeros(len(items), dtype=np.int64)
        if parent:
            counts[:len(parent["counts"])] = parent["counts"]
        if index is not None:
            np.add.at(counts, index[1][index[1] >= 0], 1)
        spec["counts"], spec["popular"] = counts.tolist(), np.argsort(-counts, kind="stable").tolist()
        return spec

    def _architecture(self) -> dict[str, Any]:
        o, kind = self.options, self.config.model.source
        arch: dict[str, Any] = {"kind": kind, "factors": o.factors}
        if kind == "two-tower":
            if not o.items:
                raise ConfigError(["recommendation.items: a two-tower model reads item texts; give the item table "
                                   "and recommendation.item_text_columns, or use model.source: mf"])
            arch |= {"hidden_size": o.hidden_size, "item_features": 0, "item_encoder": o.item_encoder}
        return arch

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Rows to score: user and item columns (a score per pair), or a user column only (top-k per user)."""
        from tunesmith.data.labelled import load_labelled

        o = self.options
        rows = load_labelled(path, [o.user_column], None, self.config.data.bad_rows,
                             settings=("recommendation.user_column", "recommendation.item_column"))
        if o.item_column in rows.columns:
            rows.inputs[o.item_column] = [str(v) for v in rows.columns[o.item_column]]
        return rows

    def describe(self) -> dict[str, Any]:
        o, spec = self.options, self.spec
        facts: dict[str, Any] = {"feedback": o.feedback, "users": len(spec["users"]), "items": len(spec["items"]),
                                 "new_rows_since_parent": [len(spec["users"]) - spec["parent_rows"][0],
                                                           len(spec["items"]) - spec["parent_rows"][1]]}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                users, items = self._indices(self.spec, rows)
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "distinct_users": len(set(rows.inputs[o.user_column])),
                                "rows_of_unknown_users": int((users < 0).sum()),
                                "rows_of_unknown_items": int((items < 0).sum())}
        if self.eval_rows is not None:
            facts["validation"]["popularity_baseline"] = self._ranking(self.eval_rows, self.popular_lists(self.eval_rows))
        return facts

    def popular_lists(self, rows: LabelledRows) -> list[list[str]]:
        """Each row's user's top-k items by training count, leaving out those the user had seen: the
        ranking a recommender has to beat."""
        users, _ = self._indices(self.spec, rows)
        indptr, seen = self.seen()
        counts = torch.tensor(self.spec["counts"], dtype=torch.float32)
        popular, names = torch.tensor(self.spec["popular"]), self.spec["items"]
        lists: dict[int, list[str]] = {}
        distinct = torch.from_numpy(np.unique(users))
        for start in range(0, len(distinct), 1024):
            chunk = distinct[start:start + 1024]
            order, _ = top_items(counts.expand(len(chunk), -1), chunk, indptr, seen, popular, self.options.top_k)
            lists |= {int(u): [names[int(i)] for i in o] for u, o in zip(chunk, order)}
        return [lists[int(u)] for u in users]

    # ---- model ------------------------------------------------------------------------------

    def load_trained(self) -> nn.Module:
        if self.parent is None:
            raise ModelSourceError(f"model.source: {self.config.model.source} is an untrained architecture; train it "
                                   "first (tunesmith train) and use the run directory")
        from safetensors.torch import load_file

        self.spec = self._parent_spec()
        network = Recommender(self.spec)
        network.load_state_dict(load_file(str(self.parent / WEIGHTS_FILE)))
        seen = load_file(str(self.parent / SEEN_FILE))
        self._seen = (seen["indptr"], seen["items"])
        return network

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """The item side, then the user side: embeddings, biases, tower."""
        assert isinstance(model, Recommender)
        parts: list[tuple[str, nn.Module]] = [("item_embeddings", model.item_embeddings), ("item_biases", model.item_biases)]
        parts += [("item_tower", model.item_tower)] if model.two_tower else []
        parts += [("user_embeddings", model.user_embeddings), ("user_biases", model.user_biases)]
        parts += [("user_tower", model.user_tower)] if model.two_tower else []
        return [LayerGroup(name, [m], [(f"{name}.{n}", p) for n, p in m.named_parameters()]) for name, m in parts]

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """`model.safetensors`, `recommender.json` (id maps, popularity), `seen.safetensors` and `recommender_model.py`."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = weights if weights is not None else model.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        indptr, items = self.seen()
        save_file({"indptr": indptr.contiguous(), "items": items.contiguous()}, str(out / SEEN_FILE))
        (out / SPEC_FILE).write_text(json.dumps(self.spec), encoding="utf-8")
        shutil.copyfile(recommender.__file__, out / STANDALONE)

    def seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each user row's training items (CSR): the parent's and this run's training rows."""
        if self._seen is None:
            users, items = self._indices(self.spec, self.train_rows) if self.train_rows is not None else (
                np.zeros(0, np.int64), np.zeros(0, np.int64))
            if self.parent is not None and (self.parent / SEEN_FILE).is_file():
                from safetensors.torch import load_file

                old = load_file(str(self.parent / SEEN_FILE))
                counts = np.diff(old["indptr"].numpy())
                users = np.concatenate([np.repeat(np.arange(len(counts)), counts), users])
                items = np.concatenate([old["items"].numpy(), items])
            indptr, seen = seen_matrix(users, items, len(self.spec["users"]))
            self._seen = (torch.from_numpy(indptr), torch.from_numpy(seen))
        return self._seen

    def card_usage(self) -> str:
        return (
            "Needs only numpy, torch and safetensors: `recommender_model.py` in this folder is the code it was "
            "trained with; `recommender.json` maps ids to rows.\n\n```python\nimport importlib.util\n"
            'spec = importlib.util.spec_from_file_location("recommender_model", "path/to/best/recommender_model.py")\n'
            "recommender_model = importlib.util.module_from_spec(spec); spec.loader.exec_module(recommender_model)\n"
            'model = recommender_model.load("path/to/best")\n'
            'print(model.recommend(["some-user-id"], k=10))           # [(item id, score), ...] per user\n'
            'print(model.score(["some-user-id"], ["some-item-id"]))   # predicted rating per pair\n```'
        )

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        users, items = self._indices(self.spec, rows)
        ratings = self._ratings(rows) if labelled else None
        return [{"user": users[i], "item": items[i], **({"labels": np.float32(ratings[i])} if ratings is not None else {})}
                for i in range(len(rows))]

    def lengths(self, dataset: list[dict[str, Any]]) -> None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {k: torch.tensor(np.array([f[k] for f in features])) for k in ("user", "item")}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor(np.array([f["labels"] for f in features]))
        return batch

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pair scores and, out of training, each row's top-k items among those its user had not seen."""
        scores = model(batch["user"], batch["item"])
        if model.training:
            return {"score": scores}
        indptr, seen = (t.to(scores.device) for t in self.seen())
        if self._popular is None or self._popular.device != scores.device:  # once, not per evaluation batch
            self._popular = torch.tensor(self.spec["popular"], device=scores.device)
        popular = self._popular
        users, row_of = torch.unique(batch["user"], return_inverse=True)  # a batch repeats its users: rank each once
        order, best = top_items(network(model).score_all(users), users, indptr, seen, popular, self.options.top_k)
        return {"score": scores, "top": order[row_of], "top_scores": best[row_of]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Squared error (explicit) or BPR against one random item (implicit), plus L2 on the batch's rows."""
        out = self.forward(model, batch)
        users, items, reg = batch["user"], batch["item"], self.options.regularization
        if self.options.feedback == "explicit":
            return F.mse_loss(out["score"].float(), batch["labels"].float()) + reg * network(model).regularizer(users, items), out
        # evaluation draws no random numbers from the global generator: its negatives come from a fixed one
        generator = None if model.training else torch.Generator(device=users.device).manual_seed(len(users))
        negatives = torch.randint(len(self.spec["items"]), users.shape, device=users.device, generator=generator)
        margin = out["score"] - model(users, negatives)
        penalty = network(model).regularizer(users, items) + network(model).regularizer(users, negatives)
        return -F.logsigmoid(margin.float()).mean() + reg * penalty, out

    def batch_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        score = outputs["score"].detach().float().cpu().numpy()
        top, best = outputs["top"].cpu().numpy(), outputs["top_scores"].float().cpu().numpy()
        return [{"score": float(score[i]), "top": top[i], "top_scores": best[i]} for i in range(len(score))]

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        return examples

    def _clipped(self, scores: np.ndarray) -> np.ndarray:
        low_high = self.spec.get("rating_range")
        return np.clip(scores, *low_high) if low_high else scores

    def _ranking(self, rows: LabelledRows, ranked: list[list[str]]) -> dict[str, float]:
        o = self.options
        users, items = rows.inputs[o.user_column], rows.inputs[o.item_column]
        relevant = [True] * len(rows) if o.feedback == "implicit" or o.relevant_rating is None else \
            (self._ratings(rows) >= o.relevant_rating).tolist()
        lists = dict(zip(users, ranked))
        return ranking_metrics(users, items, relevant, lists, o.top_k, len(self.spec["items"]))

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """RMSE and MAE (explicit), the ranking metrics at k, and both again per segment of users."""
        names = self.spec["items"]
        ranked = [[names[int(i)] for i in out["top"]] for out in outputs]
        result = self._scores(rows, outputs, ranked)
        users, _ = self._indices(self.spec, rows)
        known = self.spec["parent_rows"][0]  # 0: no parent, every user with a row is a known one
        segment = np.where(users < 0, "unknown_users", np.where(users >= known, "new_users" if known else "known_users",
                                                                "existing_users"))
        result["segments"] = {name: {"rows": int((segment == name).sum()),
                                     **self._scores(rows.subset(idx), [outputs[i] for i in idx], [ranked[i] for i in idx])}
                              for name in ("known_users", "existing_users", "new_users", "unknown_users")
                              for idx in [np.flatnonzero(segment == name)] if len(idx)}
        return result

    def _scores(self, rows: LabelledRows, outputs: list[Any], ranked: list[list[str]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.options.feedback == "explicit":
            error = self._clipped(np.array([o["score"] for o in outputs])) - self._ratings(rows)
            result |= {"rmse": float(np.sqrt((error**2).mean())), "mae": float(np.abs(error).mean())}
        return result | self._ranking(rows, ranked)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """A score per (user, item) row; where the rows name users only, each user's top-k items and scores."""
        if self.options.item_column in rows.inputs:
            return [{"score": round(float(s), 6)} for s in self._clipped(np.array([o["score"] for o in outputs]))]
        users, _ = self._indices(self.spec, rows)
        names = self.spec["items"]
        return [{"items": [names[int(i)] for i in o["top"]], "scores": [round(float(s), 6) for s in o["top_scores"]],
                 "fallback": "popularity (unknown user)" if u < 0 else None} for o, u in zip(outputs, users)]
