"""tabular-regression: a real fine-tune on scikit-learn's diabetes records beats its untrained start and the
training mean, the target's scale is saved with the model, and a label that is no number is a named bad row."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from _tables import split_csv, standalone  # tests/tasks/_tables.py, beside this file

from tunesmith.config import load_config
from tunesmith.errors import DataError
from tunesmith.tasks import get_task


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a small MLP on a number and a category."""
    rows = [{"size": str(round(float(make.rng.normal(50, 20)), 2)), "kind": make.words(1)[0],
             "label": str(round(float(make.rng.normal(3, 1)), 3))} for _ in range(32)]
    return {"model": {"source": "mlp"}, "data": {"train": make.jsonl(rows)},
            "tabular_regression": {"hidden_size": 16, "blocks": 2}}


def diabetes(tmp_path: Path) -> tuple[str, str]:
    """scikit-learn's bundled diabetes records (442 patients, 10 measurements, disease progression a year on)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    rows = [{**{n: f"{v:.6g}" for n, v in zip(data.feature_names, x)}, "progression": f"{y:g}"}
            for x, y in zip(data.data, data.target)]
    return split_csv(tmp_path, "diabetes", rows, 340)


def raw_config(tmp_path: Path, train: str, test: str, **data) -> dict:
    return {"task": "tabular-regression", "output_dir": str(tmp_path / "run"), "overwrite_output_dir": True,
            "data": {"train": train, "validation": test, "label_column": "progression", **data},
            "training": {"num_train_epochs": 40, "seed": 0, "dataloader_num_workers": 0, "learning_rate": 3e-3}}


def test_disease_progression_fine_tune_beats_the_untrained_start_and_the_mean(tmp_path):
    import pandas as pd

    from tunesmith.run import finetune

    train, test = diabetes(tmp_path)
    result = finetune(raw_config(tmp_path, train, test), quiet=True)
    y_test = pd.read_csv(test)["progression"]
    mean_rmse = float(np.sqrt(((y_test - pd.read_csv(train)["progression"].mean()) ** 2).mean()))
    assert result.final["rmse"] < 0.85 * mean_rmse < result.baseline["rmse"], (mean_rmse, result.final)
    assert result.final["r2"] > 0.3
    model = standalone(result.run_dir / "best").load(result.run_dir / "best")
    predicted = model.predict(pd.read_csv(test, dtype=str, keep_default_na=False))["prediction"]
    assert float(np.sqrt(((predicted - y_test) ** 2).mean())) == pytest.approx(result.final["rmse"], rel=1e-4)


def test_a_label_that_is_no_number_is_a_named_bad_row(tmp_path, caplog):
    train, test = diabetes(tmp_path)
    lines = Path(train).read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",n/a"
    Path(train).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.csv: 1 rows have a 'progression' that is not a number: line 6 \('n/a'\)"):
        get_task(load_config(raw_config(tmp_path, train, test, bad_rows="error"))).preflight()
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        task = get_task(load_config(raw_config(tmp_path, train, test)))
        task.preflight()
    assert "skipping 1 rows whose 'progression' is not a number: line 6" in caplog.text
    assert len(task.train_rows) == 339
