"""What the tabular tasks (tabular-classification, tabular-regression) share: settings, source, rows, tensors.

The source is an architecture to train anew (`model.source: mlp`, `ft-transformer`, or `lightgbm`
for gradient-boosted trees, models/boosted.py) or a tabular model folder to fine-tune (a tunesmith run directory or its `best/`): then its preprocessing, columns
and architecture are kept, since its weights were learnt on them, and new categories score as unseen.
`model.pretrained: false` on such a folder starts the same architecture from random weights (the
from-scratch arm). The rows are typed and checked by data/tables.py; the network and its
preprocessing are models/tabular_network.py, the file copied into every `best/`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, sample, stratified_split
from tunesmith.data.tables import (
    drift,
    feature_columns,
    fit_columns,
    profile,
    read_tabular,
    report_drift,
    unreadable_numbers,
    with_features,
)
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.models import tabular_network
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.boosted import BoostedTrees, booster_params, lightgbm_module
from tunesmith.models.tabular_network import (
    BOOSTER_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    BoosterNetwork,
    TabularNetwork,
    encode,
)

log = logging.getLogger("tunesmith")

ARCHITECTURES = ("mlp", "ft-transformer", "lightgbm")
WIDTH = {"mlp": 256, "ft-transformer": 192}  # the paper's defaults (FT-Transformer: 192 = 8 heads x 24)
STANDALONE = "tabular_model.py"  # the copy of models/tabular_network.py in each best/


class TabularSettings(Section):
    """The keys every tabular task has."""

    features: list[str] | None = None
    """Columns the model reads. Default: every column but `data.label_column` and `drop`."""
    drop: list[str] = []
    """Columns to leave out: ids, timestamps, and columns known only after the outcome (leaks)."""
    categorical: list[str] = []
    """Columns read as categories even where every value is a number (codes, zip codes)."""
    numeric: list[str] = []
    """Columns read as numbers even where some cells are not (those rows are bad rows)."""
    hidden_size: int | None = Field(None, ge=1)
    """Width of the blocks (mlp: 256; ft-transformer: 192, the token width). New architectures only."""
    blocks: int = Field(3, ge=1)
    """Number of blocks (Linear-ReLU-Dropout layers, or transformer layers). New architectures only."""
    heads: int = Field(8, ge=1)
    """ft-transformer: attention heads; `hidden_size` must be a multiple of it."""
    boosting_rounds: int = Field(50, ge=1)
    """lightgbm: trees grown per round; the model is evaluated after each round (an "epoch"), for
    early stopping and keeping the best, up to `training.num_train_epochs` rounds."""
    boosting_learning_rate: float = Field(0.05, gt=0)
    """lightgbm: shrinkage of each tree (`training.learning_rate` is the networks')."""
    boosting_leaves: int = Field(31, ge=2)
    """lightgbm: leaves per tree (`num_leaves`)."""
    boosting_update: Literal["continue", "refit"] = "continue"
    """lightgbm, fine-tuning a saved booster: `continue` grows new trees on the new rows after the old
    ones (LightGBM's `init_model`); `refit` keeps the trees and re-estimates their leaves on the new rows
    (`Booster.refit`). `model.pretrained: false` retrains from nothing."""
    refit_decay: float = Field(0.9, ge=0, le=1)
    """lightgbm `refit`: the share of each leaf's old value kept (LightGBM's `decay_rate`)."""

    @model_validator(mode="after")
    def _one_kind_per_column(self) -> TabularSettings:
        both = sorted(set(self.categorical) & set(self.numeric))
        if both:
            raise ValueError(f"column {both[0]!r} is listed as both categorical and numeric; keep one")
        dropped = sorted(set(self.drop) & set(self.features or []))
        if dropped:
            raise ValueError(f"column {dropped[0]!r} is in both features and drop; keep one")
        return self


class TabularTask:
    """The shared half of a tabular task; the task file adds its labels, loss and metrics."""

    name: ClassVar[str]
    supports_activation_cache: ClassVar[bool] = False  # a forward pass is cheap: nothing worth replaying
    defaults: ClassVar[dict[str, Any]] = {
        "model.source": "mlp", "training.learning_rate": 1e-3, "training.per_device_train_batch_size": 256,
        "training.per_device_eval_batch_size": 1024, "training.num_train_epochs": 30, "training.weight_decay": 1e-5,
        "training.early_stopping_patience": 5}
    task_kind: ClassVar[str]  # "classification" or "regression": the spec's `task`

    def __init__(self, config: RunConfig):
        self.config = config
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.truncated = 0  # nothing is cut
        self.spec: dict[str, Any] = {}
        self.drift: dict[str, float] = {}  # PSI per column of the training rows against the parent model's
        self.architecture, self.parent = self._source()
        # The "before" column of the results: a new architecture starts untrained, not pre-trained.
        trained = self.parent is not None and config.model.pretrained
        self.starting_point = "parent model" if trained else f"untrained ({self.architecture or 'random weights'})"
        self.start_competes = trained  # a parent no epoch beats stays the best model

    @property
    def options(self) -> Any:
        return self.config.task_settings

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def _source(self) -> tuple[str | None, Path | None]:
        """(an architecture to build anew, None) or (None, the model folder to fine-tune).

        Raises:
            ModelSourceError: the source is neither.
        """
        source = self.config.model.source
        if source in ARCHITECTURES:
            return source, None
        path = Path(source).expanduser()
        folder = path / "best" if (path / "best" / SPEC_FILE).is_file() else path
        if (folder / SPEC_FILE).is_file():
            return None, folder
        raise ModelSourceError(f"model.source: {source!r} is no tabular architecture ({', '.join(ARCHITECTURES)}) "
                               f"and no tabular model folder (a tunesmith run directory or its best/, holding "
                               f"{SPEC_FILE}); set model.source: mlp to train a new model")

    def _parent_spec(self) -> dict[str, Any]:
        assert self.parent is not None
        spec = json.loads((self.parent / SPEC_FILE).read_text(encoding="utf-8"))
        if spec.get("task") != self.task_kind:
            raise ModelSourceError(f"{self.parent} holds a tabular {spec.get('task')} model, not {self.task_kind}: "
                                   f"set task: tabular-{spec.get('task')}, or model.source: mlp for a new model")
        return spec

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the rows, fits the preprocessing on the training rows (or keeps the parent's), checks cells."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (a CSV, JSONL or Parquet table) and optionally data.validation")
        parent = self._parent_spec() if self.parent is not None else None
        first = read_tabular(d.train or str(d.validation), d.label_column, d.bad_rows, self.key)
        if parent is not None:
            names = [c["name"] for c in parent["numeric"] + parent["categorical"]]
        else:
            names = feature_columns(first, d.label_column, self.options.features, self.options.drop, self.key)
        first = with_features(first, names, self.key)
        val = first if d.train is None else None
        if d.validation and d.train is not None:
            val = read_tabular(d.validation, d.label_column, d.bad_rows, self.key, names)
        if d.train is not None:
            train = first
            if val is None:
                train, val = self.split(train, d.validation_split, seed)
            self.train_rows = sample(train, d.max_train_samples, seed)
        assert val is not None
        fitted = parent or fit_columns(self.train_rows if self.train_rows is not None else val, self.options.categorical, self.options.numeric, self.key)
        self.spec = {**fitted, "task": self.task_kind}
        if self.train_rows is not None:
            self.train_rows = self.checked_labels(unreadable_numbers(self.train_rows, self.spec, d.bad_rows, self.key))
            if parent is not None and parent.get("profile"):
                self.drift = drift(parent["profile"], self.train_rows)
                report_drift(self.drift, parent["profile"], len(self.train_rows), str(self.parent))
            self.spec["profile"] = profile(self.train_rows, self.spec)  # what the next fine-tune compares with
        self.eval_rows = self.checked_labels(sample(unreadable_numbers(val, self.spec, d.bad_rows, self.key),
                                              d.max_eval_samples, seed))
        self.set_labels(parent)

    def split(self, train: LabelledRows, fraction: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
        return stratified_split(train, fraction, seed)

    def checked_labels(self, rows: LabelledRows) -> LabelledRows:
        """The task's check of the label cells (numbers for regression); rows as they are by default."""
        return rows

    def set_labels(self, parent: dict[str, Any] | None) -> None:
        """Sets the labels (or the target's scale) from the rows or the parent model."""
        raise NotImplementedError

    def unlabelled_rows(self, path: str) -> LabelledRows:
        if not self.spec and self.parent is not None:  # predict reads the rows before the model loads
            self.spec = self._parent_spec()
        names = [c["name"] for c in self.spec["numeric"] + self.spec["categorical"]]
        rows = read_tabular(path, None, self.config.data.bad_rows, self.key, names)
        return unreadable_numbers(rows, self.spec, self.config.data.bad_rows, self.key)

    def describe_columns(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"numeric_columns": [c["name"] for c in self.spec.get("numeric", [])],
                                 "categorical_columns": [c["name"] for c in self.spec.get("categorical", [])]}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "missing_cells": self._missing(rows), "unseen_categories": self._unseen(rows)}
        if self.drift:
            facts["drift_psi_since_parent"] = self.drift
        return facts

    @staticmethod
    def _missing(rows: LabelledRows) -> dict[str, int]:
        """{column: missing cells (empty, NaN, infinity)}, for columns that have any: imputed as documented."""
        counts = {c: sum(map(tabular_network.is_missing, cells)) for c, cells in rows.inputs.items()}
        return {c: n for c, n in counts.items() if n}

    def _unseen(self, rows: LabelledRows) -> dict[str, int]:
        """{column: rows whose category the model never saw in training}, for columns that have any."""
        _, cat = encode(rows.inputs, self.spec)
        counts = (cat == tabular_network.UNSEEN).sum(0)
        return {c["name"]: int(n) for c, n in zip(self.spec["categorical"], counts) if n}

    # ---- model ------------------------------------------------------------------------------

    def architecture_spec(self, outputs: int) -> dict[str, Any]:
        """The architecture of a new model (or the parent's, with `model.dropout` when set)."""
        dropout = self.config.model.dropout
        if self.parent is not None:
            arch = dict(self._parent_spec()["architecture"])
            return arch if dropout is None or "dropout" not in arch else {**arch, "dropout": dropout}
        o, kind = self.options, self.architecture or "mlp"  # set whenever there is no parent
        if kind == "lightgbm":
            lightgbm_module()  # not installed: one line naming the extra, before any training
            return {"kind": kind, "outputs": outputs}
        width = o.hidden_size or WIDTH[kind]
        if kind == "ft-transformer" and width % o.heads:
            raise ConfigError([f"{self.key}.hidden_size: {width} is not a multiple of {self.key}.heads ({o.heads})"])
        return {"kind": kind, "hidden_size": width, "blocks": o.blocks, "heads": o.heads,
                "dropout": 0.1 if dropout is None else dropout, "outputs": outputs}

    def build_model(self) -> nn.Module:
        """The network for this spec: the parent's weights when fine-tuning one, else random."""
        if self.spec["architecture"]["kind"] == "lightgbm":
            return self._booster()
        network = TabularNetwork(self.spec)
        if self.parent is not None and self.config.model.pretrained:
            from safetensors.torch import load_file

            network.load_state_dict(load_file(str(self.parent / WEIGHTS_FILE)))
        return network

    def _booster(self) -> BoostedTrees:
        """The booster to train: a new one, or the parent's to continue or refit."""
        o, t = self.options, self.config.training
        params = booster_params(self.task_kind, self.spec["architecture"]["outputs"], o.boosting_learning_rate,
                                o.boosting_leaves, t.seed, getattr(o, "loss", ""))
        start = None
        if self.parent is not None and self.config.model.pretrained:
            start = tabular_network.load(self.parent).network.booster
        return BoostedTrees(self.spec, params, o.boosting_rounds, o.boosting_update, o.refit_decay,
                            self.booster_weights(), start)

    def booster_weights(self) -> np.ndarray | None:
        """(labels,) a weight per label id for the booster's rows (`training.class_weights`), or None."""
        return None

    def load_trained(self) -> nn.Module:
        """Loads a trained model folder as saved (spec, labels, threshold) for evaluate/predict."""
        if self.parent is None:
            raise ModelSourceError(f"model.source: {self.config.model.source} is an untrained architecture; train it "
                                   "first (tunesmith train) and use the run directory")
        self.spec = self._parent_spec()
        self.loaded_spec(self.spec)
        return tabular_network.load(self.parent).network

    def loaded_spec(self, spec: dict[str, Any]) -> None:
        """Takes what a saved model knows besides its columns (labels, threshold, target scale)."""

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """[embeddings, block 0..N-1, head], the network's own three parts; none for a booster (no weights
        to freeze: its trees are grown, not trained by gradient steps)."""
        if isinstance(model, BoosterNetwork):
            return []
        assert isinstance(model, TabularNetwork)
        parts = [("embeddings", "embeddings", model.embeddings)]
        parts += [(f"block.{i}", f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        parts.append(("head", "head", model.head))
        return [LayerGroup(name, [m], [(f"{prefix}.{n}", p) for n, p in m.named_parameters()]) for name, prefix, m in parts]

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """`model.safetensors`, `tabular_model.json` and `tabular_model.py` (the code that loads and runs them)."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(model, BoosterNetwork):
            model.booster.save_model(str(out / BOOSTER_FILE))
        else:
            state = weights if weights is not None else model.state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        (out / SPEC_FILE).write_text(json.dumps(self.saved_spec(), indent=1), encoding="utf-8")
        shutil.copyfile(tabular_network.__file__, out / STANDALONE)

    def saved_spec(self) -> dict[str, Any]:
        return self.spec

    def card_usage(self) -> str:
        return (
            "Needs only numpy, pandas, torch and safetensors: `tabular_model.py` in this folder is the code it "
            "was trained with.\n\n```python\nimport importlib.util, pandas as pd\n"
            'spec = importlib.util.spec_from_file_location("tabular_model", "path/to/best/tabular_model.py")\n'
            "tabular_model = importlib.util.module_from_spec(spec); spec.loader.exec_module(tabular_model)\n"
            'model = tabular_model.load("path/to/best")\n'
            'print(model.predict(pd.read_csv("new_rows.csv", dtype=str, keep_default_na=False)))\n```'
        )

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """One example per row: its numeric features, category ids and (labelled) target."""
        num, cat = encode(rows.inputs, self.spec)
        targets = self.targets(rows) if labelled else None
        return [{"numeric": num[i], "categorical": cat[i], **({"labels": targets[i]} if targets is not None else {})}
                for i in range(len(rows))]

    def targets(self, rows: LabelledRows) -> np.ndarray:
        raise NotImplementedError

    def lengths(self, dataset: list[dict[str, Any]]) -> None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """(B, F) float numbers, (B, C) category ids and (B,) targets."""
        batch = {"numeric": torch.from_numpy(np.stack([f["numeric"] for f in features])),
                 "categorical": torch.from_numpy(np.stack([f["categorical"] for f in features]))}
        if "labels" in features[0]:
            batch["labels"] = torch.from_numpy(np.stack([f["labels"] for f in features]))
        return batch

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["numeric"], batch["categorical"])  # (B, outputs)

    def row_inputs(self, rows: LabelledRows, i: int) -> dict[str, Any]:
        return {c: rows.inputs[c][i] for c in rows.inputs}
