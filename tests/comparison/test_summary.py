"""compare's summary.md and report.html wording: what one seed can and cannot show."""

from __future__ import annotations

from PIL import Image

from tunesmith.comparison.summary import over_seeds, write_summary


def result(seeds: int) -> dict:
    row = {"arm": "finetune", "title": "fine-tune (this config)", "metrics": {"accuracy": 0.9}, "train_seconds": 3.0,
           "wall_seconds": 4.0, "trainable_params": 10, "best_epoch": 1.0, "overfitting": None, "run_dir": None}
    curve = {"finetune": [{"fraction": 0.5, "train_rows": 40, "mean": 0.8, "std": 0.0}]}
    return {"task": "text-classification", "model": "demo:minilm", "metric": "accuracy", "seeds": seeds,
            "arms": [row], "curve": curve, "labels_saved": None}


def test_one_seed_is_worded_for_one_seed(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "curve.png")
    write_summary(tmp_path, result(1), ["accuracy"], {"learning_curve": tmp_path / "curve.png"})
    summary, page = (tmp_path / "summary.md").read_text(), (tmp_path / "report.html").read_text()
    assert "Learning curve (validation accuracy, one seed, so no standard deviation):" in summary
    assert "1 seeds" not in summary and "1 seeds" not in page and "one seed, so no band" in page


def test_several_seeds_give_mean_and_std():
    assert over_seeds(3) == "mean ± std over 3 seeds"
