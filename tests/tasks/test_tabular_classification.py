"""tabular-classification: typed columns, a real fine-tune that beats its untrained start, the threshold
chosen on validation and used by predict, best/ loading without tunesmith, fine-tuning a parent run,
and the clear errors and warnings of bad tables."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from _tables import split_csv, standalone, write_csv  # tests/tasks/_tables.py, beside this file

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.tasks import get_task

CITIES = ["oslo", "lima", "pune", "kobe"]


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a small MLP on numbers, a category and a gap."""
    rows = [{"amount": str(round(float(make.rng.normal(50, 20)), 2)) if i % 7 else "",
             "city": str(make.rng.choice(CITIES)), "word": make.words(1)[0], "label": str(make.rng.choice(["no", "yes"]))}
            for i in range(32)]
    return {"model": {"source": "mlp"}, "data": {"train": make.jsonl(rows)},
            "tabular_classification": {"hidden_size": 16, "blocks": 2}}


def breast_cancer(tmp_path: Path) -> tuple[str, str]:
    """scikit-learn's bundled breast-cancer records (569 patients, 30 measurements) as train/test CSVs,
    with a made-up clinic column so a categorical column is read too."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    rows = [{**{name.replace(" ", "_"): f"{v:.5g}" for name, v in zip(data.feature_names, x)},
             "clinic": str(rng.choice(["north", "south", "east"])),
             "diagnosis": "malignant" if y == 0 else "benign"} for x, y in zip(data.data, data.target)]
    order = rng.permutation(len(rows))
    train, test = [rows[i] for i in order[:420]], [rows[i] for i in order[420:]]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test)


def config(tmp_path: Path, train: str, validation: str | None, **sections) -> dict:
    raw = {"task": "tabular-classification", "output_dir": str(tmp_path / "run"), "overwrite_output_dir": True,
           "data": {"train": train, "label_column": "diagnosis", **({"validation": validation} if validation else {})},
           "training": {"num_train_epochs": 20, "per_device_train_batch_size": 64, "seed": 0, "dataloader_num_workers": 0}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def test_patient_records_fine_tune_beats_the_untrained_start_and_best_loads_without_tunesmith(tmp_path):
    import pandas as pd

    from tunesmith.run import evaluate, finetune, predict

    train, test = breast_cancer(tmp_path)
    result = finetune(config(tmp_path, train, test), quiet=True)
    assert result.baseline["starting_point"] == "untrained (mlp)"
    # random projections of 30 cell measurements already rank well (AUPRC ~0.93): the untrained start is
    # badly calibrated (its threshold, chosen on validation too, already gives 0.91 accuracy)
    assert result.final["auprc"] > max(0.97, result.baseline["auprc"]), (result.baseline, result.final)
    assert result.final["log_loss"] < result.baseline["log_loss"] - 0.4
    assert result.final["accuracy"] > max(0.96, result.baseline["accuracy"])
    assert 0 < result.final["threshold"] < 1 and result.final["ece"] < 0.15
    assert {"roc_auc", "log_loss", "brier", "precision_at_k", "recall_at_k", "reliability"} <= set(result.final)

    # predict decides at the threshold chosen on validation, and best/ runs the same without tunesmith
    out = predict(str(result.run_dir), test, str(tmp_path / "predictions.csv"))
    ours = pd.read_csv(out)
    assert (ours["threshold"] == result.final["threshold"]).all()
    theirs = standalone(result.run_dir / "best").load(result.run_dir / "best").predict(
        pd.read_csv(test, dtype=str, keep_default_na=False))
    np.testing.assert_allclose(ours["prob_malignant"], theirs["prob_malignant"], atol=1e-5)
    assert (ours["predicted_label"] == theirs["predicted_label"]).all()
    scored = evaluate(str(result.run_dir), test)
    assert scored["auprc"] == pytest.approx(result.final["auprc"], abs=1e-6)
    assert scored["threshold"] == pytest.approx(result.final["threshold"])  # the saved one, not chosen again
    assert (result.run_dir / "plots" / "reliability.png").is_file()
    assert "Reliability diagram" in (result.run_dir / "report.html").read_text()
    card = (result.run_dir / "best" / "README.md").read_text()
    assert "tabular_model.load" in card and "untrained (mlp)" in card


def test_fine_tuning_a_parent_run_starts_from_its_weights_and_keeps_its_preprocessing(tmp_path, caplog):
    import json

    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    parent = finetune(config(tmp_path, train, test, training={"num_train_epochs": 3}), quiet=True)
    child_raw = config(tmp_path, test, None, model={"source": str(parent.run_dir)},
                       training={"num_train_epochs": 2}, data={"validation_split": 0.3})
    child_raw["output_dir"] = str(tmp_path / "child")
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        child = finetune(child_raw, quiet=True)
    assert child.baseline["starting_point"] == "parent model"
    assert child.baseline["auprc"] > 0.9  # the parent's skill, before any step on the new rows
    saved = json.loads((child.run_dir / "best" / "tabular_model.json").read_text())
    parent_spec = json.loads((parent.run_dir / "best" / "tabular_model.json").read_text())
    assert saved["numeric"] == parent_spec["numeric"] and saved["categorical"] == parent_spec["categorical"]
    facts = json.loads((child.run_dir / "data.json").read_text())
    assert set(facts["drift_psi_since_parent"]) == {c["name"] for c in saved["numeric"] + saved["categorical"]}
    # rows of the same hospital: ~100 rows against 420 give PSI up to ~0.3 by chance alone, so none is named
    assert "no column moved beyond what" in caplog.text and "columns moved" not in caplog.text
    assert saved["profile"] != parent_spec["profile"]  # the child's own rows, for the next fine-tune to compare with

    scratch = get_task(load_config({**child_raw, "model": {"source": str(parent.run_dir), "pretrained": False}}))
    assert scratch.starting_point == "untrained (random weights)"


def test_columns_are_typed_and_the_rarer_label_is_positive(tmp_path):
    train, _ = breast_cancer(tmp_path)
    task = get_task(load_config(config(tmp_path, train, None, tabular_classification={"categorical": ["mean_radius"]})))
    task.preflight()
    facts = task.describe()
    assert "clinic" in facts["categorical_columns"] and "mean_radius" in facts["categorical_columns"]
    assert "mean_texture" in facts["numeric_columns"] and "diagnosis" not in facts["numeric_columns"]
    assert task.positive == "malignant"  # 212 of 569
    assert len(facts["single_column_roc_auc"]) == 5


def test_a_leaking_column_and_an_id_column_are_named_before_training(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rows = [{"id": str(i), "x": f"{rng.normal():.3f}", "outcome_known_later": str(y * 10 + rng.integers(0, 3)),
             "diagnosis": str(y)} for i, y in enumerate(rng.integers(0, 2, size=120))]
    path = write_csv(tmp_path / "t.csv", rows)
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        get_task(load_config(config(tmp_path, path, None))).preflight()
    text = caplog.text
    assert "'outcome_known_later' alone ranks the label with ROC AUC 1.000 on the training rows, far above" in text
    assert "column 'id' holds a different whole number in every training row" in text
    assert "'x' alone" not in text


def test_bad_cells_are_named_by_line_and_new_categories_are_scored(tmp_path, caplog):
    train, test = breast_cancer(tmp_path)
    lines = Path(test).read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("mean_area")] = "lots"
    cells[header.index("clinic")] = "a-clinic-never-seen"
    lines[3] = ",".join(cells)
    Path(test).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test.csv: 1 rows have a numeric column cell that is not a number: line 4 "
                                        r"\(mean_area='lots'\)"):
        get_task(load_config(config(tmp_path, train, test, data={"bad_rows": "error"}))).preflight()
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        task = get_task(load_config(config(tmp_path, train, test)))
        task.preflight()
    assert "skipping 1 rows whose numeric cells are not numbers: line 4" in caplog.text
    assert len(task.eval_rows) == 148

    lines = Path(test).read_text().splitlines()
    lines[3] = lines[3].replace("lots", "1000")
    Path(test).write_text("\n".join(lines) + "\n")
    task = get_task(load_config(config(tmp_path, train, test)))
    task.preflight()
    assert task.describe()["validation"]["unseen_categories"] == {"clinic": 1}
    assert task.describe()["validation"]["missing_cells"] == {}
    model = task.build_model()
    data = task.dataset(task.eval_rows, train=False)
    assert np.isfinite(task.forward(model, task.collate(data)).detach().numpy()).all()


@pytest.mark.parametrize(("section", "message"), [
    ({"drop": ["mean_radiuss"]}, r"tabular_classification.drop: column 'mean_radiuss' is not in"),
    ({"features": ["mean_radius", "nope"]}, r"feature column 'nope' not found"),
    ({"positive_label": "maybe"}, r"positive_label: 'maybe' is not a label; labels are 'benign', 'malignant'"),
])
def test_bad_column_settings_are_refused_with_the_key(tmp_path, section, message):
    train, _ = breast_cancer(tmp_path)
    with pytest.raises(DataError, match=message):
        get_task(load_config(config(tmp_path, train, None, tabular_classification=section))).preflight()


def test_bad_sources_and_shapes_are_refused(tmp_path):
    train, _ = breast_cancer(tmp_path)
    with pytest.raises(ModelSourceError, match="no tabular architecture"):
        get_task(load_config(config(tmp_path, train, None, model={"source": "demo:minilm"})))
    task = get_task(load_config(config(tmp_path, train, None, model={"source": "ft-transformer"},
                                       tabular_classification={"hidden_size": 30})))
    with pytest.raises(ConfigError, match="hidden_size: 30 is not a multiple of tabular_classification.heads"):
        task.preflight()
    with pytest.raises(ConfigError, match="set both cost_false_positive and cost_false_negative"):
        load_config(config(tmp_path, train, None, tabular_classification={"cost_false_negative": 5}))


def test_ft_transformer_with_focal_loss_and_costs_trains(tmp_path):
    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    raw = config(tmp_path, train, test, model={"source": "ft-transformer"},
                 tabular_classification={"hidden_size": 32, "blocks": 2, "heads": 4, "loss": "focal",
                                         "cost_false_positive": 1, "cost_false_negative": 5},
                 training={"num_train_epochs": 4, "class_weights": "balanced", "learning_rate": 3e-3})
    result = finetune(raw, quiet=True)
    assert result.final["auprc"] > result.baseline["auprc"]
    # a missed malignancy costs 5: the chosen threshold keeps recall high
    assert result.final["recall"] >= 0.9, result.final


def test_a_missing_label_column_lists_the_columns(tmp_path):
    train, _ = breast_cancer(tmp_path)
    with pytest.raises(DataError, match=r"train.csv: column 'outcome' not found; columns are 'mean_radius', .*"
                                        r"\(set data.label_column to the right name\)"):
        get_task(load_config(config(tmp_path, train, None, data={"label_column": "outcome"}))).preflight()


def test_auprc_is_the_positive_labels_when_it_sorts_first(tmp_path):
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from tunesmith.run import finetune, predict

    train, test = breast_cancer(tmp_path)
    for path in (train, test):  # "cancer" sorts before "no cancer", and is the rarer
        Path(path).write_text(Path(path).read_text().replace(",malignant", ",cancer").replace(",benign", ",no cancer"))
    result = finetune(config(tmp_path, train, test, training={"num_train_epochs": 3}), quiet=True)
    scored = pd.read_csv(predict(str(result.run_dir), test, str(tmp_path / "p.csv")))
    truth = pd.read_csv(test)["diagnosis"] == "cancer"
    assert result.final["auprc"] == pytest.approx(average_precision_score(truth, scored["prob_cancer"]), abs=1e-6)


def wine(tmp_path: Path) -> tuple[str, str]:
    """scikit-learn's bundled wine analyses: 178 wines of three cultivars, 13 measurements."""
    from sklearn.datasets import load_wine

    data = load_wine()
    rows = [{**{n: f"{v:.5g}" for n, v in zip(data.feature_names, x)}, "diagnosis": f"cultivar_{y}"}
            for x, y in zip(data.data, data.target)]
    return split_csv(tmp_path, "wine", rows, 130)


