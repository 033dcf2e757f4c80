"""Gradient-boosted trees for the tabular tasks: LightGBM on the tabular inputs, trained in rounds.

The booster reads what the networks read (models/tabular_network.py `encode`: standardised numbers with
missing indicators, category indices given to LightGBM as categories) and is trained by the engine's
loop for such models (engine/fitted.py), one round of `boosting_rounds` trees at a time, evaluated after
each, with early stopping and the best round kept. "Fine-tuning" a saved booster on newer rows is one of:

- `boosting_update: continue` (default): LightGBM's `init_model`, the old trees kept and new ones grown
  on the new rows to correct them;
- `boosting_update: refit`: LightGBM's `Booster.refit`, the same trees with every leaf's value
  re-estimated on the new rows and blended with the old one (`refit_decay` of the old kept): one round;
- `model.pretrained: false`: a new booster, retrained from nothing on the new rows.

LightGBM comes with `pip install 'tunesmith[tabular]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ModelSourceError
from tunesmith.models.tabular_network import BOOSTER_FILE, BoosterNetwork, numeric_width
from tunesmith.tasks import Examples


def lightgbm_module() -> Any:
    """The lightgbm module, or one line naming the pip command that installs it.

    Raises:
        ModelSourceError: lightgbm is not installed.
    """
    try:
        import lightgbm
    except ImportError:
        raise ModelSourceError("model.source: lightgbm needs LightGBM: pip install 'tunesmith[tabular]'") from None
    return lightgbm


class BoostedTrees(BoosterNetwork):
    """A booster the engine trains round by round (engine/fitted.py `FitsItself`)."""

    def __init__(self, spec: dict[str, Any], params: dict[str, Any], rounds: int, update: str, decay: float,
                 weights: np.ndarray | None = None, booster: Any = None):
        super().__init__(spec, booster)
        self.params, self.rounds, self.update, self.decay = params, rounds, update, decay
        self.class_weights = weights  # (labels,) weight per label id, or None
        first = numeric_width(spec)  # category indices follow the numeric features
        self.categorical = list(range(first, first + len(spec["categorical"])))
        self._training: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None

    def _arrays(self, train_data: Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(features, labels, row weights) of the training examples, stacked once for every round."""
        if self._training is None:
            self._training = self._stacked(train_data)
        return self._training

    def _stacked(self, train_data: Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rows = [train_data[i] for i in range(len(train_data))]
        x = np.stack([np.concatenate([f["numeric"], f["categorical"].astype(np.float32)]) for f in rows])
        y = np.array([f["labels"] for f in rows])
        weight = self.class_weights[y] if self.class_weights is not None else None
        return x, y, weight

    def fit_round(self, train_data: Examples, number: int) -> bool:
        """Grows `rounds` more trees; or (refit of a trained booster) refits the leaves once."""
        lightgbm = lightgbm_module()
        x, y, weight = self._arrays(train_data)
        if self.update == "refit" and self.booster is not None:
            self.booster = self.booster.refit(x, y, decay_rate=self.decay, weight=weight,
                                              categorical_feature=self.categorical)
            return False
        data = lightgbm.Dataset(x, y, weight=weight, categorical_feature=self.categorical, free_raw_data=False)
        self.booster = lightgbm.train(self.params, data, num_boost_round=self.rounds, init_model=self.booster,
                                      keep_training_booster=True)
        return True

    def load_best(self, folder: Path) -> None:
        self.booster = lightgbm_module().Booster(model_file=str(folder / BOOSTER_FILE))

    def save(self, folder: Path) -> None:
        if self.booster is not None:
            self.booster.save_model(str(folder / BOOSTER_FILE))


def booster_params(kind: str, outputs: int, learning_rate: float, leaves: int, seed: int, loss: str) -> dict[str, Any]:
    """LightGBM parameters for the task: its objective, and the tree settings."""
    if kind == "regression":
        objective: dict[str, Any] = {"objective": "huber" if loss == "huber" else "regression"}
    elif outputs == 2:
        objective = {"objective": "binary"}
    else:
        objective = {"objective": "multiclass", "num_class": outputs}
    return {**objective, "learning_rate": learning_rate, "num_leaves": leaves, "seed": seed, "deterministic": True,
            "verbose": -1, "num_threads": 0}
