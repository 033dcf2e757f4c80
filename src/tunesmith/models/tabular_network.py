"""Tabular networks and their preprocessing, in one file that needs only numpy, pandas, torch and safetensors.

tunesmith trains with this file and copies it into every tabular model folder as `tabular_model.py`,
so a saved model loads without tunesmith and runs exactly the code it was trained with (a boosted-trees
model also needs lightgbm):

    import importlib.util
    spec = importlib.util.spec_from_file_location("tabular_model", "best/tabular_model.py")
    tabular_model = importlib.util.module_from_spec(spec); spec.loader.exec_module(tabular_model)
    model = tabular_model.load("best")
    scores = model.predict(pandas.read_csv("new.csv", dtype=str, keep_default_na=False))

A model folder holds `model.safetensors` (the network's weights) and `tabular_model.json`: the
preprocessing fitted on the training rows only, the labels (or the target's scale), the architecture
and the decision threshold chosen on validation.

Preprocessing. A numeric cell is standardised with the training mean and std; a missing,
non-numeric or infinite one becomes 0, and for a column that had missing training values its own
indicator feature says so. A categorical cell becomes its index among the training categories,
with 0 for a category never seen in training and 1 for a missing cell, so a new category at predict
time is scored as "unseen", never a crash.

Networks, made of three parts that are tunesmith's layer groups (`embeddings`, each of `blocks`, `head`):
- `mlp`: a learned per-column scale and shift for numbers and an embedding per categorical
  column, concatenated, then Linear-ReLU-Dropout blocks (the MLP baseline of Gorishniy et al. 2021,
  "Revisiting Deep Learning Models for Tabular Data").
- `ft-transformer`: every feature becomes a token (a per-column linear map of the number, an
  embedding of the category) after a [CLS] token, then pre-norm transformer blocks; the head
  reads [CLS] (the FT-Transformer of the same paper).

And gradient-boosted trees, `lightgbm`: a LightGBM booster (`model.lgb.txt`, read with lightgbm) on the
same inputs, numbers as they are encoded and category indices as LightGBM categories; it outputs raw
scores (log-odds) where the networks output logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

SPEC_FILE = "tabular_model.json"
WEIGHTS_FILE = "model.safetensors"
BOOSTER_FILE = "model.lgb.txt"
UNSEEN, MISSING = 0, 1  # reserved category indices; training categories start at 2


NON_FINITE = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def is_missing(cell: Any) -> bool:
    """A cell with no value: None, a NaN or infinity, or empty text (tunesmith reads missing cells as
    ""), so a column of numbers with "NaN" or "inf" in it stays numeric."""
    if isinstance(cell, str):
        return not cell.strip() or cell.strip().lower() in NON_FINITE
    return cell is None or (isinstance(cell, float) and not np.isfinite(cell))


def numbers(cells: Any) -> np.ndarray:
    """(N,) float64 of a column's cells; NaN where a cell is missing, not a number, or infinite."""
    values = pd.to_numeric(pd.Series(list(cells), dtype=object).map(lambda c: str(c).strip()), errors="coerce")
    out = values.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def encode(frame: Any, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(numeric (N, F) float32, categorical (N, C) int64) model inputs for the rows of `frame`
    (a DataFrame or a {column: cells} mapping holding the spec's columns)."""
    n = len(frame[next(iter(frame))]) if isinstance(frame, dict) else len(frame)
    numeric: list[np.ndarray] = []
    for column in spec["numeric"]:
        values = numbers(frame[column["name"]])
        missing = np.isnan(values)
        numeric.append(np.where(missing, 0.0, (values - column["mean"]) / column["std"]))
        if column["missing"]:
            numeric.append(missing.astype(np.float64))
    categorical = []
    for column in spec["categorical"]:
        index = {c: i + 2 for i, c in enumerate(column["categories"])}
        categorical.append([MISSING if is_missing(c) else index.get(str(c).strip(), UNSEEN) for c in frame[column["name"]]])
    num = np.stack(numeric, 1).astype(np.float32) if numeric else np.zeros((n, 0), np.float32)
    cat = np.array(categorical, dtype=np.int64).T.reshape(n, len(categorical))
    return num, cat


def numeric_width(spec: dict[str, Any]) -> int:
    """Numeric input features: one per numeric column, plus a missing indicator where training had gaps."""
    return sum(1 + bool(c["missing"]) for c in spec["numeric"])


def embedding_size(categories: int) -> int:
    """An embedding width that grows with the column's cardinality (fastai's rule of thumb, capped)."""
    return int(min(32, round(1.6 * (categories + 2) ** 0.56)))


class MLPEmbeddings(nn.Module):
    """(B, F) numbers and (B, C) category ids -> (B, F + sum of embedding widths)."""

    def __init__(self, n_numeric: int, cardinalities: list[int]):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_numeric))
        self.shift = nn.Parameter(torch.zeros(n_numeric))
        self.categorical = nn.ModuleList(nn.Embedding(c + 2, embedding_size(c)) for c in cardinalities)
        self.width = n_numeric + sum(embedding_size(c) for c in cardinalities)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric * self.scale + self.shift] + [e(categorical[:, i]) for i, e in enumerate(self.categorical)]
        return torch.cat(parts, dim=1)