def test_three_labels_are_scored_one_vs_rest_and_decided_by_the_most_probable(tmp_path):
    import pandas as pd

    from tunesmith.run import finetune, predict

    train, test = wine(tmp_path)
    result = finetune(config(tmp_path, train, test, training={"per_device_train_batch_size": 32}), quiet=True)
    assert result.final["accuracy"] > 0.9 and result.final["auprc"] > result.baseline["auprc"]
    assert "threshold" not in result.final and "precision_at_k" not in result.final
    assert result.final["cost"] == pytest.approx(1 - result.final["accuracy"])
    scored = pd.read_csv(predict(str(result.run_dir), test, str(tmp_path / "p.csv")))
    probs = scored[[f"prob_cultivar_{i}" for i in range(3)]].to_numpy()
    assert (scored["predicted_label"] == [f"cultivar_{i}" for i in probs.argmax(1)]).all()


def test_onnx_export_matches_pytorch(tmp_path):
    import tunesmith
    from tunesmith.run import finetune

    train, test = breast_cancer(tmp_path)
    result = finetune(config(tmp_path, train, test, training={"num_train_epochs": 1}), quiet=True)
    report = tunesmith.export_onnx(str(result.run_dir), test, str(tmp_path / "model.onnx"))
    assert report["max_abs_diff"] < 1e-4 and report["rows"] == 149
