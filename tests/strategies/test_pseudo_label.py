"""Self-training with pseudo-labels, `strategy.pseudo_label` (tunesmith/strategies/pseudo_label.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.errors import ConfigError, DataError

THRESHOLD = 0.6


@pytest.fixture(scope="module")
def pool(reviews, tmp_path_factory):
    """The shipped reviews' texts without their labels: the unlabelled rows."""
    with open(reviews, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][200:360]
    path = tmp_path_factory.mktemp("pool") / "pool.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    return path


@pytest.fixture(scope="module")
def self_trained(reviews, pool, tmp_path_factory):
    """The real MiniLM on 96 of the shipped reviews, self-trained: confident on some unlabelled rows, not on all."""
    config = {
        "output_dir": str(tmp_path_factory.mktemp("self-train") / "run"), "model": {"source": "demo:minilm"},
        "data": {"train": str(reviews), "max_train_samples": 96, "max_eval_samples": 48, "max_length": 48},
        "training": {"num_train_epochs": 3, "per_device_train_batch_size": 16, "learning_rate": 2e-4},
        "strategy": {"pseudo_label": {"data": str(pool), "threshold": THRESHOLD}},
    }
    return tunesmith.finetune(config, quiet=True), config


def test_images_are_pseudo_labelled_the_same_way(image_config, color_images, tmp_path, caplog):
    """The red/blue photos as their own unlabelled pool, at a threshold few reach after one epoch; the
    pool holds the validation photos too, which is warned about."""
    threshold = 0.7
    config = image_config | {"strategy": {"pseudo_label": {"data": str(color_images), "threshold": threshold}},
                             "training": image_config["training"] | {"num_train_epochs": 1}}
    result = tunesmith.finetune(config, quiet=True)
    written = added_only_above(result, str(color_images), threshold, tmp_path)
    assert all(r["image"].endswith(".jpg") for r in written)
    assert "validation rows also occur in the training data" in caplog.text


def added_only_above(result, pool: str, threshold: float, tmp_path) -> list[dict]:
    """The pseudo-labels written: exactly the rows the calibrated labelled-only model is sure of, and
    they (and only they) were added to the self-trained run's training rows."""
    folder = result.run_dir / "self_train"
    first = folder / "labelled_only"
    assert (first / "best" / "calibration.json").is_file()
    tunesmith.predict(str(first), pool, str(tmp_path / "pool_predictions.jsonl"))
    predicted = [json.loads(line) for line in (tmp_path / "pool_predictions.jsonl").read_text().splitlines()]
    sure = {(p["line"], p["predicted_label"]) for p in predicted if p["score"] >= threshold}
    written = [json.loads(line) for line in (folder / "pseudo_labels.jsonl").read_text().splitlines()]
    assert {(r["line"], r["label"]) for r in written} == sure
    assert 0 < len(written) < len(predicted)  # the threshold chose: neither nothing nor everything
    assert all(r["probability"] >= threshold for r in written)
    labelled = json.loads((first / "data.json").read_text())["train"]["rows"]
    assert json.loads((result.run_dir / "data.json").read_text())["train"]["rows"] == labelled + len(written)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.self_training, default=str))
    assert summary["pseudo_labelled_rows"] == len(written) and summary["unlabelled_rows"] == len(predicted)
    return written


@pytest.mark.slow
def test_only_rows_above_the_calibrated_threshold_are_added_to_the_training_rows(self_trained, pool, tmp_path):
    result, _ = self_trained
    written = added_only_above(result, str(pool), THRESHOLD, tmp_path)
    assert all(r["text"] for r in written)
    folder = result.run_dir / "self_train"
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["strategy"]["pseudo_label"]
    assert saved["labels"] == str(folder / "pseudo_labels.jsonl") and saved["data"] == str(pool)
    assert set(result.self_training["labelled_only"]["final"]) >= {"accuracy", "ece"} and result.best_model_dir


@pytest.mark.slow
def test_a_run_repeats_from_its_config_yaml_and_an_edited_file_is_checked(self_trained, tmp_path):
    result, _ = self_trained
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    again = tunesmith.finetune(saved | {"output_dir": str(tmp_path / "again")}, quiet=True)
    assert again.self_training is None and not (tmp_path / "again" / "self_train").exists()  # no first stage
    assert json.loads((tmp_path / "again" / "data.json").read_text())["train"]["rows"] == \
        json.loads((result.run_dir / "data.json").read_text())["train"]["rows"]

    edited = tmp_path / "edited.jsonl"
    edited.write_text('{"line": 2, "label": "positive"}\n{"line": 3, "label": "great"}\n')
    with pytest.raises(DataError, match=r"edited.jsonl, line 2: label 'great' is not one of the task's labels"):
        tunesmith.finetune(saved | {"output_dir": str(tmp_path / "bad"),
                                    "strategy": saved["strategy"] | {"pseudo_label": saved["strategy"]["pseudo_label"]
                                                                     | {"labels": str(edited)}}}, quiet=True)
    edited.write_text('{"line": 99999, "label": "positive"}\n')
    with pytest.raises(DataError, match=r"line 1: `line` 99999 is no row of"):
        tunesmith.finetune(saved | {"output_dir": str(tmp_path / "bad"),
                                    "strategy": saved["strategy"] | {"pseudo_label": saved["strategy"]["pseudo_label"]
                                                                     | {"labels": str(edited)}}}, quiet=True)


def test_the_cli_prints_both_runs_refuses_a_second_try_and_resumes(tiny_config, pool):
    config = tiny_config | {"strategy": {"pseudo_label": {"data": str(pool), "threshold": 0.5}},
                            "training": tiny_config["training"] | {"num_train_epochs": 1}}
    path = tmp_config(config)
    done = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert done.exit_code == 0, done.output
    assert "labelled only" in done.output and "self-trained" in done.output and "pseudo-labelled" in done.output
    again = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert again.exit_code != 0 and "already holds a run" in again.output
    resumed = CliRunner().invoke(app, ["train", str(path), "--quiet", "--resume"])  # the stages done are kept
    assert resumed.exit_code == 0, resumed.output
    assert "self-trained" in resumed.output and (Path(config["output_dir"]) / "self_train" / "labelled_only").is_dir()


def tmp_config(config: dict):
    path = Path(config["output_dir"]).parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_threshold_no_row_reaches_stops_after_the_first_stage_and_says_how_high_they_came(tiny_config, pool):
    config = tiny_config | {"strategy": {"pseudo_label": {"data": str(pool), "threshold": 0.999}},
                            "training": tiny_config["training"] | {"num_train_epochs": 1}}
    with pytest.raises(DataError, match=r"no row of .*pool.csv reached calibrated probability 0.999 \(the highest was "
                                        r"0\.\d+\).*lower strategy.pseudo_label.threshold"):
        tunesmith.finetune(config, quiet=True)
    assert (Path(config["output_dir"]) / "self_train" / "labelled_only" / "best").is_dir()  # kept


def test_a_task_without_calibrated_probabilities_is_refused_before_training(tmp_path, pool):
    with pytest.raises(ConfigError, match="token-classification has none"):
        tunesmith.finetune({"task": "token-classification", "output_dir": str(tmp_path / "run"),
                            "data": {"train": str(pool)}, "strategy": {"pseudo_label": {"data": str(pool)}}}, quiet=True)