class TokenEmbeddings(nn.Module):
    """(B, F) numbers and (B, C) category ids -> (B, 1 + F + C, D) tokens, [CLS] first."""

    def __init__(self, n_numeric: int, cardinalities: list[int], width: int):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.weight = nn.Parameter(torch.randn(n_numeric, width) * width**-0.5)
        self.bias = nn.Parameter(torch.zeros(n_numeric, width))
        self.categorical = nn.ModuleList(nn.Embedding(c + 2, width) for c in cardinalities)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        tokens = [self.cls.expand(numeric.shape[0], -1, -1), numeric.unsqueeze(-1) * self.weight + self.bias]
        tokens += [e(categorical[:, i]).unsqueeze(1) for i, e in enumerate(self.categorical)]
        return torch.cat(tokens, dim=1)


class TabularNetwork(nn.Module):
    """`embeddings` -> each of `blocks` -> `head`: (B, outputs) logits, or the standardised target."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        arch = spec["architecture"]
        n_numeric, cards = numeric_width(spec), [len(c["categories"]) for c in spec["categorical"]]
        width, depth, dropout, outputs = arch["hidden_size"], arch["blocks"], arch["dropout"], arch["outputs"]
        self.kind = arch["kind"]
        if self.kind == "mlp":
            self.embeddings: nn.Module = MLPEmbeddings(n_numeric, cards)
            widths = [self.embeddings.width] + [width] * depth
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout))
                                        for a, b in zip(widths, widths[1:]))
            self.head: nn.Module = nn.Linear(widths[-1], outputs)
        elif self.kind == "ft-transformer":
            self.embeddings = TokenEmbeddings(n_numeric, cards, width)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(width, arch["heads"], dim_feedforward=width * 4 // 3, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
                for _ in range(depth))
            self.head = nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, outputs))
        else:
            raise ValueError(f"unknown tabular architecture {self.kind!r}; use mlp or ft-transformer")

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(numeric, categorical)
        for block in self.blocks:
            x = block(x)
        return self.head(x if self.kind == "mlp" else x[:, 0])


class BoosterNetwork(nn.Module):
    """A LightGBM booster as a module: (B, F) numbers and (B, C) category ids -> (B, outputs) raw scores
    (two labels: [0, log-odds], so a softmax gives the booster's probability). No trees: all zeros."""

    onnx_refusal = ("a LightGBM booster is trees, not a PyTorch graph, so tunesmith export does not write it; "
                    "convert best/model.lgb.txt with onnxmltools (convert_lightgbm), or run it with lightgbm")

    def __init__(self, spec: dict[str, Any], booster: Any = None):
        super().__init__()
        self.outputs, self.booster = spec["architecture"]["outputs"], booster

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        rows = len(numeric)
        if self.booster is None or self.booster.num_trees() == 0:
            return torch.zeros((rows, self.outputs))
        features = np.concatenate([numeric.cpu().numpy(), categorical.cpu().numpy()], axis=1)
        raw = np.asarray(self.booster.predict(features, raw_score=True), dtype=np.float32).reshape(rows, -1)
        if self.outputs == 2:  # a binary booster scores the second label's log-odds
            raw = np.concatenate([np.zeros_like(raw), raw], axis=1)
        return torch.from_numpy(raw)


class TabularModel:
    """A loaded model folder: the network and its spec; `predict` scores a DataFrame of raw columns."""

    def __init__(self, network: nn.Module, spec: dict[str, Any]):
        self.network, self.spec = network.eval(), spec

    @torch.no_grad()
    def outputs(self, frame: Any) -> np.ndarray:
        """(N, outputs) the network's raw outputs for the rows of `frame`."""
        num, cat = encode(frame, self.spec)
        return self.network(torch.from_numpy(num), torch.from_numpy(cat)).float().numpy()

    def predict(self, frame: Any) -> pd.DataFrame:
        """Regression: `prediction`. Classification: `prob_<label>` per label and `predicted_label`,
        which for two labels is the positive one where its probability reaches the saved threshold."""
        out = self.outputs(frame)
        if self.spec["task"] == "regression":
            target = self.spec["target"]
            return pd.DataFrame({"prediction": out[:, 0] * target["std"] + target["mean"]})
        labels = self.spec["labels"]
        probs = torch.softmax(torch.from_numpy(out), -1).numpy()
        table = pd.DataFrame({f"prob_{name}": probs[:, i] for i, name in enumerate(labels)})
        table["predicted_label"] = decide(probs, self.spec)
        return table


def decide(probs: np.ndarray, spec: dict[str, Any]) -> list[str]:
    """Each row's label: the positive label at or above the threshold for two labels, else the most probable."""
    labels, threshold = spec["labels"], spec.get("threshold")
    if len(labels) != 2 or threshold is None:
        return [labels[i] for i in probs.argmax(1)]
    positive = labels.index(spec["positive_label"])
    return [labels[positive] if p >= threshold else labels[1 - positive] for p in probs[:, positive]]


def load(folder: str | Path) -> TabularModel:
    """The model saved in `folder` (`tabular_model.json` + `model.safetensors`, or `model.lgb.txt`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    if spec["architecture"]["kind"] == "lightgbm":
        import lightgbm

        return TabularModel(BoosterNetwork(spec, lightgbm.Booster(model_file=str(folder / BOOSTER_FILE))), spec)
    network = TabularNetwork(spec)
    network.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return TabularModel(network, spec)
