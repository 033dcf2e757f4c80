"""The model card's front matter and settings: a real base model id, YAML-style values."""

from __future__ import annotations

from tunesmith.config import load_config
from tunesmith.models.sources import base_model_id
from tunesmith.report.model_card import write_model_card

FACTS = {"steps": 4, "epochs": 1.0, "train_seconds": 2.0, "stopped_early": False}
METRICS = {"accuracy": 0.5, "loss": 0.7}


def card(tmp_path, source: str) -> str:
    config = load_config(None, [f"model.source={source}"])
    write_model_card(tmp_path / "README.md", config, {"labels": ["a", "b"]}, METRICS, METRICS, FACTS, "usage")
    return (tmp_path / "README.md").read_text()


def test_a_demo_names_its_upstream_hub_id(tmp_path):
    text = card(tmp_path, "demo:minilm")
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2\n" in text and "base_model: demo:" not in text
    assert "gradual unfreezing: false" in text and "False" not in text


def test_base_model_ids(tmp_path):
    assert base_model_id("demo:smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("demo:efficientnet-lite0") == "timm/tf_efficientnet_lite0.in1k"  # TF-trained Lite0 weights
    assert base_model_id("bert-base-uncased") == "bert-base-uncased"
    assert base_model_id(str(tmp_path)) is None  # a plain local folder has no id to name
    (tmp_path / "config.yaml").write_text("model:\n  source: demo:minilm\n")
    assert base_model_id(str(tmp_path)) == "sentence-transformers/all-MiniLM-L6-v2"  # a run dir: its base


def test_a_local_folder_leaves_base_model_out(tmp_path):
    assert "base_model" not in card(tmp_path, str(tmp_path))


def test_the_card_labels_the_untrained_head_and_shows_the_linear_probe_beside_it(tmp_path):
    config = load_config(None, ["model.source=demo:minilm"])
    baseline = {**METRICS, "features": {"probe": "logistic regression", "train_rows": 18, "accuracy": 0.95}}
    write_model_card(tmp_path / "README.md", config, {"labels": ["a", "b"]}, baseline, {"accuracy": 0.9, "loss": 0.3},
                     FACTS, "usage")
    text = (tmp_path / "README.md").read_text()
    assert "| metric | pre-trained, untrained head | pre-trained features (linear probe) | fine-tuned | change |" in text
    assert "| accuracy | 0.5000 | 0.9500 | 0.9000 | +0.4000 |" in text and "chance" in text
