"""The CLI: bad input gives one clear line and exit code 2, never a traceback; the verbs work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli import app

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def config_file(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def expect_error(tmp_path, config: dict, message: str, *extra: str):
    code, output = run("train", str(config_file(tmp_path, config)), "--quiet", *extra)
    flat = " ".join(output.split())
    assert code == 2, output
    assert "Traceback" not in output
    assert message in flat, flat


def test_missing_data_file(tmp_path, tiny_config):
    tiny_config["data"]["train"] = str(tmp_path / "nope.csv")
    expect_error(tmp_path, tiny_config, "data file not found")


def test_missing_column_lists_columns(tmp_path, tiny_config):
    tiny_config["data"]["text_column"] = "review"
    expect_error(tmp_path, tiny_config, "column 'review' not found; columns are 'text', 'label'")


def test_empty_file(tmp_path, tiny_config):
    (tmp_path / "empty.csv").write_text("")
    tiny_config["data"]["train"] = str(tmp_path / "empty.csv")
    expect_error(tmp_path, tiny_config, "is empty")


def test_bad_rows_fail_under_strict(tmp_path, tiny_config):
    (tmp_path / "bad.csv").write_text("text,label\ngreat,pos\n,neg\nawful,\n" + "ok,pos\nmeh,neg\n" * 5)
    tiny_config["data"].update(train=str(tmp_path / "bad.csv"), bad_rows="error")
    expect_error(tmp_path, tiny_config, "2 rows with empty text or a missing label (lines 3, 4)")


def test_unseen_validation_labels(tmp_path, tiny_config):
    (tmp_path / "val.csv").write_text("text,label\nfine,positive\nso-so,neutral\n")
    tiny_config["data"]["validation"] = str(tmp_path / "val.csv")
    expect_error(tmp_path, tiny_config, "labels not seen in training: 'neutral' (lines 3)")


def test_path_that_is_not_a_model(tmp_path, tiny_config):
    (tmp_path / "notamodel").mkdir()
    tiny_config["model"]["source"] = str(tmp_path / "notamodel")
    expect_error(tmp_path, tiny_config, "is not a model")


def test_typo_key(tmp_path, tiny_config):
    tiny_config["training"]["learnig_rate"] = 1e-4
    expect_error(tmp_path, tiny_config, "did you mean 'learning_rate'")


def test_bad_override(tmp_path, tiny_config):
    expect_error(tmp_path, tiny_config, "training.num_train_epochs: 'three' is not valid", "--set", "num_train_epochs=three")


def test_unwritable_output_dir(tmp_path, tiny_config):
    (tmp_path / "file").write_text("x")
    tiny_config["output_dir"] = str(tmp_path / "file")
    expect_error(tmp_path, tiny_config, "is a file")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = config_file(tmp_path, {"training": {"learnig_rate": 1}})
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "did you mean 'learning_rate'" in proc.stderr


def test_validate_reports_data_without_loading_a_model(tmp_path, tiny_config):
    tiny_config["model"]["source"] = "an-org/a-model-that-would-need-the-network"
    code, output = run("validate", str(config_file(tmp_path, tiny_config)))
    assert code == 0 and "config OK: 96 training rows, 32 validation rows" in output


def test_validate_tasks_without_labels_or_training_file(tmp_path):
    questions = tmp_path / "dev.jsonl"
    questions.write_text('{"question": "Who?", "context": "Ann sang.", "answers": {"text": ["Ann"], "answer_start": [0]}}\n')
    config = {"task": "question-answering", "data": {"validation": str(questions)}}
    code, output = run("validate", str(config_file(tmp_path, config)))
    assert code == 0 and "config OK: 1 validation rows" in output and "labels" not in output


def test_inspect_shows_groups_and_schedule(tmp_path, tiny_config):
    tiny_config["strategy"] = {"gradual_unfreezing": True, "layer_lr_decay": 0.5}
    tiny_config["training"]["num_train_epochs"] = 3
    code, output = run("inspect", str(config_file(tmp_path, tiny_config)))
    assert code == 0, output
    for name in ("embeddings", "block.0", "block.1", "head"):
        assert name in output
    assert "train in epoch 1" in output


def test_the_before_after_table_shows_the_linear_probe_beside_the_untrained_head(capsys):
    from types import SimpleNamespace

    from tunesmith._cli_tables import print_before_after
    from tunesmith.config import load_config

    baseline = {"accuracy": 0.5, "loss": 0.69, "features": {"probe": "logistic regression", "train_rows": 18, "accuracy": 0.95}}
    result = SimpleNamespace(config=load_config(None), baseline=baseline, final={"accuracy": 0.9, "loss": 0.3},
                             run_dir="runs/x", best_model_dir="runs/x/best", best_step=4, stopped_early=False,
                             samples_per_second=10.0, report="runs/x/report.html")
    print_before_after(result)
    output = " ".join(capsys.readouterr().out.split())
    assert "pre-trained, untrained head" in output and "pre-trained features (linear probe)" in output
    assert "0.5000 0.9500 0.9000 +0.4000" in output and "chance" in output

def test_train_evaluate_predict(tmp_path, tiny_config, reviews):
    code, output = run("train", str(config_file(tmp_path, tiny_config)), "--quiet")
    assert code == 0, output
    assert "pre-trained" in output and "fine-tuned" in output
    run_dir = tiny_config["output_dir"]
    code, output = run("evaluate", run_dir, "--data", str(reviews))
    assert code == 0 and "accuracy" in output and "per class" in output
    unlabelled = tmp_path / "new.jsonl"
    unlabelled.write_text(json.dumps({"text": "Loved it."}) + "\n" + json.dumps({"text": "Broke in a day."}) + "\n")
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"pred{suffix}"
        code, output = run("predict", run_dir, "--data", str(unlabelled), "--output", str(out))
        assert code == 0, output
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["Loved it.", "Broke in a day."]
    for r in rows:
        assert r["predicted_label"] in ("negative", "positive")
        assert r["prob_negative"] + r["prob_positive"] == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "pred.csv").read_text().startswith("line,text,predicted_label,score,prob_negative,prob_positive")


def test_help_lists_flags_without_a_bool_type():
    code, output = run("train", "--help")
    assert code == 0 and "--overwrite" in output and "--quiet" in output
    assert "<bool>" not in output
