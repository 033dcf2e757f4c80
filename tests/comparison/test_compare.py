"""`tunesmith compare` on the tiny BERT and the shipped reviews: every arm, same splits, outputs, CLI."""

from __future__ import annotations

import base64
import io
import json
import logging
import re

import pytest
from PIL import Image

import tunesmith
from tunesmith.comparison.arms import ARM_ORDER
from tunesmith.config import load_config


def compare_config(tiny_bert, reviews, output_dir, **compare) -> dict:
    return {
        "output_dir": str(output_dir),
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(reviews), "max_train_samples": 48, "max_eval_samples": 24, "max_length": 32},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3},
        "compare": compare,
    }


@pytest.fixture(scope="module")
def comparison(tiny_bert, reviews, tmp_path_factory) -> tunesmith.CompareResult:
    folder = tmp_path_factory.mktemp("compare")
    return tunesmith.compare(compare_config(tiny_bert, reviews, folder, arms=list(ARM_ORDER)), quiet=True)


def test_every_arm_has_a_row(comparison):
    assert [r.arm for r in comparison.rows] == list(ARM_ORDER)
    for row in comparison.rows:
        assert 0.0 <= row.metrics["accuracy"] <= 1.0 and row.metrics["loss"] > 0
        assert {"macro_f1", "per_class", "confusion_matrix"} <= set(row.metrics)
    pretrained, probe, finetune, scratch, lpft = comparison.rows
    assert pretrained.trainable_params == 0 and pretrained.train_seconds is None
    assert 0 < probe.trainable_params < finetune.trainable_params == scratch.trainable_params == lpft.trainable_params
    assert all(r.train_seconds > 0 and r.wall_seconds >= r.train_seconds for r in (probe, finetune, scratch, lpft))
    assert lpft.train_seconds > probe.train_seconds  # the probe stage counts


def test_arms_share_the_splits(comparison):
    runs = [r.run_dir for r in comparison.rows[1:]]
    validation = {(r / "predictions_validation.jsonl").read_text().count("\n") for r in runs}
    lines = {tuple(json.loads(x)["line"] for x in (r / "predictions_validation.jsonl").read_text().splitlines()) for r in runs}
    train = {json.dumps(json.loads((r / "data.json").read_text())["train"]["label_counts"]) for r in runs}
    assert validation == {24} and len(lines) == 1 and len(train) == 1


def test_arm_configs(comparison):
    def saved(arm):
        return tunesmith.load_config(comparison.row(arm).run_dir / "config.yaml")

    assert saved("probe").strategy.freeze == "head_only" and saved("probe").training.learning_rate == 1e-3
    assert saved("scratch").model.pretrained is False and saved("scratch").strategy.freeze == "none"
    assert saved("finetune").model.pretrained is True
    assert saved("probe_then_finetune").model.source == str(comparison.row("probe").run_dir)


def test_pretrained_row_is_the_baseline_and_probe_then_finetune_starts_from_the_probe(comparison):
    def records(arm):
        return [json.loads(x) for x in (comparison.row(arm).run_dir / "metrics.jsonl").read_text().splitlines()]

    baseline = next(r for r in records("finetune") if r["phase"] == "baseline")
    assert comparison.row("pretrained").metrics["loss"] == baseline["loss"]
    probe_final = next(r for r in records("probe") if r["phase"] == "final")
    lpft_baseline = next(r for r in records("probe_then_finetune") if r["phase"] == "baseline")
    assert lpft_baseline["loss"] == pytest.approx(probe_final["loss"], abs=1e-5)
    scratch_baseline = next(r for r in records("scratch") if r["phase"] == "baseline")
    assert scratch_baseline["loss"] != baseline["loss"]  # other weights


