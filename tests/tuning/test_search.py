"""`tunesmith tune`: trials are fine-tuning runs, bad ones are pruned, the study resumes after a crash,
and the best config trains as it is. The learning-rate search on real data is marked slow."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.config import load_config


@pytest.fixture
def search_config(tiny_config, tmp_path) -> dict:
    """Tiny trials: 32 training rows, one epoch of two steps, a log-uniform learning-rate range."""
    tiny_config["output_dir"] = str(tmp_path / "tune")
    tiny_config["data"].update(max_train_samples=32, max_eval_samples=16)
    tiny_config["training"].update(num_train_epochs=1, metric_for_best_model="loss", logging_steps=10)
    tiny_config["search"] = {"n_trials": 2, "pruning_startup_trials": 1,
                             "space": {"training.learning_rate": {"low": 1e-9, "high": 1.0, "log": True}}}
    return tiny_config


def stored_study(config: dict) -> optuna.Study:
    folder = config["output_dir"]
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{folder}/study.db")


def test_a_trial_far_behind_the_first_is_pruned(search_config, tmp_path):
    # Both trials are queued in the study the search then opens: a sane rate, then an absurd one.
    (tmp_path / "tune").mkdir()
    study = optuna.create_study(study_name="tune", direction="minimize", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    study.enqueue_trial({"training.learning_rate": 1e-6})
    study.enqueue_trial({"training.learning_rate": 0.5})
    result = tunesmith.tune(search_config, quiet=True)
    assert [t.state for t in result.trials] == ["complete", "pruned"]
    pruned = result.trials[1]
    assert pruned.evaluations == 1 and pruned.value > result.trials[0].value
    run_dir = pruned.run_dir
    assert run_dir == tmp_path / "tune" / "trials" / "trial-1"
    assert not (run_dir / ".lock").exists()  # the pruned run released its lock
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records if r["phase"] != "train"] == ["baseline", "eval"]
    assert json.loads((run_dir / "trial.json").read_text())["state"] == "pruned"
    assert (tmp_path / "tune" / "trials" / "trial-0" / "best" / "model.safetensors").exists()
    assert result.best.number == 0


def test_study_resumes_after_a_crash_and_grows_with_n_trials(search_config, tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search_config))
    folder = tmp_path / "tune"
    code = f"import tunesmith; tunesmith.tune({str(path)!r}, quiet=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = folder / "trials" / "trial-1" / "metrics.jsonl"
    deadline = time.time() + 300
    while not second.exists():  # the first trial is done and the second has started training
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "trial 1 never started"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert [t.state.name for t in stored_study(search_config).trials] == ["COMPLETE", "RUNNING"]

    # Run again, from the CLI, asking for three trials in all: the dead process's trial is marked
    # failed, the completed one is kept, and numbering continues.
    result = CliRunner().invoke(app, ["tune", str(path), "--n-trials", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    trials = stored_study(search_config).trials
    assert [t.state.name for t in trials][:2] == ["COMPLETE", "FAIL"]
    assert [t.number for t in trials] == list(range(len(trials)))
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and trials[0].state.name == "COMPLETE"
    assert "best: trial" in result.output and "tunesmith train" in result.output

    with (folder / "tune_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [str(t.number) for t in trials]
    assert rows[1]["state"] == "fail" and "training.learning_rate" in rows[0]

    best = load_config(folder / "best_config.yaml")  # what `tunesmith train` reads
    best_trial = min(finished, key=lambda t: t.value if t.state.name == "COMPLETE" else float("inf"))
    assert best.training.learning_rate == pytest.approx(best_trial.params["training.learning_rate"])
    assert best.output_dir == str(folder / "best-run") and not best.overwrite_output_dir


def test_an_empty_space_is_a_config_error(tiny_config):
    with pytest.raises(tunesmith.ConfigError, match="search.space is empty"):
        tunesmith.tune(tiny_config)


def test_a_study_that_optimizes_the_other_way_is_refused(search_config, tmp_path):
    (tmp_path / "tune").mkdir()
    optuna.create_study(study_name="tune", direction="maximize", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    with pytest.raises(tunesmith.ConfigError, match="use another search.study_name"):
        tunesmith.tune(search_config)


@pytest.mark.slow
def test_search_finds_a_much_better_learning_rate_than_a_bad_default(tmp_path):
    """Real weights, real data: demo:minilm on the shipped reviews, default learning rate 1e-7."""
    from tunesmith.quickstart import reviews_path

    config = {
        "output_dir": str(tmp_path / "tune"),
        "model": {"source": "demo:minilm"},
        # 450 training and 150 validation rows: a smaller slice leaves too few steps for any rate to
        # separate clearly from chance on a 60-row validation set.
        "data": {"train": reviews_path(), "validation_split": 0.25, "max_length": 64},
        "training": {"num_train_epochs": 3, "learning_rate": 1e-7, "per_device_train_batch_size": 16},
        "strategy": {"layer_lr_decay": 0.9},
        "search": {"n_trials": 4, "space": {"training.learning_rate": {"low": 3e-5, "high": 3e-4, "log": True}}},
    }
    default = tunesmith.finetune({**config, "output_dir": str(tmp_path / "default")}, quiet=True)
    result = tunesmith.tune(config, quiet=True)
    print(f"default lr 1e-7: accuracy {default.final['accuracy']:.4f}; best trial lr "
          f"{result.best.params['training.learning_rate']:.2e}: accuracy {result.best.value:.4f}")
    assert result.best.value >= default.final["accuracy"] + 0.1
    assert result.best.params["training.learning_rate"] >= 3e-5
    assert load_config(result.best_config).training.learning_rate == result.best.params["training.learning_rate"]
