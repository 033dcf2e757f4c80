"""`tunesmith.run.evaluate`: any model scored on a labelled file, overall and per group, metrics as JSON."""

from __future__ import annotations

import csv
import json
import logging

import pytest

import tunesmith
from tunesmith.errors import DataError


@pytest.fixture(scope="module")
def headless_bert(tmp_path_factory):
    """A tiny pre-trained encoder with no classification head (as demo:minilm is)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunesmith.models.sources import resolve_source

    folder = tmp_path_factory.mktemp("headless-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location).save_pretrained(folder)
    return folder


def _grouped(reviews, path, names=None):
    """80 of the shipped reviews with a `domain` column (every third row "toys"), labels renamed by `names`."""
    with reviews.open(newline="") as f:
        rows = list(csv.DictReader(f))[:80]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "domain"])
        writer.writeheader()
        writer.writerows({**r, "label": (names or {}).get(r["label"], r["label"]),
                          "domain": "toys" if i % 3 == 0 else "books"} for i, r in enumerate(rows))
    return path


@pytest.fixture
def grouped_reviews(reviews, tmp_path):
    return _grouped(reviews, tmp_path / "test.csv")


def test_a_pretrained_source_is_scored_as_the_baseline_fine_tuning_starts_from(headless_bert, grouped_reviews,
                                                                                reviews, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        metrics = tunesmith.evaluate(str(headless_bert), str(grouped_reviews), ["data.max_length=32"])
    assert metrics["head"] == "untrained" and set(metrics["per_class"]) == {"negative", "positive"}
    assert "no trained classification head" in caplog.text
    config = {"output_dir": str(tmp_path / "run"), "model": {"source": str(headless_bert)},
              "data": {"train": str(reviews), "validation": str(grouped_reviews), "max_train_samples": 16,
                       "max_length": 32},
              "training": {"max_steps": 1, "per_device_train_batch_size": 8}}
    baseline = tunesmith.finetune(config, quiet=True).baseline
    assert metrics["accuracy"] == baseline["accuracy"] and metrics["loss"] == pytest.approx(baseline["loss"], rel=1e-5)


def test_evaluate_by_a_column_and_to_json(tiny_bert, reviews, tmp_path):
    grouped_reviews = _grouped(reviews, tmp_path / "test.csv", {"negative": "LABEL_0", "positive": "LABEL_1"})
    out = tmp_path / "metrics.json"
    metrics = tunesmith.evaluate(str(tiny_bert), str(grouped_reviews), ["data.max_length=32"], output=out, by="domain")
    assert json.loads(out.read_text()) == json.loads(json.dumps(metrics))
    groups = metrics["by"]["domain"]
    assert set(groups) == {"books", "toys"} and groups["toys"]["rows"] + groups["books"]["rows"] == metrics["rows"] == 80
    predicted = list(csv.DictReader(tunesmith.predict(str(tiny_bert), str(grouped_reviews), str(tmp_path / "p.csv"),
                                                      ["data.max_length=32"]).open(newline="")))
    for name, group in groups.items():
        rows = [r for r in predicted if r["domain"] == name]
        right = sum(r["predicted_label"] == r["label"] for r in rows)
        assert len(rows) == group["rows"] and group["accuracy"] == pytest.approx(right / len(rows))


def test_evaluate_by_a_missing_column_fails_before_the_model_loads(headless_bert, grouped_reviews, monkeypatch):
    from tunesmith.tasks.text_classification import TextClassificationTask

    monkeypatch.setattr(TextClassificationTask, "load_trained", lambda self: pytest.fail("the model was loaded"))
    with pytest.raises(DataError, match="--by column 'domian' not found; columns are 'text', 'label', 'domain'"):
        tunesmith.evaluate(str(headless_bert), str(grouped_reviews), by="domian")


def test_evaluate_command_by_and_output(headless_bert, grouped_reviews, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    out = CliRunner().invoke(app, ["evaluate", str(headless_bert), "--data", str(grouped_reviews), "--by", "domain",
                                   "--output", str(tmp_path / "m.json"), "--set", "data.max_length=32"])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "all rows" in said and "books" in said and "toys" in said and "untrained head" in said
    assert json.loads((tmp_path / "m.json").read_text())["by"]["domain"]["toys"]["rows"] == 27


def test_image_predictions_keep_the_csv_columns_and_print_no_timm_lines(image_config, color_images, tmp_path, caplog):
    image_config["training"]["num_train_epochs"] = 1
    run = tunesmith.finetune(image_config, quiet=True).run_dir
    images = sorted((color_images / "red").iterdir())[:3]
    table = tmp_path / "images.csv"
    table.write_text("id,image\n" + "".join(f"r{i},{p}\n" for i, p in enumerate(images)))
    with caplog.at_level(logging.INFO):
        out = tunesmith.predict(str(run), str(table), str(tmp_path / "p.csv"))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("timm")] == []
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["line"], r["id"], r["image"]) for r in rows] == [(str(i + 2), f"r{i}", str(p)) for i, p in enumerate(images)]
    assert all(r["predicted_label"] in ("blue", "red") for r in rows)


def test_predict_with_a_source_that_has_no_trained_head_is_refused(headless_bert, reviews, tmp_path):
    from tunesmith.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="no trained classification head.*fine-tune it first"):
        tunesmith.predict(str(headless_bert), str(reviews), str(tmp_path / "p.csv"))
    assert not (tmp_path / "p.csv").exists()


def test_evaluate_and_predict_read_the_task_section_the_run_trained_with(tmp_path):
    """A run's own settings (a seq2seq run's column names) carry over; overrides still win, other sources get defaults."""
    from tunesmith.run import _inference_config

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text("task: seq2seq\nseq2seq: {source_column: question, target_column: answer}\n")
    for source in (run, run / "best"):
        config = _inference_config(str(source), None, validation="dev.jsonl")
        assert (config.task, config.seq2seq.source_column, config.seq2seq.target_column) == ("seq2seq", "question", "answer")
    assert _inference_config(str(run), ["seq2seq.source_column=q"], validation="dev.jsonl").seq2seq.source_column == "q"
    assert _inference_config(str(tmp_path), None, validation="dev.jsonl").seq2seq.source_column == "source"
