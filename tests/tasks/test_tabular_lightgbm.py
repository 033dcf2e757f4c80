"""model.source: lightgbm: boosted trees on the tabular tasks, trained in rounds by engine/fitted.py, and
fine-tuned on newer rows by continued boosting, leaf refitting or retraining."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tables import standalone  # tests/tasks/_tables.py  # noqa: E402
from test_tabular_classification import breast_cancer, config  # noqa: E402

from tunesmith.errors import ConfigError, ExportError, ModelSourceError  # noqa: E402

pytest.importorskip("lightgbm")


def trees(run_dir: Path):
    import lightgbm

    return lightgbm.Booster(model_file=str(run_dir / "best" / "model.lgb.txt"))


def test_boosted_trees_train_in_rounds_keep_the_best_and_load_without_tunesmith(tmp_path):
    import pandas as pd

    import tunesmith
    from tunesmith.run import finetune, predict

    train, test = breast_cancer(tmp_path)
    result = finetune(config(tmp_path, train, test, model={"source": "lightgbm"},
                             tabular_classification={"boosting_rounds": 20}), quiet=True)
    assert result.baseline["starting_point"] == "untrained (lightgbm)" and result.baseline["roc_auc"] == 0.5
    assert result.final["auprc"] > 0.97 and result.final["auprc"] >= result.baseline["auprc"]
    assert trees(result.run_dir).num_trees() == 20 * result.best_step  # the round that scored best, not the last
    ours = pd.read_csv(predict(str(result.run_dir), test, str(tmp_path / "p.csv")))
    theirs = standalone(result.run_dir / "best").load(result.run_dir / "best").predict(
        pd.read_csv(test, dtype=str, keep_default_na=False))
    np.testing.assert_allclose(ours["prob_malignant"], theirs["prob_malignant"], atol=1e-6)
    with pytest.raises(ExportError, match="a LightGBM booster is trees, not a PyTorch graph"):
        tunesmith.export_onnx(str(result.run_dir), test, str(tmp_path / "m.onnx"))


def test_a_saved_booster_continues_refits_or_retrains_on_new_rows(tmp_path):
    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    parent = finetune(config(tmp_path, train, test, model={"source": "lightgbm"}, training={"num_train_epochs": 2},
                             tabular_classification={"boosting_rounds": 10}), quiet=True)
    grown = {}
    for mode, extra in (("continue", {}), ("refit", {}), ("retrain", {"pretrained": False})):
        raw = config(tmp_path, test, None, model={"source": str(parent.run_dir), **extra},
                     training={"num_train_epochs": 2}, data={"validation_split": 0.3},
                     tabular_classification={"boosting_rounds": 10, "boosting_update": "refit" if mode == "refit" else "continue"})
        raw["output_dir"] = str(tmp_path / mode)
        child = finetune(raw, quiet=True)
        grown[mode] = trees(child.run_dir).num_trees()
        assert child.baseline["starting_point"] == ("untrained (random weights)" if extra else "parent model")
    before = trees(parent.run_dir).num_trees()
    assert grown["continue"] > before and grown["refit"] == before and grown["retrain"] <= 20
    assert trees(tmp_path / "refit").dump_model()["tree_info"] != trees(parent.run_dir).dump_model()["tree_info"]


def test_gradient_strategies_and_a_missing_lightgbm_are_named(tmp_path, monkeypatch):
    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    with pytest.raises(ConfigError, match="strategy.freeze: acts on layer groups trained by tunesmith.s gradient loop, which this model \(BoostedTrees\)"):
        finetune(config(tmp_path, train, test, model={"source": "lightgbm"}, strategy={"freeze": 1}), quiet=True)
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm now fails, as when it is not installed
    with pytest.raises(ModelSourceError, match=r"needs LightGBM: pip install 'tunesmith\[tabular\]'"):
        finetune(config(tmp_path, train, test, model={"source": "lightgbm"}), quiet=True)


def test_an_update_of_a_booster_skips_the_guards_that_need_weights(tmp_path):
    from tunesmith.comparison.update import update
    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    parent = finetune(config(tmp_path, train, test, model={"source": "lightgbm"}, training={"num_train_epochs": 2},
                             tabular_classification={"boosting_rounds": 10}), quiet=True)
    result = update(parent.run_dir, test, tmp_path / "u", overrides=["training.num_train_epochs=2"], quiet=True)
    assert [a.arm for a in result.arms] == ["stale", "update", "replay", "retrain", "scratch"]
    assert any(n.startswith("l2sp skipped") for n in result.notes) and any(n.startswith("wise skipped") for n in result.notes)


def test_boosted_regression_beats_the_mean(tmp_path):
    import pandas as pd
    from test_tabular_regression import diabetes, raw_config

    from tunesmith.run import finetune

    train, test = diabetes(tmp_path)
    raw = raw_config(tmp_path, train, test)
    result = finetune({**raw, "model": {"source": "lightgbm"}, "training": {"num_train_epochs": 20, "seed": 0},
                       "tabular_regression": {"boosting_rounds": 10}}, quiet=True)
    y = pd.read_csv(test)["progression"]
    assert result.final["rmse"] < 0.85 * float(np.sqrt(((y - pd.read_csv(train)["progression"].mean()) ** 2).mean()))
