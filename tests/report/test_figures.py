"""Report figures: a share-of-rows axis stops at 1.0, not at matplotlib's 1.05 margin."""

from __future__ import annotations

from tunesmith.report import compare_plots
from tunesmith.report.run_plots import metric_plot

RECORDS = [{"phase": "baseline", "step": 0, "epoch": 0.0, "accuracy": 0.5, "loss": 0.7},
           {"phase": "eval", "step": 10, "epoch": 1.0, "accuracy": 0.9, "loss": 0.3},
           {"phase": "eval", "step": 20, "epoch": 2.0, "accuracy": 1.0, "loss": 0.1},
           {"phase": "final", "step": 20, "epoch": 2.0, "best_step": 20, "accuracy": 1.0, "loss": 0.1}]


def test_the_metrics_plot_stops_at_one():
    low, high = metric_plot(RECORDS, ["accuracy"]).axes[0].get_ylim()
    assert high == 1.0 and low < 0.5


def test_the_comparison_axes_stop_at_one(monkeypatch, tmp_path):
    monkeypatch.setattr(compare_plots, "save_png", lambda fig, path: fig)
    rows = [{"arm": "probe", "title": "probe", "metrics": {"accuracy": 0.8}, "train_seconds": 1.0, "trainable_params": 10},
            {"arm": "finetune", "title": "fine-tune", "metrics": {"accuracy": 1.0}, "train_seconds": 2.0,
             "trainable_params": 99}]
    assert compare_plots.arms_plot(rows, "accuracy", tmp_path / "a.png").axes[0].get_xlim()[1] == 1.0
    curve = {"finetune": [{"train_rows": 10, "mean": 0.9, "std": 0.1}, {"train_rows": 40, "mean": 1.0, "std": 0.0}]}
    assert compare_plots.curve_plot(curve, "accuracy", 0.5, tmp_path / "c.png").axes[0].get_ylim()[1] == 1.0
    loss = compare_plots.curve_plot(curve, "loss", 0.5, tmp_path / "l.png").axes[0].get_ylim()[1]
    assert loss > 1.0  # a loss is not a share of rows: no bound
