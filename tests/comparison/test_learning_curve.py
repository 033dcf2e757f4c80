"""The learning curve: every fraction and seed trained on nested, stratified subsets; the summary sentence."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import tunesmith
from tunesmith.comparison.learning_curve import labels_saved


@pytest.fixture(scope="module")
def curve(tiny_bert, reviews, tmp_path_factory) -> tunesmith.CompareResult:
    folder = tmp_path_factory.mktemp("curve")
    return tunesmith.compare({
        "output_dir": str(folder),
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(reviews), "max_train_samples": 48, "max_eval_samples": 24, "max_length": 32},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "seed": 5},
        "compare": {"arms": ["finetune"], "curve_arms": ["finetune"]},
    }, fractions=[1.0, 0.5], seeds=2, quiet=True)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_fraction_and_seed_is_trained(curve):
    n = len(jsonl(curve.folder / "data" / "train-seed5-0.5.jsonl"))  # half of each label, rounded: 24 or 25
    assert n in (24, 25)
    assert [(p.arm, p.fraction, p.seed, p.train_rows) for p in curve.points] == [
        ("finetune", 0.5, 5, n), ("finetune", 1.0, 5, 48), ("finetune", 0.5, 6, n), ("finetune", 1.0, 6, 48)]
    assert curve.points[1].result is curve.row("finetune")  # (all rows, first seed) is the table's own run
    assert len({p.result.run_dir for p in curve.points}) == 4
    seeds = {p.seed: tunesmith.load_config(p.result.run_dir / "config.yaml").training.seed for p in curve.points}
    assert seeds == {5: 5, 6: 6}
    half = curve.curve["finetune"][0]
    assert half["train_rows"] == n and len(half["values"]) == 2 and half["mean"] == pytest.approx(sum(half["values"]) / 2)


def test_subsets_are_nested_and_stratified_and_validation_is_shared(curve):
    data = curve.folder / "data"
    full, half = jsonl(data / "train-seed5-1.jsonl"), jsonl(data / "train-seed5-0.5.jsonl")
    assert [r for r in half if r not in full] == []
    counts = Counter(r["label"] for r in full)
    assert Counter(r["label"] for r in half) == {k: int(v / 2 + 0.5) for k, v in counts.items()}
    assert jsonl(data / "train-seed6-0.5.jsonl") != half  # another seed, another subset
    validation = jsonl(data / "validation.jsonl")
    for point in curve.points:
        facts = json.loads((point.result.run_dir / "data.json").read_text())
        assert facts["validation"]["rows"] == len(validation) == 24


def test_curve_outputs(curve):
    summary = json.loads((curve.folder / "compare.json").read_text())
    assert summary["seeds"] == 2 and len(summary["curve_points"]) == 4 and "finetune" in summary["curve"]
    assert "Learning curve (validation accuracy, mean ± std over 2 seeds)" in (curve.folder / "summary.md").read_text()
    html = curve.report.read_text()
    assert '<section id="learning-curve">' in html and html.count("data:image/png;base64,") == 2
    assert (curve.folder / "plots" / "learning_curve.png").stat().st_size > 1000


def points(*rows_and_means):
    return [{"train_rows": n, "mean": m} for n, m in rows_and_means]


def test_labels_saved_names_the_fewest_labels_that_match_scratch():
    curve = {"finetune": points((100, 0.80), (200, 0.84), (2000, 0.88)),
             "scratch": points((100, 0.55), (200, 0.60), (2000, 0.79))}
    assert labels_saved(curve, "accuracy", True) == (
        "Fine-tuning on 100 labelled rows (accuracy 0.8000, the smallest fraction tried) matched training from "
        "scratch on 2,000 labelled rows (accuracy 0.7900): 20x fewer labels.")
    curve["scratch"][-1]["mean"] = 0.83
    assert "on 200 labelled rows (accuracy 0.8400) matched" in labels_saved(curve, "accuracy", True)
    curve["scratch"][-1]["mean"] = 0.95
    assert labels_saved(curve, "accuracy", True).startswith("Fine-tuning did not reach training from scratch")
    assert labels_saved({"finetune": curve["finetune"]}, "accuracy", True) is None
    loss = {"finetune": points((100, 0.5), (2000, 0.3)), "scratch": points((100, 0.7), (2000, 0.55))}
    assert "on 100 labelled rows (loss 0.5000" in labels_saved(loss, "loss", False)
