"""The overfitting watch on constructed histories: when it warns, and which epochs it names."""

from __future__ import annotations

import logging

from tunesmith.config import load_config
from tunesmith.report.overfitting import metric_noise, overfitting_message, strategy_advice, watch_overfitting


def history(accuracy: list[float], val_loss: list[float], train_loss: list[float], best_epoch: int) -> list[dict]:
    """Records as the loop writes them: baseline, one eval per epoch (10 steps each), final."""
    records = [{"phase": "baseline", "step": 0, "epoch": 0.0, "loss": 0.7, "accuracy": 0.5}]
    for epoch, (acc, loss, train) in enumerate(zip(accuracy, val_loss, train_loss), start=1):
        records.append({"phase": "train", "step": 10 * epoch, "epoch": float(epoch), "train_loss": train})
        records.append({"phase": "eval", "step": 10 * epoch, "epoch": float(epoch), "loss": loss, "accuracy": acc,
                        "train_loss": train})
    records.append({"phase": "final", "step": 10 * len(accuracy), "epoch": float(len(accuracy)),
                    "best_step": 10 * best_epoch, "loss": val_loss[best_epoch - 1], "accuracy": accuracy[best_epoch - 1]})
    return records


OVERFITTING = history(accuracy=[0.70, 0.80, 0.78, 0.76, 0.75, 0.74], val_loss=[0.60, 0.45, 0.50, 0.60, 0.70, 0.80],
                      train_loss=[0.60, 0.40, 0.20, 0.10, 0.05, 0.03], best_epoch=2)


def test_warns_when_the_gap_widens_while_validation_worsens():
    message = overfitting_message(OVERFITTING, "accuracy", True, patience=3, stopped_early=False)
    assert message.startswith("overfitting: after epoch 2 the gap between validation and training loss widened")
    assert "from 0.050 to 0.770 (epoch 6)" in message and "went from 0.8000 to 0.7400" in message
    assert "Early stopping with patience 3 would have stopped it at epoch 5." in message
    assert "best one, from epoch 2" in message


def test_names_the_epoch_where_early_stopping_stopped():
    records = history([0.70, 0.80, 0.78, 0.76], [0.60, 0.45, 0.50, 0.60], [0.60, 0.40, 0.20, 0.10], best_epoch=2)
    message = overfitting_message(records, "accuracy", True, patience=2, stopped_early=True)
    assert "Early stopping stopped the run at epoch 4." in message


def test_says_when_the_run_ended_before_the_patience_ran_out():
    message = overfitting_message(OVERFITTING, "accuracy", True, patience=None, stopped_early=False)
    assert "would have stopped it at epoch 5" in message  # no early stopping: patience 3 is assumed
    message = overfitting_message(OVERFITTING, "accuracy", True, patience=10, stopped_early=False)
    assert "ended before early stopping's patience (10) ran out" in message


def test_no_warning_while_validation_keeps_improving():
    records = history([0.70, 0.75, 0.80], [0.60, 0.50, 0.45], [0.60, 0.30, 0.10], best_epoch=3)
    assert overfitting_message(records, "accuracy", True, patience=3, stopped_early=False) is None


def test_no_warning_when_validation_worsens_but_the_gap_narrows():
    # Validation dips but the training loss rose too (a noisy step, not memorization).
    records = history([0.70, 0.80, 0.78], [0.60, 0.45, 0.50], [0.60, 0.30, 0.45], best_epoch=2)
    assert overfitting_message(records, "accuracy", True, patience=3, stopped_early=False) is None


def test_loss_as_the_metric_is_lower_is_better():
    records = history([0.7, 0.7, 0.7], [0.60, 0.45, 0.55], [0.60, 0.40, 0.20], best_epoch=2)
    assert "validation loss went from 0.4500 to 0.5500" in overfitting_message(records, "loss", False, 3, False)


def test_watch_logs_the_warning(caplog):
    config = load_config(None, ["training.early_stopping_patience=3"])
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        assert watch_overfitting(OVERFITTING, config, stopped_early=False)
    assert "overfitting: after epoch 2" in caplog.text


def test_no_warning_while_validation_loss_still_falls():
    # Accuracy dips and the gap widens only because the training loss falls faster: the validation
    # loss is still going down, so this is not over-fitting.
    records = history([0.70, 0.80, 0.70], [0.60, 0.45, 0.44], [0.60, 0.40, 0.10], best_epoch=2)
    assert overfitting_message(records, "accuracy", True, patience=3, stopped_early=False) is None


def test_a_one_row_change_is_noise_not_overfitting():
    one_row = 1 / 240
    records = history([0.70, 0.80, 0.80 - one_row], [0.60, 0.45, 0.50], [0.60, 0.40, 0.10], best_epoch=2)
    assert overfitting_message(records, "accuracy", True, 3, False, rows=240) is None
    # sqrt(0.8 * 0.2 / 240) = 0.0258: a drop of 0.05 is beyond it
    records = history([0.70, 0.80, 0.75], [0.60, 0.45, 0.50], [0.60, 0.40, 0.10], best_epoch=2)
    message = overfitting_message(records, "accuracy", True, 3, False, rows=240)
    assert "(more than the noise of 0.0258 on 240 validation rows)" in message
    assert "validation loss rose from 0.4500 to 0.5000" in message


def test_metric_noise_is_at_least_one_row():
    assert metric_noise("accuracy", 1.0, 50) == 1 / 50  # binomial error 0 at p = 1: one row still counts
    assert abs(metric_noise("accuracy", 0.5, 100) - 0.05) < 1e-12
    assert metric_noise("loss", 0.5, 100) == 0.0 and metric_noise("accuracy", 0.5, None) == 0.0


def test_advice_fits_the_strategy():
    full = strategy_advice(load_config(None, []))
    probe = strategy_advice(load_config(None, ["strategy.freeze=head_only"]))
    lora = strategy_advice(load_config(None, ["lora.enabled=true"]))
    assert "freeze more groups" in full and "layer_lr_decay" in full
    assert "freeze" not in probe and "lower the learning rate or the epochs" in probe
    assert "freeze" not in lora and "lora.r" in lora


def test_watch_reads_the_rows_from_the_per_class_supports():
    one_row = history([0.70, 0.80, 0.79], [0.60, 0.45, 0.50], [0.60, 0.40, 0.10], best_epoch=2)
    for r in one_row:
        if r["phase"] == "eval":
            r["per_class"] = {"a": {"support": 60}, "b": {"support": 40}}
    config = load_config(None, ["strategy.freeze=head_only"])
    assert watch_overfitting(one_row, config, stopped_early=False) is None  # 0.01 = one row of 100
    assert "freeze" not in watch_overfitting(OVERFITTING, config, stopped_early=False)


def test_a_loss_rise_within_one_percent_is_noise():
    records = history([0.70, 0.80, 0.60], [0.60, 0.45, 0.454], [0.60, 0.40, 0.10], best_epoch=2)
    assert overfitting_message(records, "accuracy", True, 3, False, rows=240) is None  # 0.9% above the best
    records = history([0.70, 0.80, 0.60], [0.60, 0.45, 0.46], [0.60, 0.40, 0.10], best_epoch=2)
    assert overfitting_message(records, "accuracy", True, 3, False, rows=240)
