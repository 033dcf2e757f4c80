"""End to end on the real all-MiniLM-L6-v2 weights and real data (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tunesmith

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sst2_run(shared_data, tmp_path_factory):
    """demo:minilm fine-tuned on 1,000 SST-2 training rows, scored on 300 dev rows."""
    run_dir = tmp_path_factory.mktemp("sst2") / "run"
    return tunesmith.finetune({
        "output_dir": str(run_dir),
        "model": {"source": "demo:minilm"},
        "data": {"train": str(shared_data / "sst2" / "train.tsv"), "validation": str(shared_data / "sst2" / "dev.tsv"),
                 "max_train_samples": 1000, "max_eval_samples": 300},
        "training": {"num_train_epochs": 2, "learning_rate": 1e-4, "per_device_train_batch_size": 16},
        "strategy": {"layer_lr_decay": 0.9},
    }, quiet=True)


def test_fine_tuning_beats_the_pretrained_baseline(sst2_run):
    assert sst2_run.baseline["accuracy"] < 0.65
    assert sst2_run.final["accuracy"] >= 0.75
    assert sst2_run.final["accuracy"] >= sst2_run.baseline["accuracy"] + 0.15


def test_best_model_loads_in_plain_transformers(sst2_run, tmp_path):
    """The saved model works without tunesmith: same predictions as tunesmith's own predict.

    tunesmith divides the logits by the temperature it fitted on validation (`calibration.json`
    beside the weights, as the model card says); plain transformers does the same with that number.
    """
    texts = ["a gorgeous , moving film", "tedious and far too long", "not bad at all"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tunesmith.predict(str(sst2_run.run_dir), str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"))
    ours = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    script = f"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path = {str(sst2_run.best_model_dir)!r}
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
assert "tunesmith" not in sys.modules
temperature = json.load(open(path + "/calibration.json"))["temperature"]
texts = {texts!r}
with torch.no_grad():
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
probs = torch.softmax(logits / temperature, -1)
print(json.dumps([{{"label": model.config.id2label[int(p.argmax())], "probs": p.tolist()}} for p in probs]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    for mine, theirs in zip(ours, plain):
        assert mine["predicted_label"] == theirs["label"]
        assert mine["prob_0"] == pytest.approx(theirs["probs"][0], abs=1e-4)


def test_quickstart_command(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["quickstart", "--output-dir", str(tmp_path / "qs"), "--quiet"])
    assert result.exit_code == 0, result.output
    final = [json.loads(line) for line in (tmp_path / "qs" / "metrics.jsonl").read_text().splitlines()]
    assert final[-1]["phase"] == "final"
    assert final[-1]["accuracy"] >= final[0]["accuracy"] + 0.1
