"""Experiment tracking by config switch: TensorBoard event files and an MLflow run from one fine-tune."""

from __future__ import annotations

import sys

import pytest

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.report.tracking import open_trackers, record_scalars


def test_records_become_named_scalars():
    record = {"phase": "eval", "step": 6, "time": 1.0, "epoch": 1.0, "loss": 0.5, "accuracy": 0.75,
              "per_class": {"a": {}}, "trainable_groups": ["head"], "train_loss": float("nan")}
    assert record_scalars(record) == {"eval/epoch": 1.0, "eval/loss": 0.5, "eval/accuracy": 0.75}
    train = {"phase": "train", "step": 3, "train_loss": 0.7, "lr": 1e-3, "lrs": {"block.0": 5e-4, "head": 1e-3}}
    assert record_scalars(train) == {"train/train_loss": 0.7, "train/lr": 1e-3, "lr/block.0": 5e-4, "lr/head": 1e-3}
    baseline = {"phase": "baseline", "step": 0, "accuracy": 0.5,
                "features": {"probe": "logistic regression", "train_rows": 18, "accuracy": 0.95, "seconds": 0.2}}
    assert record_scalars(baseline) == {"baseline/accuracy": 0.5, "baseline/features/train_rows": 18.0,
                                        "baseline/features/accuracy": 0.95, "baseline/features/seconds": 0.2}


def test_tensorboard_and_mlflow_receive_every_record(tiny_config):
    pytest.importorskip("tensorboard", reason="pip install 'tunesmith[tracking]' to test TensorBoard logging")
    pytest.importorskip("mlflow", reason="pip install 'tunesmith[tracking]' to test MLflow logging")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["tracking"] = {"tensorboard": True, "mlflow": True}
    result = tunesmith.finetune(tiny_config, quiet=True)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"baseline/accuracy", "eval/accuracy", "final/accuracy", "train/train_loss", "lr/head", "lr/embeddings"} <= set(tags)
    assert [e.step for e in events.Scalars("eval/accuracy")] == [6, 12]

    client = MlflowClient(tracking_uri=(result.run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tunesmith")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["training.learning_rate"] == "0.001" and run.data.params["model.source"] == tiny_config["model"]["source"]
    history = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert [m.step for m in history] == [6, 12]
    assert len(client.get_metric_history(run.info.run_id, "train/train_loss")) == 12


def test_a_switched_on_tracker_that_is_not_installed_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    config = load_config(None, ["tracking.mlflow=true"])
    with pytest.raises(ConfigError, match=r"tracking.mlflow is on but the mlflow package is not installed.*"
                                          r"pip install 'tunesmith\[tracking\]'"):
        with open_trackers(config, tmp_path):
            pass


def test_no_tracker_means_no_callback(tmp_path):
    with open_trackers(load_config(), tmp_path) as on_record:
        assert on_record is None


def test_a_tracker_that_fails_mid_run_warns_once_and_training_goes_on(monkeypatch, tmp_path, caplog):
    from tunesmith.report import tracking

    class BrokenTracker:
        def __init__(self, config, run_dir):
            self.closed = None

        def log(self, record):
            raise ConnectionError("tracking server went away")

        def close(self, failed):
            self.closed = failed

    monkeypatch.setattr(tracking, "MlflowTracker", BrokenTracker)
    with open_trackers(load_config(None, ["tracking.mlflow=true"]), tmp_path) as on_record:
        on_record({"phase": "train", "step": 1, "train_loss": 0.5})
        on_record({"phase": "train", "step": 2, "train_loss": 0.4})
    assert caplog.text.count("Broken logging failed (tracking server went away); training goes on") == 1
