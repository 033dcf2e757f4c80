"""Tabular regression (prices, amounts, lengths of stay) on numeric and categorical columns.

Rows and model as for tabular-classification (tasks/_tabular.py): a table whose label column holds a
number, every other column a feature unless `features` or `drop` says otherwise. The target is
standardised with the training rows' mean and std (saved with the model), the loss is mean squared
error (or Huber) on that scale, and the metrics are RMSE (selecting the best model), MAE and R² in
the target's own units. A label cell that is not a number is a bad row, named by line.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import Section
from tunesmith.data.labelled import LabelledRows, random_split
from tunesmith.data.tables import column_warnings
from tunesmith.errors import DataError
from tunesmith.models.tabular_network import numbers
from tunesmith.tasks import OneOutputPerRow, register_task, stacked
from tunesmith.tasks._tabular import TabularSettings, TabularTask

log = logging.getLogger("tunesmith")


class TabularRegressionConfig(TabularSettings):
    """`tabular_regression`: the tabular keys and the loss."""

    loss: Literal["mse", "huber"] = "mse"
    """`huber` is less pulled by a few extreme targets (on the standardised scale, delta 1)."""


@register_task("tabular-regression")
class TabularRegressionTask(OneOutputPerRow, TabularTask):
    metric_names: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2")
    minimize = ("loss", "rmse", "mae")
    settings: ClassVar[type[Section] | None] = TabularRegressionConfig
    task_kind: ClassVar[str] = "regression"

    @property
    def options(self) -> TabularRegressionConfig:
        return self.config.task_settings

    def split(self, train: LabelledRows, fraction: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
        return random_split(train, fraction, seed)  # a number per row: no classes to stratify on

    def checked_labels(self, rows: LabelledRows) -> LabelledRows:
        """`rows` without those whose label is not a number.

        Raises:
            DataError: under `data.bad_rows: error`, naming the lines.
        """
        bad = np.flatnonzero(np.isnan(numbers(rows.labels)))
        if not bad.size:
            return rows
        label = self.config.data.label_column
        shown = ", ".join(f"line {rows.lines[i]} ({rows.labels[i]!r})" for i in bad[:5]) + (" ..." if bad.size > 5 else "")
        if self.config.data.bad_rows == "error":
            raise DataError(f"{rows.source}: {bad.size} rows have a {label!r} that is not a number: {shown}; "
                            "fix them or set data.bad_rows: skip")
        log.warning("%s: skipping %d rows whose %r is not a number: %s", rows.source, bad.size, label, shown)
        kept = rows.subset([i for i in range(len(rows)) if i not in set(bad.tolist())])
        kept.skipped = rows.skipped + int(bad.size)
        if not len(kept):
            raise DataError(f"{rows.source}: no row has a number in {label!r}")
        return kept

    def set_labels(self, parent: dict[str, Any] | None) -> None:
        """The target's scale from the parent model or the training rows; the architecture."""
        if parent is not None:
            self.spec["target"] = dict(parent["target"])
        else:
            y = numbers((self.train_rows or self.eval_rows).labels)  # type: ignore[union-attr]  # preflight set one
            self.spec["target"] = {"mean": float(y.mean()), "std": float(y.std()) or 1.0}
        self.spec["architecture"] = self.architecture_spec(1)
        if self.train_rows is not None:
            column_warnings(self.train_rows, self.spec, None, self.key)

    def targets(self, rows: LabelledRows) -> np.ndarray:
        t = self.spec["target"]
        return ((numbers(rows.labels) - t["mean"]) / t["std"]).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        facts = self.describe_columns()
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                y = numbers(rows.labels)
                facts[split]["target"] = {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                                          "max": float(y.max())}
        return facts

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.forward(model, batch).float()
        fn = F.huber_loss if self.options.loss == "huber" else F.mse_loss
        return fn(out[:, 0], batch["labels"].float()), out

    def _values(self, outputs: list[Any]) -> np.ndarray:
        t = self.spec["target"]
        return stacked(outputs, 1)[:, 0].astype(np.float64) * t["std"] + t["mean"]

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """RMSE, MAE and R² in the target's units."""
        predicted, y = self._values(outputs), numbers(rows.labels)
        error = predicted - y
        spread = float(((y - y.mean()) ** 2).sum())
        return {"rmse": float(np.sqrt((error**2).mean())), "mae": float(np.abs(error).mean()),
                "r2": 1 - float((error**2).sum()) / spread if spread > 0 else float("nan")}

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        return [{"prediction": float(v)} for v in self._values(outputs)]