def test_outputs(comparison):
    folder = comparison.folder
    summary = json.loads((folder / "compare.json").read_text())
    assert [a["arm"] for a in summary["arms"]] == list(ARM_ORDER) and summary["metric"] == "accuracy"
    table = (folder / "summary.md").read_text()
    header = table.splitlines()[0]
    assert header.startswith("| arm | accuracy | macro_f1 | ") and "| roc_auc | " in header and "| ece | " in header
    assert header.endswith("| loss | train s | wall s | trainable params |")
    assert table.count("\n| ") == len(ARM_ORDER)  # one row per arm below the header
    html = comparison.report.read_text()
    for anchor in ("arms", "overfitting", "runs"):
        assert f'<section id="{anchor}">' in html
    assert 'href="probe_then_finetune/report.html"' in html
    (png,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    with Image.open(io.BytesIO(base64.b64decode(png))) as picture:
        assert picture.format == "PNG"
    assert (folder / "plots" / "arms.png").read_bytes() == base64.b64decode(png)
    assert all((r.run_dir / "report.html").exists() for r in comparison.rows)


def test_an_earlier_comparison_is_not_replaced_by_accident(comparison, tiny_bert, reviews):
    config = compare_config(tiny_bert, reviews, comparison.folder.parent)
    with pytest.raises(tunesmith.RunDirError, match="already holds a comparison"):
        tunesmith.compare(config, quiet=True)


def test_cli_compare(tiny_bert, reviews, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(compare_config(tiny_bert, reviews, tmp_path / "out")))
    result = CliRunner().invoke(app, ["compare", str(config), "--arms", "pretrained,probe", "--arm-seeds", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pre-trained" in result.output and "probe" in result.output and "report:" in result.output
    summary = json.loads((tmp_path / "out" / "compare" / "compare.json").read_text())
    assert [a["arm"] for a in summary["arms"]] == ["pretrained", "probe"] and summary["arm_seeds"] == 2
    assert [r["seed"] for r in summary["arms"][1]["seed_runs"]] == [42, 43] and "accuracy_std" in summary["arms"][1]["metrics"]
    bad = CliRunner().invoke(app, ["compare", str(config), "--fractions", "0.5,2", "--overwrite"])
    assert bad.exit_code == 2 and "compare.fractions.1" in bad.output


def test_compare_reuses_the_fine_tune_that_train_wrote(tiny_bert, reviews, tmp_path, caplog):
    config = compare_config(tiny_bert, reviews, tmp_path / "run", arms=["pretrained", "finetune"])
    trained = tunesmith.finetune(config, quiet=True)
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        result = tunesmith.compare(config, quiet=True)
    assert "reusing the fine-tune that train already wrote" in caplog.text
    finetune = result.row("finetune")
    assert finetune.run_dir == trained.run_dir and not (result.folder / "finetune").exists()
    assert finetune.metrics["accuracy"] == trained.final["accuracy"]
    assert finetune.train_seconds > 0 and result.row("pretrained").metrics["loss"] == trained.baseline["loss"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        again = tunesmith.compare(config, ["training.learning_rate=0.002", "overwrite_output_dir=true"], quiet=True)
    assert "its config.yaml differs in training.learning_rate; training the fine-tune arm again" in caplog.text
    assert again.row("finetune").run_dir == again.folder / "finetune"


def test_the_scratch_arm_trains_every_weight_with_lora_off(tiny_config):
    from tunesmith.comparison.arms import arm_overrides

    tiny_config["lora"] = {"enabled": True}
    config = load_config(tiny_config)
    scratch = load_config(tiny_config, arm_overrides("scratch", config))
    assert not scratch.lora.enabled and not scratch.model.pretrained and scratch.strategy.freeze == "none"
    assert load_config(tiny_config, arm_overrides("probe", config)).lora.enabled  # the other arms keep the config


def test_arm_seeds_give_a_mean_row_and_a_training_curve(tiny_bert, reviews, tmp_path):
    config = compare_config(tiny_bert, reviews, tmp_path / "out", arms=["pretrained", "finetune", "scratch"],
                            threshold=0.5)
    config["training"].update(eval_strategy="steps", eval_steps=1, seed=7)  # 3 steps, an evaluation after each
    result = tunesmith.compare(config, quiet=True, arm_seeds=2)
    finetune = result.row("finetune")
    runs = [r.run_dir for r in finetune.seed_runs]
    assert runs == [result.folder / "finetune", result.folder / "seeds" / "seed8" / "finetune"]
    assert [tunesmith.load_config(r / "config.yaml").training.seed for r in runs] == [7, 8]
    accuracies = [r.metrics["accuracy"] for r in finetune.seed_runs]
    assert finetune.metrics["accuracy"] == pytest.approx(sum(accuracies) / 2) and "accuracy_std" in finetune.metrics
    summary = json.loads((result.folder / "compare.json").read_text())
    assert summary["arm_seeds"] == 2 and summary["threshold"] == 0.5
    assert set(summary["training_curve"]) == set(summary["curve_summary"]) == {"finetune", "scratch"}
    curve = summary["training_curve"]["finetune"]
    assert [p["step"] for p in curve] == [0, 1, 2, 3] and all(p["seeds"] == 2 for p in curve)
    starts = [next(json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if '"baseline"' in x)["accuracy"]
              for r in runs]  # each seed's new head starts the pre-trained backbone elsewhere
    assert curve[0]["mean"] == pytest.approx(sum(starts) / 2) and result.row("pretrained").metrics["accuracy"] == starts[0]
    assert {"area", "area_std", "steps_to_threshold", "reached"} <= set(summary["curve_summary"]["scratch"])
    assert (result.folder / "plots" / "training_curve.png").stat().st_size > 1000
    assert "Training curve (validation accuracy, mean ± std over 2 seeds)" in (result.folder / "summary.md").read_text()
    assert '<section id="training-curve">' in result.report.read_text()
